"""Spool record bodies: one decoded MQTT message (its readings and rejects) as JSON.

Readings are stored as decoded, before the database's key convention is applied, so a
replay applies the convention of the database it finds (the same one in practice).
`dados` is kept as the exact bytes the decoder produced (a JSON string in the record), so
a replayed row is byte-identical to the one that would have been written first time.
"""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Any

import orjson

from aupus_ha.readings import Decoded, Reading, Reject

FORMAT_VERSION = 1


def encode(decoded: Decoded) -> bytes:
    return orjson.dumps(
        {
            "v": FORMAT_VERSION,
            "r": [_reading_fields(r) for r in decoded.readings],
            "j": [_reject_fields(j) for j in decoded.rejects],
        }
    )


def decode(body: bytes) -> Decoded:
    """The message back; raises ValueError for a body this version cannot read."""
    data = orjson.loads(body)
    if not isinstance(data, dict) or data.get("v") != FORMAT_VERSION:
        raise ValueError("unknown spool record format")
    return Decoded(
        readings=[_reading_from(r) for r in data["r"]],
        rejects=[_reject_from(j) for j in data["j"]],
    )


def _reading_fields(r: Reading) -> list[Any]:
    return [
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


def _reading_from(f: list[Any]) -> Reading:
    return Reading(
        equipamento_id=f[0],
        timestamp_dados=_instant(f[1]),
        dados=f[2].encode(),
        qualidade=f[3],
        fonte=f[4],
        energia_kwh=f[5],
        potencia_ativa_kw=f[6],
        num_leituras=f[7],
        timestamp_fim=_optional_instant(f[8]),
        matchable=f[9],
        sample_at=_optional_instant(f[10]),
    )


def _reject_fields(j: Reject) -> list[Any]:
    payload = base64.b64encode(j.payload).decode()
    return [j.topic, payload, j.reason, j.received_at, j.payload_sha256]


def _reject_from(f: list[Any]) -> Reject:
    return Reject(
        topic=f[0],
        payload=base64.b64decode(f[1]),
        reason=f[2],
        received_at=_instant(f[3]),
        payload_sha256=f[4],
    )


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


def _optional_instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)
