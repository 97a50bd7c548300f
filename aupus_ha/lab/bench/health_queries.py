"""The health and alert queries on a 10-million-row `equipamentos_dados`: time and plan.

    .venv/bin/python -m aupus_ha.lab.bench.health_queries   # 10,080,000 rows, 7 runs each
    .venv/bin/python -m aupus_ha.lab.bench.health_queries --rows 500000   # a quick look

Starts an embedded PostgreSQL, applies the migrations, fills `equipamentos` (1,050
enabled, 1,000 of them reporting) and `equipamentos_dados` server-side (INSERT ...
SELECT generate_series, in time order like a live feed: one reading per equipment every
~5 min over 35 days, mixed `qualidade`), plus the small HA tables (alerts, handovers,
rejects). After VACUUM ANALYZE it runs every named query behind the `/health...` routes,
`/metrics` and the alert checks, several times each, and prints: query, median ms,
worst ms, and whether the plan reads `equipamentos_dados` through an index (no Seq
Scan), for the plan with the real parameters and for the generic plan that a prepared
statement may switch to. `--json` for machines.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import asyncpg

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.embedded import EmbeddedPostgres

BIG_TABLE = "equipamentos_dados"
CLUSTER = "bench"
DAY_S = 86_400.0
HOUR_S = 3_600.0
SILENT_EQUIPMENT = 50  # enabled but never reporting: coverage below 100 % like in the field

# Time-ordered ids (like the legacy cuids) and one row per (slot, equipment), produced in
# time order so the heap is correlated with created_at as it is under a live feed.
FILL_DADOS = f"""
INSERT INTO {BIG_TABLE} (id, equipamento_id, timestamp_dados, dados, fonte, qualidade,
                         energia_kwh, potencia_ativa_kw, num_leituras, created_at)
SELECT 'b' || lpad((s * $3 + e)::text, 12, '0'),
       'eq' || lpad(e::text, 4, '0'),
       v.ts,
       jsonb_build_object('power', v.p, 'voltage', 220 + e % 7, 'current', round(v.p / 220, 2)),
       'MQTT',
       CASE WHEN v.h < 85 THEN 'bom' WHEN v.h < 88 THEN 'boa' WHEN v.h < 96 THEN 'parcial'
            WHEN v.h < 99 THEN 'ruim' END,
       v.p / 12000.0, v.p / 1000.0, 1,
       v.ts + make_interval(secs => 0.2 + (v.h % 30) / 10.0)
FROM generate_series($1::int, $2::int - 1) AS s
CROSS JOIN generate_series(0, $3::int - 1) AS e
CROSS JOIN LATERAL (
    SELECT $4::timestamptz + make_interval(secs => s * $5::float8 + e % 60) AS ts,
           (s * 31 + e * 17) % 100 AS h,
           round((1000 + 800 * sin(s / 12.0 + e))::numeric, 1) AS p
) AS v
"""

FILL_EQUIPMENT = """
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado)
SELECT 'eq' || lpad(e::text, 4, '0'), 'Medidor ' || e, 'aupus/bench/eq' || lpad(e::text, 4, '0'),
       true
