"""The report as a text table."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from aupus_ha.lab.bench.report import BenchReport, PhaseResult, Usage
from aupus_ha.lab.bench.sampling import MACHINE, OTHERS

BASELINE_LABELS = {
    "copy_rows_s": "asyncpg COPY into equipamentos_dados (5,000-row batches)",
    "store_flush_rows_s": "store flush: COPY → staging, INSERT … ON CONFLICT DO NOTHING",
    "naive_insert_rows_s": "naive: one INSERT (one commit) per reading, as the legacy service",
    "broker_qos1_msgs_s": "broker fan-out to 1 gmqtt subscriber, QoS 1",
    "broker_qos0_msgs_s": "broker fan-out to 1 gmqtt subscriber, QoS 0",
}


def render_table(report: BenchReport) -> str:
    sections = [
        _header(report),
        _baseline_lines(report),
        _phase_lines(report),
        _resource_lines(report),
        _cost_lines(report),
        _memory_lines(report),
        _spool_lines(report),
        _flush_lines(report),
        _failover_lines(report),
        _ratio_lines(report),
        _integrity_line(report),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(report: BenchReport) -> str:
    m, s = report.machine, report.settings
    timings = "test timings (LEASE_TTL_S 2)" if s["fast_timings"] else "default timings"
    return (
        f"aupus-ha bench — {m['cpus']} CPUs, Python {m['python']}, PostgreSQL {m['postgres']} "
        f"(fsync {m['fsync']}), Mosquitto {m['mosquitto']}\n"
        f"{s['equipment']} equipment, {s['payload_bytes_actual']}-byte generic readings, "
        f"leader + standby, {timings}, {s['duration_s']:g}s per phase; load average "
        f"at start {' '.join(f'{v:.2f}' for v in m['load_average_at_start'])}"  # type: ignore[attr-defined]
    )


def _baseline_lines(report: BenchReport) -> str:
    lines = ["raw limits of this machine (same run)" + " " * 33 + "per second"]
    for key, label in BASELINE_LABELS.items():
        if key in report.baselines:
            unit = "rows" if key.endswith("rows_s") else "msgs"
            lines.append(f"  {label:<66s}{report.baselines[key]:>10,.0f} {unit}")
    return "\n".join(lines)


def _phase_lines(report: BenchReport) -> str:
    head = (
        f"{'end to end (publish → committed)':<34s}{'target/s':>9s}{'published/s':>12s}"
        f"{'committed/s':>12s}{'p50 ms':>8s}{'p99 ms':>8s}{'max ms':>8s}{'lost':>6s}"
    )
    lines = [head]
    for p in report.phases:
        target = "max" if p.target_rate is None else f"{p.target_rate:,.0f}"
        lat = p.latency_ms
        lines.append(
            f"  {p.name:<32s}{target:>9s}{p.publish_rate:>12,.0f}{p.ingest_rate:>12,.0f}"
            f"{lat['p50']:>8,.0f}{lat['p99']:>8,.0f}{lat['worst']:>8,.0f}{p.lost:>6d}"
        )
    return "\n".join(lines)


def _resource_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    groups = [*_own_groups(report.phases[0].resources), OTHERS, MACHINE]
    rows = [
        (group, [_usage_cell(p.resources.get(group), group) for p in report.phases])
        for group in groups
    ]
    lines = _per_phase("CPU % of one core / peak RSS MB*", report.phases, rows)
    lines.append("  * postgres rows: private memory (RSS minus shared pages), summed over backends")
    return "\n".join(lines)


def _cost_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    groups = [*_own_groups(report.phases[0].cpu_us_per_reading), MACHINE]
    rows = [
        (group, [_number(p.cpu_us_per_reading.get(group)) for p in report.phases])
        for group in groups
    ]
    lines = _per_phase("CPU µs per reading", report.phases, rows)
    for key, value in report.costs.items():
        lines.append(f"  baseline {key.replace('_', ' '):<50s}{value:>10,.1f}")
    return "\n".join(lines)


def _memory_lines(report: BenchReport) -> str:
    """RSS of each instance at 0/25/50/75/100 % of each phase: is memory growing?"""
    if not report.phases:
        return ""
    lines = ["instance RSS MB at 0/25/50/75/100 % of the phase"]
    for p in report.phases:
        for group, usage in p.resources.items():
            if group.startswith("node-") and usage.rss_trend_mb:
                trend = " ".join(f"{v:>6.0f}" for v in usage.rss_trend_mb)
                lines.append(f"  {p.name + ' ' + group:<32s}{trend}")
    return "\n".join(lines) if len(lines) > 1 else ""


SPOOL_ROWS = (
    ("records_per_s", "records/s"),
    ("fsyncs_per_s", "fsyncs/s"),
    ("records_per_fsync", "records per fsync"),
    ("ms_per_fsync", "ms per fsync"),
    ("fsync_busy_pct", "% of the time in fsync"),
)


def _spool_lines(report: BenchReport) -> str:
    """The spool's group commit per instance (from its /metrics), over each phase."""
    nodes = sorted({n for p in report.phases for n in p.spool})
    if not nodes:
        return ""
    rows = [
        (f"{node} {label}", [_number(p.spool.get(node, {}).get(key)) for p in report.phases])
        for node in nodes
        for key, label in SPOOL_ROWS
    ]
    return "\n".join(_per_phase("spool group commit (SPOOL_FSYNC)", report.phases, rows))


