"""The decoder: fixture rows, rejects for bad input, families, and never raising."""

from __future__ import annotations

import hashlib
import re
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.decoding.m160 import M160SummaryFamily
from aupus_ha.decoding.messages import (
    MAX_DETAIL_CHARS,
    REASON_DECODER_ERROR,
    REASON_INVALID_JSON,
    REASON_INVALID_SUMMARY,
    REASON_NO_FAMILY,
    REASON_NOT_OBJECT,
    REASON_NOT_UTF8,
    REASON_TOO_LARGE,
    REASON_UNKNOWN_TOPIC,
    REASON_UNSTORABLE,
    DecodeError,
    Decoder,
    GenericFamily,
)
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading
from tests.helpers import BrokenFamily

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPIC = "aupus/site1/meter1"
EQUIPMENT = [Equipment("eq-1", TOPIC)]
# DOMAIN v2: the M-160 family is decided by the equipment's type code, not the payload.
M160_EQUIPMENT = [Equipment("eq-1", TOPIC, type_code="M-160")]
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
LIMIT = 64 * 1024


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decode(
    payload: bytes | dict[str, object],
    equipment: list[Equipment] | None = None,
    decoder: Decoder | None = None,
) -> Decoded:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    decoder = decoder or Decoder(max_payload_bytes=LIMIT)
    return decoder.decode(TOPIC, raw, EQUIPMENT if equipment is None else equipment, RECEIVED)


def only_reading(
    payload: bytes | dict[str, object], equipment: list[Equipment] | None = None
) -> Reading:
    decoded = decode(payload, equipment)
    assert decoded.rejects == []
    assert len(decoded.readings) == 1
    return decoded.readings[0]


def reject_code(
    payload: bytes | dict[str, object],
    equipment: list[Equipment] | None = None,
    decoder: Decoder | None = None,
) -> str:
    decoded = decode(payload, equipment, decoder)
    assert decoded.readings == []
    assert len(decoded.rejects) == 1
    reason = decoded.rejects[0].reason
    code, sep, detail = reason.partition(": ")
    assert sep and detail, reason
    return code


def resumo() -> dict[str, object]:
    summary = orjson.loads(fixture("m160_resumo.json"))["Resumo"]
    assert isinstance(summary, dict)
    return summary


# --- fixtures --------------------------------------------------------------------------------


def test_generic_fixture_row() -> None:
    """generic_reading.json → one good, matchable row at 2026-11-28T21:01:00Z."""
    payload = fixture("generic_reading.json")
    assert only_reading(payload) == Reading(
        equipamento_id="eq-1",
        timestamp_dados=datetime(2026, 11, 28, 21, 1, tzinfo=UTC),
        dados=orjson.dumps(orjson.loads(payload)),
        qualidade="bom",
        fonte="MQTT",
        energia_kwh=None,
        potencia_ativa_kw=None,
        num_leituras=None,
        timestamp_fim=None,
        matchable=True,
    )


def test_m160_fixture_row() -> None:
    """m160_resumo.json on an M-160 → the summary's Brasília time in UTC, energy, power
    and count as DOMAIN v2 computes them."""
    reading = only_reading(fixture("m160_resumo.json"), M160_EQUIPMENT)
    assert reading.equipamento_id == "eq-1"
    # "28/11/2026 21:00:30" in Brasília (UTC-3) = 2026-11-29T00:00:30Z
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert reading.energia_kwh == 0.0618  # consumo_phf 0.0618 > 0
    # v2: Pt / 1000 = 7414.5 / 1000 (v1 said energia / (30/3600) = 7.416)
    assert reading.potencia_ativa_kw == pytest.approx(7.4145)
    assert reading.num_leituras == 30  # total_leituras
    assert reading.qualidade == "bom"
    assert reading.fonte == "MQTT"
    assert reading.matchable is True
    assert reading.timestamp_fim == reading.timestamp_dados  # v2 (v1: None)


def test_m160_dados_is_the_flattened_summary() -> None:
    """The stored JSON is the summary's fields; its timestamp is the one the row uses."""
    reading = only_reading(fixture("m160_resumo.json"), M160_EQUIPMENT)
    stored = orjson.loads(reading.dados)
    assert stored == resumo()
    assert stored["timestamp"] == "28/11/2026 21:00:30"
    assert "Resumo" not in stored


