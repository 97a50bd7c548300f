"""What every decoding family shares: the refusal (`DecodeError`), the refusal codes the
families raise, the numeric bound, and the `dados` encoder.

Its own module so that the families (m160, gateway) and the dispatcher that routes to
them (messages) all build on it without importing one another in a circle.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import orjson

from aupus_ha.pipeline import rollup

REASON_INVALID_SUMMARY: Final = "invalid_summary"
REASON_UNSTORABLE: Final = "unstorable_json"
REASON_NUMBER_OUT_OF_RANGE: Final = "number_out_of_range"

# The largest magnitude of a number that is averaged or stored in a numeric column:
# 1e15 W is a million times the largest power plant, and sums of millions of such
# values stay far below the double's range (1.8e308), so no rollup can overflow.
MAX_ABS_NUMBER: Final = rollup.MAX_AVERAGED  # one summary covers 30 s: power = energy / (30/3600) h


class DecodeError(ValueError):
    """Content a family cannot turn into a reading; `reason` is a `REASON_*` code."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def encode_dados(obj: Mapping[str, object]) -> bytes:
    """`obj` as the `dados` jsonb bytes; `DecodeError` when jsonb could not store it."""
    try:
        dados = orjson.dumps(obj)
    except orjson.JSONEncodeError as exc:  # nesting deeper than orjson encodes
        raise DecodeError(REASON_UNSTORABLE, str(exc)) from None
    # Cheap byte search first; the walk only confirms the rare hit (an escaped "\u0000").
    if b"\\u0000" in dados and _has_nul(obj):
        raise DecodeError(REASON_UNSTORABLE, "a string holds \\u0000, which jsonb refuses")
    return right_sized(dados)


def right_sized(data: bytes) -> bytes:
    """A copy of `data` that occupies only its length.

    orjson (3.12+) returns bytes whose allocation is its whole working buffer (4 KB or
    more) with only the length trimmed: a 300-byte `dados` kept in the pending buffer
    held 4 KB, and a standby holding tens of thousands of readings held hundreds of MB.
    The copy costs ~0.2 µs.
    """
    return bytes(memoryview(data))


def _has_nul(value: object) -> bool:
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_has_nul(k) or _has_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_nul(v) for v in value)
    return False
