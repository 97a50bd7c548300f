"""Per-minute inverter rollups, computed only from the set of readings in the minute.

The legacy service keyed a minute by the moment its own buffer opened and summed
power × 1 min, so two instances stored two different rows and frequent publishers were
over-counted. Here a bucket is the reading's own minute, and the row is a pure function
of the *set* of samples in it: every instance, any arrival order, any split into
flushes and any failover give the same row. The samples themselves are kept in the
row (`dados.samples`, keyed by their canonical timestamp), so a late reading is merged
by recomputing from the union — the row then equals what it would have been had the
reading arrived in time — and a standby can ask whether its sample is already in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from statistics import fmean

import orjson

from aupus_ha import constants

ROLLUP_KIND = "inverter_minute"
BUCKET = timedelta(minutes=1)
# Groups whose numeric leaves are instantaneous values: averaged over the minute.
MEAN_GROUPS = ("power", "voltage", "current", "temperature", "dc", "protection")
# Groups that are cumulative counters or states: the minute's last value is kept.
LAST_GROUPS = ("energy", "status", "info", "pid")
# The largest magnitude averaged (the decoder refuses larger ones, `number_out_of_range`):
# sums of millions of such values stay far below a double's range, so no mean overflows.
# Larger values can only come from rows stored before the bound; they are not averaged,
# so such a row can never make its minute unwritable.
MAX_AVERAGED = 1e15

Sample = dict[str, object]


def bucket_start(ts: datetime) -> datetime:
    """The UTC minute a reading belongs to."""
    return ts.astimezone(UTC).replace(second=0, microsecond=0)


def sample_key(ts: datetime) -> str:
    """Canonical text of a sample's instant: the key inside `dados.samples`."""
    return ts.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class RollupRow:
    dados: bytes
    num_leituras: int
    potencia_ativa_kw: float | None
    energia_kwh: float | None
    qualidade: str


def merge_samples(*groups: Mapping[str, Sample]) -> dict[str, Sample]:
    """Union by sample key; when two differ for one instant the smaller encoding wins,
    so the choice does not depend on which arrived first."""
    merged: dict[str, Sample] = {}
    for group in groups:
        for key, sample in group.items():
            kept = merged.get(key)
            if kept is None or orjson.dumps(sample, option=orjson.OPT_SORT_KEYS) < orjson.dumps(
                kept, option=orjson.OPT_SORT_KEYS
            ):
                merged[key] = sample
    return dict(sorted(merged.items()))


def build_row(samples: Mapping[str, Sample], invalid: frozenset[str] = frozenset()) -> RollupRow:
    """The stored row for a minute, from its samples (keys sorted = time order)."""
    ordered = [samples[k] for k in sorted(samples)]
    dados: dict[str, object] = {"tipo": ROLLUP_KIND}
    for group in MEAN_GROUPS:
        means = _mean_leaves([s.get(group) for s in ordered])
        if means:
            dados[group] = means
    for group in LAST_GROUPS:
        last = _last_present([s.get(group) for s in ordered])
        if last is not None:
            dados[group] = last
    power_kw = _mean_active_kw(ordered)
    energy_kwh = None if power_kw is None else power_kw * BUCKET.total_seconds() / 3600
    if energy_kwh is not None:
        energy = dict(dados.get("energy") or {})  # type: ignore[call-overload]
        energy["period_energy_kwh"] = energy_kwh
        dados["energy"] = energy
    bad = sorted(k for k in samples if k in invalid)
    if bad:
        dados["invalid_samples"] = bad
    dados["samples"] = {k: samples[k] for k in sorted(samples)}
    return RollupRow(
        dados=orjson.dumps(dados, option=orjson.OPT_SORT_KEYS),
        num_leituras=len(ordered),
        potencia_ativa_kw=power_kw,
        energia_kwh=energy_kwh,
        qualidade=_quality(len(ordered), len(bad)),
    )


def samples_of(dados: bytes | None) -> tuple[dict[str, Sample], frozenset[str]]:
    """The samples (and the invalid ones) of a stored rollup row."""
    if not dados:
        return {}, frozenset()
    stored = orjson.loads(dados)
    if not isinstance(stored, dict) or stored.get("tipo") != ROLLUP_KIND:
        return {}, frozenset()
    samples = stored.get("samples")
    invalid = stored.get("invalid_samples") or []
    return (dict(samples) if isinstance(samples, dict) else {}), frozenset(invalid)


def _quality(total: int, bad: int) -> str:
    good = total - bad
    if good * 2 > total:
        return constants.QUALITY_GOOD
    return constants.QUALITY_PARTIAL if good > 0 else constants.QUALITY_BAD


def _is_number(value: object) -> bool:
    """A JSON number that may be averaged (finite, within MAX_AVERAGED)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    return math.isfinite(value) and abs(value) <= MAX_AVERAGED


def _mean_leaves(groups: list[object]) -> dict[str, float]:
    values: dict[str, list[float]] = {}
    for group in groups:
        if isinstance(group, dict):
            for name, value in group.items():
                if _is_number(value):
                    values.setdefault(name, []).append(float(value))
    return {name: fmean(vals) for name, vals in sorted(values.items())}


def _last_present(groups: list[object]) -> object | None:
    for group in reversed(groups):
        if group is not None:
            return group
    return None


def _mean_active_kw(samples: list[Sample]) -> float | None:
    watts = [
        float(p["active_total"])
        for s in samples
        if isinstance(p := s.get("power"), dict) and _is_number(p.get("active_total"))
    ]
    return fmean(watts) / 1000 if watts else None
