"""MQTT intake with gmqtt: QoS 1, a persistent session per instance, owned reconnects.

Three gmqtt traps are handled here on purpose:
- it PUBACKs before `on_message` runs unless `optimistic_acknowledgement=False`: we turn
  that off, so the broker only forgets a message once it is in our buffer;
- it does not resubscribe when the broker answers without a session
  (`session_present` false): we subscribe on every connect;
- under MQTT 5 a session only outlives a disconnect with `session_expiry_interval` > 0.
gmqtt's own reconnect loop fires unowned tasks at a fixed delay; we disarm it and
reconnect from one supervised task with jittered exponential backoff (tenacity).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import gmqtt
from tenacity import AsyncRetrying, retry_if_exception_type

from aupus_ha import constants
from aupus_ha.backoff import jittered
from aupus_ha.config import Settings
from aupus_ha.logs import get_logger
from aupus_ha.names import mqtt_client_id

log = get_logger(__name__)

# Called for every message, in the event loop; what it returns completes once the message
# may be acknowledged (None: at once). A failure means: never acknowledge it.
MessageHandler = Callable[[str, bytes], Awaitable[object] | None]
PUBACK_SUCCESS = 0
PUBACK_UNSPECIFIED_ERROR = 0x80
PUBACK_HEADER = 0x40  # first byte of an MQTT PUBACK packet (type 4, no flags)
# Room above MAX_PAYLOAD_BYTES in the announced maximum packet size: fixed header (5),
# topic (up to 65,535 + 2), packet id and MQTT 5 properties. A payload just above
# MAX_PAYLOAD_BYTES still arrives and is rejected (and counted) by the decoder.
PACKET_HEADROOM_BYTES = 128 * 1024
MQTT_MAX_PACKET_BYTES = 268_435_460  # the protocol's own limit (4-byte remaining length)
# A connection dropped this many times within the window is a loop, not bad luck
# (e.g. a message that cannot be delivered, or two processes sharing a client id).
FLAP_DISCONNECTS = 5
FLAP_WINDOW_S = 120.0


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the connection."""


@dataclass(slots=True)
class MqttStats:
    messages: int = 0
    connects: int = 0
    disconnects: int = 0
    handler_errors: int = 0
    connected_since: float | None = None
    subscribed: set[str] = field(default_factory=set)
    max_packet_bytes: int = 0  # announced to the broker at connect


class FlapDetector:
    """Says whether the connection is in a reconnect loop: `limit` drops within `window_s`.

    A loop shows up as "connected" most of the time, so the state alone hides it; the
    rate of drops does not. It clears by itself once the window passes without drops.
    """

    def __init__(self, limit: int = FLAP_DISCONNECTS, window_s: float = FLAP_WINDOW_S) -> None:
        self._limit = limit
        self._window_s = window_s
        self._drops: deque[float] = deque(maxlen=limit)

    def dropped(self, now: float) -> bool:
        """Record a drop; True when this one starts a loop (to log it once)."""
        before = self.looping(now)
        self._drops.append(now)
        return self.looping(now) and not before

    def looping(self, now: float) -> bool:
        return len(self._drops) == self._limit and now - self._drops[0] <= self._window_s


def max_packet_bytes(max_payload_bytes: int) -> int:
    return min(max_payload_bytes + PACKET_HEADROOM_BYTES, MQTT_MAX_PACKET_BYTES)


def client_id_for(instance_id: str, cluster_name: str) -> str:
    # Stable across restarts, so the broker keeps this instance's session and queue;
    # bounded without a plain cut, so two long names never share one session.
    return mqtt_client_id(cluster_name, instance_id)


