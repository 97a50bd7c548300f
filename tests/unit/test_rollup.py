"""Per-minute inverter rollups: a pure function of the minute's set of samples."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha import rollup

MINUTE = datetime(2026, 11, 28, 15, 7, tzinfo=UTC)


def sample(second: float, watts: float, total_yield: float) -> tuple[str, dict[str, object]]:
    at = MINUTE + timedelta(seconds=second)
    return rollup.sample_key(at), {
        "timestamp": at.timestamp(),
        "power": {"active_total": watts, "power_factor": 0.99},
        "voltage": {"phase_a-b": 380.0 + second / 10},
        "energy": {"total_yield": total_yield, "daily_yield": total_yield - 1000},
        "status": {"state": "running", "at": second},
    }


def test_energy_is_mean_power_over_the_minute_not_the_sum() -> None:
    """Two samples at 60 kW and 30 kW: 45 kW mean, 0.75 kWh (the legacy sum gave 1.5)."""
    samples = dict([sample(0, 60_000, 5000.0), sample(30, 30_000, 5000.4)])
    row = rollup.build_row(samples)
    assert row.potencia_ativa_kw == 45.0
    assert row.energia_kwh == 0.75
    assert row.num_leituras == 2 and row.qualidade == "bom"
    dados = orjson.loads(row.dados)
    assert dados["power"]["active_total"] == 45_000
    assert dados["energy"]["total_yield"] == 5000.4  # cumulative: the last value
    assert dados["energy"]["period_energy_kwh"] == 0.75
    assert dados["status"] == {"state": "running", "at": 30}
    assert sorted(dados["samples"]) == sorted(samples)


def test_stored_samples_round_trip() -> None:
    """The samples kept in a row come back out for a later merge."""
    samples = dict([sample(5, 1000, 1.0)])
    back, invalid = rollup.samples_of(rollup.build_row(samples, frozenset()).dados)
    assert back == samples and invalid == frozenset()


def test_quality_follows_the_share_of_valid_samples() -> None:
    """More than half valid: bom; some: parcial; none: ruim."""
    samples = dict(sample(s, 1000, 1.0) for s in (1, 2, 3))
    keys = sorted(samples)
    assert rollup.build_row(samples, frozenset(keys[:1])).qualidade == "bom"
    assert rollup.build_row(samples, frozenset(keys[:2])).qualidade == "parcial"
    assert rollup.build_row(samples, frozenset(keys)).qualidade == "ruim"


def test_bucket_is_the_readings_own_minute() -> None:
    """The bucket comes from the reading's timestamp, in UTC, seconds dropped."""
    at = datetime(2026, 11, 28, 12, 7, 59, 999_000, tzinfo=UTC)
    assert rollup.bucket_start(at) == datetime(2026, 11, 28, 12, 7, tzinfo=UTC)


samples_strategy = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=59.999, allow_nan=False),
        st.floats(min_value=0, max_value=100_000, allow_nan=False),
    ),
    min_size=1,
    max_size=12,
    unique_by=lambda t: t[0],
)


@settings(max_examples=200, deadline=None)
@given(samples_strategy, st.integers(min_value=0, max_value=2**32 - 1), st.integers(1, 4))
def test_any_order_split_and_instance_give_the_same_row(
    raw: list[tuple[float, float]], seed: int, parts: int
) -> None:
    """Any permutation and any split of a minute's samples into flushes (and across
    instances, including a re-delivered sample) ends in byte-identical rows."""
    items = [sample(second, watts, 1000 + second) for second, watts in raw]
    expected = rollup.build_row(rollup.merge_samples(*({k: v} for k, v in items))).dados
    rng = random.Random(seed)
    shuffled = items[:]
    rng.shuffle(shuffled)
    groups: list[dict[str, dict[str, object]]] = [{} for _ in range(parts)]
    for key, value in shuffled:
        group = groups[rng.randrange(parts)]
        group[key] = rollup.merge_samples(group, {key: value})[key]
    groups.append(dict(shuffled[:1]))  # a redelivery on another instance
    stored: dict[str, dict[str, object]] = {}
    for group in groups:  # one flush per group, each merging into what is stored
        row = rollup.build_row(rollup.merge_samples(stored, group))
        stored, _ = rollup.samples_of(row.dados)
    assert rollup.build_row(stored).dados == expected


def test_conflicting_samples_for_one_instant_resolve_the_same_way() -> None:
    """Two different payloads with the same instant: the same one wins in any order."""
    key, first = sample(10, 1000, 1.0)
    _, second = sample(10, 2000, 1.0)
    one = rollup.merge_samples({key: first}, {key: second})
    other = rollup.merge_samples({key: second}, {key: first})
    assert one == other
