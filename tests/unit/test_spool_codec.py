"""The spool record codec, field by field (issue 15: mutation-tested contracts).

A replayed record must give back exactly the entry that was acknowledged: every field of
every record kind survives the round trip (the strategies set all of them, and fail when
`Reading` or `Reject` grows a field they do not set). A record this version cannot
trust is refused with one ValueError whose message names the field, because the replay
logs that message and an operator reads it. The previous version's records still
replay (rolling upgrade); test_spool_trust.py holds its body.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha import constants
from aupus_ha.pipeline import spool_codec
from aupus_ha.pipeline.readings import Decoded, Reading, Reject
from tests.unit.test_spool_trust import PREVIOUS_VERSION_BODY

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HEX = "0123456789abcdef"

# --- strategies that set every field ---------------------------------------------------

zones = st.builds(
    timezone, st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timedelta(minutes=m))
)
instants = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_objects = st.dictionaries(
    st.text(max_size=6),
    st.recursive(
        json_scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
        max_leaves=6,
    ),
    max_size=4,
).map(orjson.dumps)
numbers = (
    st.none() | st.integers(-(2**53), 2**53) | st.floats(allow_nan=False, allow_infinity=False)
)

READING_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "equipamento_id": st.text(min_size=1, max_size=20),
    "timestamp_dados": instants,
    "dados": json_objects,
    "qualidade": st.sampled_from(constants.QUALITY_LABELS),
    "fonte": st.text(max_size=12),
    "energia_kwh": numbers,
    "potencia_ativa_kw": numbers,
    "num_leituras": st.none() | st.integers(0, 2**31 - 1),
    "timestamp_fim": st.none() | instants,
    "matchable": st.booleans(),
    "sample_at": st.none() | instants,
    "outlier_guard": st.booleans(),
}
REJECT_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "topic": st.text(max_size=30),
    "payload": st.binary(max_size=100),
    "reason": st.text(max_size=30),
    "received_at": instants,
    # "" lets Reject compute the real digest; otherwise any well-formed one (a bounded
    # reject's digest is the whole message's, not its prefix's).
    "payload_sha256": st.just("") | st.text(HEX, min_size=64, max_size=64),
    "payload_bytes": st.none() | st.integers(0, 2**40),
}


@st.composite
def rejects(draw: st.DrawFn) -> Reject:
    reject = draw(st.builds(Reject, **REJECT_FIELDS))
    if reject.payload_bytes is not None and reject.payload_bytes < len(reject.payload):
        reject = dataclasses.replace(reject, payload_bytes=len(reject.payload))
    return reject


readings = st.builds(Reading, **READING_FIELDS)


def test_the_strategies_set_every_field() -> None:
    """A field added to Reading or Reject must be added here, so the round trip below
    covers it (and the codec learns to carry it)."""
    assert set(READING_FIELDS) == {f.name for f in dataclasses.fields(Reading)}
    assert set(REJECT_FIELDS) == {f.name for f in dataclasses.fields(Reject)}


@settings(max_examples=300, deadline=None)
@given(st.lists(readings, max_size=4), st.lists(rejects(), max_size=3))
def test_every_field_of_every_kind_round_trips(
    readings_in: list[Reading], rejects_in: list[Reject]
) -> None:
    """decode(encode(x)) == x, field for field, `dados` byte for byte."""
    back = spool_codec.decode(spool_codec.encode(Decoded(readings_in, rejects_in)))
    assert back.readings == readings_in
    assert [r.dados for r in back.readings] == [r.dados for r in readings_in]
    assert back.rejects == rejects_in


# --- the format on disk ------------------------------------------------------------------

FULL_READING = Reading(
    "eq-1",
    T0,
    b'{"a":1}',
    qualidade="parcial",
    fonte="GATEWAY",
    energia_kwh=1.5,
    potencia_ativa_kw=-2.25,
    num_leituras=2**31 - 1,
    timestamp_fim=T0 + timedelta(minutes=1),
    matchable=False,
    sample_at=T0 + timedelta(seconds=7),
    outlier_guard=True,
)
FULL_READING_BODY = (
    b'{"v":1,"r":[["eq-1","2026-03-01T12:00:00+00:00","{\\"a\\":1}","parcial","GATEWAY",'
    b'1.5,-2.25,2147483647,"2026-03-01T12:01:00+00:00",false,"2026-03-01T12:00:07+00:00",'
    b'true]],"j":[["t","eA==","why","2026-03-01T12:00:00+00:00","' + b"a" * 64 + b'",9]]}'
)


def test_the_record_format_is_pinned() -> None:
    """The bytes written today: what the next version must still read. A reading that
    is not an M-160 outlier has eleven fields, a whole-payload reject five."""
    reject = Reject("t", b"x", "why", T0, "a" * 64, payload_bytes=9)
    assert spool_codec.encode(Decoded([FULL_READING], [reject])) == FULL_READING_BODY
    plain = orjson.loads(spool_codec.encode(Decoded([Reading("e", T0, b"{}")], [])))
    assert plain == {
        "v": 1,
        "r": [["e", "2026-03-01T12:00:00+00:00", "{}", "bom", "MQTT"] + [None] * 4 + [True, None]],
        "j": [],
    }
    whole = orjson.loads(spool_codec.encode(Decoded(rejects=[Reject("t", b"x", "r", T0)])))
    assert len(whole["j"][0]) == 5


def test_the_previous_versions_record_gives_back_every_field() -> None:
    """Rolling upgrade: the body the previous commit wrote decodes to exactly the
    entries it held (all fields, not only the ones a replay looks at)."""
    decoded = spool_codec.decode(PREVIOUS_VERSION_BODY)
    assert decoded.readings == [
        Reading(
            "eq-1",
            T0,
            b'{"power":1000,"timestamp":"2026-03-01T12:00:00Z"}',
            energia_kwh=1.5,
            num_leituras=3,
        ),
        Reading(
            "inv-1",
            T0,
            b'{"power":{"active_total":5}}',
            timestamp_fim=T0 + timedelta(minutes=1),
            sample_at=T0 + timedelta(seconds=7),
        ),
    ]
    assert decoded.rejects == [
        Reject(
            "medidores/x",
            b"not json",
            "invalid_json: x",
            T0,
            "7ccfa1fbf3940e6f0c0375d87c0f9235a50514e14cb427bdfaf5077987b26ccf",
        )
    ]


# --- what is refused, and the message the replay logs ----------------------------------


def body(reading: list[Any] | None = None, reject: list[Any] | None = None) -> bytes:
    return orjson.dumps(
        {"v": 1, "r": [] if reading is None else [reading], "j": [] if reject is None else [reject]}
    )


def reading_with(index: int, value: object) -> bytes:
    fields = orjson.loads(spool_codec.encode(Decoded([FULL_READING])))["r"][0]
    fields[index] = value
    return body(reading=fields)


def reject_with(index: int, value: object, *, payload: str = "eHl6") -> bytes:
    fields: list[Any] = ["t", payload, "r", "2026-03-01T12:00:00+00:00", "0" * 64, 3]
    fields[index] = value
    return body(reject=fields)


REFUSED = {
    "version 2": (orjson.dumps({"v": 2, "r": [], "j": []}), "unknown spool record format"),
    "version 0": (orjson.dumps({"v": 0, "r": [], "j": []}), "unknown spool record format"),
    "no version": (orjson.dumps({"r": [], "j": []}), "unknown spool record format"),
    "version as text": (orjson.dumps({"v": "1", "r": [], "j": []}), "unknown spool record format"),
    "version as true": (orjson.dumps({"v": True, "r": [], "j": []}), "unknown spool record format"),
    "version as 1.0": (orjson.dumps({"v": 1.0, "r": [], "j": []}), "unknown spool record format"),
    "a list": (b"[1]", "unknown spool record format"),
    "not JSON": (b"{", "not JSON: "),
    "rejects not a list": (orjson.dumps({"v": 1, "r": [], "j": {}}), "'r' and 'j' must be lists"),
    "readings missing": (orjson.dumps({"v": 1, "j": []}), "'r' and 'j' must be lists"),
    "reading not a list": (
        b'{"v":1,"r":["x"],"j":[]}',
        "a reading must be a list of (11, 12) fields",
    ),
    "reading of 10": (body(reading=[0] * 10), "a reading must be a list of (11, 12) fields"),
    "reading of 13": (body(reading=[0] * 13), "a reading must be a list of (11, 12) fields"),
    "twelfth field false": (
        reading_with(11, False),
        "a reading's twelfth field (outlier_guard) must be true",
    ),
    "quality not text": (reading_with(3, 1), "qualidade must be a string"),
    "quality unknown": (
        reading_with(3, "BOM"),
        "qualidade 'BOM' is not one of ('bom', 'parcial', 'ruim')",
    ),
    "id empty": (reading_with(0, ""), "equipamento_id must be a non-empty string"),
    "id not text": (reading_with(0, 1), "equipamento_id must be a non-empty string"),
    "time not text": (reading_with(1, 1), "timestamp_dados must be a string"),
    "time without zone": (
        reading_with(1, "2026-03-01T12:00:00"),
        "timestamp_dados has no time zone",
    ),
    "dados not text": (reading_with(2, {}), "dados must be a string"),
    "dados a list": (reading_with(2, "[1]"), "dados is not a JSON object"),
    "fonte not text": (reading_with(4, None), "fonte must be a string"),
    "energy text": (reading_with(5, "1"), "energia_kwh must be a finite number or null"),
    "energy boolean": (reading_with(5, False), "energia_kwh must be a finite number or null"),
    "power text": (reading_with(6, "1"), "potencia_ativa_kw must be a finite number or null"),
    "count 2^31": (reading_with(7, 2**31), "num_leituras must be an integer in 0..2^31-1 or null"),
    "count -1": (reading_with(7, -1), "num_leituras must be an integer in 0..2^31-1 or null"),
    "count float": (reading_with(7, 1.0), "num_leituras must be an integer in 0..2^31-1 or null"),
    "count boolean": (
        reading_with(7, True),
        "num_leituras must be an integer in 0..2^31-1 or null",
    ),
    "end not text": (reading_with(8, 1), "timestamp_fim must be a string"),
    "end without zone": (reading_with(8, "2026-03-01T12:01:00"), "timestamp_fim has no time zone"),
    "matchable text": (reading_with(9, "true"), "matchable must be a boolean"),
    "sample not text": (reading_with(10, 1), "sample_at must be a string"),
    "sample without zone": (reading_with(10, "2026-03-01T12:00:07"), "sample_at has no time zone"),
    "reject not a list": (
        b'{"v":1,"r":[],"j":["abcde"]}',
        "a reject must be a list of (5, 6) fields",
    ),
    "reject of 4": (body(reject=["t", "", "r", "x"]), "a reject must be a list of (5, 6) fields"),
    "reject of 7": (body(reject=[0] * 7), "a reject must be a list of (5, 6) fields"),
    "topic not text": (reject_with(0, 1), "topic must be a string"),
    "payload not text": (reject_with(1, 1), "payload must be a string"),
    "payload not base64": (reject_with(1, "%%%"), "payload is not base64: "),
    "reason not text": (reject_with(2, 1), "reason must be a string"),
    "received not text": (reject_with(3, 1), "received_at must be a string"),
    "received without zone": (
        reject_with(3, "2026-03-01T12:00:00"),
        "received_at has no time zone",
    ),
    "digest not text": (reject_with(4, 1), "payload_sha256 must be a string"),
    "digest of 63": (reject_with(4, "0" * 63), "payload_sha256 is not a hex SHA-256"),
    "digest of 65": (reject_with(4, "0" * 65), "payload_sha256 is not a hex SHA-256"),
    "digest in capitals": (reject_with(4, "A" * 64), "payload_sha256 is not a hex SHA-256"),
    "digest of X": (reject_with(4, "X" * 64), "payload_sha256 is not a hex SHA-256"),
    "size below payload": (
        reject_with(5, 2),
        "payload_bytes must be an integer no smaller than the payload",
    ),
    "size a float": (
        reject_with(5, 1e9),
        "payload_bytes must be an integer no smaller than the payload",
    ),
    "size text": (
        reject_with(5, "9"),
        "payload_bytes must be an integer no smaller than the payload",
    ),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_a_bad_record_is_refused_naming_what_is_wrong(name: str) -> None:
    """One ValueError per bad record, whose message (logged by the replay) says which
    field and why."""
    data, message = REFUSED[name]
    with pytest.raises(ValueError) as refused:
        spool_codec.decode(data)
    assert str(refused.value).startswith(message)
    assert message.endswith(": ") or str(refused.value) == message


ACCEPTED_EDGES: dict[str, tuple[bytes, Callable[[Decoded], bool]]] = {
    "count 2^31-1": (reading_with(7, 2**31 - 1), lambda d: d.readings[0].num_leituras == 2**31 - 1),
    "count 0": (reading_with(7, 0), lambda d: d.readings[0].num_leituras == 0),
    "nulls": (
        body(reading=["e", "2026-03-01T12:00:00Z", "{}", "bom", "", *[None] * 4, True, None]),
        lambda d: d.readings[0].fonte == "" and d.readings[0].energia_kwh is None,
    ),
    "size equal to payload": (reject_with(5, 3), lambda d: d.rejects[0].payload_bytes == 3),
    "size absent": (
        body(reject=["t", "", "", "2026-03-01T12:00:00Z", HEX * 4]),
        lambda d: d.rejects[0].payload_bytes is None and d.rejects[0].reason == "",
    ),
    "energy an integer": (reading_with(5, 7), lambda d: d.readings[0].energia_kwh == 7),
}


@pytest.mark.parametrize("name", sorted(ACCEPTED_EDGES))
def test_the_edges_just_inside_are_accepted(name: str) -> None:
    """The other side of each bound above: still a good record."""
    data, check = ACCEPTED_EDGES[name]
    assert check(spool_codec.decode(data))
