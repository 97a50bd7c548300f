"""The data-loss report's rules at their edges (aupus_ha/operations/gaps.py), written
against the mutants test_gaps.py let through (docs/testing.md, "Mutation testing"):
each boundary on both sides, each message in full, each rounding, the text report and
the JSON bodies byte for byte, and the instants in a local zone that is not UTC."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from aupus_ha.operations import gaps as g

T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = datetime(2026, 12, 1, tzinfo=UTC)
HOUR = timedelta(hours=1)


def s(seconds: float) -> timedelta:
    return timedelta(seconds=seconds)


@pytest.fixture
def brasilia_local_time() -> Iterator[None]:
    """The process's local zone set to Brasília: nothing may read local time."""
    before = os.environ.get("TZ")
    os.environ["TZ"] = "America/Sao_Paulo"
    time.tzset()
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = before
        time.tzset()


# --- the request ------------------------------------------------------------------------


def test_instants_are_utc_whatever_the_local_zone(brasilia_local_time: None) -> None:
    """A naive instant is UTC (not local time), an offset is converted to UTC (not to
    the local zone): the report's `from`/`to` read +00:00 on every host."""
    period = g.parse_period("2026-11-01T00:00:00", "2026-11-01T12:00:00-03:00", None, NOW)
    assert period.start.isoformat() == "2026-11-01T00:00:00+00:00"
    assert period.end.isoformat() == "2026-11-01T15:00:00+00:00"
    assert period.equipment_id is None


def test_the_earliest_instant_and_the_longest_period_are_accepted() -> None:
    """Bounds are inclusive: 2000-01-01T00:00Z itself, exactly 31 days, 64 characters."""
    first = g.parse_instant("2000-01-01T00:00:00Z", "from")
    assert first == g.EARLIEST
    period = g.parse_period("2026-10-01", "2026-11-01", "x" * 64, NOW)
    assert period.end - period.start == g.MAX_PERIOD
    assert period.equipment_id == "x" * 64


def test_a_period_starting_now_is_in_the_future() -> None:
    with pytest.raises(g.GapsRequestError, match="from is in the future"):
        g.parse_period(NOW.isoformat(), (NOW + HOUR).isoformat(), None, NOW)


EXAMPLES = (
    "(e.g. 2026-11-29T00:00:00Z, 2026-11-29T00:00:00-03:00 or 2026-11-29; no offset means UTC)"
)


@pytest.mark.parametrize(
    ("start", "end", "equipment", "message"),
    [
        (None, "2026-11-02", None, "from and to are required (ISO 8601 instants)"),
        ("x" * 50, "2026-11-02", None, f"from='{'x' * 40}' is not an ISO 8601 instant {EXAMPLES}"),
        ("2026-11-01", "ontem", None, f"to='ontem' is not an ISO 8601 instant {EXAMPLES}"),
        ("2026-11-01", "1999-01-01", None, "to is before 2000-01-01: no reading is that old"),
        ("2026-11-01", " ", None, "to is empty: give an ISO 8601 instant"),
        ("2026-11-02", "2026-11-01", None, "to must be after from"),
        ("2026-10-01", "2026-11-01T00:00:01", None, "the period is longer than 31 days: split it"),
        (
            "2027-01-01",
            "2027-01-02",
            None,
            "from is in the future: there is nothing to report yet",
        ),
        (
            "2026-11-01",
            "2026-11-02",
            "",
            "equipamento is empty: give an equipment id or leave it out",
        ),
        (
            "2026-11-01",
            "2026-11-02",
            "x" * 65,
            "equipamento is not an equipment id (at most 64 characters)",
        ),
    ],
)
def test_each_refusal_reads_in_full(
    start: str | None, end: str | None, equipment: str | None, message: str
) -> None:
    """The message an operator reads (HTTP 400 body, CLI stderr), word for word."""
    with pytest.raises(g.GapsRequestError) as refused:
        g.parse_period(start, end, equipment, NOW)
    assert str(refused.value) == message


# --- the rules ------------------------------------------------------------------------------


def test_a_reading_exactly_a_day_before_teaches_the_cadence() -> None:
    """The day before is [start - 1 day, start): its first instant counts."""
    assert g.learned_cadence([T0 - g.LOOKBACK, T0 - g.LOOKBACK + s(60)], T0) == 60.0
    assert g.learned_cadence([T0 - g.LOOKBACK - s(1), T0 - g.LOOKBACK + s(60)], T0) is None


def test_an_interval_from_the_period_s_first_instant_is_the_period_s() -> None:
    """A reading exactly at the start opens an interval of the period."""
    assert g.long_intervals([T0, T0 + HOUR], T0, 60.0) == [(T0, T0 + HOUR)]
    assert g.long_intervals([T0 - s(1), T0 + HOUR], T0, 60.0) == []


