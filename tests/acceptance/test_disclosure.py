"""What the unauthenticated health routes tell a stranger (issue 16).

Topic lists (where to publish forged data), host details (host names, pids, internal
URLs, versions) and raw database errors are shown only to requests carrying
ADMIN_TOKEN, or to everybody when the operator sets HEALTH_DETAILS=public. The legacy
routes keep their fields: lists come back empty, host details null, errors generic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory

TOKEN = "disclosure-token-0123"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def _get(
    inst: InstanceProcess, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{inst.http_port}{path}"
    timeout = aiohttp.ClientTimeout(total=10)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=headers) as resp,
    ):
        body: dict[str, Any] = await resp.json()
        return resp.status, body


async def _subscribed(inst: InstanceProcess, count: int) -> bool:
    _, body = await inst.get("/health")
    return bool(body and body["checks"].get("mqtt", {}).get("subscribedTopics") == count)


async def test_details_need_the_token(spawn: ClusterFactory, database_url: str) -> None:
    """Without the token: no topic, host name, pid, URL or version on /health/cluster,
    /health/mqtt, /health/metrics (nor their /api/v1 mirrors); with it, all of them.
    HEALTH_DETAILS=public shows them to everybody."""
    equipment = await seed_equipment(database_url, 3)
    topics = sorted(t for _, t in equipment)
    node = spawn("node-a", ADMIN_TOKEN=TOKEN)
    await wait_single_leader([node])
    await wait_until(lambda: _subscribed(node, 3), 15, f"not subscribed: {node.tail()}")

    _, cluster = await _get(node, "/health/cluster")
    assert cluster["instances"], cluster
    for row in cluster["instances"]:
        assert (row["host"], row["pid"], row["version"], row["http_url"]) == (None,) * 4, row
    _, mqtt = await _get(node, "/health/mqtt")
    assert mqtt["topics"] == [] and mqtt["subscribedTopics"] == 3, mqtt
    _, metrics = await _get(node, "/health/metrics")
    assert metrics["topics"] == {"total": 3, "list": []}, metrics["topics"]
    _, legacy = await _get(node, "/api/v1/health/mqtt")
    assert legacy["data"]["topics"] == []
    for path in ("/health/cluster", "/health/mqtt", "/health/metrics", "/health"):
        _, body = await _get(node, path)
        assert not any(t in str(body) for t in topics), (path, body)

    _, cluster = await _get(node, "/health/cluster", BEARER)
    assert all(r["host"] and r["pid"] and r["version"] for r in cluster["instances"]), cluster
    _, mqtt = await _get(node, "/health/mqtt", BEARER)
    assert mqtt["topics"] == topics
    _, metrics = await _get(node, "/health/metrics", {"X-Admin-Token": TOKEN})
    assert metrics["topics"]["list"] == topics
    _, legacy = await _get(node, "/api/v1/health/mqtt", BEARER)
    assert legacy["data"]["topics"] == topics
    _, mqtt = await _get(node, "/health/mqtt", {"Authorization": "Bearer not-the-right-token"})
    assert mqtt["topics"] == []

    public = spawn("node-b", HEALTH_DETAILS="public")
    await wait_until(lambda: _subscribed(public, 3), 15, f"not subscribed: {public.tail()}")
    _, mqtt = await _get(public, "/health/mqtt")
    assert mqtt["topics"] == topics
    _, cluster = await _get(public, "/health/cluster")
    assert all(r["host"] for r in cluster["instances"])


async def test_database_errors_are_generic_without_the_token(
    spawn: ClusterFactory, own_postgres: EmbeddedPostgres, mosquitto: object
) -> None:
    """With the database down, /health/database and /health/dados-recentes say so in
    plain words; the driver's error (addresses, ports, server text) needs the token."""
    dsn = own_postgres.dsn()
    await seed_equipment(dsn, 1)
    node = spawn("node-a", DATABASE_URL=dsn, ADMIN_TOKEN=TOKEN)
    await wait_single_leader([node])
    own_postgres.stop()

    async def down() -> bool:
        return (await node.get("/health/database", timeout=5))[0] == 503

    await wait_until(down, 20, f"database never reported down: {node.tail()}")
    for path in ("/health/database", "/health/dados-recentes", "/health/metrics"):
        _, body = await _get(node, path)
        text = str(body)
        assert "Error" not in text and "127.0.0.1" not in text, (path, body)
    _, body = await _get(node, "/health/database", BEARER)
    assert "Error" in body["message"] or "refused" in body["message"], body


async def test_an_unreadable_token_is_refused_without_a_traceback(
    spawn: ClusterFactory, database_url: str
) -> None:
    """A token header that is not UTF-8 gets 401, and nothing is logged as an error."""
    await seed_equipment(database_url, 1)
    node = spawn("node-a", ADMIN_TOKEN=TOKEN)
    await wait_single_leader([node])
    reader, writer = await asyncio.open_connection("127.0.0.1", node.http_port)
    writer.write(
        b"POST /admin/step-down HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        b"Connection: close\r\nAuthorization: Bearer \xff\xfe\xc3\x28token\r\n\r\n"
    )
    response = await asyncio.wait_for(reader.read(), timeout=10)
    writer.close()
    assert response.startswith(b"HTTP/1.1 401"), response[:200]
    assert b"aiohttp" not in response and b"Python/" not in response  # no versions
    assert not [e for e in node.events() if e.get("level") == "error"], node.tail()
    assert "Traceback" not in node.log_path.read_text(errors="replace")


async def test_weak_transports_are_warned_at_start(
    spawn: ClusterFactory, database_url: str
) -> None:
    """`aupus-ha run` with broker credentials over plain mqtt:// to another host logs
    one warning line saying so, and never the password."""
    await seed_equipment(database_url, 1)
    node = spawn("node-a", MQTT_URL="mqtt://ingest:mqtt-pw-4242@192.0.2.10:1883")

    def warned() -> list[dict[str, Any]]:
        return node.find("security.mqtt_credentials_in_clear")

    await wait_until(warned, 20, f"no warning: {node.tail()}")
    assert len(warned()) == 1 and warned()[0]["level"] == "warning"
    assert "mqtt-pw-4242" not in node.log_path.read_text(errors="replace")
