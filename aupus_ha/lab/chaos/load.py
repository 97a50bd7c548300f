"""The steady load: generic readings with a sequence number, QoS 1, PUBACKs tracked.

Reading `seq` goes to equipment `seq % N` with timestamp `origin + seq ms`, so every
sequence number is its own natural key and can be found again in `dados->>'seq'`.
Each PUBACK is matched to its sequence number through gmqtt's outbound store. When the
broker connection drops, the messages still awaiting a PUBACK are published again on
the next connection (at-least-once: a second copy has the same natural key). While
the broker is down nothing new is published; pacing restarts on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import gmqtt
import orjson
from gmqtt.storage import PersistentStorage

WINDOW = 1000  # unacknowledged messages at most
CONNECT_TIMEOUT_S = 5.0
RETRY_S = 0.5
_TICK_S = 0.05


class TrackingStorage(PersistentStorage):  # type: ignore[misc]  # gmqtt is untyped
    """gmqtt's in-flight store, remembering which sequence number each packet id carries."""

    def __init__(self, on_ack: Callable[[int], None]) -> None:
        super().__init__()
        self.next_seq = -1
        self.seq_by_mid: dict[int, int] = {}
        self._on_ack = on_ack

    def push_message(self, mid: int, raw_package: bytes) -> None:
        super().push_message(mid, raw_package)
        self.seq_by_mid.setdefault(mid, self.next_seq)

    def remove_message_by_mid(self, mid: int) -> None:
        super().remove_message_by_mid(mid)
        seq = self.seq_by_mid.pop(mid, None)
        if seq is not None:
            self._on_ack(seq)


class TrackedPublisher(ABC):
    """A QoS 1 publisher's connection loop, shared by the steady load and the side load:
    connect, publish under a window of unacknowledged messages, and on a dropped
    connection publish again on the next one what still awaits its PUBACK."""

    window = WINDOW

    def __init__(self, broker_url: str, client_prefix: str) -> None:
        parts = urlsplit(broker_url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 1883
        self._client_prefix = client_prefix
        self.acked: set[int] = set()
        self.connects = 0
        self._retry: list[int] = []

    @abstractmethod
    def _done(self) -> bool:
        """Nothing left to publish or to see acknowledged."""

    @abstractmethod
    def _message(self, seq: int) -> tuple[str, bytes]:
        """Topic and payload of the message numbered `seq`."""

    @abstractmethod
    def _begin_session(self) -> None:
        """Called on every new connection, before anything is published on it."""

    @abstractmethod
    async def _step(self, client: Any, stop: asyncio.Event) -> None:
        """Publish the next new message, or wait a little for its time to come."""

    async def run(self, stop: asyncio.Event, drain_deadline: Callable[[], float]) -> None:
        """Publish until `stop`, then until every message is acknowledged or the deadline
        (`drain_deadline()`, monotonic, read once `stop` is set) passes."""
        while not (stop.is_set() and (self._done() or time.monotonic() > drain_deadline())):
            client = await self._connect()
            if client is None:
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await self._session(client, stop, drain_deadline)
            finally:
                await self._drop(client)

    async def _connect(self) -> Any:
        storage = TrackingStorage(self.acked.add)
        client_id = f"{self._client_prefix}-{uuid.uuid4().hex[:8]}"
        client = gmqtt.Client(client_id, persistent_storage=storage)
        client.on_disconnect = disarm
        try:
            await asyncio.wait_for(client.connect(self._host, self._port), CONNECT_TIMEOUT_S)
        except (OSError, TimeoutError, gmqtt.mqtt.handler.MQTTConnectError):
            disarm(client)
            await quiet_disconnect(client)
            return None
        self.connects += 1
        return client

    async def _session(
        self, client: Any, stop: asyncio.Event, drain_deadline: Callable[[], float]
    ) -> None:
        storage: TrackingStorage = client._persistent_storage
        self._begin_session()
        while client.is_connected:
            if stop.is_set() and (self._done() or time.monotonic() > drain_deadline()):
                return
            if len(storage.seq_by_mid) >= self.window:
                await asyncio.sleep(0.005)
                continue
            if self._retry:
                self._send(client, self._retry.pop(0))
                continue
            await self._step(client, stop)

    def _send(self, client: Any, seq: int) -> None:
        client._persistent_storage.next_seq = seq
        topic, payload = self._message(seq)
        client.publish(topic, payload, qos=1)

    async def _drop(self, client: Any) -> None:
        storage: TrackingStorage = client._persistent_storage
        pending = set(storage.seq_by_mid.values()) - self.acked
        storage.seq_by_mid.clear()
        self._retry = sorted(set(self._retry) | pending)
        disarm(client)
        await quiet_disconnect(client)


class Load(TrackedPublisher):
    """Publishes readings at `rate`/s to `broker_url` until stopped, then drains."""

    def __init__(
        self, broker_url: str, equipment: list[tuple[str, str]], rate: float, origin: datetime
    ) -> None:
        super().__init__(broker_url, "aupus-chaos")
        self._topics = [topic for _, topic in equipment]
        self._rate = rate
        self._origin = origin
        self.published = 0  # sequence numbers 0 .. published-1 went out at least once
        self._session_started, self._session_sent = time.monotonic(), 0

    @property
    def unacknowledged(self) -> int:
        return self.published - len(self.acked)

    def payload(self, seq: int) -> tuple[str, bytes]:
        ts = self._origin + timedelta(milliseconds=seq)
        body = {
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "power": 1000 + seq % 997,
            "voltage": 220.1,
            "seq": seq,
        }
        return self._topics[seq % len(self._topics)], orjson.dumps(body)

    def _done(self) -> bool:
        return self.unacknowledged == 0

    def _message(self, seq: int) -> tuple[str, bytes]:
        return self.payload(seq)

    def _begin_session(self) -> None:
        # Pacing restarts on every connection: no burst to catch up after an outage.
        self._session_started, self._session_sent = time.monotonic(), 0

    async def _step(self, client: Any, stop: asyncio.Event) -> None:
        if stop.is_set():
            await asyncio.sleep(_TICK_S)
            return
        delay = self._session_started + self._session_sent / self._rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(min(delay, _TICK_S))
            return
        self._send(client, self.published)
        self.published += 1
        self._session_sent += 1


def disarm(client: Any, *_: Any) -> None:
    # An inactive gmqtt client schedules no reconnect of its own (unowned tasks at a fixed
    # delay); TrackedPublisher.run reconnects with a fresh client instead.
    client._is_active = False


async def quiet_disconnect(client: Any) -> None:
    with contextlib.suppress(Exception):  # the connection is gone either way
        await asyncio.wait_for(client.disconnect(), timeout=2.0)
