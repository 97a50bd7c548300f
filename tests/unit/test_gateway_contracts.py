"""A-966 edges that mutation testing found unpinned (docs/testing.md): readings in full
(every column, not only the energy), the power factor's sign and its 0.001 kVA bound,
numbers sent as text at the 64-character bound, and each refusal's exact reason.

Expected values are computed by hand (KD = 0.048 kWh per pulse, a 15-minute bucket =
0.25 h, so one pulse is 0.192 kW); the arithmetic is in the comment beside each.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest

from aupus_ha.decoding.gateway import GatewayFamily
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPIC = "STA_BRANCA/GO/SOLAR_POWER/UFV05/A966/SSU/state"
GATEWAY = Equipment("gw-1", TOPIC, type_code="SSU_A966", type_category="Gateway")
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def fixture(name: str) -> dict[str, object]:
    obj = orjson.loads((FIXTURES / name).read_bytes())
    assert isinstance(obj, dict)
    return obj


def decode(obj: dict[str, object]) -> Decoded:
    payload = orjson.dumps(obj)
    return Decoder(max_payload_bytes=64 * 1024).decode(TOPIC, payload, [GATEWAY], RECEIVED)


def only_reading(obj: dict[str, object]) -> Reading:
    decoded = decode(obj)
    assert decoded.rejects == []
    [reading] = decoded.readings
    return reading


def only_reason(obj: dict[str, object]) -> str:
    decoded = decode(obj)
    assert decoded.readings == []
    [reject] = decoded.rejects
    return reject.reason


def bucket(**data: object) -> dict[str, object]:
    """The state fixture with its `data` counts replaced."""
    obj = fixture("a966_ssu_state.json")
    obj["data"] = {"cdo": "15", "sts": 1, **data}
    return obj


def test_state_fixture_in_full() -> None:
    """a966_ssu_state.json: phf 0, phr 1487, qhfc 3. energia (1487 − 0) × 0.048 = 71.376
    kWh; potência 71.376 / 0.25 = 285.504 kW; P_rev 1487 × 0.192 = 285.504; Q_liquido
    (0 + 0) − (3 + 0) = −3 × 0.192 = −0.576; FP 285.504 / hypot(285.504, 0.576) =
    0.999998 → 1.0; time "1795910400" = 2026-11-29T00:00:00Z."""
    obj = fixture("a966_ssu_state.json")
    at = datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    derived = {"P_direto": 0.0, "P_rev": 285.504, "Q_liquido": -0.576, "FP_calc": 1.0}
    assert only_reading(obj) == Reading(
        equipamento_id="gw-1",
        timestamp_dados=at,
        dados=orjson.dumps({**obj, **derived}),
        qualidade="bom",
        fonte="MQTT",
        energia_kwh=71.376,
        potencia_ativa_kw=285.504,
        num_leituras=1,
        timestamp_fim=at,
        matchable=True,
    )


def test_old_firmware_fixture_in_full() -> None:
    """a966_old_firmware_empty.json (`{}`): raw only, no time at all: the arrival,
    unmatchable, `ruim`, no energy or power."""
    assert only_reading(fixture("a966_old_firmware_empty.json")) == Reading(
        equipamento_id="gw-1",
        timestamp_dados=RECEIVED,
        dados=b'{"_timestamp_motivo":"ausente"}',
        qualidade="ruim",
        fonte="MQTT",
        energia_kwh=None,
        potencia_ativa_kw=None,
        num_leituras=1,
        timestamp_fim=RECEIVED,
        matchable=False,
    )


def test_power_factor_of_flow_both_ways() -> None:
    """phf 10, phr 50, qhfi 40: P_direto 1.92, P_rev 9.6, net −7.68 kW; Q 40 × 0.192 =
    7.68; FP 7.68 / hypot(7.68, 7.68) = 0.7071 → 0.707; energia (50 − 10) × 0.048 = 1.92."""
    reading = only_reading(bucket(phf=10, phr=50, qhfi=40))
    stored = orjson.loads(reading.dados)
    assert {k: stored[k] for k in ("P_direto", "P_rev", "Q_liquido", "FP_calc")} == {
        "P_direto": 1.92,
        "P_rev": 9.6,
        "Q_liquido": 7.68,
        "FP_calc": 0.707,
    }
    assert (reading.energia_kwh, reading.potencia_ativa_kw) == (1.92, 7.68)


def test_missing_reactive_counts_are_zero() -> None:
    """No qhfc/qhfi/qhrc/qhri: Q_liquido 0; phr 5 only: FP |−0.96| / 0.96 = 1."""
    stored = orjson.loads(only_reading(bucket(phf=0, phr=5)).dados)
    assert (stored["Q_liquido"], stored["FP_calc"], stored["P_rev"]) == (0.0, 1.0, 0.96)


def test_the_apparent_power_bound_is_inclusive() -> None:
    """Exactly 0.001 kVA (reactive 0.005208333333333333 pulses × 0.192, no active power):
    the ratio 0 / 0.001 = 0 is used; below the bound FP would be 1."""
    exact = "0.005208333333333333"
    stored = orjson.loads(only_reading(bucket(phf=0, phr=0, qhfi=exact)).dados)
    assert stored["FP_calc"] == 0.0
    below = orjson.loads(only_reading(bucket(phf=0, phr=0, qhfi="0.005")).dados)
    assert below["FP_calc"] == 1.0


def test_a_tiny_negative_derived_value_is_stored_as_zero_not_minus_zero() -> None:
    """qhfc 0.001 pulses: Q −0.000192 rounds to −0.0, stored as 0.0 (no "-0.0" in dados)."""
    reading = only_reading(bucket(phf=0, phr=1, qhfc=0.001))
    assert b'"Q_liquido":0.0' in reading.dados
    assert math.copysign(1.0, orjson.loads(reading.dados)["Q_liquido"]) == 1.0


@pytest.mark.parametrize(
    ("phr", "energia"),
    [
        ("0" * 63 + "1", 0.048),  # 64 characters: still a number (1 pulse)
        (" 0" + "0" * 62 + "2 ", 0.096),  # surrounding spaces do not count
    ],
)
def test_a_count_sent_as_text_of_64_characters(phr: str, energia: float) -> None:
    assert only_reading(bucket(phf=0, phr=phr)).energia_kwh == energia


@pytest.mark.parametrize(
    ("phr", "reason"),
    [
        ("0" * 64 + "1", "invalid_gateway: phr is a string, not a pulse count"),  # 65 chars
        ("nan", "invalid_gateway: phr is a string, not a pulse count"),
        ("inf", "invalid_gateway: phr is a string, not a pulse count"),
        ("", "invalid_gateway: phr is a string, not a pulse count"),
        ("1_000", "invalid_gateway: phr is a string, not a pulse count"),
        ([1], "invalid_gateway: phr is an array, not a pulse count"),
        ({"n": 1}, "invalid_gateway: phr is an object, not a pulse count"),
        (True, "invalid_gateway: phr is a boolean, not a pulse count"),
        (1.0000000000000002e15, "number_out_of_range: phr is 1000000000000000.2, beyond ±1e+15"),
        ("1e16", "number_out_of_range: phr is '1e16', beyond ±1e+15"),
    ],
)
def test_a_count_that_is_not_a_pulse_count(phr: object, reason: str) -> None:
    assert only_reason(bucket(phf=0, phr=phr)) == reason


def test_the_magnitude_bound_is_inclusive() -> None:
    """phr 1e15 pulses is a (huge) count: 1e15 × 48 / 1000 = 4.8e13 kWh."""
    assert only_reading(bucket(phf=0, phr=1e15)).energia_kwh == 4.8e13


@pytest.mark.parametrize(
    ("obj", "shape"),
    [
        (fixture("a966_ssu_state.json"), True),
        ({"NSU": 1}, True),  # the sequence number alone
        ({"data": {}}, True),  # the counts object alone
        ({"data": "15"}, False),  # `data` that is not an object
        (fixture("a966_old_firmware_empty.json"), False),  # `{}`: only `owns` routes it
        (fixture("inverter_reading.json"), False),
    ],
)
def test_the_a966_shape_for_tools(obj: dict[str, object], shape: bool) -> None:
    """`matches` describes the A-966 shape (the simulator and tools use it); the decoder
    routes by the equipment's category, never by it."""
    assert GatewayFamily().matches(obj) is shape
