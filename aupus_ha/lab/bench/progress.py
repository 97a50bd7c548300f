"""Progress lines on stderr."""

from __future__ import annotations

import sys
import time


class Progress:
    """One line per step on stderr, with the elapsed time."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._started:7.1f}s] {text}", file=sys.stderr, flush=True)
