"""The pending buffer: what this instance holds that may not be committed yet.

Every instance receives every message. The leader removes entries when its flush
commits; a standby removes them when it sees them committed by the leader (probing the
natural keys, or the content of readings timed by arrival), or — never on a timer
alone — when the leader reports that it has processed everything that old (see
`flusher.py`, "standby expiry"). On promotion the standby flushes whatever is left; rows
the old leader already wrote are skipped by `ON CONFLICT DO NOTHING`.

Entries are kept in arrival order (dicts preserve insertion order), so "older than"
is a prefix and a batch is the oldest N. Rollup samples are kept apart, in their own
arrival-ordered dict with a heap of release times, so a batch costs O(batch) even when
thousands of samples of still-open minutes wait: nothing scans the whole buffer per
message. A sample is released when its minute has closed, or at the latest one bucket
after it arrived: a future-dated sample (device clock ahead, up to the parser's
15-minute bound) is written like any other and later samples of its minute merge into
the row, so it never pins its spool segment for longer than a normal sample does.

Readings without a device time carry this instance's arrival time as their key, so a
redelivered copy of one would get a new key. They are also matched by content: a
reading of the same equipment with byte-identical `dados` timed within
`CONTENT_MATCH_WINDOW_S` of a pending (or recently settled) one is the same reading.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from typing import Final

from aupus_ha.decoding.timestamps import from_legacy_wall
from aupus_ha.pipeline.readings import Decoded, Reading, ReadingKey, Reject, RejectKey
from aupus_ha.pipeline.rollup import BUCKET, bucket_start

# Spool segment of an entry that did not come through the spool (segments start at 1).
NO_SEGMENT = 0
# Told, per spool segment, how many entries left the buffer: the spool deletes a segment
# once nothing of it is pending any more.
SettleHook = Callable[[Iterable[tuple[int, int]]], None]
# Two arrival-timed readings of one equipment with identical `dados` whose arrival times
# differ by at most this are one reading (an MQTT redelivery, or the same message as
# another instance received it). Devices publish every 30 s or more, so two genuine
# readings are rarely this close; two byte-identical ones inside it count once.
CONTENT_MATCH_WINDOW_S: Final = 10.0
_CONTENT_WINDOW: Final = timedelta(seconds=CONTENT_MATCH_WINDOW_S)
# Remembered content of arrival-timed readings (pending or settled in the last window):
# at most this many, whatever the rate.
CONTENT_MEMORY_MAX: Final = 100_000

_Entry = tuple[float, Reading, int]  # (arrival, monotonic; the reading; spool segment)
_ContentKey = tuple[str, bytes]


@dataclass(slots=True)
class BufferStats:
    added: int = 0
    duplicates: int = 0  # same natural key (or same content) already pending
    committed: int = 0  # removed after our own flush
    confirmed: int = 0  # removed because the leader had committed them
    expired: int = 0  # dropped by a standby once the leader had processed that far


class PendingBuffer:
    """Readings and rejects keyed by natural key, oldest first, bounded."""

    def __init__(self, max_items: int, on_settled: SettleHook | None = None) -> None:
        self.max_items = max_items
        self._on_settled = on_settled
        # key -> (arrival, entry, spool segment it was read from)
        self._readings: dict[ReadingKey, _Entry] = {}  # plain readings
        self._samples: dict[ReadingKey, _Entry] = {}  # rollup samples, arrival order
        self._release_heap: list[tuple[datetime, int, ReadingKey]] = []
        self._released: dict[ReadingKey, None] = {}  # samples due for writing, in order
        self._sample_seq = 0
        self._rejects: dict[RejectKey, tuple[float, Reject, int]] = {}
        # Entries handed over from the spool (a restart's replay, or a spill): their real
        # arrival is unknown and earlier than the hand-over time.
        self._replayed: set[ReadingKey | RejectKey] = set()
        self._content: dict[_ContentKey, datetime] = {}
        self._content_order: deque[tuple[datetime, _ContentKey]] = deque()
        self._space = asyncio.Event()
        self._space.set()
        self._not_empty = asyncio.Event()
        self.stats = BufferStats()

    def __len__(self) -> int:
        return len(self._readings) + len(self._samples) + len(self._rejects)

    @property
    def readings_pending(self) -> int:
        return len(self._readings) + len(self._samples)

    @property
    def rejects_pending(self) -> int:
        return len(self._rejects)

    # --- intake -------------------------------------------------------------------

    async def wait_for_space(self) -> None:
        """Until the buffer has room: the spool replay waits here before handing over
        records that stayed on disk while it was full."""
        await self._space.wait()

    @property
    def has_room(self) -> bool:
        return len(self) < self.max_items

    def add(
        self,
        decoded: Decoded,
        arrived: float,
        segment: int = NO_SEGMENT,
        *,
        replayed: bool = False,
    ) -> None:
        """Hold a decoded message. `replayed`: it came back from the spool, so it
        arrived earlier than `arrived` (by an unknown amount)."""
        refused = 0
        for reading in decoded.readings:
            if not self._add_reading(reading, (arrived, reading, segment)):
                self.stats.duplicates += 1
                refused += 1
                continue
            if replayed:
                self._replayed.add(reading.key)
            self.stats.added += 1
        for reject in decoded.rejects:
            if reject.key in self._rejects:
                refused += 1
                continue
            self._rejects[reject.key] = (arrived, reject, segment)
            if replayed:
                self._replayed.add(reject.key)
        if refused and self._on_settled is not None:
            self._on_settled([(segment, refused)])
        self._after_change()

    def _add_reading(self, reading: Reading, entry: _Entry) -> bool:
        key = reading.key
        if key in self._readings or key in self._samples:
            return False
        if not reading.matchable and self._seen_content(reading):
            return False
        if reading.sample_at is None:
            self._readings[key] = entry
            return True
        self._samples[key] = entry
        release_at = min(bucket_start(reading.sample_at) + BUCKET, datetime.now(UTC) + BUCKET)
        self._sample_seq += 1
        heapq.heappush(self._release_heap, (release_at, self._sample_seq, key))
        return True

    def _seen_content(self, reading: Reading) -> bool:
        """Is an arrival-timed reading with the same content within the window known?
        Remembers this one otherwise."""
        ts = reading.sample_at or reading.timestamp_dados  # a sample's key is its minute
        if ts.tzinfo is None:  # the legacy key convention (naive wall time): comparable
            ts = from_legacy_wall(ts)
        content = (reading.equipamento_id, hashlib.blake2b(reading.dados, digest_size=16).digest())
        seen = self._content.get(content)
        if seen is not None and abs(ts - seen) <= _CONTENT_WINDOW:
            return True
        self._content[content] = ts
        order = self._content_order
        order.append((ts, content))
        while order and (len(order) > CONTENT_MEMORY_MAX or order[0][0] < ts - _CONTENT_WINDOW):
            old_ts, old = order.popleft()
            if self._content.get(old) == old_ts:
                del self._content[old]
        return False

    def wait_not_empty(self) -> asyncio.Event:
        return self._not_empty

    # --- leader side ----------------------------------------------------------------

    def oldest(
        self, limit: int, closed_before: datetime | None = None
    ) -> tuple[list[Reading], list[Reject]]:
        """The oldest pending entries: released rollup samples first, then plain
        readings. A sample is released once its minute has closed (`closed_before`) or
        one bucket after it arrived; None releases every sample (a final flush)."""
        self._release(closed_before)
        readings = [self._samples[k][1] for k in islice(self._released, limit)]
        if len(readings) < limit:
            readings += [r for _, r, _ in islice(self._readings.values(), limit - len(readings))]
        rejects = [r for _, r, _ in islice(self._rejects.values(), limit)]
        return readings, rejects

    def has_ready(self, closed_before: datetime) -> bool:
        """Is anything writable now (not only samples of still-open minutes)?"""
        self._release(closed_before)
        return bool(self._released or self._readings or self._rejects)

    def committed(self, readings: Iterable[Reading], rejects: Iterable[Reject]) -> None:
        """Our own flush committed these: forget them."""
        self.stats.committed += self._discard_readings(r.key for r in readings)
        self._discard_rejects(r.key for r in rejects)
        self._after_change()

    def unprocessed_age(self, now: float) -> float | None:
        """Seconds since the oldest entry still pending here arrived (0 when empty):
        everything that arrived earlier has been written, merged, rejected or refused.
        None while an entry handed over from the spool is pending (its real arrival is
        unknown). What a leader publishes as its flush progress."""
        if self._replayed:
            return None
        firsts = [_first_arrival(d) for d in (self._readings, self._samples, self._rejects) if d]
        return max(0.0, now - min(firsts)) if firsts else 0.0

    # --- standby side ---------------------------------------------------------------

    def readings_window(self, start: int, limit: int, cutoff: float) -> tuple[list[Reading], int]:
        """Readings at positions `start` .. `start + limit` (plain readings, then rollup
        samples) that arrived at or before `cutoff`, and how many positions were looked
        at (fewer than `limit`: the end was reached). A standby probes the whole buffer
        in such windows, resuming where it stopped."""
        scanned = 0
        out: list[Reading] = []
        for arrived, reading, _ in islice(self._all_readings(), start, start + limit):
            scanned += 1
            if arrived <= cutoff:
                out.append(reading)
        return out, scanned

    def rejects_window(self, start: int, limit: int, cutoff: float) -> tuple[list[Reject], int]:
        """Same as `readings_window`, for rejects."""
        scanned = 0
        out: list[Reject] = []
        for arrived, reject, _ in islice(self._rejects.values(), start, start + limit):
            scanned += 1
            if arrived <= cutoff:
                out.append(reject)
        return out, scanned

    def readings_older_than(self, cutoff: float, limit: int) -> list[Reading]:
        return self.readings_window(0, limit, cutoff)[0]

    def rejects_older_than(self, cutoff: float, limit: int) -> list[Reject]:
        return self.rejects_window(0, limit, cutoff)[0]

    def confirmed(
        self, reading_keys: Iterable[ReadingKey], reject_keys: Iterable[RejectKey]
    ) -> None:
        """The leader has committed these: a standby no longer needs them."""
        self.stats.confirmed += self._discard_readings(reading_keys)
        self._discard_rejects(reject_keys)
        self._after_change()

    def expire(self, unmatchable_cutoff: float, matchable_cutoff: float, limit: int) -> int:
        """Drop what arrived at or before the cutoffs: readings timed by arrival and
        rejects at `unmatchable_cutoff`, readings with a device time at
        `matchable_cutoff`. Looks at no more than `limit` entries (the oldest, which is
        where anything due is). Only a standby calls this, and only once the leader has
        reported processing everything that old."""
        newest = max(unmatchable_cutoff, matchable_cutoff)
        stale: list[ReadingKey] = []
        for source in (self._readings, self._samples):
            for key, (arrived, reading, _) in islice(source.items(), limit):
                if arrived > newest:
                    break
                cutoff = matchable_cutoff if reading.matchable else unmatchable_cutoff
                if arrived <= cutoff:
                    stale.append(key)
        stale_rejects: list[RejectKey] = []
        for rkey, (arrived, _, _) in islice(self._rejects.items(), limit):
            if arrived > unmatchable_cutoff:
                break
            stale_rejects.append(rkey)
        removed = self._discard_readings(stale)
        self._discard_rejects(stale_rejects)
        self.stats.expired += removed + len(stale_rejects)
        self._after_change()
        return removed + len(stale_rejects)

    def expire_unmatchable(self, cutoff: float) -> int:
        """Drop readings timed by arrival, and rejects, that arrived at or before `cutoff`."""
        return self.expire(cutoff, float("-inf"), len(self))

    def expire_unconfirmed(self, cutoff: float) -> int:
        """Drop any entry that arrived at or before `cutoff`."""
        return self.expire(cutoff, cutoff, len(self))

    def oldest_age(self, now: float) -> float | None:
        arrivals = [_first_arrival(d) for d in (self._readings, self._samples) if d]
        return now - min(arrivals) if arrivals else None

    # --- internals --------------------------------------------------------------------

    def _all_readings(self) -> Iterator[_Entry]:
        return chain(self._readings.values(), self._samples.values())

    def _release(self, closed_before: datetime | None) -> None:
        heap = self._release_heap
        while heap and (closed_before is None or heap[0][0] <= closed_before):
            _, _, key = heapq.heappop(heap)
            if key in self._samples:
                self._released[key] = None

    def _discard_readings(self, keys: Iterable[ReadingKey]) -> int:
        segments: Counter[int] = Counter()
        replayed = self._replayed
        for key in keys:
            entry = self._readings.pop(key, None)
            if entry is None:
                entry = self._samples.pop(key, None)
                if entry is None:
                    continue
                self._released.pop(key, None)
            segments[entry[2]] += 1
            if replayed:
                replayed.discard(key)
        if len(self._release_heap) > 2 * len(self._samples) + 1024:
            # Samples settled before their release (a standby's confirmations) leave
            # stale heap entries: rebuild, so the heap stays within 2x the samples.
            self._release_heap = [e for e in self._release_heap if e[2] in self._samples]
            heapq.heapify(self._release_heap)
        self._settled(segments)
        return segments.total()

    def _discard_rejects(self, keys: Iterable[RejectKey]) -> None:
        segments: Counter[int] = Counter()
        replayed = self._replayed
        for key in keys:
            entry = self._rejects.pop(key, None)
            if entry is not None:
                segments[entry[2]] += 1
                if replayed:
                    replayed.discard(key)
        self._settled(segments)

    def _settled(self, segments: Counter[int]) -> None:
        if segments and self._on_settled is not None:
            self._on_settled(segments.items())

    def _after_change(self) -> None:
        size = len(self)
        if size >= self.max_items:
            self._space.clear()
        else:
            self._space.set()
        if size:
            self._not_empty.set()
        else:
            self._not_empty.clear()


def _first_arrival(
    entries: dict[ReadingKey, _Entry] | dict[RejectKey, tuple[float, Reject, int]],
) -> float:
    """Arrival of the first (oldest: insertion order is arrival order) entry."""
    return next(iter(entries.values()))[0]
