"""The raw limits of this machine, measured in the same run: asyncpg COPY, the store's
own flush, one INSERT per reading, and broker fan-out (see `fanout`)."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import Awaitable, Callable

import asyncpg

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.bench.constants import BATCH, CLUSTER, SCRATCH_DB
from aupus_ha.lab.bench.fanout import broker_fanout
from aupus_ha.lab.bench.options import BenchOptions
from aupus_ha.lab.bench.servers import Servers, connect, open_pool
from aupus_ha.lab.bench.source import ReadingSource
from aupus_ha.lab.progress import Progress
from aupus_ha.pipeline.readings import Reading
from aupus_ha.pipeline.store import STAGING_COLUMNS, Store


async def measure_baselines(
    servers: Servers, options: BenchOptions, progress: Progress
) -> tuple[dict[str, float], dict[str, float]]:
    """The raw limits (per second), and the fan-out subscriber's CPU µs per message."""
    equipment = [(f"eq{i:04d}", f"aupus/test/eq{i:04d}") for i in range(options.equipment)]
    source = ReadingSource(equipment, options.payload_bytes)
    results = await database_baselines(
        servers.dsn(SCRATCH_DB), source, options.baseline_s, progress
    )
    costs = {}
    for qos in (1, 0):
        rate, cost = await broker_fanout(
            servers.broker.url, source, qos, options.baseline_s, servers.pids
        )
        results[f"broker_qos{qos}_msgs_s"] = rate
        costs[f"subscriber_qos{qos}_cpu_us_per_msg"] = round(cost, 1)
        progress.say(
            f"baseline broker fan-out QoS {qos}: {rate:,.0f} msgs/s, {cost:.0f} µs CPU/msg"
        )
    return {k: round(v, 1) for k, v in results.items()}, costs


Writer = Callable[[list[Reading]], Awaitable[object]]
NAIVE_INSERT = (
    f"INSERT INTO equipamentos_dados ({', '.join(STAGING_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(STAGING_COLUMNS)))})"
)


# A COPY record: the reading's attributes named by the staging columns, in their order.
_as_record: Callable[[Reading], tuple[object, ...]] = operator.attrgetter(*STAGING_COLUMNS)


async def _rows_per_second(
    write: Writer,
    source: ReadingSource,
    *,
    batch: int,
    budget_s: float,
) -> float:
    """Write batches until `budget_s` of write time is spent; rows per second of it."""
    rows, spent = 0, 0.0
    while spent < budget_s:
        readings = source.readings(batch)
        started = time.perf_counter()
        await write(readings)
        spent += time.perf_counter() - started
        rows += len(readings)
    return rows / spent


async def database_baselines(
    dsn: str, source: ReadingSource, budget_s: float, progress: Progress
) -> dict[str, float]:
    """COPY, the store's flush, and one INSERT per reading, each into an empty table."""
    await _prepare_scratch(dsn)
    async with contextlib.AsyncExitStack() as stack:
        conn = await connect(dsn)
        stack.push_async_callback(conn.close, timeout=5)
        pool = await open_pool(dsn, max_size=1)
        stack.push_async_callback(asyncio.wait_for, pool.close(), 10)
        results = {}
        for name, write, batch in _writers(conn, pool):
            await conn.execute("TRUNCATE equipamentos_dados", timeout=60)
            results[name] = await _rows_per_second(write, source, batch=batch, budget_s=budget_s)
            progress.say(f"baseline {name}: {results[name]:,.0f}")
        return results
    raise AssertionError("unreachable")  # for mypy: the block returns or raises


def _writers(conn: asyncpg.Connection, pool: asyncpg.Pool) -> list[tuple[str, Writer, int]]:
    """(name, write, batch size) of each database baseline."""
    store = Store(pool, Queries(), cluster_name=CLUSTER, instance_id="bench")

    async def copy(readings: list[Reading]) -> None:
        records = [_as_record(r) for r in readings]
        await conn.copy_records_to_table(
            "equipamentos_dados", records=records, columns=STAGING_COLUMNS, timeout=60
        )

    async def flush(readings: list[Reading]) -> None:
        await store.flush(readings, [], 1)

    async def naive(readings: list[Reading]) -> None:
        for r in readings:
            await conn.execute(NAIVE_INSERT, *_as_record(r), timeout=10)

    return [
        ("copy_rows_s", copy, BATCH),
        ("store_flush_rows_s", flush, BATCH),
        ("naive_insert_rows_s", naive, 200),
    ]


async def _prepare_scratch(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1) "
            "ON CONFLICT (cluster_name) DO UPDATE SET epoch = 1",
            CLUSTER,
            timeout=10,
        )
    finally:
        await conn.close(timeout=5)
