"""HTTP API (aiohttp), explicit route table.

Role routes (`/health/leader`, `/health/standby`) answer only 200 or 503, always with a
JSON body; `HEAD` gives the status code alone, for load balancers and uptime checkers.
Every `/health...` route is mirrored under `/api/v1/health...` in the legacy envelope
`{success, data, meta: {timestamp, requestId}}`. The bodies are built by `health.py`;
handlers here stay thin. They see the instance through `view.HttpView` only: what they
read, and the actions an operator may trigger (step down, check alerts, flush, reload
the topics), never its parts.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from aupus_ha.config import (
    ADMIN_TOKEN_MIN_LENGTH,
    HEALTH_DETAILS_PUBLIC,
    ConfigError,
    Secret,
)
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.logs import get_logger
from aupus_ha.operations import admin, console, diagnostics, gaps
from aupus_ha.operations.health import HealthViews, redact_cluster
from aupus_ha.operations.httpguard import ConnectionGuard, http_connection_limit, serve_guarded
from aupus_ha.operations.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from aupus_ha.operations.verdicts import db_error
from aupus_ha.operations.view import HttpView

log = get_logger(__name__)

Body = dict[str, Any]
View = Callable[[web.Request], Awaitable[tuple[Body, int]]]
LEGACY_PREFIX = "/api/v1"
STEP_DOWN_TIMEOUT_S = 10.0


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


Handler = Callable[[web.Request], Awaitable[web.Response]]


def _plain(view: View) -> Handler:
    """A view answered as its bare JSON body."""

    async def handler(request: web.Request) -> web.Response:
        body, status = await view(request)
        return _json(body, status)

    return handler


def _enveloped(view: View) -> Handler:
    """A view answered in the legacy envelope, with the same status code."""

    async def handler(request: web.Request) -> web.Response:
        body, status = await view(request)
        request_id = request.headers.get("X-Request-Id") or str(uuid.uuid4())
        meta = {"timestamp": datetime.now(UTC), "requestId": request_id}
        return _json({"success": status < 400, "data": body, "meta": meta}, status)

    return handler


async def _no_version_header(request: web.Request, response: web.StreamResponse) -> None:
    # aiohttp's default `Server: Python/3.x aiohttp/3.y` tells a stranger what to attack.
    response.headers["Server"] = "aupus-ha"


def refuse_short_admin_token(token: Secret) -> None:
    """A guessable ADMIN_TOKEN stops the server at start (exit 2, one line)."""
    if token and len(token.reveal()) < ADMIN_TOKEN_MIN_LENGTH:
        raise ConfigError(
            f"ADMIN_TOKEN is too short ({len(token.reveal())} characters; accepts at least "
            f"{ADMIN_TOKEN_MIN_LENGTH}, e.g. the output of `openssl rand -hex 24`)"
        )


class HttpServer:
    def __init__(self, instance: HttpView) -> None:
        self._instance = instance
        self._views = HealthViews(instance)
        self._runner: web.AppRunner | None = None
        self._server: asyncio.Server | None = None
        self.guard: ConnectionGuard | None = None
        self.port: int | None = None

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024, middlewares=[self._guarded])
        views: list[tuple[str, View]] = [
            ("/health", self.health),
            ("/health/leader", self.leader),
            ("/health/standby", self.standby),
            ("/health/cluster", self.cluster),
            ("/health/mqtt", self.mqtt),
            ("/health/database", self.database),
            ("/health/dados-recentes", self.recent_data),
            ("/health/metrics", self.metrics_view),
            ("/health/metrics/simple", self.metrics_simple),
            ("/health/metrics/database", self.metrics_database),
            ("/health/alerts", self.alerts),
            ("/health/gaps", self.gap_report),
        ]
        views += console.json_views(self._instance, self._views.gate)
        app.router.add_routes(console.page_routes())  # the operators' console at /
        app.router.add_routes(diagnostics.routes(self._instance, self._views.gate, _enveloped))
        health = [web.get(path, _plain(view)) for path, view in views]
        # Every /health route again under /api/v1, in the legacy envelope.
        mirrors = [web.get(LEGACY_PREFIX + path, _enveloped(view)) for path, view in views]
        checks = [web.post("/health/alerts/check", _plain(self.alerts_check))]
        mirrors += [web.post(LEGACY_PREFIX + "/health/alerts/check", _enveloped(self.alerts_check))]
        app.on_response_prepare.append(_no_version_header)
        app.router.add_routes(health)
        app.router.add_routes(mirrors)
        app.router.add_routes(checks)
        app.router.add_routes(
            [
                web.get("/metrics", self.prometheus),
                web.post("/admin/step-down", _plain(self.step_down)),
            ]
        )
        return app

    async def start(self) -> None:
        settings = self._instance.settings
        refuse_short_admin_token(settings.admin_token)
        # aiohttp's keepalive timeout also closes idle keep-alive connections; the guard
        # bounds the wait for every request (and the number of connections) on its own.
        self._runner = web.AppRunner(
            self.build_app(), access_log=None, keepalive_timeout=settings.http_header_timeout_s
        )
        await self._runner.setup()
        factory = self._runner.server
        assert factory is not None  # set by setup()
        self.guard = ConnectionGuard(
            factory,  # aiohttp's Server: a protocol factory
            max_connections=http_connection_limit(settings.http_max_connections),
            header_timeout_s=settings.http_header_timeout_s,
        )
        try:
            self._server = await serve_guarded(self.guard, settings.http_host, settings.http_port)
        except OSError as exc:
            raise ConfigError(
                f"HTTP_PORT={settings.http_port} cannot be bound on {settings.http_host} "
                f"({exc.strerror or exc}); choose a free port"
            ) from exc
        sockets = list(self._server.sockets or ())
        self.port = sockets[0].getsockname()[1] if sockets else settings.http_port
        log.info(
            "http.listening",
            host=settings.http_host,
            port=self.port,
            max_connections=self.guard.max_connections,
            header_timeout_s=self.guard.header_timeout_s,
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()  # no new connections; the runner closes the open ones
        if self._runner is not None:
            await self._runner.cleanup()

    @web.middleware
    async def _guarded(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self.guard is None:
            return await handler(request)
        response: web.StreamResponse = await self.guard.middleware(request, handler)
        return response

    # --- views: (body, status) ------------------------------------------------------------

    def _details(self, request: web.Request) -> bool:
        """May this request see topic lists, host details and raw database errors?"""
        settings = self._instance.settings
        if settings.health_details == HEALTH_DETAILS_PUBLIC:
            return True
        return admin.authorised(request, settings.admin_token)

    async def health(self, request: web.Request) -> tuple[Body, int]:
        return await self._views.health(self._details(request))

    async def leader(self, request: web.Request) -> tuple[Body, int]:
        body = self._views.leader_body()
        return body, 200 if body["is_leader"] else 503

    async def standby(self, request: web.Request) -> tuple[Body, int]:
        views = self._views
        role = views.role()
        checks = views.local_checks()
        ok = role == "standby" and views.healthy(role, checks)
        return {**views.leader_body(), "healthy": ok, "checks": checks}, 200 if ok else 503

    async def cluster(self, request: web.Request) -> tuple[Body, int]:
        store = self._instance.store
        if store is None:
            return {"status": "unavailable", "error": "database not connected yet"}, 503
        details = self._details(request)
        try:
            async with self._views.gate.slot():
                view = await store.cluster_view()
        except DatabaseUnavailable as exc:
            return {"status": "unavailable", "error": db_error("database", exc, details)}, 503
        if not details:
            view = redact_cluster(view)
        settings = self._instance.settings
        body = {
            "status": "ok",
            "instance_id": settings.instance_id,
            "cluster_name": settings.cluster_name,
            **view,
        }
        return body, 200

    async def mqtt(self, request: web.Request) -> tuple[Body, int]:
        """Broker connection, subscriptions (and skipped invalid topics), intake counters."""
        inst = self._instance
        ingest = inst.mqtt
        details = self._details(request)
        check = self._views.mqtt_check()
        looping = check["status"] == "flapping"
        connected = bool(ingest and ingest.connected)
        body = {
            "status": "connected" if connected else "disconnected",
            "message": check["message"],
            "reconnectLoop": looping,
            "maxPacketBytes": ingest.stats.max_packet_bytes if ingest else None,
            "instance_id": inst.settings.instance_id,
            "mode": inst.settings.mqtt_mode,
            "subscribedTopics": len(ingest.stats.subscribed) if ingest else 0,
            "topics": sorted(ingest.stats.subscribed) if ingest and details else [],
            "invalidTopics": [
                {"equipamento_id": i.equipamento_id, "topic": i.topic, "problem": i.problem}
                for i in inst.catalog.invalid
                if details
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
        ok = (connected and not looping) or not inst.settings.mqtt_enabled
        return body, 200 if ok else 503

    async def database(self, request: web.Request) -> tuple[Body, int]:
        body, ok = await self._views.database(self._details(request))
        return body, 200 if ok else 503

    async def recent_data(self, request: web.Request) -> tuple[Body, int]:
        """200 for ok/warning, 503 for critical (or when the database cannot be read)."""
        body = await self._views.recent_data(self._details(request))
        return body, 503 if body["status"] == "critical" else 200

    async def metrics_view(self, request: web.Request) -> tuple[Body, int]:
        return await self._views.metrics(self._details(request))

    async def metrics_simple(self, request: web.Request) -> tuple[Body, int]:
        return await self._views.metrics_simple()

    async def metrics_database(self, request: web.Request) -> tuple[Body, int]:
        return self._views.metrics_database(), 200

    async def alerts(self, request: web.Request) -> tuple[Body, int]:
        """The last 100 alerts of the cluster (plus this instance's in-memory ones)."""
        try:
            async with self._views.gate.slot():
                return await self._instance.alerts.recent(self._details(request))
        except DatabaseUnavailable:
            return {**self._instance.alerts.local_view(), "error": "database busy"}, 503

    async def gap_report(self, request: web.Request) -> tuple[Body, int]:
        """The data-loss report of a period (`?from=&to=&equipamento=`): operations/gaps."""
        return await gaps.http_view(request.query, self._instance.pool, self._views.gate)

    async def alerts_check(self, request: web.Request) -> tuple[Body, int]:
        """Evaluate every alert condition now, on this instance; needs ADMIN_TOKEN."""
        inst = self._instance
        refused = admin.refusal(request, inst.settings.admin_token)
        if refused is not None:
            return refused
        result = await inst.check_alerts()
        listed, status = await inst.alerts.recent()
        return {"checked": True, **result, **listed}, status

    async def prometheus(self, request: web.Request) -> web.Response:
        metrics = self._instance.metrics
        try:
            async with self._views.gate.slot():
                await metrics.refresh()
        except DatabaseUnavailable:
            metrics.forget_database()  # aupus_ha_db_up 0 for this scrape
        return web.Response(body=metrics.render(), headers={"Content-Type": METRICS_CONTENT_TYPE})

    # --- admin ------------------------------------------------------------------------------

    async def step_down(self, request: web.Request) -> tuple[Body, int]:
        """Hand the leadership over now (this instance must lead); needs ADMIN_TOKEN."""
        inst = self._instance
        refused = admin.refusal(request, inst.settings.admin_token)
        if refused is not None:
            return refused
        leader = self._views.leader_body()
        if not leader["is_leader"]:
            return {
                "stepped_down": False,
                "error": "this instance is not the leader",
                **leader,
            }, 409
        epoch = leader["epoch"]
        try:
            done = await inst.step_down(STEP_DOWN_TIMEOUT_S)
        except (DatabaseUnavailable, TimeoutError) as exc:
            return {"stepped_down": False, "error": f"step-down failed: {exc}"}, 503
        log.info("admin.step_down", epoch=epoch, done=done)
        if not done:
            return {"stepped_down": False, "error": "leadership was lost meanwhile"}, 409
        return {"stepped_down": True, "instance_id": leader["instance_id"], "epoch": epoch}, 200
