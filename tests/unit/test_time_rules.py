"""DOMAIN v2 "Time": the source order, the unusable values and the arrival fallback.

Expected values are worked out by hand from DOMAIN.md v2 (the arithmetic is beside each).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.decoding.messages import Decoder
from aupus_ha.decoding.timestamps import (
    MISSING,
    MOTIVO_ANTES_DE_2020,
    MOTIVO_AUSENTE,
    MOTIVO_FUTURO,
    MOTIVO_MALFORMADO,
    MOTIVO_SEM_NTP,
    MOTIVO_ZERO,
    MOTIVOS,
    ReadingTime,
    payload_time,
    resolve_time,
    time_motivo_of,
)
from aupus_ha.pipeline.readings import Equipment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
ARRIVAL = datetime(2026, 11, 30, 12, 0, 0, 250_000, tzinfo=UTC)
# 1795910430 s = 2026-11-29T00:00:30Z (20,786 days and 30 s after the epoch).
DEVICE = datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
TOPIC = "site/meter"


def motivo(value: object) -> str | None:
    return resolve_time([value], ARRIVAL).motivo


# clockless.txt line by line: (raw value, motivo), as DOMAIN v2 names them.
CLOCKLESS = [
    ("sem_ntp", MOTIVO_SEM_NTP),  # the firmware's "no clock" word
    ("0", MOTIVO_ZERO),  # a TON without NTP
    (0, MOTIVO_ZERO),
    (1000, MOTIVO_ANTES_DE_2020),  # 1970-01-01T00:16:40Z
    (-5, MOTIVO_ANTES_DE_2020),  # 1969-12-31T23:59:55Z
    ("31/02/2026 25:61:00", MOTIVO_MALFORMADO),  # no 31 February, no hour 25
    (99999999999999, MOTIVO_FUTURO),  # >= 1e10: milliseconds, year 5138
    (MISSING, MOTIVO_AUSENTE),  # {"power": 8}: no time field at all
]


def clockless_lines() -> list[bytes]:
    text = (FIXTURES / "clockless.txt").read_bytes().splitlines()
    return [line for line in text if line.strip() and not line.startswith(b"#")]


@pytest.mark.parametrize(("value", "expected"), CLOCKLESS[:-1])
def test_each_unusable_value_has_its_motivo(value: object, expected: str) -> None:
    """Every clockless value falls back to the arrival, with DOMAIN's reason word."""
    got = resolve_time([value], ARRIVAL)
    assert got == ReadingTime(ARRIVAL, expected, value)
    assert got.from_device is False


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("SEM_NTP", MOTIVO_SEM_NTP),
        (" sem_ntp ", MOTIVO_SEM_NTP),
        (0.0, MOTIVO_ZERO),
        ("000", MOTIVO_ZERO),
        (True, MOTIVO_MALFORMADO),  # a boolean is no time
        ([1795910430], MOTIVO_MALFORMADO),
        ({"s": 1}, MOTIVO_MALFORMADO),
        ("yesterday", MOTIVO_MALFORMADO),
        ("nan", MOTIVO_MALFORMADO),
        (4187, MOTIVO_ANTES_DE_2020),  # seconds since boot (ton_inverter_no_ntp.json)
        (1577836799, MOTIVO_ANTES_DE_2020),  # 2019-12-31T23:59:59Z
        ("31/12/2019 20:59:59", MOTIVO_ANTES_DE_2020),  # Brasília = 23:59:59Z
        ("0001-01-01T00:00:00+05:00", MOTIVO_ANTES_DE_2020),  # before datetime.min in UTC
        ("9999-12-31T23:59:59", MOTIVO_FUTURO),  # Brasília: past datetime.max in UTC
        # naive ISO in UTC read as Brasília: 3 h ahead of an arrival at 12:00Z
        ("2026-11-30T12:00:00", MOTIVO_FUTURO),
    ],
)
def test_more_unusable_values(value: object, expected: str) -> None:
    """Case, spaces, float zero, wrong types, the 2020 and future bounds."""
    assert motivo(value) == expected


