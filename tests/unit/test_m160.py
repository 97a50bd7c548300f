"""The M-160 summary family (DOMAIN v2 "M-160 summary"): energy, power, count, quality,
the two formats, and the outlier guard's pure half (what the flush decides).

Every expected value is derived by hand from DOMAIN v2; the arithmetic is in the comment
beside it.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.decoding import m160
from aupus_ha.decoding.m160 import M160SummaryFamily, Previous
from aupus_ha.decoding.messages import (
    REASON_INVALID_SUMMARY,
    REASON_NUMBER_OUT_OF_RANGE,
    DecodeError,
)
from aupus_ha.pipeline.readings import Equipment, Reading
from tests.helpers import fixture_lines, fixture_object

RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
METER = Equipment("eq-1", "site/meter", type_code="M-160")
OUTLIERS = "m160_consumo_phf_outlier_sequence.jsonl"


def decode(obj: dict[str, object]) -> Reading:
    (reading,) = M160SummaryFamily().decode(obj, METER, RECEIVED)
    return reading


def dados(reading: Reading) -> dict[str, object]:
    out = orjson.loads(reading.dados)
    assert isinstance(out, dict)
    return out


# --- routing helpers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "is_m160"),
    [
        ("M-160", True),
        ("M160", True),
        ("METER_M160", True),
        ("m-160", False),
        ("INVERSOR", False),
        (None, False),
    ],
)
def test_the_type_code_decides(code: str | None, is_m160: bool) -> None:
    """DOMAIN family rule 1: codigo in {M-160, M160, METER_M160}, exactly."""
    assert m160.is_m160(Equipment("e", "t", type_code=code)) is is_m160


# --- the two formats ---------------------------------------------------------------------


def test_flat_ton_fixture() -> None:
    """m160_ton_flat.json: consumo_phf 0.0618 > 0 -> energia 0.0618; Pt 7414.5 present ->
    potencia 7414.5 / 1000 = 7.4145; no total_leituras -> 1; Va, Ia, Pt > 0 -> bom;
    "28/11/2026 21:00:30" Brasília = 2026-11-29T00:00:30Z = timestamp_fim; dados = the
    payload as sent."""
    payload = fixture_object("m160_ton_flat.json")
    reading = decode(payload)
    assert reading.energia_kwh == 0.0618
    assert reading.potencia_ativa_kw == pytest.approx(7.4145)
    assert reading.num_leituras == 1
    assert reading.qualidade == "bom"
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert reading.timestamp_fim == reading.timestamp_dados
    assert reading.matchable and not reading.outlier_guard
    assert dados(reading) == payload


def test_wrapped_fixture_stores_the_resumo_object() -> None:
    """m160_resumo.json: dados = the Resumo object (phf, consumo_phf, Pt at its top
    level); energia = consumo_phf 0.0618; potencia = Pt 7414.5 / 1000 = 7.4145 (not
    0.0618 / (30/3600) = 7.416); num_leituras = total_leituras 30."""
    payload = fixture_object("m160_resumo.json")
    reading = decode(payload)
    assert dados(reading) == payload["Resumo"]
    assert (reading.energia_kwh, reading.num_leituras) == (0.0618, 30)
    assert reading.potencia_ativa_kw == pytest.approx(7.4145)
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)


def test_wrapped_epoch_fixture_without_load() -> None:
    """m160_resumo_epoch.json: consumo_phf 0.0 and energia_total 0.0 are not > 0, Pt 0.0
    is present: energia = 0.0 / 1000 * 30 / 3600 = 0.0, potencia = 0.0 / 1000 = 0.0;
    Va 221.4 > 0 but no current > 0 -> parcial; 1795910430 = 2026-11-29T00:00:30Z."""
    reading = decode(fixture_object("m160_resumo_epoch.json"))
    assert (reading.energia_kwh, reading.potencia_ativa_kw) == (0.0, 0.0)
    assert reading.qualidade == "parcial"
    assert reading.num_leituras == 30
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)


def test_freq_and_fpt_are_kept() -> None:
    """m160_ton_flat_freq_fpt.json: Freq and FPt stay in dados; the same columns."""
    reading = decode(fixture_object("m160_ton_flat_freq_fpt.json"))
    assert (dados(reading)["Freq"], dados(reading)["FPt"]) == (60.01, 0.992)
    assert reading.energia_kwh == 0.0618


@pytest.mark.parametrize(
    "payload",
    [
        {"Resumo": "should be an object"},
        {"Resumo": None, "Vb": 220.0},
        {"Resumo": [1]},
        {},
        {"phf": 15234.77, "Pt": 7414.5},  # flat but neither Va nor consumo_phf
    ],
)
def test_neither_format_is_m160_unknown_format(payload: dict[str, object]) -> None:
    """DOMAIN: neither a Resumo object nor top-level Va / consumo_phf -> rejected."""
    with pytest.raises(DecodeError) as caught:
        decode(payload)
    assert caught.value.reason == m160.REASON_UNKNOWN_FORMAT


def test_a_non_object_resumo_beside_top_level_va_is_flat() -> None:
    """`Resumo` must be an object to be the wrapped form; top-level Va makes it flat."""
    reading = decode({"Resumo": "x", "Va": 220.0, "Ia": 1.0, "Pt": 100.0})
    assert dados(reading)["Resumo"] == "x"
    assert reading.potencia_ativa_kw == 0.1  # 100 W / 1000


# --- energy and power (DOMAIN: consumo_phf > 0, else energia_total > 0, else Pt) ----------


@pytest.mark.parametrize(
    ("fields", "energia", "potencia"),
    [
        # consumo_phf 0.05 > 0 wins; Pt 3000 present: potencia = 3000 / 1000 = 3.0
        ({"consumo_phf": 0.05, "energia_total": 0.07, "Pt": 3000.0}, 0.05, 3.0),
        # consumo_phf 0 -> energia_total 0.07; no Pt: potencia = 0.07 / (30/3600) = 8.4
        ({"consumo_phf": 0.0, "energia_total": 0.07}, 0.07, 8.4),
        # nothing > 0 but Pt 3600: energia = 3600 / 1000 * 30 / 3600 = 0.03; potencia 3.6
        ({"consumo_phf": 0.0, "energia_total": 0.0, "Pt": 3600.0}, 0.03, 3.6),
        # negative consumo (not > 0) and no Pt: energia_total -1 not > 0 either: NULL
        ({"consumo_phf": -0.2, "energia_total": -1.0}, None, None),
        # nothing at all: NULL, NULL (the legacy wrote 0: unknown is not zero)
        ({}, None, None),
        # null counts as absent
        ({"consumo_phf": None, "energia_total": None, "Pt": None}, None, None),
        # Pt present without energy fields: Pt -1200 (export) -> -1.2 kW, -0.01 kWh
        ({"Pt": -1200.0}, -0.01, -1.2),
        # consumo_phf exactly 5 kWh is not an outlier (> 5): energia 5.0; potencia 5 * 120
        ({"consumo_phf": 5.0}, 5.0, 600.0),
    ],
)
def test_energy_and_power_chain(
    fields: dict[str, object], energia: float | None, potencia: float | None
) -> None:
    columns = m160.columns_of(fields)
    for got, want in ((columns.energia_kwh, energia), (columns.potencia_ativa_kw, potencia)):
        assert (got is None) == (want is None)
        if want is not None:
            assert got == pytest.approx(want)


_reasonable = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
_maybe = st.one_of(st.none(), _reasonable)


@given(consumo=_maybe, total=_maybe, pt=_maybe)
def test_energy_chain_property(
    consumo: float | None, total: float | None, pt: float | None
) -> None:
    """For any mix of present/absent numbers: the first of consumo_phf (> 0),
    energia_total (> 0), Pt/1000 × 30/3600; power is Pt/1000 when Pt is present, else
    energy × 120 (1 / (30/3600)); NULL energy and no Pt give NULL power."""
    fields = {"consumo_phf": consumo, "energia_total": total, "Pt": pt}
    columns = m160.columns_of(fields)
    if consumo is not None and consumo > 0:
        assert columns.energia_kwh == consumo
    elif total is not None and total > 0:
        assert columns.energia_kwh == total
    elif pt is not None:
        assert columns.energia_kwh == pytest.approx(pt / 120_000)
    else:
        assert columns.energia_kwh is None
    if pt is not None:
        assert columns.potencia_ativa_kw == pt / 1000
    elif columns.energia_kwh is None:
        assert columns.potencia_ativa_kw is None
    else:
        assert columns.potencia_ativa_kw == pytest.approx(columns.energia_kwh * 120)


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"consumo_phf": "0.06"}, REASON_INVALID_SUMMARY),
        ({"energia_total": True}, REASON_INVALID_SUMMARY),
        ({"Pt": [1.0]}, REASON_INVALID_SUMMARY),
        ({"phf": {"v": 1}, "consumo_phf": 9.0}, REASON_INVALID_SUMMARY),
        ({"Pt": 1e16}, REASON_NUMBER_OUT_OF_RANGE),
        ({"consumo_phf": -1e300}, REASON_NUMBER_OUT_OF_RANGE),
    ],
)
def test_computed_fields_must_be_bounded_numbers(fields: dict[str, object], code: str) -> None:
    with pytest.raises(DecodeError) as caught:
        decode({"Va": 220.0, **fields})
    assert caught.value.reason == code


# --- num_leituras --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "count"),
    [
        (None, 1),  # absent: 1
        (30, 30),
        (30.0, 30),  # an integral float is the count
        (0, 1),  # the legacy's `total_leituras || 1`: the row is one reading
        (2**31 - 1, 2**31 - 1),  # the `integer` column's maximum fits
    ],
)
def test_num_leituras(total: object, count: int) -> None:
    fields = {} if total is None else {"total_leituras": total}
    assert m160.count_of(fields) == count


@pytest.mark.parametrize("total", [2**31, -1, 2.5, "30", True, 1e300])
def test_num_leituras_that_no_integer_column_holds(total: object) -> None:
    """Beyond 2^31−1 the integer column would overflow: rejected, never a failed flush."""
    with pytest.raises(DecodeError) as caught:
        m160.count_of({"total_leituras": total})
    assert caught.value.reason in (REASON_INVALID_SUMMARY, REASON_NUMBER_OUT_OF_RANGE)


# --- quality (no mqtt_schema) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "quality"),
    [
        ({}, "ruim"),  # no phase voltage at all
        ({"Va": 0, "Vb": 0.0, "Vc": -1, "Ia": 5, "Pt": 5}, "ruim"),  # none > 0
        ({"Va": True, "Ia": 1.0, "Pa": 1.0}, "ruim"),  # a boolean is not a voltage
        ({"Va": "220", "Ia": 1.0, "Pa": 1.0}, "ruim"),  # nor is text
        ({"Vc": 220.0}, "parcial"),  # energised, no load
        ({"Va": 220.0, "Ia": 1.0}, "parcial"),  # current but no power > 0
        ({"Va": 220.0, "Pt": 1.0}, "parcial"),  # power but no current > 0
        ({"Va": 220.0, "Ia": 0.0, "Pt": 0.0}, "parcial"),  # measured zeros: no load
        ({"Vb": 220.0, "Ic": 0.5, "Pc": 10.0}, "bom"),
        ({"Va": 220.0, "Ib": 1.0, "Pt": 1.0}, "bom"),
    ],
)
def test_quality(fields: dict[str, object], quality: str) -> None:
    assert m160.quality_of(fields) == quality


_phase = st.one_of(st.none(), st.floats(min_value=-500, max_value=500, allow_nan=False))


@given(
    st.fixed_dictionaries(
        {k: _phase for k in ("Va", "Vb", "Vc", "Ia", "Ib", "Ic", "Pa", "Pb", "Pc", "Pt")}
    )
)
def test_quality_property(fields: dict[str, float | None]) -> None:
    """ruim iff no voltage > 0; else bom iff a current > 0 and a power > 0; else parcial."""

    def positive(*keys: str) -> bool:
        return any((fields[k] or 0) > 0 for k in keys)

    if not positive("Va", "Vb", "Vc"):
        want = "ruim"
    elif positive("Ia", "Ib", "Ic") and positive("Pa", "Pb", "Pc", "Pt"):
        want = "bom"
    else:
        want = "parcial"
    assert m160.quality_of(fields) == want


def test_the_type_schema_is_not_applied() -> None:
    """A METER_M160 type whose mqtt_schema describes another firmware: still bom."""
    from aupus_ha.decoding.messages import Decoder
    from aupus_ha.decoding.schemas import compile_schema

    schema = compile_schema(
        '{"type": "object", "required": ["Resumo"], "properties": {"Resumo": '
        '{"type": "object", "required": ["energia_ativa_kwh"]}}}'
    )
    meter = Equipment("eq-1", "site/meter", type_code="METER_M160", mqtt_schema=schema)
    decoded = Decoder(max_payload_bytes=65536).decode(
        "site/meter", orjson.dumps(fixture_object("m160_ton_flat.json")), [meter], RECEIVED
    )
    (reading,) = decoded.readings
    assert reading.qualidade == "bom"
    assert "_validacao" not in dados(reading)


# --- the outlier guard: decode marks, the flush decides -----------------------------------


def test_an_outlier_is_marked_not_decided_on_arrival() -> None:
    """3rd line of the outlier fixture: consumo_phf 10381.6 > 5 kWh. On arrival the window
    is unknown: consumo_phf null, raw kept, energy from Pt 5160: 5160 / 1000 * 30 / 3600 =
    0.043; the flush must decide (outlier_guard), since phf 10557.6 is present."""
    reading = decode(fixture_lines(OUTLIERS)[2])
    assert reading.outlier_guard
    stored = dados(reading)
    assert stored["_consumo_phf_bruto"] == 10381.6
    assert stored["consumo_phf"] is None
    assert reading.energia_kwh == pytest.approx(0.043)
    assert reading.potencia_ativa_kw == pytest.approx(5.16)


def test_an_outlier_without_its_phf_falls_through_at_once() -> None:
    """No phf in the message: nothing for the flush to decide; energia_total 0.02 > 0."""
    reading = decode({"Va": 220.0, "consumo_phf": 42.0, "energia_total": 0.02})
    assert not reading.outlier_guard
    assert (reading.energia_kwh, dados(reading)["_consumo_phf_bruto"]) == (0.02, 42.0)
    # no Pt: potencia = 0.02 / (30/3600) = 2.4
    assert reading.potencia_ativa_kw == pytest.approx(2.4)


def test_resolving_with_the_previous_phf() -> None:
    """Previous phf 10557.56 (2nd line): max(0, 10557.6 − 10557.56) = 0.04 kWh, in dados
    and in energia_kwh; potencia stays Pt 5160 / 1000 = 5.16."""
    reading = decode(fixture_lines(OUTLIERS)[2])
    at = reading.timestamp_dados - timedelta(seconds=30)
    resolved = m160.resolve(reading, Previous(at, 10557.56))
    assert not resolved.outlier_guard
    stored = dados(resolved)
    assert stored["consumo_phf"] == 0.04
    assert stored["_consumo_phf_bruto"] == 10381.6
    assert stored["phf"] == 10557.6
    assert resolved.energia_kwh == 0.04
    assert resolved.potencia_ativa_kw == pytest.approx(5.16)


@pytest.mark.parametrize("previous", [None, Previous(RECEIVED, None)])
def test_resolving_without_a_previous_phf_keeps_the_fallback(previous: Previous | None) -> None:
    reading = decode(fixture_lines(OUTLIERS)[2])
    resolved = m160.resolve(reading, previous)
    assert resolved.dados == reading.dados
    assert resolved.energia_kwh == reading.energia_kwh  # Pt: 0.043
    assert not resolved.outlier_guard


def test_a_counter_that_went_back_gives_zero_then_the_chain() -> None:
    """phf 100 after 150 (a reset): max(0, 100 − 150) = 0, not > 0, so energia_total 0.01."""
    reading = decode({"Va": 1.0, "phf": 100.0, "consumo_phf": 99.0, "energia_total": 0.01})
    resolved = m160.resolve(reading, Previous(RECEIVED, 150.0))
    assert dados(resolved)["consumo_phf"] == 0.0
    assert resolved.energia_kwh == 0.01


@given(
    phf=st.floats(min_value=0, max_value=1e9, allow_nan=False),
    delta=st.floats(min_value=-1e3, max_value=1e3, allow_nan=False),
)
def test_corrected_consumo_is_never_negative(phf: float, delta: float) -> None:
    corrected = m160.corrected_consumo(phf, phf - delta)
    assert corrected >= 0
    assert math.isclose(corrected, max(0.0, delta), abs_tol=1e-6 + abs(phf) * 1e-12)


def test_previous_in_batch_is_by_device_time_per_equipment() -> None:
    """Publish order 3rd, 1st, 2nd, plus another meter's reading between: the guarded
    (3rd) reading's previous is the 2nd by device time (23:55:00), same equipment."""
    lines = [decode(obj) for obj in fixture_lines(OUTLIERS)]
    other = Reading("eq-2", lines[2].timestamp_dados - timedelta(seconds=1), b'{"phf": 1}')
    batch = [lines[2], lines[0], other, lines[1]]
    found = m160.previous_in_batch(batch)
    assert found == {0: Previous(lines[1].timestamp_dados, 10557.56)}


