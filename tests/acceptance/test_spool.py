"""The durability rule end to end: what an instance acknowledged survives its kill -9.

The database is down, so nobody can commit; the instances acknowledge readings to the
broker (durable in their spools, beyond BUFFER_MAX_MESSAGES on disk only), then every
instance is killed with SIGKILL. Memory is gone and the broker has forgotten the
messages; only the spools hold them. After a restart every reading is stored once.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp

from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    generic_messages,
    publish,
    seed_equipment,
    stored_keys,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from tests.helpers import instance_env, metric, standby_ready

TOKEN = "spool-test-token"


def _spool(alert: dict[str, Any]) -> bool:
    return str(alert.get("kind", "")).startswith("spool_growing:node-a")


def alert_of(listed: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    assert listed is not None, "no /health/alerts body"
    found: list[dict[str, Any]] = [a for a in listed["alerts"] if a["kind"] == kind]
    assert found, listed
    return found[0]


async def check_alerts(node: InstanceProcess) -> int:
    url = f"http://{node.http_host}:{node.http_port}/health/alerts/check"
    headers = {"Authorization": f"Bearer {TOKEN}"}
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.post(url, headers=headers) as r:
        return r.status


async def test_acknowledged_readings_survive_kill_9_of_every_instance(
    own_postgres: EmbeddedPostgres, mosquitto: object, tmp_path: Path
) -> None:
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 5)
    env = instance_env(
        dsn,
        mosquitto.url,  # type: ignore[attr-defined]
        "spool-kill",
        BUFFER_MAX_MESSAGES="100",  # 600 readings: most of them spill to disk
        ADMIN_TOKEN=TOKEN,
    )
    nodes = [InstanceProcess(n, env, tmp_path).start() for n in ("node-a", "node-b")]
    try:
        leader = await wait_single_leader(nodes)
        standby = next(n for n in nodes if n is not leader)
        await wait_until(lambda: standby_ready(standby), 30, "the standby did not come up")
        await asyncio.to_thread(own_postgres.stop)
        messages = generic_messages(equipment, 120)
        assert await publish(mosquitto.url, messages, rate=400) == len(messages)  # type: ignore[attr-defined]

        async def all_spooled() -> bool:
            counts = await asyncio.gather(*(metric(n, "aupus_ha_spool_records") for n in nodes))
            return all(c >= len(messages) for c in counts)

        await wait_until(all_spooled, 30, "instances did not spool every message")
        assert all(n.find("buffer.spilling") for n in nodes)
        # The "spool growing" alert, kept in memory while the database is away.
        assert await check_alerts(nodes[0]) == 503
        _, listed = await nodes[0].get("/health/alerts", timeout=5)
        spool_alert = alert_of(listed, "spool_growing:node-a")
        assert spool_alert["status"] == "open" and spool_alert["level"] == "WARNING"
        assert spool_alert["metadata"]["backlog"] is True
        for node in nodes:
            node.stop_now()  # SIGKILL: no final flush, no graceful anything

        await asyncio.to_thread(own_postgres.start)
        for node in nodes:
            node.start()
        await wait_single_leader(nodes, timeout=30)
        await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=60)
        keys = await stored_keys(dsn)
        assert len(keys) == len(set(keys)) == len(messages)
        await wait_until(
            lambda: all(n.find("spool.recovering") for n in nodes), 30, "no spool replay"
        )

        async def spool_alert_resolved() -> bool:
            await check_alerts(nodes[0])
            _, body = await nodes[0].get("/health/alerts", timeout=5)
            states = {a["status"] for a in (body or {}).get("alerts", []) if _spool(a)}
            return "open" not in states

        await wait_until(spool_alert_resolved, 30, "the spool alert did not resolve")
    finally:
        for node in nodes:
            node.stop_now()


async def test_a_full_spool_stops_acknowledging_and_loses_nothing(
    own_postgres: EmbeddedPostgres, mosquitto: EmbeddedMosquitto, tmp_path: Path
) -> None:
    """At SPOOL_MAX_BYTES the instance stops acknowledging: the broker keeps the rest
    in the instance's session queue, and everything is stored once writing resumes."""
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 10)
    env = instance_env(
        dsn,
        mosquitto.url,
        "spool-full",
        BUFFER_MAX_MESSAGES="100",
        SPOOL_MAX_BYTES=str(1024**2),  # about 3,000 records of these readings
    )
    node = InstanceProcess("node-a", env, tmp_path).start()
    try:
        await wait_single_leader([node])
        await asyncio.to_thread(own_postgres.stop)
        messages = generic_messages(equipment, 600)  # 6,000 readings: twice what fits
        assert await publish(mosquitto.url, messages, rate=3000) == len(messages)
        await wait_until(lambda: node.find("spool.full"), 60, "the spool never filled")
        spooled = await metric(node, "aupus_ha_spool_records")
        assert 0 < spooled < len(messages)  # the rest waits, unacknowledged, at the broker

        await asyncio.to_thread(own_postgres.start)
        await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=90)
        keys = await stored_keys(dsn)
        assert len(keys) == len(set(keys)) == len(messages)
        assert node.alive() and node.find("spool.room_again")
    finally:
        node.stop_now()
