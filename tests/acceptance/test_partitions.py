"""Network partitions of the leader, both ways, healed without restarting anything.

The leader (node-a) reaches PostgreSQL and the broker through a path we can cut; the
standby (node-b) reaches them directly. Two ways to cut, same tests:

* ``netns``: node-a runs in a network namespace of its own (tests/netfaults.py); the
  cut drops the packets of one port on its veth link, both directions, silently.
* ``proxy``: node-a talks through `aupus_ha.lab.faultproxy.FaultProxy`, switched to
  ``blackhole`` (bytes swallowed, sockets left open).

Either way the partitioned side is not told anything: only its own timeouts and
keepalives can notice, as with a pulled cable. Readings flow through the whole scenario
and every one of them must end up stored exactly once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from aupus_ha.lab.embedded import HOST, EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.faultproxy import FaultProxy
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
from tests.acceptance.conftest import ClusterFactory
from tests.netfaults import NETNS_SKIP_REASON, NetNamespace, TcpForwarder, netns_unavailable

RENEW_DEADLINE_S = float(FAST_TIMINGS["RENEW_DEADLINE_S"])
LEASE_TTL_S = float(FAST_TIMINGS["LEASE_TTL_S"])
# What a probe loop adds on top of the deadline: its interval and one HTTP round trip.
PROBE_SLACK_S = 0.5
# ingest.py derives the MQTT keepalive from the lease TTL (TTL / 2, at least 1 s) and
# gmqtt drops a connection after 2 x keepalive without a byte in, checked every
# keepalive / 2: a *silent* broker is noticed within 2.5 x keepalive.
MQTT_KEEPALIVE_S = max(1.0, round(LEASE_TTL_S / 2))
BROKER_LOSS_NOTICED_S = 2.5 * MQTT_KEEPALIVE_S


@dataclass
class Partition:
    """A way to cut node-a off from the database or the broker, and to heal it."""

    db_url: str
    mqtt_url: str
    wrap: tuple[str, ...] = ()
    http_host: str = "127.0.0.1"
    _cut_db: Callable[[], Awaitable[None]] | None = None
    _cut_broker: Callable[[], Awaitable[None]] | None = None
    _heal: Callable[[], Awaitable[None]] | None = None
    cuts: list[str] = field(default_factory=list)

    async def cut_db(self) -> None:
        assert self._cut_db is not None
        await self._cut_db()
        self.cuts.append("db")

    async def cut_broker(self) -> None:
        assert self._cut_broker is not None
        await self._cut_broker()
        self.cuts.append("broker")

    async def heal(self) -> None:
        assert self._heal is not None
        await self._heal()
        self.cuts.clear()


def _via(url: str, host: str, port: int) -> str:
    """`url` with its host and port replaced (user, path and query kept)."""
    parts = urlsplit(url)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}{host}:{port}"))


@pytest.fixture(params=["netns", "proxy"])
async def partition(
    request: pytest.FixtureRequest,
    pg_server: EmbeddedPostgres,
    mosquitto: EmbeddedMosquitto,
    database_url: str,
) -> AsyncIterator[Partition]:
    if request.param == "netns":
        reason = netns_unavailable()
        if reason is not None:
            pytest.skip(f"{NETNS_SKIP_REASON} ({reason})")
        with _NetnsPartition(pg_server, mosquitto, database_url) as part:
            yield part
    else:
        async with _ProxyPartition(pg_server, mosquitto, database_url) as part:
            yield part


class _NetnsPartition:
    def __init__(self, pg: EmbeddedPostgres, broker: EmbeddedMosquitto, dsn: str) -> None:
        self._ns = NetNamespace()
        self._pg, self._broker, self._dsn = pg, broker, dsn
        self._forwarders: list[TcpForwarder] = []

    def __enter__(self) -> Partition:
        ns = self._ns.create()
        try:
            db = TcpForwarder(ns.host_ip, HOST, self._pg.port).start()
            self._forwarders.append(db)
            mqtt = TcpForwarder(ns.host_ip, HOST, self._broker.port).start()
            self._forwarders.append(mqtt)
        except BaseException:
            self.__exit__()
            raise

        async def cut(port: int) -> None:
            await asyncio.to_thread(ns.block_port, port)

        async def cut_db() -> None:
            await cut(db.port)

        async def cut_broker() -> None:
            await cut(mqtt.port)

        async def heal() -> None:
            await asyncio.to_thread(ns.unblock_all)

        return Partition(
            db_url=_via(self._dsn, ns.host_ip, db.port),
            mqtt_url=f"mqtt://{ns.host_ip}:{mqtt.port}",
            wrap=ns.wrap,
            http_host=ns.ns_ip,
            _cut_db=cut_db,
            _cut_broker=cut_broker,
            _heal=heal,
        )

    def __exit__(self, *_: object) -> None:
        try:
            self._ns.cleanup()  # kills what still runs inside first
        finally:
            for forwarder in self._forwarders:
                forwarder.stop()


class _ProxyPartition:
    def __init__(self, pg: EmbeddedPostgres, broker: EmbeddedMosquitto, dsn: str) -> None:
        self._db = FaultProxy(HOST, pg.port)
        self._mqtt = FaultProxy(HOST, broker.port)
        self._dsn = dsn

    async def __aenter__(self) -> Partition:
        await self._db.start()
        try:
            await self._mqtt.start()
        except BaseException:
            await self._db.stop()
            raise
        db, mqtt = self._db, self._mqtt

        async def cut_db() -> None:
            db.set_mode("blackhole")

        async def cut_broker() -> None:
            mqtt.set_mode("blackhole")

        async def heal() -> None:
            db.set_mode("pass")
            mqtt.set_mode("pass")

        return Partition(
            db_url=_via(self._dsn, HOST, db.port),
            mqtt_url=f"mqtt://{HOST}:{mqtt.port}",
            _cut_db=cut_db,
            _cut_broker=cut_broker,
            _heal=heal,
        )

    async def __aexit__(self, *_: object) -> None:
        try:
            await self._db.stop()
        finally:
            await self._mqtt.stop()


@pytest.fixture
def partitioned(
    partition: Partition, base_env: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[str], InstanceProcess]]:
    """Start an instance whose database and broker traffic goes through `partition`."""
    started: list[InstanceProcess] = []

    def factory(name: str) -> InstanceProcess:
        env = {**base_env, "DATABASE_URL": partition.db_url, "MQTT_URL": partition.mqtt_url}
        inst = InstanceProcess(
            name, env, tmp_path, wrap=partition.wrap, http_host=partition.http_host
        )
        started.append(inst)
        return inst.start()

    yield factory
    for inst in started:
        inst.stop_now()


# --- helpers ------------------------------------------------------------------------------


async def _route_ok(inst: InstanceProcess, route: str) -> bool:
    status, _ = await inst.get(route)
    return status == 200


async def _pair(
    partitioned: Callable[[str], InstanceProcess], spawn: ClusterFactory
) -> tuple[InstanceProcess, InstanceProcess]:
    """node-a (behind the partition) leading, node-b (direct) a healthy standby."""
    a = partitioned("node-a")
    await wait_single_leader([a], timeout=30)
    b = spawn("node-b")
    await wait_until(
        lambda: _route_ok(b, "/health/standby"), 30, f"node-b not a standby: {b.tail()}"
    )
    return a, b


async def _rows_of_epoch(dsn: str, epoch: int) -> int:
    rows = await fetch(
        dsn, "SELECT count(*) AS n FROM equipamentos_dados WHERE ha_epoch = $1", epoch
    )
    return int(rows[0]["n"])


async def _registered_pid(dsn: str, instance_id: str) -> int:
    rows = await fetch(dsn, "SELECT pid FROM ha_instances WHERE instance_id = $1", instance_id)
    return int(rows[0]["pid"])


def _publisher(
    url: str, messages: list[Any], rate: float, mark: int
) -> tuple[asyncio.Task[int], asyncio.Event]:
    """Publish in the background; the event is set once `mark` readings are acknowledged."""
    reached = asyncio.Event()

    def on_sent(n: int) -> None:
        if n >= mark:
            reached.set()

    return asyncio.create_task(publish(url, messages, rate=rate, on_sent=on_sent)), reached


async def _all_stored_once(dsn: str, messages: list[Any], published: int) -> None:
    assert published == len(messages), f"broker acknowledged {published} of {len(messages)}"
    await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=60)
    keys = await stored_keys(dsn)
    assert len(keys) == len(set(keys)) == len(messages), (
        f"{len(keys)} rows, {len(set(keys))} distinct, {len(messages)} published"
    )


async def _rejoins_as_standby(a: InstanceProcess, dsn: str, pid: int, timeout: float) -> None:
    await wait_until(
        lambda: _route_ok(a, "/health/standby"),
        timeout,
        f"old leader did not rejoin as a healthy standby: {a.tail()}",
        interval=0.2,
    )
    assert a.alive() and a.pid == pid
    assert await _registered_pid(dsn, "node-a") == pid, "node-a was restarted"


# --- the tests ----------------------------------------------------------------------------


async def test_leader_cut_off_from_database(
    partition: Partition,
    partitioned: Callable[[str], InstanceProcess],
    spawn: ClusterFactory,
    database_url: str,
    mosquitto: EmbeddedMosquitto,
) -> None:
    """The leader still hears the broker but its database packets vanish: it stops
    leading within RENEW_DEADLINE_S on its own, the standby evicts it after the TTL and
    leads, the old leader commits nothing more under its epoch, and once the network is
    back it rejoins as a standby (same process). Every reading is stored once."""
    equipment = await seed_equipment(database_url, 10)
    a, b = await _pair(partitioned, spawn)
    pid = a.pid
    messages = generic_messages(equipment, 100)  # 1000 readings over 10 s
    pub, reached = _publisher(mosquitto.url, messages, rate=100, mark=200)
    await asyncio.wait_for(reached.wait(), 30)

    cut_at = time.monotonic()
    await partition.cut_db()
    await wait_until(
        lambda: _not_leader(a), RENEW_DEADLINE_S + 5, f"node-a kept leading: {a.tail()}", 0.02
    )
    fenced_s = time.monotonic() - cut_at
    assert fenced_s <= RENEW_DEADLINE_S + PROBE_SLACK_S, f"node-a led {fenced_s:.2f}s after cut"
    await wait_until(b.is_leader, LEASE_TTL_S + 10, f"node-b never led: {b.tail()}", 0.02)
    took_over_s = time.monotonic() - cut_at
    assert took_over_s <= LEASE_TTL_S + 3, f"node-b led {took_over_s:.2f}s after the cut"
    assert took_over_s > fenced_s, "node-b led before node-a had stopped leading"
    epoch1_rows = await _rows_of_epoch(database_url, 1)
    await wait_until(
        lambda: a.find("leader.lost") or a.find("leader.fenced"),
        10,
        f"node-a logged no leader.lost/leader.fenced: {a.tail()}",
    )

    published = await pub  # readings keep flowing while node-a is cut off
    await partition.heal()
    await _rejoins_as_standby(a, database_url, pid, timeout=45)
    await _all_stored_once(database_url, messages, published)
    assert await _rows_of_epoch(database_url, 1) == epoch1_rows, "cut-off leader committed"
    assert [i.name for i in await leaders([a, b])] == ["node-b"]


async def _not_leader(inst: InstanceProcess) -> bool:
    status, _ = await inst.get("/health/leader")
    return status == 503


async def test_leader_cut_off_from_broker(
    partition: Partition,
    partitioned: Callable[[str], InstanceProcess],
    spawn: ClusterFactory,
    database_url: str,
    mosquitto: EmbeddedMosquitto,
) -> None:
    """The leader still reaches the database but its broker goes silent: once it knows
    its MQTT connection is gone (keepalive) and that lasted LEASE_TTL_S while node-b
    still hears the broker, it hands over (`leader.released reason=broker_unreachable`).
    Healed, it reconnects to the broker and stays a healthy standby. All stored once."""
    equipment = await seed_equipment(database_url, 10)
    a, b = await _pair(partitioned, spawn)
    pid = a.pid
    rate = 20.0
    duration = BROKER_LOSS_NOTICED_S + LEASE_TTL_S + 10
    messages = generic_messages(equipment, int(rate * duration / len(equipment)))
    pub, reached = _publisher(mosquitto.url, messages, rate=rate, mark=40)
    await asyncio.wait_for(reached.wait(), 30)

    cut_at = time.monotonic()
    await partition.cut_broker()
    await wait_until(
        b.is_leader,
        BROKER_LOSS_NOTICED_S + LEASE_TTL_S + 10,
        f"node-b never led: {a.tail()}",
        interval=0.1,
    )
    took_over_s = time.monotonic() - cut_at
    assert took_over_s > LEASE_TTL_S, "handed over before the broker loss lasted a TTL"
    released = a.find("leader.released", reason="broker_unreachable")
    assert released and released[-1]["epoch"] == 1, a.tail()
    assert a.find("mqtt.disconnected")
    assert not await a.is_leader()
    # Cut off, node-a must not take the lead back while node-b hears the devices.
    published = await pub
    await partition.heal()
    await _rejoins_as_standby(a, database_url, pid, timeout=45)
    await _all_stored_once(database_url, messages, published)
    assert [i.name for i in await leaders([a, b])] == ["node-b"]
    epochs = await fetch(
        database_url, "SELECT epoch, to_instance_id FROM ha_handovers ORDER BY epoch"
    )
    assert [(r["epoch"], r["to_instance_id"]) for r in epochs] == [(1, "node-a"), (2, "node-b")]