def test_inverter_fixture_is_a_sample_of_its_minute() -> None:
    """inverter_reading.json becomes one rollup sample: keyed by its own instant, filed
    under its minute (epoch seconds 1764374460 = 2025-11-29T00:01:00Z)."""
    payload = fixture("inverter_reading.json")
    reading = only_reading(payload)
    instant = datetime(2025, 11, 29, 0, 1, tzinfo=UTC)
    assert reading.sample_at == instant and reading.is_rollup_sample
    assert reading.timestamp_dados == instant.replace(second=0)
    assert reading.timestamp_fim == instant.replace(second=0) + timedelta(minutes=1)
    assert reading.key[1] == instant  # two samples of one minute are two pending entries
    assert reading.dados == orjson.dumps(orjson.loads(payload))


def bad_lines() -> list[bytes]:
    lines = fixture("bad_inputs.txt").splitlines()
    return [
        re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), line)
        for line in lines
        if line.strip() and not line.startswith(b"#")
    ]


def bad_input_equipment(payload: bytes) -> list[Equipment]:
    """DOMAIN v2 decides the family by the equipment first: the `Resumo` line is bad only
    for an M-160 (on an untyped equipment it is a valid generic reading)."""
    return M160_EQUIPMENT if b'"Resumo"' in payload else EQUIPMENT


def test_bad_inputs_fixture_is_read() -> None:
    """The bad-input list has its six payloads, the escaped one as raw bytes."""
    lines = bad_lines()
    assert len(lines) == 6
    assert b"\xff\xfe\x00garbage" in lines


@pytest.mark.parametrize("payload", bad_lines())
def test_every_bad_input_is_one_reject(payload: bytes) -> None:
    """Each bad payload becomes exactly one reject with a non-empty reason and no reading."""
    decoded = decode(payload, bad_input_equipment(payload))
    assert decoded.readings == []
    assert len(decoded.rejects) == 1
    reject = decoded.rejects[0]
    assert reject.reason.strip()
    assert reject.payload == payload
    assert reject.topic == TOPIC
    assert reject.received_at == RECEIVED
    assert reject.key == (TOPIC, hashlib.sha256(payload).hexdigest())


@pytest.mark.parametrize(
    ("payload", "codes"),
    [
        (b"not json at all", {REASON_INVALID_JSON}),
        (b"[1, 2, 3]", {REASON_NOT_OBJECT}),
        # DOMAIN v2: neither Resumo (object) nor top-level Va / consumo_phf on an M-160.
        (b'{"Resumo": "should be an object"}', {"m160_unknown_format"}),
        (b"\xff\xfe\x00garbage", {REASON_NOT_UTF8}),
        # power.active_total 1e308: an absurd number, and >= 1e8 an overflow signature.
        (
            b'{"timestamp": 1795910400, "power": {"active_total": 1e308, "reactive_total": 0}}',
            {"number_out_of_range", "inverter_overflow"},
        ),
        (
            b'{"timestamp": 1795910400, "energy": {"total_yield": 4294967000}, '
            b'"power": {"active_total": 41250}}',
            {"inverter_overflow"},
        ),
    ],
)
def test_bad_input_reason_codes(payload: bytes, codes: set[str]) -> None:
    """Each bad-input line is rejected for its own reason code. (v1's timestamp lines
    moved to clockless.txt: DOMAIN v2 stores them with the arrival time.)"""
    assert payload in bad_lines()
    assert reject_code(payload, bad_input_equipment(payload)) in codes


# --- the checks before the family ------------------------------------------------------------


def test_payload_over_the_limit() -> None:
    """Over the limit: rejected unread, stored truncated, keyed by the whole payload's hash."""
    decoder = Decoder(max_payload_bytes=100)
    payload = b'{"power": 1, "pad": "' + b"x" * 200 + b'"}'
    decoded = decoder.decode(TOPIC, payload, EQUIPMENT, RECEIVED)
    assert decoded.readings == []
    [reject] = decoded.rejects
    assert reject.reason.startswith(f"{REASON_TOO_LARGE}: ")
    assert reject.payload == payload[:100]
    assert reject.payload_sha256 == hashlib.sha256(payload).hexdigest()


