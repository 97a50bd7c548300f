"""Start-up warnings for weak transports, the admin token's floor, the webhook's scheme and
redirects, the step-down client's warning, the health routes' share of the pool (issue 16)."""

from __future__ import annotations

import asyncio
import re
import select
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from aupus_ha.config import ConfigError, load_settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.lab.embedded import free_port
from aupus_ha.operations import notify
from aupus_ha.operations.admin import post_admin, sends_token_in_clear
from aupus_ha.operations.health import DbGate
from aupus_ha.operations.httpguard import ConnectionGuard, close_now
from aupus_ha.operations.security import warn_weak_transports

ROOT = Path(__file__).resolve().parents[2]
BASE = {"DATABASE_URL": "postgresql://aupus:dbsecret@127.0.0.1/aupus", "MQTT_MODE": "disabled"}


def _warnings(**env: str) -> dict[str, Any]:
    settings = load_settings({**BASE, **env}, dotenv=None)
    with capture_logs() as logs:
        warn_weak_transports(settings)
    assert all(e["log_level"] == "warning" for e in logs)
    return {str(e["event"]): e for e in logs}


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("postgresql://aupus:dbsecret@db.example:5432/aupus", "prefer"),
        ("postgresql://aupus:dbsecret@10.0.0.5/aupus?sslmode=require", "require"),
        ("postgresql://aupus:dbsecret@db.example/aupus?sslmode=disable", "disable"),
        ("postgresql://aupus:dbsecret@db.example/aupus?sslmode=verify-full", None),
        ("postgresql://aupus:dbsecret@db.example/aupus?sslmode=verify-ca", None),
        ("postgresql://aupus:dbsecret@127.0.0.1/aupus?sslmode=disable", None),
        ("postgresql://aupus:dbsecret@localhost/aupus", None),
        ("postgresql:///aupus?host=/var/run/postgresql", None),
    ],
)
def test_database_without_verification_is_warned(url: str, warned: str | None) -> None:
    """A sslmode that does not verify the server, to a host across a network, is one
    warning line naming the host and the sslmode (never the password)."""
    found = _warnings(DATABASE_URL=url)
    event = found.get("security.database_tls_unverified")
    if warned is None:
        assert event is None, found
        return
    assert event is not None and event["sslmode"] == warned
    assert "dbsecret" not in str(found)


def test_mqtt_and_smtp_in_clear_are_warned() -> None:
    """MQTT TLS without certificate checks, broker credentials over plain mqtt:// to
    another host, and an SMTP login on port 25: one warning each."""
    found = _warnings(
        MQTT_MODE="production",
        MQTT_URL="mqtt://ingest:mqttsecret@broker.example:1883",
        SMTP_HOST="smtp.example",
        SMTP_USER="alerts",
        SMTP_PASS="smtpsecret",
        SMTP_PORT="25",
    )
    assert {"security.mqtt_credentials_in_clear", "security.smtp_login_in_clear"} <= set(found)
    assert "mqttsecret" not in str(found) and "smtpsecret" not in str(found)
    found = _warnings(
        MQTT_MODE="production", MQTT_URL="mqtts://ingest:pw@broker.example", MQTT_TLS_INSECURE="1"
    )
    assert set(found) == {"security.mqtt_tls_unverified"}
    quiet = _warnings(
        MQTT_MODE="production",
        MQTT_URL="mqtt://ingest:pw@127.0.0.1:1883",
        SMTP_HOST="smtp.example",
        SMTP_USER="alerts",
        SMTP_PORT="587",
    )
    assert quiet == {}


def test_a_short_admin_token_stops_run_with_one_line(tmp_path: Path) -> None:
    """`aupus-ha run` with an 8-character ADMIN_TOKEN exits 2 with one line naming the
    variable, and does not print the token."""
    env = {
        "PATH": "/usr/bin:/bin",
        **BASE,
        "ADMIN_TOKEN": "s3cr3t99",
        "HTTP_PORT": str(free_port()),
        "HTTP_HOST": "127.0.0.1",
    }
    result = subprocess.run(
        [sys.executable, "-m", "aupus_ha", "run", "--no-migrate"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("aupus-ha:")]
    assert len(lines) == 1 and "ADMIN_TOKEN" in lines[0], result.stderr
    assert "s3cr3t99" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "ftp://hooks.example/x", "gopher://a/b", "hooks.example/x"]
)
def test_the_webhook_accepts_only_http_and_https(url: str) -> None:
    """Any other scheme stops the start (exit 2 line); the URL, a secret, is not quoted."""
    with pytest.raises(ConfigError, match="ALERT_WEBHOOK_URL") as caught:
        load_settings({**BASE, "ALERT_WEBHOOK_URL": url}, dotenv=None)
    assert url not in str(caught.value)
    ok = load_settings({**BASE, "ALERT_WEBHOOK_URL": "https://hooks.example/T0/B1"}, dotenv=None)
    assert ok.alert_webhook_url.reveal() == "https://hooks.example/T0/B1"


