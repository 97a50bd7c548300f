"""Reading timestamps: every form the meters send, turned into one aware UTC instant.

`parse_timestamp` accepts:

* a number (int or float; bool is refused), or a string holding only one: epoch
  seconds when its absolute value is below `EPOCH_MS_THRESHOLD` (10^10, year 2286),
  epoch milliseconds otherwise;
* an ISO 8601 string, as `datetime.fromisoformat` reads it: with `Z` or an offset it
  is that instant; *without* an offset it is taken as Brasília wall time (UTC−3), the
  same convention as the Brazilian text form, because the devices that omit the
  offset are Brazilian meters writing local time;
* the Brazilian text form `DD/MM/YYYY HH:mm:ss`, optionally with a fraction
  (`.fff`, up to microseconds), in Brasília wall time.

Brasília is a fixed UTC−3 (no daylight saving time since 2019), so wall times from
the old DST summers would be an hour off; readings that old are not ingested live.

The result keeps full precision (milliseconds, microseconds). Instants before
`EARLIEST_READING_YEAR` (UTC) or more than `FUTURE_TOLERANCE_S` (15 minutes, DOMAIN
v2) after `now` (the arrival time) are refused: a meter with a reset clock must not
write into the past or pre-empt future keys, and a future-dated rollup sample must not
hold its minute (and its spool segment) open for long. A naive ISO string stays
Brasília time as DOMAIN v2 says; firmware that sends naive UTC lands 3 h ahead and is
refused by the bound (`timestamp_out_of_range`) instead of pinning anything. DOMAIN v2
stores such readings with the arrival time and a `_timestamp_motivo` instead; that
fallback comes with its time rules (issue 12), the bound is the same.

The legacy `timestamp(0) without time zone` column holds Brasília wall time to the
second: `to_legacy_local` / `from_legacy_local` convert to and from that convention.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

from aupus_ha import constants

REASON_UNPARSEABLE: Final = "timestamp_unparseable"
REASON_OUT_OF_RANGE: Final = "timestamp_out_of_range"
REASON_WRONG_TYPE: Final = "timestamp_wrong_type"

BRASILIA: Final = timezone(timedelta(hours=constants.BRASILIA_UTC_OFFSET_HOURS), "BRT")

_EARLIEST: Final = datetime(constants.EARLIEST_READING_YEAR, 1, 1, tzinfo=UTC)
_EARLIEST_S: Final = _EARLIEST.timestamp()
_TOLERANCE: Final = timedelta(seconds=constants.FUTURE_TOLERANCE_S)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MS_THRESHOLD: Final = constants.EPOCH_MS_THRESHOLD
# No accepted form is longer; the cap also keeps int() far from its 4300-digit limit.
_MAX_TEXT: Final = 64
_FLOAT_CHARS: Final = frozenset("0123456789+-.eE")
_PREVIEW: Final = 40


class TimestampError(ValueError):
    """A timestamp that cannot become a reading's time.

    `reason` is a short snake_case code (one of the `REASON_*` constants) for counters
    and the reject row; `message` says what was wrong, for humans.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def parse_timestamp(value: object, *, now: datetime) -> datetime:
    """The aware UTC instant `value` denotes (see the module docstring for the forms).

    `now` (aware) is the arrival time, the reference for the future limit. Raises
    `TimestampError` for a wrong type, an unparseable or impossible date (31/02,
    25:61), NaN/infinity, or an instant out of range.
    """
    if isinstance(value, str):
        return _parse_text(value, now)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = type(value).__name__
        raise TimestampError(REASON_WRONG_TYPE, f"expected a number or a string, got {kind}")
    return _from_epoch(value, now)


def to_legacy_local(ts: datetime) -> datetime:
    """Naive Brasília wall time truncated to the second (legacy `timestamp(0)` column)."""
    if ts.utcoffset() is None:
        raise ValueError("to_legacy_local needs an aware datetime")
    return ts.astimezone(BRASILIA).replace(tzinfo=None, microsecond=0)


