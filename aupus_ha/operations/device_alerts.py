"""Per-device alerts: an enabled equipment silent for too long, and its return.

Why a module of its own: the cluster-wide conditions of `alerts.py` are one row per kind;
here there is one row per equipment (`equipment_offline:<id>` in `ha_alerts`), opened
once and never re-sent on a cooldown, resolved (and announced as `equipment_back:<id>`)
when the equipment sends again. The open rows ARE the state: a new leader reads them and
sends nothing already sent; the insert and the resolve are atomic, so even two
instances evaluating at once send each change once.

Which equipment can go offline: enabled with an MQTT topic (the catalogue's filter) and
whose newest reading arrived more than EQUIPMENT_OFFLINE_AFTER_S ago but within
SEEN_WINDOW_S (7 days). One that never sent, or fell silent before that window, is not
announced: on a fresh install the catalogue is full of equipment that never sent, and
the diagnostics list them as inactive. An alert already open stays open however long
the silence lasts.

Storm limit: when more than EQUIPMENT_OFFLINE_STORM go silent (or come back) in one
evaluation, one grouped notification names the count and the first few ids (a broker or
network outage silences the whole fleet at once); each equipment still gets its row.

The decisions are plain functions (`changes`, `offline_notices`, `back_notices`);
`DeviceAlerts` only reads, stores and enqueues.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from typing import Any, Protocol

import asyncpg
import orjson

from aupus_ha.database.connection import DatabaseUnavailable, translating_db_errors
from aupus_ha.database.queries import Queries
from aupus_ha.logs import get_logger

log = get_logger(__name__)

Body = dict[str, Any]
OFFLINE = "equipment_offline"
BACK = "equipment_back"
OFFLINE_PREFIX = f"{OFFLINE}:"
SEEN_WINDOW_S = 7 * 86_400.0
# Ids named in a grouped notification (the rest are counted): a message stays readable.
STORM_SHOWN = 10
WARNING, INFO, SERVICE = "WARNING", "INFO", "DataIngestion"


class Fetch(Protocol):
    """Runs a named query of sql/queries.sql (with its timeout and error translation)."""

    async def __call__(self, name: str, *args: object) -> list[asyncpg.Record]: ...


class Enqueue(Protocol):
    """The notifier's non-blocking queue."""

    def enqueue(self, alert: Body, *, resolved: bool = False) -> None: ...


@dataclass(frozen=True, slots=True)
class Seen:
    """One enabled equipment and the age of its newest reading (None: never sent)."""

    equipment_id: str
    age_s: float | None


@dataclass(frozen=True, slots=True)
class Changes:
    offline: tuple[Seen, ...] = ()  # silent now, no alert open yet
    back: tuple[str, ...] = ()  # alert open, sending again
    gone: tuple[str, ...] = ()  # alert open, no longer enabled: resolved quietly


@dataclass(frozen=True, slots=True)
class Notice:
    kind: str
    level: str
    message: str
    metadata: Body = field(default_factory=dict)
    resolved: bool = False


def changes(
    seen: Iterable[Seen],
    open_ids: AbstractSet[str],
    *,
    offline_after_s: float,
    seen_window_s: float = SEEN_WINDOW_S,
) -> Changes:
    """What changed since the open alerts were written (pure: no clock, no database)."""
    offline: list[Seen] = []
    back: list[str] = []
    enabled: set[str] = set()
    for s in seen:
        enabled.add(s.equipment_id)
        if s.age_s is None:
            continue  # never sent (or its rows were deleted): nothing to compare with
        if s.equipment_id in open_ids:
            if s.age_s <= offline_after_s:
                back.append(s.equipment_id)
        elif offline_after_s < s.age_s <= seen_window_s:
            offline.append(s)
    gone = sorted(open_ids - enabled)
    return Changes(tuple(offline), tuple(back), tuple(gone))


def offline_notices(opened: Sequence[Seen], storm: int, tag: str) -> list[Notice]:
    """One notice per equipment, or a single grouped one above `storm` (tag names it)."""
    if len(opened) > storm:
        ids = [s.equipment_id for s in opened]
        message = f"{len(ids)} equipment went silent at once: {_some(ids)}"
        meta = {"count": len(ids), "equipmentIds": ids[:STORM_SHOWN], "stormLimit": storm}
        return [Notice(f"{OFFLINE}_storm:{tag}", WARNING, message, meta)]
    return [
        Notice(
            f"{OFFLINE}:{s.equipment_id}",
            WARNING,
            f"equipment {s.equipment_id} silent for {_minutes(s.age_s)}",
            {"equipmentId": s.equipment_id, "silentForS": round(s.age_s or 0.0, 1)},
        )
        for s in opened
    ]