class MqttIngest:
    """Keeps one MQTT connection up and the subscriptions equal to the wanted topics."""

    def __init__(self, settings: Settings, on_message: MessageHandler) -> None:
        assert settings.mqtt is not None
        self._settings = settings
        self._endpoint = settings.mqtt
        self._on_message = on_message
        self._wanted: set[str] = set()
        self._client: gmqtt.Client | None = None
        self._lost = asyncio.Event()
        self._sync_lock = asyncio.Lock()
        # SUBSCRIBE packets awaiting their SUBACK, by packet id: a topic only counts as
        # subscribed (and is reported so) once the broker has granted it.
        self._pending_subscribe: dict[int, list[str]] = {}
        self.stats = MqttStats(max_packet_bytes=max_packet_bytes(settings.max_payload_bytes))
        self.flaps = FlapDetector()
        self._closed = asyncio.Event()  # set when the current connection is dropped
        # gmqtt closes a connection after 2 x keepalive without data in: a broker lost
        # behind a silent partition must be noticed within about the lease TTL, so the
        # leader hands over to a standby that still hears the devices (ha.py).
        self._keepalive = max(1, round(settings.lease_ttl_s / 2))
        self.direct_acks = False  # QoS 1 PUBACKs without a Task per message (installed)
        # Appends of the direct path that wait for room in a full spool (owned here, so
        # `close` can cancel them; those messages are then never acknowledged).
        self._waiting_for_room: set[asyncio.Future[object]] = set()

    @property
    def connected(self) -> bool:
        return self._client is not None and self.stats.connected_since is not None

    @property
    def reconnect_loop(self) -> bool:
        return self.flaps.looping(time.monotonic())

    # --- supervised connection loop -----------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self._connect_with_backoff()
                await self._lost.wait()
                await self._drop_client()
        finally:
            await self._drop_client()

    async def _connect_with_backoff(self) -> None:
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(BrokerUnavailable),
            wait=jittered(10.0),
        ):
            with attempt:
                await self._connect_once()

    async def _connect_once(self) -> None:
        self._lost.clear()
        client = self._new_client()
        ep = self._endpoint
        try:
            await asyncio.wait_for(
                client.connect(
                    ep.host, ep.port, ssl=self._ssl_context(), keepalive=self._keepalive
                ),
                timeout=constants.MQTT_CONNECT_TIMEOUT_S,
            )
        except (OSError, TimeoutError, gmqtt.mqtt.handler.MQTTConnectError) as exc:
            _disarm_reconnect(client)
            await _quiet_disconnect(client)
            log.warning("mqtt.connect_failed", broker=ep.display(), error=type(exc).__name__)
            raise BrokerUnavailable(str(exc)) from exc
        coalesce_pubacks(client)
        count_bytes_as_liveness(client)
        self._client = client
        self._closed = asyncio.Event()
        self.stats.connects += 1
        self.stats.connected_since = time.monotonic()
        self.stats.subscribed.clear()
        self._pending_subscribe.clear()
        await self.sync_subscriptions()
        log.info(
            "mqtt.connected",
            broker=ep.display(),
            client_id=client._client_id,
            topics_requested=len(self._wanted),
            direct_acks=self.direct_acks,  # False: gmqtt's slower Task-per-message path
        )

    def _new_client(self) -> gmqtt.Client:
        client = gmqtt.Client(
            client_id_for(self._settings.instance_id, self._settings.cluster_name),
            clean_session=False,
            optimistic_acknowledgement=False,
            session_expiry_interval=constants.MQTT_SESSION_EXPIRY_S,
            receive_maximum=self._settings.mqtt_receive_maximum,
            # MQTT 5: the broker must not send us a packet above this; it drops an
            # oversized message for our session instead of delivering it at every
            # reconnect (a 48 MiB one stalled every instance, issue 16).
            maximum_packet_size=self.stats.max_packet_bytes,
        )
        if self._endpoint.username:
            client.set_auth_credentials(
                self._endpoint.username, self._endpoint.password.reveal() or None
            )
        client.on_message = self._handle
        self.direct_acks = install_direct_qos1(client, self._deliver_qos1)
        client.on_disconnect = self._disconnected
        client.on_subscribe = self._subscribed
        return client

    def _ssl_context(self) -> ssl.SSLContext | bool:
        if not self._endpoint.tls:
            return False
        context = ssl.create_default_context(cafile=self._settings.mqtt_tls_ca)
        if self._settings.mqtt_tls_insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context

    def _disconnected(self, client: gmqtt.Client, packet: Any, exc: Any = None) -> None:
        if client is not self._client:
            return
        _disarm_reconnect(client)
        self.stats.disconnects += 1
        self.stats.connected_since = None
        log.warning("mqtt.disconnected", broker=self._endpoint.display())
        if self.flaps.dropped(time.monotonic()):
            log.error(
                "mqtt.reconnect_loop",
                broker=self._endpoint.display(),
                disconnects=FLAP_DISCONNECTS,
                window_s=FLAP_WINDOW_S,
            )
        self._lost.set()

    async def _drop_client(self) -> None:
        client, self._client = self._client, None
        self.stats.connected_since = None
        self._closed.set()
        if client is not None:
            _disarm_reconnect(client)
            await _quiet_disconnect(client)

    async def close(self) -> None:
        await self._drop_client()
        waiting, self._waiting_for_room = self._waiting_for_room, set()
        for task in waiting:
            task.cancel()
        await asyncio.gather(*waiting, return_exceptions=True)

    # --- messages ----------------------------------------------------------------------

    async def _handle(
        self, client: gmqtt.Client, topic: str, payload: bytes, qos: int, properties: Any
    ) -> int:
        """gmqtt's path (a Task per message), for QoS 0 and 2 and when the direct QoS 1
        path is not installed. Returning sends the PUBACK: the message is safely ours."""
        self.stats.messages += 1
        closed = self._closed
        try:
            pending = self._on_message(topic, payload)
            if pending is not None:
                await pending
        except Exception as exc:
            self._handler_failed(client, topic, exc)
            # Answer only once the connection is gone, so no PUBACK reaches the broker.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(closed.wait(), timeout=constants.MQTT_CONNECT_TIMEOUT_S)
            return PUBACK_UNSPECIFIED_ERROR
        return PUBACK_SUCCESS

    def _deliver_qos1(
        self, client: gmqtt.Client, mid: int, payload: bytes, topic: str, properties: Any
    ) -> None:
        """The direct QoS 1 path: the PUBACK is sent from a done-callback of what the
        handler returned (the spool's commit future), with no Task per message."""
        self.stats.messages += 1
        try:
            pending = self._on_message(topic, payload)
        except Exception as exc:
            self._handler_failed(client, topic, exc)
            return
        if pending is None:
            send_puback(client, mid)
            return
        if isinstance(pending, asyncio.Future):
            done = pending
        else:  # a coroutine: the spool is full and the append waits for room
            done = asyncio.ensure_future(pending)
            self._waiting_for_room.add(done)
            done.add_done_callback(self._waiting_for_room.discard)
        done.add_done_callback(functools.partial(self._acknowledge, client, mid, topic))

    def _acknowledge(
        self, client: gmqtt.Client, mid: int, topic: str, done: asyncio.Future[object]
    ) -> None:
        if done.cancelled():
            return  # shutting down: never acknowledged, the broker redelivers it
        failure = done.exception()
        if failure is None:
            send_puback(client, mid)  # on a replaced connection gmqtt drops it: redelivered
        else:
            self._handler_failed(client, topic, failure)

    def _handler_failed(self, client: gmqtt.Client, topic: str, exc: BaseException) -> None:
        # An error PUBACK would still end the QoS 1 flow: the broker would forget the
        # message. Drop the connection instead, so no PUBACK reaches the broker and it
        # redelivers the message to our session.
        self.stats.handler_errors += 1
        if client is not self._client or self._lost.is_set():
            return  # its connection is already being dropped, and that was logged
        log.error("mqtt.handler_failed", topic=topic, exc_info=exc)
        self._lost.set()

    # --- subscriptions -------------------------------------------------------------------

    def set_topics(self, topics: Iterable[str]) -> None:
        self._wanted = set(topics)

    async def sync_subscriptions(self) -> None:
        """Subscribe to new topics and unsubscribe from removed ones."""
        async with self._sync_lock:
            client = self._client
            if client is None:
                return
            current = self.stats.subscribed
            requested = current.union(*self._pending_subscribe.values())
            add = sorted(self._wanted - requested)
            remove = sorted(current - self._wanted)
            if add:
                mid = client.subscribe([gmqtt.Subscription(t, qos=1) for t in add])
                self._pending_subscribe[mid] = add
            if remove:
                client.unsubscribe(remove)
                current.difference_update(remove)
            if add or remove:
                log.info(
                    "mqtt.subscriptions",
                    requested=len(add),
                    removed=len(remove),
                    wanted=len(self._wanted),
                )

    def _subscribed(
        self, client: gmqtt.Client, mid: int, granted: tuple[int, ...], properties: Any
    ) -> None:
        topics = self._pending_subscribe.pop(mid, [])
        if client is not self._client:
            return
        refused = [t for t, qos in zip(topics, granted, strict=False) if qos >= 0x80]
        self.stats.subscribed.update(
            t for t, qos in zip(topics, granted, strict=False) if qos < 0x80 and t in self._wanted
        )
        if refused:
            log.error("mqtt.subscribe_refused", topics=refused[:20], count=len(refused))


