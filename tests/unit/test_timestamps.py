"""Timestamp parsing: every accepted form, invalid dates, range limits, legacy conversion.

The source order and the arrival fallback are in test_time_rules.py."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha import constants
from aupus_ha.decoding.timestamps import (
    BRASILIA,
    REASON_OUT_OF_RANGE,
    REASON_UNPARSEABLE,
    REASON_WRONG_TYPE,
    TimestampError,
    from_legacy_wall,
    parse_timestamp,
    time_motivo_of,
    to_legacy_wall,
)

NOW = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
EXPECTED = datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)  # 28/11/2026 21:00:30 in Brasília


def parse(value: object, now: datetime = NOW) -> datetime:
    return parse_timestamp(value, now=now)


def reason_of(value: object, now: datetime = NOW) -> str:
    with pytest.raises(TimestampError) as info:
        parse_timestamp(value, now=now)
    assert info.value.message
    return info.value.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1795910430, EXPECTED),
        (1795910430.25, EXPECTED + timedelta(milliseconds=250)),
        (1795910430250, EXPECTED + timedelta(milliseconds=250)),
        (1795910430250.5, EXPECTED + timedelta(microseconds=250_500)),
        ("1795910430", EXPECTED),
        ("1795910430250", EXPECTED + timedelta(milliseconds=250)),
        ("1795910430.5", EXPECTED + timedelta(milliseconds=500)),
        (" 1795910430 ", EXPECTED),
        ("2026-11-29T00:00:30Z", EXPECTED),
        ("2026-11-29T00:00:30.123456Z", EXPECTED + timedelta(microseconds=123_456)),
        ("2026-11-28T21:00:30-03:00", EXPECTED),
        ("2026-11-29T05:30:30.5+05:30", EXPECTED + timedelta(milliseconds=500)),
        ("2026-11-28T21:00:30", EXPECTED),  # naive ISO is Brasília time
        ("2026-11-28 21:00:30.750", EXPECTED + timedelta(milliseconds=750)),
        ("28/11/2026 21:00:30", EXPECTED),
        ("28/11/2026 21:00:30.042", EXPECTED + timedelta(milliseconds=42)),
        ("28/11/2026 21:00:30.1234567", EXPECTED + timedelta(microseconds=123_456)),
        ("29/02/2024 12:00:00", datetime(2024, 2, 29, 15, tzinfo=UTC)),
    ],
)
def test_accepted_forms(value: object, expected: datetime) -> None:
    """Each accepted form gives the same UTC instant, at the precision it carries."""
    parsed = parse(value)
    assert parsed == expected
    assert parsed.tzinfo is UTC


def test_result_is_always_utc() -> None:
    """An offset input comes back expressed in UTC, not in its own offset."""
    assert parse("2026-11-28T21:00:30-03:00").utcoffset() == timedelta(0)
    assert parse("28/11/2026 21:00:30").tzinfo is UTC


def test_threshold_splits_seconds_from_milliseconds() -> None:
    """Below EPOCH_MS_THRESHOLD a number is seconds; at or above it, milliseconds."""
    far_future = datetime(2290, 1, 1, tzinfo=UTC)
    below = constants.EPOCH_MS_THRESHOLD - 1
    assert parse(below, far_future) == EPOCH + timedelta(seconds=below)
    assert reason_of(constants.EPOCH_MS_THRESHOLD, far_future) == REASON_OUT_OF_RANGE  # 1970
    assert parse(1_700_000_000_000) == datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)


@pytest.mark.parametrize("value", [True, False, None, [1795910430], {"t": 1}, b"1795910430"])
def test_wrong_types_are_refused(value: object) -> None:
    """Booleans, null, containers and bytes are not timestamps."""
    assert reason_of(value) == REASON_WRONG_TYPE


@pytest.mark.parametrize(
    "value",
    [
        "31/02/2026 25:61:00",
        "31/02/2026 10:00:00",
        "29/02/2026 10:00:00",
        "28/11/2026 25:00:00",
        "28/11/2026 21:61:00",
        "28/11/2026 21:00:60",
        "2026-02-31T10:00:00Z",
        "2026-11-28T25:00:00Z",
        "28/11/26 21:00:30",
        "28/11/2026",
        "28/11/2026 21:00",
        "28/11/2026 21:00:30.",
        "28/11/2026  21:00:30",
        "28/11/2026 21:00:30 BRT",
        "28/11/2026T21:00:30",
        "28/11/2026 21:00:30Z",
        "28/11/2026 21:00:30.5+03:00",
        "28/+1/2026 21:00:30",
        "1/12/2026 21:00:30",
        "28/11/2026 21:0a:30",
        "",
        "   ",
        "yesterday",
        "nan",
        "inf",
        "-inf",
        "1e999",
        "1_764_374_430",
        "١٧٦٤٣٧٤٤٣٠",
        "1" * 5000,
        "2026-11-28T21:00:30Z" + " " * 100 + "x",
    ],
)
def test_unparseable_text(value: str) -> None:
    """Malformed text, impossible calendar dates and times, NaN/inf text are refused."""
    assert reason_of(value) == REASON_UNPARSEABLE


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(value: float) -> None:
    """NaN and infinities are refused, not turned into a date."""
    assert reason_of(value) == REASON_UNPARSEABLE


@pytest.mark.parametrize(
    "value",
    [
        -5,
        0,
        1577836799,  # 2019-12-31T23:59:59Z
        99999999999999,
        -99999999999999,
        "2019-12-31T23:59:59.999999Z",
        "31/12/2019 20:59:59",
        "9999-12-31T23:59:59",  # Brasília: past datetime.max in UTC
        "0001-01-01T00:00:00+05:00",  # before datetime.min in UTC
        10**400,
        -(10**400),
        1e300,
    ],
)
def test_out_of_range(value: object) -> None:
    """Instants before 2020 (DOMAIN v2) or beyond what datetime can hold are out of range."""
    assert reason_of(value) == REASON_OUT_OF_RANGE


def test_range_limits_are_inclusive() -> None:
    """2020-01-01Z and now + FUTURE_TOLERANCE_S are accepted; one step past is not."""
    limit = NOW + timedelta(seconds=constants.FUTURE_TOLERANCE_S)
    assert parse("2020-01-01T00:00:00Z") == datetime(2020, 1, 1, tzinfo=UTC)
    assert parse(1577836800) == datetime(2020, 1, 1, tzinfo=UTC)
    assert parse(limit.isoformat()) == limit
    assert parse(int(limit.timestamp())) == limit
    assert parse(int(limit.timestamp() * 1000)) == limit
    assert reason_of((limit + timedelta(microseconds=1)).isoformat()) == REASON_OUT_OF_RANGE
    assert reason_of(int(limit.timestamp()) + 1) == REASON_OUT_OF_RANGE
    assert reason_of(int(limit.timestamp() * 1000) + 1) == REASON_OUT_OF_RANGE


def test_error_carries_reason_and_short_message() -> None:
    """TimestampError is a ValueError with a snake_case reason and a bounded message."""
    with pytest.raises(ValueError, match="unrecognised") as info:
        parse_timestamp("x" * 60, now=NOW)
    assert isinstance(info.value, TimestampError)
    assert info.value.reason == "timestamp_unparseable"
    assert len(info.value.message) < 100


def test_message_escapes_control_characters() -> None:
    """A NUL in a bad timestamp never reaches the (text) reason column raw."""
    with pytest.raises(TimestampError) as info:
        parse_timestamp("28/11/2026\x0021:00:30", now=NOW)
    assert "\x00" not in info.value.message


def test_to_legacy_wall_is_utc_seconds() -> None:
    """Legacy convention (DOMAIN v2): naive UTC wall time, truncated (not rounded) to the
    second, whatever offset the instant is expressed in; v1's Brasília was wrong."""
    ts = datetime(2026, 11, 29, 0, 0, 30, 999_999, tzinfo=UTC)
    assert to_legacy_wall(ts) == datetime(2026, 11, 29, 0, 0, 30)
    offset = ts.astimezone(timezone(timedelta(hours=5)))
    assert to_legacy_wall(offset) == datetime(2026, 11, 29, 0, 0, 30)


