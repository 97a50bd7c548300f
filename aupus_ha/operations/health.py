"""The health views: what `/health` and the legacy `/health/...` routes answer.

The legacy NestJS service's field names are kept (`status`, `timestamp`, `uptime`,
`checks.mqtt`, `checks.database`, `checks.recentData`, `hoursSinceLastData`, ...) so
existing dashboards, UptimeRobot keyword checks and cron scripts keep working. Anything
about the cluster's data (recency, 24 h counts, coverage, quality, handovers) is read
from the database, so every instance answers for the whole cluster; what only this
process knows (its role, broker connection, buffer, flush counters) is reported as its
own and says so.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from aupus_ha import constants
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.database.legacytime import STATUS_MISMATCH
from aupus_ha.operations import verdicts
from aupus_ha.operations.verdicts import (
    COVERAGE_ALARM_PERCENT,
    DATA_OK,
    DAY_S,
    HEALTH_QUERY_TIMEOUT_S,
    HOUR_S,
    QUALITY_IDEAL_PERCENT,
    DbGate,
    db_error,
)
from aupus_ha.operations.view import InstanceView

# DbGate and HEALTH_QUERY_TIMEOUT_S are re-exported for modules that build bodies beside
# these (the console, the diagnostics): the same gate, the same timeout.
__all__ = [
    "HEALTH_DB_SLOTS",
    "HEALTH_QUERY_TIMEOUT_S",
    "DbGate",
    "HealthViews",
    "redact_cluster",
]

Body = dict[str, Any]

# Pool connections health routes may use at once; the flusher keeps the rest.
HEALTH_DB_SLOTS = 2

STATUS_HEALTHY = "healthy"
STATUS_DEGRADED = "degraded"
STATUS_UNHEALTHY = "unhealthy"

HOST_DETAILS = ("host", "pid", "version", "http_url")


def redact_cluster(view: Body) -> Body:
    """/health/cluster without host names, pids, internal URLs and versions."""
    instances = view.get("instances")
    if not isinstance(instances, list):
        return view
    hidden = [{**row, **dict.fromkeys(HOST_DETAILS)} for row in instances]
    return {**view, "instances": hidden}


class HealthViews:
    """Builds every health body for one instance."""

    def __init__(self, instance: InstanceView) -> None:
        self._instance = instance
        self.gate = DbGate(HEALTH_DB_SLOTS)

    # --- what this process knows ---------------------------------------------------------

    def role(self) -> str:
        return verdicts.reported_role(self._instance.ha, self._instance.settings.mqtt_mode)

    def uptime_s(self) -> float:
        return verdicts.uptime_s(self._instance.started_monotonic)

    def mqtt_check(self) -> Body:
        inst = self._instance
        if not inst.settings.mqtt_enabled:
            return {"status": "disabled", "subscribedTopics": 0, "message": "MQTT_MODE=disabled"}
        ingest = inst.mqtt
        connected = bool(ingest and ingest.connected)
        topics = len(ingest.stats.subscribed) if ingest else 0
        if ingest is not None and ingest.reconnect_loop:
            # "connected" most of the time, yet nothing gets through: unhealthy.
            message = "reconnect loop: the broker connection keeps being dropped"
            return {"status": "flapping", "subscribedTopics": topics, "message": message}
        message = (
            f"connected to the broker, {topics} topic(s) subscribed"
            if connected
            else "not connected to the broker"
        )
        status = "connected" if connected else "disconnected"
        return {"status": status, "subscribedTopics": topics, "message": message}

    def local_checks(self) -> dict[str, Body]:
        """The checks of this process alone (no query): database, loop, mqtt, buffer, intake."""
        inst = self._instance
        ha = inst.ha
        db_ok = bool(ha and ha.db_ok)
        loop_ok = bool(ha and time.monotonic() - ha.last_tick < inst.settings.lease_ttl_s)
        return {
            "database": {
                "status": "connected" if db_ok else "disconnected",
                "message": "database reachable" if db_ok else "database unreachable",
            },
            "loop": {"status": "ok" if loop_ok else "stalled"},
            "mqtt": self.mqtt_check(),
            "buffer": {"pending": len(inst.buffer), "max": inst.buffer.max_items},
            "intake": {
                "messages": inst.intake.messages,
                "readings": inst.intake.readings,
                "rejects": inst.intake.rejects,
                "lastMessageAt": inst.intake.last_message_at,
            },
        }

    def healthy(self, role: str, checks: dict[str, Body]) -> bool:
        mqtt_ok: bool = checks["mqtt"]["status"] in {"connected", "disabled"}
        db_ok: bool = checks["database"]["status"] == "connected"
        loop_ok: bool = checks["loop"]["status"] == "ok"
        if role == constants.ROLE_OBSERVER:
            return mqtt_ok and loop_ok
        if role == constants.ROLE_DISABLED:
            return db_ok and loop_ok
        return mqtt_ok and db_ok and loop_ok

    def leader_body(self) -> Body:
        inst = self._instance
        role = self.role()
        info = inst.ha.leader_info if inst.ha else None
        is_leader = role == constants.ROLE_LEADER
        last_flush = info.last_flush_at if info else None
        if is_leader and inst.flusher and inst.flusher.last_flush_at:
            last_flush = inst.flusher.last_flush_at
        return {
            "instance_id": inst.settings.instance_id,
            "is_leader": is_leader,
            "role": role,
            "leader_id": info.leader_id if info else None,
            "epoch": info.epoch if info else None,
            "leader_since": info.leader_since if info else None,
            "last_flush_at": last_flush,
        }

    def leadership_check(self, leader: Body) -> Body:
        has_leader = leader["leader_id"] is not None
        if leader["is_leader"]:
            message = f"this instance leads (epoch {leader['epoch']})"
        elif has_leader:
            message = f"{leader['leader_id']} leads (epoch {leader['epoch']})"
        else:
            message = "no leader in the cluster"
        return {
            "status": "ok" if has_leader else "no_leader",
            "isLeader": leader["is_leader"],
            "role": leader["role"],
            "leaderId": leader["leader_id"],
            "epoch": leader["epoch"],
            "message": message,
        }

    # --- what the database says about the cluster -----------------------------------------

    async def recent_data(self, details: bool = False) -> Body:
        """`ok` / `warning` / `critical` by the age of the newest stored reading."""
        inst = self._instance
        return await verdicts.recent_data(inst.store, inst.settings, details, self.gate)

    async def database(self, details: bool = False) -> tuple[Body, bool]:
        """A round trip now, with its latency in ms."""
        return await verdicts.database(self._instance.store, details, self.gate)

    async def health(self, details: bool = False) -> tuple[Body, int]:
        """`/health`: healthy (200), degraded (200: no recent data), unhealthy (503)."""
        role = self.role()
        checks = self.local_checks()
        leader = self.leader_body()
        checks["recentData"] = await self.recent_data(details)
        checks["leadership"] = self.leadership_check(leader)
        legacy_time = self._instance.legacy_time
        checks["legacyTime"] = legacy_time.body()
        if not self.healthy(role, checks):
            status = STATUS_UNHEALTHY
        elif (
            checks["recentData"]["status"] != DATA_OK
            or leader["leader_id"] is None
            or legacy_time.status == STATUS_MISMATCH
        ):
            status = STATUS_DEGRADED
        else:
            status = STATUS_HEALTHY
        body = {
            "status": status,
            "timestamp": datetime.now(UTC),
            "uptime": self.uptime_s(),
            "instance_id": self._instance.settings.instance_id,
            "role": role,
            "checks": checks,
            "leadership": leader,
        }
        return body, 503 if status == STATUS_UNHEALTHY else 200

    async def metrics(self, details: bool = False) -> tuple[Body, int]:
        """`/health/metrics`: the cluster's ingestion (24 h) plus this process's counters."""
        inst = self._instance
        body: Body = {
            "timestamp": datetime.now(UTC),
            "connection": {
                "isConnected": bool(inst.mqtt and inst.mqtt.connected),
                "uptime": self.uptime_s(),
                "instanceId": inst.settings.instance_id,
                "mode": inst.settings.mqtt_mode,
            },
            "topics": {
                "total": len(inst.catalog.topics),
                "list": sorted(inst.catalog.topics) if details else [],
            },
            **self._local_metrics(),
        }
        store = inst.store
        if store is None:
            return {**body, "error": "database not connected yet"}, 503
        try:
            async with self.gate.slot():
                window = await store.ingestion_window(DAY_S, HOUR_S, HEALTH_QUERY_TIMEOUT_S)
                last, age = await store.last_data(HEALTH_QUERY_TIMEOUT_S)
                rejects_24h = await store.rejects_window(DAY_S, HEALTH_QUERY_TIMEOUT_S)
                handovers = await store.handovers_summary(DAY_S, HEALTH_QUERY_TIMEOUT_S)
                term = await store.leadership(HEALTH_QUERY_TIMEOUT_S)
        except DatabaseUnavailable as exc:
            return {**body, "error": db_error("cannot read the database", exc, details)}, 503
        total = window.get("total", 0)
        enabled = window.get("equipment_enabled", 0)
        with_data = window.get("equipment_with_data", 0)
        coverage = verdicts.coverage_percent(window)
        good_pct = verdicts.good_percent(window)
        body["dataIngestion"] = {
            "last24h": {
                "totalRecords": total,
                "recordsPerHour": round(total / 24, 1),
                "coverage": coverage,
                "equipmentWithData": with_data,
                "equipmentEnabled": enabled,
                "coverageOk": coverage >= COVERAGE_ALARM_PERCENT,
            },
            "lastHour": {"totalRecords": window.get("short_total", 0)},
            "lastRecord": {
                "timestamp": last,
                "minutesAgo": round(max(age, 0.0) / 60, 1) if age is not None else None,
            },
        }
        body["quality"] = {
            "last24h": {
                "good": window.get("good", 0),
                "partial": window.get("partial", 0),
                "bad": window.get("bad", 0),
                "goodPercentage": good_pct,
                "ideal": good_pct >= QUALITY_IDEAL_PERCENT,
            }
        }
        body["rejects"]["last24h"] = rejects_24h
        body["leader"] = {
            "leaderId": verdicts.current_leader(term),
            "epoch": term.get("epoch"),
            "since": term.get("acquired_at"),
            "lastFlushAt": term.get("last_flush_at"),
            "flushSeq": term.get("flush_seq"),
        }
        body["handovers"] = {
            "total": handovers.get("total", 0),
            "last24h": handovers.get("recent", 0),
            "lastAt": handovers.get("last_at"),
        }
        return body, 200

    def _local_metrics(self) -> Body:
        inst = self._instance
        flush = inst.flusher.stats if inst.flusher else None
        return {
            "rejects": {
                "thisInstance": inst.intake.rejects,
                "byReason": dict(inst.intake.by_reason),
            },
            # Readings stored with the arrival time (device time unusable), by reason.
            "timeFallbacks": {
                "thisInstance": sum(inst.intake.time_fallbacks.values()),
                "byReason": dict(inst.intake.time_fallbacks),
            },
            "buffer": {
                "pending": len(inst.buffer),
                "max": inst.buffer.max_items,
                "spool": {
                    "enabled": inst.keeps_readings,
                    "files": inst.spool.segment_count,
                    "bytes": inst.spool.total_bytes,
                    "maxBytes": inst.spool.max_bytes,
                    "usage": round(inst.spool.usage, 4),
                    "backlog": inst.durable.backlog,
                    "replayed": inst.durable.replayed,
                },
            },
            "flushes": {
                "thisInstance": inst.settings.instance_id,
                "count": flush.flushes if flush else 0,
                "rows": flush.rows if flush else 0,
                "duplicates": flush.duplicates if flush else 0,
                "failures": flush.failures if flush else 0,
                "fenced": flush.fenced if flush else 0,
                "lastMs": round(flush.last_ms, 2) if flush else None,
            },
        }

    def metrics_database(self) -> Body:
        """`/health/metrics/database`: the legacy route's query counters (its Prisma
        service counted every query, those slower than 1 s, and errors), for this
        process's pool. Always 200: it reports, it does not judge."""
        inst = self._instance
        stats = inst.query_stats
        now = datetime.now(UTC)
        return {
            "database": {
                "totalQueries": stats.total,
                "slowQueries": stats.slow,
                "errorCount": stats.errors,
                "timestamp": now,
                "slowQueryThresholdMs": stats.slow_ms,
                "instanceId": inst.settings.instance_id,
            },
            "timestamp": now,
        }

    async def metrics_simple(self) -> tuple[Body, int]:
        """`/health/metrics/simple`: the five numbers a dashboard tile shows."""
        inst = self._instance
        role = self.role()
        online = self.healthy(role, self.local_checks())
        body: Body = {
            "status": "online" if online else "offline",
            "mode": inst.settings.mqtt_mode,
            "lastDataMinutesAgo": None,
            "recordsLast24h": None,
            "qualityGoodPercentage": None,
        }
        store = inst.store
        if store is None:
            return body, 503
        try:
            async with self.gate.slot():
                window = await store.ingestion_window(DAY_S, HOUR_S, HEALTH_QUERY_TIMEOUT_S)
                _, age = await store.last_data(HEALTH_QUERY_TIMEOUT_S)
        except DatabaseUnavailable:
            return {**body, "status": "offline"}, 503
        total = window.get("total", 0)
        body["lastDataMinutesAgo"] = round(max(age, 0.0) / 60, 1) if age is not None else None
        body["recordsLast24h"] = total
        body["qualityGoodPercentage"] = verdicts.good_percent(window)
        return body, 200 if online else 503
