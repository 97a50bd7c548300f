"""The operations surface against real processes: legacy health routes, /metrics, step-down.

Readings are inserted straight into `equipamentos_dados` with chosen ages (`created_at`),
so thresholds, coverage and quality can be checked exactly; Prometheus output is parsed
with prometheus_client's own parser.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from typing import Any

import aiohttp
import asyncpg
from prometheus_client.parser import text_string_to_metric_families

from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    publish,
    seed_equipment,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory

TOKEN = "op-token-1234"

INSERT_READING = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, qualidade, created_at)
VALUES ($1,
        now() - make_interval(secs => $3::float8) - make_interval(secs => $4::float8 / 1000),
        '{}', $2, now() - make_interval(secs => $3::float8))
"""


async def _insert(dsn: str, rows: list[tuple[str, str, float]]) -> None:
    """Readings (equipamento_id, qualidade, age in seconds), each with its own key."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            INSERT_READING, [(e, q, age, float(i)) for i, (e, q, age) in enumerate(rows)]
        )
    finally:
        await conn.close()


async def _healthy(inst: InstanceProcess) -> bool:
    status, body = await inst.get("/health")
    return status == 200 and body is not None and body["checks"]["mqtt"]["status"] == "connected"


async def _start(spawn: ClusterFactory, name: str = "node-a", **env: str) -> InstanceProcess:
    inst = spawn(name, **env)
    await wait_until(lambda: _healthy(inst), 20, f"{name} never healthy: {inst.tail()}")
    return inst


async def _request(
    inst: InstanceProcess, method: str, path: str, headers: dict[str, str] | None = None
) -> tuple[int, str, dict[str, str]]:
    url = f"http://127.0.0.1:{inst.http_port}{path}"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s,
        s.request(method, url, headers=headers or {}) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


def _samples(text: str) -> dict[str, float]:
    """name{labels} -> value, from the Prometheus text (parsed by prometheus_client)."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


async def test_health_has_legacy_fields_and_keeps_the_new_ones(
    spawn: ClusterFactory, database_url: str
) -> None:
    """/health: legacy status/timestamp/uptime/checks plus role, leadership, buffer, intake."""
    equipment = await seed_equipment(database_url, 2)
    await _insert(database_url, [(equipment[0][0], "bom", 5)])
    a = await _start(spawn)
    await wait_single_leader([a])
    status, body = await a.get("/health")
    assert status == 200 and body is not None
    assert body["status"] == "healthy"
    assert {"timestamp", "uptime", "instance_id", "role", "checks", "leadership"} <= set(body)
    assert body["uptime"] > 0 and body["role"] == "leader"
    checks = body["checks"]
    assert checks["mqtt"]["status"] == "connected" and checks["mqtt"]["subscribedTopics"] == 2
    assert isinstance(checks["mqtt"]["message"], str)
    assert checks["database"]["status"] == "connected" and checks["database"]["message"]
    recent = checks["recentData"]
    assert recent["status"] == "ok" and recent["lastDataTimestamp"]
    assert 0 <= recent["hoursSinceLastData"] < 0.1 and recent["message"]
    assert checks["leadership"]["leaderId"] == "node-a" and checks["leadership"]["isLeader"]
    assert {"buffer", "intake", "loop"} <= set(checks)
    status, wrapped = await a.get("/api/v1/health")
    assert status == 200 and wrapped is not None
    assert wrapped["success"] is True and wrapped["data"]["status"] == "healthy"
    assert {"timestamp", "requestId"} <= set(wrapped["meta"])


async def test_recent_data_thresholds_follow_the_age_of_the_newest_reading(
    spawn: ClusterFactory, database_url: str
) -> None:
    """dados-recentes: ok, warning after RECENT_DATA_WARNING_S, critical after CRITICAL_S."""
    equipment = await seed_equipment(database_url, 1)
    eq = equipment[0][0]
    a = await _start(spawn, RECENT_DATA_WARNING_S="60", RECENT_DATA_CRITICAL_S="600")

    status, body = await a.get("/health/dados-recentes")
    assert status == 503 and body is not None  # nothing stored yet
    assert body["status"] == "critical" and "hoursSinceLastData" in body
    assert body["hoursSinceLastData"] is None and body["lastDataTimestamp"] is None

    await _insert(database_url, [(eq, "bom", 1200)])  # 20 min old: critical
    status, body = await a.get("/health/dados-recentes")
    assert status == 503 and body is not None and body["status"] == "critical"
    assert abs(body["hoursSinceLastData"] - 1200 / 3600) < 0.01

    await _insert(database_url, [(eq, "bom", 120)])  # 2 min old: warning
    status, body = await a.get("/health/dados-recentes")
    assert status == 200 and body is not None and body["status"] == "warning"
    status, health = await a.get("/health")
    assert status == 200 and health is not None  # no recent data degrades, never 503
    assert health["status"] == "degraded" and health["checks"]["recentData"]["status"] == "warning"

    await _insert(database_url, [(eq, "bom", 1)])
    status, body = await a.get("/health/dados-recentes")
    assert status == 200 and body is not None and body["status"] == "ok"
    assert body["hoursSinceLastData"] < 0.01
    status, wrapped = await a.get("/api/v1/health/dados-recentes")
    assert status == 200 and wrapped is not None and wrapped["data"]["status"] == "ok"