def test_bounds_are_inclusive() -> None:
    """2020-01-01T00:00:00Z and arrival + 15 min are usable; one step past is not."""
    assert motivo(1577836800) is None  # 2020-01-01T00:00:00Z
    assert motivo("2020-01-01T00:00:00Z") is None
    limit = ARRIVAL + timedelta(minutes=15)
    assert resolve_time([limit.isoformat()], ARRIVAL).at == limit
    assert motivo((limit + timedelta(microseconds=1)).isoformat()) == MOTIVO_FUTURO
    # 12:15:00.25Z in whole seconds: 12:15:00 usable, 12:15:01 beyond the bound
    assert motivo(int(limit.timestamp())) is None
    assert motivo(int(limit.timestamp()) + 1) == MOTIVO_FUTURO


def test_source_order_ts_first() -> None:
    """`ts` (SD buffer capture time) wins over a usable `timestamp` too."""
    obj = {"ts": 1795910430, "timestamp": "28/11/2026 21:05:00"}
    assert payload_time(obj, ARRIVAL) == ReadingTime(DEVICE)


def test_source_order_family_field_before_timestamp() -> None:
    """The family's own field (Resumo.timestamp, A-966 `time`) comes before `timestamp`."""
    # "1795910430" (string epoch, the A-966 form) = DEVICE; timestamp 21:05 Brasília ignored
    got = payload_time({"timestamp": "28/11/2026 21:05:00"}, ARRIVAL, "1795910430")
    assert got == ReadingTime(DEVICE)


def test_unusable_sources_are_skipped_in_order() -> None:
    """An unusable `ts` and family field fall through to a usable `timestamp`."""
    # "28/11/2026 21:00:30" Brasília = 2026-11-29T00:00:30Z
    obj = {"ts": 0, "timestamp": "28/11/2026 21:00:30"}
    assert payload_time(obj, ARRIVAL, "sem_ntp") == ReadingTime(DEVICE)


def test_all_unusable_keeps_the_first_present_value() -> None:
    """Nothing usable: the arrival, with the raw value and reason of the first source
    that was present (a missing `ts` is skipped)."""
    got = payload_time({"timestamp": "0"}, ARRIVAL, "sem_ntp")
    assert got == ReadingTime(ARRIVAL, MOTIVO_SEM_NTP, "sem_ntp")
    assert got.flags() == {"_timestamp_bruto": "sem_ntp", "_timestamp_motivo": "sem_ntp"}


def test_null_is_no_time_field() -> None:
    """A null time field counts as absent: reason ausente, no raw value kept."""
    got = payload_time({"ts": None, "timestamp": None}, ARRIVAL)
    assert got == ReadingTime(ARRIVAL, MOTIVO_AUSENTE)
    assert got.flags() == {"_timestamp_motivo": "ausente"}


def test_device_time_adds_no_flags() -> None:
    """A usable device time leaves `dados` as sent."""
    got = payload_time({"ts": 1795910430}, ARRIVAL)
    assert got.flags() == {}
    assert got.annotate({"a": 1}) == {"a": 1}


# --- through the decoder ------------------------------------------------------------------


@pytest.mark.parametrize(("n", "raw_motivo"), list(enumerate(CLOCKLESS)))
def test_clockless_lines_are_stored_with_arrival(n: int, raw_motivo: tuple[object, str]) -> None:
    """Each clockless.txt line is a reading (not a reject) at the arrival time, its raw
    value under `_timestamp_bruto` (absent for the last line) and its reason."""
    raw, expected_motivo = raw_motivo
    payload = clockless_lines()[n]
    decoded = Decoder(max_payload_bytes=65536).decode(
        TOPIC, payload, [Equipment("eq", TOPIC)], ARRIVAL
    )
    assert decoded.rejects == []
    [reading] = decoded.readings
    assert reading.timestamp_dados == ARRIVAL
    assert reading.matchable is False
    dados = orjson.loads(reading.dados)
    assert dados["power"] == n + 1  # each line's own reading
    assert dados["_timestamp_motivo"] == expected_motivo
    if raw is MISSING:
        assert "_timestamp_bruto" not in dados
    else:
        assert dados["_timestamp_bruto"] == raw
        assert type(dados["_timestamp_bruto"]) is type(raw)
    assert time_motivo_of(reading.dados) == expected_motivo