def test_legacy_wall_in_another_zone() -> None:
    """LEGACY_TIMESTAMP_ZONE=America/Sao_Paulo: 00:00:30Z is 21:00:30 the day before."""
    zone = ZoneInfo("America/Sao_Paulo")
    assert to_legacy_wall(EXPECTED, zone) == datetime(2026, 11, 28, 21, 0, 30)
    assert from_legacy_wall(datetime(2026, 11, 28, 21, 0, 30), zone) == EXPECTED


def test_from_legacy_wall_is_the_inverse() -> None:
    """A legacy naive UTC value maps back to its instant."""
    assert from_legacy_wall(datetime(2026, 11, 29, 0, 0, 30)) == EXPECTED
    assert from_legacy_wall(datetime(2026, 11, 29, 0, 0, 30)).tzinfo is UTC


def test_legacy_conversions_refuse_the_wrong_kind() -> None:
    """Naive into to_legacy_wall, or aware into from_legacy_wall, is a programming error."""
    with pytest.raises(ValueError, match="aware"):
        to_legacy_wall(datetime(2026, 11, 28, 21, 0, 30))
    with pytest.raises(ValueError, match="naive"):
        from_legacy_wall(EXPECTED)


# --- properties ------------------------------------------------------------------------------

instants = st.datetimes(
    min_value=datetime(2020, 1, 1),
    max_value=(NOW + timedelta(minutes=15)).replace(tzinfo=None),
    timezones=st.just(UTC),
)