def from_legacy_local(naive: datetime) -> datetime:
    """The aware UTC instant of a naive Brasília wall time read from a legacy column."""
    if naive.tzinfo is not None:
        raise ValueError("from_legacy_local needs a naive datetime")
    return naive.replace(tzinfo=BRASILIA).astimezone(UTC)


def _from_epoch(value: int | float, now: datetime) -> datetime:
    if isinstance(value, float) and not math.isfinite(value):
        raise TimestampError(REASON_UNPARSEABLE, f"epoch value is {value}")
    millis = not -_MS_THRESHOLD < value < _MS_THRESHOLD
    scale = 1000 if millis else 1
    latest_s = now.timestamp() + constants.FUTURE_TOLERANCE_S
    # Checked before converting (out-of-range values would overflow datetime), and by
    # scaling the limits rather than dividing the value (a huge int overflows a float).
    if value < _EARLIEST_S * scale or value > latest_s * scale:
        unit = "ms" if millis else "s"
        raise TimestampError(REASON_OUT_OF_RANGE, f"epoch {value!r} {unit} {_range_text()}")
    if not millis:
        return datetime.fromtimestamp(value, UTC)
    # Exact for an int, rounded to the nearest microsecond for a float (no division).
    return _EPOCH + timedelta(milliseconds=value)


def _parse_text(value: str, now: datetime) -> datetime:
    text = value.strip()
    if len(text) > _MAX_TEXT or not text.isascii():
        raise _unparseable(value)
    if text.isdigit():
        return _from_epoch(int(text), now)
    if "/" in text:
        return _checked(_parse_brazilian(text), now)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return _from_epoch(_parse_float(text), now)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=BRASILIA)
    return _checked(parsed, now)


def _parse_float(text: str) -> float:
    # float() alone would also take "nan", "inf" and "1_000".
    if text and _FLOAT_CHARS.issuperset(text):
        try:
            return float(text)
        except ValueError:
            pass
    raise _unparseable(text)


def _parse_brazilian(text: str) -> datetime:
    """`DD/MM/YYYY HH:mm:ss[.fff]` as Brasília wall time.

    The separators are checked by position, then the fields are rearranged into ISO
    order so that `fromisoformat` (C code) validates the digits and the calendar: about
    5x faster than splitting and converting each field in Python.
    """
    if (
        len(text) < 19
        or text[2] != "/"
        or text[5] != "/"
        or text[10] != " "
        or text[13] != ":"
        or text[16] != ":"
        or (len(text) > 19 and text[19] != ".")
    ):
        raise TimestampError(REASON_UNPARSEABLE, f"not DD/MM/YYYY HH:mm:ss: {_preview(text)}")
    try:
        parsed = datetime.fromisoformat(f"{text[6:10]}-{text[3:5]}-{text[:2]}T{text[11:]}")
    except ValueError as exc:
        raise TimestampError(REASON_UNPARSEABLE, f"{_preview(text)}: {exc}") from None
    if parsed.tzinfo is not None:  # fromisoformat would take a trailing Z or offset
        raise TimestampError(REASON_UNPARSEABLE, f"offset in Brasília time: {_preview(text)}")
    return parsed.replace(tzinfo=BRASILIA)


def _checked(parsed: datetime, now: datetime) -> datetime:
    try:
        utc = parsed.astimezone(UTC)
    except OverflowError:  # e.g. 9999-12-31T23:00 at UTC−3 is past datetime.max
        raise TimestampError(REASON_OUT_OF_RANGE, f"{parsed} {_range_text()}") from None
    if utc < _EARLIEST or utc > now + _TOLERANCE:
        raise TimestampError(REASON_OUT_OF_RANGE, f"{utc.isoformat()} {_range_text()}")
    return utc


def _range_text() -> str:
    return (
        f"is not between {constants.EARLIEST_READING_YEAR}-01-01Z "
        f"and arrival + {constants.FUTURE_TOLERANCE_S} s"
    )


def _unparseable(text: str) -> TimestampError:
    return TimestampError(REASON_UNPARSEABLE, f"unrecognised timestamp {_preview(text)}")


def _preview(text: str) -> str:
    # repr escapes control characters (a NUL cannot go into a text column).
    return repr(text[:_PREVIEW]) + ("…" if len(text) > _PREVIEW else "")
