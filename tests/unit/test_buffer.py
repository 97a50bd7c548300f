"""The pending buffer: dedup by natural key, order, trimming, bounds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aupus_ha.pipeline.buffer import CONTENT_MATCH_WINDOW_S, CONTENT_MEMORY_MAX, PendingBuffer
from aupus_ha.pipeline.intake import DurableIntake
from aupus_ha.pipeline.readings import Decoded, Reading, Reject
from aupus_ha.pipeline.rollup import BUCKET, bucket_start
from aupus_ha.pipeline.spool import Spool

T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)


def reading(i: int, *, matchable: bool = True, equip: str = "e1") -> Reading:
    return Reading(equip, T0 + timedelta(seconds=i), b"{}", matchable=matchable)


def test_same_key_is_kept_once() -> None:
    """A redelivered message (same natural key) does not become a second pending row."""
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1), reading(1), reading(2)]), 0.0)
    assert buf.readings_pending == 2 and buf.stats.duplicates == 1


def test_oldest_first_and_commit_removes() -> None:
    """Batches are the oldest entries; committing removes exactly them."""
    buf = PendingBuffer(100)
    for i in range(10):
        buf.add(Decoded([reading(i)]), float(i))
    batch, _ = buf.oldest(3)
    assert [r.timestamp_dados.second for r in batch] == [0, 1, 2]
    buf.committed(batch, [])
    assert buf.readings_pending == 7 and buf.stats.committed == 3


def test_older_than_is_a_prefix() -> None:
    """A standby probes only entries older than the cutoff."""
    buf = PendingBuffer(100)
    for i in range(10):
        buf.add(Decoded([reading(i)]), float(i))
    assert len(buf.readings_older_than(4.0, 100)) == 5


def test_confirmed_and_expiry() -> None:
    """Confirmed keys go; unmatchable ones expire after the horizon; others stay."""
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1), reading(2, matchable=False)]), 0.0)
    buf.add(Decoded([reading(3)]), 10.0)
    buf.confirmed([reading(1).key], [])
    assert buf.readings_pending == 2
    assert buf.expire_unmatchable(5.0) == 1
    assert buf.readings_pending == 1
    assert buf.expire_unconfirmed(20.0) == 1 and buf.readings_pending == 0


def test_full_buffer_blocks_intake_until_space() -> None:
    """At the bound the space event clears (intake waits, PUBACK is delayed)."""
    buf = PendingBuffer(3)
    buf.add(Decoded([reading(i) for i in range(3)]), 0.0)
    assert not buf._space.is_set()
    batch, _ = buf.oldest(1)
    buf.committed(batch, [])
    assert buf._space.is_set()


def test_rejects_keyed_by_topic_and_payload() -> None:
    """The same bad payload on the same topic is one pending reject."""
    buf = PendingBuffer(100)
    rej = Reject("t", b"x", "invalid_json", T0)
    buf.add(Decoded(rejects=[rej, Reject("t", b"x", "invalid_json", T0 + timedelta(1))]), 0.0)
    assert buf.rejects_pending == 1


# --- rollup samples kept apart (issue 17, defect 3) ----------------------------------


def sample(at: datetime, equip: str = "inv1", n: int = 0) -> Reading:
    minute = bucket_start(at)
    return Reading(
        equip,
        minute,
        b'{"power":{"active_total":%d}}' % n,
        timestamp_fim=minute + BUCKET,
        sample_at=at,
    )


def test_open_minute_samples_wait_and_closed_ones_come_first() -> None:
    """A sample of an open minute is not in a batch; once released it is, ahead of the
    plain readings that arrived after it."""
    now = datetime.now(UTC)
    buf = PendingBuffer(100)
    buf.add(Decoded([sample(now)]), 0.0)
    buf.add(Decoded([reading(1)]), 1.0)
    batch, _ = buf.oldest(10, closed_before=now - timedelta(minutes=5))
    assert [r.sample_at for r in batch] == [None]
    batch, _ = buf.oldest(10, closed_before=now + timedelta(minutes=2))
    assert [r.sample_at for r in batch] == [now, None]
    buf.committed(batch, [])
    assert len(buf) == 0


def test_a_future_dated_sample_is_released_one_bucket_after_arrival() -> None:
    """A sample dated 10 minutes ahead (device clock wrong, within the parser's bound)
    is written about a minute after it arrived, not when its minute closes: it cannot
    hold its spool segment for longer than an ordinary sample."""
    ahead = datetime.now(UTC) + timedelta(minutes=10)
    buf = PendingBuffer(100)
    buf.add(Decoded([sample(ahead)]), 0.0)
    assert buf.oldest(10, closed_before=datetime.now(UTC))[0] == []
    later = datetime.now(UTC) + BUCKET + timedelta(seconds=1)
    assert [r.sample_at for r in buf.oldest(10, closed_before=later)[0]] == [ahead]


def test_batches_cost_o_batch_with_many_open_minute_samples() -> None:
    """200,000 samples of open minutes: asking for a batch (what every message used to
    trigger) does not scan them all."""
    now = datetime.now(UTC)
    buf = PendingBuffer(300_000)
    for i in range(200_000):
        buf.add(Decoded([sample(now + timedelta(microseconds=i), equip=f"i{i % 50}")]), 0.0)
    buf.add(Decoded([reading(1)]), 1.0)
    closed = now - timedelta(minutes=1)
    started = time.perf_counter()
    for _ in range(200):
        batch, _ = buf.oldest(5000, closed_before=closed)
        assert len(batch) == 1 and buf.has_ready(closed)
    per_call_ms = (time.perf_counter() - started) / 200 * 1000
    assert per_call_ms < 2.0, f"{per_call_ms:.2f} ms per batch"


def test_confirmed_samples_do_not_grow_the_release_heap() -> None:
    """A standby confirms samples before they are due: the heap stays bounded."""
    now = datetime.now(UTC)
    buf = PendingBuffer(10_000)
    for i in range(20_000):
        s = sample(now + timedelta(microseconds=i))
        buf.add(Decoded([s]), 0.0)
        buf.confirmed([s.key], [])
    assert len(buf) == 0 and len(buf._release_heap) <= 1024


async def test_a_future_dated_sample_does_not_stop_acknowledgements(tmp_path: Path) -> None:
    """A device whose clock is 10 minutes ahead sends a sample into every spool segment;
    ordinary readings keep being acknowledged (the spool append completes) because each
    segment is deleted a minute after its sample arrived, not when the future minute
    closes. `closed_before` one minute ahead of the clock plays the leader a minute
    later."""
    spool = Spool(tmp_path, max_bytes=16 * 1024, segment_bytes=512)
    buffer = PendingBuffer(max_items=10_000, on_settled=spool.settle)
    intake = DurableIntake(buffer, spool)
    intake.open(None)
    task = asyncio.create_task(spool.run())
    try:
        ahead = datetime.now(UTC) + timedelta(minutes=10)
        for n in range(400):
            decoded = Decoded([sample(ahead + timedelta(milliseconds=n), n=n), reading(n)])
            pending = intake.accept(decoded)
            assert pending is not None
            await asyncio.wait_for(pending, timeout=2)  # the PUBACK would wait for this
            later = datetime.now(UTC) + BUCKET + timedelta(seconds=1)
            batch, _ = buffer.oldest(100, closed_before=later)
            buffer.committed(batch, [])
        assert spool.total_bytes <= 16 * 1024
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()


# --- readings timed by arrival: content matching (issue 17, item 12) -----------------


def clockless(at: datetime, dados: bytes = b'{"power":1}', equip: str = "e1") -> Reading:
    return Reading(equip, at, dados, matchable=False)


def test_a_redelivered_clockless_reading_is_kept_once() -> None:
    """An MQTT redelivery of a reading without device time is decoded again with a new
    arrival time; within CONTENT_MATCH_WINDOW_S the same content is the same reading,
    pending or already written."""
    buf = PendingBuffer(100)
    buf.add(Decoded([clockless(T0)]), 0.0)
    buf.add(Decoded([clockless(T0 + timedelta(seconds=2))]), 2.0)
    assert buf.readings_pending == 1 and buf.stats.duplicates == 1
    batch, _ = buf.oldest(10)
    buf.committed(batch, [])
    buf.add(Decoded([clockless(T0 + timedelta(seconds=5))]), 5.0)  # after the flush
    assert buf.readings_pending == 0 and buf.stats.duplicates == 2


def test_the_content_match_bound() -> None:
    """The documented bound: a redelivery later than the window is a second row; other
    content, or another equipment, is another reading."""
    buf = PendingBuffer(100)
    window = timedelta(seconds=CONTENT_MATCH_WINDOW_S)
    buf.add(Decoded([clockless(T0)]), 0.0)
    buf.add(Decoded([clockless(T0 + window + timedelta(milliseconds=1))]), 11.0)
    buf.add(Decoded([clockless(T0 + timedelta(seconds=1), dados=b'{"power":2}')]), 11.0)
    buf.add(Decoded([clockless(T0, equip="e2")]), 11.0)
    assert buf.readings_pending == 4 and buf.stats.duplicates == 0


# --- what the leader publishes, what a standby expires (issue 17, defect 4) ---------


def test_unprocessed_age_is_the_oldest_pending_arrival() -> None:
    """0 when empty, the age of the oldest entry otherwise; unknown (None) while an
    entry handed over from the spool is pending."""
    buf = PendingBuffer(100)
    assert buf.unprocessed_age(10.0) == 0.0
    buf.add(Decoded([reading(1)]), 3.0)
    buf.add(Decoded([sample(datetime.now(UTC))]), 1.0)
    assert buf.unprocessed_age(10.0) == 9.0
    buf.add(Decoded([reading(2)]), 4.0, replayed=True)
    assert buf.unprocessed_age(10.0) is None
    buf.committed([reading(2)], [])
    assert buf.unprocessed_age(10.0) == 9.0


def test_windows_cover_the_whole_buffer() -> None:
    """Probing windows resume at a position and say how far they looked."""
    buf = PendingBuffer(100)
    for i in range(10):
        buf.add(Decoded([reading(i)]), float(i))
    first, scanned = buf.readings_window(0, 4, cutoff=100.0)
    assert scanned == 4 and [r.timestamp_dados.second for r in first] == [0, 1, 2, 3]
    rest, scanned = buf.readings_window(8, 4, cutoff=100.0)
    assert scanned == 2 and [r.timestamp_dados.second for r in rest] == [8, 9]
    young, scanned = buf.readings_window(0, 4, cutoff=1.0)
    assert scanned == 4 and len(young) == 2


def test_expire_uses_two_cutoffs_and_looks_at_the_front_only() -> None:
    """Readings timed by arrival and rejects go at the first cutoff, readings with a
    device time at the second; the scan stops at the first entry younger than both."""
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1)], [Reject("t", b"x", "r", T0)]), 0.0)
    buf.add(Decoded([reading(2, matchable=False)]), 1.0)
    buf.add(Decoded([reading(3)]), 50.0)
    assert buf.expire(unmatchable_cutoff=10.0, matchable_cutoff=-1.0, limit=100) == 2
    assert buf.readings_pending == 2 and buf.rejects_pending == 0
    assert buf.expire(unmatchable_cutoff=10.0, matchable_cutoff=10.0, limit=100) == 1
    assert buf.readings_pending == 1


def test_content_memory_mixes_legacy_keys_and_samples() -> None:
    """On a legacy database a reading's key time is naive wall time while a sample's
    instant is aware: the content memory compares them without failing."""
    buf = PendingBuffer(100)
    buf.add(Decoded([clockless(T0.replace(tzinfo=None))]), 0.0)
    clockless_sample = sample(T0 + timedelta(seconds=2))
    clockless_sample.matchable = False
    buf.add(Decoded([clockless_sample]), 1.0)
    buf.add(Decoded([clockless(T0.replace(tzinfo=None) + timedelta(seconds=1))]), 2.0)
    assert buf.readings_pending == 2 and buf.stats.duplicates == 1


# --- each operation on its own (issue 15: mutation-tested contracts) ----------------


class Settled:
    """The spool's side of `on_settled`: how many entries of each segment left."""

    def __init__(self) -> None:
        self.counts: dict[int, int] = {}
        self.calls = 0

    def __call__(self, counts: Iterable[tuple[int, int]]) -> None:
        self.calls += 1
        for segment, n in counts:
            self.counts[segment] = self.counts.get(segment, 0) + n


def test_refused_duplicates_settle_their_own_segment_once_per_message() -> None:
    """A message's duplicates (readings by key or content, rejects by key) are settled
    at once, in the segment the message came from, in one report; nothing is reported
    for a message without any."""
    settled = Settled()
    buf = PendingBuffer(100, on_settled=settled)
    rej = Reject("t", b"x", "invalid_json", T0)
    buf.add(Decoded([reading(1), clockless(T0)], [rej]), 0.0, segment=1)
    assert (settled.counts, settled.calls) == ({}, 0)
    later = clockless(T0 + timedelta(seconds=1))
    buf.add(Decoded([reading(1), later, reading(2)], [rej, rej]), 1.0, segment=2)
    assert (settled.counts, settled.calls) == ({2: 4}, 1)
    assert buf.stats.duplicates == 2 and buf.stats.added == 3 and len(buf) == 4


def test_leaving_entries_settle_the_segment_they_came_from() -> None:
    """Committed, confirmed and expired entries are reported per segment (readings,
    samples and rejects alike); one that already left is not reported again."""
    settled = Settled()
    buf = PendingBuffer(100, on_settled=settled)
    now = datetime.now(UTC)
    rej = Reject("t", b"x", "invalid_json", T0)
    buf.add(Decoded([reading(1), sample(now)], [rej]), 0.0, segment=3)
    buf.add(Decoded([reading(2)]), 0.0, segment=4)
    buf.committed([reading(1), reading(1)], [rej])
    assert settled.counts == {3: 2}
    buf.confirmed([sample(now).key, sample(now).key, reading(9).key], [rej.key])
    assert settled.counts == {3: 3}
    assert buf.expire_unconfirmed(0.0) == 1
    assert settled.counts == {3: 3, 4: 1} and len(buf) == 0
    buf.committed([reading(1), reading(2), sample(now)], [rej])
    buf.confirmed([reading(2).key], [rej.key])
    assert settled.counts == {3: 3, 4: 1}
    assert (buf.stats.committed, buf.stats.confirmed, buf.stats.expired) == (1, 1, 1)


def test_oldest_limits_each_kind_and_fills_with_plain_readings() -> None:
    """`limit` bounds the readings (released samples first, then plain readings) and
    the rejects separately, each oldest first."""
    now = datetime.now(UTC)
    closed = now + timedelta(minutes=2)
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1), reading(2), reading(3)]), 0.0)
    buf.add(Decoded([sample(now, equip="a"), sample(now, equip="b")]), 1.0)
    buf.add(Decoded(rejects=[Reject("t", bytes([i]), "r", T0) for i in range(3)]), 2.0)
    readings, rejects = buf.oldest(3, closed_before=closed)
    assert [r.equipamento_id for r in readings] == ["a", "b", "e1"]
    assert [r.payload for r in rejects] == [b"\x00", b"\x01", b"\x02"]
    readings, rejects = buf.oldest(1, closed_before=closed)
    assert [r.equipamento_id for r in readings] == ["a"] and len(rejects) == 1
    readings, _ = buf.oldest(10, closed_before=closed)
    assert len(readings) == 5