def truncated(dt: datetime, unit: timedelta) -> datetime:
    return EPOCH + (dt - EPOCH) // unit * unit


@given(instants)
def test_epoch_seconds_round_trip(dt: datetime) -> None:
    """Epoch seconds (int, float, text) give back the instant to the second."""
    seconds = (dt - EPOCH) // timedelta(seconds=1)
    expected = truncated(dt, timedelta(seconds=1))
    assert parse(seconds) == expected
    assert parse(str(seconds)) == expected
    assert parse(float(seconds)) == expected


@given(instants)
def test_epoch_milliseconds_round_trip(dt: datetime) -> None:
    """Epoch milliseconds (int, text, float seconds with ms) give back the instant to the ms."""
    millis = (dt - EPOCH) // timedelta(milliseconds=1)
    expected = truncated(dt, timedelta(milliseconds=1))
    assert parse(millis) == expected
    assert parse(str(millis)) == expected
    assert parse(millis / 1000) == expected


@given(instants)
def test_iso_z_round_trip(dt: datetime) -> None:
    """ISO 8601 with Z keeps the full microsecond precision."""
    assert parse(dt.isoformat().replace("+00:00", "Z")) == dt


@given(instants, st.integers(min_value=-12 * 60, max_value=14 * 60))
def test_iso_offset_round_trip(dt: datetime, offset_min: int) -> None:
    """ISO 8601 with any offset denotes the same instant."""
    local = dt.astimezone(timezone(timedelta(minutes=offset_min)))
    assert parse(local.isoformat()) == dt


@given(instants, st.booleans())
def test_brazilian_form_round_trip(dt: datetime, with_millis: bool) -> None:
    """DD/MM/YYYY HH:mm:ss[.fff] in Brasília time gives back the instant to its precision."""
    local = dt.astimezone(BRASILIA)
    text = local.strftime("%d/%m/%Y %H:%M:%S")
    if with_millis:
        text += f".{local.microsecond // 1000:03d}"
    unit = timedelta(milliseconds=1) if with_millis else timedelta(seconds=1)
    assert parse(text) == truncated(dt, unit)


@given(instants)
def test_legacy_round_trip(dt: datetime) -> None:
    """to_legacy_wall then from_legacy_wall loses only the sub-second part (any zone)."""
    assert from_legacy_wall(to_legacy_wall(dt)) == truncated(dt, timedelta(seconds=1))
    zone = ZoneInfo("America/Sao_Paulo")  # no DST since 2019: one wall time per instant
    assert from_legacy_wall(to_legacy_wall(dt, zone), zone) == truncated(dt, timedelta(seconds=1))


anything = st.one_of(
    st.text(max_size=80),
    st.from_regex(r"\A[0-9/:. +\-TZe]{0,30}\Z"),
    st.integers(),
    st.floats(),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
)


@given(anything)
def test_any_value_parses_in_range_or_raises_timestamp_error(value: object) -> None:
    """Whatever arrives, the result is an in-range UTC instant or a TimestampError."""
    try:
        parsed = parse(value)
    except TimestampError as exc:
        assert exc.reason in (REASON_UNPARSEABLE, REASON_OUT_OF_RANGE, REASON_WRONG_TYPE)
        return
    assert parsed.tzinfo is UTC
    assert datetime(2020, 1, 1, tzinfo=UTC) <= parsed <= NOW + timedelta(minutes=15)


# --- which rule fired: reason, motivo and message, exactly -----------------------------------

RANGE = "is not between 2020-01-01Z and arrival + 900 s"


