"""Boundary tables for the decoder, built from the real fixtures: which rule fired (the
reason code and its detail), not only that a message was refused.

Why a module of its own: these tables pin the edges mutation testing found unpinned
(docs/testing.md): NUL at every depth, the M-160 count's integer range, the 160-character
reason bound, and the inverter sample in full.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from aupus_ha.decoding.messages import MAX_DETAIL_CHARS, DecodeError, Decoder, GenericFamily
from aupus_ha.decoding.schemas import compile_schema
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading, Reject
from tests.helpers import BrokenFamily, fixture_object

TOPIC = "STA_BRANCA/GO/SOLAR_POWER/UFV05/INVERSOR/1"
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
PLAIN = Equipment("eq-1", TOPIC)
M160 = Equipment("eq-1", TOPIC, type_code="M-160")
GATEWAY = Equipment("eq-1", TOPIC, type_category="Gateway")
UNSTORABLE = "unstorable_json: a string holds \\u0000, which jsonb refuses"


def decode(obj: dict[str, object], equipment: Equipment = PLAIN) -> Decoded:
    payload = orjson.dumps(obj)
    return Decoder(max_payload_bytes=64 * 1024).decode(TOPIC, payload, [equipment], RECEIVED)


def only_reason(obj: dict[str, object], equipment: Equipment = PLAIN) -> str:
    decoded = decode(obj, equipment)
    assert decoded.readings == []
    [reject] = decoded.rejects
    return reject.reason


def only_reading(obj: dict[str, object], equipment: Equipment = PLAIN) -> Reading:
    decoded = decode(obj, equipment)
    assert decoded.rejects == []
    [reading] = decoded.readings
    return reading


# --- NUL at any depth --------------------------------------------------------------------------

# Where a NUL can hide in what is stored: (description, the value added to the stored object).
NUL_PLACES: list[tuple[str, str, object]] = [
    ("string", "tag", "a\x00b"),
    ("key", "a\x00", 1),
    ("array", "tags", ["ok", "a\x00b"]),
    ("array in an array", "grid", [[1, 2], ["x", "\x00"]]),
    ("nested object value", "meta", {"site": {"name": "\x00"}}),
    ("nested object key", "meta", {"site": {"n\x00": 1}}),
    ("object in an array", "events", [{"code": 1}, {"text": "x\x00"}]),
    ("key in an array", "events", [{"\x00": 1}]),
]
# The stored object of each family, from the real fixtures: (fixture, equipment, where the
# family's stored `dados` comes from: None = the payload, else the key of the stored part).
FAMILIES: list[tuple[str, Equipment, str | None]] = [
    ("inverter_reading.json", PLAIN, None),
    ("ton_inverter_sungrow.json", PLAIN, None),
    ("generic_reading.json", PLAIN, None),
    ("m160_resumo.json", M160, "Resumo"),
    ("m160_ton_flat.json", M160, None),
    ("a966_ssu_state.json", GATEWAY, None),
    ("a966_ssu_state.json", GATEWAY, "data"),  # data.x is read; the whole message is stored
]


def with_extra(name: str, part: str | None, key: str, value: object) -> dict[str, object]:
    obj = fixture_object(name)
    target = obj if part is None else obj[part]
    assert isinstance(target, dict)
    target[key] = value
    return obj


FAMILY_IDS = [f"{name}:{part or 'top'}" for name, _, part in FAMILIES]
NUL_IDS = [place for place, _, _ in NUL_PLACES]


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("nul", NUL_PLACES, ids=NUL_IDS)
def test_nul_anywhere_in_what_is_stored_is_one_unstorable_reject(
    family: tuple[str, Equipment, str | None], nul: tuple[str, str, object]
) -> None:
    """jsonb refuses \\u0000 at any depth: the message is rejected by the storability rule
    (never a reading that would fail its whole flush batch)."""
    name, equipment, part = family
    _, key, value = nul
    assert only_reason(with_extra(name, part, key, value), equipment) == UNSTORABLE


@pytest.mark.parametrize("family", FAMILIES, ids=FAMILY_IDS)
@pytest.mark.parametrize("nul", NUL_PLACES, ids=NUL_IDS)
def test_the_same_places_with_another_control_character_are_stored(
    family: tuple[str, Equipment, str | None], nul: tuple[str, str, object]
) -> None:
    """The control: U+0001 in the same places is storable, and stored as sent."""
    name, equipment, part = family
    _, key, value = nul
    soh_key = key.replace("\x00", "\x01")
    soh_value = orjson.loads(orjson.dumps(value).replace(b"\\u0000", b"\\u0001"))
    stored = orjson.loads(only_reading(with_extra(name, part, soh_key, soh_value), equipment).dados)
    # An M-160's dados is its Resumo; an A-966's is the whole message.
    container = stored["data"] if part == "data" else stored
    assert container[soh_key] == soh_value


def test_nul_in_an_m160_envelope_field_is_not_stored_so_not_refused() -> None:
    """A wrapped M-160 stores only its `Resumo`: a NUL beside it never reaches jsonb."""
    obj = fixture_object("m160_resumo.json")
    obj["device"] = ["m\x00"]
    assert "device" not in orjson.loads(only_reading(obj, M160).dados)


def test_escaped_backslash_before_u0000_in_an_array_is_text() -> None:
    """`\\\\u0000` (a backslash, then the text u0000) is not a NUL: stored."""
    obj = with_extra("inverter_reading.json", None, "tags", ["\\u0000", {"k": "\\u0000"}])
    assert orjson.loads(only_reading(obj).dados)["tags"] == ["\\u0000", {"k": "\\u0000"}]


# --- M-160 count: the integer column's range ---------------------------------------------------


@pytest.mark.parametrize(
    ("total", "expected"),
    [
        (0, 1),  # the legacy's `total_leituras || 1` (helper m160's decision): one reading
        (0.0, 1),
        (1, 1),
        (30, 30),
        (2**31 - 1, 2**31 - 1),  # the `integer` column's maximum
        (None, 1),  # null counts as absent
    ],
)
def test_total_leituras_stored(total: object, expected: int) -> None:
    """num_leituras from the real summary with each count at the edges of its range."""
    obj = fixture_object("m160_resumo.json")
    obj["Resumo"]["total_leituras"] = total  # type: ignore[index]
    assert only_reading(obj, M160).num_leituras == expected


@pytest.mark.parametrize(
    ("total", "reason"),
    [
        (2**31, "invalid_summary: total_leituras is not a count: 2147483648.0"),
        (-1, "invalid_summary: total_leituras is not a count: -1.0"),
        (2.5, "invalid_summary: total_leituras is not a count: 2.5"),
        ("30", "invalid_summary: total_leituras is a string, not a number"),
        (True, "invalid_summary: total_leituras is a boolean, not a number"),
        ([30], "invalid_summary: total_leituras is an array, not a number"),
        (1e300, "number_out_of_range: total_leituras is 1e+300, beyond ±1e+15"),
    ],
)
def test_total_leituras_refused(total: object, reason: str) -> None:
    """Beyond 2^31−1, negative, fractional or not a number: the summary is refused by its
    own rule, whose reason names the field and the value."""
    obj = fixture_object("m160_resumo.json")
    obj["Resumo"]["total_leituras"] = total  # type: ignore[index]
    assert only_reason(obj, M160) == reason


# --- the reason's 160-character detail ---------------------------------------------------------

DETAIL_SUFFIX = " is 1e+300, beyond ±1e+15"


def out_of_range_detail(length: int) -> tuple[dict[str, object], str]:
    """The inverter fixture with one power value beyond the bound, its field named so the
    detail (`power.<name> is 1e+300, beyond ±1e+15`) has exactly `length` characters."""
    name = "x" * (length - len("power.") - len(DETAIL_SUFFIX))
    return with_extra("inverter_reading.json", None, "power", {"active_total": 1, name: 1e300}), (
        f"power.{name}{DETAIL_SUFFIX}"
    )


def test_a_160_character_detail_is_kept_whole() -> None:
    obj, detail = out_of_range_detail(MAX_DETAIL_CHARS)
    assert len(detail) == 160
    assert only_reason(obj) == f"number_out_of_range: {detail}"


def test_a_161_character_detail_is_cut_to_160_with_an_ellipsis() -> None:
    obj, detail = out_of_range_detail(MAX_DETAIL_CHARS + 1)
    reason = only_reason(obj)
    assert reason == f"number_out_of_range: {detail[:159]}…"
    assert len(reason.partition(": ")[2]) == 160


def test_a_nul_in_the_detail_is_escaped_after_the_cut() -> None:
    """The reason goes into a text column: a NUL is written as the text \\x00."""
    obj = with_extra("inverter_reading.json", None, "power", {"active_total": 1, "a\x00": 1e300})
    assert only_reason(obj) == f"number_out_of_range: power.a\\x00{DETAIL_SUFFIX}"


# --- inverter samples in full ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "instant"),
    [
        ("inverter_reading.json", datetime(2025, 11, 29, 0, 1, tzinfo=UTC)),  # 1764374460
        ("ton_inverter_sungrow.json", datetime(2026, 11, 29, 0, 1, tzinfo=UTC)),  # 1795910460
    ],
)
def test_inverter_sample_in_full(name: str, instant: datetime) -> None:
    """Every field of an inverter sample: its minute, the minute's end, its own instant,
    the payload as sent, good, from MQTT, matchable, no columns of its own."""
    obj = fixture_object(name)
    assert only_reading(obj) == Reading(
        equipamento_id="eq-1",
        timestamp_dados=instant,
        dados=orjson.dumps(obj),
        qualidade="bom",
        fonte="MQTT",
        energia_kwh=None,
        potencia_ativa_kw=None,
        num_leituras=None,
        timestamp_fim=instant + timedelta(minutes=1),
        matchable=True,
        sample_at=instant,
        outlier_guard=False,
    )


def test_inverter_sample_failing_its_schema_is_ruim_and_unchanged() -> None:
    """A sample failing its type's `mqtt_schema` is marked `ruim` (the rollup counts it in
    `invalid_samples`); its JSON is the sample as sent (no `_validacao` in a sample)."""
    obj = fixture_object("ton_inverter_sungrow.json")
    schema = compile_schema('{"type": "object", "required": ["serial_number"]}')
    typed = Equipment("eq-1", TOPIC, type_code="INVERSOR", mqtt_schema=schema)
    instant = datetime(2026, 11, 29, 0, 1, tzinfo=UTC)
    assert only_reading(obj, typed) == Reading(
        equipamento_id="eq-1",
        timestamp_dados=instant,
        dados=orjson.dumps(obj),
        qualidade="ruim",
        fonte="MQTT",
        timestamp_fim=instant + timedelta(minutes=1),
        matchable=True,
        sample_at=instant,
    )
    passing = compile_schema('{"type": "object", "required": ["inverter_id"]}')
    valid = Equipment("eq-1", TOPIC, type_code="INVERSOR", mqtt_schema=passing)
    assert only_reading(obj, valid).qualidade == "bom"


def test_inverter_sample_without_a_clock_is_timed_by_arrival() -> None:
    """ton_inverter_no_ntp.json (`timestamp` 4187 s since boot): the arrival instant, its
    minute, unmatchable, and the raw value and the reason kept in the sample."""
    obj = fixture_object("ton_inverter_no_ntp.json")
    arrival_minute = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
    assert only_reading(obj) == Reading(
        equipamento_id="eq-1",
        timestamp_dados=arrival_minute,
        dados=orjson.dumps({**obj, "_timestamp_bruto": 4187, "_timestamp_motivo": "antes_de_2020"}),
        qualidade="bom",
        fonte="MQTT",
        timestamp_fim=arrival_minute + timedelta(minutes=1),
        matchable=False,
        sample_at=RECEIVED,
    )


@pytest.mark.parametrize(
    ("group", "field", "value", "reason"),
    [
        ("energy", "total_yield", 4294967000, "energy.total_yield is 4294967000"),
        ("energy", "total_yield", 5e8, "energy.total_yield is 500000000.0"),
        ("energy", "daily_yield", 6553.5, "energy.daily_yield is 6553.5"),
        ("info", "output_type", 65535, "info.output_type is 65535"),
        ("status", "work_state", 65535, "status.work_state is 65535"),
        ("info", "device_type", "ffff", "info.device_type is 'ffff'"),
        ("power", "active_total", 1e8, "power.active_total is 100000000.0"),
    ],
)
def test_each_overflow_signature_alone(group: str, field: str, value: object, reason: str) -> None:
    """Each UINT-overflow signature of inverter_uint_overflow.json, alone in an otherwise
    valid frame, refuses it by the overflow rule, naming the register."""
    obj = fixture_object("ton_inverter_sungrow.json")
    values = obj[group]
    assert isinstance(values, dict)
    values[field] = value
    assert only_reason(obj) == f"inverter_overflow: {reason}: a UINT overflow"


@pytest.mark.parametrize(
    ("group", "field", "value"),
    [
        ("energy", "total_yield", 499_999_999.9),  # just below 5e8
        ("energy", "daily_yield", 6553.4),
        ("info", "output_type", 65534),
        ("status", "work_state", 65534),
        ("info", "device_type", "fffe"),
        ("power", "active_total", 99_999_999.9),  # just below 1e8
        ("energy", "total_yield", "4294967000"),  # text is not a register read
    ],
)
def test_values_just_short_of_an_overflow_signature_are_stored(
    group: str, field: str, value: object
) -> None:
    obj = fixture_object("ton_inverter_sungrow.json")
    values = obj[group]
    assert isinstance(values, dict)
    values[field] = value
    assert orjson.loads(only_reading(obj).dados)[group][field] == value


def test_the_overflow_fixture_is_refused_by_its_first_signature() -> None:
    """inverter_uint_overflow.json carries every signature; the first in DOMAIN's order
    (energy.total_yield) names it."""
    reason = only_reason(fixture_object("inverter_uint_overflow.json"))
    assert reason == "inverter_overflow: energy.total_yield is 4294967000: a UINT overflow"


# --- every reject in full: the topic, the payload, the reason text, the arrival ---------------

PAYLOAD_LIMIT = 64 * 1024


def reject_of(
    payload: bytes, equipment: list[Equipment] | None = None, decoder: Decoder | None = None
) -> Reject:
    decoder = decoder or Decoder(max_payload_bytes=PAYLOAD_LIMIT)
    decoded = decoder.decode(TOPIC, payload, [PLAIN] if equipment is None else equipment, RECEIVED)
    assert decoded.readings == []
    [reject] = decoded.rejects
    return reject


def test_too_large_reject_in_full() -> None:
    """The first `limit` bytes, the whole message's hash and size, the rule and the sizes."""
    payload = orjson.dumps(fixture_object("ton_inverter_sungrow.json"))
    limit = 100
    reject = reject_of(payload, decoder=Decoder(max_payload_bytes=limit))
    assert reject == Reject(
        topic=TOPIC,
        payload=payload[:limit],
        reason=f"payload_too_large: {len(payload)} bytes > limit {limit}",
        received_at=RECEIVED,
        payload_sha256=hashlib.sha256(payload).hexdigest(),
        payload_bytes=len(payload),
    )


