"""The console's own server side: its three files and the ingest-rate summary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import cast

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from aupus_ha.operations import console
from aupus_ha.operations.health import DbGate
from aupus_ha.operations.view import InstanceView


async def test_the_page_and_its_files_are_served_with_a_strict_policy() -> None:
    """`/`, the CSS and the JS: 200, their type, the CSP that forbids inline script and
    other hosts; HEAD answers too. The page loads only its own two files."""
    app = web.Application()
    app.router.add_routes(console.page_routes())
    async with TestClient(TestServer(app)) as client:
        for path, kind in [
            ("/", "text/html"),
            ("/console/console.css", "text/css"),
            ("/console/console.js", "text/javascript"),
        ]:
            resp = await client.get(path)
            assert resp.status == 200 and resp.content_type == kind, path
            policy = resp.headers["Content-Security-Policy"]
            assert "script-src 'self'" in policy and "connect-src 'self'" in policy
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert (await client.head(path)).status == 200
        page = await (await client.get("/")).text()
    assert 'src="/console/console.js"' in page and 'href="/console/console.css"' in page
    assert "http://" not in page and "https://" not in page  # nothing from the internet


def test_the_script_never_writes_markup() -> None:
    """Data enters the page as text only: no innerHTML, outerHTML, insertAdjacentHTML,
    document.write or eval anywhere in the script."""
    script = (console.CONSOLE_DIR / "console.js").read_text(encoding="utf-8")
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in script, sink


def test_rate_summary_averages_the_complete_minutes_only() -> None:
    """The last minute is still filling: it counts in the total, not in the mean."""
    start = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    points = [(start + timedelta(minutes=i), rows) for i, rows in enumerate([10, 20, 3])]
    summary = console.rate_summary(points)
    assert summary["total"] == 33
    assert summary["per_minute_avg"] == 15.0
    assert summary["points"][2] == {"minute": start + timedelta(minutes=2), "rows": 3}
    assert console.rate_summary([(start, 5)])["per_minute_avg"] == 0.0
    assert console.rate_summary([]) == {"total": 0, "per_minute_avg": 0.0, "points": []}


async def test_ingest_rate_without_a_database_is_a_503_with_a_reason() -> None:
    """Before the pool exists the route says so (503), it does not raise."""
    settings = SimpleNamespace(instance_id="node-x")
    instance = cast(InstanceView, SimpleNamespace(settings=settings, pool=None))
    body, status = await console.ingest_rate_view(instance, DbGate(1))
    assert status == 503
    assert body == {
        "instance_id": "node-x",
        "window_minutes": 60,
        "status": "unavailable",
        "error": "database not connected yet",
    }