class PubackCoalescer:
    """PUBACKs written in one event-loop step leave in one `send()`.

    gmqtt writes each PUBACK to the socket on its own: one system call per message, the
    largest single cost of the intake under load. A group commit releases hundreds of
    PUBACKs in the same step, so they are collected and written together at the end of
    it. Any other packet (PINGREQ, SUBSCRIBE, DISCONNECT…) first writes the PUBACKs
    collected so far, then itself, at once: order on the wire is unchanged, and nothing
    is left behind when the connection is closed.
    """

    __slots__ = ("_loop", "_pending", "_write")

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write
        self._pending: list[bytes] = []
        self._loop = asyncio.get_running_loop()

    def write(self, data: bytes) -> None:
        if not data or data[0] != PUBACK_HEADER:
            self.flush()
            self._write(data)
            return
        if not self._pending:
            self._loop.call_soon(self.flush)
        self._pending.append(data)

    def flush(self) -> None:
        if self._pending:
            data = b"".join(self._pending)
            self._pending.clear()
            self._write(data)


def coalesce_pubacks(client: gmqtt.Client) -> None:
    protocol = getattr(getattr(client, "_connection", None), "_protocol", None)
    if protocol is not None and hasattr(protocol, "write_data"):
        protocol.write_data = PubackCoalescer(protocol.write_data).write


