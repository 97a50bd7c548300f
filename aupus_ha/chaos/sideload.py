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
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import gmqtt

from aupus_ha.chaos.load import (
    CONNECT_TIMEOUT_S,
    RETRY_S,
    TrackingStorage,
    disarm,
    quiet_disconnect,
)
from aupus_ha.chaos.sidemessages import SideMessage

WINDOW = 200  # unacknowledged side messages at most
_TICK_S = 0.05


class SideLoad:
    """Publishes what `enqueue` hands it, paced, until stopped; then drains."""

    def __init__(self, broker_url: str, name: str) -> None:
        parts = urlsplit(broker_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 1883
        self.name = name
        self.published: dict[int, SideMessage] = {}  # ident -> message, sent at least once
        self.acked: set[int] = set()
        self._due: deque[tuple[float, SideMessage]] = deque()
        self._retry: list[int] = []

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

    async def run(self, stop: asyncio.Event, drain_deadline: Callable[[], float]) -> None:
        """Until `stop` and every published message acknowledged (or the deadline)."""
        while not (stop.is_set() and (self._done() or time.monotonic() > drain_deadline())):
            client = await self._connect()
            if client is None:
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await self._session(client, stop, drain_deadline)
            finally:
                await self._drop(client)

    def _done(self) -> bool:
        return not self._due and self.unacknowledged == 0

    async def _connect(self) -> Any:
        storage = TrackingStorage(self.acked.add)
        client_id = f"aupus-chaos-{self.name}-{uuid.uuid4().hex[:8]}"
        client = gmqtt.Client(client_id, persistent_storage=storage)
        client.on_disconnect = disarm
        try:
            await asyncio.wait_for(client.connect(self._host, self._port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, gmqtt.mqtt.handler.MQTTConnectError):
            disarm(client)
            await quiet_disconnect(client)
            return None
        return client

    async def _session(
        self, client: Any, stop: asyncio.Event, drain_deadline: Callable[[], float]
    ) -> None:
        storage: TrackingStorage = client._persistent_storage
        while client.is_connected:
            if stop.is_set() and (self._done() or time.monotonic() > drain_deadline()):
                return
            if len(storage.seq_by_mid) >= WINDOW:
                await asyncio.sleep(0.005)
                continue
            if self._retry:
                self._send(client, self.published[self._retry.pop(0)])
                continue
            if not self._due or self._due[0][0] > time.monotonic():
                await asyncio.sleep(_TICK_S)
                continue
            _, message = self._due.popleft()
            self.published[message.ident] = message
            self._send(client, message)

    def _send(self, client: Any, message: SideMessage) -> None:
        client._persistent_storage.next_seq = message.ident
        client.publish(message.topic, message.payload, qos=1)

    async def _drop(self, client: Any) -> None:
        storage: TrackingStorage = client._persistent_storage
        pending = set(storage.seq_by_mid.values()) - self.acked
        storage.seq_by_mid.clear()
        self._retry = sorted(set(self._retry) | pending)
        disarm(client)
        await quiet_disconnect(client)
