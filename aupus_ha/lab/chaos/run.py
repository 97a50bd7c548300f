"""A whole chaos run: cluster up, load and monitor on, faults for the duration, settle,
count; and the `aupus-ha chaos` entry point."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.lab.bench.tasks import background
from aupus_ha.lab.chaos.cluster import Cluster, cluster_up
from aupus_ha.lab.chaos.faults import (
    FaultInjector,
    FaultRecord,
    SideTraffic,
    runnable_kinds,
    schedule,
)
from aupus_ha.lab.chaos.load import Load
from aupus_ha.lab.chaos.monitor import (
    LeaderMonitor,
    Sample,
    by_node,
    first_leader,
    leaderless,
    role_spans,
    two_leader_moments,
)
from aupus_ha.lab.chaos.options import (
    INSTANCE_KINDS,
    LOAD_KINDS,
    MAX_PAYLOAD_BYTES,
    SPOOL_KINDS,
    ChaosOptions,
    options_from_args,
)
from aupus_ha.lab.chaos.report import ChaosReport, Readings, render
from aupus_ha.lab.chaos.sideload import SideLoad
from aupus_ha.lab.chaos.sidemessages import (
    CLOCKLESS_MARK,
    HOSTILE_MARK,
    ClocklessCatalogue,
    HostileCatalogue,
    SideTally,
    rejected_by_ident,
    tally,
)
from aupus_ha.lab.chaos.spoolfs import UsageSampler
from aupus_ha.lab.interrupt import Interrupted, until_interrupted
from aupus_ha.lab.localcluster import wait_single_leader, wait_until
from aupus_ha.lab.progress import Progress
from aupus_ha.pipeline.mqtt import max_packet_bytes

_STORED_SEQS = """
SELECT (dados->>'seq')::bigint AS seq, count(*) AS n FROM equipamentos_dados
WHERE dados ? 'seq' GROUP BY 1
"""
# The side devices' rows carrying a marker ($2), at the top of dados or in an inverter
# minute's samples; and the rejects of the side devices' topics.
_STORED_MARKS = """
SELECT v, count(*) AS n FROM (
  SELECT dados->>$2 AS v FROM equipamentos_dados WHERE equipamento_id = ANY($1::text[])
  UNION ALL
  SELECT s.value->>$2 FROM equipamentos_dados d,
    jsonb_each(CASE WHEN jsonb_typeof(d.dados->'samples') = 'object'
                    THEN d.dados->'samples' ELSE '{}'::jsonb END) s
  WHERE d.equipamento_id = ANY($1::text[])
) m WHERE v IS NOT NULL GROUP BY v
"""
_SIDE_REJECTS = """
SELECT topic, payload_sha256, reason FROM ingest_rejects WHERE topic = ANY($1::text[])
"""


async def run_chaos(options: ChaosOptions, progress: Progress | None = None) -> ChaosReport:
    progress = progress or Progress()
    progress.say(f"starting PostgreSQL, Mosquitto and 3 instances (seed {options.seed})")
    async with cluster_up(options) as cluster:
        await wait_single_leader(cluster.nodes, timeout=60)
        origin = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        load = Load(cluster.broker.url, cluster.equipment, options.rate, origin)
        side = _side_traffic(cluster, origin)
        monitor = LeaderMonitor(cluster.nodes)
        usage = UsageSampler(lambda: _pids(cluster), cluster.spools)
        skipped = _unavailable(cluster, options, progress)
        stop = asyncio.Event()
        drain_until = [0.0]

        def drain() -> float:
            return drain_until[0]

        async with (
            background(monitor.run(), "chaos-monitor"),
            background(usage.run(), "chaos-usage"),
            background(load.run(stop, drain), "chaos-load") as load_task,
            background(side.hostile.run(stop, drain), "chaos-hostile") as hostile_task,
            background(side.clockless.run(stop, drain), "chaos-clockless") as clockless_task,
        ):
            injector = FaultInjector(cluster, options, side)
            kinds = runnable_kinds(options.kinds, skipped)
            faults = await _inject_faults(injector, monitor, options, kinds, progress)
            progress.say(
                f"faults over; settling (published {load.published}, acked {len(load.acked)})"
            )
            settle_started = time.monotonic()
            drain_until[0] = settle_started + options.settle_timeout_s
            stop.set()
            publishers = {load_task, hostile_task, clockless_task}
            complete = await _settle(
                cluster, load, side, publishers, options=options, started=settle_started
            )
            settled_s = time.monotonic() - settle_started
        readings = Readings.count(load.published, load.acked, await _stored(cluster.dsn))
        report = _report(
            options,
            cluster,
            faults=faults,
            monitor=monitor,
            readings=readings,
            settled_s=settled_s,
            complete=complete,
            t0=progress.t0,
        )
        report.side = await _side_tallies(cluster, side)
        report.peaks = usage.peaks
        report.skipped_kinds = skipped
        return report


def _side_traffic(cluster: Cluster, origin: datetime) -> SideTraffic:
    """Hostile instants two days back (whole minutes): far from the load's keys."""
    base = origin.replace(minute=0, second=0) - timedelta(days=2)
    return SideTraffic(
        hostile=SideLoad(cluster.broker.url, "hostile"),
        hostile_catalogue=HostileCatalogue(
            cluster.hostile_topics, base, MAX_PAYLOAD_BYTES, max_packet_bytes(MAX_PAYLOAD_BYTES)
        ),
        clockless=SideLoad(cluster.broker.url, "clockless"),
        clockless_catalogue=ClocklessCatalogue(cluster.clockless_topics),
    )


