"""Alerts: conditions evaluated by the leader, stored in `ha_alerts`, sent to a webhook.

Conditions with a state (no recent data, broker disconnected, no leader, coverage,
quality) open one row per kind (the partial unique index keeps one open row per kind in
the cluster) and resolve it when the condition clears. One-off events (a leadership
handover, a fenced write attempt) are stored already resolved. A notification is claimed
in the database (`last_notified_at`), so a condition that stays true notifies again only
after `ALERT_COOLDOWN_S`, whichever instance checks. "Database unreachable" cannot be
stored: each instance keeps it in a small in-memory list and sends it by webhook only.

Delivery (`notify.py`) runs in its own task with a bounded queue (oldest dropped and
counted when the webhook is down for long): nothing here ever waits on the webhook or
SMTP server while ingesting.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from aupus_ha.database.connection import DatabaseUnavailable, translating_db_errors
from aupus_ha.database.queries import Queries
from aupus_ha.logs import get_logger
from aupus_ha.operations import verdicts
from aupus_ha.operations.device_alerts import DeviceAlerts
from aupus_ha.operations.notify import Notifier
from aupus_ha.operations.verdicts import (
    COVERAGE_ALARM_PERCENT,
    DATA_CRITICAL,
    DATA_OK,
    DAY_S,
    HEALTH_QUERY_TIMEOUT_S,
    HOUR_S,
    QUALITY_IDEAL_PERCENT,
)
from aupus_ha.operations.view import InstanceView

log = get_logger(__name__)

Body = dict[str, Any]
INFO, WARNING, CRITICAL = "INFO", "WARNING", "CRITICAL"
MQTT, INGESTION, DATABASE, HEALTHCHECK, LEADERSHIP = (
    "MQTT",
    "DataIngestion",
    "Database",
    "HealthCheck",
    "Leadership",
)
RANK = {INFO: 0, WARNING: 1, CRITICAL: 2}
# "Spool growing": warn while acknowledged readings wait on disk only (the buffer is full)
# or the spool passes half of SPOOL_MAX_BYTES; critical near the limit, where the intake
# stops acknowledging and the broker has to keep the messages.
SPOOL_WARNING_USAGE = 0.5
SPOOL_CRITICAL_USAGE = 0.9
LIST_LIMIT = 100
LOCAL_MAX = 20


@dataclass(slots=True)
class Condition:
    kind: str
    level: str
    service: str
    message: str
    metadata: Body = field(default_factory=dict)


class AlertManager:
    """Evaluates the conditions, keeps `ha_alerts` up to date, feeds the notifier."""

    def __init__(self, instance: InstanceView) -> None:
        self._inst = instance
        self._q = Queries()
        self.notifier = Notifier(instance.settings)
        settings = instance.settings
        self.devices = DeviceAlerts(  # per-equipment offline/back (device_alerts.py)
            self._fetch,
            self.notifier,
            cluster_name=settings.cluster_name,
            instance_id=settings.instance_id,
            offline_after_s=settings.equipment_offline_after_s,
            storm=settings.equipment_offline_storm,
        )
        self.local: deque[Body] = deque(maxlen=LOCAL_MAX)  # database-unreachable alerts
        self._lock = asyncio.Lock()
        self._handovers_after = datetime.now(UTC)
        self._fenced_seen = 0
        self.checks = 0

    # --- the periodic task ---------------------------------------------------------------

    async def run(self) -> None:
        """Every ALERT_INTERVAL_S: the full check on the leader, nothing cluster-wide elsewhere."""
        while True:
            await asyncio.sleep(self._inst.settings.alert_interval_s)
            ha = self._inst.ha
            try:
                if ha is not None and ha.is_leader():
                    await self.check()
                else:
                    await self.check(local_only=True)
            except Exception as exc:  # one failed round must not kill us
                log.warning("alerts.check_failed", error=repr(exc))

    # --- evaluation ------------------------------------------------------------------------

    async def check(self, *, local_only: bool = False) -> Body:
        """Evaluate now; returns what is open and what changed."""
        async with self._lock:
            self.checks += 1
            db, reachable = await verdicts.database(self._inst.store)
            self._database(reachable, str(db.get("message", "")))
            if not reachable:
                # Kept in memory (and sent) while nothing can be stored, like the database.
                self._local(self._spool_kind, self._spool_condition())
                return {"database": "unreachable", "open": [], "opened": [], "resolved": []}
            try:
                return await self._check_db(local_only=local_only)
            except DatabaseUnavailable as exc:
                self._database(False, str(exc))
                return {"database": "unreachable", "open": [], "opened": [], "resolved": []}

    async def _check_db(self, *, local_only: bool) -> Body:
        inst = self._inst
        settings = inst.settings
        me = settings.instance_id
        found: list[Condition] = []
        clear: list[str] = []
        mqtt_kind = f"mqtt_disconnected:{me}"
        if settings.mqtt_enabled:
            if inst.mqtt is not None and inst.mqtt.connected:
                clear.append(mqtt_kind)
            else:
                msg = f"{me} is not connected to the MQTT broker"
                found.append(Condition(mqtt_kind, CRITICAL, MQTT, msg, {"instance_id": me}))
        spool = self._spool_condition()
        self._local(self._spool_kind, None)  # stored from here on: resolve the memory copy
        if spool is not None:
            found.append(spool)
        elif self._inst.keeps_readings:
            clear.append(self._spool_kind)
        if local_only:
            # Nobody else would notice a cluster without a leader: every instance checks.
            await self._leader_condition(found, clear)
        else:
            await self._cluster_conditions(found, clear)
        opened: list[str] = []
        for cond in found:
            if await self._open(cond):
                opened.append(cond.kind)
        resolved = [kind for kind in clear if await self._resolve(kind)]
        events = await self._events(local_only=local_only)
        devices = {} if local_only else await self.devices.check()
        if opened or resolved or events:
            log.info("alerts.checked", opened=opened, resolved=resolved, events=events)
        return {
            "database": "reachable",
            "open": [c.kind for c in found],
            "opened": opened,
            "resolved": resolved,
            "events": events,
            "devices": devices,
        }

    async def _cluster_conditions(self, found: list[Condition], clear: list[str]) -> None:
        store = self._inst.store
        assert store is not None
        recent = await verdicts.recent_data(store, self._inst.settings)
        if recent["status"] == DATA_OK:
            clear.append("no_recent_data")
        else:
            level = CRITICAL if recent["status"] == DATA_CRITICAL else WARNING
            meta = {k: recent.get(k) for k in ("lastDataTimestamp", "hoursSinceLastData")}
            msg = f"no recent data: {recent['message']}"
            found.append(Condition("no_recent_data", level, INGESTION, msg, _plain(meta)))
        await self._leader_condition(found, clear)
        window = await store.ingestion_window(DAY_S, HOUR_S, HEALTH_QUERY_TIMEOUT_S)
        enabled, with_data = (
            window.get("equipment_enabled", 0),
            window.get("equipment_with_data", 0),
        )
        coverage = verdicts.coverage_percent(window)
        if enabled and coverage < COVERAGE_ALARM_PERCENT:
            msg = f"coverage {coverage} % in 24 h ({with_data} of {enabled} equipment with data)"
            meta = {"coverage": coverage, "equipmentWithData": with_data, "enabled": enabled}
            found.append(Condition("low_coverage", WARNING, INGESTION, msg, meta))
        else:
            clear.append("low_coverage")
        total = window.get("total", 0)
        quality = verdicts.good_percent(window)
        if total and quality < QUALITY_IDEAL_PERCENT:
            msg = f"quality {quality} % good in 24 h (below {QUALITY_IDEAL_PERCENT:g} %)"
            meta = {"goodPercentage": quality, "total": total}
            found.append(Condition("low_quality", WARNING, INGESTION, msg, meta))
        else:
            clear.append("low_quality")

    async def _leader_condition(self, found: list[Condition], clear: list[str]) -> None:
        store = self._inst.store
        assert store is not None
        term = await store.leadership(HEALTH_QUERY_TIMEOUT_S)
        if verdicts.current_leader(term):
            clear.append("no_leader")
        else:
            meta = {"epoch": term.get("epoch")}
            found.append(Condition("no_leader", CRITICAL, LEADERSHIP, "no leader", meta))

    async def _events(self, *, local_only: bool) -> list[str]:
        """Handovers newer than the last check and new fenced write attempts: one-off rows."""
        inst = self._inst
        me = inst.settings.instance_id
        events: list[Condition] = []
        fenced = inst.flusher.stats.fenced if inst.flusher else 0
        if fenced > self._fenced_seen:
            kind = f"fenced_write:{me}:{inst.identity.process_token[:8]}:{fenced}"
            msg = f"{me} tried to write with a stale epoch and was fenced ({fenced} so far)"
            events.append(Condition(kind, CRITICAL, LEADERSHIP, msg, {"fenced": fenced}))
            self._fenced_seen = fenced
        if not local_only:
            rows = await self._fetch("handovers_since", self._cluster, self._handovers_after)
            for row in rows:
                self._handovers_after = max(self._handovers_after, row["at"])
                msg = (
                    f"leadership handover: {row['from_instance_id'] or 'none'} -> "
                    f"{row['to_instance_id']} (epoch {row['epoch']}, {row['reason']})"
                )
                events.append(
                    Condition(f"handover:{row['epoch']}", INFO, LEADERSHIP, msg, _plain(dict(row)))
                )
        stored = []
        for cond in events:
            if await self._fetch("alert_event", *self._row(cond)):
                stored.append(cond.kind)
                self.notifier.enqueue(_as_alert(cond))
        return stored

    # --- storage -------------------------------------------------------------------------------

    @property
    def _cluster(self) -> str:
        return self._inst.settings.cluster_name

    def _row(self, c: Condition) -> tuple[object, ...]:
        meta = orjson.dumps(c.metadata, default=str)
        return (
            self._cluster,
            c.kind,
            c.level,
            c.service,
            c.message,
            meta,
            self._inst.settings.instance_id,
        )

    async def _fetch(self, name: str, *args: object) -> list[asyncpg.Record]:
        pool = self._inst.pool
        if pool is None:
            raise DatabaseUnavailable("database not connected yet")
        with translating_db_errors():
            async with asyncio.timeout(HEALTH_QUERY_TIMEOUT_S):
                rows: list[asyncpg.Record] = await pool.fetch(self._q[name], *args)
        return rows

    async def _open(self, c: Condition) -> bool:
        """Open (or refresh) the alert; notify when new, escalated or past its cooldown."""
        rows = await self._fetch("alert_open", *self._row(c))
        new = force = bool(rows)
        if not rows:
            meta = orjson.dumps(c.metadata, default=str)
            rows = await self._fetch(
                "alert_refresh", self._cluster, c.kind, c.level, c.message, meta
            )
            if not rows:
                return False  # resolved meanwhile by another instance
            force = RANK.get(c.level, 0) > RANK.get(rows[0]["previous_level"], 0)
        cooldown = self._inst.settings.alert_cooldown_s
        if await self._fetch("alert_claim_notification", rows[0]["id"], cooldown, force):
            self.notifier.enqueue(_as_alert(c))
        return new

    async def _resolve(self, kind: str) -> bool:
        rows = await self._fetch("alert_resolve", self._cluster, kind)
        for row in rows:
            alert = {"kind": kind, **{k: row[k] for k in ("level", "service", "message")}}
            self.notifier.enqueue(
                {**alert, "message": f"resolved: {row['message']}"}, resolved=True
            )
        return bool(rows)

    @property
    def _spool_kind(self) -> str:
        return f"spool_growing:{self._inst.settings.instance_id}"

    def _spool_condition(self) -> Condition | None:
        inst = self._inst
        if not inst.keeps_readings:
            return None
        spool, me = inst.spool, inst.settings.instance_id
        usage = spool.usage
        if usage < SPOOL_WARNING_USAGE and not inst.durable.backlog:
            return None
        level = CRITICAL if usage >= SPOOL_CRITICAL_USAGE else WARNING
        state = "the buffer is full, readings wait on disk" if inst.durable.backlog else "growing"
        msg = f"{me}: spool at {usage:.0%} of SPOOL_MAX_BYTES ({state})"
        meta = {
            "instance_id": me,
            "bytes": spool.total_bytes,
            "maxBytes": spool.max_bytes,
            "segments": spool.segment_count,
            "backlog": inst.durable.backlog,
        }
        return Condition(self._spool_kind, level, INGESTION, msg, meta)

    def _database(self, reachable: bool, message: str) -> None:
        me = self._inst.settings.instance_id
        condition = None
        if not reachable:
            condition = Condition(
                f"database_unreachable:{me}",
                CRITICAL,
                DATABASE,
                f"{me} cannot reach the database: {message}",
                {"instance_id": me},
            )
        self._local(f"database_unreachable:{me}", condition)

    def _local(self, kind: str, condition: Condition | None) -> None:
        """A condition kept in memory: it cannot be stored while the database is away."""
        current = next((a for a in self.local if a["kind"] == kind and a["status"] == "open"), None)
        now = datetime.now(UTC)
        if condition is None:
            if current is not None:
                current["status"], current["resolvedAt"] = "resolved", now
                self.notifier.enqueue(
                    {**current, "message": f"resolved: {current['message']}"}, resolved=True
                )
            return
        if current is None:
            current = {
                **_as_alert(condition),
                "timestamp": now,
                "status": "open",
                "notifiedAt": None,
            }
            self.local.appendleft(current)
        cooldown = self._inst.settings.alert_cooldown_s
        notified = current["notifiedAt"]
        if notified is None or (now - notified).total_seconds() >= cooldown:
            current["notifiedAt"] = now
            self.notifier.enqueue(current)

    # --- the list --------------------------------------------------------------------------------

    def local_view(self) -> Body:
        """This instance's in-memory alerts only (the database could not be asked)."""
        local = [_public(a) for a in self.local]
        return {"alerts": local, "total": len(local)}

    async def recent(self, details: bool = True) -> tuple[Body, int]:
        """`{alerts, total}`: the last 100, this instance's in-memory ones included."""
        local = [_public(a) for a in self.local]
        try:
            rows = await self._fetch("alerts_recent", self._cluster, LIST_LIMIT)
        except DatabaseUnavailable as exc:
            error = str(exc) if details else "cannot read the database"
            return {"alerts": local, "total": len(local), "error": error}, 503
        stored = [_from_row(r) for r in rows]
        alerts = sorted(local + stored, key=lambda a: a["timestamp"], reverse=True)[:LIST_LIMIT]
        return {"alerts": alerts, "total": len(alerts)}, 200


def _plain(values: Body) -> Body:
    return orjson.loads(orjson.dumps(values, default=str))  # type: ignore[no-any-return]


def _as_alert(c: Condition) -> Body:
    return {
        "kind": c.kind,
        "level": c.level,
        "service": c.service,
        "message": c.message,
        "timestamp": datetime.now(UTC),
        "metadata": c.metadata,
    }


def _public(a: Body) -> Body:
    keys = ("kind", "level", "service", "message", "timestamp", "metadata", "status", "resolvedAt")
    return {k: a.get(k) for k in keys}


def _from_row(r: asyncpg.Record) -> Body:
    return {
        "id": r["id"],
        "kind": r["kind"],
        "level": r["level"],
        "service": r["service"],
        "message": r["message"],
        "timestamp": r["opened_at"],
        "metadata": orjson.loads(r["metadata"]) if r["metadata"] else {},
        "status": "open" if r["resolved_at"] is None else "resolved",
        "resolvedAt": r["resolved_at"],
        "lastNotifiedAt": r["last_notified_at"],
        "instanceId": r["instance_id"],
    }
