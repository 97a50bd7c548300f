"""The verdicts `/health` and the alerts share: one place says what "recent data",
"database reachable", "who leads", coverage, quality and this process's role mean.

`health.HealthViews` wraps these in its response bodies and the alert manager turns
the same verdicts into `ha_alerts` rows, so a probe and an alert never disagree on a
threshold. Everything here reads through the narrow `view` protocols.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from aupus_ha import constants
from aupus_ha.config import Settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.leadership.ha import role_for_mode
from aupus_ha.operations.view import LeaseView, StoreReads

Body = dict[str, Any]

DAY_S = 86_400.0
HOUR_S = 3_600.0
# A health probe must answer quickly even when the database does not.
HEALTH_QUERY_TIMEOUT_S = 2.0
COVERAGE_ALARM_PERCENT = 50.0
QUALITY_IDEAL_PERCENT = 80.0

DATA_OK = "ok"
DATA_WARNING = "warning"
DATA_CRITICAL = "critical"


class DbGate:
    """At most `slots` health queries at once.

    The pool (4 connections) is the flusher's: 100 concurrent health clients used to
    hold all of it and raised flush latency from 3 ms to 105 ms. A probe that cannot get
    a slot within HEALTH_QUERY_TIMEOUT_S is answered as "database busy" instead.
    """

    def __init__(self, slots: int) -> None:
        self._slots = asyncio.Semaphore(slots)

    @contextlib.asynccontextmanager
    async def slot(self, timeout: float = HEALTH_QUERY_TIMEOUT_S) -> AsyncIterator[None]:
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout)
        except TimeoutError:
            raise DatabaseUnavailable("busy: too many health queries at once") from None
        try:
            yield
        finally:
            self._slots.release()


@contextlib.asynccontextmanager
async def _ungated() -> AsyncIterator[None]:
    yield


def _slot(gate: DbGate | None) -> contextlib.AbstractAsyncContextManager[None]:
    return gate.slot() if gate is not None else _ungated()


def db_error(prefix: str, exc: Exception, details: bool) -> str:
    """The driver's error text names addresses, ports and server messages: only for
    requests allowed to see details (HEALTH_DETAILS, ADMIN_TOKEN)."""
    return f"{prefix}: {exc}" if details else prefix


def percent(part: int, whole: int, digits: int = 1) -> float:
    return round(100.0 * part / whole, digits) if whole else 0.0


def duration(seconds: float) -> str:
    """`42 s`, `17 min`, `3.5 h`: for the human messages only."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * HOUR_S:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / HOUR_S:.1f} h"


def reported_role(ha: LeaseView | None, mqtt_mode: str) -> str:
    """This process's role as health reports it: never `leader` once the lease ran out
    or while stopping; before the HA loop exists, the role its MQTT_MODE gives."""
    if ha is None:
        return role_for_mode(mqtt_mode)
    if ha.role == constants.ROLE_LEADER and not ha.is_leader():
        return constants.ROLE_STANDBY  # lease ran out: we are not leading any more
    if ha.role == constants.ROLE_STOPPED:
        return constants.ROLE_STANDBY  # shutting down: never reported as leading
    return ha.role


def current_leader(term: Mapping[str, object]) -> str | None:
    """The leader of the stored term, None when there is none (or it was released)."""
    leader = term.get("leader_instance_id") if term.get("released_at") is None else None
    return leader if isinstance(leader, str) and leader else None


def coverage_percent(window: Mapping[str, int]) -> float:
    """Enabled equipment with data in the window, in percent."""
    return percent(window.get("equipment_with_data", 0), window.get("equipment_enabled", 0))


def good_percent(window: Mapping[str, int]) -> float:
    """Readings of good quality in the window, in percent."""
    return percent(window.get("good", 0), window.get("total", 0))


def recent_data_status(age_s: float, settings: Settings) -> str:
    """`ok` / `warning` / `critical` by the age of the newest stored reading."""
    if age_s >= settings.recent_data_critical_s:
        return DATA_CRITICAL
    if age_s >= settings.recent_data_warning_s:
        return DATA_WARNING
    return DATA_OK


async def recent_data(
    store: StoreReads | None, settings: Settings, details: bool = False, gate: DbGate | None = None
) -> Body:
    """The `checks.recentData` body (also `/health/dados-recentes` and the alert)."""
    body: Body = {"lastDataTimestamp": None, "hoursSinceLastData": None}
    if store is None:
        return {**body, "status": DATA_CRITICAL, "message": "database not connected yet"}
    try:
        async with _slot(gate):
            last, age = await store.last_data(HEALTH_QUERY_TIMEOUT_S)
    except DatabaseUnavailable as exc:
        message = db_error("cannot read the database", exc, details)
        return {**body, "status": DATA_CRITICAL, "message": message}
    if last is None or age is None:
        return {**body, "status": DATA_CRITICAL, "message": "no reading stored yet"}
    age = max(age, 0.0)
    return {
        "status": recent_data_status(age, settings),
        "lastDataTimestamp": last,
        "hoursSinceLastData": round(age / HOUR_S, 3),
        "minutesSinceLastData": round(age / 60, 1),
        "thresholds": {
            "warningMinutes": round(settings.recent_data_warning_s / 60, 2),
            "criticalMinutes": round(settings.recent_data_critical_s / 60, 2),
        },
        "message": f"last reading stored {duration(age)} ago",
    }


async def database(
    store: StoreReads | None, details: bool = False, gate: DbGate | None = None
) -> tuple[Body, bool]:
    """A round trip now, with its latency in ms; True when the database answered."""
    if store is None:
        return {
            "status": "disconnected",
            "latency": None,
            "message": "database not connected yet",
        }, False
    try:
        async with _slot(gate):
            latency = await store.ping(HEALTH_QUERY_TIMEOUT_S)
    except DatabaseUnavailable as exc:
        return {
            "status": "disconnected",
            "latency": None,
            "message": db_error("database unreachable", exc, details),
        }, False
    return {"status": "connected", "latency": round(latency, 2), "message": "query ok"}, True


def uptime_s(started_monotonic: float) -> float:
    return round(time.monotonic() - started_monotonic, 3)