async def test_database_route_reports_latency(spawn: ClusterFactory, database_url: str) -> None:
    """/health/database: connected with a latency in ms; mirrored under /api/v1."""
    await seed_equipment(database_url, 1)
    a = await _start(spawn)
    status, body = await a.get("/health/database")
    assert status == 200 and body is not None
    assert body["status"] == "connected" and 0 <= body["latency"] < 2000
    status, wrapped = await a.get("/api/v1/health/database")
    assert status == 200 and wrapped is not None and wrapped["data"]["status"] == "connected"


async def test_metrics_coverage_and_quality_from_any_instance(
    spawn: ClusterFactory, database_url: str
) -> None:
    """/health/metrics on leader and standby: coverage = equipment with data / enabled, 24 h."""
    equipment = await seed_equipment(database_url, 4)
    ids = [e for e, _ in equipment]
    await _insert(
        database_url,
        [
            (ids[0], "bom", 30),
            (ids[0], "bom", 7200),
            (ids[0], "bom", 3 * 3600),
            (ids[1], "parcial", 20 * 3600),
            (ids[2], "ruim", 25 * 3600),  # outside the 24 h window
        ],
    )
    a = await _start(spawn)
    await wait_single_leader([a])
    b = await _start(spawn, "node-b")
    for inst in (a, b):
        status, body = await inst.get("/health/metrics", timeout=5)
        assert status == 200 and body is not None, inst.name
        last24 = body["dataIngestion"]["last24h"]
        assert last24["totalRecords"] == 4 and last24["recordsPerHour"] == round(4 / 24, 1)
        assert last24["coverage"] == 50.0  # 2 of 4 enabled equipment
        assert last24["equipmentWithData"] == 2 and last24["equipmentEnabled"] == 4
        assert body["dataIngestion"]["lastHour"]["totalRecords"] == 1
        assert body["dataIngestion"]["lastRecord"]["minutesAgo"] < 2
        quality = body["quality"]["last24h"]
        assert (quality["good"], quality["partial"], quality["bad"]) == (3, 1, 0)
        assert quality["goodPercentage"] == 75.0
        assert body["connection"]["instanceId"] == inst.name
        assert body["connection"]["mode"] == "production" and body["connection"]["isConnected"]
        # The list is a detail for ADMIN_TOKEN holders (issue 16); the count stays public.
        assert body["topics"]["total"] == 4 and body["topics"]["list"] == []
        assert body["leader"]["leaderId"] == "node-a" and body["leader"]["epoch"] == 1
        assert body["handovers"]["total"] == 1
        assert {"pending", "max", "spool"} <= set(body["buffer"])
        assert {"count", "lastMs", "failures"} <= set(body["flushes"])
        assert body["rejects"]["last24h"] == 0
        status, simple = await inst.get("/health/metrics/simple", timeout=5)
        assert status == 200 and simple is not None
        assert simple == {
            "status": "online",
            "mode": "production",
            "lastDataMinutesAgo": simple["lastDataMinutesAgo"],
            "recordsLast24h": 4,
            "qualityGoodPercentage": 75.0,
        }
        assert simple["lastDataMinutesAgo"] < 2
    status, wrapped = await b.get("/api/v1/health/metrics/simple")
    assert status == 200 and wrapped is not None and wrapped["data"]["recordsLast24h"] == 4


