"""The start-up check of a legacy database's time convention.

A legacy `equipamentos_dados` keeps `timestamp_dados`, `timestamp_fim` and `created_at`
in `timestamp without time zone` columns holding UTC wall time (DOMAIN v2; v1 said
Brasília, and an aupus-ha of that version wrote Brasília time). aupus-ha writes wall
time in `LEGACY_TIMESTAMP_ZONE` (UTC by default) and runs every session in that zone, so
its `created_at` defaults agree. Rows whose two columns disagree by hours mean some
writer uses another zone: its rows and ours for the same instant get different keys
(double energy), tariff periods shift, the platform's offline monitor alarms. Nothing
is rewritten here; the operator is told, once at start at error level
(`legacy.timezone_mismatch`) and in `/health` (`checks.legacyTime`, status degraded).

The median of `created_at - timestamp_dados` over the most recent rows is robust to
the few readings timed long before they were written (store-and-forward from an SD
buffer, a 15-minute A-966 bucket, a backlog replayed after an outage).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import asyncpg

from aupus_ha.database.connection import CONNECTION_ERRORS, describe_error
from aupus_ha.logs import get_logger

log = get_logger(__name__)

RECENT_ROWS: Final = 1000  # rows the median is taken over
MIN_ROWS: Final = 20  # fewer: no verdict (a new database)
AGREE_WITHIN_S: Final = 3600.0  # |median| below this: the rows agree
BRASILIA_OFFSET_S: Final = 3 * 3600.0
CHECK_TIMEOUT_S: Final = 5.0

# Any refusal of the check's query (a privilege, a missing column) is no verdict.
_QUERY_ERRORS: Final[tuple[type[BaseException], ...]] = (*CONNECTION_ERRORS, asyncpg.PostgresError)

STATUS_OK: Final = "ok"
STATUS_MISMATCH: Final = "mismatch"
STATUS_UNKNOWN: Final = "unknown"  # too few rows, or the query failed
STATUS_NOT_LEGACY: Final = "not_applicable"  # a fresh schema (timestamptz)


@dataclass(frozen=True, slots=True)
class LegacyTimeCheck:
    """The verdict on recent rows, as `/health` shows it."""

    status: str
    message: str
    median_s: float | None = None
    rows: int = 0
    zone: str = "UTC"

    def body(self) -> dict[str, object]:
        median_h = None if self.median_s is None else round(self.median_s / 3600, 3)
        return {
            "status": self.status,
            "message": self.message,
            "zone": self.zone,
            "medianCreatedMinusDataHours": median_h,
            "rowsChecked": self.rows,
        }


NOT_LEGACY: Final = LegacyTimeCheck(
    STATUS_NOT_LEGACY, "fresh schema: timestamp_dados is timestamptz, no wall-time convention"
)


def verdict(median_s: float | None, rows: int, zone: str) -> LegacyTimeCheck:
    """Judge the median of `created_at - timestamp_dados` (seconds) over `rows` rows."""
    if median_s is None or rows < MIN_ROWS:
        message = f"only {rows} row(s) to compare: no verdict on the time convention yet"
        return LegacyTimeCheck(STATUS_UNKNOWN, message, median_s, rows, zone)
    hours = median_s / 3600
    if abs(median_s) < AGREE_WITHIN_S:
        message = (
            f"recent rows agree with LEGACY_TIMESTAMP_ZONE={zone}: median created_at - "
            f"timestamp_dados is {hours:+.2f} h over {rows} rows"
        )
        return LegacyTimeCheck(STATUS_OK, message, median_s, rows, zone)
    looks = ""
    if abs(abs(median_s) - BRASILIA_OFFSET_S) < AGREE_WITHIN_S / 2:
        late = "timestamp_dados" if median_s > 0 else "created_at"
        looks = (
            f" ({late} looks like Brasília wall time next to UTC: rows of an aupus-ha "
            "before DOMAIN v2, or a writer using local time)"
        )
    message = (
        f"recent legacy rows disagree: median created_at - timestamp_dados is {hours:+.2f} h "
        f"over {rows} rows, expected near 0 with LEGACY_TIMESTAMP_ZONE={zone}{looks}. "
        "Rows of different writers for one instant will not share a key: see "
        "docs/migration.md, 'Legacy time convention'"
    )
    return LegacyTimeCheck(STATUS_MISMATCH, message, median_s, rows, zone)


async def check_legacy_time(
    conn: asyncpg.Connection, query: str, zone: str, *, limit: int = RECENT_ROWS
) -> LegacyTimeCheck:
    """Run the check on `conn` (legacy databases only) and log its outcome; a failure
    of the query is no verdict, never a failed start."""
    try:
        row = await conn.fetchrow(query, limit, timeout=CHECK_TIMEOUT_S)
    except _QUERY_ERRORS as exc:
        result = LegacyTimeCheck(
            STATUS_UNKNOWN, f"could not read recent rows: {describe_error(exc)}", zone=zone
        )
        log.warning("legacy.timezone_check_failed", error=describe_error(exc))
        return result
    median = row["median_s"] if row is not None else None
    rows = int(row["n_rows"]) if row is not None else 0
    result = verdict(median, rows, zone)
    if result.status == STATUS_MISMATCH:
        log.error("legacy.timezone_mismatch", message=result.message, **_fields(result))
    else:
        log.info("legacy.timezone_check", status=result.status, **_fields(result))
    return result


def _fields(result: LegacyTimeCheck) -> dict[str, object]:
    return {"median_s": result.median_s, "rows": result.rows, "zone": result.zone}
