"""The data-loss report: for a period, per equipment, where readings are missing and what
energy went with them (`aupus-ha gaps`, `GET /health/gaps`).

Operators used to answer "dados perdidos? se sim, quantos?" with hand-written SQL after
every incident. The report answers it the same way every time:

* **cadence**: an equipment's usual interval, learned from its own readings: the (lower)
  median interval between its consecutive readings in the period, or, with fewer than
  10 readings there, over the day before and the period. A median
  ignores the gaps themselves (a minority of the intervals) and any burst of replayed
  readings; the day before gives a device silent for most of the period a cadence, and
  is read only for such devices (it would double the work of a one-day report).
* **gap**: an interval without readings longer than `max(3 × cadence, 60 s)`, clipped to
  the period; the period's start and end count as edges, so an equipment silent at the
  start, at the end or all along has a gap there.
* **lost time**: a reading stands for one cadence, so a gap that begins at a reading
  (between two readings, or after the last one) loses its length minus one cadence; a
  gap from the period's start (or an equipment silent all along) loses all of it.
  `expected_readings` = lost time / cadence, rounded: on a regular feed, exactly the
  readings of [from, to) that are missing. `coverage_pct` = the share of the period
  not lost.
* **energy**: the mean `potencia_ativa_kw` of the readings around the gap (up to 5 just
  before its start and 5 just after its end, each within a day of it) × the lost hours;
  `null`, never 0, when none of them has a power (generic devices, A-966 boot rows).

The heavy part runs in PostgreSQL (`gaps_scan`: one range of the natural key per
equipment, `lead()` in key order, the median, the long intervals) so a day of a
10-million-row table costs well under a second and only the gaps cross the wire; what
the gaps mean is computed by the plain functions below. `learned_cadence` and
`long_intervals` are the SQL's rules in Python: the integration test holds the SQL to them.
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import Settings
from aupus_ha.database.connection import (
    CONNECTION_ERRORS,
    DatabaseUnavailable,
    create_pool,
    describe_error,
)
from aupus_ha.database.queries import Queries
from aupus_ha.pipeline.store import read_convention

if TYPE_CHECKING:
    from aupus_ha.operations.health import DbGate

Body = dict[str, Any]

CADENCE_MULTIPLE: Final = 3.0  # a gap is longer than this many cadences...
FLOOR_S: Final = 60.0  # ...and than this (a 5-s device missing 16 s is jitter, not loss)
LOOKBACK: Final = timedelta(days=1)  # where the cadence of a nearly silent device is learned
MIN_READINGS: Final = 10  # fewer in the period: the cadence is learned with the day before
MAX_PERIOD: Final = timedelta(days=31)  # a longer period is refused (400)
POWER_NEIGHBOURS: Final = 5  # readings each side of a gap whose power is averaged
POWER_REACH_S: Final = 86_400.0  # ...at most this far from the gap's edge
EARLIEST: Final = datetime(2000, 1, 1, tzinfo=UTC)  # older instants are typos (and overflow)
HTTP_TIMEOUT_S: Final = 20.0  # a report slower than this answers 503
CLI_TIMEOUT_S: Final = 300.0
THRESHOLD_RULE: Final = (
    f"gap > max({CADENCE_MULTIPLE:g} x cadence, {FLOOR_S:g} s); cadence = median interval "
    f"between consecutive readings in the period (with the day before when it holds fewer "
    f"than {MIN_READINGS}); "
    f"missing_kwh = mean potencia_ativa_kw of up to {POWER_NEIGHBOURS} readings each side "
    "x lost hours (null when no power is known)"
)

# Any refusal of the report's queries (a privilege, a missing column): the report fails
# with a message, the instance carries on.
_QUERY_ERRORS: Final[tuple[type[BaseException], ...]] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

KIND_INSIDE = "inside"  # between two readings
KIND_START = "start"  # from the period's start to the first reading
KIND_END = "end"  # from the last reading to the period's end
KIND_ALL = "all"  # no reading in the period


class GapsRequestError(ValueError):
    """A request the report cannot answer (HTTP 400, CLI exit 2); the text says why."""


class ReportTooSlow(DatabaseUnavailable):
    """The report did not finish within its timeout."""


# --- the request -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    start: datetime
    end: datetime  # as asked
    equipment_id: str | None = None

    def until(self, now: datetime) -> datetime:
        """The end the report covers: a period reaching into the future stops at now."""
        return min(self.end, now)


def parse_instant(text: str, name: str) -> datetime:
    """ISO 8601 date or date-time; without an offset it is UTC (the table's time)."""
    value = text.strip()
    if not value:
        raise GapsRequestError(f"{name} is empty: give an ISO 8601 instant")
    try:
        parsed = datetime.fromisoformat(value)
        instant = parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
    except (ValueError, OverflowError):
        raise GapsRequestError(
            f"{name}={text[:40]!r} is not an ISO 8601 instant (e.g. 2026-11-29T00:00:00Z, "
            "2026-11-29T00:00:00-03:00 or 2026-11-29; no offset means UTC)"
        ) from None
    if instant < EARLIEST:
        raise GapsRequestError(f"{name} is before {EARLIEST.date()}: no reading is that old")
    return instant


def parse_period(
    start: str | None, end: str | None, equipment: str | None, now: datetime
) -> Period:
    """The validated request; every refusal names the parameter and what it accepts."""
    if start is None or end is None:
        raise GapsRequestError("from and to are required (ISO 8601 instants)")
    first = parse_instant(start, "from")
    last = parse_instant(end, "to")
    if last <= first:
        raise GapsRequestError("to must be after from")
    if last - first > MAX_PERIOD:
        raise GapsRequestError(f"the period is longer than {MAX_PERIOD.days} days: split it")
    if first >= now:
        raise GapsRequestError("from is in the future: there is nothing to report yet")
    equipment_id = equipment.strip() if equipment is not None else None
    if equipment is not None and not equipment_id:
        raise GapsRequestError("equipamento is empty: give an equipment id or leave it out")
    if equipment_id is not None and (len(equipment_id) > 64 or not equipment_id.isprintable()):
        raise GapsRequestError("equipamento is not an equipment id (at most 64 characters)")
    return Period(first, last, equipment_id)


# --- the rules (pure) ------------------------------------------------------------------


def threshold_s(cadence_s: float | None) -> float:
    """The shortest silence that counts as a gap."""
    if cadence_s is None:
        return FLOOR_S
    return max(CADENCE_MULTIPLE * cadence_s, FLOOR_S)


def cadence_of(instants: Sequence[datetime]) -> float | None:
    """The lower median interval in seconds between consecutive (sorted, distinct)
    readings (an interval that occurred, like `percentile_disc`); None with fewer than
    two readings."""
    ordered = sorted(instants)
    steps = [(b - a).total_seconds() for a, b in itertools.pairwise(ordered)]
    return float(statistics.median_low(steps)) if steps else None


def learned_cadence(instants: Sequence[datetime], start: datetime) -> float | None:
    """The cadence as `gaps_scan` learns it from readings of [start - LOOKBACK, end):
    from the period's alone, unless it holds fewer than MIN_READINGS."""
    in_period = [t for t in instants if t >= start]
    if len(in_period) >= MIN_READINGS:
        return cadence_of(in_period)
    return cadence_of([t for t in instants if t >= start - LOOKBACK])


def long_intervals(
    instants: Sequence[datetime], start: datetime, limit_s: float
) -> list[tuple[datetime, datetime]]:
    """(reading, next reading) pairs farther apart than `limit_s`, from readings at or
    after `start` (what `gaps_scan` returns)."""
    ordered = sorted(instants)
    return [
        (a, b)
        for a, b in itertools.pairwise(ordered)
        if a >= start and (b - a).total_seconds() > limit_s
    ]


@dataclass(frozen=True, slots=True)
class Gap:
    start: datetime
    end: datetime
    kind: str  # KIND_*
    lost_s: float  # the time no reading covers
    expected_readings: int | None  # None when the cadence is unknown
    mean_kw: float | None = None

    @property
    def minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60.0

    @property
    def missing_kwh(self) -> float | None:
        return None if self.mean_kw is None else self.mean_kw * self.lost_s / 3600.0

    def body(self) -> Body:
        kwh = self.missing_kwh
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "kind": self.kind,
            "minutes": round(self.minutes, 2),
            "lost_minutes": round(self.lost_s / 60.0, 2),
            "expected_readings": self.expected_readings,
            "mean_kw": None if self.mean_kw is None else round(self.mean_kw, 3),
            "missing_kwh": None if kwh is None else round(kwh, 3),
        }


