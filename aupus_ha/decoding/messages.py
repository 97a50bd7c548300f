"""One MQTT message → readings (one per equipment on the topic) or one reject.

`Decoder.decode` runs per message on the intake hot path and never raises. Its
checks, in order, each ending the message as a single `Reject` whose reason is
`"<code>: <short detail>"` (the code is one of the `REASON_*` constants):

1. size above `max_payload_bytes`: `payload_too_large` (the reject keeps the first
   `max_payload_bytes` bytes but the hash of the whole payload, so its key is the
   message's and `ingest_rejects` never holds more than the limit per row);
2. no equipment owns the topic: `unknown_topic`;
3. not UTF-8: `not_utf8`; not JSON: `invalid_json`; JSON but not an object:
   `not_an_object`;
4. each equipment on the topic gets its own family (DOMAIN v2 "Which family"): the
   first family that `owns` the equipment (decided by its type: code, category), else
   the first other family whose `matches` accepts the object (decided by the
   payload). A `DecodeError` or `TimestampError` ends that equipment's reading; the
   message then has one reject (the first refusal), and the equipment whose families
   accepted it keep their readings (several types may share a topic). Any other
   exception is a bug and becomes a `decoder_error` reject for the whole message
   instead of stopping the intake.

Families (`default_families`, in routing order):

* `m160.M160SummaryFamily` — owns equipment whose type code is `M-160`, `M160` or
  `METER_M160`: the M-160 summary (wrapped `Resumo` or flat TON/PD666): energy, power,
  count, the outlier guard (decided at flush time) and quality; its rules are in
  aupus_ha/decoding/m160.py.
* `gateway.GatewayFamily` — owns equipment whose type's category is `Gateway`: the
  A-966 pulse counts of a 15-minute bucket (raw-only filters, the phf glitch, energy,
  power and derived fields); its rules are in aupus_ha/decoding/gateway.py.
* `InverterFamily` — an object `power`: one sample of its minute's rollup.
* `GenericFamily` — the fallback for any other object, stored whole (re-encoded by
  orjson: whitespace dropped, a duplicated key keeps its last value). Its time is
  `ts`, else `timestamp` (no field of its own), like the inverter's.

A reading's time follows DOMAIN v2 "Time" (`timestamps.payload_time`: `ts`, the
family's own field, `timestamp`, in any form `parse_timestamp` accepts). When none is
usable (absent, `"sem_ntp"`, zero, malformed, before 2020, more than 15 minutes ahead)
the reading is stored, not rejected: the arrival time (`received_at`, aware UTC), the
row `matchable=False`, and `_timestamp_bruto` / `_timestamp_motivo` in its `dados`. The
type's `mqtt_schema` judges only readings of families chosen by the payload (inverter,
generic): a family that owns its equipment has DOMAIN's own quality rule.

Numbers that reach a computation or a numeric column must be finite and within
`MAX_ABS_NUMBER` (1e15) in magnitude, else the message is rejected as
`number_out_of_range` (naming the field): every numeric leaf the inverter rollup
averages (the groups in `rollup.MEAN_GROUPS`), and the M-160's `energia_total`. A
mean or sum of such values cannot overflow a double, and every double column holds
them. An inverter frame with a register read as UINT max (DOMAIN v2: `energy.total_yield`
4294967000 or ≥ 5e8, `energy.daily_yield` 6553.5, `info.output_type` or
`status.work_state` 65535, `info.device_type` "ffff", `power.active_total` ≥ 1e8) is
rejected as `inverter_overflow`. Numbers that only reach `dados` (jsonb stores exact
decimals) are kept as sent.

`dados` must be storable as `jsonb`: nesting deeper than orjson encodes (254) or a
string holding `\\u0000` (jsonb refuses it) is rejected as `unstorable_json`, so one
message can never fail a whole flush batch.

A stateful family (the per-minute inverter aggregation) fits the same protocol: its
`decode` may return no reading for a message and the finished minute later; if it
also has `flush(now)` (`FlushingFamily`), `Decoder.flush` collects what is due.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Final, Protocol, TypeGuard, runtime_checkable

import orjson

from aupus_ha import constants
from aupus_ha.decoding.fields import (
    MAX_ABS_NUMBER,
    REASON_INVALID_SUMMARY,
    REASON_NUMBER_OUT_OF_RANGE,
    REASON_UNSTORABLE,
    DecodeError,
    encode_dados,
)
from aupus_ha.decoding.gateway import GatewayFamily
from aupus_ha.decoding.m160 import M160SummaryFamily
from aupus_ha.decoding.schemas import validation_errors
from aupus_ha.decoding.timestamps import TimestampError, payload_time
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading, Reject

# What the families share lives in `fields` (they import it, and this module imports
# them: no cycle); it is re-exported here, where callers have always found it.
__all__ = [
    "MAX_ABS_NUMBER",
    "MAX_DETAIL_CHARS",
    "REASON_DECODER_ERROR",
    "REASON_INVALID_JSON",
    "REASON_INVALID_SUMMARY",
    "REASON_INVERTER_OVERFLOW",
    "REASON_NOT_OBJECT",
    "REASON_NOT_UTF8",
    "REASON_NO_FAMILY",
    "REASON_NUMBER_OUT_OF_RANGE",
    "REASON_TOO_LARGE",
    "REASON_UNKNOWN_TOPIC",
    "REASON_UNSTORABLE",
    "DecodeError",
    "Decoder",
    "EquipmentFamily",
    "Family",
    "FlushingFamily",
    "GenericFamily",
    "InverterFamily",
    "default_families",
    "encode_dados",
]

REASON_TOO_LARGE: Final = "payload_too_large"
REASON_UNKNOWN_TOPIC: Final = "unknown_topic"
REASON_NOT_UTF8: Final = "not_utf8"
REASON_INVALID_JSON: Final = "invalid_json"
REASON_NOT_OBJECT: Final = "not_an_object"
REASON_NO_FAMILY: Final = "no_family"  # only with a family list lacking a fallback
REASON_INVERTER_OVERFLOW: Final = "inverter_overflow"
REASON_DECODER_ERROR: Final = "decoder_error"

MAX_DETAIL_CHARS: Final = 160

# DOMAIN v2, "Overflow frames": an inverter register read as UINT max (2^32, 2^16/10,
# 65535, "ffff") or beyond any plant. (group, field, is it the signature?)
_OVERFLOW_SIGNATURES: Final[tuple[tuple[str, str, Callable[[object], bool]], ...]] = (
    ("energy", "total_yield", lambda v: v == 4294967000 or _at_least(v, 5e8)),
    ("energy", "daily_yield", lambda v: v == 6553.5),
    ("info", "output_type", lambda v: v == 65535),
    ("status", "work_state", lambda v: v == 65535),
    ("info", "device_type", lambda v: v == "ffff"),
    ("power", "active_total", lambda v: _at_least(v, 1e8)),
)
_JSON_KINDS: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "a boolean",
    type(None): "null",
}


class Family(Protocol):
    """One payload shape. `decode` raises `DecodeError`/`TimestampError` for bad content."""

    name: str

    def matches(self, obj: dict[str, object]) -> bool: ...

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]: ...


@runtime_checkable
class FlushingFamily(Family, Protocol):
    """A stateful family that can also release readings on a timer (e.g. a closed minute)."""

    def flush(self, now: datetime) -> list[Reading]: ...


@runtime_checkable
class EquipmentFamily(Family, Protocol):
    """A family chosen by the equipment's type, never by the payload's shape alone (its
    `matches` only describes the shape, for tools)."""

    def owns(self, equipment: Equipment) -> bool: ...


class GenericFamily:
    """Any JSON object, stored as sent; the fallback family."""

    name = "generic"

    def matches(self, obj: dict[str, object]) -> bool:
        return True

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        when = payload_time(obj, received_at)
        return [
            Reading(
                equipamento_id=equipment.id,
                timestamp_dados=when.at,
                dados=encode_dados(when.annotate(obj)),
                qualidade=constants.QUALITY_GOOD,
                fonte=constants.SOURCE_MQTT,
                matchable=when.from_device,
            )
        ]


class InverterFamily:
    """A solar inverter reading: one sample of its minute's rollup (see rollup.py)."""

    name = "inverter"

    def matches(self, obj: dict[str, object]) -> bool:
        power = obj.get("power")
        return isinstance(power, dict) and "active_total" in power

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        _check_averaged_numbers(obj)
        _check_overflow_frame(obj)
        when = payload_time(obj, received_at)
        minute = rollup.bucket_start(when.at)
        return [
            Reading(
                equipamento_id=equipment.id,
                timestamp_dados=minute,
                dados=encode_dados(when.annotate(obj)),
                qualidade=constants.QUALITY_GOOD,
                fonte=constants.SOURCE_MQTT,
                timestamp_fim=minute + rollup.BUCKET,
                matchable=when.from_device,
                sample_at=when.at,
            )
        ]


