"""Per-device alerts on a real PostgreSQL (fresh and legacy-shaped schemas) delivered to a
real webhook receiver (a small aiohttp server on 127.0.0.1): an equipment going silent
raises one `equipment_offline`, a second leader reading the same rows sends nothing
again, its return raises `equipment_back`, and a storm raises one grouped alert.

Ages are made by inserting readings whose arrival (`created_at`) lies in the past: no
waiting on the clock.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import asyncpg

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.operations.device_alerts import SEEN_WINDOW_S, DeviceAlerts, count_offline
from aupus_ha.operations.notify import Notifier
from tests.helpers import INSERT_AGED_READING, WebhookReceiver, async_wait_for
from tests.legacy_schema import cuid, register_equipment

AFTER_S = 600.0
INSERT_READING = f"{INSERT_AGED_READING}ON CONFLICT DO NOTHING\n"


class Node:
    """What one instance's alert loop has: a pool, the named queries, a real notifier."""

    def __init__(self, pool: asyncpg.Pool, notifier: Notifier, alerts: DeviceAlerts) -> None:
        self.pool, self.notifier, self.alerts = pool, notifier, alerts

    async def drained(self) -> None:
        """Every enqueued notification delivered (or failed)."""
        stats = self.notifier.stats
        await async_wait_for(
            lambda: stats.sent + stats.failed + stats.dropped >= stats.queued,
            10,
            message="notifications not delivered",
        )
        assert self.notifier.stats.failed == 0


@contextlib.asynccontextmanager
async def node(dsn: str, hook: str, instance_id: str, storm: int = 10) -> AsyncIterator[Node]:
    env = {
        "DATABASE_URL": dsn,
        "MQTT_MODE": "disabled",
        "ALERT_WEBHOOK_URL": hook,
        "INSTANCE_ID": instance_id,
    }
    settings = load_settings(env, dotenv=None)
    pool = await create_pool(settings, "aupus-ha/devalert-test")
    queries = Queries()

    async def fetch(name: str, *args: object) -> list[asyncpg.Record]:
        async with asyncio.timeout(10):
            rows: list[asyncpg.Record] = await pool.fetch(queries[name], *args)
        return rows

    notifier = Notifier(settings)
    alerts = DeviceAlerts(
        fetch,
        notifier,
        cluster_name=settings.cluster_name,
        instance_id=instance_id,
        offline_after_s=AFTER_S,
        storm=storm,
    )
    sender = asyncio.create_task(notifier.run(), name=f"notify-{instance_id}")
    try:
        yield Node(pool, notifier, alerts)
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender
        await pool.close()


async def connect_utc(dsn: str) -> asyncpg.Connection:
    """Wall times written as the product reads them (legacy columns hold UTC wall time)."""
    return await asyncpg.connect(dsn, server_settings={"TimeZone": "UTC"})


async def add_equipment(conn: asyncpg.Connection, *labels: str) -> list[str]:
    ids = [cuid(label) for label in labels]
    for eid in ids:
        await register_equipment(conn, eid, f"aupus/test/{eid}", None)
    return ids


async def reading(conn: asyncpg.Connection, equipment_id: str, age_s: float) -> None:
    await conn.execute(INSERT_READING, equipment_id, age_s)


async def open_offline(conn: asyncpg.Connection) -> list[str]:
    rows = await conn.fetch(
        "SELECT kind FROM ha_alerts WHERE resolved_at IS NULL "
        "AND kind LIKE 'equipment_offline:%' ORDER BY kind"
    )
    return [r["kind"] for r in rows]


async def test_silent_equipment_alerts_once_and_comes_back(
    v2_schema: tuple[str, str], receiver: WebhookReceiver
) -> None:
    """One silent equipment → one equipment_offline (never the fresh, the never-seen nor
    the silent-for-8-days one); a second leader sends nothing again; its return → one
    equipment_back, and the row is resolved."""
    _, dsn = v2_schema
    conn = await connect_utc(dsn)
    try:
        silent, fresh, _never, old = await add_equipment(conn, "silent", "fresh", "never", "old")
        await reading(conn, silent, AFTER_S * 2)
        await reading(conn, fresh, 5)
        await reading(conn, old, SEEN_WINDOW_S + 3600)

        async with node(dsn, receiver.url, "node-a") as a:
            assert await a.alerts.check() == {"offline": [silent], "back": [], "gone": []}
            await a.drained()
            assert receiver.kinds() == [f"equipment_offline:{silent}"]
            assert await a.alerts.check() == {"offline": [], "back": [], "gone": []}
            assert await count_offline(a.pool, "aupus", 5) == 1
        assert await open_offline(conn) == [f"equipment_offline:{silent}"]

        # The leader changed: the new one reads the open rows and sends nothing again.
        async with node(dsn, receiver.url, "node-b") as b:
            assert await b.alerts.check() == {"offline": [], "back": [], "gone": []}
            assert b.notifier.stats.queued == 0

            await reading(conn, silent, 1)
            assert await b.alerts.check() == {"offline": [], "back": [silent], "gone": []}
            await b.drained()
            assert await count_offline(b.pool, "aupus", 5) == 0
        assert receiver.kinds() == [f"equipment_offline:{silent}", f"equipment_back:{silent}"]
        assert "RESOLVED" in receiver.bodies[1]["text"]
        assert await open_offline(conn) == []
        rows = await conn.fetch(
            "SELECT resolved_at, last_notified_at, instance_id FROM ha_alerts WHERE kind = $1",
            f"equipment_offline:{silent}",
        )
        assert len(rows) == 1 and rows[0]["resolved_at"] is not None
        assert rows[0]["last_notified_at"] is not None and rows[0]["instance_id"] == "node-a"
    finally:
        await conn.close()


