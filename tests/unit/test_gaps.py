"""The data-loss report's rules (aupus_ha/operations/gaps.py): cadence, gaps, lost time,
expected readings, coverage, energy, and the request's validation."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha.operations import gaps as g

T0 = datetime(2026, 11, 1, tzinfo=UTC)
DAY = timedelta(days=1)
NOW = datetime(2026, 12, 1, tzinfo=UTC)


def grid(step_s: float, count: int, start: datetime = T0) -> list[datetime]:
    return [start + timedelta(seconds=step_s * i) for i in range(count)]


def report_gaps(
    instants: list[datetime], start: datetime, end: datetime, cadence_s: float | None
) -> list[g.Gap]:
    """The gaps as fetch_report builds them, with the SQL's part done by the reference."""
    inside_period = sorted(t for t in instants if start <= t < end)
    inside = g.long_intervals(inside_period, start, g.threshold_s(cadence_s))
    return g.period_gaps(
        start,
        end,
        first_at=inside_period[0] if inside_period else None,
        last_at=inside_period[-1] if inside_period else None,
        inside=inside,
        cadence_s=cadence_s,
    )


# --- examples ---------------------------------------------------------------------------


def test_threshold_is_three_cadences_with_a_floor() -> None:
    """max(3 x cadence, 60 s); the floor alone when the cadence is unknown."""
    assert g.threshold_s(30.0) == 90.0
    assert g.threshold_s(900.0) == 2700.0
    assert g.threshold_s(5.0) == 60.0
    assert g.threshold_s(None) == 60.0


def test_cadence_is_the_median_interval_and_ignores_the_gaps() -> None:
    """A 30-s device with an hour of silence and a few late readings still has 30 s."""
    instants = grid(30, 100) + grid(30, 100, T0 + timedelta(hours=2))
    assert g.cadence_of(instants) == 30.0
    assert g.cadence_of([T0]) is None
    assert g.cadence_of([]) is None


def test_the_day_before_teaches_the_cadence_only_to_a_nearly_silent_device() -> None:
    """With MIN_READINGS readings in the period its own intervals decide; with fewer,
    the day before counts too (the lower median: an interval that occurred)."""
    before = grid(60, 1440, T0 - DAY)
    busy = before + grid(30, g.MIN_READINGS)
    assert g.learned_cadence(busy, T0) == 30.0
    sparse = before + grid(30, g.MIN_READINGS - 1)
    assert g.learned_cadence(sparse, T0) == 60.0
    assert g.cadence_of([T0, T0 + timedelta(seconds=10), T0 + timedelta(seconds=40)]) == 10.0


def test_a_hole_of_21_readings_is_one_gap_of_21_expected_readings() -> None:
    """Readings every 30 s, 21 missing: one inside gap of 11 min, 10.5 lost, 21 readings."""
    instants = [t for i, t in enumerate(grid(30, 2880)) if not 100 <= i <= 120]
    gaps = report_gaps(instants, T0, T0 + DAY, 30.0)
    assert len(gaps) == 1
    gap = gaps[0]
    assert (gap.start, gap.end) == (
        T0 + timedelta(seconds=99 * 30),
        T0 + timedelta(seconds=121 * 30),
    )
    assert gap.kind == g.KIND_INSIDE
    assert gap.minutes == 11.0
    assert gap.lost_s == 630.0
    assert gap.expected_readings == 21
    assert g.coverage_pct(gaps, T0, T0 + DAY) == pytest.approx(100 * (1 - 630 / 86_400), abs=0.01)


def test_silence_at_the_start_and_end_of_the_period_are_gaps() -> None:
    """First reading 10 min after the start, last 20 min before the end: two edge gaps;
    the start one loses all its length (20 readings), the end one all but the cadence
    its first reading stands for (39 readings)."""
    start, end = T0, T0 + timedelta(hours=2)
    instants = grid(30, 181, start + timedelta(minutes=10))  # 00:10 .. 01:40
    gaps = report_gaps(instants, start, end, 30.0)
    assert [x.kind for x in gaps] == [g.KIND_START, g.KIND_END]
    assert gaps[0].start == start and gaps[0].minutes == 10.0 and gaps[0].lost_s == 600.0
    assert gaps[0].expected_readings == 20
    assert gaps[1].end == end and gaps[1].minutes == 20.0 and gaps[1].lost_s == 1170.0
    assert gaps[1].expected_readings == 39


def test_silent_all_along_is_one_gap_with_nothing_covered() -> None:
    """No reading in the period: one gap over all of it, coverage 0."""
    gaps = report_gaps([], T0, T0 + DAY, 30.0)
    assert [(x.kind, x.start, x.end, x.expected_readings) for x in gaps] == [
        (g.KIND_ALL, T0, T0 + DAY, 2880)
    ]
    assert g.coverage_pct(gaps, T0, T0 + DAY) == 0.0