def default_families() -> list[Family]:
    """Fresh instances in routing order (stateful families must not share state between
    decoders): the equipment-owned families first, the payload ones after, generic last."""
    return [M160SummaryFamily(), GatewayFamily(), InverterFamily(), GenericFamily()]


class Decoder:
    """Turns (topic, payload) into a `Decoded`; see the module docstring for the rules."""

    __slots__ = ("_by_equipment", "_by_payload", "_flushing", "families", "max_payload_bytes")

    def __init__(self, *, max_payload_bytes: int, families: Sequence[Family] | None = None) -> None:
        if max_payload_bytes <= 0:
            raise ValueError("max_payload_bytes must be positive")
        self.max_payload_bytes = max_payload_bytes
        self.families: tuple[Family, ...] = tuple(
            default_families() if families is None else families
        )
        self._flushing = tuple(f for f in self.families if isinstance(f, FlushingFamily))
        self._by_equipment = tuple(f for f in self.families if isinstance(f, EquipmentFamily))
        self._by_payload = tuple(f for f in self.families if not isinstance(f, EquipmentFamily))

    def decode(
        self,
        topic: str,
        payload: bytes,
        equipment: Sequence[Equipment],
        received_at: datetime,
    ) -> Decoded:
        """Readings for every equipment on `topic` whose family accepts the message, and
        one reject if any refused it. Never raises."""
        try:
            return self._decode(topic, payload, equipment, received_at)
        except Exception as exc:  # a bug in a family must not stop the intake
            detail = f"{type(exc).__name__}: {exc}"
            return _reject(topic, payload, received_at, REASON_DECODER_ERROR, detail)

    def flush(self, now: datetime) -> Decoded:
        """Readings that stateful families release on time alone (none for stateless ones)."""
        return Decoded([r for family in self._flushing for r in family.flush(now)])

    def _decode(
        self,
        topic: str,
        payload: bytes,
        equipment: Sequence[Equipment],
        received_at: datetime,
    ) -> Decoded:
        if len(payload) > self.max_payload_bytes:
            return _too_large(topic, payload, received_at, self.max_payload_bytes)
        if not equipment:
            detail = "no enabled equipment has this topic"
            return _reject(topic, payload, received_at, REASON_UNKNOWN_TOPIC, detail)
        try:
            obj = _load_object(payload)
        except DecodeError as exc:
            return _reject(topic, payload, received_at, exc.reason, exc.message)
        readings: list[Reading] = []
        refusal: DecodeError | TimestampError | None = None
        for item in equipment:
            try:
                readings += self._readings_for(item, obj, received_at)
            except (DecodeError, TimestampError) as exc:
                refusal = refusal or exc
        if refusal is None:
            return Decoded(readings)
        # One reject per message (its key is the topic and the payload's hash).
        decoded = _reject(topic, payload, received_at, refusal.reason, refusal.message)
        decoded.readings = readings
        return decoded

    def _readings_for(
        self, equipment: Equipment, obj: dict[str, object], received_at: datetime
    ) -> list[Reading]:
        for owner in self._by_equipment:
            if owner.owns(equipment):
                return owner.decode(obj, equipment, received_at)  # DOMAIN's own quality
        for family in self._by_payload:
            if family.matches(obj):
                decoded = family.decode(obj, equipment, received_at)
                return [_checked(r, obj, equipment) for r in decoded]
        raise DecodeError(REASON_NO_FAMILY, "no family matches the object")