def _pids(cluster: Cluster) -> dict[str, int | None]:
    return {n.name: n.pid if n.alive() else None for n in cluster.nodes}


def _unavailable(cluster: Cluster, options: ChaosOptions, progress: Progress) -> dict[str, str]:
    """The chosen kinds this machine cannot inject, and why (said once, at the start)."""
    if cluster.mounts.available:
        return {}
    why = f"no tmpfs per spool ({cluster.mounts.problem or 'not mounted'})"
    skipped: dict[str, str] = {k: why for k in SPOOL_KINDS if k in options.kinds}
    for kind in skipped:
        progress.say(f"skipping {kind}: {why}")
    return skipped


async def _inject_faults(
    injector: FaultInjector,
    monitor: LeaderMonitor,
    options: ChaosOptions,
    kinds: tuple[str, ...],
    progress: Progress,
) -> list[FaultRecord]:
    faults: list[FaultRecord] = []
    deadline = time.monotonic() + options.duration_s
    for rnd, kind in schedule(kinds, options.seed):
        if time.monotonic() >= deadline and rnd >= options.min_rounds:
            break
        record = await injector.inject(kind)
        record.recovered = await injector.wait_healthy(options.recover_timeout_s)
        await _sampled_after(monitor, record.healed_at)
        _measure(record, monitor)
        faults.append(record)
        progress.say(_describe(record))
        if kind not in LOAD_KINDS:  # side traffic disturbs nothing: no quiet time needed
            await asyncio.sleep(options.gap_s)
    return faults


async def _sampled_after(monitor: LeaderMonitor, at: float) -> None:
    """Until the monitor has seen a leader after `at` (bounded: it may lag the check)."""
    with contextlib.suppress(AssertionError):
        await wait_until(lambda: first_leader(monitor.samples, at) is not None, 2.0, "no leader")


def _measure(record: FaultRecord, monitor: LeaderMonitor) -> None:
    samples = list(monitor.samples)
    if record.kind in INSTANCE_KINDS and record.target_led:
        other = first_leader(samples, record.at, exclude=record.target)
        if other is not None:
            record.failover_s = round(other.received - record.at, 3)
    back = first_leader(samples, record.healed_at)
    if back is not None:
        record.recovery_s = round(max(0.0, back.received - record.healed_at), 3)


def _describe(record: FaultRecord) -> str:
    who = f"{record.target}{' (leader)' if record.target_led else ''}"
    text = f"{record.kind:15s} {who:18s} held {record.healed_at - record.at:5.1f}s"
    if record.failover_s is not None:
        text += f", failover {record.failover_s:.3f}s"
    if record.recovery_s is not None:
        text += f", leader {record.recovery_s:.3f}s after healing"
    if not record.recovered:
        text += ", NOT RECOVERED in time"
    return text + "".join(f"; {n}" for n in record.notes)


async def _settle(
    cluster: Cluster,
    load: Load,
    side: SideTraffic,
    publishers: set[asyncio.Task[None]],
    *,
    options: ChaosOptions,
    started: float,
) -> bool:
    """Until every published reading is acknowledged and stored, and every acknowledged
    side message stored or rejected; or the deadline."""
    remaining = options.settle_timeout_s
    await asyncio.wait(publishers, timeout=remaining)

    async def stored_all() -> bool:
        stored = await _stored(cluster.dsn)
        if len(stored.keys() & set(range(load.published))) != load.published:
            return False
        tallies = await _side_tallies(cluster, side)
        return all(t.lost == 0 for t in tallies.values())

    try:
        left = max(1.0, options.settle_timeout_s - (time.monotonic() - started))
        await wait_until(stored_all, left, "not every reading stored", interval=0.5)
    except AssertionError:
        return False
    return True


