"""The pending buffer against a small model (issue 15: mutation-tested contracts).

Hypothesis drives a `PendingBuffer` and a few plain dicts side by side through every
public operation — intake with duplicates, clockless redeliveries and rejects from
several spool segments; batches with and without `closed_before`; our own commits, a
standby's confirmations and expiry — and after every step compares what they hold and
what they report. The invariants are the ones data loss or duplication would break:

- per spool segment, what the buffer reported settled = the entries that left + the
  duplicates it refused, and taken = settled + still pending (a segment is deleted when
  nothing of it is pending, never earlier, never later);
- a rollup sample is never in a batch before its minute has closed or one bucket has
  passed since it arrived;
- nothing leaves twice: committing or confirming what already left settles nothing.

The wall clock the buffer reads (`datetime.now`, for a sample's latest release) is
replaced by the machine's own clock, so every run is reproducible.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from aupus_ha.pipeline import buffer as buffer_module
from aupus_ha.pipeline.buffer import CONTENT_MATCH_WINDOW_S, PendingBuffer
from aupus_ha.pipeline.readings import Decoded, Reading, ReadingKey, Reject, RejectKey
from aupus_ha.pipeline.rollup import BUCKET, bucket_start

START = datetime(2026, 3, 1, 12, 0, 0, 250_000, tzinfo=UTC)
WINDOW = timedelta(seconds=CONTENT_MATCH_WINDOW_S)
MAX_ITEMS = 6


class Clock(datetime):
    """`datetime` whose `now()` is the machine's clock."""

    current: ClassVar[datetime] = START

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.current


# What a message may hold: small pools, so duplicates and redeliveries are frequent.
equipments = st.sampled_from(["e1", "e2"])
contents = st.sampled_from([b'{"v":0}', b'{"v":1}'])


@st.composite
def entries(draw: st.DrawFn, now: datetime) -> Reading | Reject:
    kind = draw(st.sampled_from(["plain", "clockless", "sample", "clockless sample", "reject"]))
    if kind == "reject":
        return Reject(draw(st.sampled_from(["t1", "t2"])), draw(contents), "invalid_json", now)
    equip, dados = draw(equipments), draw(contents)
    if kind == "plain":  # a device time: matched by its key only
        return Reading(equip, START + timedelta(seconds=draw(st.integers(0, 3))), dados)
    if kind == "clockless":  # timed by arrival: also matched by content
        return Reading(equip, now, dados, matchable=False)
    # A sample of an open, closed or future minute (devices ahead by up to 15 minutes).
    at = (
        now if kind == "clockless sample" else now + timedelta(seconds=draw(st.integers(-150, 900)))
    )
    minute = bucket_start(at)
    return Reading(
        equip,
        minute,
        dados,
        timestamp_fim=minute + BUCKET,
        matchable=kind == "sample",
        sample_at=at,
    )


ticks_ms = st.sampled_from([0, 1, 9_999, 10_000, 10_001, 59_999, 60_000]) | st.integers(0, 90_000)
closed_offsets = st.none() | st.integers(-180, 1_000).map(lambda s: timedelta(seconds=s))


class BufferModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.saved_datetime = buffer_module.__dict__["datetime"]
        buffer_module.__dict__["datetime"] = Clock
        Clock.current = START
        self.arrival = 0.0  # the monotonic clock intake stamps arrivals with
        self.reported: Counter[int] = Counter()  # settled, as the buffer told the spool
        self.buffer = PendingBuffer(MAX_ITEMS, on_settled=self.settle)
        # The model: pending entries in arrival order (dicts keep insertion order).
        self.readings: dict[ReadingKey, tuple[float, Reading, int]] = {}
        self.samples: dict[ReadingKey, tuple[float, Reading, int]] = {}
        self.rejects: dict[RejectKey, tuple[float, Reject, int]] = {}
        self.replayed: set[ReadingKey | RejectKey] = set()
        self.releases: list[tuple[datetime, int, ReadingKey]] = []  # due times, as pushed
        self.pushes = 0
        self.released: dict[ReadingKey, None] = {}
        self.earliest_release: dict[ReadingKey, datetime] = {}
        self.content: dict[tuple[str, bytes], datetime] = {}
        self.taken: Counter[int] = Counter()
        self.left: Counter[int] = Counter()
        self.refused: Counter[int] = Counter()
        self.stats = Counter[str]()

    def teardown(self) -> None:
        buffer_module.__dict__["datetime"] = self.saved_datetime

    def settle(self, counts: Iterable[tuple[int, int]]) -> None:
        for segment, count in counts:
            assert count > 0, "a settle report of nothing"
            self.reported[segment] += count

    # --- intake --------------------------------------------------------------------------

    @rule(
        data=st.data(),
        size=st.integers(1, 4),
        segment=st.integers(0, 3),
        replayed=st.booleans(),
    )
    def add(self, data: st.DataObject, size: int, segment: int, replayed: bool) -> None:
        items = [data.draw(entries(Clock.current)) for _ in range(size)]
        decoded = Decoded(
            readings=[i for i in items if isinstance(i, Reading)],
            rejects=[i for i in items if isinstance(i, Reject)],
        )
        self.buffer.add(decoded, self.arrival, segment, replayed=replayed)
        self.taken[segment] += size
        for reading in decoded.readings:
            if self.model_refuses(reading):
                self.refused[segment] += 1
                self.stats["duplicates"] += 1
                continue
            self.hold(reading, segment)
            self.stats["added"] += 1
            if replayed:
                self.replayed.add(reading.key)
        for reject in decoded.rejects:
            if reject.key in self.rejects:
                self.refused[segment] += 1
                continue
            self.rejects[reject.key] = (self.arrival, reject, segment)
            if replayed:
                self.replayed.add(reject.key)

    def model_refuses(self, reading: Reading) -> bool:
        if reading.key in self.readings or reading.key in self.samples:
            return True
        if reading.matchable:
            return False
        at = reading.sample_at or reading.timestamp_dados
        content = (reading.equipamento_id, reading.dados)
        seen = self.content.get(content)
        if seen is not None and abs(at - seen) <= WINDOW:
            return True  # the same reading, redelivered or received twice
        self.content[content] = at
        return False

    def hold(self, reading: Reading, segment: int) -> None:
        entry = (self.arrival, reading, segment)
        if reading.sample_at is None:
            self.readings[reading.key] = entry
            return
        self.samples[reading.key] = entry
        due = min(bucket_start(reading.sample_at) + BUCKET, Clock.current + BUCKET)
        self.pushes += 1
        heapq.heappush(self.releases, (due, self.pushes, reading.key))
        first = self.earliest_release.get(reading.key, due)
        self.earliest_release[reading.key] = min(first, due)

    @rule(ms=ticks_ms)
    def tick(self, ms: int) -> None:
        Clock.current += timedelta(milliseconds=ms)
        self.arrival += ms / 1000

    # --- leader side ---------------------------------------------------------------------

    def model_release(self, closed_before: datetime | None) -> None:
        while self.releases and (closed_before is None or self.releases[0][0] <= closed_before):
            _, _, key = heapq.heappop(self.releases)
            if key in self.samples:
                # Never before its minute closed or a bucket after its (first) arrival;
                # a final flush (None) releases everything.
                first = self.earliest_release[key]
                assert closed_before is None or first <= closed_before
                self.released[key] = None

    @rule(limit=st.integers(1, 5), offset=closed_offsets, commit=st.integers(0, 5))
    def batch(self, limit: int, offset: timedelta | None, commit: int) -> None:
        """The leader: the oldest `limit`, of which it commits the first `commit`."""
        closed_before = None if offset is None else Clock.current + offset
        readings, rejects = self.buffer.oldest(limit, closed_before)
        self.model_release(closed_before)
        want = [self.samples[k][1] for k in list(self.released)[:limit]]
        want += [r for _, r, _ in list(self.readings.values())[: limit - len(want)]]
        assert readings == want
        assert rejects == [r for _, r, _ in list(self.rejects.values())[:limit]]
        self.buffer.committed(readings[:commit], rejects[:commit])
        self.stats["committed"] += self.model_discard(r.key for r in readings[:commit])
        self.model_discard_rejects(r.key for r in rejects[:commit])

    @rule(offset=st.integers(-180, 1_000).map(lambda s: timedelta(seconds=s)))
    def has_ready(self, offset: timedelta) -> None:
        closed_before = Clock.current + offset
        self.model_release(closed_before)
        expected = bool(self.released or self.readings or self.rejects)
        assert self.buffer.has_ready(closed_before) is expected

    @rule(data=st.data())
    def commit_again(self, data: st.DataObject) -> None:
        """Committing entries a second time (or ones never held) settles nothing."""
        readings = data.draw(st.lists(entries(Clock.current), max_size=3))
        self.buffer.committed(
            [r for r in readings if isinstance(r, Reading) and self.model_gone(r.key)],
            [r for r in readings if isinstance(r, Reject) and r.key not in self.rejects],
        )

    def model_gone(self, key: ReadingKey) -> bool:
        return key not in self.readings and key not in self.samples

    # --- standby side --------------------------------------------------------------------

    @rule(data=st.data())
    def confirmed(self, data: st.DataObject) -> None:
        pending = sorted([*self.readings, *self.samples])
        keys = data.draw(st.lists(st.sampled_from(pending), max_size=3)) if pending else []
        rejects = (
            data.draw(st.lists(st.sampled_from(sorted(self.rejects)), max_size=2))
            if (self.rejects)
            else []
        )
        self.buffer.confirmed(keys, rejects)
        self.stats["confirmed"] += self.model_discard(keys)
        self.model_discard_rejects(rejects)

    @rule(
        unmatchable_back=st.floats(0, 200),
        matchable_back=st.floats(0, 200) | st.just(float("inf")),
        limit=st.integers(0, 12),
    )
    def expire(self, unmatchable_back: float, matchable_back: float, limit: int) -> None:
        """Cutoffs some seconds back from now; only the `limit` oldest of each kind."""
        unmatchable, matchable = self.arrival - unmatchable_back, self.arrival - matchable_back
        removed = self.buffer.expire(unmatchable, matchable, limit)
        stale = [
            k
            for source in (self.readings, self.samples)
            for k, (arrived, r, _) in list(source.items())[:limit]
            if arrived <= (matchable if r.matchable else unmatchable)
        ]
        stale_rejects = [
            k for k, (arrived, _, _) in list(self.rejects.items())[:limit] if arrived <= unmatchable
        ]
        expected = self.model_discard(stale) + self.model_discard_rejects(stale_rejects)
        self.stats["expired"] += expected
        assert removed == expected

    @precondition(lambda self: len(self.buffer) > 0)
    @rule(back=st.floats(0, 100), everything=st.booleans())
    def expire_shorthands(self, back: float, everything: bool) -> None:
        cutoff = self.arrival - back
        if everything:
            removed = self.buffer.expire_unconfirmed(cutoff)
            stale = [
                k for k, (a, _, _) in [*self.readings.items(), *self.samples.items()] if a <= cutoff
            ]
        else:
            removed = self.buffer.expire_unmatchable(cutoff)
            stale = [
                k
                for k, (a, r, _) in [*self.readings.items(), *self.samples.items()]
                if a <= cutoff and not r.matchable
            ]
        stale_rejects = [k for k, (a, _, _) in self.rejects.items() if a <= cutoff]
        expected = self.model_discard(stale) + self.model_discard_rejects(stale_rejects)
        self.stats["expired"] += expected
        assert removed == expected

    @rule(start=st.integers(0, 8), limit=st.integers(0, 5), back=st.floats(0, 100))
    def windows(self, start: int, limit: int, back: float) -> None:
        cutoff = self.arrival - back
        every = [*self.readings.values(), *self.samples.values()]
        window = every[start : start + limit]
        assert self.buffer.readings_window(start, limit, cutoff) == (
            [r for a, r, _ in window if a <= cutoff],
            len(window),
        )
        rejects = list(self.rejects.values())[start : start + limit]
        assert self.buffer.rejects_window(start, limit, cutoff) == (
            [r for a, r, _ in rejects if a <= cutoff],
            len(rejects),
        )
        assert self.buffer.readings_older_than(cutoff, limit) == [
            r for a, r, _ in every[:limit] if a <= cutoff
        ]
        assert self.buffer.rejects_older_than(cutoff, limit) == [
            r for a, r, _ in list(self.rejects.values())[:limit] if a <= cutoff
        ]

    # --- the model's removals ------------------------------------------------------------

    def model_discard(self, keys: Iterable[ReadingKey]) -> int:
        gone = 0
        for key in keys:
            entry = self.readings.pop(key, None) or self.samples.pop(key, None)
            if entry is None:
                continue
            self.released.pop(key, None)
            self.replayed.discard(key)
            self.left[entry[2]] += 1
            gone += 1
        return gone

    def model_discard_rejects(self, keys: Iterable[RejectKey]) -> int:
        gone = 0
        for key in keys:
            entry = self.rejects.pop(key, None)
            if entry is not None:
                self.replayed.discard(key)
                self.left[entry[2]] += 1
                gone += 1
        return gone

    # --- invariants ----------------------------------------------------------------------

    @invariant()
    def segments_settle_exactly(self) -> None:
        pending = Counter(
            segment
            for source in (self.readings, self.samples, self.rejects)
            for _, _, segment in source.values()
        )
        for segment in range(4):
            assert self.reported[segment] == self.left[segment] + self.refused[segment]
            assert self.taken[segment] == self.reported[segment] + pending[segment]

    @invariant()
    def same_contents_and_counts(self) -> None:
        buf = self.buffer
        assert buf.readings_pending == len(self.readings) + len(self.samples)
        assert buf.rejects_pending == len(self.rejects)
        assert len(buf) == len(self.readings) + len(self.samples) + len(self.rejects)
        assert buf.has_room is (len(buf) < MAX_ITEMS)
        assert buf._space.is_set() is (len(buf) < MAX_ITEMS)
        assert buf.wait_not_empty().is_set() is (len(buf) > 0)
        stats = buf.stats
        assert (stats.added, stats.duplicates) == (self.stats["added"], self.stats["duplicates"])
        assert (stats.committed, stats.confirmed, stats.expired) == (
            self.stats["committed"],
            self.stats["confirmed"],
            self.stats["expired"],
        )

    @invariant()
    def ages(self) -> None:
        now = self.arrival + 5.0
        arrivals = [a for src in (self.readings, self.samples) for a, _, _ in src.values()]
        with_rejects = arrivals + [a for a, _, _ in self.rejects.values()]
        assert self.buffer.oldest_age(now) == (now - min(arrivals) if arrivals else None)
        if self.replayed:
            assert self.buffer.unprocessed_age(now) is None
        else:
            expected = now - min(with_rejects) if with_rejects else 0.0
            assert self.buffer.unprocessed_age(now) == expected


BufferModel.TestCase.settings = settings(max_examples=200, stateful_step_count=30, deadline=None)
test_the_buffer_behaves_like_its_model = BufferModel.TestCase
