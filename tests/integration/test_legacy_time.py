"""DOMAIN v2 "The legacy database": UTC wall time in `timestamp(0)` columns, whatever the
server's TimeZone, and the start-up check of recent rows (issue 12).

Every test runs on a legacy-shaped database whose TimeZone is America/Sao_Paulo
(tests/legacy_schema.py), so a session that leaves the zone to the server writes
Brasília time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, MutableMapping
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from aupus_ha.config import Settings, load_settings
from aupus_ha.database.connection import connect, create_pool
from aupus_ha.database.legacytime import (
    MIN_ROWS,
    STATUS_MISMATCH,
    STATUS_OK,
    STATUS_UNKNOWN,
    check_legacy_time,
)
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Equipment
from aupus_ha.pipeline.store import Store, detect_convention
from tests.legacy_schema import build_schema, cuid, register_equipment

CLUSTER = "legacy-time"
TOPIC = "lt/meter"
EQUIPMENT = cuid("legacy-time-meter")
# "28/11/2026 21:00:30" is Brasília wall time (UTC-3): the instant 2026-11-29T00:00:30Z,
# which the platform stores as the UTC wall time 2026-11-29 00:00:30.
DEVICE_TEXT = "28/11/2026 21:00:30"
UTC_WALL = datetime(2026, 11, 29, 0, 0, 30)
PLATFORM_INSERT = (
    "INSERT INTO equipamentos_dados (id, equipamento_id, dados, fonte, timestamp_dados, "
    "qualidade, created_at) VALUES ($1, $2, $3::jsonb, 'MQTT', $4, 'bom', $5)"
)


@pytest.fixture
async def legacy(database_url: str) -> AsyncIterator[tuple[str, asyncpg.Connection]]:
    await build_schema(database_url, "legacy")
    conn = await asyncpg.connect(database_url)
    await register_equipment(conn, EQUIPMENT, TOPIC, None)
    await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1)", CLUSTER)
    try:
        yield database_url, conn
    finally:
        await conn.close()


def settings_for(dsn: str, **env: str) -> Settings:
    return load_settings({"DATABASE_URL": dsn, "MQTT_MODE": "disabled", **env}, dotenv=None)


async def flush_generic(dsn: str, conn: asyncpg.Connection, payload: bytes) -> None:
    """One message through the product's path: decode, key convention, fenced flush."""
    settings = settings_for(dsn)
    convention = await detect_convention(
        conn,
        Queries()["column_types"],
        settings.legacy_zone,
    )
    assert convention.legacy_timestamps
    decoded = Decoder(max_payload_bytes=65536).decode(
        TOPIC, payload, [Equipment(EQUIPMENT, TOPIC)], datetime.now(UTC)
    )
    assert not decoded.rejects
    readings = [convention.apply(r) for r in decoded.readings]
    pool = await create_pool(settings, "aupus-ha/legacy-time")
    try:
        queries = Queries(id_type=convention.id_type, ts_type="timestamp")
        store = Store(pool, queries, cluster_name=CLUSTER, instance_id="legacy-time")
        await store.flush(readings, [], 1)
    finally:
        await pool.close()


async def test_platform_row_and_flushed_reading_share_one_key(
    legacy: tuple[str, asyncpg.Connection],
) -> None:
    """A row the platform wrote (UTC wall time) and the same reading flushed by aupus-ha
    are one key: ON CONFLICT keeps the platform's row, no second row 3 h away."""
    dsn, conn = legacy
    platform_dados = orjson.dumps({"power": 1, "timestamp": DEVICE_TEXT, "by": "platform"}).decode()
    created = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    await conn.execute(
        PLATFORM_INSERT, cuid("platform-row"), EQUIPMENT, platform_dados, UTC_WALL, created
    )
    await flush_generic(dsn, conn, orjson.dumps({"power": 1, "timestamp": DEVICE_TEXT}))
    rows = await conn.fetch(
        "SELECT timestamp_dados, dados->>'by' AS by FROM equipamentos_dados "
        "WHERE equipamento_id = $1",
        EQUIPMENT,
    )
    assert [(r["timestamp_dados"], r["by"]) for r in rows] == [(UTC_WALL, "platform")]