def _flush_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    rows = [
        (label, [_number(p.flushes[key]) for p in report.phases])
        for key, label in (
            ("count", "flushes"),
            ("rows_mean", "rows per flush (mean)"),
            ("ms_p50", "flush ms p50"),
            ("ms_p99", "flush ms p99"),
        )
    ]
    return "\n".join(_per_phase("leader flushes", report.phases, rows))


def _per_phase(
    title: str, phases: Sequence[PhaseResult], rows: Iterable[tuple[str, Sequence[str]]]
) -> list[str]:
    """A section with one column per phase: a title row, then a label and cells per row."""
    lines = [f"{title:<34s}" + "".join(f"{p.name:>18s}" for p in phases)]
    lines += [f"  {label:<32s}" + "".join(f"{c:>18s}" for c in cells) for label, cells in rows]
    return lines


def _own_groups(by_group: Mapping[str, object]) -> list[str]:
    """The process groups the bench started, without the machine-wide ones."""
    return [g for g in by_group if g not in (OTHERS, MACHINE)]


def _number(value: float | None) -> str:
    return "" if value is None else f"{value:,.1f}"


def _usage_cell(usage: Usage | None, group: str) -> str:
    if usage is None:
        return ""
    if group in (OTHERS, MACHINE):  # CPU only: no memory figure for these
        return f"{usage.cpu_pct:>8.0f}%        "
    return f"{usage.cpu_pct:>8.0f}% / {usage.peak_rss_mb:>5.0f}"


def _failover_lines(report: BenchReport) -> str:
    if not report.failover:
        return ""
    lines = [
        f"{'failover under load':<34s}{'takeover s (median/worst)':>28s}"
        f"{'writer gap ms (median/worst)':>31s}"
    ]
    for kind, s in report.failover.items():
        lines.append(
            f"  {kind:<32s}{s['median_s']:>18.3f} / {s['worst_s']:<7.3f}"
            f"{s['median_gap_ms']:>21.0f} / {s['worst_gap_ms']:<7.0f}"
        )
    return "\n".join(lines)


def _ratio_lines(report: BenchReport) -> str:
    lines = ["ratios (end to end ÷ raw limit of the same run)"]
    for key, value in report.ratios.items():
        lines.append(f"  {key:<56s}{value:>10.3f}")
    return "\n".join(lines)


def _integrity_line(report: BenchReport) -> str:
    i = report.integrity
    return (
        f"integrity: published {i['published']:,}, stored {i['stored']:,}, "
        f"lost {i['lost']}, duplicates {i['duplicates']}"
    )