def test_later_prefers_the_closer_and_the_stored_on_a_tie() -> None:
    a = Previous(RECEIVED, 1.0)
    b = Previous(RECEIVED + timedelta(seconds=1), 2.0)
    assert m160.later(a, b) is b and m160.later(b, a) is b
    tie = Previous(RECEIVED, 3.0)
    assert m160.later(a, tie) is tie  # the stored candidate on a tie
    assert m160.later(None, None) is None


@pytest.mark.parametrize(
    ("text", "value"), [("10557.56", 10557.56), (None, None), ("1e400", None), ("x", None)]
)
def test_stored_phf_text(text: str | None, value: float | None) -> None:
    """`dados->>'phf'` of the stored previous row: a number beyond a double is unknown."""
    assert m160.parse_phf_text(text) == value


def test_a_clockless_reading_is_not_its_own_previous() -> None:
    """Two copies of one clockless outlier in a batch (a redelivery): the later copy's
    previous is not the earlier copy (same dados) but the reading before both."""
    obj = {**fixture_lines(OUTLIERS)[2], "timestamp": "sem_ntp"}
    prev_obj = {**fixture_lines(OUTLIERS)[1], "timestamp": "sem_ntp"}
    family = M160SummaryFamily()
    (prev,) = family.decode(prev_obj, METER, RECEIVED - timedelta(seconds=30))
    (copy1,) = family.decode(obj, METER, RECEIVED)
    (copy2,) = family.decode(obj, METER, RECEIVED + timedelta(seconds=1))
    found = m160.previous_in_batch([prev, copy1, copy2])
    assert found[2] == Previous(prev.timestamp_dados, 10557.56)


