"""The cluster core, end to end: real processes, real PostgreSQL, real Mosquitto.

Each test starts `aupus-ha run` processes, publishes readings through the broker and
checks the rows in `equipamentos_dados`: complete, unique, and written by one leader.
"""

from __future__ import annotations

import asyncio
import signal
import time

from aupus_ha.database.queries import migrations
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    leaders,
    publish,
    seed_equipment,
    stored_keys,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import standby_ready


async def _start_pair(spawn: ClusterFactory) -> tuple[InstanceProcess, InstanceProcess]:
    a = spawn("node-a")
    leader = await wait_single_leader([a])
    b = spawn("node-b")
    await wait_until(lambda: standby_ready(b), 20, f"node-b not a healthy standby: {b.tail()}")
    return leader, b


async def _failover_seconds(standby: InstanceProcess, since: float, timeout: float = 15) -> float:
    await wait_until(
        standby.is_leader, timeout, f"standby never led: {standby.tail()}", interval=0.01
    )
    return time.monotonic() - since


async def test_exactly_one_leader_sampled_continuously(
    spawn: ClusterFactory, database_url: str
) -> None:
    """Two instances: at every sample exactly one answers 200 on /health/leader."""
    await seed_equipment(database_url, 3)
    a, b = await _start_pair(spawn)
    samples = []
    for _ in range(60):
        found = await leaders([a, b])
        samples.append(len(found))
        await asyncio.sleep(0.05)
    assert samples == [1] * 60
    status, body = await b.get("/health/leader")
    assert status == 503 and body is not None
    assert body["is_leader"] is False and body["role"] == "standby"
    assert body["leader_id"] == "node-a" and body["epoch"] == 1
    status, body = await a.get("/health/leader")
    assert status == 200 and body is not None
    assert {
        "instance_id",
        "is_leader",
        "role",
        "leader_id",
        "epoch",
        "leader_since",
        "last_flush_at",
    } <= set(body)


async def _fault_mid_stream(
    spawn: ClusterFactory, dsn: str, broker_url: str, fault: signal.Signals
) -> tuple[InstanceProcess, InstanceProcess, float]:
    """Start a pair, publish 600 readings at 200/s, send `fault` to the leader half-way.

    Returns (old leader, new leader, seconds until the new leader answered 200) once
    every reading is stored, after checking each is stored exactly once.
    """
    equipment = await seed_equipment(dsn, 10)
    leader, standby = await _start_pair(spawn)
    messages = generic_messages(equipment, 60)
    half = asyncio.Event()
    pub = asyncio.create_task(
        publish(broker_url, messages, rate=200, on_sent=lambda n: n == 300 and half.set())
    )
    await asyncio.wait_for(half.wait(), 20)
    faulted_at = time.monotonic()
    leader.signal(fault)
    failover = await _failover_seconds(standby, faulted_at)
    assert await pub == len(messages)
    await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages})
    keys = await stored_keys(dsn)
    assert len(keys) == len(set(keys)) == len(messages)
    return leader, standby, failover


