"""Per-minute inverter rollups: a pure function of the minute's set of samples."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha.pipeline import rollup

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


# --- the stored format, pinned byte for byte --------------------------------------------------

# Two samples of 15:07 (sample keys as rollup.sample_key writes them), the second one failed
# its type's schema. Hand-checked: power 41250 W and 40000 W -> 40625 W mean, 40.625 kW,
# 40.625 / 60 = 0.6770833333333334 kWh; voltage (381.2 + 380.8) / 2; 1e16 and `true` are
# not averaged; energy/status are the last sample's, pid the last present; 1 of 2 valid
# is exactly half: parcial.
GOLDEN_KEY_A = "2026-11-28T15:07:00.250000Z"
GOLDEN_KEY_B = "2026-11-28T15:07:30.000000Z"
GOLDEN_A: dict[str, object] = {
    "timestamp": "2026-11-28T15:07:00.250Z",
    "power": {"active_total": 41250, "power_factor": 0.999},
    "voltage": {"phase_a-b": 381.2},
    "energy": {"total_yield": 98231.4},
    "status": {"state": "running"},
    "pid": {"status": "idle"},
}
GOLDEN_B: dict[str, object] = {
    "timestamp": "2026-11-28T15:07:30Z",
    "power": {"active_total": 40000, "power_factor": 1, "on": True},
    "voltage": {"phase_a-b": 380.8, "bad": 1e16},
    "energy": {"total_yield": 98231.7},
    "status": {"state": "running"},
}
GOLDEN_DADOS = (
    b'{"energy":{"period_energy_kwh":0.6770833333333334,"total_yield":98231.7},'
    b'"invalid_samples":["2026-11-28T15:07:30.000000Z"],'
    b'"pid":{"status":"idle"},'
    b'"power":{"active_total":40625.0,"power_factor":0.9995},'
    b'"samples":{'
    b'"2026-11-28T15:07:00.250000Z":{"energy":{"total_yield":98231.4},"pid":{"status":"idle"},'
    b'"power":{"active_total":41250,"power_factor":0.999},"status":{"state":"running"},'
    b'"timestamp":"2026-11-28T15:07:00.250Z","voltage":{"phase_a-b":381.2}},'
    b'"2026-11-28T15:07:30.000000Z":{"energy":{"total_yield":98231.7},'
    b'"power":{"active_total":40000,"on":true,"power_factor":1},"status":{"state":"running"},'
    b'"timestamp":"2026-11-28T15:07:30Z","voltage":{"bad":1e+16,"phase_a-b":380.8}}},'
    b'"status":{"state":"running"},"tipo":"inverter_minute","voltage":{"phase_a-b":381.0}}'
)


@pytest.fixture(params=["UTC", "America/Sao_Paulo"])
def local_zone(request: pytest.FixtureRequest) -> Iterator[str]:
    """The process's local time zone set to each value in turn (TZ + tzset), so nothing
    in the stored format may depend on where the instance runs."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = request.param
    time.tzset()
    try:
        yield request.param
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


def test_golden_row_byte_for_byte(local_zone: str) -> None:
    """The stored row of the golden minute, compared with bytes written by hand: a renamed
    key (`invalid_samples`, `samples`, `tipo`, a group), another sample-key spelling or
    another float rounding all change what every other instance compares against."""
    at_a = datetime(2026, 11, 28, 15, 7, 0, 250_000, tzinfo=UTC)
    at_b = datetime(2026, 11, 28, 15, 7, 30, tzinfo=UTC)
    # Keys from instants expressed in another offset must be the same UTC text.
    brasilia = timezone(timedelta(hours=-3))
    assert rollup.sample_key(at_a) == rollup.sample_key(at_a.astimezone(brasilia)) == GOLDEN_KEY_A
    assert rollup.sample_key(at_b.astimezone(brasilia)) == GOLDEN_KEY_B
    row = rollup.build_row(
        {GOLDEN_KEY_B: GOLDEN_B, GOLDEN_KEY_A: GOLDEN_A}, frozenset({GOLDEN_KEY_B})
    )
    assert row == rollup.RollupRow(
        dados=GOLDEN_DADOS,
        num_leituras=2,
        potencia_ativa_kw=40.625,
        energia_kwh=0.6770833333333334,
        qualidade="parcial",
    )
    back, invalid = rollup.samples_of(GOLDEN_DADOS)
    assert back == {GOLDEN_KEY_A: GOLDEN_A, GOLDEN_KEY_B: GOLDEN_B}
    assert list(back) == [GOLDEN_KEY_A, GOLDEN_KEY_B]
    assert invalid == frozenset({GOLDEN_KEY_B})