def back_notices(returned: Sequence[str], storm: int, tag: str) -> list[Notice]:
    """One `equipment_back` per equipment, or a single grouped one above `storm`."""
    if len(returned) > storm:
        message = f"{len(returned)} equipment are sending again: {_some(returned)}"
        meta = {
            "count": len(returned),
            "equipmentIds": list(returned[:STORM_SHOWN]),
            "stormLimit": storm,
        }
        return [Notice(f"{BACK}_storm:{tag}", INFO, message, meta, resolved=True)]
    return [
        Notice(
            f"{BACK}:{eid}",
            INFO,
            f"equipment {eid} is sending again",
            {"equipmentId": eid},
            resolved=True,
        )
        for eid in returned
    ]


def _some(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:STORM_SHOWN])
    more = len(ids) - STORM_SHOWN
    return f"{shown} and {more} more" if more > 0 else shown


def _minutes(age_s: float | None) -> str:
    return f"{(age_s or 0.0) / 60:.0f} min"


class DeviceAlerts:
    """Reads the catalogue's ages and the open rows, stores the changes, enqueues them."""

    def __init__(
        self,
        fetch: Fetch,
        notifier: Enqueue,
        *,
        cluster_name: str,
        instance_id: str,
        offline_after_s: float,
        storm: int,
    ) -> None:
        self._fetch = fetch
        self._notifier = notifier
        self._cluster = cluster_name
        self._me = instance_id
        self.offline_after_s = offline_after_s
        self.storm = storm

    async def check(self) -> Body:
        """One evaluation (the leader's); returns the ids that changed."""
        rows = await self._fetch("devalert_last_seen")
        seen = [Seen(r["id"], r["age_s"]) for r in rows]
        kinds = await self._fetch("devalert_open_kinds", self._cluster, OFFLINE_PREFIX)
        open_ids = {r["kind"].removeprefix(OFFLINE_PREFIX) for r in kinds}
        found = changes(seen, open_ids, offline_after_s=self.offline_after_s)
        offline = await self._open(found.offline)
        back = await self._resolve(found.back, announce=True)
        gone = await self._resolve(found.gone, announce=False)
        result = {"offline": offline, "back": back, "gone": gone}
        if offline or back or gone:
            log.info("alerts.devices", **result)
        return result

    async def _open(self, silent: Sequence[Seen]) -> list[str]:
        if not silent:
            return []
        notices = offline_notices(silent, len(silent), "")  # one per equipment, stored
        rows = await self._fetch(
            "devalert_open",
            self._cluster,
            [n.kind for n in notices],
            WARNING,
            SERVICE,
            [n.message for n in notices],
            [orjson.dumps(n.metadata).decode() for n in notices],
            self._me,
        )
        # Only what this call inserted is sent: another instance may have raced us.
        opened_kinds = {r["kind"] for r in rows}
        opened = [s for s in silent if f"{OFFLINE_PREFIX}{s.equipment_id}" in opened_kinds]
        tag = str(min((r["id"] for r in rows), default=0))
        await self._send(offline_notices(opened, self.storm, tag))
        return [s.equipment_id for s in opened]

    async def _resolve(self, ids: Sequence[str], *, announce: bool) -> list[str]:
        if not ids:
            return []
        kinds = [f"{OFFLINE_PREFIX}{eid}" for eid in ids]
        rows = await self._fetch("devalert_resolve", self._cluster, kinds)
        resolved = sorted(r["kind"].removeprefix(OFFLINE_PREFIX) for r in rows)
        if announce:
            tag = str(min((r["id"] for r in rows), default=0))
            await self._send(back_notices(resolved, self.storm, tag))
        return resolved

    async def _send(self, notices: Sequence[Notice]) -> None:
        for n in notices:
            if n.kind.split(":", 1)[0].endswith("_storm"):
                # The grouped notice is stored too (already resolved), so that
                # /health/alerts shows what was sent.
                await self._fetch(
                    "alert_event",
                    self._cluster,
                    n.kind,
                    n.level,
                    SERVICE,
                    n.message,
                    orjson.dumps(n.metadata),  # bytes, as alerts.py passes it
                    self._me,
                )
            alert = {
                "kind": n.kind,
                "level": n.level,
                "service": SERVICE,
                "message": n.message,
                "timestamp": datetime.now(UTC),
                "metadata": n.metadata,
            }
            self._notifier.enqueue(alert, resolved=n.resolved)


@cache
def _queries() -> Queries:
    return Queries()


async def count_offline(pool: asyncpg.Pool | None, cluster_name: str, timeout: float) -> int:
    """Equipment with an open offline alert (the `aupus_ha_equipment_offline` gauge): the
    cluster's state in `ha_alerts`, so every instance reports the same number, and a new
    leader the one its predecessor left. Raises DatabaseUnavailable."""
    if pool is None:
        raise DatabaseUnavailable("database not connected yet")
    with translating_db_errors():
        async with asyncio.timeout(timeout):
            value = await pool.fetchval(
                _queries()["devalert_offline_count"], cluster_name, OFFLINE_PREFIX
            )
    return int(value or 0)