def test_an_unknown_cadence_leaves_expected_readings_unknown() -> None:
    """One reading only: the floor decides, nothing is expected, the lengths are lost."""
    gaps = report_gaps([T0 + timedelta(hours=1)], T0, T0 + timedelta(hours=2), None)
    assert [(x.kind, x.expected_readings, x.lost_s) for x in gaps] == [
        (g.KIND_START, None, 3600.0),
        (g.KIND_END, None, 3600.0),
    ]


def test_missing_energy_is_mean_power_times_lost_hours_and_unknown_stays_null() -> None:
    """2 kW around a gap that lost 630 s: 0.35 kWh; no power known: null, not 0."""
    gap = g.make_gap(T0, T0 + timedelta(seconds=660), g.KIND_INSIDE, 30.0)
    assert g.Gap(gap.start, gap.end, gap.kind, gap.lost_s, 21, 2.0).missing_kwh == 0.35
    assert gap.missing_kwh is None
    assert gap.body()["missing_kwh"] is None
    assert g.total_kwh([None, None]) is None
    assert g.total_kwh([None, 0.35, 1.0]) == 1.35


def test_the_body_keeps_the_console_s_field_names() -> None:
    """The JSON shape the console draws from (names may be added, never renamed)."""
    gaps = report_gaps(
        [t for i, t in enumerate(grid(30, 240)) if i != 50], T0, T0 + timedelta(hours=2), 30.0
    )
    equipment = g.EquipmentGaps("eq1", "Medidor", 30.0, 239, gaps)
    period = g.Period(T0, T0 + timedelta(hours=2))
    body = g.report_body(period, period.end, [equipment])
    assert {
        "from",
        "to",
        "threshold_rule",
        "equipamentos",
        "total_gaps",
        "total_missing_kwh",
    } <= set(body)
    row = body["equipamentos"][0]
    assert {
        "equipamento_id",
        "nome",
        "cadence_s",
        "readings",
        "expected",
        "coverage_pct",
        "missing_kwh",
        "gaps",
    } <= set(row)
    assert row["expected"] == 240
    assert body["total_gaps"] == 0  # one missing reading (60 s) is not a gap at 30 s


@pytest.mark.parametrize(
    ("start", "end", "equipment", "message"),
    [
        (None, "2026-11-02", None, "from and to are required"),
        ("2026-11-01", None, None, "from and to are required"),
        ("ontem", "2026-11-02", None, "not an ISO 8601 instant"),
        ("", "2026-11-02", None, "from is empty"),
        ("2026-11-02", "2026-11-01", None, "to must be after from"),
        ("2026-11-01", "2026-11-01", None, "to must be after from"),
        ("2026-10-01", "2026-11-02", None, "longer than 31 days"),
        ("2027-01-01", "2027-01-02", None, "from is in the future"),
        ("0001-01-01T00:00:00+05:00", "2026-11-02", None, "not an ISO 8601 instant"),
        ("1999-12-31", "2000-01-02", None, "before 2000-01-01"),
        ("2026-11-01", "2026-11-02", " ", "equipamento is empty"),
        ("2026-11-01", "2026-11-02", "x" * 65, "not an equipment id"),
        ("2026-11-01", "2026-11-02", "eq\x001", "not an equipment id"),
        ("2026-11-01", "2026-11-02", "eq\udcff", "not an equipment id"),
        ("2026-11-01\x00", "2026-11-02", None, "not an ISO 8601 instant"),
    ],
)
def test_a_bad_request_is_refused_with_a_message(
    start: str | None, end: str | None, equipment: str | None, message: str
) -> None:
    """Every refusal names what is wrong (HTTP 400, CLI exit 2)."""
    with pytest.raises(g.GapsRequestError, match=message):
        g.parse_period(start, end, equipment, NOW)


def test_instants_without_an_offset_are_utc() -> None:
    """A date, a naive date-time and an offset all become UTC instants."""
    period = g.parse_period("2026-11-01", "2026-11-01T12:00:00-03:00", " eq1 ", NOW)
    assert period.start == T0
    assert period.end == T0 + timedelta(hours=15)
    assert period.equipment_id == "eq1"
    assert period.until(T0 + timedelta(hours=1)) == T0 + timedelta(hours=1)


# --- properties -------------------------------------------------------------------------

cadences = st.sampled_from([5.0, 30.0, 60.0, 300.0, 900.0])