def test_a_one_byte_limit_is_a_valid_limit() -> None:
    """Any positive limit works (1 byte: `1` is decoded, and is not an object)."""
    reject = reject_of(b"1", decoder=Decoder(max_payload_bytes=1))
    assert reject.reason == "not_an_object: top-level JSON is a number"
    with pytest.raises(ValueError, match=r"^max_payload_bytes must be positive$"):
        Decoder(max_payload_bytes=0)


def test_unknown_topic_reject_in_full() -> None:
    payload = orjson.dumps(fixture_object("generic_reading.json"))
    assert reject_of(payload, equipment=[]) == Reject(
        TOPIC, payload, "unknown_topic: no enabled equipment has this topic", RECEIVED
    )


def test_not_utf8_and_invalid_json_details_are_the_parsers_words() -> None:
    """The detail is what the UTF-8 decoder or the JSON parser said, not a placeholder."""
    latin1 = b'{"a": "caf\xe9"}'
    assert reject_of(latin1).reason == (
        "not_utf8: 'utf-8' codec can't decode byte 0xe9 in position 10: invalid continuation byte"
    )
    with pytest.raises(orjson.JSONDecodeError) as parser:
        orjson.loads(b"not json")
    assert reject_of(b"not json").reason == f"invalid_json: {parser.value}"


