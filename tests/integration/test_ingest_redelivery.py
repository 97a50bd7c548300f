"""A message is acknowledged only once its handling completed; otherwise the broker
redelivers it.

An error PUBACK (reason code >= 0x80) still ends a QoS 1 flow in Mosquitto, so the
intake drops the connection instead; the persistent session gets the message again.
Real broker, real gmqtt clients on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Coroutine
from typing import Any

from structlog.testing import capture_logs

from aupus_ha.config import Settings, load_settings
from aupus_ha.lab.embedded import EmbeddedMosquitto
from aupus_ha.lab.publisher import Publisher
from aupus_ha.pipeline.mqtt import MessageHandler, MqttIngest
from tests.helpers import async_wait_for

TOPIC = "redelivery/t"


def intake_settings(mosquitto: EmbeddedMosquitto, name: str) -> Settings:
    """A fresh instance id: a session (and queue) of its own on the shared broker."""
    return load_settings(
        {
            "DATABASE_URL": "postgresql://u@127.0.0.1/db",
            "MQTT_URL": mosquitto.url,
            "INSTANCE_ID": f"{name}-{uuid.uuid4().hex[:6]}",
        }
    )


@contextlib.asynccontextmanager
async def subscribed_intake(
    settings: Settings, on_message: MessageHandler
) -> AsyncIterator[MqttIngest]:
    """An intake subscribed to TOPIC, its connection loop running until the block ends."""
    ingest = MqttIngest(settings, on_message)
    ingest.set_topics([TOPIC])
    task = asyncio.create_task(ingest.run())
    try:
        await async_wait_for(lambda: ingest.stats.subscribed, 10, message="no SUBACK")
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await ingest.close()


async def publish(mosquitto: EmbeddedMosquitto, *payloads: bytes) -> None:
    async with Publisher(mosquitto.url) as pub:
        for payload in payloads:
            pub.publish(TOPIC, payload)
        await pub.wait_acknowledged(timeout=10)


async def test_a_failed_handler_gets_the_message_again(mosquitto: EmbeddedMosquitto) -> None:
    calls: list[bytes] = []

    async def on_message(topic: str, payload: bytes) -> None:
        calls.append(payload)
        if len(calls) == 1:
            raise OSError("spool write failed")  # e.g. the disk is full

    async with subscribed_intake(intake_settings(mosquitto, "redelivery"), on_message) as ingest:
        await publish(mosquitto, b"reading-1")
        await async_wait_for(lambda: len(calls) >= 2, 20, message="not redelivered")
        assert calls[:2] == [b"reading-1", b"reading-1"]
        assert ingest.stats.handler_errors == 1 and ingest.stats.connects >= 2


async def test_the_direct_path_acknowledges_only_what_completed(
    mosquitto: EmbeddedMosquitto,
) -> None:
    """QoS 1 without a Task per message: the PUBACK leaves when the handler's future
    completes. A message whose future is still pending when the connection drops is
    redelivered; one whose future completed is not; a failed one drops the connection."""
    loop = asyncio.get_running_loop()
    calls: list[bytes] = []
    held: asyncio.Future[object] = loop.create_future()  # never completes

    def on_message(topic: str, payload: bytes) -> asyncio.Future[object] | None:
        calls.append(payload)
        if calls.count(payload) > 1:
            return None  # redelivered: acknowledge at once
        if payload == b"held":
            return held
        done: asyncio.Future[object] = loop.create_future()
        if payload == b"fail":
            loop.call_soon(done.set_exception, OSError("spool write failed"))
        else:
            loop.call_soon(done.set_result, None)
        return done

    async with subscribed_intake(intake_settings(mosquitto, "direct"), on_message) as ingest:
        assert ingest.direct_acks, "gmqtt's Task-per-message path is in use"
        await publish(mosquitto, b"held", b"acked")
        await async_wait_for(lambda: len(calls) == 2, 10, message="not delivered")
        await publish(mosquitto, b"fail")
        await async_wait_for(lambda: calls.count(b"fail") == 2, 20, message="not redelivered")
        assert calls.count(b"held") == 2  # its future never completed: no PUBACK was sent
        assert calls.count(b"acked") == 1
        assert ingest.stats.handler_errors == 1 and ingest.stats.connects >= 2


async def test_a_failed_group_commit_is_logged_once_and_all_of_it_redelivered(
    mosquitto: EmbeddedMosquitto,
) -> None:
    """A spool write fails for every message of its group commit at once: one log line for
    the dropped connection, every message counted, every one redelivered."""
    commit: asyncio.Future[object] = asyncio.get_running_loop().create_future()
    calls: list[bytes] = []

    def on_message(topic: str, payload: bytes) -> asyncio.Future[object] | None:
        calls.append(payload)
        return commit if calls.count(payload) == 1 else None

    async with subscribed_intake(intake_settings(mosquitto, "batch"), on_message) as ingest:
        await publish(mosquitto, *(b"m%d" % n for n in range(5)))
        await async_wait_for(lambda: len(calls) == 5, 10, message="not delivered")
        with capture_logs() as logs:
            commit.set_exception(OSError("No space left on device"))
            await async_wait_for(lambda: len(calls) == 10, 20, message="not redelivered")
        assert sorted(calls[5:]) == sorted(calls[:5])
        assert ingest.stats.handler_errors == 5
        assert [e["event"] for e in logs].count("mqtt.handler_failed") == 1


async def test_a_message_waiting_for_room_is_cancelled_at_close_and_redelivered(
    mosquitto: EmbeddedMosquitto,
) -> None:
    """A full spool makes the handler return a coroutine (waiting for room): the intake
    owns it as a task, `close` cancels it without calling it a failure, and the message,
    never acknowledged, comes back to the next process of the same instance."""
    settings = intake_settings(mosquitto, "room")
    room = asyncio.Event()  # never set: the spool stays full
    calls: list[bytes] = []

    async def wait_for_room() -> None:
        await room.wait()

    def full_spool(topic: str, payload: bytes) -> Coroutine[Any, Any, None]:
        calls.append(payload)
        return wait_for_room()

    async with subscribed_intake(settings, full_spool) as first:
        await publish(mosquitto, b"waits")
        await async_wait_for(lambda: calls == [b"waits"], 10, message="not delivered")
        assert len(first._waiting_for_room) == 1
    assert not first._waiting_for_room and first.stats.handler_errors == 0

    again: list[bytes] = []
    async with subscribed_intake(settings, lambda topic, payload: again.append(payload)):
        await async_wait_for(lambda: again == [b"waits"], 20, message="not redelivered")


async def test_qos0_messages_take_gmqtts_path_with_the_same_handler(
    mosquitto: EmbeddedMosquitto,
) -> None:
    """Devices that publish at QoS 0 reach the same handler through gmqtt's own path,
    which awaits what the handler returns (nothing to acknowledge)."""
    loop = asyncio.get_running_loop()
    durable: list[bytes] = []

    def on_message(topic: str, payload: bytes) -> asyncio.Future[object]:
        done: asyncio.Future[object] = loop.create_future()
        loop.call_soon(lambda: (durable.append(payload), done.set_result(None)))
        return done

    async with subscribed_intake(intake_settings(mosquitto, "qos0"), on_message) as ingest:
        async with Publisher(mosquitto.url) as pub:
            pub.publish(TOPIC, b"at-most-once", qos=0)
            pub.publish(TOPIC, b"at-least-once")
            await pub.wait_acknowledged(timeout=10)
        await async_wait_for(lambda: len(durable) == 2, 10, message="not delivered")
        assert sorted(durable) == [b"at-least-once", b"at-most-once"]
        assert ingest.stats.messages == 2 and ingest.stats.handler_errors == 0
