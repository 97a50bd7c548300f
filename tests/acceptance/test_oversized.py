"""An oversized MQTT message, and a connection that keeps being dropped, against real
processes (issue 16).

A broker without `message_size_limit` delivers whatever a device (or anyone allowed to
publish) sends. Each instance announces an MQTT 5 maximum packet size at connect, so the
broker drops a 48 MiB message for its session instead of pushing it down the wire again
at every reconnect; ordinary readings keep flowing. A connection that keeps being
dropped is reported unhealthy, not "connected".
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from functools import partial
from pathlib import Path

import gmqtt
import pytest

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    generic_messages,
    publish,
    seed_equipment,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from aupus_ha.pipeline.mqtt import client_id_for
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import BrokerFactory

OVERSIZED_BYTES = 48 * 1024 * 1024
MAX_PAYLOAD = 64 * 1024


async def _subscribed(inst: InstanceProcess, count: int) -> bool:
    _, body = await inst.get("/health")
    return bool(body and body["checks"].get("mqtt", {}).get("subscribedTopics") == count)


def _publish_file(url: str, topic: str, path: Path) -> None:
    host, port = url.removeprefix("mqtt://").rsplit(":", 1)
    subprocess.run(
        ["mosquitto_pub", "-h", host, "-p", port, "-q", "1", "-t", topic, "-f", str(path)],
        check=True,
        timeout=120,
        capture_output=True,
    )


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="needs mosquitto-clients")
async def test_an_oversized_message_does_not_stop_ingestion(
    spawn: ClusterFactory, database_url: str, make_broker: BrokerFactory, tmp_path: Path
) -> None:
    """After a 48 MiB message to a subscribed topic, 2,000 ordinary readings are all
    stored within 40 s, neither instance reconnects, and a payload just above
    MAX_PAYLOAD_BYTES (within the announced packet size) is counted as a reject."""
    broker = make_broker()  # no message_size_limit: the broker delivers anything
    equipment = await seed_equipment(database_url, 4)
    env = {"MQTT_URL": broker.url, "MAX_PAYLOAD_BYTES": str(MAX_PAYLOAD)}
    nodes = [spawn("node-a", **env), spawn("node-b", **env)]
    await wait_single_leader(nodes)
    for node in nodes:
        await wait_until(partial(_subscribed, node, 4), 15, f"not subscribed: {node.tail()}")
    big = tmp_path / "big.bin"
    big.write_bytes(b"x" * OVERSIZED_BYTES)
    await asyncio.to_thread(_publish_file, broker.url, equipment[0][1], big)
    slightly = tmp_path / "slightly.bin"
    slightly.write_bytes(b"y" * (MAX_PAYLOAD + 10))
    await asyncio.to_thread(_publish_file, broker.url, equipment[1][1], slightly)

    messages = generic_messages(equipment, 500)
    await publish(broker.url, messages, rate=1000)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages}, timeout=40)

    for node in nodes:
        status, body = await node.get("/health/mqtt")
        assert status == 200 and body is not None, node.tail()
        assert body["counters"]["connects"] == 1, f"{node.name} reconnected: {node.tail()}"
        assert body["counters"]["rejectsByReason"].get("payload_too_large") == 1, body
        assert body["maxPacketBytes"] < OVERSIZED_BYTES
        status, health = await node.get("/health")
        assert status == 200 and health is not None
        assert health["checks"]["mqtt"]["status"] == "connected"


async def test_a_reconnect_loop_is_reported_unhealthy(
    spawn: ClusterFactory, database_url: str, make_broker: BrokerFactory, base_env: dict[str, str]
) -> None:
    """A connection dropped again and again (here: another client taking over the same
    client id, so the broker closes ours) is unhealthy on /health and /health/mqtt."""
    broker = make_broker()
    await seed_equipment(database_url, 1)
    node = spawn("node-a", MQTT_URL=broker.url)
    await wait_single_leader([node])
    await wait_until(lambda: _subscribed(node, 1), 15, f"not subscribed: {node.tail()}")
    client_id = client_id_for("node-a", base_env["CLUSTER_NAME"])
    host, port = broker.url.removeprefix("mqtt://").rsplit(":", 1)

    async def kick() -> None:
        thief = gmqtt.Client(client_id, clean_session=False, session_expiry_interval=86_400)
        await thief.connect(host, int(port), keepalive=10)
        await thief.disconnect()

    async def looping() -> bool:
        await kick()
        status, body = await node.get("/health")
        return status == 503 and body is not None and body["checks"]["mqtt"]["status"] == "flapping"

    await wait_until(looping, 30, f"reconnect loop never reported: {node.tail()}", interval=0.3)
    status, body = await node.get("/health/mqtt")
    assert status == 503 and body is not None and body["reconnectLoop"] is True