def test_payload_at_the_limit_is_decoded() -> None:
    """A payload of exactly max_payload_bytes is still decoded."""
    payload = b'{"power": 1}'
    decoded = Decoder(max_payload_bytes=len(payload)).decode(TOPIC, payload, EQUIPMENT, RECEIVED)
    assert len(decoded.readings) == 1


def test_size_is_checked_before_the_topic() -> None:
    """An oversized message on an unknown topic is rejected for its size."""
    decoder = Decoder(max_payload_bytes=4)
    assert reject_code(b'{"a": 1}', equipment=[], decoder=decoder) == REASON_TOO_LARGE


def test_unknown_topic() -> None:
    """A valid message on a topic no equipment owns is rejected, not stored."""
    assert reject_code(fixture("generic_reading.json"), equipment=[]) == REASON_UNKNOWN_TOPIC


def test_limit_must_be_positive() -> None:
    """A decoder without a usable size limit is a configuration error."""
    with pytest.raises(ValueError, match="positive"):
        Decoder(max_payload_bytes=0)


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        (b"", REASON_INVALID_JSON),
        (b"\xef\xbb\xbf{}", REASON_INVALID_JSON),  # BOM: valid UTF-8, not JSON for orjson
        (b'{"a": "\\ud800"}', REASON_INVALID_JSON),  # lone surrogate escape
        (b'{"a": 1e400}', REASON_INVALID_JSON),
        (b'{"a": NaN}', REASON_INVALID_JSON),
        (b'{"a": "caf\xe9"}', REASON_NOT_UTF8),  # latin-1 inside otherwise valid JSON
        (b'"just a string"', REASON_NOT_OBJECT),
        (b"null", REASON_NOT_OBJECT),
        (b"42", REASON_NOT_OBJECT),
    ],
)
def test_encoding_and_shape_rejects(payload: bytes, code: str) -> None:
    """Encoding, syntax and top-level shape each have their own reason."""
    assert reject_code(payload) == code


def test_not_object_detail_names_the_json_kind() -> None:
    """The not_an_object detail says what the top level was."""
    [reject] = decode(b"[1, 2, 3]").rejects
    assert reject.reason == "not_an_object: top-level JSON is an array"


# --- several equipment -----------------------------------------------------------------------


def test_equipment_sharing_a_topic_each_get_a_reading() -> None:
    """A message on a shared topic is one reading per equipment, same time and data."""
    equipment = [Equipment(f"eq-{i}", TOPIC, type_code="M-160") for i in range(3)]
    decoded = decode(fixture("m160_resumo.json"), equipment)
    assert decoded.rejects == []
    assert [r.equipamento_id for r in decoded.readings] == ["eq-0", "eq-1", "eq-2"]
    assert len({(r.timestamp_dados, r.dados, r.energia_kwh) for r in decoded.readings}) == 1


def test_bad_message_on_shared_topic_is_one_reject() -> None:
    """A bad message is rejected once for the topic, not once per equipment."""
    equipment = [Equipment(f"eq-{i}", TOPIC) for i in range(3)]
    decoded = decode(b'{"timestamp": -5', equipment)
    assert decoded.readings == []
    assert len(decoded.rejects) == 1


# --- generic family --------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [{"power": 1.5}, {"power": 1.5, "timestamp": None}])
def test_generic_without_timestamp_uses_arrival_unmatchable(payload: dict[str, object]) -> None:
    """No (or null) timestamp: arrival time, and the row cannot be matched across instances."""
    reading = only_reading(payload)
    assert reading.timestamp_dados == RECEIVED
    assert reading.matchable is False


@pytest.mark.parametrize(
    ("timestamp", "expected"),
    [
        (1795910430, datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)),
        (1795910430123, datetime(2026, 11, 29, 0, 0, 30, 123000, tzinfo=UTC)),
        ("28/11/2026 21:00:30.5", datetime(2026, 11, 29, 0, 0, 30, 500000, tzinfo=UTC)),
        ("2026-11-28T21:00:30", datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)),
    ],
)
def test_generic_timestamp_forms(timestamp: object, expected: datetime) -> None:
    """The generic family takes any timestamp form, at full precision."""
    assert only_reading({"timestamp": timestamp, "power": 1}).timestamp_dados == expected


