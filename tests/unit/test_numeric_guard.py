"""Numbers that would break a rollup or a numeric column are refused at decode time.

Issue 17, defect 1: two inverter samples of one minute with `active_total` 1e308 made
the minute's mean overflow at flush and stopped every instance. The decoder now refuses
such a message with a reason, so it lands in `ingest_rejects` instead.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha.decoding.messages import (
    MAX_ABS_NUMBER,
    REASON_INVERTER_OVERFLOW,
    REASON_NUMBER_OUT_OF_RANGE,
    Decoder,
)
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.readings import Decoded, Equipment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPIC = "t/inv"
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)


def _decode(obj: dict[str, object]) -> Decoded:
    decoder = Decoder(max_payload_bytes=64 * 1024)
    return decoder.decode(TOPIC, orjson.dumps(obj), [Equipment("inv-1", TOPIC)], RECEIVED)


def _inverter(**groups: dict[str, object]) -> dict[str, object]:
    base: dict[str, object] = orjson.loads((FIXTURES / "inverter_reading.json").read_bytes())
    for name, values in groups.items():
        base[name] = {**base[name], **values}  # type: ignore[dict-item]
    return base


def _reason(decoded: Decoded) -> str:
    assert decoded.readings == [] and len(decoded.rejects) == 1, decoded
    return decoded.rejects[0].reason


def test_huge_active_power_is_refused_with_a_reason() -> None:
    """The issue's trigger: `power.active_total` 1e308 is a reject, not a sample."""
    reason = _reason(_decode(_inverter(power={"active_total": 1e308})))
    assert reason.startswith(f"{REASON_NUMBER_OUT_OF_RANGE}: power.active_total")


def test_every_averaged_group_is_guarded() -> None:
    """Any numeric leaf the rollup averages, in any averaged group and of either sign."""
    for group in rollup.MEAN_GROUPS:
        reason = _reason(_decode(_inverter(**{group: {"x": -1e16}})))
        assert reason.startswith(f"{REASON_NUMBER_OUT_OF_RANGE}: {group}.x"), reason


def test_the_bound_itself_is_accepted() -> None:
    """|x| == MAX_ABS_NUMBER is still a reading, and tiny numbers are fine."""
    decoded = _decode(_inverter(voltage={"x": MAX_ABS_NUMBER}, power={"tiny": 5e-324}))
    assert decoded.rejects == [] and len(decoded.readings) == 1


def test_m160_energy_out_of_range_is_refused() -> None:
    """`energia_total` feeds energia_kwh when consumo_phf is not > 0 (DOMAIN v2):
    bounded the same way. The family is the equipment's (type M-160), not the payload's."""
    m160 = orjson.loads((FIXTURES / "m160_resumo.json").read_bytes())
    m160["Resumo"]["consumo_phf"] = 0.0
    m160["Resumo"]["energia_total"] = 1e300
    meter = [Equipment("m160-1", TOPIC, type_code="M-160")]
    payload = orjson.dumps(m160)
    reason = _reason(Decoder(max_payload_bytes=64 * 1024).decode(TOPIC, payload, meter, RECEIVED))
    assert reason.startswith(f"{REASON_NUMBER_OUT_OF_RANGE}: energia_total")


def test_generic_payloads_keep_huge_numbers() -> None:
    """A generic reading's numbers reach only jsonb (exact numeric): nothing to refuse."""
    decoded = _decode({"timestamp": "2026-11-29T02:59:00Z", "x": 1e308, "y": -1e30})
    assert decoded.rejects == [] and len(decoded.readings) == 1


finite = st.floats(
    min_value=-MAX_ABS_NUMBER, max_value=MAX_ABS_NUMBER, allow_nan=False, allow_infinity=False
)
anything = st.one_of(finite, st.integers(), st.floats(), st.text(max_size=3), st.none())


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["a", "active_total"]), anything), max_size=20))
def test_no_accepted_sample_can_break_a_rollup(powers: list[dict[str, object]]) -> None:
    """Whatever the decoder accepts, the minute's row can be built from it."""
    samples = {}
    for second, power in enumerate(powers):
        at = RECEIVED.timestamp() - 60 + second
        obj = {"timestamp": at, "power": {"active_total": 1, **power}}
        try:
            payload = orjson.dumps(obj)
        except orjson.JSONEncodeError:
            continue  # an integer beyond 64 bits cannot be sent by orjson
        decoded = Decoder(max_payload_bytes=64 * 1024).decode(
            TOPIC, payload, [Equipment("inv-1", TOPIC)], RECEIVED
        )
        for reading in decoded.readings:
            assert reading.sample_at is not None
            samples[rollup.sample_key(reading.sample_at)] = orjson.loads(reading.dados)
    row = rollup.build_row(samples)
    assert row.num_leituras == len(samples)


def test_a_stored_minute_from_before_the_bound_still_builds() -> None:
    """Samples stored before the decoder's guard (1e308) are not averaged, so merging a
    new sample into their minute cannot overflow."""
    old = {
        rollup.sample_key(RECEIVED.replace(second=s)): {"power": {"active_total": 1e308}}
        for s in (1, 2)
    }
    new = {rollup.sample_key(RECEIVED.replace(second=3)): {"power": {"active_total": 6000.0}}}
    row = rollup.build_row(rollup.merge_samples(old, new))
    assert row.num_leituras == 3 and row.potencia_ativa_kw == 6.0


@pytest.mark.parametrize(
    ("group", "field", "value"),
    [
        ("energy", "total_yield", 4294967000),  # 2^32 read as a register
        ("energy", "total_yield", 5e8),
        ("energy", "daily_yield", 6553.5),  # 2^16 / 10
        ("info", "output_type", 65535),
        ("status", "work_state", 65535),
        ("info", "device_type", "ffff"),
        ("power", "active_total", 1e8),
    ],
)
def test_inverter_overflow_frames_are_refused(group: str, field: str, value: object) -> None:
    """DOMAIN v2: a frame with a register read as UINT max never reaches a rollup."""
    reason = _reason(_decode(_inverter(**{group: {field: value}})))
    assert reason.startswith(f"{REASON_INVERTER_OVERFLOW}: {group}.{field}"), reason


def test_ordinary_inverter_values_pass_the_overflow_filter() -> None:
    """Values near the signatures but not on them are readings."""
    decoded = _decode(
        _inverter(
            energy={"total_yield": 4.9e8, "daily_yield": 6553.4},
            info={"output_type": 65534, "device_type": "fffe"},
            power={"active_total": 9.9e7},
        )
    )
    assert decoded.rejects == [] and len(decoded.readings) == 1