def test_a_silence_of_exactly_the_threshold_at_either_edge_is_not_a_gap() -> None:
    """Longer than max(3 x cadence, 60 s) is a gap; exactly that long is not."""
    end = T0 + HOUR
    limit = g.threshold_s(30.0)
    edges = g.period_gaps(
        T0, end, first_at=T0 + s(limit), last_at=end - s(limit), inside=[], cadence_s=30.0
    )
    assert edges == []
    later = g.period_gaps(
        T0,
        end,
        first_at=T0 + s(limit + 0.001),
        last_at=end - s(limit + 0.001),
        inside=[],
        cadence_s=30.0,
    )
    assert [x.kind for x in later] == [g.KIND_START, g.KIND_END]


def test_an_inside_gap_clipped_shorter_than_a_cadence_loses_nothing() -> None:
    """An interval running past the period's end is clipped there; what is left of it
    after its reading's own cadence may be nothing, never a negative or a made-up second."""
    gap = g.make_gap(T0, T0 + s(10), g.KIND_INSIDE, 30.0)
    assert (gap.lost_s, gap.expected_readings) == (0.0, 0)
    clipped = g.period_gaps(
        T0,
        T0 + HOUR,
        first_at=T0,
        last_at=T0 + HOUR - s(20),
        inside=[(T0 + HOUR - s(20), T0 + 2 * HOUR)],
        cadence_s=30.0,
    )
    assert [(x.kind, x.end, x.lost_s) for x in clipped] == [(g.KIND_INSIDE, T0 + HOUR, 0.0)]


def test_coverage_of_an_empty_or_tiny_period_and_its_rounding() -> None:
    """Nothing to cover is fully covered; a sub-second period is still a share; two
    decimals; always within [0, 100] even for gaps that claim more (or less) than the span."""
    assert g.coverage_pct([], T0, T0) == 100.0
    half = g.Gap(T0, T0 + s(0.5), g.KIND_ALL, 0.25, None)
    assert g.coverage_pct([half], T0, T0 + s(0.5)) == 50.0
    one_second = g.Gap(T0, T0 + s(1), g.KIND_INSIDE, 1.0, 1)
    assert g.coverage_pct([one_second], T0, T0 + timedelta(days=1)) == 100.0  # 99.9988
    lost_a_minute = g.Gap(T0, T0 + s(61), g.KIND_INSIDE, 61.0, 2)
    assert g.coverage_pct([lost_a_minute], T0, T0 + timedelta(days=1)) == 99.93  # 99.9294
    negative = g.Gap(T0, T0 + s(60), g.KIND_INSIDE, -600.0, 0)
    assert g.coverage_pct([negative], T0, T0 + HOUR) == 100.0
    overlapping = g.Gap(T0, T0 + HOUR, g.KIND_ALL, 7200.0, None)
    assert g.coverage_pct([overlapping], T0, T0 + HOUR) == 0.0


def test_total_energy_has_three_decimals() -> None:
    assert g.total_kwh([0.12345]) == 0.123


# --- the JSON bodies ------------------------------------------------------------------------


def test_a_gap_s_body_in_full() -> None:
    gap = g.Gap(T0, T0 + s(100), g.KIND_INSIDE, 80.0, 3, 1.23456)
    assert gap.body() == {
        "start": "2026-11-01T00:00:00+00:00",
        "end": "2026-11-01T00:01:40+00:00",
        "kind": "inside",
        "minutes": 1.67,
        "lost_minutes": 1.33,
        "expected_readings": 3,
        "mean_kw": 1.235,
        "missing_kwh": 0.027,  # 1.23456 kW x 80 s = 0.02743 kWh
    }
    unknown = g.Gap(T0, T0 + s(100), g.KIND_START, 100.0, None)
    assert unknown.body()["mean_kw"] is None and unknown.body()["missing_kwh"] is None


def test_an_equipment_s_body_in_full() -> None:
    gap = g.Gap(T0, T0 + s(600), g.KIND_INSIDE, 570.0, 19, 2.0)
    row = g.EquipmentGaps("eq1", "Medidor", 30.12345, 100, [gap])
    assert row.body(T0, T0 + HOUR) == {
        "equipamento_id": "eq1",
        "nome": "Medidor",
        "cadence_s": 30.123,
        "threshold_s": 90.37,  # 3 x 30.12345 = 90.37035
        "readings": 100,
        "expected": 120,  # 3600 / 30.12345 = 119.5
        "coverage_pct": 84.17,
        "missing_kwh": 0.317,  # 2 kW x 570 s
        "gaps": [gap.body()],
    }
    silent = g.EquipmentGaps("eq2", None, None, 0, [])
    body = silent.body(T0, T0 + HOUR)
    assert (body["cadence_s"], body["threshold_s"], body["expected"]) == (None, 60.0, None)


