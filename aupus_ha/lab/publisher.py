"""A QoS 1 publisher that knows what the broker acknowledged.

Used by `aupus-ha simulate`, the demo, the benchmark and the tests: every published
message is counted only once the broker has PUBACKed it, so "published" in a report
means "the broker has it".
"""

from __future__ import annotations

import asyncio
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import gmqtt

from aupus_ha.logs import get_logger

log = get_logger(__name__)

TLS_SCHEMES = ("mqtts", "ssl")


@dataclass(slots=True)
class PublishReport:
    sent: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


class Publisher:
    """A gmqtt client that can wait until all its QoS 1 messages are acknowledged."""

    def __init__(
        self, url: str, *, client_id: str | None = None, ca_file: str | None = None
    ) -> None:
        """`url`: mqtt:// or mqtts:// (TLS, the broker's certificate verified against
        the system CAs or `ca_file`), with optional user:password."""
        parts = urlsplit(url)
        tls = parts.scheme in TLS_SCHEMES
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or (8883 if tls else 1883)
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        self._ssl: ssl.SSLContext | bool = (
            ssl.create_default_context(cafile=ca_file) if tls else False
        )
        self._client = gmqtt.Client(client_id or f"aupus-pub-{uuid.uuid4().hex[:10]}")

    async def __aenter__(self) -> Publisher:
        if self._username:
            self._client.set_auth_credentials(self._username, self._password)
        connecting = self._client.connect(self._host, self._port, ssl=self._ssl)
        await asyncio.wait_for(connecting, timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.wait_for(self._client.disconnect(), timeout=5)

    def publish(self, topic: str, payload: bytes, *, qos: int = 1) -> None:
        """Queue a message; only QoS 1 ones are waited for by `wait_acknowledged`."""
        self._client.publish(topic, payload, qos=qos)

    @property
    def unacknowledged(self) -> int:
        storage = self._client._persistent_storage
        # gmqtt's heap storage keeps the in-flight table in `_messages`; its `get_all()`
        # copies the whole table (up to `window` entries) on every call.
        messages = getattr(storage, "_messages", None)
        return len(messages) if messages is not None else len(storage.get_all())

    async def wait_acknowledged(self, timeout: float = 30.0, *, max_pending: int = 0) -> None:
        """Wait until at most `max_pending` messages await their PUBACK."""
        deadline = time.monotonic() + timeout
        while self.unacknowledged > max_pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.unacknowledged} messages not acknowledged in time")
            await asyncio.sleep(0.005)


async def publish_paced(
    publisher: Publisher,
    messages: list[tuple[str, bytes]],
    *,
    rate: float,
    on_sent: Callable[[int], None] | None = None,
    window: int = 500,
    stop: asyncio.Event | None = None,
) -> PublishReport:
    """Publish at about `rate` messages/s, at most `window` unacknowledged at a time.

    Stops early when `stop` is set; `report.sent` then says how many went out (and were
    acknowledged: it waits for every PUBACK before returning).
    """
    report = PublishReport()
    started = time.monotonic()
    for index, (topic, payload) in enumerate(messages):
        if stop is not None and stop.is_set():
            break
        due = started + index / rate if rate > 0 else 0.0
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if publisher.unacknowledged >= window:
            await publisher.wait_acknowledged(max_pending=window // 2)
        publisher.publish(topic, payload)
        report.sent += 1
        if on_sent is not None:
            on_sent(report.sent)
    await publisher.wait_acknowledged()
    report.seconds = time.monotonic() - started
    return report
