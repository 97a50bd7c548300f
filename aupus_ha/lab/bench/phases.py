"""The measured phases: publish for a while, wait until all is committed, measure
(throughput, latency, flushes, CPU and memory); and the unreported warm-up."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

import asyncpg

from aupus_ha.lab.bench.cluster import RunContext, end_window, spool_window, start_window
from aupus_ha.lab.bench.constants import BACKLOG_CAP
from aupus_ha.lab.bench.publishing import (
    BacklogGate,
    Gate,
    PublishResult,
    for_seconds,
    publish_stream,
)
from aupus_ha.lab.bench.report import PhaseResult
from aupus_ha.lab.bench.tasks import background
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    wait_single_leader,
    wait_until,
)

# One flush = one transaction = one now(): rows sharing created_at were flushed together.
# "steady": the flushes that started before the phase's last publish (see commit_rate).
PHASE_STATS = """
WITH r AS (
    SELECT (dados->>'sent_at')::float8 AS sent, extract(epoch FROM created_at)::float8 AS at
    FROM equipamentos_dados
    WHERE (dados->>'seq')::bigint >= $1 AND (dados->>'seq')::bigint < $2
), steady AS (
    SELECT at, count(*) AS n FROM r GROUP BY at HAVING at <= (SELECT max(sent) FROM r)
)
SELECT (SELECT count(*) FROM r) AS rows,
       (SELECT count(*) FROM steady) AS flushes,
       ((SELECT sum(n) FROM steady) - (SELECT n FROM steady ORDER BY at LIMIT 1))::bigint
           AS later_rows,
       (SELECT max(at) - min(at) FROM steady) AS flush_span,
       (SELECT max(at) - min(sent) FROM r) AS span,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY at - sent) FROM r) AS p50,
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY at - sent) FROM r) AS p99,
       (SELECT max(at - sent) FROM r) AS worst
"""
ROWS_SINCE = "SELECT count(*) FROM equipamentos_dados WHERE created_at >= to_timestamp($1)"


async def run_phase(
    ctx: RunContext, name: str, rate: float | None, duration_s: float
) -> PhaseResult:
    """Publish for `duration_s`, wait until all is committed, measure."""
    ctx.progress.say(f"phase {name}: publishing {rate_text(rate)} for {duration_s:.0f}s")
    await start_window(ctx, name)
    started = time.time()
    if rate is None:
        gate = BacklogGate(await wait_single_leader(ctx.nodes, timeout=30), BACKLOG_CAP)
        await gate.poll()
        async with background(gate.follow(), "backlog-gate"):
            sent = await publish(ctx, rate, for_seconds(duration_s), gate)
    else:
        sent = await publish(ctx, rate, for_seconds(duration_s))
    return await finish_phase(ctx, name, rate, started, sent)


async def publish(
    ctx: RunContext, rate: float | None, until: Callable[[], bool], gate: Gate | None = None
) -> PublishResult:
    result = await publish_stream(
        ctx.publisher, ctx.source, rate=rate, window=ctx.options.window, until=until, gate=gate
    )
    ctx.published += result.sent
    return result


async def finish_phase(
    ctx: RunContext, name: str, rate: float | None, started: float, sent: PublishResult
) -> PhaseResult:
    await drain(ctx, started, sent.sent)
    spool = await spool_window(ctx, name)
    resources = await end_window(ctx, name)
    ended = time.time()
    stats = await ctx.db.fetchrow(PHASE_STATS, sent.first_seq, sent.end_seq, timeout=120)
    assert stats is not None
    rows = int(stats["rows"])
    result = PhaseResult(
        name=name,
        target_rate=rate,
        span_s=(round(started - ctx.t0, 3), round(ended - ctx.t0, 3)),
        publish_s=round(sent.seconds, 3),
        published=sent.sent,
        committed=rows,
        lost=sent.sent - rows,
        publish_rate=round(sent.sent / max(1e-9, sent.seconds), 1),
        ingest_rate=round(commit_rate(stats), 1),
        latency_ms={k: round(1000 * float(stats[k] or 0), 1) for k in ("p50", "p99", "worst")},
        flushes=await asyncio.to_thread(flush_summary, ctx.nodes, started, ended),
        resources=resources,
        cpu_us_per_reading={
            g: round(1e6 * u.cpu_s / max(1, sent.sent), 1) for g, u in resources.items()
        },
        spool=spool,
    )
    ctx.phases.append(result)
    ctx.progress.say(
        f"phase {name}: {result.ingest_rate:,.0f} rows/s committed, "
        f"p50 {result.latency_ms['p50']:.0f} ms, p99 {result.latency_ms['p99']:.0f} ms"
    )
    return result


def commit_rate(stats: asyncpg.Record) -> float:
    """Rows/s committed in steady state: between the first flush of the phase and the
    last one that started before publishing ended.

    A flush's rows were published before it started (its created_at), so the rows of
    flushes 2..k are those published between flush 1 and flush k: neither the wait for
    the first batch nor the drain after the last publish biases the rate.
    """
    if int(stats["flushes"]) >= 2 and stats["flush_span"] > 0:
        return float(stats["later_rows"] / stats["flush_span"])
    rows = int(stats["rows"])
    return float(rows / max(1e-3, stats["span"])) if rows else 0.0


async def drain(ctx: RunContext, started: float, sent: int) -> None:
    """Wait until every reading published since `started` is committed (bounded)."""

    async def drained() -> bool:
        count = await ctx.db.fetchval(ROWS_SINCE, started, timeout=30)
        return int(count) >= sent

    timeout = max(60.0, 4 * ctx.options.duration_s)
    with contextlib.suppress(AssertionError):  # reported as lost readings instead
        await wait_until(drained, timeout, "readings not committed", interval=0.5)


def flush_summary(
    nodes: Sequence[InstanceProcess], started: float, ended: float
) -> dict[str, float]:
    """The leaders' flush.committed events between two wall times (reads log files)."""
    low, high = _wall_to_iso(started), _wall_to_iso(ended)
    rows: list[float] = []
    ms: list[float] = []
    for node in nodes:
        for event in node.find("flush.committed"):
            stamp = str(event.get("timestamp", "")).replace("Z", "+00:00")
            if low <= stamp <= high:
                rows.append(float(event.get("rows", 0)) + float(event.get("duplicates", 0)))
                ms.append(float(event.get("ms", 0.0)))
    return {
        "count": len(ms),
        "rows_mean": round(statistics.fmean(rows), 1) if rows else 0.0,
        "ms_p50": round(_percentile(ms, 0.5), 1),
        "ms_p99": round(_percentile(ms, 0.99), 1),
    }


def rate_text(rate: float | None) -> str:
    return "as fast as the broker accepts" if rate is None else f"{rate:,.0f} readings/s"


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wall_to_iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()


async def warm_up(ctx: RunContext) -> None:
    """A short paced burst (connections, staging tables, caches), drained, not reported."""
    ctx.t0 = time.time()
    started = ctx.t0
    sent = await publish(ctx, 500.0, for_seconds(ctx.options.warmup_s))
    await drain(ctx, started, sent.sent)
