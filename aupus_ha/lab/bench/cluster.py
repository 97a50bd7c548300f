"""The cluster under test: a leader and a standby, the run's shared context, and the
resource sampling of every process the bench started."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg

from aupus_ha.lab.bench.constants import BENCH_DB, CLUSTER, NODE_NAMES, SAMPLE_S
from aupus_ha.lab.bench.options import BenchOptions
from aupus_ha.lab.bench.report import FaultResult, PhaseResult, Usage
from aupus_ha.lab.bench.sampling import ResourceSampler
from aupus_ha.lab.bench.servers import Servers, open_pool
from aupus_ha.lab.bench.source import ReadingSource
from aupus_ha.lab.bench.spoolstats import Counters, group_commit, snapshot
from aupus_ha.lab.bench.tasks import background
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from aupus_ha.lab.progress import Progress
from aupus_ha.lab.publisher import Publisher


@dataclass(slots=True)
class RunContext:
    """What the phases share: servers, cluster, publisher, sampler, the run's clock."""

    options: BenchOptions
    servers: Servers
    nodes: list[InstanceProcess]
    db: asyncpg.Pool  # a pool: the sampler task queries while a phase does
    publisher: Publisher
    source: ReadingSource
    sampler: ResourceSampler
    progress: Progress
    t0: float = 0.0  # wall time of the first publish
    phases: list[PhaseResult] = field(default_factory=list)
    faults: list[FaultResult] = field(default_factory=list)
    published: int = 0
    # phase -> (monotonic start, the instances' spool counters then)
    spool_marks: dict[str, tuple[float, dict[str, Counters]]] = field(default_factory=dict)


def node_env(servers: Servers, fast_timings: bool) -> dict[str, str]:
    return {
        "DATABASE_URL": servers.dsn(BENCH_DB),
        "MQTT_URL": servers.broker.url,
        "CLUSTER_NAME": CLUSTER,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        **(FAST_TIMINGS if fast_timings else {}),
    }


async def start_cluster(servers: Servers, options: BenchOptions) -> list[InstanceProcess]:
    """node-a (which will lead), then node-b (standby); both subscribed to every topic."""
    env = node_env(servers, options.fast_timings)
    nodes = [InstanceProcess(name, env, servers.workdir) for name in NODE_NAMES]
    servers.nodes = nodes
    for node in nodes:  # node-a first, so that it is the one that leads
        await asyncio.to_thread(node.start)
        servers.pids.append(node.pid)
        await wait_single_leader(nodes, timeout=60)

    async def subscribed() -> bool:
        counts = await asyncio.gather(*(_subscribed_topics(n) for n in nodes))
        return all(c >= options.equipment for c in counts)

    await wait_until(subscribed, 60, "the instances did not subscribe to every topic", 0.1)
    await wait_until(lambda: healthy_standby(nodes[1]), 60, "node-b is not a healthy standby")
    return nodes


async def _subscribed_topics(node: InstanceProcess) -> int:
    _, body = await node.get("/health")
    with contextlib.suppress(KeyError, TypeError):
        return int(body["checks"]["mqtt"]["subscribedTopics"])  # type: ignore[index]
    return 0


async def healthy_standby(node: InstanceProcess) -> bool:
    status, _ = await node.get("/health/standby")
    return status == 200


async def _process_groups(ctx: RunContext) -> dict[str, list[int]]:
    """Instances, broker, this process, and PostgreSQL backends by whom they serve."""
    groups: dict[str, list[int]] = {n.name: [n.pid] for n in ctx.nodes if n.alive()}
    groups["mosquitto"] = [p for p in (ctx.servers.broker.pid,) if p is not None]
    groups["bench (publisher)"] = [os.getpid()]
    for name in (*NODE_NAMES, "other"):
        groups[f"postgres ({name})"] = []
    postmaster = ctx.servers.pg.pid
    groups["postgres (other)"] += [postmaster] if postmaster is not None else []
    rows = await ctx.db.fetch("SELECT pid, application_name FROM pg_stat_activity", timeout=5)
    for row in rows:
        owner = next(
            (n for n in NODE_NAMES if (row["application_name"] or "").startswith(f"aupus-ha/{n}/")),
            "other",
        )
        groups[f"postgres ({owner})"].append(row["pid"])
    return groups


async def sample_once(ctx: RunContext) -> None:
    groups = await _process_groups(ctx)
    await asyncio.to_thread(ctx.sampler.sample, groups)


async def start_window(ctx: RunContext, name: str) -> None:
    ctx.spool_marks[name] = (time.monotonic(), await snapshot(ctx.nodes))
    groups = await _process_groups(ctx)
    await asyncio.to_thread(ctx.sampler.start_window, name, groups)


async def end_window(ctx: RunContext, name: str) -> dict[str, Usage]:
    groups = await _process_groups(ctx)
    return await asyncio.to_thread(ctx.sampler.end_window, name, groups)


async def spool_window(ctx: RunContext, name: str) -> dict[str, dict[str, float]]:
    """The spool's group commit per instance since `start_window(name)`."""
    mark = ctx.spool_marks.pop(name, None)
    if mark is None:
        return {}
    started, before = mark
    return group_commit(before, await snapshot(ctx.nodes), time.monotonic() - started)


async def sample_forever(ctx: RunContext) -> None:
    while True:
        with contextlib.suppress(
            asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError
        ):
            await sample_once(ctx)
        await asyncio.sleep(SAMPLE_S)


@contextlib.asynccontextmanager
async def cluster_run(
    servers: Servers, options: BenchOptions, progress: Progress
) -> AsyncIterator[RunContext]:
    """Seeded database, two instances, a connected publisher and the resource sampler."""
    equipment = await seed_equipment(servers.dsn(BENCH_DB), options.equipment)
    progress.say(f"starting node-a and node-b ({len(equipment)} equipment)")
    nodes = await start_cluster(servers, options)
    db = await open_pool(servers.dsn(BENCH_DB), max_size=3)
    try:
        async with Publisher(servers.broker.url) as publisher:
            ctx = RunContext(
                options,
                servers,
                nodes,
                db,
                publisher,
                ReadingSource(equipment, options.payload_bytes),
                ResourceSampler(),
                progress,
            )
            async with background(sample_forever(ctx), "sampler"):
                yield ctx
    finally:
        await asyncio.wait_for(db.close(), timeout=10)