async def test_storm_raises_one_grouped_alert(database_url: str, receiver: WebhookReceiver) -> None:
    """Eight equipment silent at once with EQUIPMENT_OFFLINE_STORM=3: one grouped
    notification (count and ids), eight open rows; their return: one grouped back."""
    conn = await connect_utc(database_url)
    try:
        await apply_migrations(conn)
        ids = await add_equipment(conn, *(f"storm{i}" for i in range(8)))
        for eid in ids:
            await reading(conn, eid, AFTER_S + 60)
        async with node(database_url, receiver.url, "node-a", storm=3) as a:
            changed = await a.alerts.check()
            assert sorted(changed["offline"]) == sorted(ids)
            await a.drained()
            (kind,) = receiver.kinds()
            assert kind.startswith("equipment_offline_storm:")
            assert "8 equipment went silent" in receiver.bodies[0]["text"]
            assert len(await open_offline(conn)) == 8
            assert await count_offline(a.pool, "aupus", 5) == 8
            stored = await conn.fetch(
                "SELECT metadata::text AS m FROM ha_alerts WHERE kind = $1", kind
            )
            assert len(stored) == 1 and '"count": 8' in stored[0]["m"]

            for eid in ids:
                await reading(conn, eid, 0)
            changed = await a.alerts.check()
            assert sorted(changed["back"]) == sorted(ids)
            await a.drained()
            assert len(receiver.kinds()) == 2
            assert receiver.kinds()[1].startswith("equipment_back_storm:")
            assert await open_offline(conn) == []
    finally:
        await conn.close()


async def test_disabled_equipment_is_resolved_without_a_notification(
    database_url: str, receiver: WebhookReceiver
) -> None:
    """An offline equipment disabled in the catalogue: its row is resolved ('gone'), no
    equipment_back is sent for it."""
    conn = await connect_utc(database_url)
    try:
        await apply_migrations(conn)
        (eid,) = await add_equipment(conn, "removed")
        await reading(conn, eid, AFTER_S * 3)
        async with node(database_url, receiver.url, "node-a") as a:
            assert (await a.alerts.check())["offline"] == [eid]
            await conn.execute("UPDATE equipamentos SET mqtt_habilitado = false WHERE id = $1", eid)
            assert await a.alerts.check() == {"offline": [], "back": [], "gone": [eid]}
            await a.drained()
        assert receiver.kinds() == [f"equipment_offline:{eid}"]
        assert await open_offline(conn) == []
    finally:
        await conn.close()


async def test_two_instances_checking_at_once_send_each_change_once(
    database_url: str, receiver: WebhookReceiver
) -> None:
    """Two instances evaluating at the same moment (a handover, or an operator's POST
    /health/alerts/check on the standby): each offline and each return is sent once,
    by whichever instance's insert or resolve changed the row."""
    conn = await connect_utc(database_url)
    try:
        await apply_migrations(conn)
        ids = await add_equipment(conn, *(f"race{i}" for i in range(4)))
        for eid in ids:
            await reading(conn, eid, AFTER_S * 2)
        async with (
            node(database_url, receiver.url, "node-a") as a,
            node(database_url, receiver.url, "node-b") as b,
        ):
            for _ in range(3):
                first, second = await asyncio.gather(a.alerts.check(), b.alerts.check())
                assert not set(first["offline"]) & set(second["offline"])
            await a.drained()
            await b.drained()
            assert sorted(receiver.kinds()) == sorted(f"equipment_offline:{e}" for e in ids)

            for eid in ids:
                await reading(conn, eid, 0)
            for _ in range(3):
                first, second = await asyncio.gather(a.alerts.check(), b.alerts.check())
                assert not set(first["back"]) & set(second["back"])
            await a.drained()
            await b.drained()
        backs = [k for k in receiver.kinds() if k.startswith("equipment_back:")]
        assert sorted(backs) == sorted(f"equipment_back:{e}" for e in ids)
        assert await open_offline(conn) == []
    finally:
        await conn.close()