def make_gap(start: datetime, end: datetime, kind: str, cadence_s: float | None) -> Gap:
    """A gap with its lost time and expected readings (see the module's rules)."""
    length = (end - start).total_seconds()
    after_reading = kind in (KIND_INSIDE, KIND_END)  # that reading stands for one cadence
    lost = max(0.0, length - cadence_s) if after_reading and cadence_s else length
    expected = round(lost / cadence_s) if cadence_s else None
    return Gap(start, end, kind, lost, expected)


def period_gaps(
    start: datetime,
    end: datetime,
    *,
    first_at: datetime | None,
    last_at: datetime | None,
    inside: Sequence[tuple[datetime, datetime]],
    cadence_s: float | None,
) -> list[Gap]:
    """Every gap of one equipment in [start, end], in time order: the silence before its
    first reading and after its last (when longer than the threshold), and the long
    intervals between its readings (already filtered by the threshold)."""
    limit = threshold_s(cadence_s)
    if first_at is None or last_at is None:
        return [make_gap(start, end, KIND_ALL, cadence_s)]
    gaps: list[Gap] = []
    if (first_at - start).total_seconds() > limit:
        gaps.append(make_gap(start, first_at, KIND_START, cadence_s))
    gaps += [make_gap(a, min(b, end), KIND_INSIDE, cadence_s) for a, b in inside]
    if (end - last_at).total_seconds() > limit:
        gaps.append(make_gap(last_at, end, KIND_END, cadence_s))
    return gaps