def _checked(reading: Reading, obj: dict[str, object], equipment: Equipment) -> Reading:
    """Apply the equipment type's `mqtt_schema`: a failing reading is `ruim`, and its
    validation errors are kept in the stored JSON (a rollup sample is only marked)."""
    errors = validation_errors(equipment.mqtt_schema, obj)
    if not errors:
        return reading
    if reading.is_rollup_sample:
        return replace(reading, qualidade=constants.QUALITY_BAD)
    dados = orjson.loads(reading.dados)
    dados["_validacao"] = errors
    return replace(reading, qualidade=constants.QUALITY_BAD, dados=encode_dados(dados))


def _load_object(payload: bytes) -> dict[str, object]:
    try:
        obj = orjson.loads(payload)  # validates UTF-8 itself: no decode() on the hot path
    except orjson.JSONDecodeError as exc:
        raise DecodeError(*_json_failure(payload, exc)) from None
    if type(obj) is not dict:
        kind = _JSON_KINDS.get(type(obj), "unknown")
        raise DecodeError(REASON_NOT_OBJECT, f"top-level JSON is {kind}")
    return obj


def _is_number(value: object) -> TypeGuard[int | float]:
    # type(), not isinstance: JSON true/false must not count as 1/0.
    return type(value) is float or type(value) is int