def test_a_sample_is_released_exactly_when_its_minute_closes() -> None:
    """`closed_before` equal to the end of the sample's minute releases it; a
    microsecond earlier does not. None (the final flush) releases everything."""
    at = datetime.now(UTC).replace(second=30) - timedelta(minutes=5)
    end = bucket_start(at) + BUCKET
    buf = PendingBuffer(100)
    buf.add(Decoded([sample(at)]), 0.0)
    assert buf.oldest(10, closed_before=end - timedelta(microseconds=1))[0] == []
    assert not buf.has_ready(end - timedelta(microseconds=1))
    assert buf.has_ready(end)
    assert [r.sample_at for r in buf.oldest(10, closed_before=end)[0]] == [at]
    future = PendingBuffer(100)
    future.add(Decoded([sample(datetime.now(UTC) + timedelta(minutes=10))]), 0.0)
    assert len(future.oldest(10, closed_before=None)[0]) == 1


def test_has_ready_counts_readings_rejects_and_released_samples_only() -> None:
    """Something to flush: a plain reading, a reject, or a sample whose minute closed;
    an open minute's sample alone is nothing to flush yet."""
    now = datetime.now(UTC)
    buf = PendingBuffer(100)
    assert not buf.has_ready(now)
    buf.add(Decoded([sample(now)]), 0.0)
    assert not buf.has_ready(now - timedelta(minutes=1))
    buf.add(Decoded(rejects=[Reject("t", b"x", "r", T0)]), 0.0)
    assert buf.has_ready(now - timedelta(minutes=1))
    buf.confirmed([], [Reject("t", b"x", "r", T0).key])
    buf.add(Decoded([reading(1)]), 0.0)
    assert buf.has_ready(now - timedelta(minutes=1))
    buf.committed([reading(1)], [])
    assert buf.has_ready(now + timedelta(minutes=2))  # the sample, released
    buf.committed([sample(now)], [])
    assert not buf.has_ready(now + timedelta(minutes=2))


