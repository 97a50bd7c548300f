"""The results of a run (phases, faults, timeline, the whole report as JSON) and the
ratios of end-to-end figures to the same run's raw limits."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import orjson


@dataclass(slots=True)
class Usage:
    cpu_pct: float  # of one core, averaged over the phase
    peak_rss_mb: float
    cpu_s: float  # CPU seconds over the phase
    # RSS at the start, 25 %, 50 %, 75 % and end of the phase: growth over a long run
    rss_trend_mb: list[float] = field(default_factory=list)


@dataclass(slots=True)
class PhaseResult:
    name: str
    target_rate: float | None  # None: as fast as the broker accepts
    span_s: tuple[float, float]  # since the first publish of the run
    publish_s: float
    published: int
    committed: int
    lost: int
    publish_rate: float
    ingest_rate: float  # committed / (last commit - first publish)
    latency_ms: dict[str, float]
    flushes: dict[str, float]
    resources: dict[str, Usage]
    cpu_us_per_reading: dict[str, float]
    # per instance: the spool's group commit over the phase (bench/spoolstats.py)
    spool: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass(slots=True)
class FaultResult:
    kind: str
    at_s: float
    failover_s: float
    gap_ms: float
    from_node: str
    to_node: str


@dataclass(slots=True)
class Timeline:
    bucket_s: float
    committed: list[tuple[float, str, float]]  # (t, leader, rows/s over the last 2 s)
    published: list[tuple[float, float]]  # (t, readings/s), by the payload's publish time
    leaders: list[tuple[float, float, str]]  # (from, to, instance): who held the lock
    phases: list[tuple[str, float, float]]
    faults: list[tuple[str, float]]


@dataclass(slots=True)
class BenchReport:
    machine: dict[str, object]
    settings: dict[str, object]
    baselines: dict[str, float]
    costs: dict[str, float]  # CPU µs per message of the baseline subscriber
    phases: list[PhaseResult]
    failover: dict[str, dict[str, float]]
    faults: list[FaultResult]
    ratios: dict[str, float]
    integrity: dict[str, int]
    timeline: Timeline
    processes: dict[str, object]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


def compute_ratios(
    baselines: Mapping[str, float], phases: Sequence[PhaseResult]
) -> dict[str, float]:
    """Every end-to-end figure against the raw limits of the same run."""
    by_name = {p.name: p for p in phases}
    best = by_name.get("max") or by_name.get("paced")
    ratios: dict[str, float] = {}
    if best is not None:
        for key in baselines:
            ratios[f"e2e_{best.name}_vs_{key.removesuffix('_rows_s').removesuffix('_msgs_s')}"] = (
                round(best.ingest_rate / baselines[key], 3) if baselines[key] else 0.0
            )
    if baselines.get("copy_rows_s"):
        copy = baselines["copy_rows_s"]
        ratios["store_flush_vs_copy"] = round(baselines["store_flush_rows_s"] / copy, 3)
        ratios["naive_insert_vs_copy"] = round(baselines["naive_insert_rows_s"] / copy, 3)
    return ratios
