"""The data-loss report against a real PostgreSQL (aupus_ha/operations/gaps.py, the
`gaps_scan` / `gaps_power` queries), on the product's fresh schema and on the
platform's legacy one (char(26) ids, UTC wall time in `timestamp(0)`, DECIMAL power,
a database TimeZone of America/Sao_Paulo).

Readings are inserted with a known cadence and known holes; the report must find
exactly those gaps, with their minutes, expected readings, coverage and energy. The
command line (`aupus-ha gaps --json`, a real process) and `GET /health/gaps` (the real
route table) must answer the same report.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

import asyncpg
import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.lab.bench.health_queries import index_seek_on, plan_scans
from aupus_ha.operations import gaps
from aupus_ha.operations.http import HttpServer
from aupus_ha.operations.view import HttpView
from tests.legacy_schema import SCHEMA_KINDS, SchemaKind, build_schema, cuid, register_equipment

START = datetime(2026, 11, 1, tzinfo=UTC)
END = START + timedelta(days=1)
PERIOD = gaps.Period(START, END)
NOW = datetime.now(UTC)

METER = cuid("gaps-meter")  # 30 s, 2 kW then 4 kW, two holes
GENERIC = cuid("gaps-generic")  # 60 s, no power, late start and silent at the end
SILENT = cuid("gaps-silent")  # enabled, never sent anything
DISABLED = cuid("gaps-disabled")  # not enabled: not in the report unless asked for
JITTER = cuid("gaps-jitter")  # irregular feed: the SQL must agree with the reference
SPARSE = cuid("gaps-sparse")  # 60 s the day before, 5 readings in the period

FRESH_INSERT = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, potencia_ativa_kw)
SELECT $1, u.ts, '{}'::jsonb, u.kw FROM unnest($2::timestamptz[], $3::float8[]) AS u(ts, kw)
"""
# The platform writes UTC wall time into timestamp(0) (DOMAIN v2).
LEGACY_INSERT = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, potencia_ativa_kw)
SELECT $1, u.ts AT TIME ZONE 'UTC', '{}'::jsonb, u.kw
FROM unnest($2::timestamptz[], $3::float8[]) AS u(ts, kw)
"""


def at(seconds: float) -> datetime:
    return START + timedelta(seconds=seconds)


def meter_feed() -> list[tuple[datetime, float | None]]:
    """Every 30 s from the day before to the end of the period; 21 readings missing
    at 00:50 (i = 100..120), 200 at 08:20 (i = 1000..1199); 2 kW before the second hole,
    4 kW from its end."""
    feed: list[tuple[datetime, float | None]] = []
    for i in range(-2880, 2880):
        if 100 <= i <= 120 or 1000 <= i <= 1199:
            continue
        feed.append((at(30 * i), 2.0 if i < 1000 else 4.0))
    return feed


def generic_feed() -> list[tuple[datetime, float | None]]:
    """Every 60 s the day before and from 00:10 to 21:59 (silent the last 2 h), no power."""
    before = [(at(60 * i), None) for i in range(-1440, 0)]
    period = [(at(60 * i), None) for i in range(10, 1320)]
    return before + period


def jitter_feed() -> list[datetime]:
    """About every 45 s with jitter, a few holes of random length (seeded)."""
    rng = random.Random(14)
    out, t = [], -86_400.0
    while t < 86_400:
        out.append(at(round(t)))
        t += 45 + rng.uniform(-10, 10)
        if rng.random() < 0.003:
            t += rng.uniform(60, 3600)
    return out


async def insert(
    conn: asyncpg.Connection, kind: SchemaKind, equipment: str, feed: list[tuple[datetime, Any]]
) -> None:
    sql = LEGACY_INSERT if kind == "legacy" else FRESH_INSERT
    await conn.execute(sql, equipment, [f[0] for f in feed], [f[1] for f in feed])


@pytest.fixture(params=SCHEMA_KINDS)
async def loaded(database_url: str, request: pytest.FixtureRequest) -> AsyncIterator[str]:
    """A database of either shape with the five equipment and their readings."""
    kind: SchemaKind = request.param
    await build_schema(database_url, kind)
    conn = await asyncpg.connect(database_url)
    try:
        for equipment in (METER, GENERIC, SILENT, JITTER, SPARSE, DISABLED):
            await register_equipment(conn, equipment, f"gaps/{equipment}", None)
        await conn.execute(
            "UPDATE equipamentos SET mqtt_habilitado = false WHERE id = $1", DISABLED
        )
        await insert(conn, kind, METER, meter_feed())
        await insert(conn, kind, GENERIC, generic_feed())
        await insert(conn, kind, JITTER, [(t, 1.0) for t in jitter_feed()])
        await insert(conn, kind, DISABLED, [(at(0), 1.0)])
        sparse = [(at(60 * i), 1.5) for i in range(-1440, 5)]
        await insert(conn, kind, SPARSE, sparse)
    finally:
        await conn.close()
    yield database_url


def settings_env(dsn: str) -> dict[str, str]:
    return {"DATABASE_URL": dsn, "MQTT_MODE": "disabled"}


async def report_of(dsn: str, period: gaps.Period = PERIOD) -> dict[str, Any]:
    pool = await create_pool(load_settings(settings_env(dsn), dotenv=None), "test-gaps")
    try:
        return await gaps.fetch_report(pool, period, now=NOW, timeout=60)
    finally:
        await pool.close()


def by_id(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["equipamento_id"].strip(): e for e in report["equipamentos"]}


def spans(row: dict[str, Any]) -> list[tuple[str, str, str, float, int | None, float | None]]:
    return [
        (
            g["kind"],
            g["start"],
            g["end"],
            g["minutes"],
            g["expected_readings"],
            g["missing_kwh"],
        )
        for g in row["gaps"]
    ]


async def test_the_report_finds_the_holes_it_was_given(loaded: str) -> None:
    """Known cadence and holes: each gap with its minutes, expected readings and kWh,
    the coverage, an edge gap for a late start and a silent end, one gap over the whole
    period for a silent equipment, and a disabled equipment left out."""
    report = await report_of(loaded)
    rows = by_id(report)
    assert set(rows) == {METER, GENERIC, SILENT, JITTER, SPARSE}

    meter = rows[METER]
    assert meter["cadence_s"] == 30.0
    assert meter["threshold_s"] == 90.0
    assert meter["readings"] == 2880 - 221
    assert meter["expected"] == 2880
    # 21 readings at 2 kW around them: 21 x 30 s x 2 kW = 0.35 kWh; 200 readings with
    # 5 at 2 kW before and 5 at 4 kW after: 200 x 30 s x 3 kW = 5 kWh.
    assert spans(meter) == [
        ("inside", at(99 * 30).isoformat(), at(121 * 30).isoformat(), 11.0, 21, 0.35),
        ("inside", at(999 * 30).isoformat(), at(1200 * 30).isoformat(), 100.5, 200, 5.0),
    ]
    assert meter["missing_kwh"] == 5.35
    assert meter["coverage_pct"] == round(100 * (1 - 221 * 30 / 86_400), 2)

    generic = rows[GENERIC]
    assert generic["cadence_s"] == 60.0
    assert generic["readings"] == 1310
    # Silent until 00:10 (10 readings lost), then after 21:59 (120 minus the one that
    # 21:59 stands for): no power known, so the energy is unknown, not 0.
    assert spans(generic) == [
        ("start", START.isoformat(), at(600).isoformat(), 10.0, 10, None),
        ("end", at(1319 * 60).isoformat(), END.isoformat(), 121.0, 120, None),
    ]
    assert generic["missing_kwh"] is None
    assert generic["coverage_pct"] == round(100 * (1 - 130 * 60 / 86_400), 2)

    # Five readings in the period: the cadence comes from the day before; silent from
    # 00:04 on, at 1.5 kW before it: 1435 readings (23 h 55 min) and 35.875 kWh lost.
    sparse = rows[SPARSE]
    assert (sparse["cadence_s"], sparse["readings"]) == (60.0, 5)
    assert spans(sparse) == [("end", at(240).isoformat(), END.isoformat(), 1436.0, 1435, 35.875)]

    silent = rows[SILENT]
    assert (silent["cadence_s"], silent["readings"], silent["coverage_pct"]) == (None, 0, 0.0)
    assert spans(silent) == [("all", START.isoformat(), END.isoformat(), 1440.0, None, None)]

    assert report["total_gaps"] == sum(len(r["gaps"]) for r in rows.values())
    assert report["total_missing_kwh"] == pytest.approx(
        sum(r["missing_kwh"] or 0 for r in rows.values()), abs=0.002
    )


async def test_the_sql_agrees_with_the_reference_rules(loaded: str) -> None:
    """An irregular feed: gaps_scan's cadence and long intervals are those of
    gaps.cadence_of / gaps.long_intervals over the same readings."""
    feed = [t for t in jitter_feed() if t < END]
    cadence = gaps.learned_cadence(feed, START)
    assert cadence is not None
    in_period = [t for t in feed if START <= t < END]
    expected = gaps.period_gaps(
        START,
        END,
        first_at=in_period[0],
        last_at=in_period[-1],
        inside=gaps.long_intervals(in_period, START, gaps.threshold_s(cadence)),
        cadence_s=cadence,
    )
    assert len(expected) >= 2  # the seed gives holes to find
    row = by_id(await report_of(loaded, gaps.Period(START, END, JITTER)))[JITTER]
    assert row["cadence_s"] == pytest.approx(cadence, abs=0.001)
    assert row["readings"] == len(in_period)
    assert [(g["start"], g["end"]) for g in row["gaps"]] == [
        (g.start.isoformat(), g.end.isoformat()) for g in expected
    ]
    assert all(g["missing_kwh"] is not None for g in row["gaps"])


async def test_one_equipment_on_request_even_a_disabled_one(loaded: str) -> None:
    """`equipamento` limits the report to it (a disabled one too); an unknown id gives
    an empty list (the routes turn it into 404 / exit 1)."""
    only = await report_of(loaded, gaps.Period(START, END, METER))
    assert list(by_id(only)) == [METER]
    assert only["total_missing_kwh"] == 5.35
    disabled = await report_of(loaded, gaps.Period(START, END, DISABLED))
    assert list(by_id(disabled)) == [DISABLED]
    unknown = await report_of(loaded, gaps.Period(START, END, "no-such-equipment"))
    assert unknown["equipamentos"] == []


def run_cli(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MQTT_", "DATABASE_"))}
    return subprocess.run(
        [sys.executable, "-m", "aupus_ha", "gaps", *args],
        env={**env, **settings_env(dsn)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_command_line_and_the_route_answer_the_same_report(loaded: str) -> None:
    """`aupus-ha gaps --json` (a real process) and GET /health/gaps (and its /api/v1
    mirror) give the same report; bad requests are refused by both with a message."""
    args = ("--from", START.isoformat(), "--to", END.isoformat())
    cli = await asyncio.to_thread(run_cli, loaded, *args, "--json")
    assert cli.returncode == 0, cli.stderr
    from_cli = orjson.loads(cli.stdout)

    pool = await create_pool(load_settings(settings_env(loaded), dotenv=None), "test-gaps-http")
    instance = cast(HttpView, SimpleNamespace(pool=pool))  # the route reads only the pool
    client = TestClient(TestServer(HttpServer(instance).build_app()))
    await client.start_server()
    try:
        query = {"from": START.isoformat(), "to": END.isoformat()}
        response = await client.get("/health/gaps", params=query)
        assert response.status == 200
        assert await response.json() == from_cli
        mirrored = await client.get("/api/v1/health/gaps", params=query)
        assert (await mirrored.json())["data"] == from_cli

        bad = await client.get("/health/gaps", params={"from": "ontem", "to": "hoje"})
        assert bad.status == 400
        assert "not an ISO 8601 instant" in (await bad.json())["error"]
        long = await client.get("/health/gaps", params={"from": "2026-01-01", "to": "2026-03-01"})
        assert long.status == 400
        missing = await client.get("/health/gaps", params={"to": "2026-03-01"})
        assert missing.status == 400
        unknown = await client.get("/health/gaps", params={**query, "equipamento": "nada"})
        assert unknown.status == 404
    finally:
        await client.close()
        await pool.close()

    refused = await asyncio.to_thread(run_cli, loaded, "--from", "2026-11-02", "--to", "2026-11-01")
    assert refused.returncode == 2
    assert "to must be after from" in refused.stderr
    text = await asyncio.to_thread(run_cli, loaded, *args, "--equipment", METER)
    assert text.returncode == 0, text.stderr
    assert "missing 5.35 kWh" in text.stdout


@pytest.mark.parametrize("kind", SCHEMA_KINDS)
async def test_both_queries_search_the_natural_key_on_either_schema(
    database_url: str, kind: SchemaKind
) -> None:
    """Typed for the table's columns (a legacy `timestamp(0)` and `char(26)` key), the
    report's queries read equipamentos_dados only through index searches: a parameter
    compared in another type would turn the range into a filter over the equipment's
    whole history."""
    await build_schema(database_url, kind)
    conn = await asyncpg.connect(database_url)
    try:
        await register_equipment(conn, METER, "gaps/meter", None)
        await insert(conn, kind, METER, meter_feed()[:500])
        await conn.execute("ANALYZE; SET enable_seqscan = off")
        q = await gaps.typed_queries(conn)
        scan_args = (START, END, START - gaps.LOOKBACK, None, 60.0, 3.0, gaps.MIN_READINGS)
        power_args = ([METER], [at(3000)], [at(3600)], 5, 86_400.0)
        for name, args in (("gaps_scan", scan_args), ("gaps_power", power_args)):
            raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + q[name], *args)
            plan = json.loads(raw)[0]["Plan"]
            assert index_seek_on(list(plan_scans(plan))) is True, (kind, name, plan)
            conditions = list(key_conditions(plan))
            assert conditions, (kind, name, plan)
            # Both key columns searched: the equipment, then its time range.
            assert all("equipamento_id = " in c and "timestamp_dados" in c for c in conditions), (
                kind,
                name,
                conditions,
            )
    finally:
        await conn.close()


def key_conditions(plan: dict[str, Any]) -> Iterator[str]:
    """The Index Cond of every search of the natural key in an EXPLAIN (FORMAT JSON) plan
    (index_seek_on already refuses any other read of equipamentos_dados)."""
    if plan.get("Index Name") == "uk_equipamento_timestamp":
        yield str(plan.get("Index Cond", ""))
    for child in plan.get("Plans", []):
        yield from key_conditions(child)