async def test_kill9_of_leader_loses_nothing(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """kill -9 of the leader while readings flow: standby leads within 2 s, all stored once."""
    url = mosquitto.url  # type: ignore[attr-defined]
    _, standby, failover = await _fault_mid_stream(spawn, database_url, url, signal.SIGKILL)
    assert failover < 2.0, f"failover took {failover:.2f}s"
    acquired = standby.find("leader.acquired")
    assert acquired and acquired[-1]["previous_leader"] == "node-a"
    assert acquired[-1]["reason"] in {"lost", "evicted"} and acquired[-1]["epoch"] == 2


async def test_sigterm_hands_over_without_gap(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """SIGTERM of the leader: exit 0, release logged, standby leads at once, nothing lost."""
    url = mosquitto.url  # type: ignore[attr-defined]
    leader, _, failover = await _fault_mid_stream(spawn, database_url, url, signal.SIGTERM)
    assert await leader.wait_exit(15) == 0
    assert failover < 2.0, f"handover took {failover:.2f}s"
    assert leader.find("leader.released", epoch=1)
    handover = (
        await fetch(database_url, "SELECT reason, gap_ms FROM ha_handovers WHERE epoch = 2")
    )[0]
    assert handover["reason"] == "released" and handover["gap_ms"] < 1000
    role = (
        await fetch(database_url, "SELECT role FROM ha_instances WHERE instance_id = 'node-a'")
    )[0]["role"]
    assert role == "stopped"


async def test_paused_leader_is_evicted_and_fenced(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """SIGSTOP of the leader past LEASE_TTL_S: evicted, replaced; on SIGCONT it commits
    nothing under its old epoch and rejoins as standby."""
    equipment = await seed_equipment(database_url, 10)
    leader, standby = await _start_pair(spawn)
    messages = generic_messages(equipment, 80)
    pub = asyncio.create_task(publish(mosquitto.url, messages, rate=200))  # type: ignore[attr-defined]
    await asyncio.sleep(1.0)  # readings are flowing through the leader
    leader.signal(signal.SIGSTOP)
    paused_at = time.monotonic()
    await _failover_seconds(standby, paused_at, timeout=20)
    assert standby.find("leader.evicted", previous_leader="node-a", epoch=1)
    # Every row the old leader wrote carries epoch 1. Its sessions were ended before the
    # standby could lead, so from here on that count must never move.
    epoch1_rows = await _rows_of_epoch(database_url, 1)
    await asyncio.sleep(0.5)
    leader.signal(signal.SIGCONT)
    assert await pub == len(messages)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages})

    async def rejoined() -> bool:
        status, body = await leader.get("/health/leader")
        return status == 503 and body is not None and body["role"] == "standby"

    await wait_until(rejoined, 20, f"old leader did not rejoin as standby: {leader.tail()}")
    assert leader.find("leader.lost") or leader.find("leader.fenced")
    assert await _rows_of_epoch(database_url, 1) == epoch1_rows, "the paused leader committed"
    keys = await stored_keys(database_url)
    assert len(keys) == len(set(keys)) == len(messages)
    assert [i.name for i in await leaders([leader, standby])] == ["node-b"]

    # The resumed process is a sound standby: when node-b dies it leads, and keeps leading.
    standby.signal(signal.SIGKILL)
    await _failover_seconds(leader, time.monotonic())
    _, body = await leader.get("/health/leader")
    assert body is not None
    epoch = body["epoch"]
    for _ in range(20):
        status, body = await leader.get("/health/leader")
        assert status == 200 and body is not None and body["epoch"] == epoch
        await asyncio.sleep(0.1)


async def _rows_of_epoch(dsn: str, epoch: int) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM equipamentos_dados WHERE ha_epoch = $1", epoch
    )
    return int(rows[0]["n"])


async def test_simultaneous_boot_on_empty_database(
    spawn: ClusterFactory, database_url: str
) -> None:
    """Two instances booted together on an empty database: migrations once, one leader."""
    a = spawn("node-a")
    b = spawn("node-b")
    await wait_single_leader([a, b], timeout=30)
    rows = await fetch(
        database_url,
        "SELECT version, count(*) AS n FROM schema_migrations GROUP BY version ORDER BY version",
    )
    assert [r["version"] for r in rows] == [v for v, _, _ in migrations()]
    assert all(r["n"] == 1 for r in rows)
    epochs = await fetch(database_url, "SELECT epoch FROM ha_leadership")
    assert [r["epoch"] for r in epochs] == [1]


async def test_development_mode_never_writes(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """MQTT_MODE=development alone: receives readings, writes zero rows, never leads."""
    equipment = await seed_equipment(database_url, 5)
    dev = spawn("dev-1", MQTT_MODE="development")

    async def subscribed() -> bool:
        status, body = await dev.get("/health")
        return (
            status == 200 and body is not None and body["checks"]["mqtt"]["subscribedTopics"] == 5
        )

    await wait_until(subscribed, 20, f"dev instance not subscribed: {dev.tail()}")
    messages = generic_messages(equipment, 10)
    await publish(mosquitto.url, messages, rate=500)  # type: ignore[attr-defined]

    async def received_all() -> bool:
        _, body = await dev.get("/health")
        return bool(body and body["checks"]["intake"]["messages"] >= len(messages))

    await wait_until(received_all, 20, "development instance did not receive the readings")
    assert await stored_keys(database_url) == []
    status, body = await dev.get("/health/leader")
    assert status == 503 and body is not None and body["role"] == "observer"
    assert await fetch(database_url, "SELECT epoch FROM ha_leadership") == []


async def test_restarted_instance_takes_its_row_back_at_once(
    spawn: ClusterFactory, database_url: str
) -> None:
    """A crashed instance restarted under the same INSTANCE_ID starts at once (no clash)."""
    first = spawn("node-a")
    await wait_single_leader([first])
    first.signal(signal.SIGKILL)
    await first.wait_exit(10)
    again = spawn("node-a")
    await wait_single_leader([again], timeout=15)
    assert again.alive()


async def test_same_instance_id_twice_is_refused(spawn: ClusterFactory, database_url: str) -> None:
    """A second live process with the same INSTANCE_ID exits 2 naming the clash."""
    first = spawn("node-a")
    await wait_single_leader([first])
    clash = spawn("node-a")
    assert await clash.wait_exit(20) == 2
    assert "INSTANCE_ID='node-a' is already in use" in clash.tail()
    assert await first.is_leader()
