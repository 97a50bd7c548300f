"""Migrations against a real PostgreSQL: fresh, idempotent, concurrent, legacy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import migrations

LEGACY_SCHEMA = """
CREATE TABLE tipos_equipamentos (
    id char(26) PRIMARY KEY, codigo varchar(50) NOT NULL UNIQUE, nome varchar(100) NOT NULL
);
CREATE TABLE equipamentos (
    id char(26) PRIMARY KEY, nome varchar(200) NOT NULL, topico_mqtt varchar(255),
    mqtt_habilitado boolean NOT NULL DEFAULT false, tipo_equipamento_id char(26)
        REFERENCES tipos_equipamentos(id), diagrama_id char(26),
    created_at timestamp(3) NOT NULL DEFAULT now(), deleted_at timestamp(3)
);
CREATE TABLE equipamentos_dados (
    id char(26) PRIMARY KEY, equipamento_id char(26) NOT NULL REFERENCES equipamentos(id),
    timestamp_dados timestamp(0) without time zone NOT NULL, dados jsonb NOT NULL,
    fonte varchar(20) NOT NULL, qualidade varchar(20),
    created_at timestamp(3) NOT NULL DEFAULT now(),
    CONSTRAINT uk_equipamento_timestamp UNIQUE (equipamento_id, timestamp_dados)
);
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado)
VALUES ('ckx0000000000000000000001', 'M-160 sala', 'medidores/m160/1', true);
INSERT INTO equipamentos_dados (id, equipamento_id, timestamp_dados, dados, fonte, qualidade)
VALUES ('ckx0000000000000000000099', 'ckx0000000000000000000001', '2026-11-28 21:00:30',
        '{"Va": 220}', 'MQTT', 'bom');
"""


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def _column_types(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = $1",
        table,
    )
    return {r["column_name"]: r["data_type"] for r in rows}


async def test_fresh_database_gets_every_table(conn: asyncpg.Connection) -> None:
    """An empty database gets all contract tables, text ids and timestamptz readings."""
    applied = await apply_migrations(conn)
    assert applied == [v for v, _, _ in migrations()]
    tables = {
        r["tablename"]
        for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
        )
    }
    assert {
        "equipamentos",
        "tipos_equipamentos",
        "equipamentos_dados",
        "ha_instances",
        "ha_leadership",
        "ha_handovers",
        "ha_alerts",
        "ingest_rejects",
        "schema_migrations",
    } <= tables
    types = await _column_types(conn, "equipamentos_dados")
    assert types["id"] == "text" and types["timestamp_dados"] == "timestamp with time zone"
    constraint = await conn.fetchval(
        "SELECT count(*) FROM pg_constraint WHERE conname = 'uk_equipamento_timestamp'"
    )
    assert constraint == 1


async def test_second_run_applies_nothing(conn: asyncpg.Connection) -> None:
    """Migrations are recorded: a second run is a no-op."""
    await apply_migrations(conn)
    assert await apply_migrations(conn) == []
    assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(migrations())


async def test_concurrent_runs_apply_once(database_url: str) -> None:
    """Four connections migrating at the same instant: each migration applied once."""
    conns = [await asyncpg.connect(database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(apply_migrations(c) for c in conns))
    finally:
        for c in conns:
            await c.close()
    applied = [v for result in results for v in result]
    assert sorted(applied) == [v for v, _, _ in migrations()]


async def test_legacy_database_keeps_its_types_and_rows(conn: asyncpg.Connection) -> None:
    """On the legacy schema only what is missing is added; types and data stay."""
    await conn.execute(LEGACY_SCHEMA)
    await apply_migrations(conn)
    types = await _column_types(conn, "equipamentos_dados")
    assert types["id"] == "character" and types["equipamento_id"] == "character"
    assert types["timestamp_dados"] == "timestamp without time zone"
    assert {"energia_kwh", "potencia_ativa_kw", "num_leituras", "timestamp_fim", "ha_epoch"} <= set(
        types
    )
    assert await conn.fetchval("SELECT count(*) FROM equipamentos_dados") == 1
    # the legacy unique key is reused, not duplicated
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE tablename = 'equipamentos_dados' "
            "AND indexdef LIKE '%UNIQUE%(equipamento_id, timestamp_dados)%'"
        )
        == 1
    )
    # rows written without an id get one that fits char(26)
    new_id = await conn.fetchval(
        "INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, fonte) "
        "VALUES ('ckx0000000000000000000001', '2026-11-28 21:01:00', '{}', 'MQTT') RETURNING id"
    )
    assert len(new_id) == 26
    assert await apply_migrations(conn) == []


async def test_store_writes_the_legacy_convention(
    conn: asyncpg.Connection, database_url: str
) -> None:
    """On the legacy schema rows are written in UTC wall time to the second (DOMAIN v2;
    v1 said Brasília); two
    readings of one equipment in the same second keep only the first; rollup minutes
    and standby probes work with the char(26)/timestamp(0) types."""
    from datetime import UTC, datetime, timedelta

    import orjson

    from aupus_ha.config import load_settings
    from aupus_ha.database.connection import create_pool
    from aupus_ha.database.queries import Queries
    from aupus_ha.pipeline.readings import Reading
    from aupus_ha.pipeline.store import Store, detect_convention

    await conn.execute(LEGACY_SCHEMA)
    await apply_migrations(conn)
    await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ('aupus', 1)")
    convention = await detect_convention(conn, Queries()["column_types"])
    assert convention.legacy_timestamps and convention.id_type == "bpchar"
    settings = load_settings({"DATABASE_URL": database_url, "MQTT_MODE": "disabled"})
    pool = await create_pool(settings, "aupus-ha/legacy-test")
    store = Store(
        pool, Queries(id_type="bpchar", ts_type="timestamp"), cluster_name="aupus", instance_id="t"
    )
    equip = "ckx0000000000000000000001"
    at = datetime(2026, 11, 29, 0, 1, 2, 300_000, tzinfo=UTC)
    plain = [
        convention.apply(Reading(equip, at + timedelta(milliseconds=ms), b"{}")) for ms in (0, 400)
    ]
    minute = at.replace(second=0, microsecond=0)
    sample = convention.apply(
        Reading(
            equip,
            minute,
            orjson.dumps({"power": {"active_total": 6000}}),
            timestamp_fim=minute + timedelta(minutes=1),
            sample_at=at + timedelta(seconds=5),
        )
    )
    try:
        result = await store.flush([*plain, sample], [], epoch=1)
        assert (result.rows, result.duplicates) == (2, 1)  # same second: one row, one dup
        found = await store.committed_readings([*plain, sample])
        assert len(found) == 3
    finally:
        await pool.close()
    rows = await conn.fetch(
        "SELECT timestamp_dados, num_leituras FROM equipamentos_dados "
        "WHERE equipamento_id = $1 ORDER BY timestamp_dados",
        equip,
    )
    assert [r["timestamp_dados"] for r in rows] == [
        datetime(2026, 11, 28, 21, 0, 30),  # the legacy row already there
        datetime(2026, 11, 29, 0, 1),  # the rollup minute, UTC wall time
        datetime(2026, 11, 29, 0, 1, 2),
    ]