@pytest.mark.parametrize("timestamp", [True, [1], {"s": 1}])
def test_generic_timestamp_of_wrong_type(timestamp: object) -> None:
    """A boolean or container timestamp is malformed: stored at arrival (DOMAIN v2)."""
    reading = only_reading({"timestamp": timestamp, "power": 1})
    assert reading.timestamp_dados == RECEIVED
    assert orjson.loads(reading.dados)["_timestamp_motivo"] == "malformado"


def test_generic_keeps_nested_values() -> None:
    """The generic family stores whatever object it got, nested parts included."""
    payload = {"timestamp": 1795910430, "a": {"b": [1, "x", None]}, "s": "ção"}
    assert orjson.loads(only_reading(payload).dados) == payload


# --- storability -----------------------------------------------------------------------------


def test_nul_in_a_string_is_unstorable() -> None:
    """jsonb refuses \\u0000: such a message is rejected instead of failing a flush batch."""
    assert reject_code(b'{"power": 1, "tag": "a\\u0000b"}') == REASON_UNSTORABLE
    assert reject_code(b'{"power": 1, "a\\u0000": 1}') == REASON_UNSTORABLE


def test_escaped_backslash_u0000_text_is_fine() -> None:
    """The literal text \\u0000 (an escaped backslash) is storable and stored."""
    reading = only_reading(b'{"power": 1, "tag": "\\\\u0000", "timestamp": 1795910430}')
    assert orjson.loads(reading.dados) == {"power": 1, "tag": "\\u0000", "timestamp": 1795910430}


def test_deep_nesting() -> None:
    """Nesting orjson reads but cannot write is unstorable; deeper still is invalid JSON."""
    assert reject_code(b'{"a":' * 300 + b"1" + b"}" * 300) == REASON_UNSTORABLE
    assert reject_code(b'{"a":' * 1100 + b"1" + b"}" * 1100) == REASON_INVALID_JSON


def test_reason_detail_is_bounded_and_has_no_nul() -> None:
    """A huge or binary offending value never makes a huge reason or one holding NUL."""
    for bad in ("x" * 10_000, "28/11/2026\x0021:00:30"):
        # The offending field's name is in the detail: a number beyond the bound.
        [reject] = decode({"power": {"active_total": 1, bad: 1e300}}).rejects
        assert len(reject.reason) <= len("number_out_of_range") + 2 + MAX_DETAIL_CHARS
        assert "\x00" not in reject.reason


# --- M-160 summary (the rules themselves: tests/unit/test_m160.py) ---------------------------


def test_unwrapped_m160_decodes_like_wrapped() -> None:
    """The same summary at the top level gives exactly the wrapped form's row."""
    wrapped = only_reading(fixture("m160_resumo.json"), M160_EQUIPMENT)
    unwrapped = only_reading(resumo(), M160_EQUIPMENT)
    assert unwrapped == wrapped


@pytest.mark.parametrize("key", ["Resumo", "Va", "consumo_phf"])
def test_m160_is_recognised_by_its_keys(key: str) -> None:
    """`Resumo` (an object), or an unwrapped `Va`/`consumo_phf`: the M-160 shapes."""
    obj: dict[str, object] = {key: {} if key == "Resumo" else 1.0}
    assert M160SummaryFamily().matches(obj)
    assert not M160SummaryFamily().matches({"power": 1})


@pytest.mark.parametrize("value", ["text", None, [1], 3, True])
def test_resumo_that_is_not_an_object(value: object) -> None:
    """On an M-160, a `Resumo` that is not an object (null included) and no top-level
    Va / consumo_phf: DOMAIN v2 `m160_unknown_format`."""
    payload = {"Resumo": value, "timestamp": 1795910430}
    assert reject_code(payload, M160_EQUIPMENT) == "m160_unknown_format"


def test_m160_timestamp_falls_back_to_envelope() -> None:
    """Without Resumo.timestamp, the envelope's timestamp dates the row; dados is the
    Resumo object as sent (DOMAIN v2)."""
    summary = resumo()
    del summary["timestamp"]
    reading = only_reading({"timestamp": 1795910430000, "Resumo": summary}, M160_EQUIPMENT)
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert orjson.loads(reading.dados) == summary


def test_m160_null_resumo_timestamp_falls_back_too() -> None:
    """A null Resumo.timestamp counts as absent."""
    payload = {"timestamp": 1795910430, "Resumo": {"timestamp": None, "Va": 1.0}}
    reading = only_reading(payload, M160_EQUIPMENT)
    assert reading.timestamp_dados == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert reading.matchable is True


