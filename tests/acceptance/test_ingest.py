"""MQTT intake of a running cluster: topic catalogue changes, broker restarts, HEAD, trim."""

from __future__ import annotations

import aiohttp
import asyncpg

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    generic_messages,
    publish,
    seed_equipment,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import BrokerFactory


async def _subscribed(inst: InstanceProcess, count: int) -> bool:
    _, body = await inst.get("/health")
    return bool(body and body["checks"].get("mqtt", {}).get("subscribedTopics") == count)


async def test_new_equipment_is_picked_up_without_restart(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """Equipment enabled at runtime is subscribed within 5 s and its readings stored;
    disabled equipment is unsubscribed."""
    await seed_equipment(database_url, 2)
    node = spawn("node-a")
    await wait_single_leader([node])
    await wait_until(lambda: _subscribed(node, 2), 10, "initial topics not subscribed")
    added = await seed_equipment(database_url, 1, prefix="new")
    await wait_until(lambda: _subscribed(node, 3), 5, f"new topic not picked up: {node.tail()}")
    messages = generic_messages(added, 5)
    await publish(mosquitto.url, messages, rate=100)  # type: ignore[attr-defined]
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages})
    conn = await asyncpg.connect(database_url)
    await conn.execute("UPDATE equipamentos SET mqtt_habilitado = false WHERE id = 'new0000'")
    await conn.execute("UPDATE equipamentos SET deleted_at = now() WHERE id = 'eq0000'")
    await conn.close()
    await wait_until(lambda: _subscribed(node, 1), 5, "disabled topics still subscribed")


async def test_broker_restart_is_survived_without_restart(
    base_env: dict[str, str], database_url: str, make_broker: BrokerFactory, spawn: ClusterFactory
) -> None:
    """The broker restarts: the instance reconnects, resubscribes and keeps storing."""
    broker = make_broker()
    equipment = await seed_equipment(database_url, 3)
    node = spawn("node-a", MQTT_URL=broker.url)
    await wait_single_leader([node])
    await wait_until(lambda: _subscribed(node, 3), 10, "not subscribed")
    before = generic_messages(equipment, 5)
    await publish(broker.url, before, rate=100)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in before})
    broker.restart()
    await wait_until(
        lambda: len(node.find("mqtt.connected")) >= 2, 20, f"no reconnect: {node.tail()}"
    )
    after = generic_messages(equipment, 5, start=before[-1][3])
    await publish(broker.url, after, rate=100)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in after})
    assert node.find("mqtt.disconnected")


async def test_head_gives_the_code_alone(spawn: ClusterFactory, database_url: str) -> None:
    """HEAD on the role routes answers the status code with no body (load balancers)."""
    await seed_equipment(database_url, 1)
    leader = spawn("node-a")
    await wait_single_leader([leader])
    async with aiohttp.ClientSession() as session:
        for path, code in (("/health/leader", 200), ("/health/standby", 503), ("/health", 200)):
            async with session.head(f"http://127.0.0.1:{leader.http_port}{path}") as resp:
                assert resp.status == code, path
                assert await resp.read() == b""


async def test_standby_memory_drains_as_the_leader_commits(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """A standby holds readings only until it sees them committed: its buffer returns to 0."""
    equipment = await seed_equipment(database_url, 10)
    leader = spawn("node-a")
    await wait_single_leader([leader])
    standby = spawn("node-b")
    await wait_until(lambda: _subscribed(standby, 10), 20, "standby not subscribed")
    messages = generic_messages(equipment, 50)
    await publish(mosquitto.url, messages, rate=1000)  # type: ignore[attr-defined]
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages})

    async def received_and_drained() -> bool:
        _, body = await standby.get("/health")
        checks = body["checks"] if body else {}
        return bool(
            checks
            and checks["intake"]["readings"] >= len(messages)
            and checks["buffer"]["pending"] == 0
        )

    try:
        await wait_until(received_and_drained, 15, "standby buffer did not drain")
    except AssertionError:
        _, body = await standby.get("/health")
        raise AssertionError(f"standby did not drain: {body}\n{standby.tail(30)}") from None
    _, body = await leader.get("/health")
    assert body is not None and body["checks"]["buffer"]["pending"] == 0


async def test_leader_cut_off_from_its_broker_hands_over(
    spawn: ClusterFactory, database_url: str, make_broker: BrokerFactory
) -> None:
    """A leader that loses the broker for a lease TTL steps down to a standby that still
    hears the devices; the standby then stores what arrives."""
    equipment = await seed_equipment(database_url, 3)
    leader_broker, standby_broker = make_broker(), make_broker()
    leader = spawn("node-a", MQTT_URL=leader_broker.url)
    await wait_single_leader([leader])
    standby = spawn("node-b", MQTT_URL=standby_broker.url)
    await wait_until(lambda: _subscribed(standby, 3), 20, "standby not subscribed")
    leader_broker.stop()
    await wait_until(standby.is_leader, 20, f"no handover: {leader.tail()}")
    assert leader.find("leader.released", reason="broker_unreachable")
    messages = generic_messages(equipment, 5)
    await publish(standby_broker.url, messages, rate=100)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages})
    assert not await leader.is_leader()


async def test_invalid_topics_are_skipped_and_reported(
    spawn: ClusterFactory, database_url: str
) -> None:
    """Wildcards, empty topics and leading/trailing '/' are never subscribed; they are
    logged and listed on /health/mqtt."""
    await seed_equipment(database_url, 1)
    conn = await asyncpg.connect(database_url)
    await conn.executemany(
        "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
        "VALUES ($1, $1, $2, true)",
        [
            ("bad-1", "a/+/b"),
            ("bad-2", "x/#"),
            ("bad-3", "/lead"),
            ("bad-4", "trail/"),
            ("bad-5", ""),
        ],
    )
    await conn.close()
    node = spawn("node-a", HEALTH_DETAILS="public")  # topic lists are details (issue 16)
    await wait_single_leader([node])
    await wait_until(lambda: _subscribed(node, 1), 10, "valid topic not subscribed")
    status, body = await node.get("/health/mqtt")
    assert status == 200 and body is not None
    assert body["topics"] == ["aupus/test/eq0000"]
    assert sorted(i["equipamento_id"] for i in body["invalidTopics"]) == [
        "bad-1",
        "bad-2",
        "bad-3",
        "bad-4",
        "bad-5",
    ]
    logged = {e["equipamento_id"] for e in node.find("topics.invalid")}
    assert logged == {"bad-1", "bad-2", "bad-3", "bad-4", "bad-5"}
