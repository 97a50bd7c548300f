"""The operators' console: a page at `/` and the one JSON route it needed that was missing.

Why a page in the product: operators ask "who leads, since when, which devices send and
where are the gaps" during an incident, often from a phone, with no Grafana at hand. The
page is plain HTML, CSS and JavaScript shipped in the package (`console/`), no build
step and nothing fetched from the internet; its script reads the same JSON routes as
every other client (`/health/leader`, `/health/cluster`, `/health`, `/health/gaps`,
`/api/v1/mqtt/diagnostico/...`) and draws its charts as inline SVG. The files are read
once when the routes are built, so no request touches the disk.

`/health/ingest-rate` is the only route added here: rows stored per minute over the last
hour (index-backed), for the ingest-rate chart. It answers for the cluster, read from the
database, like the other data routes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from aupus_ha.database.connection import DatabaseUnavailable, translating_db_errors
from aupus_ha.database.queries import Queries
from aupus_ha.operations.health import HEALTH_QUERY_TIMEOUT_S, DbGate
from aupus_ha.operations.view import InstanceView

Body = dict[str, Any]
View = Callable[[web.Request], Awaitable[tuple[Body, int]]]

CONSOLE_DIR: Final = Path(__file__).resolve().with_name("console")
INGEST_RATE_PATH: Final = "/health/ingest-rate"
INGEST_RATE_MINUTES: Final = 60
# The page's own files: (route, file, content type).
ASSETS: Final = (
    ("/", "index.html", "text/html"),
    ("/console/console.css", "console.css", "text/css"),
    ("/console/console.js", "console.js", "text/javascript"),
)
# The page loads only its own files and talks only to its own instance: an injected
# string could neither run inline script nor send data anywhere else.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def page_routes(directory: Path = CONSOLE_DIR) -> list[web.RouteDef]:
    """GET (and HEAD) of the page and its two files, read now, once."""
    return [
        web.get(route, _static((directory / name).read_bytes(), content_type))
        for route, name, content_type in ASSETS
    ]


def _static(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(
            body=body, content_type=content_type, charset="utf-8", headers=SECURITY_HEADERS
        )

    return handler


def json_views(instance: InstanceView, gate: DbGate) -> list[tuple[str, View]]:
    """The console's JSON routes, to be served (and mirrored under /api/v1) like /health's.

    Nothing of `instance` is read here: the route table is built before it is running.
    """

    async def ingest_rate(request: web.Request) -> tuple[Body, int]:
        return await ingest_rate_view(instance, gate)

    return [(INGEST_RATE_PATH, ingest_rate)]


async def ingest_rate_view(instance: InstanceView, gate: DbGate) -> tuple[Body, int]:
    """Rows stored per minute over the last hour (by arrival), oldest first."""
    body: Body = {
        "instance_id": instance.settings.instance_id,
        "window_minutes": INGEST_RATE_MINUTES,
    }
    pool = instance.pool
    if pool is None:
        return {**body, "status": "unavailable", "error": "database not connected yet"}, 503
    query = _queries()["console_ingest_rate"]
    try:
        async with gate.slot():
            with translating_db_errors():
                async with asyncio.timeout(HEALTH_QUERY_TIMEOUT_S):
                    rows = await pool.fetch(query, INGEST_RATE_MINUTES)
    except (DatabaseUnavailable, TimeoutError):
        # The driver's text names addresses: never on this unauthenticated route.
        return {**body, "status": "unavailable", "error": "cannot read the database"}, 503
    return {**body, "status": "ok", **rate_summary([(r["minute"], r["rows"]) for r in rows])}, 200


def rate_summary(points: list[tuple[datetime, int]]) -> Body:
    """Total, the mean of the complete minutes (the last one is still filling) and points."""
    complete = [rows for _, rows in points[:-1]]
    return {
        "total": sum(rows for _, rows in points),
        "per_minute_avg": round(sum(complete) / len(complete), 1) if complete else 0.0,
        "points": [{"minute": minute, "rows": int(rows)} for minute, rows in points],
    }


@cache
def _queries() -> Queries:
    # The ingest-rate query has no column-type placeholder: the default types will do.
    return Queries()
