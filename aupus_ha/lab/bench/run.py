"""A whole run: `aupus-ha bench` (`main`) and aupus_ha/lab/bench/failover.py (`failover_report`)."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
from dataclasses import asdict
from typing import Any

from aupus_ha.lab.bench.baselines import measure_baselines
from aupus_ha.lab.bench.cluster import RunContext, cluster_run
from aupus_ha.lab.bench.constants import BACKLOG_CAP
from aupus_ha.lab.bench.faults import fault_stats, run_failover_phase
from aupus_ha.lab.bench.options import BenchOptions, options_from_args
from aupus_ha.lab.bench.phases import run_phase, warm_up
from aupus_ha.lab.bench.plot import write_plot
from aupus_ha.lab.bench.report import BenchReport, compute_ratios
from aupus_ha.lab.bench.servers import embedded_servers
from aupus_ha.lab.bench.table import render_table
from aupus_ha.lab.bench.timeline import build_timeline
from aupus_ha.lab.localcluster import FAST_TIMINGS
from aupus_ha.lab.progress import Progress


def main(args: argparse.Namespace) -> int:
    """`aupus-ha bench`: run, print the table (or JSON), write the plot."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"aupus-ha bench: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_bench(options))
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped and removed", file=sys.stderr)
        return 130
    table = render_table(report)
    if options.plot is not None:
        write_plot(options.plot, report, table)
    if args.json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        sys.stdout.write(table)
    return 0


async def failover_report(
    *, runs: int, rate: float, fast: bool, keep: bool, equipment: int = 50
) -> dict[str, object]:
    """aupus_ha/lab/bench/failover.py: failover times over many runs, and the integrity check."""
    options = BenchOptions(
        duration_s=8.0, equipment=equipment, fast_timings=fast, keep=keep, failover_runs=runs
    )
    progress = Progress(to_stderr=True)
    async with (
        embedded_servers(durable=False, keep=keep) as servers,
        cluster_run(servers, options, progress) as ctx,
    ):
        await warm_up(ctx)
        await run_failover_phase(ctx, rate, runs)
        parts = await collect(ctx)
    integrity = parts["integrity"]
    return {
        "runs": runs,
        "timings": "fast" if fast else "contract defaults",
        "faults": fault_stats(ctx.faults),
        "published": integrity["published"],
        "stored": integrity["stored"],
        "lost": integrity["lost"],
        "duplicates": integrity["duplicates"],
    }


async def run_bench(options: BenchOptions, progress: Progress | None = None) -> BenchReport:
    progress = progress or Progress(to_stderr=True)
    async with embedded_servers(durable=options.durable, keep=options.keep) as servers:
        progress.say(f"servers up in {servers.workdir}; measuring the raw limits")
        baselines, costs = await measure_baselines(servers, options, progress)
        async with cluster_run(servers, options, progress) as ctx:
            await warm_up(ctx)
            await run_phases(ctx)
            parts = await collect(ctx)
    return _assemble(ctx, baselines, parts | {"costs": costs})


async def run_phases(ctx: RunContext) -> None:
    options = ctx.options
    paced = options.rate if isinstance(options.rate, float) else None
    if options.rate in ("auto", "max"):
        best = await run_phase(ctx, "max", None, options.duration_s)
        paced = max(100.0, round(best.ingest_rate / 2, -2))
    assert paced is not None
    if options.rate != "max":
        await run_phase(ctx, "paced", paced, options.duration_s)
    if not options.skip_failover:
        await run_failover_phase(ctx, paced, options.failover_runs)


async def collect(ctx: RunContext) -> dict[str, Any]:
    """What needs the database before the servers go: integrity, timeline, versions."""
    row = await ctx.db.fetchrow(
        "SELECT count(DISTINCT (dados->>'seq')::bigint) AS stored, count(*) AS rows "
        "FROM equipamentos_dados",
        timeout=120,
    )
    assert row is not None
    return {
        "integrity": {
            "published": ctx.published,
            "stored": int(row["stored"]),
            "lost": ctx.published - int(row["stored"]),
            "duplicates": int(row["rows"]) - int(row["stored"]),
        },
        "timeline": await build_timeline(ctx),
        "machine": await _machine(ctx),
    }


async def _machine(ctx: RunContext) -> dict[str, object]:
    version = await ctx.db.fetchval("SHOW server_version", timeout=10)
    log = await asyncio.to_thread(ctx.servers.broker.log_path.read_text, errors="replace")
    found = re.search(r"mosquitto version (\S+)", log)
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "postgres": version,
        "mosquitto": found.group(1) if found else "?",
        "fsync": "on" if ctx.options.durable else "off",
        "load_average_at_start": ctx.servers.load_at_start,
    }


def _assemble(ctx: RunContext, baselines: dict[str, float], parts: dict[str, Any]) -> BenchReport:
    options, servers = ctx.options, ctx.servers
    settings = asdict(options) | {
        "plot": str(options.plot) if options.plot else None,
        "instance_timings": FAST_TIMINGS if options.fast_timings else "defaults",
        "backlog_cap": BACKLOG_CAP,
        "payload_bytes_actual": len(ctx.source.next()[1]),
    }
    return BenchReport(
        machine=parts["machine"],
        settings=settings,
        baselines=baselines,
        costs=parts["costs"],
        phases=ctx.phases,
        failover=fault_stats(ctx.faults),
        faults=ctx.faults,
        ratios=compute_ratios(baselines, ctx.phases),
        integrity=parts["integrity"],
        timeline=parts["timeline"],
        processes={"pids": sorted(set(servers.pids)), "workdir": str(servers.workdir)},
    )