def test_rejects_older_than_is_a_bounded_prefix() -> None:
    """The rejects that arrived at or before the cutoff, oldest first, at most `limit`."""
    buf = PendingBuffer(100)
    for i in range(5):
        buf.add(Decoded(rejects=[Reject("t", bytes([i]), "r", T0)]), float(i))
    assert [r.payload for r in buf.rejects_older_than(2.0, 10)] == [b"\x00", b"\x01", b"\x02"]
    assert [r.payload for r in buf.rejects_older_than(10.0, 2)] == [b"\x00", b"\x01"]
    assert buf.rejects_older_than(-1.0, 10) == []
    found, scanned = buf.rejects_window(3, 10, cutoff=3.0)
    assert [r.payload for r in found] == [b"\x03"] and scanned == 2


def test_oldest_age_is_the_oldest_pending_reading() -> None:
    """Seconds since the oldest pending reading or sample arrived (rejects do not
    count); None when no reading is pending."""
    buf = PendingBuffer(100)
    assert buf.oldest_age(10.0) is None
    buf.add(Decoded(rejects=[Reject("t", b"x", "r", T0)]), 1.0)
    assert buf.oldest_age(10.0) is None
    buf.add(Decoded([sample(datetime.now(UTC))]), 4.0)
    buf.add(Decoded([reading(1)]), 6.0)
    assert buf.oldest_age(10.0) == 6.0
    buf.add(Decoded([reading(2)]), 2.0)  # plain readings: the first one held counts
    assert buf.oldest_age(10.0) == 6.0
    buf.committed([reading(1), reading(2)], [])
    assert buf.oldest_age(10.0) == 6.0


