"""The run over time: committed rows/s by leader, published readings/s, leader terms."""

from __future__ import annotations

import time
from collections.abc import Sequence

from aupus_ha.lab.bench.cluster import RunContext
from aupus_ha.lab.bench.constants import CLUSTER
from aupus_ha.lab.bench.report import Timeline

FLUSHES = """
SELECT extract(epoch FROM created_at)::float8 AS at, ha_epoch, count(*) AS n
FROM equipamentos_dados GROUP BY created_at, ha_epoch ORDER BY 1
"""
PUBLISHED = """
SELECT round((dados->>'sent_at')::numeric, 1)::float8 AS at, count(*) AS n
FROM equipamentos_dados GROUP BY 1 ORDER BY 1
"""
HANDOVERS = """
SELECT epoch, to_instance_id, extract(epoch FROM at)::float8 AS at
FROM ha_handovers WHERE cluster_name = $1 ORDER BY epoch
"""
RATE_WINDOW_S = 2.0  # the plotted rates are trailing averages over this window


async def build_timeline(ctx: RunContext) -> Timeline:
    """Committed rows/s (by leading instance) and published readings/s over the run."""
    end = time.time() - ctx.t0
    step = next((b for b in (0.25, 0.5, 1.0, 2.0, 5.0) if end / b <= 600), 10.0)
    hand = await ctx.db.fetch(HANDOVERS, CLUSTER, timeout=30)
    leader_of = {int(h["epoch"]): str(h["to_instance_id"]) for h in hand}
    flushes = await ctx.db.fetch(FLUSHES, timeout=120)
    published = await ctx.db.fetch(PUBLISHED, timeout=120)
    times = [i * step for i in range(int(end / step) + 1)]
    by_leader: dict[str, list[tuple[float, float]]] = {}
    for f in flushes:
        leader = leader_of.get(f["ha_epoch"] or 0, "?")
        by_leader.setdefault(leader, []).append((f["at"] - ctx.t0, float(f["n"])))
    committed = [
        (t, leader, rate)
        for leader, events in sorted(by_leader.items())
        for t, rate in zip(times, trailing_rate(events, times, RATE_WINDOW_S), strict=True)
        if rate > 0
    ]
    sent = [(p["at"] - ctx.t0, float(p["n"])) for p in published]
    faults = [(f.kind, f.at_s) for f in ctx.faults]
    return Timeline(
        bucket_s=step,
        committed=sorted(committed),
        published=list(zip(times, trailing_rate(sent, times, RATE_WINDOW_S), strict=True)),
        leaders=leader_spans(
            [(h["at"] - ctx.t0, str(h["to_instance_id"])) for h in hand], faults, end
        ),
        phases=[(p.name, *p.span_s) for p in ctx.phases],
        faults=faults,
    )


def trailing_rate(
    events: Sequence[tuple[float, float]], times: Sequence[float], window: float
) -> list[float]:
    """For each time t: the sum of event amounts in (t - window, t], per second."""
    out, total, lo, hi = [], 0.0, 0, 0
    for t in times:
        while hi < len(events) and events[hi][0] <= t:
            total += events[hi][1]
            hi += 1
        while lo < hi and events[lo][0] <= t - window:
            total -= events[lo][1]
            lo += 1
        out.append(round(max(0.0, total) / window, 1))
    return out


def leader_spans(
    handovers: Sequence[tuple[float, str]], faults: Sequence[tuple[str, float]], end: float
) -> list[tuple[float, float, str]]:
    """(from, to, instance): each term, from its acquisition to the next fault or term."""
    spans = []
    for i, (start, name) in enumerate(handovers):
        stop = handovers[i + 1][0] if i + 1 < len(handovers) else end
        stop = min([stop, *(t for _, t in faults if start < t < stop)])
        spans.append((round(max(0.0, start), 3), round(stop, 3), name))
    return spans