def test_bucket_is_a_utc_minute_in_any_local_zone(local_zone: str) -> None:
    """The bucket is expressed in UTC whatever the local zone or the input's offset."""
    at = datetime(2026, 11, 28, 12, 7, 59, 999_999, tzinfo=timezone(timedelta(hours=-3)))
    bucket = rollup.bucket_start(at)
    assert bucket == datetime(2026, 11, 28, 15, 7, tzinfo=UTC)
    assert bucket.tzinfo is UTC


@pytest.mark.parametrize(
    ("total", "invalid", "quality"),
    [
        (1, 0, "bom"),
        (1, 1, "ruim"),
        (2, 1, "parcial"),  # exactly half valid is not more than half
        (3, 1, "bom"),  # 2 of 3
        (4, 2, "parcial"),  # exactly half again
        (4, 1, "bom"),
        (3, 2, "parcial"),  # 1 of 3
        (3, 3, "ruim"),
    ],
)
def test_quality_boundaries(total: int, invalid: int, quality: str) -> None:
    """More than half valid: bom; at most half but some: parcial; none: ruim. Invalid
    names that are not samples of the minute do not count."""
    samples = dict(sample(s, 1000, 1.0) for s in range(total))
    bad = frozenset(sorted(samples)[:invalid]) | {"2026-11-28T15:08:00.000000Z"}
    row = rollup.build_row(samples, bad)
    assert row.qualidade == quality
    assert row.num_leituras == total
    assert orjson.loads(row.dados).get("invalid_samples", []) == sorted(samples)[:invalid]


def test_the_averaging_bound_is_inclusive() -> None:
    """A value of exactly MAX_AVERAGED (1e15, the decoder's own bound) is averaged; one
    beyond it, or a non-finite one, only from rows stored before the bound, is not."""
    key_a, first = sample(0, 1000, 1.0)
    key_b, second = sample(30, 3000, 1.0)
    first["dc"] = {"edge": 1e15, "beyond": 1.0000000000000002e15}
    second["dc"] = {"edge": 1e15, "beyond": 1.0, "inf": float("inf")}
    dados = orjson.loads(rollup.build_row({key_a: first, key_b: second}).dados)
    assert dados["dc"] == {"edge": 1e15, "beyond": 1.0}


@pytest.mark.parametrize(
    "stored",
    [
        None,
        b"",
        b"[1, 2]",  # not an object
        b'{"tipo": "other", "samples": {"2026-11-28T15:07:00.000000Z": {}}}',  # another kind
        b'{"samples": {"2026-11-28T15:07:00.000000Z": {}}}',  # no kind at all
    ],
)
def test_a_row_that_is_not_a_rollup_has_no_samples(stored: bytes | None) -> None:
    """Only an `inverter_minute` row gives samples back to merge with."""
    assert rollup.samples_of(stored) == ({}, frozenset())


def test_a_rollup_row_without_samples_or_invalid_list() -> None:
    """A rollup row whose samples are missing or not an object has none; a missing or
    null `invalid_samples` is no invalid sample."""
    assert rollup.samples_of(b'{"tipo": "inverter_minute", "samples": null}') == ({}, frozenset())
    assert rollup.samples_of(b'{"tipo": "inverter_minute", "samples": [["k", {}]]}') == (
        {},
        frozenset(),
    )
    row = b'{"tipo": "inverter_minute", "samples": {"k": {}}, "invalid_samples": null}'
    assert rollup.samples_of(row) == ({"k": {}}, frozenset())