def coverage_pct(gaps: Sequence[Gap], start: datetime, end: datetime) -> float:
    """The share of the period that no gap lost, in percent."""
    span = (end - start).total_seconds()
    if span <= 0:
        return 100.0
    lost = sum(g.lost_s for g in gaps)
    return round(max(0.0, min(100.0, 100.0 * (1.0 - lost / span))), 2)


def total_kwh(values: Sequence[float | None]) -> float | None:
    """The sum of the known values; None when none is known (unknown is not zero)."""
    known = [v for v in values if v is not None]
    return round(sum(known), 3) if known else None


@dataclass(frozen=True, slots=True)
class EquipmentGaps:
    equipamento_id: str
    nome: str | None
    cadence_s: float | None
    readings: int
    gaps: list[Gap]

    def body(self, start: datetime, end: datetime) -> Body:
        span = (end - start).total_seconds()
        expected = round(span / self.cadence_s) if self.cadence_s else None
        return {
            "equipamento_id": self.equipamento_id,
            "nome": self.nome,
            "cadence_s": None if self.cadence_s is None else round(self.cadence_s, 3),
            "threshold_s": round(threshold_s(self.cadence_s), 3),
            "readings": self.readings,
            "expected": expected,
            "coverage_pct": coverage_pct(self.gaps, start, end),
            "missing_kwh": total_kwh([g.missing_kwh for g in self.gaps]),
            "gaps": [g.body() for g in self.gaps],
        }