def test_too_deep_detail_is_the_encoders_words() -> None:
    deep: object = 1
    for _ in range(300):
        deep = {"a": deep}
    with pytest.raises(orjson.JSONEncodeError) as encoder:
        orjson.dumps(deep)
    payload = b'{"a":' * 300 + b"1" + b"}" * 300
    assert reject_of(payload).reason == f"unstorable_json: {encoder.value}"


def test_decode_error_message_is_its_text() -> None:
    """DecodeError is a ValueError whose text is its message (logs print it)."""
    error = DecodeError("invalid_minute", "bad minute")
    assert (str(error), error.reason, error.message) == (
        "bad minute",
        "invalid_minute",
        "bad minute",
    )


class _Clock:
    """A stateful family that records the time it is flushed at."""

    name = "clock"

    def __init__(self) -> None:
        self.flushed_at: list[datetime] = []

    def matches(self, obj: dict[str, object]) -> bool:
        return False

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        return []

    def flush(self, now: datetime) -> list[Reading]:
        self.flushed_at.append(now)
        return [Reading("eq-1", now, b"{}")]


def test_decoder_error_reject_in_full() -> None:
    """A bug in a family: one reject naming the exception, for this topic and arrival."""
    payload = b"{}"
    reject = reject_of(
        payload, decoder=Decoder(max_payload_bytes=PAYLOAD_LIMIT, families=[BrokenFamily()])
    )
    assert reject == Reject(TOPIC, payload, "decoder_error: RuntimeError: boom", RECEIVED)


