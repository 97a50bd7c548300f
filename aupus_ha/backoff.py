"""The one backoff policy every reconnect and retry uses."""

from __future__ import annotations

from tenacity import wait_exponential_jitter
from tenacity.wait import wait_base


def jittered(max_s: float, first_s: float = 0.2) -> wait_base:
    """Exponential backoff starting near `first_s`, capped at `max_s`, with jitter."""
    return wait_exponential_jitter(multiplier=first_s, max=max_s, jitter=first_s)