def test_m160_without_any_timestamp_uses_arrival() -> None:
    """No timestamp anywhere: arrival time, unmatchable."""
    reading = only_reading({"Resumo": {"Va": 220.0}}, M160_EQUIPMENT)
    assert (reading.timestamp_dados, reading.matchable) == (RECEIVED, False)


def test_m160_dados_is_the_resumo_object() -> None:
    """DOMAIN v2: dados = the Resumo object; envelope fields beside it are not kept."""
    reading = only_reading({"device": "m1", "Va": 0, "Resumo": {"Va": 220.0}}, M160_EQUIPMENT)
    assert orjson.loads(reading.dados) == {"Va": 220.0, "_timestamp_motivo": "ausente"}


def test_m160_without_energy_or_count() -> None:
    """No consumo_phf, energia_total nor Pt: energy and power NULL; no total_leituras: 1."""
    reading = only_reading({"Resumo": {"Va": 220.0, "energia_total": None}}, M160_EQUIPMENT)
    assert (reading.energia_kwh, reading.potencia_ativa_kw, reading.num_leituras) == (
        None,
        None,
        1,
    )


def test_m160_integral_float_count() -> None:
    """total_leituras sent as 30.0 is the count 30; an int energy is a float kWh."""
    payload = {"Resumo": {"Va": 1.0, "total_leituras": 30.0, "energia_total": 1}}
    reading = only_reading(payload, M160_EQUIPMENT)
    assert reading.num_leituras == 30
    assert reading.energia_kwh == 1.0
    assert reading.potencia_ativa_kw == 120.0  # no Pt: 1 / (30/3600)


@pytest.mark.parametrize(
    "fields",
    [
        {"energia_total": "0.06"},
        {"energia_total": True},
        {"energia_total": [0.06]},
        {"total_leituras": 2.5},
        {"total_leituras": -1},
        {"total_leituras": 2**31},
        {"total_leituras": "30"},
    ],
)
def test_m160_malformed_energy_or_count(fields: dict[str, object]) -> None:
    """Energy or count present but not a usable number rejects the summary."""
    payload = {"Resumo": {"Va": 220.0, **fields}}
    assert reject_code(payload, M160_EQUIPMENT) == REASON_INVALID_SUMMARY


# --- the family seam -------------------------------------------------------------------------


class MinuteFamily:
    """A stand-in stateful family: holds readings until flushed."""

    name = "minute"

    def __init__(self) -> None:
        self.held: list[Reading] = []

    def matches(self, obj: dict[str, object]) -> bool:
        return "minute" in obj

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        if obj["minute"] == "bad":
            raise DecodeError("invalid_minute", "bad minute")
        self.held.append(Reading(equipment.id, received_at, b"{}"))
        return []

    def flush(self, now: datetime) -> list[Reading]:
        held, self.held = self.held, []
        return held


def test_a_family_bug_becomes_a_reject() -> None:
    """An unexpected exception in a family is a decoder_error reject, never raised."""
    decoder = Decoder(max_payload_bytes=LIMIT, families=[BrokenFamily()])
    assert reject_code(b"{}", decoder=decoder) == REASON_DECODER_ERROR


def test_no_matching_family() -> None:
    """With a family list lacking a fallback, an unmatched object is rejected."""
    decoder = Decoder(max_payload_bytes=LIMIT, families=[MinuteFamily()])
    assert reject_code(b'{"power": 1}', decoder=decoder) == REASON_NO_FAMILY


def test_stateful_family_slots_in() -> None:
    """A family may hold a message's reading and release it on flush; its errors reject."""
    minute = MinuteFamily()
    decoder = Decoder(max_payload_bytes=LIMIT, families=[minute, GenericFamily()])
    held = decode(b'{"minute": 1}', decoder=decoder)
    assert held.readings == [] and held.rejects == []
    assert len(decode(b'{"power": 1}', decoder=decoder).readings) == 1  # fallback still works
    assert reject_code(b'{"minute": "bad"}', decoder=decoder) == "invalid_minute"
    assert [r.equipamento_id for r in decoder.flush(RECEIVED).readings] == ["eq-1"]
    assert decoder.flush(RECEIVED).readings == []


