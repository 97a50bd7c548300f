"""A second, bursty publisher beside the steady load: the side messages of a fault
(hostile payloads, clockless readings), QoS 1, each PUBACK matched to its message.

Its own broker connection, so a payload the broker refuses (and the disconnect that may
follow) never disturbs the sequence-numbered load. Like the load, a message without a
PUBACK when the connection drops is published again on the next one (at-least-once),
and nothing is published while the broker is down.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from aupus_ha.lab.chaos.load import TrackedPublisher
from aupus_ha.lab.chaos.sidemessages import SideMessage

WINDOW = 200  # unacknowledged side messages at most
_TICK_S = 0.05


class SideLoad(TrackedPublisher):
    """Publishes what `enqueue` hands it, paced, until stopped; then drains."""

    window = WINDOW

    def __init__(self, broker_url: str, name: str) -> None:
        super().__init__(broker_url, f"aupus-chaos-{name}")
        self.name = name
        self.published: dict[int, SideMessage] = {}  # ident -> message, sent at least once
        self._due: deque[tuple[float, SideMessage]] = deque()

    def enqueue(self, messages: Iterable[SideMessage], over_s: float) -> None:
        """Publish `messages` evenly over the next `over_s` seconds."""
        batch = list(messages)
        start = time.monotonic()
        step = over_s / max(1, len(batch))
        self._due.extend((start + n * step, m) for n, m in enumerate(batch))

    @property
    def queued(self) -> int:
        return len(self._due)

    @property
    def unacknowledged(self) -> int:
        return len(self.published.keys() - self.acked)

    def _done(self) -> bool:
        return not self._due and self.unacknowledged == 0

    def _message(self, seq: int) -> tuple[str, bytes]:
        message = self.published[seq]
        return message.topic, message.payload

    def _begin_session(self) -> None:
        pass  # each message keeps the time `enqueue` gave it, across reconnects

    async def _step(self, client: Any, stop: asyncio.Event) -> None:
        if not self._due or self._due[0][0] > time.monotonic():
            await asyncio.sleep(_TICK_S)
            return
        _, message = self._due.popleft()
        self.published[message.ident] = message
        self._send(client, message.ident)