FROM generate_series(0, $1::int - 1) AS e
"""

FILL_SMALL_TABLES = [
    # 200 handovers, 5,000 alerts (a few still open), 50,000 rejects over the same days.
    """INSERT INTO ha_handovers (cluster_name, epoch, from_instance_id, to_instance_id,
                                 reason, gap_ms, at)
       SELECT $1, n, 'node-' || (n % 2), 'node-' || ((n + 1) % 2), 'evicted', 4000 + n,
              now() - make_interval(secs => (200 - n) * $2::float8 / 200)
       FROM generate_series(1, 200) AS n""",
    """INSERT INTO ha_alerts (cluster_name, kind, level, service, message, metadata,
                              opened_at, resolved_at, last_notified_at, instance_id)
       SELECT $1, CASE WHEN n > 4990 THEN 'open_kind_' || n ELSE 'kind_' || n END,
              'WARNING', 'DataIngestion', 'bench alert ' || n, '{}'::jsonb,
              now() - make_interval(secs => (5000 - n) * $2::float8 / 5000),
              CASE WHEN n > 4990 THEN NULL ELSE now() END, now(), 'node-0'
       FROM generate_series(1, 5000) AS n""",
    """INSERT INTO ingest_rejects (topic, payload, payload_sha256, reason, received_at,
                                   instance_id, created_at)
       SELECT 'aupus/bench/bad', '\\x00'::bytea, md5(n::text), 'not_json', now(), 'node-0',
              now() - make_interval(secs => (50000 - n) * $1::float8 / 50000)
       FROM generate_series(1, 50000) AS n""",
]

FILL_LEADERSHIP = """
INSERT INTO ha_leadership (cluster_name, epoch, leader_instance_id, acquired_at, last_flush_at)
VALUES ($1, 201, 'node-1', now() - interval '1 hour', now());
INSERT INTO ha_instances (instance_id, cluster_name, process_token, host, pid, version, mode,
                          role, started_at, heartbeat_at, leader_epoch)
SELECT 'node-' || n, $1, gen_random_uuid(), 'host-' || n, 1000 + n, '0.1.0', 'production',
       CASE WHEN n = 1 THEN 'leader' ELSE 'standby' END, now(), now(),
       CASE WHEN n = 1 THEN 201 END