async def test_flushed_row_is_utc_wall_time_created_at_too(
    legacy: tuple[str, asyncpg.Connection],
) -> None:
    """On a server whose TimeZone is America/Sao_Paulo, aupus-ha's row holds UTC wall
    time in timestamp_dados and in created_at (the column default, run in its session)."""
    dsn, conn = legacy
    before = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    await flush_generic(dsn, conn, orjson.dumps({"power": 2, "timestamp": DEVICE_TEXT}))
    after = datetime.now(UTC).replace(tzinfo=None) + timedelta(seconds=1)
    row = await conn.fetchrow(
        "SELECT timestamp_dados, created_at FROM equipamentos_dados WHERE equipamento_id = $1",
        EQUIPMENT,
    )
    assert row is not None
    assert row["timestamp_dados"] == UTC_WALL
    assert before <= row["created_at"] <= after, "created_at is not UTC wall time"


async def test_every_session_runs_in_the_legacy_zone(
    legacy: tuple[str, asyncpg.Connection],
) -> None:
    """Pool and lock connection set TimeZone to LEGACY_TIMESTAMP_ZONE (UTC by default),
    not the server's America/Sao_Paulo; the setting overrides it."""
    dsn, conn = legacy
    assert await conn.fetchval("SHOW TimeZone") == "America/Sao_Paulo"  # the server's
    for env, expected in (
        ({}, "UTC"),
        ({"LEGACY_TIMESTAMP_ZONE": "America/Bahia"}, "America/Bahia"),
    ):
        settings = settings_for(dsn, **env)
        lock = await connect(settings, "aupus-ha/lt-lock", tune=False)
        pool = await create_pool(settings, "aupus-ha/lt-pool")
        try:
            assert await lock.fetchval("SHOW TimeZone") == expected
            assert await pool.fetchval("SHOW TimeZone") == expected
        finally:
            await lock.close()
            await pool.close()


async def insert_history(conn: asyncpg.Connection, count: int, *, brasilia: bool) -> None:
    """`count` rows one minute apart, created 5 s after their instant. The platform
    writes created_at in UTC wall time; `brasilia`: timestamp_dados in Brasília wall
    time (the v1 convention), 3 h behind."""
    start = datetime(2026, 11, 29, 12, 0)
    for n in range(count):
        created = start + timedelta(minutes=n, seconds=5)
        instant = created - timedelta(seconds=5)
        ts = instant - timedelta(hours=3) if brasilia else instant
        dados = orjson.dumps({"n": n}).decode()
        await conn.execute(PLATFORM_INSERT, cuid(f"h{n}"), EQUIPMENT, dados, ts, created)


async def run_check(
    conn: asyncpg.Connection,
) -> tuple[str, float | None, list[MutableMapping[str, Any]]]:
    with capture_logs() as logs:
        result = await check_legacy_time(conn, Queries()["legacy_time_offset"], "UTC")
    return result.status, result.median_s, logs


async def test_check_fires_on_brasilia_rows(legacy: tuple[str, asyncpg.Connection]) -> None:
    """Rows whose timestamp_dados is Brasília time next to a UTC created_at: the median
    of created_at - timestamp_dados is 3 h 0 min 5 s; one error-level line says so."""
    _, conn = legacy
    await insert_history(conn, 40, brasilia=True)
    status, median, logs = await run_check(conn)
    assert status == STATUS_MISMATCH
    assert median == 3 * 3600 + 5
    errors = [e for e in logs if e["log_level"] == "error"]
    assert [e["event"] for e in errors] == ["legacy.timezone_mismatch"]
    assert "Brasília" in str(errors[0]["message"])


async def test_check_quiet_on_utc_rows(legacy: tuple[str, asyncpg.Connection]) -> None:
    """Rows in UTC wall time in both columns: median 5 s, no warning, no error."""
    _, conn = legacy
    await insert_history(conn, 40, brasilia=False)
    status, median, logs = await run_check(conn)
    assert status == STATUS_OK
    assert median == 5
    assert not [e for e in logs if e["log_level"] in ("warning", "error")]


async def test_check_has_no_verdict_on_few_rows(legacy: tuple[str, asyncpg.Connection]) -> None:
    """A database with fewer than MIN_ROWS rows gives no verdict (and no alarm)."""
    _, conn = legacy
    await insert_history(conn, MIN_ROWS - 1, brasilia=True)
    status, _, logs = await run_check(conn)
    assert status == STATUS_UNKNOWN
    assert not [e for e in logs if e["log_level"] == "error"]
