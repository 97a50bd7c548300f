"""Per-device alerts through real `aupus-ha run` processes: the leader's alert loop
raises `equipment_offline` to a real webhook, GET /metrics exports the gauge the
Prometheus rules read, and after a handover the new leader sends nothing again until
the equipment returns (`equipment_back`, once).
"""

from __future__ import annotations

import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from aupus_ha.lab.embedded import EmbeddedMosquitto
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.helpers import INSERT_AGED_READING, WebhookReceiver, metric

TOKEN = "devalert-token-5678"


@pytest.fixture
def nodes(
    database_url: str, mosquitto: EmbeddedMosquitto, receiver: WebhookReceiver, tmp_path: Path
) -> Iterator[list[InstanceProcess]]:
    """Two instances whose alert loop runs every second, killed after the test."""
    env = {
        "DATABASE_URL": database_url,
        "MQTT_URL": mosquitto.url,
        "CLUSTER_NAME": f"devalert-{uuid.uuid4().hex[:8]}",
        "ADMIN_TOKEN": TOKEN,
        "ALERT_WEBHOOK_URL": receiver.url,
        "ALERT_INTERVAL_S": "1",
        "EQUIPMENT_OFFLINE_AFTER_S": "60",
        **FAST_TIMINGS,
    }
    started = [InstanceProcess(name, env, tmp_path) for name in ("node-a", "node-b")]
    yield started
    for inst in started:
        inst.stop_now()


async def check_now(inst: InstanceProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{inst.http_port}/health/alerts/check"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
        s.post(url, headers=headers) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def test_leader_loop_alerts_once_across_a_handover(
    database_url: str, nodes: list[InstanceProcess], receiver: WebhookReceiver
) -> None:
    """The leader's loop sends one equipment_offline and the gauge reads 1; the leader
    stops, the new one (checked at once through POST /health/alerts/check) sends nothing
    again; the equipment returns: one equipment_back, gauge 0."""
    ((silent, _),) = await seed_equipment(database_url, 1, prefix="dev")
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(INSERT_AGED_READING, silent, 120.0)
        for inst in nodes:
            inst.start()
        first = await wait_single_leader(nodes)
        offline = f"equipment_offline:{silent}"
        await wait_until(lambda: receiver.kinds(offline), 20, "no equipment_offline sent")
        assert await metric(first, "aupus_ha_equipment_offline") == 1.0
        age = await metric(first, "aupus_ha_last_data_age_seconds")
        assert age >= 120

        first.signal(signal.SIGTERM)  # graceful: the other takes over at once
        await first.wait_exit()
        second = await wait_single_leader([n for n in nodes if n is not first])
        body = await check_now(second)
        assert body["devices"] == {"offline": [], "back": [], "gone": []}, body
        assert await metric(second, "aupus_ha_equipment_offline") == 1.0

        await conn.execute(INSERT_AGED_READING, silent, 0.0)
        back = f"equipment_back:{silent}"
        await wait_until(lambda: receiver.kinds(back), 20, "no equipment_back sent")
        assert await metric(second, "aupus_ha_equipment_offline") == 0.0
        assert receiver.kinds(offline) == [offline]
        assert receiver.kinds(back) == [back]
    finally:
        await conn.close()
