"""The HA loop backs off on the database's state, whatever SQLSTATE it arrives with
(issue 17, defect 5), on a real PostgreSQL.

A trigger on `ha_instances` makes every heartbeat fail with a chosen code, the way a
full disk (53100), a read-only server (25006) or a code newer than asyncpg (53999:
`UnknownPostgresError`) would: the loop keeps running, reports the database as
unavailable, and is healthy again once the trigger is gone.
"""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from structlog.testing import capture_logs

from aupus_ha.config import load_settings
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.leadership.election import Election, Identity
from aupus_ha.leadership.ha import HaLoop
from tests.helpers import async_wait_for


@pytest.mark.parametrize("code", ["53100", "25006", "40001", "53999"])
async def test_heartbeat_errors_are_backed_off(database_url: str, code: str) -> None:
    """Every heartbeat fails with `code` for a while: the loop survives and recovers."""
    conn = await asyncpg.connect(database_url)
    await apply_migrations(conn)
    settings = load_settings(
        {
            "DATABASE_URL": database_url,
            "MQTT_MODE": "disabled",  # heartbeats only, never leads
            "INSTANCE_ID": "solo",
            "LEASE_TTL_S": "2",
            "HEARTBEAT_S": "0.1",
            "RENEW_DEADLINE_S": "1.4",
        }
    )
    identity = Identity("solo", settings.cluster_name, str(uuid.uuid4()), "h", 1, "t", "x")
    loop = HaLoop(settings, Election(settings, identity, Queries()), dict)
    await loop.start()
    await conn.execute(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"RAISE EXCEPTION 'simulated' USING ERRCODE = '{code}'; END $$"
    )
    task = asyncio.create_task(loop.run())
    try:
        with capture_logs() as logs:
            await conn.execute(
                "CREATE TRIGGER refuse BEFORE UPDATE ON ha_instances "
                "FOR EACH ROW EXECUTE FUNCTION refuse()"
            )
            await async_wait_for(lambda: not loop.db_ok, 5.0)
            await asyncio.sleep(0.5)  # several failing ticks
            assert not task.done(), task.exception()
            await conn.execute("DROP TRIGGER refuse ON ha_instances")
            await async_wait_for(lambda: loop.db_ok, 10.0)
        assert not task.done()
        assert any(e["event"] == "db.unavailable" and code in e["error"] for e in logs), logs
    finally:
        loop.stop()
        await asyncio.wait_for(task, 10)
        await loop.release()
        await conn.close()
