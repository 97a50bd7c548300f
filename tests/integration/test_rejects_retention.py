"""Rejects on a real database: the stored prefix, hash and size; retention by age, in
batches, through the created_at index; the previous version's insert still works after
migration 005 (rolling upgrade)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.bench.health_queries import INDEX_NODES, plan_scans
from aupus_ha.pipeline.readings import Reject
from aupus_ha.pipeline.rejects import RejectRetention, bounded
from aupus_ha.pipeline.store import Store

NOW = datetime.now(UTC)
DAY_S = 86_400.0
# insert_reject as the previous version (commit 8769d26) runs it: no payload_bytes.
PREVIOUS_INSERT = """
INSERT INTO ingest_rejects
    (topic, payload, payload_sha256, reason, received_at, instance_id, ha_epoch)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (topic, payload_sha256) DO NOTHING
"""


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
    finally:
        await conn.close()
    created = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    assert created is not None
    try:
        yield created
    finally:
        await created.close()


def store_on(pool: asyncpg.Pool, prefix: int = 4096) -> Store:
    store = Store(pool, Queries(), cluster_name="c", instance_id="node-a")
    store.reject_prefix_bytes = prefix
    return store


async def insert(store: Store, pool: asyncpg.Pool, rejects: list[Reject]) -> None:
    async with pool.acquire() as conn:
        await store._insert_rejects(conn, rejects, 1)


async def test_a_reject_stores_a_prefix_with_the_whole_messages_hash_and_size(
    pool: asyncpg.Pool,
) -> None:
    payload = b"{" + b"x" * 300_000
    store = store_on(pool, prefix=4096)
    # One bounded at intake, one the store bounds (a row the database refused).
    await insert(store, pool, [bounded(Reject("t/1", payload, "r", NOW), 4096)])
    await insert(store, pool, [Reject("t/2", payload, "store_refused: x", NOW)])
    rows = await pool.fetch(
        "SELECT topic, octet_length(payload) AS kept, payload_sha256, payload_bytes"
        " FROM ingest_rejects ORDER BY topic"
    )
    digest = hashlib.sha256(payload).hexdigest()
    assert [tuple(r) for r in rows] == [
        ("t/1", 4096, digest, len(payload)),
        ("t/2", 4096, digest, len(payload)),
    ]


async def test_retention_deletes_old_rejects_in_batches_and_keeps_the_rest(
    pool: asyncpg.Pool,
) -> None:
    store = store_on(pool)
    await insert(store, pool, [Reject("t", b"m-%d" % n, "r", NOW) for n in range(30)])
    await pool.execute(
        "UPDATE ingest_rejects SET created_at = now() - interval '40 days'"
        " WHERE id IN (SELECT id FROM ingest_rejects ORDER BY id LIMIT 23)"
    )
    retention = RejectRetention(store, lambda: True, 30 * DAY_S, batch=5)
    assert await retention.sweep() == 23
    left = await pool.fetchval("SELECT count(*) FROM ingest_rejects")
    old = await pool.fetchval(
        "SELECT count(*) FROM ingest_rejects WHERE created_at < now() - interval '30 days'"
    )
    assert (left, old) == (7, 0)
    assert await retention.sweep() == 0


async def test_a_standby_deletes_nothing(pool: asyncpg.Pool) -> None:
    store = store_on(pool)
    await insert(store, pool, [Reject("t", b"old", "r", NOW)])
    await pool.execute("UPDATE ingest_rejects SET created_at = now() - interval '400 days'")
    assert await RejectRetention(store, lambda: False, DAY_S).sweep() == 0
    assert await pool.fetchval("SELECT count(*) FROM ingest_rejects") == 1


async def test_the_retention_delete_searches_the_created_at_index(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO ingest_rejects (topic, payload, payload_sha256, reason, received_at,"
            " instance_id, created_at)"
            " SELECT 't', ''::bytea, md5(n::text), 'r', now(), 'i',"
            " now() - make_interval(hours => n) FROM generate_series(1, 2000) AS n"
        )
        await conn.execute("ANALYZE ingest_rejects")
        await conn.execute("SET enable_seqscan = off")
        raw = await conn.fetchval(
            "EXPLAIN (FORMAT JSON) " + Queries()["delete_old_rejects"], 30 * DAY_S, 5000
        )
    plan: dict[str, Any] = json.loads(raw)[0]["Plan"]
    reads = [s for s in plan_scans(plan) if s.relation == "ingest_rejects"]
    found = [s for s in reads if s.node in INDEX_NODES]
    assert found and all(s.seek and s.index_name == "idx_ingest_rejects_created_at" for s in found)
    others = {s.node for s in reads if s not in found}
    assert others <= {"ModifyTable", "Tid Scan", "LockRows"}, json.dumps(plan, indent=1)


async def test_the_previous_versions_insert_still_works_after_migration_005(
    pool: asyncpg.Pool,
) -> None:
    """Rolling upgrade: an instance of the previous commit writes rejects without the
    new column; the row reads as a whole payload (payload_bytes NULL)."""
    digest = hashlib.sha256(b"old").hexdigest()
    await pool.execute(PREVIOUS_INSERT, "t", b"old", digest, "r", NOW, "old-node", 1)
    row = await pool.fetchrow("SELECT payload, payload_bytes FROM ingest_rejects")
    assert row is not None and (bytes(row["payload"]), row["payload_bytes"]) == (b"old", None)
