"""Outages of the servers around the cluster, handled without restarting an instance."""

from __future__ import annotations

import asyncio

from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    generic_messages,
    publish,
    seed_equipment,
    stored_keys,
    wait_all_stored,
    wait_single_leader,
)
from tests.helpers import instance_env


async def test_database_restart_loses_nothing(
    own_postgres: EmbeddedPostgres, mosquitto: object, tmp_path: object
) -> None:
    """PostgreSQL goes away for a few seconds while readings flow: the instances keep
    running, buffer, re-elect when it is back, and every reading is stored once."""
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 5)
    env = instance_env(dsn, mosquitto.url, "outage")  # type: ignore[attr-defined]
    nodes = [InstanceProcess(n, env, tmp_path).start() for n in ("node-a", "node-b")]  # type: ignore[arg-type]
    try:
        await wait_single_leader(nodes)
        messages = generic_messages(equipment, 120)  # 600 readings over 3 s
        pub = asyncio.create_task(publish(mosquitto.url, messages, rate=200))  # type: ignore[attr-defined]
        await asyncio.sleep(0.8)
        await asyncio.to_thread(own_postgres.stop)
        await asyncio.sleep(3)
        await asyncio.to_thread(own_postgres.start)
        assert await pub == len(messages)
        await wait_single_leader(nodes, timeout=30)
        await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=40)
        keys = await stored_keys(dsn)
        assert len(keys) == len(set(keys)) == len(messages)
        assert all(n.alive() for n in nodes)
        assert any(n.find("db.reconnected") for n in nodes)
    finally:
        for node in nodes:
            node.stop_now()
