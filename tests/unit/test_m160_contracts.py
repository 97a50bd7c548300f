"""M-160 edges that mutation testing found unpinned (docs/testing.md): the outlier and
magnitude bounds (inclusive), integer fields, the unknown-format detail, and the flush
half of the guard in full (what `resolve` returns, field by field).

The rules themselves are tested in test_m160.py; the values here come from the real
fixtures (tests/fixtures/m160_*.json*).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from aupus_ha.decoding import m160
from aupus_ha.decoding.m160 import M160SummaryFamily, Previous, StoredRow
from aupus_ha.decoding.messages import DecodeError
from aupus_ha.pipeline.readings import Equipment, Reading
from tests.helpers import fixture_lines, fixture_object

RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
METER = Equipment("eq-1", "site/meter", type_code="M-160")
FLAT = "m160_ton_flat.json"
OUTLIERS = "m160_consumo_phf_outlier_sequence.jsonl"


def decode(obj: dict[str, object]) -> Reading:
    (reading,) = M160SummaryFamily().decode(obj, METER, RECEIVED)
    return reading


def refusal(obj: dict[str, object]) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(obj)
    return f"{caught.value.reason}: {caught.value.message}"


# --- bounds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("consumo", "guarded"),
    [(5.0, False), (5.000001, True)],  # 5 kWh is still a plausible window; above is not
)
def test_the_outlier_bound_is_inclusive(consumo: float, guarded: bool) -> None:
    reading = decode({**fixture_object(FLAT), "consumo_phf": consumo})
    assert reading.outlier_guard is guarded
    stored = orjson.loads(reading.dados)
    assert stored["consumo_phf"] == (None if guarded else consumo)
    assert ("_consumo_phf_bruto" in stored) is guarded


def test_the_magnitude_bound_is_inclusive() -> None:
    """energia_total of exactly 1e15 is a number; the next double above it is not."""
    at_bound = decode({"Va": 220.0, "energia_total": 1e15})
    assert at_bound.energia_kwh == 1e15
    assert refusal({"Va": 220.0, "energia_total": 1.0000000000000002e15}) == (
        "number_out_of_range: energia_total is 1000000000000000.2, beyond ±1e+15"
    )


@pytest.mark.parametrize(
    ("value", "kind"),
    [({"kWh": 1}, "an object"), ([1], "an array"), ("1", "a string"), (False, "a boolean")],
)
def test_a_computed_field_that_is_not_a_number_names_its_kind(value: object, kind: str) -> None:
    assert refusal({"Va": 220.0, "consumo_phf": value}) == (
        f"invalid_summary: consumo_phf is {kind}, not a number"
    )


def test_integer_fields_count_like_floats() -> None:
    """The flat fixture with every value sent as an integer: voltages, currents and Pt
    make it `bom`; energy from consumo_phf 1; power Pt 7414 / 1000."""
    obj = {k: round(v) if isinstance(v, float) else v for k, v in fixture_object(FLAT).items()}
    obj["consumo_phf"] = 1
    reading = decode(obj)
    assert (reading.qualidade, reading.energia_kwh, reading.potencia_ativa_kw) == (
        "bom",
        1.0,
        7.414,
    )


# --- the unknown format ---------------------------------------------------------------------


def test_unknown_format_names_at_most_eight_keys_sorted() -> None:
    """The A-966 fixture on an M-160: neither form; the detail lists its keys."""
    obj = fixture_object("a966_ssu_state.json")
    obj.update({f"k{i}": i for i in range(6)})  # 10 keys: only the first 8 sorted are named
    assert refusal(obj) == (
        "m160_unknown_format: neither a Resumo object nor top-level Va/consumo_phf "
        "(keys: NSU, data, k0, k1, k2, k3, k4, k5)"
    )
    assert refusal({}) == (
        "m160_unknown_format: neither a Resumo object nor top-level Va/consumo_phf (keys: none)"
    )


# --- the flush half of the guard --------------------------------------------------------------


def test_resolve_without_a_previous_returns_the_reading_undecided() -> None:
    """No previous (or no previous phf): the reading exactly as decoded, guard cleared."""
    reading = decode(fixture_lines(OUTLIERS)[2])
    assert reading.outlier_guard is True
    expected = replace(reading, outlier_guard=False)
    assert m160.resolve(reading, None) == expected
    assert m160.resolve(reading, Previous(RECEIVED, None)) == expected


def test_resolve_a_reading_that_lost_its_phf_returns_it_undecided() -> None:
    """The decoder only guards readings with a phf; a guarded reading without one (an
    older spool record) is returned as is, guard cleared."""
    reading = Reading("eq-1", RECEIVED, b'{"consumo_phf":null,"Va":220.0}', outlier_guard=True)
    resolved = m160.resolve(reading, Previous(RECEIVED - timedelta(seconds=30), 1.0))
    assert resolved == replace(reading, outlier_guard=False)


def test_resolve_in_full_without_pt() -> None:
    """3rd outlier line without Pt: previous phf 10557.56 → consumo 0.04 kWh, power
    0.04 / (30/3600) = 4.8 kW; every other field as decoded."""
    obj = dict(fixture_lines(OUTLIERS)[2])
    del obj["Pt"]
    reading = decode(obj)
    resolved = m160.resolve(reading, Previous(RECEIVED - timedelta(seconds=30), 10557.56))
    summary = orjson.loads(reading.dados)
    summary["consumo_phf"] = 0.04
    assert resolved == replace(
        reading,
        dados=orjson.dumps(summary),
        energia_kwh=0.04,
        potencia_ativa_kw=pytest.approx(4.8),
        outlier_guard=False,
    )
    assert resolved.outlier_guard is False


def test_previous_in_batch_ignores_rollup_samples() -> None:
    """A rollup sample is never an M-160's previous reading, even under the same id."""
    reading = decode(fixture_lines(OUTLIERS)[2])
    sample = Reading(
        "eq-1",
        reading.timestamp_dados - timedelta(minutes=1),
        b'{"phf": 1.0}',
        sample_at=reading.timestamp_dados - timedelta(seconds=40),
    )
    assert m160.previous_in_batch([sample, reading]) == {}


def test_a_clockless_reading_without_a_raw_value_skips_its_own_copy() -> None:
    """The copy identity of a reading without `_consumo_phf_bruto` is (phf, None)."""
    reading = Reading("eq-1", RECEIVED, b'{"phf": 10.5}', matchable=False)
    own_copy = StoredRow(RECEIVED - timedelta(seconds=1), "10.5", None)
    before = StoredRow(RECEIVED - timedelta(seconds=30), "10.0", None)
    assert m160.stored_previous(reading, [own_copy, before]) == Previous(before.at, 10.0)


@pytest.mark.parametrize(
    ("dados", "phf"),
    [
        (b'{"phf": 15234.77}', 15234.77),
        (b'{"phf": 15234}', 15234.0),
        (b'{"phf": "15234.77"}', None),  # text is not a counter reading
        (b'{"phf": null}', None),
        (b"[15234.77]", None),  # not an object
        (b"not json", None),
        (None, None),
    ],
)
def test_phf_of(dados: bytes | None, phf: float | None) -> None:
    assert m160.phf_of(dados) == phf
