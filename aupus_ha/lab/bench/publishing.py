"""Publishing readings at a rate, or as fast as the broker and the leader's backlog allow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aupus_ha.lab.bench.constants import CHUNK, STALL_S
from aupus_ha.lab.bench.source import ReadingSource
from aupus_ha.lab.localcluster import InstanceProcess
from aupus_ha.lab.publisher import Publisher


@dataclass(slots=True)
class PublishResult:
    first_seq: int
    end_seq: int
    seconds: float

    @property
    def sent(self) -> int:
        return self.end_seq - self.first_seq


Gate = Callable[[int], Awaitable[None]]


async def publish_stream(
    pub: Publisher,
    source: ReadingSource,
    *,
    rate: float | None,
    window: int,
    until: Callable[[], bool],
    gate: Gate | None = None,
) -> PublishResult:
    """Publish at `rate` (None: as fast as the broker accepts) until `until()` is true.

    At most `window` messages await their PUBACK; `gate(sent)` may hold the publisher
    back further. Returns once every message is acknowledged by the broker.
    """
    first = source.seq
    started = time.monotonic()
    while not until():
        sent = source.seq - first
        burst = _due(rate, time.monotonic() - started, sent)
        if burst <= 0:
            assert rate is not None
            await asyncio.sleep(max(0.002, (sent + 1) / rate - (time.monotonic() - started)))
            continue
        for _ in range(burst):
            pub.publish(*source.next())
        if pub.unacknowledged >= window:
            await pub.wait_acknowledged(timeout=STALL_S, max_pending=window // 2)
        if gate is not None:
            await gate(source.seq - first)
        await asyncio.sleep(0)
    await pub.wait_acknowledged(timeout=STALL_S)
    return PublishResult(first, source.seq, time.monotonic() - started)


def _due(rate: float | None, elapsed: float, sent: int) -> int:
    if rate is None:
        return CHUNK
    return min(CHUNK, int(elapsed * rate) + 1 - sent)


def for_seconds(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


class BacklogGate:
    """Max mode: keeps published-but-not-committed under `cap` readings.

    The leader's /health says how many messages it took in and how many it still holds;
    the difference since the phase began is what it committed. Polled every 50 ms.
    """

    def __init__(self, leader: InstanceProcess, cap: int) -> None:
        self._leader = leader
        self._cap = cap
        self._base: int | None = None
        self.committed = 0

    async def poll(self) -> None:
        _, body = await self._leader.get("/health")
        try:
            checks = body["checks"]  # type: ignore[index]
            done = int(checks["intake"]["messages"]) - int(checks["buffer"]["pending"])
        except (KeyError, TypeError, ValueError):
            return
        if self._base is None:
            self._base = done
        self.committed = done - self._base

    async def follow(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(0.05)

    async def __call__(self, sent: int) -> None:
        deadline = time.monotonic() + STALL_S
        while sent - self.committed > self._cap:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the leader committed nothing for {STALL_S:.0f}s")
            await asyncio.sleep(0.005)