def report_body(period: Period, until: datetime, equipment: Sequence[EquipmentGaps]) -> Body:
    """The report as JSON (the shape the console draws its gap bars from)."""
    rows = [e.body(period.start, until) for e in equipment]
    return {
        "from": period.start.isoformat(),
        "to": period.end.isoformat(),
        "until": until.isoformat(),
        "equipamento": period.equipment_id,
        "threshold_rule": THRESHOLD_RULE,
        "equipamentos": rows,
        "total_gaps": sum(len(e.gaps) for e in equipment),
        "total_missing_kwh": total_kwh([r["missing_kwh"] for r in rows]),
    }


# --- the database ----------------------------------------------------------------------


async def fetch_report(
    pool: asyncpg.Pool | asyncpg.Connection, period: Period, *, now: datetime, timeout: float
) -> Body:
    """The report from the database: `gaps_scan`, then `gaps_power` for the gaps found.

    Raises DatabaseUnavailable (connection lost, timeout, a refused query).
    """
    until = period.until(now)
    try:
        async with asyncio.timeout(timeout):
            queries = await typed_queries(pool)
            rows = await pool.fetch(
                queries["gaps_scan"],
                period.start,
                until,
                period.start - LOOKBACK,
                period.equipment_id,
                FLOOR_S,
                CADENCE_MULTIPLE,
                MIN_READINGS,
            )
            equipment = [_equipment_gaps(dict(r), period.start, until) for r in rows]
            equipment = await _with_power(pool, queries, equipment)
    except TimeoutError:
        raise ReportTooSlow(
            f"the report took longer than {timeout:g} s: ask for a shorter period"
        ) from None
    except _QUERY_ERRORS as exc:
        raise DatabaseUnavailable(describe_error(exc)) from exc
    return report_body(period, until, equipment)


async def typed_queries(pool: asyncpg.Pool | asyncpg.Connection) -> Queries:
    """The named queries typed for this table's key columns (a legacy table's `timestamp`
    and `char(26)`): compared in their own type, the natural key serves the ranges."""
    convention, _ = await read_convention(pool, Queries()["column_types"])
    return convention.queries()


def _equipment_gaps(row: Mapping[str, Any], start: datetime, until: datetime) -> EquipmentGaps:
    cadence = row["cadence_s"]
    cadence = float(cadence) if cadence else None  # 0 s cannot be a cadence
    inside = list(zip(row["gap_starts"] or [], row["gap_ends"] or [], strict=True))
    gaps = period_gaps(
        start,
        until,
        first_at=row["first_at"],
        last_at=row["last_at"],
        inside=inside,
        cadence_s=cadence,
    )
    return EquipmentGaps(row["equipamento_id"], row["nome"], cadence, row["readings"], gaps)


async def _with_power(
    pool: asyncpg.Pool | asyncpg.Connection, queries: Queries, equipment: list[EquipmentGaps]
) -> list[EquipmentGaps]:
    """The same equipment, each gap with the mean power around it."""
    keys = [(e.equipamento_id, g.start, g.end) for e in equipment for g in e.gaps]
    if not keys:
        return equipment
    rows = await pool.fetch(
        queries["gaps_power"],
        [k[0] for k in keys],
        [k[1] for k in keys],
        [k[2] for k in keys],
        POWER_NEIGHBOURS,
        POWER_REACH_S,
    )
    mean_kw = {int(r["pos"]) - 1: r["mean_kw"] for r in rows}
    positions = itertools.count()
    return [
        replace(e, gaps=[replace(g, mean_kw=_float(mean_kw.get(next(positions)))) for g in e.gaps])
        for e in equipment
    ]


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


# --- HTTP ------------------------------------------------------------------------------


