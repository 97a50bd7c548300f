"""Rejects are bounded: a prefix plus the whole message's hash and size; a token bucket per
topic; the retention sweep deletes in batches, only while leading, and survives the
database (issue 16, "Rejects can fill the database")."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.intake import DurableIntake
from aupus_ha.pipeline.readings import Decoded, Reject
from aupus_ha.pipeline.rejects import (
    RejectLimiter,
    RejectPolicy,
    RejectRetention,
    bounded,
    payload_size,
)
from aupus_ha.pipeline.spool import Spool

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@given(payload=st.binary(max_size=3000), prefix=st.integers(0, 2000))
def test_a_bounded_reject_keeps_a_prefix_and_the_whole_messages_identity(
    payload: bytes, prefix: int
) -> None:
    whole = Reject("t/1", payload, "invalid_json: x", T0)
    kept = bounded(whole, prefix)
    assert kept.payload == payload[:prefix]
    assert kept.payload_sha256 == hashlib.sha256(payload).hexdigest() == whole.payload_sha256
    assert kept.key == whole.key  # the same row whichever instance writes it
    assert payload_size(kept) == len(payload)


def test_a_too_large_message_keeps_its_whole_size() -> None:
    """The decoder's own cut (MAX_PAYLOAD_BYTES) records the size; a second cut keeps it."""
    payload = b"x" * 10_000
    (reject,) = Decoder(max_payload_bytes=1000).decode("t", payload, [], T0).rejects
    assert len(reject.payload) == 1000 and reject.payload_bytes == 10_000
    kept = bounded(reject, 100)
    assert len(kept.payload) == 100 and payload_size(kept) == 10_000
    assert kept.payload_sha256 == hashlib.sha256(payload).hexdigest()


def test_the_bucket_admits_a_burst_then_the_rate_per_topic() -> None:
    clock = Clock()
    limiter = RejectLimiter(rate_per_s=2.0, burst=5, clock=clock)
    assert [limiter.admit("a") for _ in range(7)] == [True] * 5 + [False] * 2
    assert limiter.admit("b")  # another topic has its own bucket
    clock.now += 1.0  # two tokens back
    assert [limiter.admit("a") for _ in range(3)] == [True, True, False]
    clock.now += 100.0  # refilled to the burst, not beyond
    assert sum(limiter.admit("a") for _ in range(10)) == 5
    assert limiter.suppressed == 2 + 1 + 5


def test_an_episode_is_logged_once_when_it_starts_and_once_when_it_ends() -> None:
    clock = Clock()
    limiter = RejectLimiter(rate_per_s=1.0, burst=1, clock=clock)
    with capture_logs() as logs:
        for _ in range(50):
            limiter.admit("t")
        clock.now += 1.0
        limiter.admit("t")
    events = [(e["event"], e.get("suppressed")) for e in logs]
    assert events == [("rejects.rate_limited", None), ("rejects.rate_limit_ended", 49)]


def test_many_topics_do_not_grow_the_buckets_without_bound() -> None:
    clock = Clock()
    limiter = RejectLimiter(rate_per_s=1.0, burst=2, clock=clock, max_topics=100)
    for n in range(1000):
        limiter.admit(f"t/{n}")
    assert limiter.tracked_topics <= 101  # the overflow bucket is shared beyond the cap
    clock.now += 10  # every bucket refilled: forgotten when room is needed
    limiter.admit("new")
    assert limiter.tracked_topics <= 101


async def test_rate_limited_rejects_are_neither_spooled_nor_buffered(tmp_path: Path) -> None:
    """Beyond the bucket a reject is counted only: no spool record, no buffer entry, and
    the message needs no fsync before its PUBACK."""
    spool = Spool(tmp_path / "s" / "c-i", max_bytes=1 << 30)
    buffer = PendingBuffer(max_items=1000, on_settled=spool.settle)
    clock = Clock()
    policy = RejectPolicy(RejectLimiter(1.0, 3, clock=clock), prefix_bytes=16)
    intake = DurableIntake(buffer, spool, policy)
    intake.open(None)
    try:
        answers = [
            intake.accept(Decoded(rejects=[Reject("t", b"bad-%d" % n + b"y" * 100, "r", T0)]))
            for n in range(10)
        ]
        assert sum(a is not None for a in answers) == 3
        assert answers[3:] == [None] * 7  # acknowledged at once, counted only
        assert policy.limiter.suppressed == 7
    finally:
        await spool.close()


class FakeRejectsStore:
    """Counts deletions; fails when told to (the sweep must survive it)."""

    def __init__(self, rows: int, fail_after: int | None = None) -> None:
        self.rows = rows
        self.calls = 0
        self.fail_after = fail_after

    async def delete_old_rejects(self, older_than_s: float, limit: int) -> int:
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise DatabaseUnavailable("connection refused")
        n = min(limit, self.rows)
        self.rows -= n
        return n


async def test_the_sweep_deletes_in_batches_only_while_leading() -> None:
    store = FakeRejectsStore(rows=25)
    assert await RejectRetention(store, lambda: True, 86_400, batch=10).sweep() == 25
    assert store.calls == 3
    idle = FakeRejectsStore(rows=25)
    assert await RejectRetention(idle, lambda: False, 86_400, batch=10).sweep() == 0
    assert idle.calls == 0


async def test_the_sweep_survives_the_database_going_away() -> None:
    store = FakeRejectsStore(rows=100, fail_after=1)
    with capture_logs() as logs:
        deleted = await RejectRetention(store, lambda: True, 60, batch=10).sweep()
    assert deleted == 10
    assert [e["event"] for e in logs] == ["rejects.retention_failed", "rejects.retention"]