async def test_the_webhook_does_not_follow_redirects() -> None:
    """A webhook answering 307 is a failed attempt: the alert is not re-POSTed to the
    redirect's target (a real HTTP server)."""
    hits: list[str] = []

    async def hook(request: web.Request) -> web.Response:
        hits.append("hook")
        raise web.HTTPTemporaryRedirect("/elsewhere")

    async def elsewhere(request: web.Request) -> web.Response:
        hits.append("elsewhere")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", hook)
    app.router.add_post("/elsewhere", elsewhere)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        settings = load_settings(
            {**BASE, "ALERT_WEBHOOK_URL": f"http://127.0.0.1:{port}/hook"}, dotenv=None
        )
        with pytest.raises(notify.WebhookRedirected):
            await notify.Notifier(settings)._post({"text": "x"})
    finally:
        await runner.cleanup()
    assert hits == ["hook"]


def test_the_docs_give_the_delivery_attempts_the_code_makes() -> None:
    """docs say as many webhook/e-mail attempts as notify.SEND_ATTEMPTS."""
    for doc in ("docs/configuration.md", "docs/operations.md"):
        text = (ROOT / doc).read_text(encoding="utf-8")
        counts = {int(n) for n in re.findall(r"(\d+) (?:delivery )?attempts", text)}
        assert counts <= {notify.SEND_ATTEMPTS}, (doc, counts)


@pytest.mark.parametrize(
    ("url", "clear"),
    [
        ("http://127.0.0.1:3000/admin/step-down", False),
        ("http://localhost:3000/admin/step-down", False),
        ("http://[::1]:3000/admin/step-down", False),
        ("https://node-b.internal/admin/step-down", False),
        ("http://node-b.internal:3000/admin/step-down", True),
        ("http://10.0.0.7:3000/admin/step-down", True),
    ],
)
def test_token_in_clear_is_recognised(url: str, clear: bool) -> None:
    """Plain http:// to anything but this host sends ADMIN_TOKEN in clear."""
    assert sends_token_in_clear(url) is clear


def _outbound_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # no packet is sent: only a route is chosen
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


async def test_step_down_to_another_host_over_http_warns(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`post_admin` (behind `aupus-ha step-down --url`) to a non-loopback http:// URL
    prints a warning that the token goes in clear, without the token."""
    address = _outbound_address()
    if address is None:
        pytest.skip("this host has no non-loopback address")
    with pytest.raises(aiohttp.ClientError):  # nothing listens there
        await post_admin(f"http://{address}:{free_port()}/admin/step-down", "tok-0123456789abc")
    err = capsys.readouterr().err
    assert "in clear" in err and "tok-0123456789abc" not in err


async def test_health_queries_get_at_most_their_slots() -> None:
    """Two health queries at once hold the gate; a third gives up as 'database busy'
    after its timeout instead of queueing on the flusher's pool."""
    gate = DbGate(2)
    release = asyncio.Event()

    async def hold() -> None:
        async with gate.slot(1.0):
            await release.wait()

    holders = [asyncio.create_task(hold()) for _ in range(2)]
    await asyncio.sleep(0)
    with pytest.raises(DatabaseUnavailable, match="busy"):
        async with gate.slot(0.1):
            pass
    release.set()
    await asyncio.gather(*holders)
    async with gate.slot(0.1):
        pass


async def test_the_guard_evicts_the_oldest_silent_connection() -> None:
    """At the connection limit, a new client still gets its answer: the oldest
    connection that has not sent a request is closed to make room (a real server)."""
    app = web.Application()
    app.router.add_get("/ping", _pong)
    runner = web.AppRunner(app)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, max_connections=3, header_timeout_s=30)
    server = await asyncio.get_running_loop().create_server(guard, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        silent = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        await _until(lambda: guard.stats.open == 3)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:100]
        assert await asyncio.wait_for(silent[0][0].read(), timeout=5) == b""  # evicted
        assert guard.stats.evicted == 1 and guard.stats.refused == 0
        for _, w in silent:
            w.close()
    finally:
        server.close()
        await runner.cleanup()


async def test_a_connection_closed_with_unread_bytes_ends_its_stream() -> None:
    """Under load the guard may close a connection whose first bytes arrived after its
    last read (a burst evicts it): its client must read an end of stream, not get a
    reset (the kernel resets a socket closed with unread bytes)."""
    with socket.create_server(("127.0.0.1", 0)) as listening:
        reader, writer = await asyncio.open_connection(*listening.getsockname())
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        await writer.drain()
        accepted, _ = listening.accept()  # already queued: returns at once
        assert select.select([accepted], [], [], 5)[0], "the bytes never arrived"
        loop = asyncio.get_running_loop()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, accepted)
        close_now(transport)  # before the transport's first read
        assert await asyncio.wait_for(reader.read(), timeout=5) == b""
        writer.close()


async def _pong(request: web.Request) -> web.Response:
    return web.Response(text="pong")


async def _until(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met"
        await asyncio.sleep(0.01)