def test_unprocessed_age_is_never_negative_and_counts_rejects() -> None:
    """A reject alone is unprocessed; an arrival stamped after `now` is age 0."""
    buf = PendingBuffer(100)
    buf.add(Decoded(rejects=[Reject("t", b"x", "r", T0)]), 3.0)
    assert buf.unprocessed_age(10.0) == 7.0
    assert buf.unprocessed_age(1.0) == 0.0
    buf.add(Decoded(rejects=[Reject("t", b"y", "r", T0)]), 4.0, replayed=True)
    assert buf.unprocessed_age(10.0) is None
    buf.expire_unmatchable(3.5)
    assert buf.unprocessed_age(10.0) is None
    buf.confirmed([], [Reject("t", b"y", "r", T0).key])
    assert buf.unprocessed_age(10.0) == 0.0


def test_expire_looks_at_no_more_than_limit_entries_of_each_kind() -> None:
    """`limit` bounds the scan of readings, samples and rejects each; the cutoff is
    inclusive; readings with a device time wait for the second cutoff."""
    now = datetime.now(UTC)
    buf = PendingBuffer(100)
    for i in range(3):
        buf.add(Decoded([clockless(T0 + timedelta(seconds=i), dados=b"%d" % i)]), float(i))
        buf.add(Decoded([sample(now + timedelta(seconds=i))]), float(i))
        buf.add(Decoded(rejects=[Reject("t", bytes([i]), "r", T0)]), float(i))
    assert buf.expire(unmatchable_cutoff=10.0, matchable_cutoff=1.0, limit=1) == 3
    assert buf.readings_pending == 4 and buf.rejects_pending == 2
    assert buf.expire(unmatchable_cutoff=1.0, matchable_cutoff=1.0, limit=10) == 3
    assert buf.readings_pending == 2 and buf.rejects_pending == 1
    assert buf.stats.expired == 6