def test_default_decoders_do_not_share_families() -> None:
    """Each decoder gets its own family instances (state must not leak between them)."""
    first = Decoder(max_payload_bytes=LIMIT)
    second = Decoder(max_payload_bytes=LIMIT)
    assert [f.name for f in first.families] == [
        "m160_summary",
        "a966_gateway",
        "inverter",
        "generic",
    ]
    assert all(a is not b for a, b in zip(first.families, second.families, strict=True))
    assert first.flush(RECEIVED).readings == []


# --- properties ------------------------------------------------------------------------------


def check_outcome(decoded: Decoded, equipment: list[Equipment]) -> None:
    if decoded.rejects:
        assert decoded.readings == []
        assert len(decoded.rejects) == 1
        assert ": " in decoded.rejects[0].reason
        assert "\x00" not in decoded.rejects[0].reason
    else:
        assert [r.equipamento_id for r in decoded.readings] == [e.id for e in equipment]


@given(st.binary(max_size=300), st.integers(min_value=0, max_value=2))
def test_arbitrary_bytes_never_raise(payload: bytes, n_equipment: int) -> None:
    """Any bytes at all decode to readings or to exactly one reject."""
    equipment = [Equipment(f"eq-{i}", TOPIC) for i in range(n_equipment)]
    decoded = Decoder(max_payload_bytes=200).decode(TOPIC, payload, equipment, RECEIVED)
    check_outcome(decoded, equipment)


keys = st.sampled_from(
    ["timestamp", "Resumo", "Va", "Ia", "Pt", "consumo_phf", "energia_total", "total_leituras"]
) | st.text(max_size=8)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
    | st.sampled_from(["28/11/2026 21:00:30", "2026-11-28T21:00:30Z", "31/02/2026 25:61:00"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=6),
    max_leaves=20,
)


@given(json_values, st.integers(min_value=1, max_value=2))
def test_arbitrary_json_never_raises(value: object, n_equipment: int) -> None:
    """Any JSON document, of any family's shape, decodes to readings or one reject."""
    equipment = [Equipment(f"eq-{i}", TOPIC) for i in range(n_equipment)]
    decoded = decode(orjson.dumps(value), equipment)
    check_outcome(decoded, equipment)
    for reading in decoded.readings:
        assert reading.qualidade in ("bom", "parcial", "ruim")
        assert reading.timestamp_dados.tzinfo is not None
        assert isinstance(orjson.loads(reading.dados), dict)


def test_type_schema_makes_failing_readings_ruim_with_errors_kept() -> None:
    """A reading failing its type's mqtt_schema is `ruim` and keeps the errors in its JSON;
    a null or invalid schema counts as valid."""
    from aupus_ha.decoding.schemas import compile_schema

    schema = compile_schema('{"type": "object", "required": ["power"]}')
    decoder = Decoder(max_payload_bytes=LIMIT)
    good = decoder.decode("t", b'{"power": 1}', [Equipment("e", "t", None, schema)], RECEIVED)
    bad = decoder.decode("t", b'{"volts": 1}', [Equipment("e", "t", None, schema)], RECEIVED)
    assert good.readings[0].qualidade == "bom"
    assert bad.readings[0].qualidade == "ruim"
    assert "power" in orjson.loads(bad.readings[0].dados)["_validacao"][0]
    assert compile_schema('{"type": 12}') is None  # not a valid schema: no check
    assert compile_schema(None) is None


# --- memory ------------------------------------------------------------------------------------


def test_kept_dados_occupy_only_their_length() -> None:
    """A buffered reading's `dados` must not pin the encoder's working buffer: orjson's
    bytes carry a 4 KB+ allocation behind a short length, 13x the reading (a standby
    holding 50,000 readings held 200 MB more)."""
    payload = fixture("generic_reading.json")
    decoder = Decoder(max_payload_bytes=LIMIT)
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        kept = [decoder.decode(TOPIC, payload, EQUIPMENT, RECEIVED) for _ in range(500)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    dados = [d.readings[0].dados for d in kept]
    held = sum(
        stat.size_diff
        for stat in after.compare_to(before, "filename")
        if stat.traceback[0].filename.endswith("decoding.py")
    )
    per_reading = held / len(kept)
    assert per_reading < 3 * len(dados[0]) + 512, (per_reading, len(dados[0]))
