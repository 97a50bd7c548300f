"""The outcome of a chaos run: counts, failover times per fault kind, leadership anomalies;
as a table for people and a dict for `--json`."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aupus_ha.lab.chaos.faults import FaultRecord
from aupus_ha.lab.chaos.sidemessages import SideTally
from aupus_ha.lab.chaos.spoolfs import Peak


@dataclass(slots=True)
class Readings:
    published: int
    acknowledged: int
    stored: int  # distinct sequence numbers in equipamentos_dados
    rows: int  # rows carrying a sequence number
    lost: int  # acknowledged, not stored
    duplicated: int  # rows - distinct sequence numbers
    lost_examples: list[int] = field(default_factory=list)

    @classmethod
    def count(cls, published: int, acked: set[int], stored: Counter[int]) -> Readings:
        lost = sorted(acked - stored.keys())
        return cls(
            published=published,
            acknowledged=len(acked),
            stored=len(stored),
            rows=sum(stored.values()),
            lost=len(lost),
            duplicated=sum(stored.values()) - len(stored),
            lost_examples=lost[:20],
        )


@dataclass(slots=True)
class ChaosReport:
    seed: int
    duration_s: float
    timings: dict[str, str]
    readings: Readings
    faults: list[FaultRecord]
    two_leader_moments: list[dict[str, Any]]
    leaderless_over_ttl: list[dict[str, Any]]
    unexpected_exits: list[dict[str, Any]]
    settled_s: float
    settle_complete: bool
    role_timelines: dict[str, list[tuple[float, float, str]]]
    side: dict[str, SideTally] = field(default_factory=dict)  # hostile_payloads, clockless
    peaks: dict[str, Peak] = field(default_factory=dict)  # per instance
    skipped_kinds: dict[str, str] = field(default_factory=dict)  # kind -> why

    @property
    def ok(self) -> bool:
        r = self.readings
        sound = r.lost == 0 and r.duplicated == 0 and not self.two_leader_moments
        return sound and all(t.ok for t in self.side.values())

    def per_kind(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for kind in dict.fromkeys(f.kind for f in self.faults):
            rows = [f for f in self.faults if f.kind == kind]
            failovers = [f.failover_s for f in rows if f.failover_s is not None]
            recoveries = [f.recovery_s for f in rows if f.recovery_s is not None]
            out[kind] = {
                "count": len(rows),
                "hit_leader": sum(f.target_led for f in rows),
                "failover_median_s": _median(failovers),
                "failover_worst_s": max(failovers, default=None),
                "recovery_median_s": _median(recoveries),
                "recovery_worst_s": max(recoveries, default=None),
                "unrecovered": sum(not f.recovered for f in rows),
            }
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "seed": self.seed,
            "duration_s": self.duration_s,
            "timings": self.timings,
            "readings": asdict(self.readings),
            "per_kind": self.per_kind(),
            "faults": [asdict(f) for f in self.faults],
            "two_leader_moments": self.two_leader_moments,
            "leaderless_over_ttl": self.leaderless_over_ttl,
            "unexpected_exits": self.unexpected_exits,
            "settled_s": self.settled_s,
            "settle_complete": self.settle_complete,
            "side": {name: asdict(t) for name, t in self.side.items()},
            "peaks": {name: asdict(p) for name, p in self.peaks.items()},
            "skipped_kinds": self.skipped_kinds,
            "role_timelines": self.role_timelines,
        }


def _median(values: Sequence[float]) -> float | None:
    return round(statistics.median(values), 3) if values else None


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def render(report: ChaosReport) -> str:
    r = report.readings
    lines = [
        "",
        f"chaos run: seed {report.seed}, {report.duration_s:.0f}s of faults, "
        f"LEASE_TTL_S={report.timings.get('LEASE_TTL_S')}, settled in {report.settled_s:.1f}s"
        + ("" if report.settle_complete else " (DEADLINE: not everything stored)"),
        "",
        f"{'fault':16s}{'n':>4s}{'leader':>8s}{'failover med':>14s}{'worst':>8s}"
        f"{'recovery med':>14s}{'worst':>8s}{'unrecov':>9s}",
    ]
    for kind, k in report.per_kind().items():
        lines.append(
            f"{kind:16s}{k['count']:>4d}{k['hit_leader']:>8d}{_s(k['failover_median_s']):>14s}"
            f"{_s(k['failover_worst_s']):>8s}{_s(k['recovery_median_s']):>14s}"
            f"{_s(k['recovery_worst_s']):>8s}{k['unrecovered']:>9d}"
        )
    lines += _side_lines(report) + _peak_lines(report)
    lines += [
        "",
        f"readings: published {r.published}, acknowledged {r.acknowledged}, stored "
        f"{r.stored} ({r.rows} rows), lost {r.lost}, duplicated {r.duplicated}",
        f"two-leader moments: {len(report.two_leader_moments)}",
        f"leaderless > LEASE_TTL_S with the database up: {len(report.leaderless_over_ttl)}",
        f"unexpected instance exits (restarted): {len(report.unexpected_exits)}",
    ]
    for m in report.two_leader_moments:
        lines.append(f"  TWO LEADERS: {m}")
    for g in report.leaderless_over_ttl:
        lines.append(
            f"  leaderless {g['length_s']:.3f}s ({g['db_up_s']:.3f}s with the database up) "
            f"at +{g['at_s']:.1f}s, after {g['after_fault']}"
        )
    for e in report.unexpected_exits:
        lines.append(f"  exit: {e['instance']} code {e['code']} at +{e['at_s']:.1f}s")
    if r.lost_examples:
        lines.append(f"  lost sequence numbers, e.g. {r.lost_examples}")
    for kind, why in report.skipped_kinds.items():
        lines.append(f"  skipped {kind}: {why}")
    lines.append("RESULT: " + ("OK" if report.ok else "FAILED"))
    return "\n".join(lines) + "\n"


def _side_lines(report: ChaosReport) -> list[str]:
    if not report.side:
        return []
    lines = [
        "",
        f"{'side traffic':18s}{'sent':>7s}{'acked':>7s}{'stored':>8s}{'rejected':>9s}"
        f"{'refused':>8s}{'lost':>6s}{'dup':>5s}",
    ]
    for name, t in report.side.items():
        lines.append(
            f"{name:18s}{t.sent:>7d}{t.acknowledged:>7d}{t.stored:>8d}{t.rejected:>9d}"
            f"{t.refused:>8d}{t.lost:>6d}{t.duplicated:>5d}" + ("" if t.ok else "  <- FAILED")
        )
    for name, t in report.side.items():
        if t.rejected_reasons:
            reasons = ", ".join(f"{k} {v}" for k, v in t.rejected_reasons.items())
            lines.append(f"  {name} rejected: {reasons}")
        if t.must_store and t.rejected:
            lines.append(f"  {name}: {t.rejected} rejected, but these must be stored")
        if t.lost_examples:
            lines.append(f"  {name} lost, e.g. {t.lost_examples}")
    return lines


def _peak_lines(report: ChaosReport) -> list[str]:
    if not report.peaks:
        return []
    lines = ["", f"{'instance':10s}{'peak RSS':>12s}{'peak spool':>14s}"]
    for name, p in report.peaks.items():
        lines.append(f"{name:10s}{p.rss_bytes / 2**20:>9.1f} MiB{p.spool_bytes / 2**20:>11.1f} MiB")
    return lines
