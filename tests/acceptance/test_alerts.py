"""Alerts against real processes: open → resolve in `ha_alerts`, cooldown, webhook, tokens.

The webhook receiver is a small aiohttp server started by the test on a free port of
127.0.0.1 and given to the instance as `ALERT_WEBHOOK_URL`; it records every JSON body.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import asyncpg

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import INSERT_AGED_READING, WebhookReceiver

TOKEN = "alert-token-5678"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def _post(
    inst: InstanceProcess, path: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any]]:
    url = f"http://127.0.0.1:{inst.http_port}{path}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
        s.post(url, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.json()


async def _leader(spawn: ClusterFactory, **env: str) -> InstanceProcess:
    inst = spawn("node-a", ADMIN_TOKEN=TOKEN, **env)
    await wait_single_leader([inst])
    return inst


def _kinds(body: dict[str, Any], status: str) -> set[str]:
    return {a["kind"] for a in body["alerts"] if a.get("status") == status}


async def _insert_fresh(dsn: str, equipamento_id: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(INSERT_AGED_READING, equipamento_id, 1.0)
    finally:
        await conn.close()


async def test_alert_opens_and_resolves_and_reaches_the_webhook(
    spawn: ClusterFactory, database_url: str, receiver: WebhookReceiver
) -> None:
    """No data → check opens a stored CRITICAL alert (webhook gets Slack JSON); data resolves."""
    equipment = await seed_equipment(database_url, 1)
    a = await _leader(spawn, ALERT_WEBHOOK_URL=receiver.url)

    status, body = await _post(a, "/health/alerts/check", AUTH)
    assert status == 200 and "no_recent_data" in body["opened"], body
    status, listed = await a.get("/health/alerts")
    assert status == 200 and listed is not None and listed["total"] == len(listed["alerts"])
    alert = next(x for x in listed["alerts"] if x["kind"] == "no_recent_data")
    assert alert["status"] == "open" and alert["level"] == "CRITICAL"
    assert alert["service"] == "DataIngestion" and alert["message"] and alert["timestamp"]
    assert isinstance(alert["metadata"], dict)
    assert {x["level"] for x in listed["alerts"]} <= {"INFO", "WARNING", "CRITICAL"}
    handover = [x for x in listed["alerts"] if x["kind"] == "handover:1"]
    assert handover and handover[0]["level"] == "INFO" and handover[0]["service"] == "Leadership"
    rows = await fetch(
        database_url,
        "SELECT level, resolved_at, last_notified_at FROM ha_alerts WHERE kind = 'no_recent_data'",
    )
    assert len(rows) == 1 and rows[0]["resolved_at"] is None
    assert rows[0]["last_notified_at"] is not None

    await wait_until(lambda: receiver.about("no_recent_data"), 15, "webhook never called")
    slack = receiver.about("no_recent_data")[0]
    assert "[CRITICAL]" in slack["text"] and "DataIngestion" in slack["text"]
    assert slack["attachments"][0]["color"] and slack["attachments"][0]["text"]

    status, wrapped = await a.get("/api/v1/health/alerts")
    assert status == 200 and wrapped is not None and wrapped["success"] is True
    assert "no_recent_data" in _kinds(wrapped["data"], "open")

    await _insert_fresh(database_url, equipment[0][0])
    status, body = await _post(a, "/health/alerts/check", AUTH)
    assert status == 200 and "no_recent_data" in body["resolved"], body
    status, listed = await a.get("/health/alerts")
    assert listed is not None and "no_recent_data" in _kinds(listed, "resolved")
    assert "no_recent_data" not in _kinds(listed, "open")
    rows = await fetch(
        database_url, "SELECT resolved_at FROM ha_alerts WHERE kind = 'no_recent_data'"
    )
    assert len(rows) == 1 and rows[0]["resolved_at"] is not None
    await wait_until(
        lambda: receiver.about("no_recent_data", resolved=True), 15, "no resolved notification"
    )


async def test_cooldown_gives_one_notification_for_a_lasting_condition(
    spawn: ClusterFactory, database_url: str, receiver: WebhookReceiver
) -> None:
    """Two checks of the same open condition → one row and one notification."""
    equipment = await seed_equipment(database_url, 1)
    a = await _leader(spawn, ALERT_WEBHOOK_URL=receiver.url)
    for _ in range(2):
        status, body = await _post(a, "/health/alerts/check", AUTH)
        assert status == 200 and "no_recent_data" in body["open"], body
    # Delivery is FIFO: once the later "resolved" arrives, every earlier one has too.
    await _insert_fresh(database_url, equipment[0][0])
    status, body = await _post(a, "/health/alerts/check", AUTH)
    assert status == 200 and "no_recent_data" in body["resolved"], body
    await wait_until(
        lambda: receiver.about("no_recent_data", resolved=True), 15, "no resolved notification"
    )
    assert len(receiver.about("no_recent_data")) == 1
    rows = await fetch(database_url, "SELECT id FROM ha_alerts WHERE kind = 'no_recent_data'")
    assert len(rows) == 1


async def test_leader_checks_every_alert_interval(spawn: ClusterFactory, database_url: str) -> None:
    """With ALERT_INTERVAL_S=1 the leader opens the alert by itself, without a POST."""
    await seed_equipment(database_url, 1)
    a = await _leader(spawn, ALERT_INTERVAL_S="1")

    async def opened() -> bool:
        status, body = await a.get("/health/alerts")
        return status == 200 and body is not None and "no_recent_data" in _kinds(body, "open")

    await wait_until(opened, 20, f"the leader never opened the alert: {a.tail()}")


async def test_alert_check_needs_the_admin_token(spawn: ClusterFactory, database_url: str) -> None:
    """POST /health/alerts/check: 401 without a token, 403 wrong or when none is set."""
    await seed_equipment(database_url, 1)
    a = await _leader(spawn)
    assert (await _post(a, "/health/alerts/check"))[0] == 401
    assert (await _post(a, "/health/alerts/check", {"Authorization": "Bearer no"}))[0] == 403
    assert (await _post(a, "/api/v1/health/alerts/check"))[0] == 401
    status, body = await _post(a, "/api/v1/health/alerts/check", AUTH)
    assert status == 200 and body["success"] is True and "alerts" in body["data"]
    closed = spawn("node-b")

    async def answers() -> bool:
        return (await closed.get("/health/alerts"))[0] != 0

    await wait_until(answers, 20, f"node-b never answered: {closed.tail()}")
    status, _ = await _post(closed, "/health/alerts/check", AUTH)
    assert status == 403