FROM generate_series(0, 1) AS n;
"""


@dataclass
class Result:
    name: str
    times_ms: list[float]
    scans: list[str]
    index_backed: bool | None  # None: the query does not read equipamentos_dados
    generic_index_backed: bool | None
    notes: list[str] = field(default_factory=list)

    def row(self) -> dict[str, Any]:
        return {
            "query": self.name,
            "median_ms": round(statistics.median(self.times_ms), 3),
            "worst_ms": round(max(self.times_ms), 3),
            "index": _yes_no(self.index_backed),
            "index_generic_plan": _yes_no(self.generic_index_backed),
            "scans": self.scans,
        }


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "NO")


def health_queries(now: datetime) -> list[tuple[str, tuple[object, ...], bool]]:
    """(name, parameters, writes?) of every query behind the health routes and alerts.

    health.py / /metrics: last_data, ingestion_window, rejects_window, handovers_summary,
    leadership, and /health/cluster's cluster_instances + recent_handovers; a standby's
    trim reads leader_progress through the same helper. alerts.py: the alert_* statements,
    alerts_recent, handovers_since. Writes run in a rolled-back transaction so every run
    sees the same table.
    """
    meta = '{"bench": true}'
    return [
        ("last_data", (), False),
        ("ingestion_window", (DAY_S, HOUR_S), False),
        ("console_ingest_rate", (60,), False),  # the console's chart: last hour per minute
        ("rejects_window", (DAY_S,), False),
        ("handovers_summary", (CLUSTER, DAY_S), False),
        ("leadership", (CLUSTER,), False),
        ("leader_progress", (CLUSTER,), False),  # a standby's expiry rule, every probe
        ("cluster_instances", (CLUSTER,), False),
        ("recent_handovers", (CLUSTER, 10), False),
        ("alerts_recent", (CLUSTER, 100), False),
        ("handovers_since", (CLUSTER, now - timedelta(hours=1)), False),
        (
            "alert_open",
            (CLUSTER, "no_recent_data", "CRITICAL", "DataIngestion", "m", meta, "n"),
            True,
        ),
        ("alert_refresh", (CLUSTER, "open_kind_4999", "CRITICAL", "m", meta), True),
        ("alert_claim_notification", (4999, 3600.0, False), True),
        ("alert_resolve", (CLUSTER, "open_kind_4998"), True),
        ("alert_event", (CLUSTER, "handover:999", "INFO", "Leadership", "m", meta, "n"), True),
    ]


class Scan(NamedTuple):
    node: str  # EXPLAIN's Node Type
    relation: str | None  # for a Bitmap Index Scan: the table of its Bitmap Heap Scan
    index_name: str | None
    seek: bool  # the index is searched with a condition (not read from end to end)


INDEX_NODES = {"Index Scan", "Index Only Scan", "Bitmap Index Scan"}
_BITMAP_PARENTS = {"Bitmap Heap Scan", "BitmapAnd", "BitmapOr"}


def plan_scans(
    plan: dict[str, Any], table: str | None = None, limited: bool = False
) -> Iterator[Scan]:
    """Every node of an EXPLAIN (FORMAT JSON) plan, depth first.

    An index read under a Limit (max() as one step from the end) counts as a search.
    """
    node = plan["Node Type"]
    relation = plan.get("Relation Name") or (table if node in INDEX_NODES else None)
    yield Scan(node, relation, plan.get("Index Name"), "Index Cond" in plan or limited)
    inherited = relation if node in _BITMAP_PARENTS else None
    for child in plan.get("Plans", []):
        yield from plan_scans(child, inherited, limited or node == "Limit")


def index_seek_on(scans: list[Scan], table: str = BIG_TABLE) -> bool | None:
    """True when every read of `table` is an index search; None when it is not read.

    A full index scan (no Index Cond, e.g. the natural key read end to end for a GROUP
    BY) counts as a whole-table read, like a Seq Scan.
    """
    reads = [s for s in scans if s.relation == table and s.node != "ModifyTable"]
    if not reads:
        return None
    searched = [s for s in reads if s.node in INDEX_NODES and s.seek]
    others = [s for s in reads if s.node not in INDEX_NODES and s.node != "Bitmap Heap Scan"]
    unsought = [s for s in reads if s.node in INDEX_NODES and not s.seek]
    return bool(searched) and not others and not unsought


def describe(scans: list[Scan]) -> list[str]:
    out = []
    for s in scans:
        if s.relation or s.index_name:
            relation = None if s.node == "Bitmap Index Scan" else s.relation
            parts = [s.node, relation, f"using {s.index_name}" if s.index_name else None]
            out.append(" ".join(p for p in parts if p))
    return out


async def explain(conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> Any:
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    return json.loads(raw)[0]["Plan"]


async def explain_generic(
    conn: asyncpg.Connection, sql: str, args: tuple[object, ...]
) -> Any | None:
    """The generic plan (no parameter values) a cached prepared statement may switch to."""
    if not args:
        return None
    await conn.execute("SET plan_cache_mode = force_generic_plan")
    await conn.execute(f"PREPARE bench_generic AS {sql}")
    try:
        literals = ", ".join(_literal(a) for a in args)
        raw = await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE bench_generic({literals})")
    finally:
        await conn.execute("DEALLOCATE bench_generic; RESET plan_cache_mode")
    return json.loads(raw)[0]["Plan"]


def _literal(value: object) -> str:
    """A SQL literal of a bench parameter (numbers, booleans, text, timestamps only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


async def timed(
    conn: asyncpg.Connection, sql: str, args: tuple[object, ...], writes: bool
) -> float:
    tx = conn.transaction()
    if writes:
        await tx.start()
    started = time.perf_counter()
    try:
        await conn.fetch(sql, *args)
        return (time.perf_counter() - started) * 1000
    finally:
        if writes:
            await tx.rollback()


async def measure(conn: asyncpg.Connection, runs: int) -> list[Result]:
    q = Queries()
    results = []
    for name, args, writes in health_queries(datetime.now(UTC)):
        sql = q[name]
        scans = list(plan_scans(await explain(conn, sql, args)))
        generic = await explain_generic(conn, sql, args)
        generic_scans = list(plan_scans(generic)) if generic else None
        times = [await timed(conn, sql, args, writes) for _ in range(runs)]
        results.append(
            Result(
                name,
                times,
                describe(scans),
                index_seek_on(scans),
                index_seek_on(generic_scans) if generic_scans else None,
            )
        )
    return results


async def fill(conn: asyncpg.Connection, rows: int, equipment: int, days: float) -> int:
    """Fill the tables server-side; returns the number of rows in equipamentos_dados."""
    slots = -(-rows // equipment)  # ceil: at least `rows` rows
    step_s = days * DAY_S / slots
    start = datetime.now(UTC) - timedelta(days=days)
    await conn.execute(FILL_EQUIPMENT, equipment + SILENT_EQUIPMENT)
    chunk = max(1, 300_000 // equipment)
    started = time.perf_counter()
    for first in range(0, slots, chunk):
        last = min(slots, first + chunk)
        await conn.execute(FILL_DADOS, first, last, equipment, start, step_s)
        done = last * equipment
        rate = done / (time.perf_counter() - started)
        print(f"\r  {done:,} rows ({rate:,.0f}/s)", end="", flush=True)
    print()
    span_s = days * DAY_S
    for statement in FILL_SMALL_TABLES:
        args = (span_s,) if "$2" not in statement else (CLUSTER, span_s)
        await conn.execute(statement, *args)
    await conn.execute(FILL_LEADERSHIP.replace("$1", f"'{CLUSTER}'"))
    return slots * equipment


def print_table(results: list[Result], rows: int, runs: int) -> None:
    print(f"\nhealth and alert queries on {rows:,} rows of {BIG_TABLE}, {runs} runs each")
    print(f"{'query':26s}{'median ms':>11s}{'worst ms':>10s}{'index':>7s}{'generic':>9s}  plan")
    for r in results:
        d = r.row()
        print(
            f"{d['query']:26s}{d['median_ms']:>11.2f}{d['worst_ms']:>10.2f}"
            f"{d['index']:>7s}{d['index_generic_plan']:>9s}  {'; '.join(d['scans'])}"
        )


@contextlib.asynccontextmanager
async def big_table(
    args: argparse.Namespace, then: Callable[[asyncpg.Connection], Awaitable[object]] | None = None
) -> AsyncIterator[tuple[asyncpg.Connection, dict[str, Any]]]:
    """An embedded PostgreSQL, migrated, filled (`fill` per --rows/--equipment/--days,
    then `then`, e.g. holes, in the fill's time) and VACUUM ANALYZEd, removed on exit.

    Yields the connection and what the filling took: rows, fill_s, vacuum_analyze_s,
    table_size, postgres.
    """
    server = EmbeddedPostgres()
    try:
        server.start()
        conn = await asyncpg.connect(server.dsn(), command_timeout=3600)
        try:
            await apply_migrations(conn)
            print(f"filling {args.rows:,} rows ...")
            started = time.perf_counter()
            rows = await fill(conn, args.rows, args.equipment, args.days)
            if then is not None:
                await then(conn)
            fill_s = time.perf_counter() - started
            started = time.perf_counter()
            await conn.execute("VACUUM ANALYZE")
            vacuum_s = time.perf_counter() - started
            size = await conn.fetchval(
                "SELECT pg_size_pretty(pg_total_relation_size($1))", BIG_TABLE
            )
            version = await conn.fetchval("SHOW server_version")
            yield (
                conn,
                {
                    "rows": rows,
                    "fill_s": round(fill_s, 1),
                    "vacuum_analyze_s": round(vacuum_s, 1),
                    "table_size": size,
                    "postgres": version,
                },
            )
        finally:
            await conn.close()
    finally:
        server.cleanup()


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with big_table(args) as (conn, table):
        results = await measure(conn, args.runs)
    return {"rows": table["rows"], "runs": args.runs, **table, "results": results}


def bench_arguments(description: str) -> argparse.Namespace:
    """The options of the 10 M-row benches (this one and gaps_report)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--rows", type=int, default=10_080_000)
    parser.add_argument("--equipment", type=int, default=1_000)
    parser.add_argument("--days", type=float, default=35.0)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    return parser.parse_args()


def main() -> None:
    args = bench_arguments(__doc__.splitlines()[0])
    report = asyncio.run(run(args))
    results: list[Result] = report.pop("results")
    print(
        f"PostgreSQL {report['postgres']}; {report['rows']:,} rows ({report['table_size']} "
        f"with indexes) filled in {report['fill_s']} s, "
        f"VACUUM ANALYZE {report['vacuum_analyze_s']} s"
    )
    if args.json:
        print(json.dumps({**report, "results": [r.row() for r in results]}, indent=2))
    else:
        print_table(results, report["rows"], args.runs)
    if any(r.index_backed is False for r in results):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