@st.composite
def feeds(draw: st.DrawFn) -> tuple[float, list[datetime], list[tuple[int, int]]]:
    """A regular feed over a day with up to 6 holes (index ranges of removed readings)."""
    cadence = draw(cadences)
    count = int(DAY.total_seconds() // cadence)
    holes = draw(
        st.lists(
            st.tuples(st.integers(0, count - 1), st.integers(1, max(1, count // 10))),
            max_size=6,
        )
    )
    removed = set()
    for first, length in holes:
        removed.update(range(first, min(count, first + length)))
    instants = [t for i, t in enumerate(grid(cadence, count)) if i not in removed]
    return cadence, instants, holes


@settings(max_examples=150, deadline=None)
@given(feeds())
def test_gaps_are_ordered_disjoint_inside_the_period_and_coverage_adds_up(
    feed: tuple[float, list[datetime], list[tuple[int, int]]],
) -> None:
    """Whatever the holes: gaps in order, not overlapping, inside [start, end], each
    longer than the threshold; lost time within each gap; coverage = 100 - lost share."""
    cadence, instants, _ = feed
    start, end = T0, T0 + DAY
    gaps = report_gaps(instants, start, end, cadence)
    limit = g.threshold_s(cadence)
    previous_end = start
    for gap in gaps:
        assert previous_end <= gap.start < gap.end <= end
        assert (gap.end - gap.start).total_seconds() > limit
        assert 0 <= gap.lost_s <= (gap.end - gap.start).total_seconds()
        assert gap.expected_readings is not None and gap.expected_readings >= 0
        previous_end = gap.end
    lost = sum(x.lost_s for x in gaps)
    expected = 100 * (1 - lost / DAY.total_seconds())
    assert g.coverage_pct(gaps, start, end) == pytest.approx(expected, abs=0.006)


@settings(max_examples=150, deadline=None)
@given(feeds())
def test_every_missing_reading_inside_a_gap_is_counted_once(
    feed: tuple[float, list[datetime], list[tuple[int, int]]],
) -> None:
    """On a regular feed, a gap's expected readings are exactly the grid points it lost,
    and no reading of the feed lies strictly inside a gap."""
    cadence, instants, _ = feed
    start, end = T0, T0 + DAY
    present = set(instants)
    for gap in report_gaps(instants, start, end, cadence):
        assert not any(gap.start < t < gap.end for t in present)
        points = grid(cadence, int(DAY.total_seconds() // cadence))
        lost_points = [t for t in points if gap.start <= t <= gap.end and t not in present]
        assert gap.expected_readings == len(lost_points)


@settings(max_examples=150, deadline=None)
@given(feeds())
def test_the_cadence_survives_the_holes(
    feed: tuple[float, list[datetime], list[tuple[int, int]]],
) -> None:
    """While most intervals are regular, the median is the device's cadence."""
    cadence, instants, _ = feed
    steps = len(instants) - 1
    regular = sum(1 for a, b in itertools.pairwise(instants) if (b - a).total_seconds() == cadence)
    if steps > 0 and regular > steps / 2:
        assert g.cadence_of(instants) == cadence


@given(
    st.lists(st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)), max_size=20),
)
def test_total_energy_is_null_only_when_nothing_is_known(values: list[float | None]) -> None:
    """The sum of the known values; None (never 0) when none is known."""
    total = g.total_kwh(values)
    known = [v for v in values if v is not None]
    assert (total is None) == (not known)
    if known:
        assert total == pytest.approx(sum(known), abs=0.001)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), st.text(max_size=40), st.datetimes().map(datetime.isoformat)),
    st.one_of(st.none(), st.text(max_size=40), st.datetimes().map(datetime.isoformat)),
    st.one_of(st.none(), st.text(max_size=80)),
)
def test_any_request_is_a_period_or_a_refusal_with_a_message(
    start: str | None, end: str | None, equipment: str | None
) -> None:
    """Whatever arrives in the query string: a valid period, or GapsRequestError (400),
    never another exception (a 500)."""
    try:
        period = g.parse_period(start, end, equipment, NOW)
    except g.GapsRequestError as exc:
        assert str(exc)
        return
    assert period.start < period.end <= period.start + g.MAX_PERIOD
    assert period.start.tzinfo is not None and period.start < NOW
    assert period.equipment_id is None or period.equipment_id.isprintable()


def test_the_text_report_lists_the_equipment_with_gaps_and_the_totals() -> None:
    """A line per equipment with gaps and per gap; the others are only counted, unless
    the report is for one equipment; an unknown energy reads `unknown`, not 0."""
    start, end = T0, T0 + timedelta(hours=2)
    lossy = g.EquipmentGaps(
        "eq1", "Medidor", 30.0, 200, report_gaps(grid(30, 200), start, end, 30.0)
    )
    fine = g.EquipmentGaps("eq2", "Inversor", 60.0, 120, [])
    text = g.render_text(g.report_body(g.Period(start, end), end, [lossy, fine]))
    assert "eq1  Medidor  cadence 30 s  readings 200/240  coverage" in text
    assert "eq2" not in text
    assert "20.5 min  40 readings  ?" in text
    assert text.endswith("2 equipment (1 with gaps), 1 gaps, missing unknown\n")
    alone = g.render_text(g.report_body(g.Period(start, end, "eq2"), end, [fine]))
    assert "eq2  Inversor  cadence 60 s  readings 120/120  coverage 100 %  gaps 0" in alone