# --- the text report ------------------------------------------------------------------------


def test_the_text_report_line_for_line() -> None:
    """Every field of the text in place: unknown cadence, name, expected readings and
    energy as `?`/`unknown`, a known energy in kWh, equipment without gaps skipped (also
    when listed first), the totals."""
    end = T0 + HOUR
    fine = g.EquipmentGaps("eq0", "Medidor", 60.0, 60, [])
    unknown_cadence = g.EquipmentGaps(
        "eq1",
        None,
        None,
        1,
        [
            g.Gap(T0, T0 + 30 * s(60), g.KIND_START, 1800.0, None, 2.0),
            g.Gap(T0 + 30 * s(60), end, g.KIND_END, 1800.0, None),
        ],
    )
    powerless = g.EquipmentGaps(
        "eq2", "Inversor", 30.0, 100, [g.Gap(T0, T0 + 10 * s(60), g.KIND_START, 600.0, 20)]
    )
    report = g.report_body(g.Period(T0, end), end, [fine, unknown_cadence, powerless])
    assert g.render_text(report) == (
        "data-loss report 2026-11-01T00:00:00+00:00 .. 2026-11-01T01:00:00+00:00\n"
        f"rule: {g.THRESHOLD_RULE}\n"
        "\n"
        "eq1    cadence ?  readings 1/?  coverage 0 %  gaps 2  missing 1 kWh\n"
        "    2026-11-01T00:00:00+00:00 .. 2026-11-01T00:30:00+00:00  30 min  ? readings  1 kWh\n"
        "    2026-11-01T00:30:00+00:00 .. 2026-11-01T01:00:00+00:00  30 min  ? readings  ?\n"
        "eq2  Inversor  cadence 30 s  readings 100/120  coverage 83.33 %  gaps 1  missing unknown\n"
        "    2026-11-01T00:00:00+00:00 .. 2026-11-01T00:10:00+00:00  10 min  20 readings  ?\n"
        "\n"
        "3 equipment (2 with gaps), 3 gaps, missing 1 kWh\n"
    )


def test_one_equipment_without_gaps_reads_without_a_missing_column() -> None:
    end = T0 + HOUR
    fine = g.EquipmentGaps("eq0", "Medidor", 60.0, 60, [])
    report = g.report_body(g.Period(T0, end, "eq0"), end, [fine])
    lines = g.render_text(report).splitlines()
    assert lines[3:] == [
        "eq0  Medidor  cadence 60 s  readings 60/60  coverage 100 %  gaps 0",
        "",
        "1 equipment (0 with gaps), 0 gaps, missing unknown",
    ]


# --- from the database's rows ---------------------------------------------------------------


def _scan_row(**overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "equipamento_id": "eq1",
        "nome": "Medidor",
        "cadence_s": 30.0,
        "readings": 100,
        "first_at": T0,
        "last_at": T0 + HOUR - s(30),
        "gap_starts": None,
        "gap_ends": None,
    }
    return row | overrides


def test_a_scan_row_becomes_the_equipment_s_gaps() -> None:
    """`gaps_scan`'s row: the cadence (float8 seconds; 0 s is no cadence),
    the long intervals as two arrays (null when none), the edges from first/last."""
    row = _scan_row(cadence_s=30.0, gap_starts=[T0 + s(600)], gap_ends=[T0 + s(1200)])
    eq = g._equipment_gaps(row, T0, T0 + HOUR)
    assert (eq.equipamento_id, eq.nome, eq.cadence_s, eq.readings) == ("eq1", "Medidor", 30.0, 100)
    assert eq.gaps == [g.make_gap(T0 + s(600), T0 + s(1200), g.KIND_INSIDE, 30.0)]
    silent = g._equipment_gaps(
        _scan_row(cadence_s=0, first_at=None, last_at=None, readings=0), T0, T0 + HOUR
    )
    assert silent.cadence_s is None
    assert silent.gaps == [g.make_gap(T0, T0 + HOUR, g.KIND_ALL, None)]
    unknown = g._equipment_gaps(_scan_row(cadence_s=None, first_at=T0 + s(600)), T0, T0 + HOUR)
    assert unknown.cadence_s is None
    assert [x.kind for x in unknown.gaps] == [g.KIND_START]


def test_a_mean_power_is_a_float_or_unknown() -> None:
    assert g._float(2) == 2.0 and type(g._float(2)) is float
    assert g._float(1.5) == 1.5
    assert g._float(None) is None
    assert g._float("2") is None