async def test_prometheus_metrics_parse_and_count(
    spawn: ClusterFactory, database_url: str, mosquitto: Any
) -> None:
    """/metrics parses as Prometheus text; counters follow the readings; leader gauge is 1."""
    equipment = await seed_equipment(database_url, 3)
    a = await _start(spawn)
    await wait_single_leader([a])
    b = await _start(spawn, "node-b")
    messages = generic_messages(equipment, 5)
    await publish(mosquitto.url, messages, rate=500)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages})

    async def scraped(inst: InstanceProcess) -> dict[str, float]:
        status, text, headers = await _request(inst, "GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        return _samples(text)

    async def leader_counted() -> dict[str, float] | None:
        samples = await scraped(a)
        return samples if samples.get("aupus_ha_readings_stored_total", 0) >= 15 else None

    leader = await wait_until(leader_counted, 10, "the leader's counters never caught up")
    assert leader["aupus_ha_readings_received_total"] >= 15
    assert leader["aupus_ha_messages_received_total"] >= 15
    assert leader["aupus_ha_is_leader"] == 1 and leader["aupus_ha_epoch"] == 1
    assert leader["aupus_ha_flush_duration_seconds_count"] >= 1
    assert leader["aupus_ha_flush_duration_seconds_bucket{le=+Inf}"] >= 1
    assert leader["aupus_ha_handovers_total"] == 1
    assert leader["aupus_ha_mqtt_connected"] == 1 and leader["aupus_ha_db_up"] == 1
    assert 0 <= leader["aupus_ha_db_latency_seconds"] < 2
    assert leader["aupus_ha_buffer_pending"] >= 0 and "aupus_ha_readings_duplicates_total" in leader

    async def standby_observed() -> dict[str, float] | None:
        samples = await scraped(b)
        return samples if samples["aupus_ha_epoch"] == 1 else None  # NaN until it has seen one

    standby = await wait_until(standby_observed, 10, "the standby never saw the epoch")
    assert standby["aupus_ha_is_leader"] == 0
    assert standby["aupus_ha_readings_stored_total"] == 0
    assert standby["aupus_ha_flush_duration_seconds_count"] == 0


async def test_step_down_needs_the_admin_token(spawn: ClusterFactory, database_url: str) -> None:
    """POST /admin/step-down: refused without ADMIN_TOKEN configured, 401 without, 403 wrong."""
    await seed_equipment(database_url, 1)
    open_node = await _start(spawn, "node-open")
    status, _, _ = await _request(
        open_node, "POST", "/admin/step-down", {"Authorization": "Bearer anything"}
    )
    assert status == 403  # no ADMIN_TOKEN configured: never open
    open_node.stop_now()
    a = await _start(spawn, ADMIN_TOKEN=TOKEN)
    await wait_single_leader([a])
    assert (await _request(a, "POST", "/admin/step-down"))[0] == 401
    wrong = {"Authorization": "Bearer not-the-token"}
    assert (await _request(a, "POST", "/admin/step-down", wrong))[0] == 403
    assert (await _request(a, "POST", "/admin/step-down", {"X-Admin-Token": "nope"}))[0] == 403
    assert await a.is_leader()  # nothing happened


async def test_step_down_hands_over_over_http_and_cli(
    spawn: ClusterFactory, database_url: str
) -> None:
    """The leader hands over on POST /admin/step-down; `aupus-ha step-down` does it too."""
    await seed_equipment(database_url, 1)
    a = await _start(spawn, ADMIN_TOKEN=TOKEN)
    await wait_single_leader([a])
    b = await _start(spawn, "node-b", ADMIN_TOKEN=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, text, _ = await _request(b, "POST", "/admin/step-down", auth)
    assert status == 409, text  # a standby has nothing to hand over
    status, text, _ = await _request(a, "POST", "/admin/step-down", auth)
    assert status == 200, text
    assert await wait_single_leader([a, b], timeout=10) is b
    rows = await fetch(
        database_url,
        "SELECT epoch, from_instance_id, to_instance_id, reason FROM ha_handovers ORDER BY epoch",
    )
    assert [(r["from_instance_id"], r["to_instance_id"], r["reason"]) for r in rows][-1] == (
        "node-a",
        "node-b",
        "released",
    )

    env = {**os.environ, **b.env, "HTTP_PORT": str(b.http_port), "INSTANCE_ID": "cli"}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aupus_ha", "step-down"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=b.log_dir,
    )
    assert result.returncode == 0, result.stderr
    assert "node-b stepped down" in result.stdout
    assert await wait_single_leader([a, b], timeout=10) is a
    wrong = {**env, "ADMIN_TOKEN": "wrong"}
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aupus_ha", "step-down", "--url", f"http://127.0.0.1:{a.http_port}"],
        env=wrong,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=b.log_dir,
    )
    assert result.returncode == 1 and "403" in result.stderr
    assert TOKEN not in result.stderr + result.stdout