async def http_view(
    params: Mapping[str, str], pool: asyncpg.Pool | None, gate: DbGate
) -> tuple[Body, int]:
    """GET /health/gaps?from=&to=&equipamento=: 200 with the report, 400 for a bad
    request (with a message), 404 for an unknown equipment, 503 when the database
    cannot answer."""
    now = datetime.now(UTC)
    try:
        period = parse_period(params.get("from"), params.get("to"), params.get("equipamento"), now)
    except GapsRequestError as exc:
        return {"status": "bad_request", "error": str(exc)}, 400
    if pool is None:
        return {"status": "unavailable", "error": "database not connected yet"}, 503
    try:
        async with gate.slot():
            body = await fetch_report(pool, period, now=now, timeout=HTTP_TIMEOUT_S)
    except ReportTooSlow as exc:
        return {"status": "unavailable", "error": str(exc)}, 503
    except DatabaseUnavailable:
        # The driver's text names addresses: not on a route anyone may call.
        return {"status": "unavailable", "error": "cannot read the database"}, 503
    if period.equipment_id is not None and not body["equipamentos"]:
        error = f"equipamento {period.equipment_id!r} does not exist"
        return {"status": "not_found", "error": error}, 404
    return body, 200


# --- command line ----------------------------------------------------------------------


def render_text(report: Mapping[str, Any]) -> str:
    """The report for a terminal: a line per equipment with gaps (every one asked for by
    id) and a line per gap, then the totals."""
    lines = [
        f"data-loss report {report['from']} .. {report['until']}",
        f"rule: {report['threshold_rule']}",
        "",
    ]
    single = report["equipamento"] is not None
    for e in report["equipamentos"]:
        if not e["gaps"] and not single:
            continue
        cadence = "?" if e["cadence_s"] is None else f"{e['cadence_s']:g} s"
        kwh = "unknown" if e["missing_kwh"] is None else f"{e['missing_kwh']:g} kWh"
        gaps = e["gaps"]
        lines.append(
            f"{e['equipamento_id']}  {e['nome'] or ''}  cadence {cadence}  readings "
            f"{e['readings']}/{e['expected'] if e['expected'] is not None else '?'}  "
            f"coverage {e['coverage_pct']:g} %  gaps {len(gaps)}"
            + (f"  missing {kwh}" if gaps else "")
        )
        for g in gaps:
            gkwh = "?" if g["missing_kwh"] is None else f"{g['missing_kwh']:g} kWh"
            expected = "?" if g["expected_readings"] is None else g["expected_readings"]
            lines.append(
                f"    {g['start']} .. {g['end']}  {g['minutes']:g} min  {expected} readings  {gkwh}"
            )
    total = report["total_missing_kwh"]
    lossy = sum(1 for e in report["equipamentos"] if e["gaps"])
    lines += [
        "",
        f"{len(report['equipamentos'])} equipment ({lossy} with gaps), "
        f"{report['total_gaps']} gaps, missing "
        + ("unknown" if total is None else f"{total:g} kWh"),
    ]
    return "\n".join(lines) + "\n"


async def run_cli(
    settings: Settings, start: str, end: str, equipment: str | None, *, as_json: bool
) -> int:
    """`aupus-ha gaps`: the report on stdout; exit 2 for a bad request, 1 when the
    database cannot answer (raised as DatabaseUnavailable to the CLI's exit codes)."""
    try:
        period = parse_period(start, end, equipment, datetime.now(UTC))
    except GapsRequestError as exc:
        print(f"aupus-ha gaps: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    pool = await create_pool(settings, f"aupus-ha/{settings.instance_id}/gaps", max_size=1)
    try:
        report = await fetch_report(pool, period, now=datetime.now(UTC), timeout=CLI_TIMEOUT_S)
    finally:
        await pool.close()
    if period.equipment_id is not None and not report["equipamentos"]:
        print(f"aupus-ha gaps: equipamento {period.equipment_id!r} does not exist", file=sys.stderr)
        return constants.EXIT_FAILURE
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_text(report))
    return constants.EXIT_OK
