"""The topic catalogue refresh survives a database state it did not expect (issue 17:
nothing that arrives from outside may kill a task), through a real process."""

from __future__ import annotations

import asyncpg

from aupus_ha.lab.localcluster import (
    generic_messages,
    publish,
    seed_equipment,
    wait_all_stored,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory


async def _execute(dsn: str, sql: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def test_a_broken_equipment_query_keeps_the_instance_and_its_topics(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """An operator renames a column the equipment query reads (42703, not a connection
    error): the periodic refresh fails, is logged and retried, the instance keeps its last
    catalogue and keeps storing readings; once the column is back the refresh recovers."""
    equipment = await seed_equipment(database_url, 2)
    leader = spawn("node-a")
    await wait_single_leader([leader])
    await _execute(
        database_url, "ALTER TABLE equipamentos RENAME COLUMN mqtt_habilitado TO habilitado_x"
    )

    def refresh_failed() -> bool:
        return any(e.get("event") == "topics.refresh_failed" for e in leader.events())

    await wait_until(refresh_failed, 20, f"no failed refresh logged: {leader.tail()}")
    assert leader.alive(), leader.tail()
    url = mosquitto.url  # type: ignore[attr-defined]
    messages = generic_messages(equipment, 5)
    await publish(url, messages, rate=500)
    await wait_all_stored(database_url, {(e, ts) for _, _, e, ts in messages}, timeout=20)
    await _execute(
        database_url, "ALTER TABLE equipamentos RENAME COLUMN habilitado_x TO mqtt_habilitado"
    )

    def recovered() -> bool:
        return any(e.get("event") == "topics.refresh_recovered" for e in leader.events())

    await wait_until(recovered, 20, f"refresh did not recover: {leader.tail()}")
    assert leader.alive(), leader.tail()