def test_content_memory_is_bounded() -> None:
    """At most CONTENT_MEMORY_MAX contents are remembered: the oldest is forgotten
    first (a redelivery of it becomes a row), the rest are still matched."""
    buf = PendingBuffer(CONTENT_MEMORY_MAX + 10)
    for i in range(CONTENT_MEMORY_MAX + 1):
        buf.add(Decoded([clockless(T0 + timedelta(microseconds=i), dados=b"%d" % i)]), 0.0)
    assert buf.stats.duplicates == 0
    buf.add(Decoded([clockless(T0 + timedelta(seconds=1), dados=b"1")]), 1.0)
    assert buf.stats.duplicates == 1  # the second oldest is still remembered
    buf.add(Decoded([clockless(T0 + timedelta(seconds=2), dados=b"0")]), 2.0)
    assert buf.stats.duplicates == 1 and buf.stats.added == CONTENT_MEMORY_MAX + 2


def test_content_older_than_the_window_is_forgotten_not_what_is_inside_it() -> None:
    """A newer reading forgets contents more than one window older than itself, and
    only those."""
    buf = PendingBuffer(100)
    window = timedelta(seconds=CONTENT_MATCH_WINDOW_S)
    buf.add(Decoded([clockless(T0, dados=b'{"a":1}')]), 0.0)
    buf.add(Decoded([clockless(T0 + timedelta(seconds=5), dados=b'{"b":1}')]), 5.0)
    buf.add(Decoded([clockless(T0 + window, dados=b'{"c":1}')]), 10.0)
    assert buf._content.keys() == {
        ("e1", content_digest(b'{"a":1}')),
        ("e1", content_digest(b'{"b":1}')),
        ("e1", content_digest(b'{"c":1}')),
    }
    buf.add(Decoded([clockless(T0 + window + timedelta(seconds=1), dados=b'{"d":1}')]), 11.0)
    assert ("e1", content_digest(b'{"a":1}')) not in buf._content
    assert ("e1", content_digest(b'{"b":1}')) in buf._content
    # Exactly one window apart still matches: the bound is inclusive.
    buf.add(Decoded([clockless(T0 + window + timedelta(seconds=5), dados=b'{"b":1}')]), 15.0)
    assert buf.stats.duplicates == 1