def test_inverter_without_clock_is_a_sample_of_the_arrival_minute() -> None:
    """ton_inverter_no_ntp.json: timestamp 4187 (seconds since boot) is before 2020, so
    the sample is timed by arrival (12:00:00.25Z -> minute 12:00Z), flagged in its dados."""
    payload = (FIXTURES / "ton_inverter_no_ntp.json").read_bytes()
    decoded = Decoder(max_payload_bytes=65536).decode(
        TOPIC, payload, [Equipment("inv", TOPIC, type_code="INVERSOR")], ARRIVAL
    )
    assert decoded.rejects == []
    [sample] = decoded.readings
    assert sample.sample_at == ARRIVAL
    assert sample.timestamp_dados == datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    assert sample.matchable is False
    dados = orjson.loads(sample.dados)
    assert dados["_timestamp_bruto"] == 4187
    assert dados["_timestamp_motivo"] == MOTIVO_ANTES_DE_2020


def test_generic_with_device_time_is_unflagged() -> None:
    """generic_reading.json ("2026-11-28T21:01:00Z") keeps its own time and no flags."""
    payload = (FIXTURES / "generic_reading.json").read_bytes()
    decoded = Decoder(max_payload_bytes=65536).decode(
        TOPIC, payload, [Equipment("eq", TOPIC)], ARRIVAL
    )
    [reading] = decoded.readings
    assert reading.timestamp_dados == datetime(2026, 11, 28, 21, 1, tzinfo=UTC)
    assert reading.matchable is True
    assert b"_timestamp_" not in reading.dados
    assert time_motivo_of(reading.dados) is None


# --- properties -------------------------------------------------------------------------------

any_time_value = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.from_regex(r"\A[0-9/:. +\-TZe]{0,30}\Z"),
    st.sampled_from(["sem_ntp", "0", "31/02/2026 25:61:00", "28/11/2026 21:00:30"]),
    st.lists(st.integers(), max_size=2),
)


@given(st.lists(any_time_value, max_size=4))
def test_any_candidates_give_a_usable_time_or_the_arrival(values: list[object]) -> None:
    """Whatever the sources hold: a device time within [2020-01-01, arrival + 15 min],
    or the arrival with one of DOMAIN's reasons; never an exception."""
    got = resolve_time(values, ARRIVAL)
    if got.from_device:
        assert datetime(2020, 1, 1, tzinfo=UTC) <= got.at <= ARRIVAL + timedelta(minutes=15)
        assert got.at.tzinfo is UTC
        assert got.flags() == {}
    else:
        assert got.at == ARRIVAL
        assert got.motivo in MOTIVOS
        present = [v for v in values if v is not None]
        assert (got.raw is MISSING) == (not present)
        assert (got.motivo == MOTIVO_AUSENTE) == (not present)


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2026, 11, 30, 12)))
def test_a_usable_ts_always_wins(dt: datetime) -> None:
    """A usable epoch `ts` dates the reading whatever `timestamp` holds."""
    seconds = int(dt.replace(tzinfo=UTC).timestamp())
    got = payload_time({"ts": seconds, "timestamp": "sem_ntp"}, ARRIVAL)
    assert got == ReadingTime(datetime.fromtimestamp(seconds, UTC))


# 2020-01-01T00:00:00Z in epoch seconds; the arrival (12:00:00.25Z) plus 15 minutes.
_EARLIEST_S = 1_577_836_800
_LATEST_MS = int(ARRIVAL.timestamp() * 1000) + 900_000


# Anywhere, and densely around the bounds in seconds and in milliseconds.
_epoch_integers = st.one_of(
    st.integers(min_value=-(10**16), max_value=10**16),
    st.integers(min_value=_EARLIEST_S - 100, max_value=_LATEST_MS // 1000 + 100),
    st.integers(min_value=_EARLIEST_S * 1000 - 10**5, max_value=_LATEST_MS + 10**5),
)


@given(_epoch_integers)
def test_epoch_integers_are_classified_by_hand(n: int) -> None:
    """Any integer: |n| < 1e10 is seconds, else milliseconds (exact integer bounds);
    0 is `zero`, before 2020-01-01Z `antes_de_2020`, beyond arrival + 15 min `futuro`,
    anything between is that instant."""
    millis = n if abs(n) >= 10**10 else n * 1000
    got = resolve_time([n], ARRIVAL)
    if n == 0:
        assert got.motivo == MOTIVO_ZERO
    elif millis < _EARLIEST_S * 1000:
        assert got.motivo == MOTIVO_ANTES_DE_2020
    elif millis > _LATEST_MS:
        assert got.motivo == MOTIVO_FUTURO
    else:
        assert got == ReadingTime(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=millis))
    assert resolve_time([str(n)] if n >= 0 else [n], ARRIVAL).motivo == got.motivo
