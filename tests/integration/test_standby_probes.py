"""A standby's probes and expiry against a real PostgreSQL (issue 17, defects 2 and 4).

In-process: a `Store` on a fresh database, an `Election` to write under an epoch and to
publish heartbeat stats, and `StandbyTrim` over a real `PendingBuffer`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest
from structlog.testing import capture_logs

from aupus_ha.database.queries import Queries
from aupus_ha.leadership.election import Election, Identity
from aupus_ha.pipeline.buffer import CONTENT_MATCH_WINDOW_S, PendingBuffer
from aupus_ha.pipeline.flusher import PROBE_BATCH, StandbyTrim
from aupus_ha.pipeline.readings import Decoded, Reading
from aupus_ha.pipeline.store import LeaderProgress, Store
from tests.helpers import ha_settings, migrate_fresh, store_of

T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)


@pytest.fixture
async def migrated(database_url: str) -> str:
    return await migrate_fresh(database_url)


@pytest.fixture
async def leader(migrated: str) -> AsyncIterator[Election]:
    s = ha_settings(migrated, "leader")
    identity = Identity(s.instance_id, s.cluster_name, str(uuid.uuid4()), "h", 1, "t", "production")
    election = Election(s, identity, Queries())
    await election.open()
    await election.register("standby")
    assert await election.try_acquire() is not None
    yield election
    await election.close()


@pytest.fixture
async def store(migrated: str) -> AsyncIterator[Store]:
    async with store_of(migrated, "standby", "aupus-ha/test-standby") as standby:
        yield standby


def _reading(i: int, *, matchable: bool = True, dados: bytes | None = None) -> Reading:
    body = dados if dados is not None else b'{"power": %d}' % i
    return Reading("e1", T0 + timedelta(seconds=i), body, matchable=matchable)


async def test_content_probe_matches_within_the_window(store: Store, leader: Election) -> None:
    """A reading timed by arrival is found under the leader's own arrival time when the
    stored row has the same equipment and equal JSON (spacing and key order aside),
    within CONTENT_MATCH_WINDOW_S; not beyond it, not with other content."""
    stored = Reading("e1", T0, b'{"a": 1, "b": [1, 2]}', matchable=False)
    await store.flush([stored], [], epoch=1)
    near = Reading("e1", T0 + timedelta(seconds=0.4), b'{"b":[1,2],"a":1}', matchable=False)
    far_at = T0 + timedelta(seconds=CONTENT_MATCH_WINDOW_S + 1)
    far = Reading("e1", far_at, b'{"a": 1, "b": [1, 2]}', matchable=False)
    other = Reading("e1", T0 + timedelta(seconds=1), b'{"a": 2}', matchable=False)
    found = await store.committed_by_content([near, far, other])
    assert found == [near.key]


async def test_leader_progress_is_read_on_the_database_clock(
    store: Store, leader: Election
) -> None:
    """What the leader's heartbeat published comes back as ages (heartbeat age added);
    a leader of the previous version (no fields) gives no lag."""
    assert await store.leader_progress() == LeaderProgress(None, None)
    await leader.renew(1, {"backlog_age_s": 5.0, "mqtt_connected_for_s": 100.0}, timeout=5)
    progress = await store.leader_progress()
    assert progress is not None and progress.lag_s is not None
    assert progress.connected_for_s is not None
    assert 5.0 <= progress.lag_s < 7.0 and 100.0 <= progress.connected_for_s < 102.0
    await leader.renew(1, {"backlog_age_s": None, "mqtt_connected_for_s": 100.0}, timeout=5)
    progress = await store.leader_progress()
    assert progress is not None and progress.lag_s is None


async def test_trimming_gets_past_a_front_that_cannot_be_confirmed(
    store: Store, leader: Election
) -> None:
    """More than PROBE_BATCH entries that the leader never stored sit at the front; the
    readings behind them that it did store are confirmed within a few ticks, and with
    no progress published nothing is expired."""
    buffer = PendingBuffer(100_000)
    never = [_reading(i) for i in range(PROBE_BATCH + 1000)]
    written = [_reading(100_000 + i) for i in range(200)]
    buffer.add(Decoded(never), 0.0)
    buffer.add(Decoded(written), 0.0)
    await store.flush(written, [], epoch=1)
    trim = StandbyTrim(buffer, store, horizon_s=1.0)
    with capture_logs() as logs:
        for _ in range(3):
            await trim.tick(min_age_s=0.0)
    assert buffer.readings_pending == len(never)
    assert buffer.stats.confirmed == len(written) and buffer.stats.expired == 0
    assert {"event": "standby.expiry_paused", "reason": "no_progress_published"} in [
        {k: e.get(k) for k in ("event", "reason")} for e in logs
    ]


async def test_expiry_follows_the_leader_watermark(store: Store, leader: Election) -> None:
    """An entry is expired only once the leader reports having processed that far (its
    lag plus the margin) and its horizon has passed; a leader whose backlog is older
    than the entry keeps it, however old the entry is."""
    buffer = PendingBuffer(1000)
    now = time.monotonic()
    buffer.add(Decoded([_reading(1)]), now - 30.0)  # never stored: refused, say
    buffer.add(Decoded([_reading(2)]), now - 0.5)
    trim = StandbyTrim(buffer, store, horizon_s=2.0)  # margin 2 s, horizons 2 s
    # The leader still holds a 40-second-old backlog: nothing may go.
    await leader.renew(1, {"backlog_age_s": 40.0, "mqtt_connected_for_s": 100.0}, timeout=5)
    await trim.tick(min_age_s=0.0)
    assert buffer.readings_pending == 2
    # The leader is caught up: the 30-second-old entry goes, the young one stays.
    await leader.renew(1, {"backlog_age_s": 0.1, "mqtt_connected_for_s": 100.0}, timeout=5)
    with capture_logs() as logs:
        await trim.tick(min_age_s=0.0)
    assert buffer.readings_pending == 1 and buffer.stats.expired == 1
    assert any(e["event"] == "standby.unconfirmed_dropped" for e in logs)
    # A leader that just reconnected to the broker may still be receiving its queue.
    buffer.add(Decoded([_reading(3)]), now - 30.0)
    await leader.renew(1, {"backlog_age_s": 0.1, "mqtt_connected_for_s": 0.5}, timeout=5)
    await trim.tick(min_age_s=0.0)
    assert buffer.readings_pending == 2


async def test_a_probe_the_database_refuses_does_not_stop_the_standby(
    store: Store, leader: Election, migrated: str
) -> None:
    """A probe refused for something other than the database's state (here the table is
    missing) is logged and skipped; the next tick confirms once it works again."""
    buffer = PendingBuffer(1000)
    written = [_reading(i) for i in range(5)]
    await store.flush(written, [], epoch=1)
    buffer.add(Decoded(written), 0.0)
    trim = StandbyTrim(buffer, store, horizon_s=1.0)
    conn = await asyncpg.connect(migrated)
    try:
        await conn.execute("ALTER TABLE equipamentos_dados RENAME TO moved_away")
        with capture_logs() as logs:
            await trim.tick(min_age_s=0.0)  # must not raise
        assert buffer.readings_pending == 5
        assert [e for e in logs if e["event"] == "standby.probe_failed"]
        await conn.execute("ALTER TABLE moved_away RENAME TO equipamentos_dados")
    finally:
        await conn.close()
    await trim.tick(min_age_s=0.0)
    assert buffer.readings_pending == 0