def test_no_family_reject_in_full() -> None:
    decoder = Decoder(max_payload_bytes=PAYLOAD_LIMIT, families=[_Clock()])
    assert reject_of(b"{}", decoder=decoder).reason == "no_family: no family matches the object"


def test_flush_hands_the_time_to_the_stateful_families() -> None:
    clock = _Clock()
    decoder = Decoder(max_payload_bytes=PAYLOAD_LIMIT, families=[clock, GenericFamily()])
    assert decoder.flush(RECEIVED).readings == [Reading("eq-1", RECEIVED, b"{}")]
    assert clock.flushed_at == [RECEIVED]


# --- which numbers the magnitude and overflow rules look at -----------------------------------


def test_an_integer_beyond_the_bound_is_out_of_range() -> None:
    """JSON integers are numbers too (10^16 W is beyond ±1e15)."""
    obj = with_extra("inverter_reading.json", None, "dc", {"total_power": 10**16})
    assert only_reason(obj) == (
        "number_out_of_range: dc.total_power is 10000000000000000, beyond ±1e+15"
    )


def test_an_integer_overflow_register_is_refused() -> None:
    obj = fixture_object("ton_inverter_sungrow.json")
    obj["power"]["active_total"] = 100_000_000  # type: ignore[index]
    assert only_reason(obj) == (
        "inverter_overflow: power.active_total is 100000000: a UINT overflow"
    )


def test_text_and_booleans_in_averaged_groups_are_stored_not_checked() -> None:
    """Only numbers are bounded: a unit text, a flag or null beside them is kept as sent."""
    extra = {"active_total": 41250, "unit": "W", "limited": True, "spare": None}
    obj = with_extra("inverter_reading.json", None, "power", extra)
    assert orjson.loads(only_reading(obj).dados)["power"] == extra
