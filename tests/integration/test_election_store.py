"""Election and store against a real PostgreSQL, in-process (no MQTT).

These pin the database-side guarantees: one lock holder, epochs that only grow, the
fence that refuses a stale leader's flush, eviction of a silent leader, identity.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import asyncpg
import orjson
import pytest
from structlog.testing import capture_logs

from aupus_ha.config import Settings
from aupus_ha.database.queries import Queries
from aupus_ha.leadership.election import (
    Election,
    Identity,
    IdentityClash,
    RenewOutcome,
)
from aupus_ha.leadership.ha import HaLoop
from aupus_ha.pipeline.readings import Reading, Reject
from aupus_ha.pipeline.store import Fenced, Store
from tests.helpers import ha_settings, migrate_fresh, store_of

T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)


def _identity(s: Settings, mode: str = "production") -> Identity:
    return Identity(s.instance_id, s.cluster_name, str(uuid.uuid4()), "testhost", 1, "t", mode)


@pytest.fixture
async def migrated(database_url: str) -> str:
    return await migrate_fresh(database_url, "e1")


@pytest.fixture
async def elections(migrated: str) -> AsyncIterator[list[Election]]:
    made: list[Election] = []
    for name in ("a", "b"):
        s = ha_settings(migrated, name)
        e = Election(s, _identity(s), Queries())
        await e.open()
        await e.register("standby")
        made.append(e)
    yield made
    for e in made:
        await e.close()


@pytest.fixture
async def store(migrated: str) -> AsyncIterator[Store]:
    async with store_of(migrated, "writer", "aupus-ha/test-store") as writer:
        yield writer


def _reading(i: int, dados: bytes = b'{"power": 1}') -> Reading:
    return Reading("e1", T0 + timedelta(seconds=i), dados)


async def test_only_one_holder_and_epochs_grow(elections: list[Election]) -> None:
    """The lock has one holder; each new term bumps the epoch and records a handover."""
    a, b = elections
    term = await a.try_acquire()
    assert term is not None and term.epoch == 1 and term.reason == "initial"
    assert await b.try_acquire() is None
    assert await a.renew(1, {}, timeout=2) is RenewOutcome.HELD
    await a.release(1, "stopped", stopping=True)
    term_b = await b.try_acquire()
    assert term_b is not None and term_b.epoch == 2
    assert term_b.previous_leader == "a" and term_b.reason == "released"
    assert term_b.gap_ms is not None and term_b.gap_ms < 5000


async def test_renew_reports_lost_as_a_value(elections: list[Election]) -> None:
    """A leader whose epoch moved on learns it from renew(), not from an exception."""
    a, b = elections
    assert await a.try_acquire() is not None
    await a.close()  # the session ends: the lock is freed
    term_b = await b.try_acquire()
    assert term_b is not None and term_b.reason == "lost"
    await a.open()
    await a.register("standby")
    assert await a.renew(1, {}, timeout=2) is RenewOutcome.EPOCH_MOVED


async def test_silent_leader_is_evicted(elections: list[Election], migrated: str) -> None:
    """A lock holder whose heartbeat is older than LEASE_TTL_S has its sessions ended."""
    a, b = elections
    assert await a.try_acquire() is not None
    assert await b.evict_silent_leader() is None  # fresh heartbeat: left alone
    conn = await asyncpg.connect(migrated)
    await conn.execute(
        "UPDATE ha_instances SET heartbeat_at = now() - interval '10 s' WHERE instance_id = 'a'"
    )
    await conn.close()
    eviction = await b.evict_silent_leader()
    assert eviction is not None and eviction.instance_id == "a" and eviction.terminated >= 1
    term = await b.try_acquire()
    assert term is not None and term.reason == "evicted" and term.epoch == 2


async def test_stale_epoch_flush_is_fenced(store: Store, elections: list[Election]) -> None:
    """A flush under an old epoch raises Fenced and commits nothing."""
    a, b = elections
    assert await a.try_acquire() is not None
    result = await store.flush([_reading(1)], [], epoch=1)
    assert result.rows == 1
    await a.release(1, "standby", stopping=False)
    assert await b.try_acquire() is not None
    with pytest.raises(Fenced) as fenced:
        await store.flush([_reading(2)], [], epoch=1)
    assert fenced.value.current == 2
    assert await store.committed_readings([_reading(1), _reading(2)]) == [_reading(1).key]


async def test_duplicates_are_skipped_not_errors(store: Store, elections: list[Election]) -> None:
    """Writing the same readings twice stores them once and counts duplicates."""
    assert await elections[0].try_acquire() is not None
    batch = [_reading(i) for i in range(5)]
    first = await store.flush(batch, [], epoch=1)
    second = await store.flush([*batch, _reading(5)], [], epoch=1)
    assert (first.rows, first.duplicates) == (5, 0)
    assert (second.rows, second.duplicates) == (1, 5)


async def test_poison_row_is_isolated_into_rejects(
    store: Store, elections: list[Election], migrated: str
) -> None:
    """A row PostgreSQL refuses (NUL in jsonb) becomes a reject; its batch-mates are stored."""
    assert await elections[0].try_acquire() is not None
    poison = _reading(3, dados=b'{"x": "\\u0000"}')
    batch = [_reading(i) for i in range(3)] + [poison] + [_reading(i) for i in range(4, 8)]
    rej = Reject("t/e1", b"not json", "invalid_json: x", T0)
    result = await store.flush(batch, [rej], epoch=1)
    assert (result.rows, result.refused, result.rejects) == (7, 1, 2)
    conn = await asyncpg.connect(migrated)
    reasons = [r["reason"] for r in await conn.fetch("SELECT reason FROM ingest_rejects")]
    await conn.close()
    assert sorted(r.split(":")[0] for r in reasons) == ["invalid_json", "store_refused"]


async def test_identity_clash_with_a_live_process(migrated: str) -> None:
    """A second process registering a live INSTANCE_ID is refused with a clear message."""
    s = ha_settings(migrated, "same")
    first = Election(s, _identity(s), Queries())
    await first.open()
    await first.register("standby")
    second = Election(s, _identity(s), Queries())
    await second.open()
    with pytest.raises(IdentityClash, match="already in use"):
        await second.register("standby")
    await first.close()  # the first process dies: its row is taken over at once
    await second.register("standby")
    await second.close()


async def test_ha_loop_logs_leader_events(migrated: str) -> None:
    """The HA loop emits leader.acquired with epoch/previous_leader/gap_ms and
    leader.released on a graceful end."""
    s = ha_settings(migrated, "loop").with_overrides(mqtt_mode="production")
    loop = HaLoop(s, Election(s, _identity(s), Queries()), dict)
    with capture_logs() as logs:
        await loop.start()
        await loop._tick()
        assert loop.is_leader() and loop.epoch == 1
        await loop.release()
    acquired = [e for e in logs if e["event"] == "leader.acquired"]
    assert acquired == [
        {
            "event": "leader.acquired",
            "epoch": 1,
            "previous_leader": None,
            "gap_ms": None,
            "reason": "initial",
            "log_level": "info",
        }
    ]
    assert any(e["event"] == "leader.released" and e["epoch"] == 1 for e in logs)


async def test_stats_reach_the_cluster_view(store: Store, elections: list[Election]) -> None:
    """Heartbeat stats are visible to every instance through the cluster view."""
    await elections[0].heartbeat("standby", {"pending": 42})
    view = await store.cluster_view()
    instances = {i["instance_id"]: i for i in view["instances"]}  # type: ignore[union-attr]
    assert instances["a"]["stats"] == {"pending": 42}
    assert orjson.dumps(view)


async def test_leader_that_lost_its_session_wins_again_and_stays(migrated: str) -> None:
    """A leader whose lock session is killed re-acquires and then holds steady (regression:
    it once closed its own fresh lock session right after winning, and flapped)."""
    s = ha_settings(migrated, "solo").with_overrides(mqtt_mode="production")
    loop = HaLoop(s, Election(s, _identity(s), Queries()), dict)
    await loop.start()
    runner = asyncio.create_task(loop.run())
    try:
        await _until(lambda: loop.epoch == 1)
        conn = await asyncpg.connect(migrated)
        await conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name LIKE 'aupus-ha/solo/%'"
        )
        await conn.close()
        await _until(lambda: loop.is_leader() and (loop.epoch or 0) >= 2)
        epoch = loop.epoch
        for _ in range(15):
            await asyncio.sleep(0.1)
            assert loop.is_leader() and loop.epoch == epoch
    finally:
        loop.stop()
        await runner
        await loop.release()


async def _until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _sample(equip: str, at: datetime, watts: float) -> Reading:
    minute = at.replace(second=0, microsecond=0)
    payload = {"timestamp": at.timestamp(), "power": {"active_total": watts}}
    return Reading(
        equip,
        minute,
        orjson.dumps(payload),
        timestamp_fim=minute + timedelta(minutes=1),
        sample_at=at,
    )


async def test_rollup_rows_merge_late_samples_deterministically(
    store: Store, elections: list[Election], migrated: str
) -> None:
    """Samples of one minute written in two flushes (the second late) end as one row equal
    to writing them together; a standby's probe then finds each sample."""
    assert await elections[0].try_acquire() is not None
    at = T0 + timedelta(minutes=5)
    first = [_sample("e1", at + timedelta(seconds=s), w) for s, w in ((0, 60_000), (20, 30_000))]
    late = [_sample("e1", at + timedelta(seconds=40), 30_000)]
    r1 = await store.flush(first, [], epoch=1)
    r2 = await store.flush([*late, first[0]], [], epoch=1)
    assert (r1.rows, r1.merged, r2.rows, r2.merged) == (1, 0, 0, 1)
    conn = await asyncpg.connect(migrated)
    row = await conn.fetchrow(
        "SELECT num_leituras, potencia_ativa_kw, energia_kwh, dados::text "
        "AS dados FROM equipamentos_dados WHERE timestamp_dados = $1",
        at,
    )
    await conn.execute("DELETE FROM equipamentos_dados")
    await conn.close()
    assert (row["num_leituras"], row["potencia_ativa_kw"]) == (3, 40.0)
    assert abs(row["energia_kwh"] - 40.0 / 60) < 1e-9
    together = await store.flush([*late, *first], [], epoch=1)
    assert together.rows == 1
    conn = await asyncpg.connect(migrated)
    again = await conn.fetchval(
        "SELECT dados::text FROM equipamentos_dados WHERE timestamp_dados = $1", at
    )
    await conn.close()
    assert orjson.loads(again) == orjson.loads(row["dados"])
    other = _sample("e1", at + timedelta(seconds=50), 1.0)
    found = await store.committed_readings([*first, *late, other])
    assert sorted(found) == sorted(r.key for r in [*first, *late])
