"""The data-loss report and the per-equipment diagnostics table on a 10-million-row
`equipamentos_dados`: time and plan.

    nice .venv/bin/python -m aupus_ha.lab.bench.gaps_report   # 10,080,000 rows, 7 runs
    .venv/bin/python -m aupus_ha.lab.bench.gaps_report --rows 500000   # a quick look

Fills an embedded PostgreSQL like `health_queries` (1,050 enabled equipment, 1,000 of
them reporting every ~5 min over 35 days, in time order like a live feed), then makes
the last day lossy: every tenth equipment loses 2 hours of readings in the middle of
the day, every tenth other one has been silent for the last 6 hours, and the 50 that
never report are silent all day. After VACUUM ANALYZE it times the report for the last
day over all equipment (`operations.gaps.fetch_report`: `gaps_scan` then `gaps_power`,
end to end through asyncpg; target < 2 s) and the diagnostics helper's per-equipment
queries (`diag_equipamentos_ativos`, `diag_equipamentos_inativos`; target < 500 ms),
checks the report found the holes it was given, and prints each plan (EXPLAIN ANALYZE)
and whether it reads `equipamentos_dados` only through index searches. `--json` for
machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from aupus_ha.database.queries import Queries
from aupus_ha.lab.bench.health_queries import (
    BIG_TABLE,
    bench_arguments,
    big_table,
    describe,
    explain,
    index_seek_on,
    plan_scans,
)
from aupus_ha.operations import gaps

REPORT_TARGET_MS = 2000.0
TABLE_TARGET_MS = 500.0
HOLE_EVERY = 10  # equipment e % 10 == 0 lose 2 h mid-day; e % 10 == 5 go silent 6 h before now
HOLE_HOURS = 2
SILENT_TAIL_HOURS = 6

PUNCH_HOLES = f"""
DELETE FROM {BIG_TABLE} d
WHERE d.equipamento_id IN (
        SELECT 'eq' || lpad(e::text, 4, '0') FROM generate_series(0, $2::int - 1) AS e
        WHERE e % {HOLE_EVERY} = 0)
  AND d.timestamp_dados >= $1::timestamptz + interval '9 hours'
  AND d.timestamp_dados < $1::timestamptz + interval '{9 + HOLE_HOURS} hours';
"""
SILENCE_TAIL = f"""
DELETE FROM {BIG_TABLE} d
WHERE d.equipamento_id IN (
        SELECT 'eq' || lpad(e::text, 4, '0') FROM generate_series(0, $2::int - 1) AS e
        WHERE e % {HOLE_EVERY} = 5)
  AND d.timestamp_dados >= $1::timestamptz - interval '{SILENT_TAIL_HOURS} hours';
