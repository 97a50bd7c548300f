"""Longer and nastier outages of the servers around the cluster, survived in place.

No instance is ever restarted here: each test notes the pids it started and checks at
the end that the same processes are still the ones registered in `ha_instances`.
Readings are counted one by one: what the broker acknowledged to the publisher is what
must be stored, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from aupus_ha.lab.embedded import HOST, EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
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
from tests.helpers import BrokerFactory, instance_env
from tests.netfaults import NetNamespace, TcpForwarder, netns_unavailable

RENEW_DEADLINE_S = float(FAST_TIMINGS["RENEW_DEADLINE_S"])
LEASE_TTL_S = float(FAST_TIMINGS["LEASE_TTL_S"])

Starter = Callable[..., InstanceProcess]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Starter]:
    """Start `aupus-ha run` processes with a given environment; all killed afterwards."""
    started: list[InstanceProcess] = []

    def factory(name: str, env: dict[str, str]) -> InstanceProcess:
        inst = InstanceProcess(name, env, tmp_path)
        started.append(inst)
        return inst.start()

    yield factory
    for inst in started:
        inst.stop_now()


def _env(dsn: str, mqtt_url: str, **extra: str) -> dict[str, str]:
    # A cluster name per call: fresh MQTT sessions.
    return instance_env(dsn, mqtt_url, f"outage-{uuid.uuid4().hex[:8]}", **extra)


async def _check(inst: InstanceProcess, route: str, code: int, **fields: Any) -> bool:
    got, body = await inst.get(route)
    return got == code and body is not None and all(body.get(k) == v for k, v in fields.items())


def _when(count: int, event: asyncio.Event) -> Callable[[int], None]:
    """An `on_sent` callback that sets `event` once `count` readings are acknowledged."""

    def on_sent(n: int) -> None:
        if n >= count:
            event.set()

    return on_sent


async def _db_status(inst: InstanceProcess) -> str | None:
    _, body = await inst.get("/health/database", timeout=3)
    return None if body is None else str(body.get("status"))


async def _subscribed(inst: InstanceProcess, topics: int) -> bool:
    return await _check(inst, "/health/mqtt", 200, status="connected", subscribedTopics=topics)


async def _same_processes(dsn: str, nodes: list[InstanceProcess], pids: list[int]) -> None:
    """Every node still runs as the process it was started as (nothing restarted)."""
    assert all(n.alive() for n in nodes), [n.tail() for n in nodes if not n.alive()]
    assert [n.pid for n in nodes] == pids
    rows = await fetch(dsn, "SELECT instance_id, pid FROM ha_instances")
    registered = {r["instance_id"]: r["pid"] for r in rows}
    assert [registered[n.name] for n in nodes] == pids, registered


async def _stored_once(dsn: str, messages: list[Any], timeout: float = 60) -> None:
    await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=timeout)
    keys = await stored_keys(dsn)
    assert len(keys) == len(set(keys)) == len(messages), (
        f"{len(keys)} rows, {len(set(keys))} distinct, {len(messages)} published"
    )


# 20 s (ten lease TTLs) in the default run; the full minute behind `-m slow` (CI budget).
@pytest.mark.parametrize(
    "outage_s", [20.0, pytest.param(60.0, marks=pytest.mark.slow)], ids=["20s", "60s"]
)
async def test_database_down_for_a_while(
    own_postgres: EmbeddedPostgres, mosquitto: EmbeddedMosquitto, start: Starter, outage_s: float
) -> None:
    """PostgreSQL is stopped for `outage_s` while readings keep coming at 25/s: both
    instances keep running, report the database as disconnected, hold nobody as leader,
    and once it is back one of them leads and stores every reading of the outage, once."""
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 5)
    env = _env(dsn, mosquitto.url)
    nodes = [start("node-a", env), start("node-b", env)]
    await wait_single_leader(nodes, timeout=30)
    await wait_until(lambda: _subscribed(nodes[1], 5), 20, "node-b not subscribed")
    pids = [n.pid for n in nodes]
    rate = 25.0
    messages = generic_messages(equipment, int(rate * (outage_s + 4) / len(equipment)))
    begun = asyncio.Event()
    pub = asyncio.create_task(publish(mosquitto.url, messages, rate=rate, on_sent=_when(50, begun)))
    await asyncio.wait_for(begun.wait(), 20)

    await asyncio.to_thread(own_postgres.stop)
    stopped_at = time.monotonic()
    for node in nodes:
        await wait_until(
            partial(_check, node, "/health", 503),
            RENEW_DEADLINE_S + 10,
            f"{node.name} /health not 503 without its database: {node.tail()}",
        )
        assert await _db_status(node) == "disconnected"
    assert await leaders(nodes) == [], "somebody still leads without a database"
    # The fault lasts its time; meanwhile the processes must stay up and say so.
    while (left := outage_s - (time.monotonic() - stopped_at)) > 0:
        await asyncio.sleep(min(5.0, left))
        assert all(n.alive() for n in nodes), [n.tail() for n in nodes]
        assert await leaders(nodes) == []
    await asyncio.to_thread(own_postgres.start)

    assert await pub == len(messages)
    await wait_single_leader(nodes, timeout=30)
    await _stored_once(dsn, messages)
    await _same_processes(dsn, nodes, pids)
    for node in nodes:
        await wait_until(
            partial(_check, node, "/health/database", 200, status="connected"),
            20,
            f"{node.name} does not report its database back: {node.tail()}",
        )


async def test_broker_down_for_30_seconds(
    database_url: str, make_broker: BrokerFactory, start: Starter
) -> None:
    """The broker is stopped for 30 s and restarted on the same port (its persistence
    file kept): the instances report it on /health/mqtt, reconnect by themselves and
    resubscribe; readings published right after the restart (queued in their persistent
    sessions) and later ones are all stored once."""
    broker = make_broker()
    equipment = await seed_equipment(database_url, 5)
    env = _env(database_url, broker.url)
    nodes = [start("node-a", env), start("node-b", env)]
    await wait_single_leader(nodes, timeout=30)
    for node in nodes:
        await wait_until(partial(_subscribed, node, 5), 20, f"{node.name} not subscribed")
    pids = [n.pid for n in nodes]
    port = broker.port
    start_ts = generic_messages(equipment, 1)[0][3]
    before = generic_messages(equipment, 20, start=start_ts)
    assert await publish(broker.url, before, rate=200) == len(before)

    await asyncio.to_thread(broker.stop)
    stopped_at = time.monotonic()
    for node in nodes:
        await wait_until(
            partial(_check, node, "/health/mqtt", 503, status="disconnected"),
            10,
            f"{node.name} did not report the broker down: {node.tail()}",
        )
        assert await _check(node, "/health", 503)
    await asyncio.sleep(max(0.0, 30 - (time.monotonic() - stopped_at)))  # the outage itself
    assert all(n.alive() for n in nodes)
    await asyncio.to_thread(broker.start)
    assert broker.port == port

    # Published at once: the instances are still backing off, their sessions queue it.
    later = start_ts + timedelta(minutes=10)
    queued = generic_messages(equipment, 20, start=later)
    assert await publish(broker.url, queued, rate=200) == len(queued)
    for node in nodes:
        await wait_until(
            partial(_subscribed, node, 5), 30, f"{node.name} did not resubscribe: {node.tail()}"
        )
        assert node.find("mqtt.disconnected") and len(node.find("mqtt.connected")) >= 2
    after = generic_messages(equipment, 20, start=start_ts + timedelta(minutes=20))
    assert await publish(broker.url, after, rate=200) == len(after)
    await _stored_once(database_url, before + queued + after)
    await wait_single_leader(nodes, timeout=10)
    await _same_processes(database_url, nodes, pids)


async def test_unreachable_hosts_at_start_keep_instances_running(
    database_url: str, mosquitto: EmbeddedMosquitto, start: Starter
) -> None:
    """A database host name that does not resolve and an MQTT host that does not
    resolve: each instance starts, keeps retrying with backoff, says what is missing on
    /health (503) and /health/database or /health/mqtt, and exits 0 on SIGTERM."""
    no_db = start(
        "no-db",
        _env("postgresql://postgres@db.aupus-test.invalid:5432/postgres", mosquitto.url),
    )
    no_broker = start("no-broker", _env(database_url, "mqtt://broker.aupus-test.invalid:1883"))
    # Retries: several failed attempts logged, spaced out by the backoff.
    await wait_until(
        lambda: len(no_db.find("db.unavailable")) >= 3, 20, f"no db retries: {no_db.tail()}"
    )
    await wait_until(
        lambda: len(no_broker.find("mqtt.connect_failed")) >= 3,
        20,
        f"no broker retries: {no_broker.tail()}",
    )
    for inst, event in ((no_db, "db.unavailable"), (no_broker, "mqtt.connect_failed")):
        stamps = [e["timestamp"] for e in inst.find(event)]
        assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)

    status, body = await no_db.get("/health", timeout=3)
    assert status == 503 and body is not None, no_db.tail()
    assert body["checks"]["database"]["status"] == "disconnected"
    assert await _db_status(no_db) == "disconnected"
    assert "aupus-test" not in str(body), "health leaks the DATABASE_URL"

    status, body = await no_broker.get("/health", timeout=3)
    assert status == 503 and body is not None, no_broker.tail()
    assert body["checks"]["mqtt"]["status"] == "disconnected"
    assert await _check(no_broker, "/health/mqtt", 503, status="disconnected")
    assert await _db_status(no_broker) == "connected"

    for inst in (no_db, no_broker):
        assert inst.alive(), inst.tail()
        inst.signal(signal.SIGTERM)
    assert await no_db.wait_exit(20) == 0, no_db.tail()
    assert await no_broker.wait_exit(20) == 0, no_broker.tail()


async def test_slow_database_no_split_brain(
    own_postgres: EmbeddedPostgres, mosquitto: EmbeddedMosquitto, start: Starter
) -> None:
    """Every PostgreSQL process is frozen (SIGSTOP) three times for LEASE_TTL_S - 1.5 s
    while readings flow: at no sample do two instances lead, the leader keeps leading or
    hands over cleanly, and every reading is stored once."""
    ttl, renew = 4.0, 2.8
    freeze_s = ttl - 1.5
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 5)
    env = _env(dsn, mosquitto.url, LEASE_TTL_S=str(ttl), RENEW_DEADLINE_S=str(renew))
    nodes = [start("node-a", env), start("node-b", env)]
    await wait_single_leader(nodes, timeout=30)
    for node in nodes:
        await wait_until(partial(_subscribed, node, 5), 20, f"{node.name} not subscribed")
    pids = [n.pid for n in nodes]
    messages = generic_messages(equipment, 80)  # 400 readings over 16 s
    begun = asyncio.Event()
    pub = asyncio.create_task(publish(mosquitto.url, messages, rate=25, on_sent=_when(25, begun)))
    await asyncio.wait_for(begun.wait(), 20)

    samples: list[int] = []
    sampling = asyncio.Event()

    async def sample() -> None:
        while not sampling.is_set():
            samples.append(len(await leaders(nodes)))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    try:
        for _ in range(3):
            await asyncio.to_thread(own_postgres.pause)
            await asyncio.sleep(freeze_s)  # the fault's duration
            await asyncio.to_thread(own_postgres.resume)
            await wait_single_leader(nodes, timeout=ttl + 10)
            await asyncio.sleep(1.5)  # let it run normally between freezes
        assert await pub == len(messages)
        await _stored_once(dsn, messages)
    finally:
        sampling.set()
        await sampler
        own_postgres.resume()
    assert samples and max(samples) <= 1, f"two leaders at once: {samples}"
    await _same_processes(dsn, nodes, pids)
    handovers = await fetch(dsn, "SELECT epoch, reason FROM ha_handovers ORDER BY epoch")
    epochs = [r["epoch"] for r in handovers]
    assert epochs == list(range(1, len(epochs) + 1))
    assert len(await leaders(nodes)) == 1


async def test_database_name_stops_resolving_during_run(
    pg_server: EmbeddedPostgres,
    mosquitto: EmbeddedMosquitto,
    database_url: str,
    tmp_path: Path,
) -> None:
    """DATABASE_URL names a host that resolves at start and stops resolving while the
    instance runs (its own /etc/hosts in a network namespace), just as its sessions are
    cut: it keeps running, retries, reports the database disconnected on /health (503),
    buffers the readings, and once the name resolves again it leads and stores them."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"network namespaces not permitted here (a private /etc/hosts): {reason}")
    equipment = await seed_equipment(database_url, 5)
    name = "db.aupus-ha.test"
    with NetNamespace() as ns, contextlib.ExitStack() as stack:
        db = TcpForwarder(ns.host_ip, HOST, pg_server.port).start()
        stack.callback(db.stop)
        mqtt = TcpForwarder(ns.host_ip, HOST, mosquitto.port).start()
        stack.callback(mqtt.stop)
        ns.set_hosts({name: ns.host_ip})
        netloc = f"postgres@{name}:{db.port}"
        dsn = urlunsplit(urlsplit(database_url)._replace(netloc=netloc))
        env = _env(dsn, f"mqtt://{ns.host_ip}:{mqtt.port}")
        node = InstanceProcess("node-a", env, tmp_path, wrap=ns.wrap, http_host=ns.ns_ip)
        stack.callback(node.stop_now)
        node.start()
        await wait_single_leader([node], timeout=30)
        await wait_until(partial(_subscribed, node, 5), 20, f"not subscribed: {node.tail()}")
        messages = generic_messages(equipment, 40)  # 200 readings over 4 s
        begun = asyncio.Event()
        pub = asyncio.create_task(
            publish(mosquitto.url, messages, rate=50, on_sent=_when(50, begun))
        )
        await asyncio.wait_for(begun.wait(), 20)

        ns.set_hosts({})  # the name is gone ...
        await fetch(  # ... and so are its sessions: it has to resolve the name again
            database_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'aupus-ha/node-a/%'",
        )
        await wait_until(
            partial(_check, node, "/health", 503),
            RENEW_DEADLINE_S + 10,
            f"/health not 503 with an unresolvable database: {node.tail()}",
        )
        assert await _db_status(node) == "disconnected"
        await wait_until(
            lambda: any("gaierror" in str(e.get("error")) for e in node.find("db.unavailable")),
            20,
            f"no failed name lookup logged: {node.tail()}",
        )
        assert await pub == len(messages)
        assert node.alive() and not await node.is_leader()

        ns.set_hosts({name: ns.host_ip})
        await wait_single_leader([node], timeout=30)
        await _stored_once(database_url, messages)
        await _same_processes(database_url, [node], [node.pid])
