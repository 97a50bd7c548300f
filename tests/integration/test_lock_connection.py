"""Leadership ends the moment the lock connection is lost (issue 17, defect 11).

The session advisory lock dies with its connection: a leader must not keep answering
/health/leader 200 (nor flushing) until its next tick or the end of its local lease.
"""

from __future__ import annotations

import time
import uuid

import asyncpg
from structlog.testing import capture_logs

from aupus_ha.config import load_settings
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.leadership.election import Election, Identity
from aupus_ha.leadership.ha import HaLoop
from tests.helpers import async_wait_for


async def test_terminated_lock_session_ends_leadership_at_once(database_url: str) -> None:
    """pg_terminate_backend of the leader's lock session: is_leader() turns false and
    leader.lost (connection_lost) is logged without any tick of the HA loop."""
    conn = await asyncpg.connect(database_url)
    await apply_migrations(conn)
    settings = load_settings(
        {
            "DATABASE_URL": database_url,
            "MQTT_MODE": "disabled",
            "INSTANCE_ID": "solo",
            "LEASE_TTL_S": "30",  # a long lease: only the lost connection can end it
            "HEARTBEAT_S": "1",
            "RENEW_DEADLINE_S": "20",
        }
    )
    settings = settings.with_overrides(mqtt_mode="production")  # may lead, no broker
    identity = Identity("solo", settings.cluster_name, str(uuid.uuid4()), "h", 1, "t", "production")
    loop = HaLoop(settings, Election(settings, identity, Queries()), dict)
    try:
        with capture_logs() as logs:
            await loop.start()
            await loop._tick()
            assert loop.is_leader()
            killed_at = time.monotonic()
            await conn.fetchval(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = $1",
                identity.app_name,
            )
            await async_wait_for(lambda: not loop.is_leader(), 2.0, interval=0.005)
            dropped_after = time.monotonic() - killed_at
            await async_wait_for(
                lambda: any(e["event"] == "leader.lost" for e in logs), 2.0, interval=0.005
            )
        assert dropped_after < 0.5, f"still leading {dropped_after:.3f}s after the loss"
        lost = [e for e in logs if e["event"] == "leader.lost"]
        assert [(e["reason"], e["epoch"]) for e in lost] == [("connection_lost", 1)]
        assert loop.role == "standby"
    finally:
        await loop.release()
        await conn.close()
