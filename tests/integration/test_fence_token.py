"""The flush fence compares the epoch AND the process that leads it (issue 17, defect 12).

After a PostgreSQL failover to an asynchronous replica the epoch bump of the last
election can be lost: the next election then hands out the same epoch number again, to
another process. Two processes believing they lead one epoch must not both write: the
fence (and the leader's renewal) also compare `ha_leadership.leader_token`.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from aupus_ha.database.connection import create_pool
from aupus_ha.database.queries import Queries
from aupus_ha.leadership.election import Election, Identity, RenewOutcome, Term
from aupus_ha.leadership.ha import HaLoop
from aupus_ha.pipeline.readings import Reading
from aupus_ha.pipeline.store import Fenced, Store
from tests.helpers import ha_settings, migrate_fresh

T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)


def _reading(i: int) -> Reading:
    return Reading("e1", T0 + timedelta(seconds=i), b'{"power": 1}')


@pytest.fixture
async def migrated(database_url: str) -> str:
    return await migrate_fresh(database_url, "e1")


class Process:
    """What one aupus-ha process holds: its identity, its election, its store."""

    def __init__(self, dsn: str, name: str) -> None:
        self.settings = ha_settings(dsn, name)
        self.token = str(uuid.uuid4())
        identity = Identity(name, self.settings.cluster_name, self.token, "h", 1, "t", "production")
        self.election = Election(self.settings, identity, Queries())
        self.pool: asyncpg.Pool | None = None
        self.store: Store | None = None

    async def start(self, *, fence_token: bool = True) -> None:
        await self.election.open()
        await self.election.register("standby")
        self.pool = await create_pool(self.settings, self.election._identity.app_name)
        self.store = Store(
            self.pool,
            Queries(),
            cluster_name=self.settings.cluster_name,
            instance_id=self.settings.instance_id,
            process_token=self.token if fence_token else None,
        )

    async def close(self) -> None:
        await self.election.close()
        if self.pool is not None:
            await self.pool.close()


@pytest.fixture
async def pair(migrated: str) -> AsyncIterator[tuple[Process, Process]]:
    a, b = Process(migrated, "a"), Process(migrated, "b")
    await a.start()
    await b.start()
    yield a, b
    await a.close()
    await b.close()


async def _lose_the_last_bump(dsn: str, a: Process) -> None:
    """The old primary's lock is gone and its last epoch bump never reached the replica."""
    conn = a.election._require()
    await conn.fetchval("SELECT pg_advisory_unlock_all()")
    admin = await asyncpg.connect(dsn)
    try:
        await admin.execute("UPDATE ha_leadership SET epoch = epoch - 1")
    finally:
        await admin.close()


async def test_same_epoch_other_token_is_fenced(
    pair: tuple[Process, Process], migrated: str
) -> None:
    """Process a leads epoch 1; the bump is lost and b is elected with epoch 1 too: a's
    next flush is fenced and commits nothing, b's commits."""
    a, b = pair
    assert a.store is not None and b.store is not None
    term_a = await a.election.try_acquire()
    assert term_a is not None and term_a.epoch == 1
    assert (await a.store.flush([_reading(1)], [], epoch=1)).rows == 1
    await _lose_the_last_bump(migrated, a)
    term_b = await b.election.try_acquire()
    assert term_b is not None and term_b.epoch == 1  # the same epoch, handed out twice
    with pytest.raises(Fenced):
        await a.store.flush([_reading(2)], [], epoch=1)
    assert (await b.store.flush([_reading(3)], [], epoch=1)).rows == 1
    stored = await a.store.committed_readings([_reading(i) for i in (1, 2, 3)])
    assert sorted(stored) == sorted([_reading(1).key, _reading(3).key])
    # The stale leader's own heartbeat tells it too, without waiting for a flush.
    assert await a.election.renew(1, {}, timeout=2) is not RenewOutcome.HELD
    assert await b.election.renew(1, {}, timeout=2) is RenewOutcome.HELD


async def test_epoch_only_fence_still_works_for_the_previous_version(
    migrated: str,
) -> None:
    """A writer without a token (an instance of the previous commit fences on the epoch
    alone) still flushes under its epoch and is still fenced once the epoch moves."""
    a, b = Process(migrated, "a"), Process(migrated, "b")
    await a.start(fence_token=False)
    await b.start()
    try:
        assert a.store is not None
        assert await a.election.try_acquire() is not None
        assert (await a.store.flush([_reading(1)], [], epoch=1)).rows == 1
        await a.election.release(1, "standby", stopping=False)
        assert await b.election.try_acquire() is not None
        with pytest.raises(Fenced):
            await a.store.flush([_reading(2)], [], epoch=1)
    finally:
        await a.close()
        await b.close()


def test_ha_loop_demotes_on_a_fence_by_another_process(migrated: str) -> None:
    """A flush fenced with the same epoch number (another process leads it) demotes the
    loop and says why: leader.fenced reason=other_process."""
    p = Process(migrated, "a")
    settings = p.settings.with_overrides(mqtt_mode="production")
    loop = HaLoop(settings, p.election, dict)
    loop.term = Term(1, None, "initial", None, T0)
    loop.role = "leader"
    with capture_logs() as logs:
        loop.fenced(1, 1)
    assert loop.role == "standby" and not loop.is_leader()
    fenced = [e for e in logs if e["event"] == "leader.fenced"]
    assert [(e["epoch"], e["current_epoch"], e["reason"]) for e in fenced] == [
        (1, 1, "other_process")
    ]
