"""The failover phase: the paced load while the leader is killed, stopped and frozen."""

from __future__ import annotations

import asyncio
import signal
import statistics
import time
from collections.abc import Sequence

from aupus_ha.lab.bench.cluster import RunContext, healthy_standby, start_window
from aupus_ha.lab.bench.constants import CLUSTER, FAULTS, STALL_S
from aupus_ha.lab.bench.phases import finish_phase, publish, rate_text
from aupus_ha.lab.bench.report import FaultResult, PhaseResult
from aupus_ha.lab.bench.tasks import background
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    wait_single_leader,
    wait_until,
)


async def measure_fault(ctx: RunContext, kind: str) -> FaultResult:
    """Fault the leader; time until the other instance answers 200 on /health/leader."""
    leader = await wait_single_leader(ctx.nodes, timeout=60)
    other = next(n for n in ctx.nodes if n is not leader)
    await wait_until(lambda: healthy_standby(other), 60, f"{other.name} not a healthy standby")
    epoch = await ctx.db.fetchval(
        "SELECT epoch FROM ha_leadership WHERE cluster_name = $1", CLUSTER, timeout=10
    )
    at = time.time()
    started = time.monotonic()
    leader.signal(FAULTS[kind])
    await wait_until(other.is_leader, 60, f"{kind}: no takeover", interval=0.005)
    seconds = time.monotonic() - started
    gap = await ctx.db.fetchval(
        "SELECT gap_ms FROM ha_handovers WHERE cluster_name = $1 AND epoch = $2",
        CLUSTER,
        epoch + 1,
        timeout=10,
    )
    await _recover(ctx, leader, kind)
    result = FaultResult(
        kind, round(at - ctx.t0, 3), round(seconds, 3), float(gap or 0), leader.name, other.name
    )
    ctx.faults.append(result)
    ctx.progress.say(f"{kind}: {other.name} leads after {seconds:.3f}s (writer gap {gap} ms)")
    return result


async def _recover(ctx: RunContext, node: InstanceProcess, kind: str) -> None:
    """Thaw or restart the faulted instance and wait until it is a healthy standby."""
    if kind == "sigstop":
        node.signal(signal.SIGCONT)
    else:
        await node.wait_exit(30)
        await asyncio.to_thread(node.start)
        ctx.servers.pids.append(node.pid)
    await wait_until(lambda: healthy_standby(node), 60, f"{node.name} did not rejoin")


async def run_failover_phase(ctx: RunContext, rate: float, runs: int) -> PhaseResult:
    """The paced load while each fault kind hits the leader `runs` times."""
    name = "failover"
    ctx.progress.say(f"phase {name}: {rate_text(rate)}, {runs} run(s) of {', '.join(FAULTS)}")
    await start_window(ctx, name)
    started = time.time()
    stop = asyncio.Event()
    async with background(publish(ctx, rate, stop.is_set), "failover-load") as load:
        settle = min(3.0, ctx.options.duration_s / 4)
        await asyncio.sleep(settle)
        for _ in range(runs):
            for kind in FAULTS:
                await measure_fault(ctx, kind)
                await asyncio.sleep(settle)
        stop.set()
        sent = await asyncio.wait_for(asyncio.shield(load), timeout=STALL_S)
    return await finish_phase(ctx, name, rate, started, sent)


def fault_stats(faults: Sequence[FaultResult]) -> dict[str, dict[str, float]]:
    """Median and worst takeover time and writer gap, per fault kind."""
    out: dict[str, dict[str, float]] = {}
    for kind in FAULTS:
        rows = [f for f in faults if f.kind == kind]
        if not rows:
            continue
        seconds = [f.failover_s for f in rows]
        gaps = [f.gap_ms for f in rows]
        out[kind] = {
            "median_s": round(statistics.median(seconds), 3),
            "worst_s": round(max(seconds), 3),
            "median_gap_ms": statistics.median(gaps),
            "worst_gap_ms": max(gaps),
            "n": len(rows),
        }
    return out