def test_stored_copies_of_a_clockless_reading_are_skipped() -> None:
    """Stored rows newest first: a copy of this message (phf 10557.6, raw 10381.6) stored
    by another instance is skipped; the row before it is the previous. A reading with a
    device time never skips (its copies share its key, never before it)."""
    clockless = decode({**fixture_lines(OUTLIERS)[2], "timestamp": "sem_ntp"})
    timed = decode(fixture_lines(OUTLIERS)[2])
    rows = [
        m160.StoredRow(RECEIVED - timedelta(seconds=1), "10557.6", "10381.6"),
        m160.StoredRow(RECEIVED - timedelta(seconds=30), "10557.56", None),
    ]
    assert m160.stored_previous(clockless, rows) == Previous(rows[1].at, 10557.56)
    assert m160.stored_previous(timed, rows) == Previous(rows[0].at, 10557.6)
    assert m160.stored_previous(clockless, rows[:1]) is None


@pytest.mark.parametrize("guard", [False, True])
def test_the_spool_keeps_the_guard(guard: bool) -> None:
    """A spooled reading replays with its outlier mark (an 11-field record: none), so a
    replayed outlier is decided at flush like one never spooled."""
    from aupus_ha.pipeline import spool_codec
    from aupus_ha.pipeline.readings import Decoded

    reading = decode(fixture_lines(OUTLIERS)[2] if guard else fixture_lines(OUTLIERS)[1])
    assert reading.outlier_guard is guard
    body = spool_codec.encode(Decoded([reading]))
    assert len(orjson.loads(body)["r"][0]) == (12 if guard else 11)
    assert spool_codec.decode(body).readings == [reading]


def test_a_spooled_guard_must_be_true() -> None:
    from aupus_ha.pipeline import spool_codec
    from aupus_ha.pipeline.readings import Decoded

    record = orjson.loads(spool_codec.encode(Decoded([decode(fixture_lines(OUTLIERS)[2])])))
    record["r"][0][11] = "yes"
    with pytest.raises(ValueError, match="twelfth"):
        spool_codec.decode(orjson.dumps(record))