def test_samples_confirmed_before_release_leave_the_heap_bounded_by_the_samples() -> None:
    """Stale heap entries are dropped once they outnumber twice the pending samples
    plus 1024, and not before (the rebuild costs O(heap))."""
    now = datetime.now(UTC)
    buf = PendingBuffer(10_000)
    kept = [sample(now, equip=f"k{i}") for i in range(10)]
    buf.add(Decoded(kept), 0.0)
    for i in range(2 * 10 + 1024 - 10):
        s = sample(now + timedelta(microseconds=i + 1))
        buf.add(Decoded([s]), 0.0)
        buf.confirmed([s.key], [])
    assert len(buf._release_heap) == 2 * 10 + 1024
    s = sample(now - timedelta(microseconds=1))
    buf.add(Decoded([s]), 0.0)
    buf.confirmed([s.key], [])
    assert len(buf._release_heap) == 10
    assert [r.equipamento_id for r in buf.oldest(20, closed_before=None)[0]] == [
        s.equipamento_id for s in kept
    ]


def content_digest(dados: bytes) -> bytes:
    return hashlib.blake2b(dados, digest_size=16).digest()


def test_samples_due_together_come_in_arrival_order() -> None:
    """Samples released at the same instant (one closed minute) are written in the
    order they arrived, not in key order."""
    at = datetime.now(UTC) - timedelta(minutes=3)
    buf = PendingBuffer(100)
    buf.add(Decoded([sample(at, equip="b")]), 0.0)
    buf.add(Decoded([sample(at, equip="a"), sample(at, equip="c")]), 1.0)
    readings, _ = buf.oldest(10, closed_before=datetime.now(UTC))
    assert [r.equipamento_id for r in readings] == ["b", "a", "c"]
