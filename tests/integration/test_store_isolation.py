"""The flush path on a real PostgreSQL: what isolates an item, what backs off, and what
is left alone (issue 17, defects 1, 5, 6 and 10)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest

from aupus_ha.config import load_settings
from aupus_ha.database.connection import DatabaseUnavailable, ErrorKind, classify, create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.readings import Reading, Reject
from aupus_ha.pipeline.store import Store, detect_convention
from tests.integration.test_migrations import LEGACY_SCHEMA

MINUTE = datetime(2026, 11, 29, 0, 1, tzinfo=UTC)


@dataclass
class Db:
    conn: asyncpg.Connection
    pool: asyncpg.Pool
    store: Store


async def _open(database_url: str, queries: Queries) -> Db:
    conn = await asyncpg.connect(database_url)
    await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ('aupus', 1)")
    settings = load_settings({"DATABASE_URL": database_url, "MQTT_MODE": "disabled"})
    pool = await create_pool(settings, "aupus-ha/store-test")
    return Db(conn, pool, Store(pool, queries, cluster_name="aupus", instance_id="t"))


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[Db]:
    conn = await asyncpg.connect(database_url)
    await apply_migrations(conn)
    await conn.close()
    opened = await _open(database_url, Queries())
    yield opened
    await opened.pool.close()
    await opened.conn.close()


def _sample(equip: str, at: datetime, power: float, **extra: object) -> Reading:
    minute = rollup.bucket_start(at)
    payload = {"timestamp": at.timestamp(), "power": {"active_total": power}, **extra}
    return Reading(
        equip,
        minute,
        orjson.dumps(payload),
        timestamp_fim=minute + rollup.BUCKET,
        sample_at=at,
    )


def _plain(equip: str, at: datetime) -> Reading:
    return Reading(equip, at, orjson.dumps({"timestamp": at.isoformat(), "v": 1}))


async def _rows(conn: asyncpg.Connection) -> dict[str, asyncpg.Record]:
    rows = await conn.fetch(
        "SELECT equipamento_id, timestamp_dados, num_leituras, ha_epoch, dados::text AS dados,"
        " xmin::text AS xmin FROM equipamentos_dados"
    )
    return {f"{r['equipamento_id']}@{r['timestamp_dados'].isoformat()}": r for r in rows}


async def test_a_python_exception_in_one_sample_is_isolated(db: Db) -> None:
    """A sample the rollup code raises on (its stored form is not a JSON object, as a
    damaged record could be) does not stop the flush: the ordinary readings are stored,
    the sample is a `store_refused` reject naming the error. Two 1e308 samples of one
    minute (past the decoder's guard, as from a previous version's spool) no longer
    overflow the mean: their minute is stored."""
    broken = _sample("inv-3", MINUTE + timedelta(seconds=7), 1)
    broken = Reading(
        broken.equipamento_id,
        broken.timestamp_dados,
        b'["not", "an", "object"]',
        timestamp_fim=broken.timestamp_fim,
        sample_at=broken.sample_at,
    )
    huge = [_sample("inv-1", MINUTE + timedelta(seconds=s), 1e308) for s in (5, 15)]
    ordinary = [
        _plain("gen-1", MINUTE + timedelta(seconds=1)),
        _plain("gen-2", MINUTE + timedelta(seconds=2)),
        _sample("inv-2", MINUTE + timedelta(seconds=30), 40_000),
    ]
    result = await db.store.flush([ordinary[0], *huge, broken, *ordinary[1:]], [], epoch=1)
    assert result.refused == 1 and result.rejects == 1
    rows = await _rows(db.conn)
    assert {r["equipamento_id"] for r in rows.values()} == {"gen-1", "gen-2", "inv-1", "inv-2"}
    assert [r["num_leituras"] for r in rows.values() if r["equipamento_id"] == "inv-1"] == [2]
    rejects = await db.conn.fetch("SELECT topic, payload, reason FROM ingest_rejects")
    assert len(rejects) == 1
    assert rejects[0]["topic"] == "equipamento/inv-3"
    assert rejects[0]["reason"].startswith("store_refused: AttributeError")
    assert bytes(rejects[0]["payload"]) == broken.dados


async def test_a_reject_the_database_refuses_is_isolated(db: Db) -> None:
    """A reject whose topic holds NUL (text refuses it) cannot block the readings and
    rejects flushed with it: it is stored with the NUL escaped."""
    at = datetime.now(UTC)
    bad = Reject("t/\x00odd", b"x", "invalid_json: x", at)
    good = Reject("t/ok", b"y", "invalid_json: y", at)
    result = await db.store.flush([_plain("gen-1", MINUTE)], [good, bad], epoch=1)
    assert result.rows == 1
    topics = {
        r["topic"]: r["payload_sha256"]
        for r in await db.conn.fetch("SELECT topic, payload_sha256 FROM ingest_rejects")
    }
    assert topics == {"t/ok": good.payload_sha256, "t/\\x00odd": bad.payload_sha256}


async def test_reflushing_an_identical_minute_leaves_the_row_alone(db: Db) -> None:
    """Defect 10: a minute whose samples are all stored is not rewritten by a later
    flush (a successor's re-flush): the row, its ha_epoch and its tuple stay."""
    samples = [
        _sample("inv-1", MINUTE + timedelta(seconds=s), 41_250.5 + s, voltage={"a": 0.1 * s})
        for s in (0, 10, 20)
    ]
    await db.store.flush(samples, [], epoch=1)
    before = await _rows(db.conn)
    await db.conn.execute("UPDATE ha_leadership SET epoch = 2")
    again = await db.store.flush(samples[1:], [], epoch=2)
    after = await _rows(db.conn)
    assert (again.rows, again.merged) == (0, 0)
    assert [(r["ha_epoch"], r["xmin"]) for r in after.values()] == [
        (r["ha_epoch"], r["xmin"]) for r in before.values()
    ]
    assert next(iter(after.values()))["ha_epoch"] == 1


async def test_a_read_only_database_backs_off(db: Db, database_url: str) -> None:
    """Defect 5: 25006 (default_transaction_read_only) is DatabaseUnavailable, with its
    SQLSTATE, not an item's fault: nothing is turned into a reject."""
    name = database_url.rsplit("/", 1)[1]
    await db.conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = on")
    await db.pool.expire_connections()
    try:
        with pytest.raises(DatabaseUnavailable) as caught:
            await db.store.flush([_plain("gen-1", MINUTE)], [], epoch=1)
        assert caught.value.sqlstate == "25006"
    finally:
        await db.conn.execute(f"ALTER DATABASE {name} SET default_transaction_read_only = off")
    await db.pool.expire_connections()
    assert (await db.store.flush([_plain("gen-1", MINUTE)], [], epoch=1)).rows == 1
    assert await db.conn.fetchval("SELECT count(*) FROM ingest_rejects") == 0


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("53100", ErrorKind.TRANSIENT),
        ("53300", ErrorKind.TRANSIENT),
        ("57P02", ErrorKind.TRANSIENT),
        ("57P05", ErrorKind.TRANSIENT),
        ("25006", ErrorKind.TRANSIENT),
        ("25P03", ErrorKind.TRANSIENT),
        ("40001", ErrorKind.TRANSIENT),
        ("40P01", ErrorKind.TRANSIENT),
        ("55P03", ErrorKind.TRANSIENT),
        ("22003", ErrorKind.ITEM),
        ("23514", ErrorKind.ITEM),
        ("42501", ErrorKind.OTHER),
    ],
)
async def test_real_server_errors_are_classified(db: Db, code: str, kind: ErrorKind) -> None:
    """What asyncpg raises for each SQLSTATE a real server sends lands in its kind."""
    with pytest.raises(asyncpg.PostgresError) as caught:
        await db.conn.execute(
            f"DO $$ BEGIN RAISE EXCEPTION 'simulated' USING ERRCODE = '{code}'; END $$"
        )
    assert caught.value.sqlstate == code
    assert classify(caught.value) is kind