def _check_averaged_numbers(obj: dict[str, object]) -> None:
    """Every number the rollup averages must be finite and within MAX_ABS_NUMBER."""
    for group in rollup.MEAN_GROUPS:
        values = obj.get(group)
        if isinstance(values, dict):
            for name, value in values.items():
                if _is_number(value):
                    _check_magnitude(f"{group}.{name}", value)


def _check_overflow_frame(obj: dict[str, object]) -> None:
    """A frame with an overflowed register is refused whole (DOMAIN v2)."""
    for group, field, is_signature in _OVERFLOW_SIGNATURES:
        values = obj.get(group)
        if isinstance(values, dict) and field in values and is_signature(values[field]):
            raise DecodeError(
                REASON_INVERTER_OVERFLOW, f"{group}.{field} is {values[field]!r}: a UINT overflow"
            )


def _at_least(value: object, bound: float) -> bool:
    return _is_number(value) and value >= bound


def _check_magnitude(field: str, value: float) -> None:
    if not (math.isfinite(value) and abs(value) <= MAX_ABS_NUMBER):
        raise DecodeError(
            REASON_NUMBER_OUT_OF_RANGE, f"{field} is {value!r}, beyond ±{MAX_ABS_NUMBER:g}"
        )


def _json_failure(payload: bytes, exc: orjson.JSONDecodeError) -> tuple[str, str]:
    # Only on the error path: tell bad encoding apart from bad syntax.
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError as err:
        return REASON_NOT_UTF8, str(err)
    return REASON_INVALID_JSON, str(exc)


def _too_large(topic: str, payload: bytes, received_at: datetime, limit: int) -> Decoded:
    digest = hashlib.sha256(payload).hexdigest()  # the whole message's identity
    reason = _reason(REASON_TOO_LARGE, f"{len(payload)} bytes > limit {limit}")
    kept = payload[:limit]
    return Decoded(rejects=[Reject(topic, kept, reason, received_at, digest, len(payload))])


def _reject(topic: str, payload: bytes, received_at: datetime, code: str, detail: str) -> Decoded:
    return Decoded(rejects=[Reject(topic, payload, _reason(code, detail), received_at)])


def _reason(code: str, detail: str) -> str:
    if len(detail) > MAX_DETAIL_CHARS:
        detail = detail[: MAX_DETAIL_CHARS - 1] + "…"
    # The reason goes into a text column, which cannot hold NUL.
    return f"{code}: {detail}".replace("\x00", "\\x00")
