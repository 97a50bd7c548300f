"""The pending buffer: what this instance holds that may not be committed yet.

Every instance receives every message. The leader removes entries when its flush
commits; a standby removes them when it sees them committed by the leader (probing the
natural keys), so its memory is bounded by message rate × the leader's flush lag. On
promotion the standby flushes whatever is left; rows the old leader already wrote are
skipped by `ON CONFLICT DO NOTHING`.

Entries are kept in arrival order (dicts preserve insertion order), so "older than"
is a prefix and a batch is the oldest N.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

from aupus_ha.readings import Decoded, Reading, ReadingKey, Reject, RejectKey
from aupus_ha.rollup import BUCKET, bucket_start

# Spool segment of an entry that did not come through the spool (segments start at 1).
NO_SEGMENT = 0
# Told, per spool segment, how many entries left the buffer: the spool deletes a segment
# once nothing of it is pending any more.
SettleHook = Callable[[Iterable[tuple[int, int]]], None]


@dataclass(slots=True)
class BufferStats:
    added: int = 0
    duplicates: int = 0  # same natural key already pending (MQTT redelivery, repeats)
    committed: int = 0  # removed after our own flush
    confirmed: int = 0  # removed because the leader had committed them
    expired: int = 0  # unmatchable entries dropped by a standby after the horizon


class PendingBuffer:
    """Readings and rejects keyed by natural key, oldest first, bounded."""

    def __init__(self, max_items: int, on_settled: SettleHook | None = None) -> None:
        self.max_items = max_items
        self._on_settled = on_settled
        # key -> (arrival, entry, spool segment it was read from)
        self._readings: dict[ReadingKey, tuple[float, Reading, int]] = {}
        self._rejects: dict[RejectKey, tuple[float, Reject, int]] = {}
        self._space = asyncio.Event()
        self._space.set()
        self._not_empty = asyncio.Event()
        self.stats = BufferStats()

    def __len__(self) -> int:
        return len(self._readings) + len(self._rejects)

    @property
    def readings_pending(self) -> int:
        return len(self._readings)

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

    def add(self, decoded: Decoded, arrived: float, segment: int = NO_SEGMENT) -> None:
        refused = 0
        for reading in decoded.readings:
            key = reading.key
            if key in self._readings:
                self.stats.duplicates += 1
                refused += 1
                continue
            self._readings[key] = (arrived, reading, segment)
            self.stats.added += 1
        for reject in decoded.rejects:
            if reject.key in self._rejects:
                refused += 1
                continue
            self._rejects[reject.key] = (arrived, reject, segment)
        if refused and self._on_settled is not None:
            self._on_settled([(segment, refused)])
        self._after_change()

    def wait_not_empty(self) -> asyncio.Event:
        return self._not_empty

    # --- leader side ----------------------------------------------------------------

    def oldest(
        self, limit: int, closed_before: datetime | None = None
    ) -> tuple[list[Reading], list[Reject]]:
        """The oldest pending entries. Rollup samples wait until their minute has closed
        (`closed_before`); None releases every sample (a final flush)."""
        readings: list[Reading] = []
        for _, reading, _ in self._readings.values():
            if len(readings) >= limit:
                break
            if closed_before is not None and _bucket_open(reading, closed_before):
                continue
            readings.append(reading)
        rejects = [r for _, r, _ in islice(self._rejects.values(), limit)]
        return readings, rejects

    def committed(self, readings: Iterable[Reading], rejects: Iterable[Reject]) -> None:
        """Our own flush committed these: forget them."""
        self.stats.committed += self._discard_readings(r.key for r in readings)
        self._discard_rejects(r.key for r in rejects)
        self._after_change()

    # --- standby side ---------------------------------------------------------------

    def readings_older_than(self, cutoff: float, limit: int) -> list[Reading]:
        return [r for t, r, _ in islice(self._readings.values(), limit) if t <= cutoff]

    def rejects_older_than(self, cutoff: float, limit: int) -> list[Reject]:
        return [r for t, r, _ in islice(self._rejects.values(), limit) if t <= cutoff]

    def confirmed(
        self, reading_keys: Iterable[ReadingKey], reject_keys: Iterable[RejectKey]
    ) -> None:
        """The leader has committed these: a standby no longer needs them."""
        self.stats.confirmed += self._discard_readings(reading_keys)
        self._discard_rejects(reject_keys)
        self._after_change()

    def expire_unmatchable(self, cutoff: float) -> int:
        """Drop entries older than `cutoff` that no probe can ever confirm.

        Readings without a payload timestamp carry this instance's arrival time as key;
        the leader stored them under its own arrival time. Held for a bounded horizon
        (enough to cover a failover), then dropped, so memory stays bounded.
        """
        stale = [k for k, (t, r, _) in self._readings.items() if t <= cutoff and not r.matchable]
        stale_rejects = [k for k, (t, _, _) in self._rejects.items() if t <= cutoff]
        self._discard_readings(stale)
        self._discard_rejects(stale_rejects)
        self.stats.expired += len(stale)
        self._after_change()
        return len(stale)

    def expire_unconfirmed(self, cutoff: float) -> int:
        """Drop confirmable readings older than `cutoff` that the leader never stored."""
        stale = []
        for key, (arrived, _, _) in self._readings.items():
            if arrived > cutoff:
                break
            stale.append(key)
        removed = self._discard_readings(stale)
        self.stats.expired += removed
        self._after_change()
        return removed

    def oldest_age(self, now: float) -> float | None:
        for arrived, _, _ in self._readings.values():
            return now - arrived
        return None

    # --- internals --------------------------------------------------------------------

    def _discard_readings(self, keys: Iterable[ReadingKey]) -> int:
        segments: Counter[int] = Counter()
        for key in keys:
            entry = self._readings.pop(key, None)
            if entry is not None:
                segments[entry[2]] += 1
        self._settled(segments)
        return segments.total()

    def _discard_rejects(self, keys: Iterable[RejectKey]) -> None:
        segments: Counter[int] = Counter()
        for key in keys:
            entry = self._rejects.pop(key, None)
            if entry is not None:
                segments[entry[2]] += 1
        self._settled(segments)

    def _settled(self, segments: Counter[int]) -> None:
        if segments and self._on_settled is not None:
            self._on_settled(segments.items())

    def has_ready(self, closed_before: datetime) -> bool:
        """Is anything writable now (not only samples of still-open minutes)?"""
        ready, rejects = self.oldest(1, closed_before)
        return bool(ready or rejects)

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


def _bucket_open(reading: Reading, closed_before: datetime) -> bool:
    sample_at = reading.sample_at
    return sample_at is not None and bucket_start(sample_at) + BUCKET > closed_before
