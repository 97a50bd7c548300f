"""Through a real `aupus-ha run`: readings without a usable device time are stored and
counted per reason (/metrics, /health/metrics), the legacy time check shows in /health
and in one error line, and the legacy `GET /health/metrics/database` route answers with
the platform's field names (issue 12)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from aupus_ha.lab.localcluster import InstanceProcess, fetch, wait_single_leader, wait_until
from aupus_ha.lab.publisher import Publisher
from tests.acceptance.conftest import ClusterFactory
from tests.legacy_schema import build_schema, cuid, register_equipment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPIC = "lt/clockless"
EQUIPMENT = cuid("lt-clockless")
# clockless.txt line by line: the reason DOMAIN v2 gives each (see test_time_rules.py).
MOTIVOS = ["sem_ntp", "zero", "zero", "antes_de_2020", "antes_de_2020", "malformado", "futuro"]
MOTIVOS += ["ausente"]


def clockless_lines() -> list[bytes]:
    lines = (FIXTURES / "clockless.txt").read_bytes().splitlines()
    return [line for line in lines if line.strip() and not line.startswith(b"#")]


async def _prepare(dsn: str, *, brasilia_history: bool) -> None:
    """A legacy-shaped database (TimeZone America/Sao_Paulo) with 40 rows written before
    aupus-ha: created_at in UTC wall time, timestamp_dados in UTC wall time or, with
    `brasilia_history`, in Brasília wall time (3 h behind: v1's convention)."""
    await build_schema(dsn, "legacy")
    conn = await asyncpg.connect(dsn)
    try:
        await register_equipment(conn, EQUIPMENT, TOPIC, None)
        start = datetime(2026, 11, 29, 12, 0)
        for n in range(40):
            created = start + timedelta(minutes=n, seconds=5)
            ts = created - timedelta(seconds=5, hours=3 if brasilia_history else 0)
            await conn.execute(
                "INSERT INTO equipamentos_dados (id, equipamento_id, dados, timestamp_dados, "
                "qualidade, created_at) VALUES ($1, $2, '{}', $3, 'bom', $4)",
                cuid(f"hist{n}"),
                EQUIPMENT,
                ts,
                created,
            )
    finally:
        await conn.close()


async def _started(spawn: ClusterFactory) -> InstanceProcess:
    node = spawn("node-a", HEALTH_DETAILS="public")

    async def answering() -> bool:
        status, body = await node.get("/health")
        return status == 200 and body is not None and "legacyTime" in body["checks"]

    await wait_until(answering, 30, f"never answered /health: {node.tail()}")
    await wait_single_leader([node])
    return node


async def test_brasilia_history_is_reported_once_and_in_health(
    spawn: ClusterFactory, database_url: str
) -> None:
    """Rows whose timestamp_dados is 3 h behind created_at: /health is degraded with a
    legacyTime check saying so, and the log has exactly one error line about it."""
    await _prepare(database_url, brasilia_history=True)
    node = await _started(spawn)
    status, body = await node.get("/health")
    assert status == 200 and body is not None
    check = body["checks"]["legacyTime"]
    assert check["status"] == "mismatch"
    assert check["medianCreatedMinusDataHours"] == round((3 * 3600 + 5) / 3600, 3)
    assert "Brasília" in check["message"]
    assert body["status"] == "degraded"
    errors = [e for e in node.events() if e.get("level") == "error"]
    assert [e["event"] for e in errors] == ["legacy.timezone_mismatch"], node.tail()


async def test_clockless_readings_stored_counted_and_database_route(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """Each clockless.txt line is stored with its reason (legacy schema, UTC history: the
    check is quiet), counted per reason in /metrics and /health/metrics; the legacy
    /health/metrics/database route (and its /api/v1 mirror) counts the pool's queries."""
    await _prepare(database_url, brasilia_history=False)
    node = await _started(spawn)
    status, body = await node.get("/health")
    assert body is not None and body["checks"]["legacyTime"]["status"] == "ok"
    assert not node.find("legacy.timezone_mismatch")

    async with Publisher(mosquitto.url) as pub:  # type: ignore[attr-defined]
        for line in clockless_lines():
            pub.publish(TOPIC, line)
            await pub.wait_acknowledged()
            # Pacing, not waiting: legacy keys are whole seconds, and readings timed by
            # arrival need distinct seconds (clockless.txt: ">= 1 s apart").
            await asyncio.sleep(1.1)

    async def all_stored() -> bool:
        rows = await fetch(
            database_url,
            "SELECT dados->>'_timestamp_motivo' AS m FROM equipamentos_dados "
            "WHERE dados ? '_timestamp_motivo'",
        )
        return sorted(r["m"] for r in rows) == sorted(MOTIVOS)

    await wait_until(all_stored, 30, f"clockless lines not all stored: {node.tail()}")

    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{node.http_port}"
        async with session.get(f"{url}/metrics") as resp:
            text = await resp.text()
    counted = {
        s.labels["reason"]: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "aupus_ha_readings_time_fallback_total"
    }
    assert counted == {m: float(MOTIVOS.count(m)) for m in set(MOTIVOS)}

    status, metrics = await node.get("/health/metrics")
    assert metrics is not None
    assert metrics["timeFallbacks"]["byReason"] == {m: MOTIVOS.count(m) for m in set(MOTIVOS)}
    assert metrics["timeFallbacks"]["thisInstance"] == len(MOTIVOS)

    status, database = await node.get("/health/metrics/database")
    assert status == 200 and database is not None
    assert set(database) == {"database", "timestamp"}
    assert {"totalQueries", "slowQueries", "errorCount", "timestamp"} <= set(database["database"])
    assert database["database"]["totalQueries"] > 0
    status, mirrored = await node.get("/api/v1/health/metrics/database")
    assert status == 200 and mirrored is not None and mirrored["success"] is True
    assert mirrored["data"]["database"]["totalQueries"] >= database["database"]["totalQueries"]
    assert orjson.dumps(mirrored["data"]["database"]["errorCount"]) == b"0"