"""


async def timed_runs(runs: int, call: Callable[[], Awaitable[object]]) -> list[float]:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def plan_text(conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> str:
    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, *args)
    return "\n".join(r[0] for r in rows)


def summary(name: str, times: list[float], target_ms: float, scans: list[Any]) -> dict[str, Any]:
    median = statistics.median(times)
    return {
        "query": name,
        "median_ms": round(median, 1),
        "worst_ms": round(max(times), 1),
        "first_ms": round(times[0], 1),
        "target_ms": target_ms,
        "within_target": median < target_ms,
        "index": index_seek_on(scans),
        "scans": describe(scans),
    }


async def measure(conn: asyncpg.Connection, runs: int, equipment: int) -> dict[str, Any]:
    q = Queries()
    now = datetime.now(UTC)
    day_start = now - timedelta(days=1)
    period = gaps.Period(day_start, now)
    results, plans = [], {}

    async def report() -> dict[str, Any]:
        return await gaps.fetch_report(conn, period, now=now, timeout=600)

    body = await report()
    times = await timed_runs(runs, report)
    scan_args = (
        day_start,
        now,
        day_start - gaps.LOOKBACK,
        None,
        gaps.FLOOR_S,
        gaps.CADENCE_MULTIPLE,
        gaps.MIN_READINGS,
    )
    scans = list(plan_scans(await explain(conn, q["gaps_scan"], scan_args)))
    results.append(summary("report (gaps_scan + gaps_power)", times, REPORT_TARGET_MS, scans))
    plans["gaps_scan"] = await plan_text(conn, q["gaps_scan"], scan_args)
    keys = [
        (e["equipamento_id"], datetime.fromisoformat(g["start"]), datetime.fromisoformat(g["end"]))
        for e in body["equipamentos"]
        for g in e["gaps"]
    ]
    power_args = (
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        gaps.POWER_NEIGHBOURS,
        gaps.POWER_REACH_S,
    )
    power_scans = list(plan_scans(await explain(conn, q["gaps_power"], power_args)))
    results[-1]["scans"] += describe(power_scans)
    results[-1]["index"] = bool(results[-1]["index"]) and bool(index_seek_on(power_scans))
    plans["gaps_power"] = await plan_text(conn, q["gaps_power"], power_args)
    for name in ("diag_equipamentos_ativos", "diag_equipamentos_inativos"):
        if name not in q.names():
            results.append({"query": name, "missing": "not in sql/queries.sql yet"})
            continue
        sql, args = q[name], (day_start,)

        async def table(sql: str = sql) -> object:
            return await conn.fetch(sql, day_start)

        query_times = await timed_runs(runs + 1, table)  # the first run warms the cache
        table_scans = list(plan_scans(await explain(conn, sql, args)))
        results.append(summary(name, query_times[1:], TABLE_TARGET_MS, table_scans))
        plans[name] = await plan_text(conn, sql, args)
    return {"results": results, "plans": plans, "found": found_holes(body, equipment)}


def found_holes(body: dict[str, Any], equipment: int) -> dict[str, int]:
    """How many of the holes the bench made the report shows (each one is a gap)."""
    by_kind: dict[str, int] = {}
    for e in body["equipamentos"]:
        for g in e["gaps"]:
            by_kind[g["kind"]] = by_kind.get(g["kind"], 0) + 1
    return {
        "equipment": len(body["equipamentos"]),
        "gaps": body["total_gaps"],
        "made_inside": len(range(0, equipment, HOLE_EVERY)),
        "found_inside": by_kind.get(gaps.KIND_INSIDE, 0),
        "made_end": len(range(5, equipment, HOLE_EVERY)),
        "found_end": by_kind.get(gaps.KIND_END, 0),
        "found_all": by_kind.get(gaps.KIND_ALL, 0),
        "missing_kwh": body["total_missing_kwh"],
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async def punch_holes(conn: asyncpg.Connection) -> None:
        now = datetime.now(UTC)
        await conn.execute(PUNCH_HOLES, now - timedelta(days=1), args.equipment)
        await conn.execute(SILENCE_TAIL, now, args.equipment)

    async with big_table(args, then=punch_holes) as (conn, table):
        count = await conn.fetchval(f"SELECT count(*) FROM {BIG_TABLE}")
        measured = await measure(conn, args.runs, args.equipment)
    return {
        "rows_filled": table.pop("rows"),
        "rows": count,
        "runs": args.runs,
        **table,
        **measured,
    }


def print_report(report: dict[str, Any]) -> None:
    print(
        f"PostgreSQL {report['postgres']}; {report['rows']:,} rows ({report['table_size']} "
        f"with indexes) filled in {report['fill_s']} s, "
        f"VACUUM ANALYZE {report['vacuum_analyze_s']} s; {report['runs']} runs each"
    )
    print(f"holes found: {report['found']}")
    print(f"{'query':36s}{'median ms':>11s}{'worst ms':>10s}{'target':>8s}{'index':>7s}  plan")
    for r in report["results"]:
        if "missing" in r:
            print(f"{r['query']:36s}  {r['missing']}")
            continue
        index = "yes" if r["index"] else "NO"
        print(
            f"{r['query']:36s}{r['median_ms']:>11.1f}{r['worst_ms']:>10.1f}"
            f"{r['target_ms']:>8.0f}{index:>7s}  {'; '.join(r['scans'])}"
        )
    for name, text in report["plans"].items():
        print(f"\n--- {name}\n{text}")


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0])
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    else:
        print_report(report)
    failed = [r for r in report["results"] if "missing" not in r and not r["within_target"]]
    if failed or any(r.get("index") is False for r in report["results"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
