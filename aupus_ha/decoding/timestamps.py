"""Reading timestamps: where a reading's instant comes from, and every form it takes.

Sources (DOMAIN v2, "Time"), first usable wins: `ts` (the envelope's store-and-forward
capture time) → the family's own field (`Resumo.timestamp` for a wrapped M-160, `time`
for an A-966 gateway) → the top-level `timestamp` → the arrival time. `resolve_time`
takes the candidate values in that order; `payload_time` builds the order for a payload.
A reading timed by its arrival is STORED, never rejected: `ReadingTime.flags()` are the
keys its `dados` gets, `_timestamp_bruto` (the raw value of the first time field that
was present; absent when there was none) and `_timestamp_motivo` (one of `MOTIVOS`).
Such a reading has no natural key of its own (`matchable=False`): the buffer matches it
by content (see buffer.py).

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
the old DST summers would be an hour off; readings that old are unusable anyway.

The result keeps full precision (milliseconds, microseconds). A value is unusable, and
`TimestampError.motivo` says why: `sem_ntp` (the firmware's word for "no clock"),
`zero` (`0`, `"0"`: a TON without NTP), `malformado` (not a time: `31/02/2026 25:61:00`,
a boolean, an object), `antes_de_2020` (before 2020-01-01Z: an RTC reset, seconds since
boot) or `futuro` (more than `FUTURE_TOLERANCE_S`, 15 minutes, after the arrival: a
clock set wrong, or a naive ISO time in UTC read as Brasília, 3 h ahead). A
future-dated reading must not pre-empt a later key or hold a rollup minute (and its
spool segment) open.

Legacy `timestamp(0) without time zone` columns hold wall time in the zone of
`LEGACY_TIMESTAMP_ZONE` (UTC by default, as the platform writes them: DOMAIN v2, "The
legacy database"), to the second: `to_legacy_wall` / `from_legacy_wall` convert.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Final

from aupus_ha import constants

REASON_UNPARSEABLE: Final = "timestamp_unparseable"
REASON_OUT_OF_RANGE: Final = "timestamp_out_of_range"
REASON_WRONG_TYPE: Final = "timestamp_wrong_type"

# Why a reading was timed by its arrival (`dados._timestamp_motivo`, DOMAIN v2 "Time").
MOTIVO_SEM_NTP: Final = "sem_ntp"
MOTIVO_ZERO: Final = "zero"
MOTIVO_MALFORMADO: Final = "malformado"
MOTIVO_ANTES_DE_2020: Final = "antes_de_2020"
MOTIVO_FUTURO: Final = "futuro"
MOTIVO_AUSENTE: Final = "ausente"
MOTIVOS: Final = (
    MOTIVO_SEM_NTP,
    MOTIVO_ZERO,
    MOTIVO_MALFORMADO,
    MOTIVO_ANTES_DE_2020,
    MOTIVO_FUTURO,
    MOTIVO_AUSENTE,
)
RAW_KEY: Final = "_timestamp_bruto"
MOTIVO_KEY: Final = "_timestamp_motivo"
# The time fields of a payload, by source (the family's own field sits between them).
ENVELOPE_FIELD: Final = "ts"
TOP_LEVEL_FIELD: Final = "timestamp"

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
_SEM_NTP: Final = "sem_ntp"


class _Missing:
    """No value at all for a source (the field is absent, or JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


class TimestampError(ValueError):
    """A timestamp that cannot become a reading's time.

    `reason` is a short snake_case code (one of the `REASON_*` constants) for counters
    and messages; `motivo` is the DOMAIN v2 word for it (one of `MOTIVOS` but
    `ausente`), stored in `dados._timestamp_motivo`; `message` says what was wrong.
    """

    def __init__(self, reason: str, message: str, motivo: str = MOTIVO_MALFORMADO) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.motivo = motivo


@dataclass(frozen=True, slots=True)
class ReadingTime:
    """A reading's instant and where it came from.

    `motivo` is None for a device time; otherwise `at` is the arrival time and `motivo`
    says why, with `raw` the unusable value (MISSING: the payload had no time field).
    """

    at: datetime
    motivo: str | None = None
    raw: object = MISSING

    @property
    def from_device(self) -> bool:
        """A device time: the reading has a natural key every instance derives alike."""
        return self.motivo is None

    def flags(self) -> dict[str, object]:
        """The keys DOMAIN v2 adds to `dados` of a reading timed by its arrival."""
        if self.motivo is None:
            return {}
        if self.raw is MISSING:
            return {MOTIVO_KEY: self.motivo}
        return {RAW_KEY: self.raw, MOTIVO_KEY: self.motivo}

    def annotate(self, dados: Mapping[str, object]) -> dict[str, object]:
        """`dados` (a copy) with the flags added; unchanged content for a device time."""
        return {**dados, **self.flags()}


def resolve_time(candidates: Iterable[object], arrival: datetime) -> ReadingTime:
    """The first usable candidate (in source order), else the arrival time.

    A candidate that is MISSING or None is skipped (no such field). When none is
    usable, the reason and raw value are those of the first candidate present: the
    source the device meant to be read.
    """
    unusable: TimestampError | None = None
    raw: object = MISSING
    for value in candidates:
        if value is MISSING or value is None:
            continue
        try:
            return ReadingTime(parse_timestamp(value, now=arrival))
        except TimestampError as exc:
            if unusable is None:
                unusable, raw = exc, value
    if unusable is None:
        return ReadingTime(arrival, MOTIVO_AUSENTE)
    return ReadingTime(arrival, unusable.motivo, raw)


def payload_time(
    obj: Mapping[str, object], arrival: datetime, family_value: object = MISSING
) -> ReadingTime:
    """A payload's time in DOMAIN v2 order: envelope `ts` → `family_value` (the
    family's own field, e.g. `Resumo.timestamp`, A-966 `time`) → top-level
    `timestamp` → `arrival`."""
    return resolve_time(
        (obj.get(ENVELOPE_FIELD, MISSING), family_value, obj.get(TOP_LEVEL_FIELD, MISSING)),
        arrival,
    )


def time_motivo_of(dados: bytes) -> str | None:
    """The `_timestamp_motivo` a family wrote at the top of an encoded `dados` (orjson:
    no spaces), or None. A byte search, for counting readings timed by arrival."""
    marker = b'"' + MOTIVO_KEY.encode() + b'":"'
    at = dados.rfind(marker)
    if at < 0:
        return None
    start = at + len(marker)
    end = dados.find(b'"', start)
    word = dados[start:end].decode("ascii", "replace") if end > start else ""
    return word if word in MOTIVOS else None


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


def to_legacy_wall(ts: datetime, zone: tzinfo = UTC) -> datetime:
    """Naive wall time in `zone`, truncated to the second (legacy `timestamp(0)`)."""
    if ts.utcoffset() is None:
        raise ValueError("to_legacy_wall needs an aware datetime")
    return ts.astimezone(zone).replace(tzinfo=None, microsecond=0)


def from_legacy_wall(naive: datetime, zone: tzinfo = UTC) -> datetime:
    """The aware UTC instant of a naive wall time in `zone` read from a legacy column."""
    if naive.tzinfo is not None:
        raise ValueError("from_legacy_wall needs a naive datetime")
    return naive.replace(tzinfo=zone).astimezone(UTC)


def _from_epoch(value: int | float, now: datetime) -> datetime:
    if isinstance(value, float) and not math.isfinite(value):
        raise TimestampError(REASON_UNPARSEABLE, f"epoch value is {value}")
    millis = not -_MS_THRESHOLD < value < _MS_THRESHOLD
    scale = 1000 if millis else 1
    latest_s = now.timestamp() + constants.FUTURE_TOLERANCE_S
    # Checked before converting (out-of-range values would overflow datetime), and by
    # scaling the limits rather than dividing the value (a huge int overflows a float).
    if value == 0:
        raise TimestampError(REASON_OUT_OF_RANGE, "epoch 0: the device has no clock", MOTIVO_ZERO)
    if value < _EARLIEST_S * scale or value > latest_s * scale:
        unit = "ms" if millis else "s"
        motivo = MOTIVO_FUTURO if value > latest_s * scale else MOTIVO_ANTES_DE_2020
        message = f"epoch {value!r} {unit} {_range_text()}"
        raise TimestampError(REASON_OUT_OF_RANGE, message, motivo)
    if not millis:
        return datetime.fromtimestamp(value, UTC)
    # Exact for an int, rounded to the nearest microsecond for a float (no division).
    return _EPOCH + timedelta(milliseconds=value)


def _parse_text(value: str, now: datetime) -> datetime:
    text = value.strip()
    if len(text) > _MAX_TEXT or not text.isascii():
        raise _unparseable(value)
    if text.lower() == _SEM_NTP:
        raise TimestampError(REASON_UNPARSEABLE, "the device has no NTP time", MOTIVO_SEM_NTP)
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
        motivo = MOTIVO_FUTURO if parsed.year > 1 else MOTIVO_ANTES_DE_2020
        raise TimestampError(REASON_OUT_OF_RANGE, f"{parsed} {_range_text()}", motivo) from None
    if utc < _EARLIEST:
        message = f"{utc.isoformat()} {_range_text()}"
        raise TimestampError(REASON_OUT_OF_RANGE, message, MOTIVO_ANTES_DE_2020)
    if utc > now + _TOLERANCE:
        message = f"{utc.isoformat()} {_range_text()}"
        raise TimestampError(REASON_OUT_OF_RANGE, message, MOTIVO_FUTURO)
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