async def test_legacy_timestamp_fim_is_detected(database_url: str) -> None:
    """Defect 6: a legacy table whose timestamp_fim is `timestamp without time zone` is
    detected, and a rollup minute is stored there (in UTC wall time, DOMAIN v2), not
    refused."""
    conn = await asyncpg.connect(database_url)
    await conn.execute(LEGACY_SCHEMA)
    await conn.execute("ALTER TABLE equipamentos_dados ADD COLUMN timestamp_fim timestamp(0)")
    await apply_migrations(conn)
    convention = await detect_convention(conn, Queries()["column_types"])
    await conn.close()
    assert convention.legacy_timestamps and convention.legacy_fim
    db = await _open(database_url, Queries(id_type="bpchar", ts_type="timestamp"))
    equip = "ckx0000000000000000000001"
    try:
        sample = convention.apply(_sample(equip, MINUTE + timedelta(seconds=5), 6000))
        result = await db.store.flush([sample], [], epoch=1)
        assert (result.rows, result.refused) == (1, 0)
        row = await db.conn.fetchrow(
            "SELECT timestamp_dados, timestamp_fim FROM equipamentos_dados "
            "WHERE equipamento_id = $1 AND num_leituras = 1",
            equip,
        )
    finally:
        await db.pool.close()
        await db.conn.close()
    assert row is not None
    assert (row["timestamp_dados"], row["timestamp_fim"]) == (
        datetime(2026, 11, 29, 0, 1),
        datetime(2026, 11, 29, 0, 2),
    )
