"""What the content match costs the flush: 5,000 readings timed by arrival vs 5,000 ordinary.

    .venv/bin/python -m aupus_ha.lab.bench.clockless_flush                  # 1,000,000 stored rows
    .venv/bin/python -m aupus_ha.lab.bench.clockless_flush --rows 100000    # a quick look

Starts an embedded PostgreSQL, applies the migrations, fills `equipamentos_dados`
server-side with `--rows` rows (1,000 equipment, one row every 30 s each, generic
`dados` of ~10 keys, the newest ones ending now) and ANALYZEs it. Then it flushes
batches through `Store.flush` (fence, COPY, insert, one transaction each), alternating:

* ordinary: 5,000 readings with device times (the plain COPY + ON CONFLICT path);
* clockless: 5,000 readings timed by arrival, new content (the content path: their
  own staging table, the in-batch check and one natural-key range scan per reading);
* clockless copies: the 5,000 readings of the previous clockless batch again, keyed
  3 s later (a new leader's copies of what its predecessor wrote: every one skipped).

Prints the median and worst ms of each over `--runs` batches. `--json` for machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson

from aupus_ha.config import default_value, load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.pipeline.readings import Reading
from aupus_ha.pipeline.store import Store

CLUSTER = "bench"
EQUIPMENT = 1000
BATCH: int = default_value("BATCH_MAX")  # one flush of the instances' default size

FILL = """
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado)
SELECT 'eq' || lpad(e::text, 4, '0'), 'm' || e, 'bench/' || e, true
FROM generate_series(0, $1::int - 1) AS e;
INSERT INTO ha_leadership (cluster_name, epoch) VALUES ('bench', 1);
"""
FILL_DADOS = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, qualidade)
SELECT 'eq' || lpad((n % $2::int)::text, 4, '0'),
       now() - make_interval(secs => (n / $2::int) * 30.0 + (n % $2::int) / 100.0),
       jsonb_build_object('Va', 220 + n % 7, 'Vb', 221.5, 'Vc', 219.9, 'Ia', n % 97,
                          'Ib', 11.87, 'Ic', 12.02, 'Pt', n % 9000, 'Qt', 913.5,
                          'St', 7470.6, 'seq', n),
       'bom'
FROM generate_series(0, $1::int - 1) AS n
"""


def dados(n: int, salt: int) -> bytes:
    return orjson.dumps(
        {
            "Va": 221.4,
            "Vb": 219.9,
            "Vc": 220.7,
            "Ia": n % 97,
            "Ib": 11.87,
            "Ic": 12.02,
            "Pt": n % 9000,
            "Qt": 913.5,
            "St": 7470.6,
            "run": salt,
            "seq": n,
        }
    )


def batch(start: datetime, salt: int, *, clockless: bool) -> list[Reading]:
    """5,000 readings of 1,000 equipment, 5 each, 30 s apart, keyed from `start`."""
    return [
        Reading(
            f"eq{n % EQUIPMENT:04d}",
            start + timedelta(seconds=30 * (n // EQUIPMENT), milliseconds=n % EQUIPMENT),
            dados(n, salt),
            matchable=not clockless,
        )
        for n in range(BATCH)
    ]


async def run(rows: int, runs: int) -> dict[str, list[float]]:
    server = EmbeddedPostgres()
    try:
        server.start()
        conn = await asyncpg.connect(server.dsn(), command_timeout=3600)
        await apply_migrations(conn)
        await conn.execute(FILL.replace("$1::int", str(EQUIPMENT)))
        await conn.execute(FILL_DADOS, rows, EQUIPMENT)
        await conn.execute("VACUUM ANALYZE equipamentos_dados")
        await conn.close()
        settings = load_settings({"DATABASE_URL": server.dsn(), "MQTT_MODE": "disabled"})
        pool = await create_pool(settings, "aupus-ha/bench")
        store = Store(pool, Queries(), cluster_name=CLUSTER, instance_id="bench")
        out: dict[str, list[float]] = {"ordinary": [], "clockless": [], "clockless copies": []}
        base = datetime.now(UTC) + timedelta(hours=1)
        for i in range(runs + 1):  # the first round warms the connection and the plans
            start = base + timedelta(hours=i)
            ordinary = await store.flush(batch(start, i, clockless=False), [], 1)
            fresh = batch(start + timedelta(minutes=30), i, clockless=True)
            clockless = await store.flush(fresh, [], 1)
            late = [
                replace(r, timestamp_dados=r.timestamp_dados + timedelta(seconds=3)) for r in fresh
            ]
            copies = await store.flush(late, [], 1)
            assert (ordinary.rows, clockless.rows, copies.duplicates) == (BATCH, BATCH, BATCH)
            if i:
                out["ordinary"].append(ordinary.ms)
                out["clockless"].append(clockless.ms)
                out["clockless copies"].append(copies.ms)
        await pool.close()
        return out
    finally:
        server.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.rows, args.runs))
    if args.json:
        print(json.dumps(result))
        return
    print(f"{BATCH:,} readings a flush, {args.rows:,} rows stored, {args.runs} runs")
    for name, values in result.items():
        print(f"{name:18} median {statistics.median(values):7.1f} ms  worst {max(values):7.1f} ms")


if __name__ == "__main__":
    main()
