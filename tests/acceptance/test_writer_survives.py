"""The writer survives what arrives from outside: absurd numbers, a read-only database,
exhausted connection slots (issue 17, defects 1 and 5), through real processes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    fetch,
    generic_messages,
    publish,
    seed_equipment,
    stored_keys,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from aupus_ha.lab.publisher import Publisher
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import standby_ready

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


async def _send(url: str, messages: list[tuple[str, bytes]]) -> None:
    async with Publisher(url) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)
        await pub.wait_acknowledged()


def _inverter(at: datetime, power: float) -> bytes:
    base = orjson.loads((FIXTURES / "inverter_reading.json").read_bytes())
    base["timestamp"] = at.timestamp()
    base["power"] = {**base["power"], "active_total": power}
    return orjson.dumps(base)


async def _count(dsn: str, sql: str) -> int:
    return int((await fetch(dsn, sql))[0][0])


async def _stored_once(dsn: str, messages: list[Any], timeout: float) -> None:
    await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=timeout)
    keys = await stored_keys(dsn)
    assert len(keys) == len(set(keys)) == len(messages), (len(keys), len(messages))


async def test_overflowing_inverter_samples_stop_nothing(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """Two samples of one minute with `active_total` 1e308 and ordinary readings sent to
    a two-instance cluster: both instances stay up, the ordinary readings are stored,
    the two samples are in ingest_rejects with a reason, and a restart does not die."""
    await seed_equipment(database_url, 0)
    conn = await asyncpg.connect(database_url)
    await conn.executemany(
        "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
        "VALUES ($1, $1, $2, true)",
        [("inv-1", "t/inv"), ("gen-1", "t/gen")],
    )
    await conn.close()
    url = mosquitto.url  # type: ignore[attr-defined]
    env = {"ROLLUP_GRACE_S": "0"}
    leader = spawn("node-a", **env)
    await wait_single_leader([leader])
    standby = spawn("node-b", **env)
    await wait_until(lambda: standby_ready(standby), 20, "standby not ready")
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    bad = [_inverter(minute + timedelta(seconds=s), 1e308) for s in (10, 20)]
    good = [_inverter(minute + timedelta(seconds=s), 40_000 + s) for s in (0, 30)]
    generic = [
        orjson.dumps({"timestamp": (minute + timedelta(seconds=s)).isoformat(), "v": s})
        for s in (1, 2)
    ]
    await _send(
        url,
        [("t/inv", good[0]), *[("t/inv", b) for b in bad], ("t/inv", good[1])]
        + [("t/gen", g) for g in generic],
    )

    async def settled() -> bool:
        rejects = await _count(database_url, "SELECT count(*) FROM ingest_rejects")
        rows = await _count(database_url, "SELECT count(*) FROM equipamentos_dados")
        return rejects == 2 and rows == 3

    await wait_until(settled, 20, f"not settled: {leader.tail()}")
    minute_row = await fetch(
        database_url, "SELECT num_leituras FROM equipamentos_dados WHERE equipamento_id = 'inv-1'"
    )
    assert minute_row[0]["num_leituras"] == 2
    reasons = await fetch(database_url, "SELECT topic, reason FROM ingest_rejects")
    assert all(r["topic"] == "t/inv" for r in reasons)
    assert all(r["reason"].startswith("number_out_of_range: power.active_total") for r in reasons)
    await asyncio.sleep(0)
    assert leader.alive() and standby.alive(), leader.tail() + standby.tail()
    # A restart replays its spool and stays up; the other instance takes over meanwhile.
    leader.signal(signal.SIGTERM)
    assert await leader.wait_exit() == 0
    await wait_until(standby.is_leader, 10, "standby did not take over")
    again = spawn("node-a", **env)
    await wait_until(lambda: standby_ready(again), 20, f"restart not ready: {again.tail()}")
    assert again.alive() and standby.alive()


async def _load(dsn: str) -> list[Any]:
    equipment = await seed_equipment(dsn, 5)
    return generic_messages(equipment, 300)  # 1,500 readings: 10 s at 150/s


async def _terminate_sessions(conn: asyncpg.Connection, database: str) -> None:
    await conn.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        database,
    )


async def test_read_only_database_for_six_seconds(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """The database turns read-only under load (`default_transaction_read_only` and
    every session of the instances ended, so each new one is read-only) for 6 s, then
    writable again without ending the read-only sessions: both instances stay up and
    every published reading is stored exactly once."""
    database = database_url.rsplit("/", 1)[1]
    load = await _load(database_url)
    nodes = [spawn("node-a"), spawn("node-b")]
    leader = await wait_single_leader(nodes)
    standby = next(n for n in nodes if n is not leader)
    await wait_until(lambda: standby_ready(standby), 20, "standby not ready")
    url = mosquitto.url  # type: ignore[attr-defined]
    pub = asyncio.create_task(publish(url, load, rate=150))  # 10 s
    admin = await asyncpg.connect(database_url)
    try:
        await asyncio.sleep(2)
        await admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = on")
        await _terminate_sessions(admin, database)
        await asyncio.sleep(6)
        await admin.execute(f"ALTER DATABASE {database} SET default_transaction_read_only = off")
    finally:
        await admin.close()
    assert await pub == len(load)
    await _stored_once(database_url, load, timeout=60)
    assert all(n.alive() for n in nodes), [n.tail() for n in nodes]
    assert any(n.find("flush.failed") or n.find("db.unavailable") for n in nodes)


@pytest.fixture
def limited_role(pg_server: EmbeddedPostgres, database_url: str) -> Iterator[str]:
    """A login role (not a superuser: they ignore connection limits) that owns the test
    database, whose connection limit the test turns down to zero and back."""
    from tests.conftest import _admin, run_async

    role = f"r_{uuid.uuid4().hex[:8]}"
    database = database_url.rsplit("/", 1)[1]
    run_async(
        lambda: _admin(
            database_url,
            f"CREATE ROLE {role} LOGIN CONNECTION LIMIT -1",
            f"ALTER DATABASE {database} OWNER TO {role}",
        )
    )
    yield role
    run_async(
        lambda: _admin(
            database_url,
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'",
            f"REASSIGN OWNED BY {role} TO postgres",
            f"DROP OWNED BY {role}",
        )
    )
    run_async(lambda: _admin(pg_server.dsn(), f"DROP ROLE IF EXISTS {role}"))


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def test_connection_slots_exhausted(
    spawn: ClusterFactory,
    database_url: str,
    mosquitto: object,
    limited_role: str,
    admin: asyncpg.Connection,
) -> None:
    """No connection slot for the instances' role (SQLSTATE 53300), at start and then
    under load with their sessions ended: both keep running, and once slots are back
    every published reading is stored exactly once."""
    database = database_url.rsplit("/", 1)[1]
    dsn = database_url.replace("postgres@", f"{limited_role}@", 1)
    assert dsn != database_url
    load = await _load(dsn)  # the role owns the schema it migrates
    await admin.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 0")
    first = spawn("node-a", DATABASE_URL=dsn)
    await wait_until(lambda: first.find("db.unavailable"), 20, f"no backoff: {first.tail()}")
    await asyncio.sleep(1)
    assert first.alive(), first.tail()  # 53300 at start: backing off, not exiting
    await admin.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT -1")
    second = spawn("node-b", DATABASE_URL=dsn)
    nodes = [first, second]
    await wait_single_leader(nodes, timeout=30)
    url = mosquitto.url  # type: ignore[attr-defined]
    pub = asyncio.create_task(publish(url, load, rate=150))
    await asyncio.sleep(2)
    await admin.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT 0")
    await _terminate_sessions(admin, database)
    await asyncio.sleep(5)
    assert all(n.alive() for n in nodes), [n.tail() for n in nodes]
    await admin.execute(f"ALTER ROLE {limited_role} CONNECTION LIMIT -1")
    assert await pub == len(load)
    await _stored_once(database_url, load, timeout=60)
    assert all(n.alive() for n in nodes), [n.tail() for n in nodes]