@pytest.mark.parametrize(
    ("value", "reason", "motivo", "message"),
    [
        (0, REASON_OUT_OF_RANGE, "zero", "epoch 0: the device has no clock"),
        ("0", REASON_OUT_OF_RANGE, "zero", "epoch 0: the device has no clock"),
        (" SEM_NTP ", REASON_UNPARSEABLE, "sem_ntp", "the device has no NTP time"),
        (1577836799, REASON_OUT_OF_RANGE, "antes_de_2020", f"epoch 1577836799 s {RANGE}"),
        (
            1577836799999,
            REASON_OUT_OF_RANGE,
            "antes_de_2020",
            f"epoch 1577836799999 ms {RANGE}",
        ),
        # -10^10 is the first negative value read as milliseconds (|v| >= the threshold).
        (-(10**10), REASON_OUT_OF_RANGE, "antes_de_2020", f"epoch -10000000000 ms {RANGE}"),
        (-(10**10) + 1, REASON_OUT_OF_RANGE, "antes_de_2020", f"epoch -9999999999 s {RANGE}"),
        (1795922101, REASON_OUT_OF_RANGE, "futuro", f"epoch 1795922101 s {RANGE}"),
        (1795922100001, REASON_OUT_OF_RANGE, "futuro", f"epoch 1795922100001 ms {RANGE}"),
        (
            "2026-11-29T03:15:00.000001Z",
            REASON_OUT_OF_RANGE,
            "futuro",
            f"2026-11-29T03:15:00.000001+00:00 {RANGE}",
        ),
        (
            "0001-01-01T00:00:00+05:00",
            REASON_OUT_OF_RANGE,
            "antes_de_2020",
            f"0001-01-01 00:00:00+05:00 {RANGE}",
        ),
        (
            "9999-12-31T23:00:00",
            REASON_OUT_OF_RANGE,
            "futuro",
            f"9999-12-31 23:00:00-03:00 {RANGE}",
        ),
        ([1], REASON_WRONG_TYPE, "malformado", "expected a number or a string, got list"),
        (None, REASON_WRONG_TYPE, "malformado", "expected a number or a string, got NoneType"),
        ("x" * 40, REASON_UNPARSEABLE, "malformado", f"unrecognised timestamp {'x' * 40!r}"),
        ("x" * 41, REASON_UNPARSEABLE, "malformado", f"unrecognised timestamp {'x' * 40!r}…"),
    ],
)
def test_the_rule_that_fired(value: object, reason: str, motivo: str, message: str) -> None:
    """Each refusal names its rule three ways: the counter's reason, DOMAIN's motivo (stored
    in `_timestamp_motivo`) and the message (logged)."""
    with pytest.raises(TimestampError) as info:
        parse(value)
    assert (info.value.reason, info.value.motivo, info.value.message) == (reason, motivo, message)
    assert str(info.value) == message


@pytest.mark.parametrize(
    "text",
    [
        "28-11/2026 21:00:30",  # each separator is checked on its own
        "28/11-2026 21:00:30",
        "28/11/2026T21:00:30",
        "28/11/2026 21-00:30",
        "28/11/2026 21:00-30",
        "28/11/2026 21:00:30,5",  # only a point before the fraction
        "28/11/2026 21:00:30Z",
    ],
)
def test_brazilian_separators_are_checked_one_by_one(text: str) -> None:
    """A wrong separator anywhere fails the form check itself (not a later parse)."""
    with pytest.raises(TimestampError) as info:
        parse(text)
    assert info.value.message == f"not DD/MM/YYYY HH:mm:ss: {text!r}"


def test_text_of_64_characters_is_read_and_65_is_not() -> None:
    """The text bound is inclusive: 64 characters (after trimming) are parsed."""
    assert parse("0" * 54 + "1795910430") == EXPECTED
    assert parse("  " + "0" * 54 + "1795910430  ") == EXPECTED
    assert reason_of("0" * 55 + "1795910430") == REASON_UNPARSEABLE


def test_legacy_conversion_messages() -> None:
    with pytest.raises(ValueError, match=r"^to_legacy_wall needs an aware datetime$"):
        to_legacy_wall(datetime(2026, 11, 28, 21, 0, 30))
    with pytest.raises(ValueError, match=r"^from_legacy_wall needs a naive datetime$"):
        from_legacy_wall(EXPECTED)


@pytest.mark.parametrize(
    ("dados", "motivo"),
    [
        (b'{"a":1,"_timestamp_motivo":"zero"}', "zero"),
        (b'"_timestamp_motivo":"ausente"', "ausente"),  # the marker at the very start
        # the flags are appended last: the LAST marker is the family's, not one nested
        # inside the payload before it
        (b'{"x":{"_timestamp_motivo":"zero"},"_timestamp_motivo":"sem_ntp"}', "sem_ntp"),
        (b'{"_timestamp_motivo":"futuro","b":"c"}', "futuro"),  # the word ends at its quote
        (b'{"_timestamp_motivo":"other"}', None),  # not one of MOTIVOS
        (b'{"_timestamp_motivo":"z\xc3\xa9ro"}', None),  # non-ASCII: never a motivo
        (b'{"_timestamp_motivo":"zerox', None),  # cut: no closing quote
        (b'{"_timestamp_motivo":""}', None),
        (b'{"timestamp":1795910430}', None),
    ],
)
def test_time_motivo_of(dados: bytes, motivo: str | None) -> None:
    assert time_motivo_of(dados) == motivo
