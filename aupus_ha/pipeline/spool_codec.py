"""Spool record bodies: one decoded MQTT message (its readings and rejects) as JSON.

Readings are stored as decoded, before the database's key convention is applied, so a
replay applies the convention of the database it finds (the same one in practice).
`dados` is kept as the exact bytes the decoder produced (a JSON string in the record), so
a replayed row is byte-identical to the one that would have been written first time.

`decode` trusts nothing: a record read back from disk may have been written by another
version, damaged in a way its checksum did not catch, or forged by someone who could
write the directory. Every field is checked for its type (and timestamps for a time
zone, numbers for being finite, `dados` for being a JSON object) before anything is
built, and any problem is one `ValueError`: the replay skips that record, counts and
logs it, and goes on with the next one.

Compatibility: format 1 as written by every version so far. A reject may carry a sixth
field (the whole message's size, when its payload is a prefix); a reader that knows five
fields ignores it, and a five-field reject reads as a whole payload. A reading may carry
a twelfth field, `true`, only when it is an M-160 outlier the flush must still decide
(`Reading.outlier_guard`, m160.py); an eleven-field reading is not one. A version that
knows eleven fields skips such a record as bad (a rollback loses those rare readings).
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import datetime
from typing import Any

import orjson

from aupus_ha import constants
from aupus_ha.pipeline.readings import Decoded, Reading, Reject

FORMAT_VERSION = 1
READING_FIELDS = (11, 12)
REJECT_FIELDS = (5, 6)


def encode(decoded: Decoded) -> bytes:
    return orjson.dumps(
        {
            "v": FORMAT_VERSION,
            "r": [_reading_fields(r) for r in decoded.readings],
            "j": [_reject_fields(j) for j in decoded.rejects],
        }
    )


def _is_version(value: object) -> bool:
    # `True == 1` and `1.0 == 1` in Python: only the integer itself names the format.
    return type(value) is int and value == FORMAT_VERSION


def decode(body: bytes) -> Decoded:
    """The message back; raises ValueError for any body this version cannot trust."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or not _is_version(data.get("v")):
        raise ValueError("unknown spool record format")
    readings, rejects = data.get("r"), data.get("j")
    if not isinstance(readings, list) or not isinstance(rejects, list):
        raise ValueError("'r' and 'j' must be lists")
    return Decoded(
        readings=[_reading_from(r) for r in readings],
        rejects=[_reject_from(j) for j in rejects],
    )


def _reading_fields(r: Reading) -> list[Any]:
    fields: list[Any] = [
        r.equipamento_id,
        r.timestamp_dados,
        r.dados.decode(),
        r.qualidade,
        r.fonte,
        r.energia_kwh,
        r.potencia_ativa_kw,
        r.num_leituras,
        r.timestamp_fim,
        r.matchable,
        r.sample_at,
    ]
    if r.outlier_guard:
        fields.append(True)
    return fields


def _reading_from(f: object) -> Reading:
    if not isinstance(f, list) or len(f) not in READING_FIELDS:
        raise ValueError(f"a reading must be a list of {READING_FIELDS} fields")
    if len(f) == 12 and f[11] is not True:
        raise ValueError("a reading's twelfth field (outlier_guard) must be true")
    quality = _text(f[3], "qualidade")
    if quality not in constants.QUALITY_LABELS:
        raise ValueError(f"qualidade {quality!r} is not one of {constants.QUALITY_LABELS}")
    return Reading(
        equipamento_id=_text(f[0], "equipamento_id", empty=False),
        timestamp_dados=_instant(f[1], "timestamp_dados"),
        dados=_json_object(f[2]),
        qualidade=quality,
        fonte=_text(f[4], "fonte"),
        energia_kwh=_optional_number(f[5], "energia_kwh"),
        potencia_ativa_kw=_optional_number(f[6], "potencia_ativa_kw"),
        num_leituras=_optional_count(f[7]),
        timestamp_fim=None if f[8] is None else _instant(f[8], "timestamp_fim"),
        matchable=_flag(f[9]),
        sample_at=None if f[10] is None else _instant(f[10], "sample_at"),
        outlier_guard=len(f) == 12,
    )


def _reject_fields(j: Reject) -> list[Any]:
    payload = base64.b64encode(j.payload).decode()
    fields: list[Any] = [j.topic, payload, j.reason, j.received_at, j.payload_sha256]
    if j.payload_bytes is not None:
        fields.append(j.payload_bytes)
    return fields


def _reject_from(f: object) -> Reject:
    if not isinstance(f, list) or len(f) not in REJECT_FIELDS:
        raise ValueError(f"a reject must be a list of {REJECT_FIELDS} fields")
    try:
        payload = base64.b64decode(_text(f[1], "payload"), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"payload is not base64: {exc}") from None
    digest = _text(f[4], "payload_sha256")
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError("payload_sha256 is not a hex SHA-256")
    size = f[5] if len(f) == 6 else None
    if size is not None and (not isinstance(size, int) or size < len(payload)):
        raise ValueError("payload_bytes must be an integer no smaller than the payload")
    return Reject(
        topic=_text(f[0], "topic"),
        payload=payload,
        reason=_text(f[2], "reason"),
        received_at=_instant(f[3], "received_at"),
        payload_sha256=digest,
        payload_bytes=size,
    )


# --- field checks: each raises ValueError naming the field ---------------------------------


def _text(value: object, name: str, *, empty: bool = True) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise ValueError(f"{name} must be a{'' if empty else ' non-empty'} string")
    return value


def _instant(value: object, name: str) -> datetime:
    at = datetime.fromisoformat(_text(value, name))
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"{name} has no time zone")
    return at


def _json_object(value: object) -> bytes:
    """`dados`: the decoder only ever produces a JSON object (jsonb-storable)."""
    encoded = _text(value, "dados").encode()
    if not isinstance(orjson.loads(encoded), dict):
        raise ValueError("dados is not a JSON object")
    return encoded


def _optional_number(value: object, name: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number or null")
    # Not bounded further: a previous version's decoder let larger values through, and
    # a record it acknowledged must still replay (the column stores them; the rollup
    # never averages values beyond its bound).
    return value


def _optional_count(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
        raise ValueError("num_leituras must be an integer in 0..2^31-1 or null")
    return value


def _flag(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("matchable must be a boolean")
    return value
