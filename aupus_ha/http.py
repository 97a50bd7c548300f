"""HTTP API (aiohttp), explicit route table.

Role routes (`/health/leader`, `/health/standby`) answer only 200 or 503, always with a
JSON body; `HEAD` gives the status code alone, for load balancers and uptime checkers.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

from aupus_ha import constants
from aupus_ha.config import ConfigError
from aupus_ha.db import DatabaseUnavailable
from aupus_ha.logs import get_logger

if TYPE_CHECKING:
    from aupus_ha.app import Instance

log = get_logger(__name__)


def _json(body: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, default=_default),
        status=status,
        content_type="application/json",
    )


def _default(value: object) -> object:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(type(value).__name__)


class HttpServer:
    def __init__(self, instance: Instance) -> None:
        self._instance = instance
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_routes(
            [
                web.get("/health", self.health),
                web.get("/health/leader", self.leader),
                web.get("/health/standby", self.standby),
                web.get("/health/cluster", self.cluster),
                web.get("/health/mqtt", self.mqtt),
            ]
        )
        return app

    async def start(self) -> None:
        settings = self._instance.settings
        self._runner = web.AppRunner(self.build_app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, settings.http_host, settings.http_port, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(
                f"HTTP_PORT={settings.http_port} cannot be bound on {settings.http_host} "
                f"({exc.strerror or exc}); choose a free port"
            ) from exc
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else settings.http_port
        log.info("http.listening", host=settings.http_host, port=self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- views ------------------------------------------------------------------------

    def _role(self) -> str:
        inst = self._instance
        if inst.ha is None:
            if inst.settings.mqtt_mode == constants.MODE_DISABLED:
                return constants.ROLE_DISABLED
            if inst.settings.mqtt_mode == constants.MODE_DEVELOPMENT:
                return constants.ROLE_OBSERVER
            return constants.ROLE_STANDBY
        if inst.ha.role == constants.ROLE_LEADER and not inst.ha.is_leader():
            return constants.ROLE_STANDBY  # lease ran out: we are not leading any more
        if inst.ha.role == constants.ROLE_STOPPED:
            return constants.ROLE_STANDBY  # shutting down: never reported as leading
        return inst.ha.role

    def _checks(self) -> dict[str, dict[str, Any]]:
        inst = self._instance
        ha = inst.ha
        db_ok = bool(ha and ha.db_ok)
        checks: dict[str, dict[str, Any]] = {
            "database": {"status": "connected" if db_ok else "disconnected"},
            "loop": {
                "status": "ok"
                if ha and time.monotonic() - ha.last_tick < inst.settings.lease_ttl_s
                else "stalled",
            },
        }
        if inst.settings.mqtt_enabled:
            connected = bool(inst.mqtt and inst.mqtt.connected)
            checks["mqtt"] = {
                "status": "connected" if connected else "disconnected",
                "subscribedTopics": len(inst.mqtt.stats.subscribed) if inst.mqtt else 0,
            }
        checks["buffer"] = {"pending": len(inst.buffer), "max": inst.buffer.max_items}
        checks["intake"] = {
            "messages": inst.intake.messages,
            "readings": inst.intake.readings,
            "rejects": inst.intake.rejects,
            "lastMessageAt": inst.intake.last_message_at,
        }
        return checks

    def _healthy(self, role: str, checks: dict[str, dict[str, Any]]) -> bool:
        mqtt_ok: bool = checks.get("mqtt", {"status": "connected"})["status"] == "connected"
        db_ok: bool = checks["database"]["status"] == "connected"
        loop_ok: bool = checks["loop"]["status"] == "ok"
        if role == constants.ROLE_OBSERVER:
            return mqtt_ok and loop_ok
        if role == constants.ROLE_DISABLED:
            return db_ok and loop_ok
        return mqtt_ok and db_ok and loop_ok

    def _leader_body(self) -> dict[str, Any]:
        inst = self._instance
        role = self._role()
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

    async def health(self, request: web.Request) -> web.Response:
        role = self._role()
        checks = self._checks()
        healthy = self._healthy(role, checks)
        body = {
            "status": "healthy" if healthy else "unhealthy",
            "instance_id": self._instance.settings.instance_id,
            "role": role,
            "checks": checks,
            "leadership": self._leader_body(),
        }
        return _json(body, 200 if healthy else 503)

    async def leader(self, request: web.Request) -> web.Response:
        body = self._leader_body()
        return _json(body, 200 if body["is_leader"] else 503)

    async def standby(self, request: web.Request) -> web.Response:
        role = self._role()
        checks = self._checks()
        ok = role == constants.ROLE_STANDBY and self._healthy(role, checks)
        body = {**self._leader_body(), "healthy": ok, "checks": checks}
        return _json(body, 200 if ok else 503)

    async def cluster(self, request: web.Request) -> web.Response:
        store = self._instance.store
        if store is None:
            return _json({"status": "unavailable", "error": "database not connected yet"}, 503)
        try:
            view = await store.cluster_view()
        except DatabaseUnavailable as exc:
            return _json({"status": "unavailable", "error": str(exc)}, 503)
        return _json(
            {
                "status": "ok",
                "instance_id": self._instance.settings.instance_id,
                "cluster_name": self._instance.settings.cluster_name,
                **view,
            }
        )

    async def mqtt(self, request: web.Request) -> web.Response:
        """Broker connection, subscriptions (and skipped invalid topics), intake counters."""
        inst = self._instance
        ingest = inst.mqtt
        connected = bool(ingest and ingest.connected)
        body = {
            "status": "connected" if connected else "disconnected",
            "instance_id": inst.settings.instance_id,
            "mode": inst.settings.mqtt_mode,
            "subscribedTopics": len(ingest.stats.subscribed) if ingest else 0,
            "topics": sorted(ingest.stats.subscribed) if ingest else [],
            "invalidTopics": [
                {"equipamento_id": i.equipamento_id, "topic": i.topic, "problem": i.problem}
                for i in inst.catalog.invalid
            ],
            "counters": {
                "messages": inst.intake.messages,
                "readings": inst.intake.readings,
                "rejects": inst.intake.rejects,
                "rejectsByReason": dict(inst.intake.by_reason),
                "connects": ingest.stats.connects if ingest else 0,
                "disconnects": ingest.stats.disconnects if ingest else 0,
            },
        }
        ok = connected or not inst.settings.mqtt_enabled
        return _json(body, 200 if ok else 503)