async def _stored(dsn: str) -> Counter[int]:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch(_STORED_SEQS, timeout=60)
    finally:
        await conn.close(timeout=5)
    return Counter({int(r["seq"]): int(r["n"]) for r in rows})


async def _side_tallies(cluster: Cluster, side: SideTraffic) -> dict[str, SideTally]:
    conn = await asyncpg.connect(cluster.dsn, timeout=10)
    try:
        out = {}
        for name, load, mark, must_store in (
            ("hostile_payloads", side.hostile, HOSTILE_MARK, False),
            ("clockless", side.clockless, CLOCKLESS_MARK, True),
        ):
            messages = list(load.published.values())
            topics = sorted({m.topic for m in messages})
            rows = await conn.fetch(_STORED_MARKS, cluster.side_equipment, mark, timeout=60)
            rejects = await conn.fetch(_SIDE_REJECTS, topics, timeout=60)
            stored = {int(r["v"]): int(r["n"]) for r in rows if str(r["v"]).isdigit()}
            rejected = rejected_by_ident(messages, [(r[0], r[1], r[2]) for r in rejects])
            out[name] = tally(name, messages, load.acked, stored, rejected, must_store=must_store)
        return out
    finally:
        await conn.close(timeout=5)


def _report(
    options: ChaosOptions,
    cluster: Cluster,
    *,
    faults: list[FaultRecord],
    monitor: LeaderMonitor,
    readings: Readings,
    settled_s: float,
    complete: bool,
    t0: float,
) -> ChaosReport:
    """Times in the report are seconds since the run started (`t0`, wall clock)."""
    samples = list(monitor.samples)
    return ChaosReport(
        seed=options.seed,
        duration_s=options.duration_s,
        timings=options.timings,
        readings=readings,
        faults=faults,
        two_leader_moments=two_leader_moments(samples),
        leaderless_over_ttl=_long_gaps(cluster, faults, samples, t0, options.lease_ttl_s),
        unexpected_exits=[{**e, "at_s": round(e["at"] - t0, 3)} for e in cluster.unexpected_exits],
        settled_s=settled_s,
        settle_complete=complete,
        role_timelines={
            name: [(round(a - t0, 3), round(b - t0, 3), r) for a, b, r in role_spans(s)]
            for name, s in by_node(samples).items()
        },
    )


def _long_gaps(
    cluster: Cluster,
    faults: list[FaultRecord],
    samples: list[Sample],
    t0: float,
    ttl: float,
) -> list[dict[str, object]]:
    """Leaderless intervals with more than `ttl` seconds of database availability."""
    if not samples:
        return []
    start, end = min(s.sent for s in samples), max(s.sent for s in samples)
    out: list[dict[str, object]] = []
    for a, b in leaderless(samples, start, end):
        down = sum(max(0.0, min(b, y) - max(a, x)) for x, y in cluster.outages)
        if (b - a) - down > ttl:
            before = [f for f in faults if f.at <= b]
            out.append(
                {
                    "at_s": round(a - t0, 3),
                    "length_s": round(b - a, 3),
                    "db_up_s": round(b - a - down, 3),
                    "after_fault": f"{before[-1].kind} {before[-1].target}" if before else "none",
                }
            )
    return out


# --- entry point ------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    options = options_from_args(args)
    problems = options.problems()
    if problems:
        print(f"aupus-ha: chaos: {'; '.join(problems)}", file=sys.stderr)
        return constants.EXIT_CONFIG
    # The load's reconnects make gmqtt warn about writes to a closed socket: expected here.
    logging.getLogger("gmqtt").setLevel(logging.ERROR)
    try:
        report = asyncio.run(_main(options))
    except (AssertionError, OSError, RuntimeError, TimeoutError) as exc:
        print(f"aupus-ha: chaos: failed: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    if report is None:
        print("\ninterrupted: everything stopped", file=sys.stderr)
        return 130
    sys.stdout.write(render(report))
    if options.json_path is not None:
        write_json(report, options.json_path)
    return constants.EXIT_OK if report.ok else constants.EXIT_FAILURE


def write_json(report: ChaosReport, path: Path) -> None:
    path.write_bytes(orjson.dumps(report.as_dict(), option=orjson.OPT_INDENT_2))


async def _main(options: ChaosOptions) -> ChaosReport | None:
    """The run; SIGINT and SIGTERM end it through its teardown (None: interrupted)."""
    try:
        return await until_interrupted(run_chaos(options))
    except Interrupted:
        return None