def count_bytes_as_liveness(client: gmqtt.Client) -> None:
    """Every chunk received counts as traffic for gmqtt's keepalive, not only a complete
    packet: a large packet still arriving must not look like a dead broker."""
    connection: Any = getattr(client, "_connection", None)
    protocol = getattr(connection, "_protocol", None)
    if protocol is None or not hasattr(connection, "_last_data_in"):
        return
    received = protocol.data_received

    def data_received(data: bytes) -> None:
        connection._last_data_in = time.monotonic()
        received(data)

    protocol.data_received = data_received


def install_direct_qos1(
    client: gmqtt.Client, deliver: Callable[[gmqtt.Client, int, bytes, str, Any], None]
) -> bool:
    """Route QoS 1 PUBLISHes to `deliver` instead of gmqtt's Task-per-message path.

    gmqtt runs a coroutine callback as a Task and sends the PUBACK from the Task's
    done-callback; the Task, the chain of awaiting coroutines and gmqtt's reason-code
    check against an enum cost ~30 % of an instance's CPU per reading
    (docs/performance.md). Its handler dispatches QoS 1 through one method, which is
    replaced on this client's handler only. False (gmqtt's own path stays) when this
    gmqtt version has no such method.
    """
    handler = getattr(client, "_package_handler", None)
    if not (hasattr(handler, "_handle_qos_1_publish_packet") and hasattr(handler, "_send_puback")):
        return False
    handler._handle_qos_1_publish_packet = functools.partial(deliver, client)  # type: ignore[union-attr]
    return True


def send_puback(client: gmqtt.Client, mid: int) -> None:
    client._package_handler._send_puback(mid, PUBACK_SUCCESS)


def _disarm_reconnect(client: gmqtt.Client) -> None:
    # gmqtt schedules its own reconnect from the disconnect handler; an inactive client
    # skips it (see gmqtt Client._allow_reconnect). Our supervisor reconnects instead.
    client._is_active = False


async def _quiet_disconnect(client: gmqtt.Client) -> None:
    with contextlib.suppress(Exception):  # the connection is gone either way
        await asyncio.wait_for(client.disconnect(), timeout=2.0)
