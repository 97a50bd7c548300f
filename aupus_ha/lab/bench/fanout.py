"""The broker fan-out baseline: one publisher, the broker, one counting subscriber process."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import gmqtt

from aupus_ha.lab.bench.constants import (
    CHUNK,
    FANOUT_WINDOW,
    RECEIVE_MAXIMUM,
    STALL_S,
    TOPIC_FILTER,
)
from aupus_ha.lab.bench.sampling import cpu_seconds
from aupus_ha.lab.bench.source import ReadingSource
from aupus_ha.lab.bench.tasks import background, end_process
from aupus_ha.lab.publisher import Publisher
from aupus_ha.pipeline.mqtt import coalesce_pubacks, install_direct_qos1, send_puback


async def broker_fanout(
    url: str, source: ReadingSource, qos: int, budget_s: float, pids: list[int]
) -> tuple[float, float]:
    """(messages/s, subscriber CPU µs per message) from one publisher through the broker
    to one subscriber process."""
    async with (
        CountingSubscriber.running(url, TOPIC_FILTER, qos, pids) as sub,
        _FanoutSender(url, qos) as sender,
    ):
        cpu_before = await asyncio.to_thread(cpu_seconds, sub.pid)
        first = time.time()
        end = time.monotonic() + budget_s
        sent = 0
        while time.monotonic() < end:
            for _ in range(CHUNK):
                sender.send(*source.next())
            sent += CHUNK
            await sender.window()
            await sub.wait_below(sent, FANOUT_WINDOW)
        await sub.wait_all(sent)
        cpu = await asyncio.to_thread(cpu_seconds, sub.pid) - cpu_before
        rate = sub.received / max(1e-9, sub.last - first)
        return rate, 1e6 * cpu / max(1, sub.received)


class CountingSubscriber:
    """A subscriber in its own process (like an instance) that counts what it receives.

    The child prints "ready" once subscribed, then "<count> <wall time of the last
    message>" every 50 ms; `received` and `last` follow those lines.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.received = 0
        self.last = 0.0
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, url: str, topic_filter: str, qos: int, pids: list[int]
    ) -> AsyncIterator[CountingSubscriber]:
        sub = cls()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aupus_ha.lab.bench",
            "subscribe",
            url,
            topic_filter,
            str(qos),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        pids.append(proc.pid)
        sub.pid = proc.pid
        try:
            assert proc.stdout is not None
            async with background(sub._follow(proc.stdout), "subscriber-output"):
                await asyncio.wait_for(sub.ready.wait(), timeout=30)
                yield sub
        finally:
            await end_process(proc)

    async def _follow(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            fields = line.split()
            if fields == [b"ready"]:
                self.ready.set()
            elif len(fields) == 2:
                self.received, self.last = int(fields[0]), float(fields[1])
                self._changed.set()

    async def wait_below(self, sent: int, window: int) -> None:
        """Wait until at most `window` published messages are not yet received."""
        while sent - self.received > window:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), timeout=STALL_S)

    async def wait_all(self, sent: int, quiet_s: float = 3.0) -> None:
        """Wait until `sent` messages arrived, or nothing arrived for `quiet_s` (QoS 0)."""
        while self.received < sent:
            self._changed.clear()
            before = self.received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=quiet_s)
            if self.received == before:
                return


class _FanoutSender:
    """QoS 1: the project's Publisher (PUBACK window); QoS 0: a bare gmqtt client."""

    def __init__(self, url: str, qos: int) -> None:
        self._qos = qos
        self._publisher = Publisher(url)
        self._host, self._port = _host_port(url)
        self._client = gmqtt.Client(f"aupus-bench-q0-{uuid.uuid4().hex[:8]}")

    async def __aenter__(self) -> _FanoutSender:
        if self._qos:
            await self._publisher.__aenter__()
        else:
            await asyncio.wait_for(self._client.connect(self._host, self._port), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._qos:
            await self._publisher.__aexit__(*exc)
        else:
            await asyncio.wait_for(self._client.disconnect(), timeout=5)

    def send(self, topic: str, payload: bytes) -> None:
        if self._qos:
            self._publisher.publish(topic, payload)
        else:
            self._client.publish(topic, payload, qos=0)

    async def window(self, size: int = 1000) -> None:
        if self._qos and self._publisher.unacknowledged >= size:
            await self._publisher.wait_acknowledged(timeout=STALL_S, max_pending=size // 2)
        await asyncio.sleep(0)


async def count_messages(url: str, topic_filter: str, qos: int) -> None:
    """The subscriber process: the instances' client settings and intake path (deferred
    PUBACK sent from a callback, PUBACKs coalesced), and an empty callback."""
    count, last = 0, 0.0

    async def on_message(*_: object) -> int:  # QoS 0
        nonlocal count, last
        count += 1
        last = time.time()
        return 0

    def on_qos1(client: gmqtt.Client, mid: int, *_: object) -> None:
        nonlocal count, last
        count += 1
        last = time.time()
        send_puback(client, mid)

    subscribed = asyncio.Event()
    client = gmqtt.Client(
        f"aupus-bench-sub-{uuid.uuid4().hex[:8]}",
        optimistic_acknowledgement=False,
        receive_maximum=RECEIVE_MAXIMUM,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    if not install_direct_qos1(client, on_qos1):
        raise RuntimeError("this gmqtt has no QoS 1 dispatch method to route")
    await asyncio.wait_for(client.connect(*_host_port(url)), timeout=10)
    coalesce_pubacks(client)
    client.subscribe(gmqtt.Subscription(topic_filter, qos=qos))
    await asyncio.wait_for(subscribed.wait(), timeout=10)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:  # ends with SIGTERM from the parent
        await asyncio.sleep(0.05)
        sys.stdout.write(f"{count} {last:.6f}\n")
        sys.stdout.flush()


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 1883
