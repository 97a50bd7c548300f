"""Every query behind the health routes and the alerts can be answered through an index.

On a small table the planner would rightly pick sequential scans, so the plans are taken
with `enable_seqscan = off`: a Seq Scan still shows up only where no index can serve the
query, i.e. where a 10-million-row `equipamentos_dados` (or a big `ha_alerts`) would be
read whole. `aupus_ha/lab/bench/health_queries.py` measures the same queries on 10 M rows.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.bench.health_queries import (
    BIG_TABLE,
    Scan,
    health_queries,
    index_seek_on,
    plan_scans,
)

ROOT = Path(__file__).resolve().parents[2]
NOW = datetime.now(UTC).replace(microsecond=0)
KEYS = (["eq0001", "eq0002"], [NOW - timedelta(minutes=1), NOW - timedelta(minutes=2)])
# Every query that reads equipamentos_dados, with parameters (the flush path's probes too).
DADOS_READS: dict[str, tuple[object, ...]] = {
    "last_data": (),
    "ingestion_window": (86_400.0, 3_600.0),
    "probe_readings": KEYS,
    "probe_rollup_samples": (*KEYS, ["s1", "s2"]),
    "rollup_rows_for_update": KEYS,
    "summary_previous_rows": KEYS,  # the M-160 outlier guard, in the flush transaction
    "probe_readings_by_content": (*KEYS, ["{}", "{}"], 10.0),
    "insert_clockless_from_staging": (1, 10.0),  # reads the staging table, then the key
    "legacy_time_offset": (1000,),  # the start-up check of a legacy time convention
    # the data-loss report (operations/gaps.py): a day of every equipment, then the power
    "gaps_scan": (NOW - timedelta(days=1), NOW, NOW - timedelta(days=2), None, 60.0, 3.0, 10),
    "gaps_power": (["eq0001"], [NOW - timedelta(hours=2)], [NOW - timedelta(hours=1)], 5, 864e2),
    # the platform's diagnostics routes (operations/diagnostics.py): $1 the window's start
    "diag_equipamentos_ativos": (NOW - timedelta(days=1),),
    "diag_equipamentos_inativos": (NOW - timedelta(days=1),),
    "diag_janela": (NOW - timedelta(days=1),),
    "diag_topicos": (NOW - timedelta(days=1),),
    "diag_gaps": (NOW - timedelta(days=1), 900.0, 20),
    "diag_ultimos": (10,),
    "console_ingest_rate": (60,),  # the console's chart (operations/console.py)
    "devalert_last_seen": (),  # per-device alerts (operations/device_alerts.py)
}
NOT_READS = {"create_staging", "create_staging_clockless"}
GROWING = {
    BIG_TABLE,
    "ha_alerts",
    "ha_handovers",
    "ingest_rejects",
}  # CREATE TEMP TABLE ... WITH NO DATA: reads no row
_READS_DADOS = re.compile(rf"\b(?:FROM|JOIN)\s+{BIG_TABLE}\b", re.IGNORECASE)

FILL = f"""
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado)
SELECT 'eq' || lpad(e::text, 4, '0'), 'm' || e, 'aupus/t/' || e, true
FROM generate_series(0, 19) AS e;
INSERT INTO {BIG_TABLE} (equipamento_id, timestamp_dados, dados, qualidade, created_at)
SELECT 'eq' || lpad((n % 20)::text, 4, '0'), now() - make_interval(mins => n), '{{}}',
       CASE WHEN n % 10 = 0 THEN 'ruim' ELSE 'bom' END, now() - make_interval(mins => n)
FROM generate_series(1, 2000) AS n;
INSERT INTO ha_alerts (cluster_name, kind, level, service, message)
SELECT 'bench', 'kind_' || n, 'INFO', 'Leadership', 'm' FROM generate_series(1, 50) AS n;
ANALYZE;
"""


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        await apply_migrations(connection)
        await connection.execute(FILL)
        await connection.execute(Queries()["create_staging_clockless"])
        await connection.execute("SET enable_seqscan = off")
        yield connection
    finally:
        await connection.close()


async def _scans(conn: asyncpg.Connection, sql: str, args: tuple[object, ...]) -> list[Scan]:
    raw = await conn.fetchval("EXPLAIN (FORMAT JSON) " + sql, *args)
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    return list(plan_scans(plan))


def test_every_query_reading_equipamentos_dados_is_listed() -> None:
    """A new query on the big table must be added here (and so get its plan checked)."""
    q = Queries()
    reading = {n for n in q.names() if _READS_DADOS.search(q[n])} - NOT_READS
    assert reading == set(DADOS_READS)


def test_every_health_and_alert_query_is_listed() -> None:
    """The queries health/alerts code runs are exactly those the bench and this test use."""
    used = set(
        re.findall(r"_fetch\(\s*\"(\w+)\"", (ROOT / "aupus_ha/operations/alerts.py").read_text())
    )
    store = (ROOT / "aupus_ha/pipeline/store.py").read_text()
    used |= set(re.findall(r"_fetchrow\(\s*\"(\w+)\"", store))
    view = store[store.index("async def cluster_view") : store.index("async def ping")]
    used |= set(re.findall(r"self\._q\[\"(\w+)\"\]", view))
    console = (ROOT / "aupus_ha/operations/console.py").read_text()
    used |= set(re.findall(r"_queries\(\)\[\"(\w+)\"\]", console))
    assert used == {name for name, _, _ in health_queries(NOW)}


async def test_equipamentos_dados_is_read_through_an_index(conn: asyncpg.Connection) -> None:
    """Every read of equipamentos_dados is an index search (no Seq Scan, no full index)."""
    q = Queries()
    for name, args in DADOS_READS.items():
        scans = await _scans(conn, q[name], args)
        assert index_seek_on(scans) is True, (name, scans)


async def test_health_and_alert_queries_search_the_growing_tables(
    conn: asyncpg.Connection,
) -> None:
    """Every health/alert query reads each append-only table through an index search.

    ha_instances, ha_leadership and equipamentos hold a row per instance, cluster or
    device: reading them whole is right at any size.
    """
    q = Queries()
    for name, args, _ in health_queries(NOW):
        scans = await _scans(conn, q[name], args)
        read = {s.relation for s in scans if s.node != "ModifyTable"}  # not the write target
        for table in GROWING & read:
            assert index_seek_on(scans, table) is True, (name, table, scans)


async def test_a_missing_index_is_caught(conn: asyncpg.Connection) -> None:
    """Without idx_equipamentos_dados_created_at the 24 h window reads the whole table.

    With seq scans off the planner walks the natural-key index end to end instead: that
    is no search, and the check says so.
    """
    await conn.execute("DROP INDEX idx_equipamentos_dados_created_at")
    for name in ("last_data", "ingestion_window"):
        scans = await _scans(conn, Queries()[name], DADOS_READS[name])
        assert index_seek_on(scans) is False, (name, scans)
