"""The spool's group commit, per instance and phase, from the instances' /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

import aiohttp

from aupus_ha.lab.localcluster import InstanceProcess

# Counter name in /metrics -> short key in the report.
COUNTERS = {
    "aupus_ha_spool_records_total": "records",
    "aupus_ha_spool_fsyncs_total": "fsyncs",
    "aupus_ha_spool_fsync_seconds_total": "fsync_s",
}
Counters = dict[str, float]


def parse_counters(text: str) -> Counters:
    """The spool counters of a Prometheus text page (absent ones are left out)."""
    found: Counters = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = COUNTERS.get(name.split("{", 1)[0])
        if key is not None:
            found[key] = found.get(key, 0.0) + float(value.split()[0])
    return found


async def read_counters(node: InstanceProcess, timeout: float = 2.0) -> Counters:
    """The node's spool counters now; empty when it does not answer."""
    url = f"http://{node.http_host}:{node.http_port}/metrics"
    try:
        client_timeout = aiohttp.ClientTimeout(total=timeout)
        async with aiohttp.ClientSession(timeout=client_timeout) as s, s.get(url) as resp:
            return parse_counters(await resp.text())
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return {}


async def snapshot(nodes: Sequence[InstanceProcess]) -> dict[str, Counters]:
    counters = await asyncio.gather(*(read_counters(n) for n in nodes))
    return {n.name: c for n, c in zip(nodes, counters, strict=True)}


def group_commit(
    before: Mapping[str, Counters], after: Mapping[str, Counters], seconds: float
) -> dict[str, dict[str, float]]:
    """Per node over a phase: fsyncs/s, records per fsync, ms per fsync and the share
    of the phase spent in fsync (the writer thread's time, not the event loop's)."""
    result: dict[str, dict[str, float]] = {}
    for name, end in after.items():
        start = before.get(name)
        if not start or not end:
            continue  # restarted or not answering: no meaningful difference
        delta = {k: end.get(k, 0.0) - start.get(k, 0.0) for k in COUNTERS.values()}
        if min(delta.values()) < 0:
            continue  # the instance restarted during the phase (failover): counters reset
        fsyncs, records, fsync_s = delta["fsyncs"], delta["records"], delta["fsync_s"]
        result[name] = {
            "records_per_s": round(records / max(1e-9, seconds), 1),
            "fsyncs_per_s": round(fsyncs / max(1e-9, seconds), 1),
            "records_per_fsync": round(records / fsyncs, 1) if fsyncs else 0.0,
            "ms_per_fsync": round(1000 * fsync_s / fsyncs, 2) if fsyncs else 0.0,
            "fsync_busy_pct": round(100 * fsync_s / max(1e-9, seconds), 1),
        }
    return result
