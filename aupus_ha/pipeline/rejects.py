"""What bad messages may cost: `ingest_rejects` bounded in size, in rate and in age.

Anyone who can publish to a device topic can send bad messages, and each distinct one
used to keep up to MAX_PAYLOAD_BYTES (256 KiB) in the spool, in memory on every instance
and in the database, for ever. Three bounds, each a setting (docs/configuration.md):

* Size (`bounded`): a reject keeps the first REJECT_PAYLOAD_PREFIX_BYTES of the message,
  with the SHA-256 and the size of the whole. The SHA-256 stays the row's key, so a
  reject is still one row whichever instance writes it.
* Rate (`RejectLimiter`): a token bucket per topic (REJECT_RATE_PER_MIN, bursts of
  REJECT_BURST). Beyond it a reject is counted (`aupus_ha_rejects_rate_limited_total`)
  but not kept; one log line when a topic starts being limited, one when it ends. The
  buckets are per instance: near the limit two instances may keep different rejects (a
  reject is evidence, not a reading: nothing is lost that the counters do not show).
* Age (`RejectRetention`): the leader deletes rows older than REJECT_RETENTION_DAYS, in
  batches, using the `created_at` index.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

import asyncpg

from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.logs import get_logger
from aupus_ha.pipeline.readings import Reject

log = get_logger(__name__)

# Topics tracked at once; beyond, buckets that refilled are forgotten (a full bucket is
# the same as no bucket), and if none has, new topics share one overflow bucket.
MAX_TRACKED_TOPICS = 10_000
OVERFLOW_TOPIC = "\x00overflow"
RETENTION_INTERVAL_S = 600.0
RETENTION_BATCH = 5_000


def bounded(reject: Reject, prefix_bytes: int) -> Reject:
    """The reject with at most `prefix_bytes` of its payload, its hash and size intact."""
    if len(reject.payload) <= prefix_bytes:
        return reject
    whole = reject.payload_bytes if reject.payload_bytes is not None else len(reject.payload)
    return replace(reject, payload=reject.payload[:prefix_bytes], payload_bytes=whole)


def payload_size(reject: Reject) -> int:
    """Bytes of the whole message (the payload may be a prefix of it)."""
    return reject.payload_bytes if reject.payload_bytes is not None else len(reject.payload)


class _Bucket:
    __slots__ = ("suppressed", "tokens", "updated")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.updated = now
        self.suppressed = 0  # in the current episode (while empty)


class RejectLimiter:
    """A token bucket per topic: `burst` rejects at once, then `rate_per_s` on average."""

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_topics: int = MAX_TRACKED_TOPICS,
    ) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._clock = clock
        self._max_topics = max_topics
        self._buckets: dict[str, _Bucket] = {}
        self.suppressed = 0  # rejects counted but not kept, since start

    def admit(self, topic: str) -> bool:
        now = self._clock()
        bucket = self._bucket(topic, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate_per_s)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            if bucket.suppressed:
                log.info("rejects.rate_limit_ended", topic=topic, suppressed=bucket.suppressed)
                bucket.suppressed = 0
            return True
        if not bucket.suppressed:
            log.warning(
                "rejects.rate_limited",
                topic=topic,
                rate_per_min=self.rate_per_s * 60,
                burst=self.burst,
            )
        bucket.suppressed += 1
        self.suppressed += 1
        return False

    @property
    def tracked_topics(self) -> int:
        return len(self._buckets)

    def _bucket(self, topic: str, now: float) -> _Bucket:
        bucket = self._buckets.get(topic)
        if bucket is not None:
            return bucket
        if len(self._buckets) >= self._max_topics:
            self._forget_refilled(now)
        if len(self._buckets) >= self._max_topics:
            topic = OVERFLOW_TOPIC
            bucket = self._buckets.get(topic)
            if bucket is not None:
                return bucket
        bucket = self._buckets[topic] = _Bucket(float(self.burst), now)
        return bucket

    def _forget_refilled(self, now: float) -> None:
        full_after = self.burst / self.rate_per_s if self.rate_per_s > 0 else float("inf")
        for topic in [t for t, b in self._buckets.items() if now - b.updated >= full_after]:
            del self._buckets[topic]


class RejectPolicy:
    """What the intake keeps of a message's rejects: rate-limited, then bounded."""

    def __init__(self, limiter: RejectLimiter, prefix_bytes: int) -> None:
        self.limiter = limiter
        self.prefix_bytes = prefix_bytes

    def keep(self, rejects: list[Reject]) -> list[Reject]:
        return [bounded(r, self.prefix_bytes) for r in rejects if self.limiter.admit(r.topic)]


class RejectsStore(Protocol):
    async def delete_old_rejects(self, older_than_s: float, limit: int) -> int: ...


class RejectRetention:
    """The leader's periodic, batched delete of rejects older than the retention."""

    def __init__(
        self,
        store: RejectsStore,
        is_leader: Callable[[], bool],
        retention_s: float,
        *,
        interval_s: float = RETENTION_INTERVAL_S,
        batch: int = RETENTION_BATCH,
    ) -> None:
        self._store = store
        self._is_leader = is_leader
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.batch = batch
        self.deleted = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self.sweep()

    async def sweep(self) -> int:
        """Delete in batches while leading; a database problem waits for the next round."""
        deleted = 0
        try:
            while self._is_leader():
                n = await self._store.delete_old_rejects(self.retention_s, self.batch)
                deleted += n
                if n < self.batch:
                    break
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError, TimeoutError) as exc:
            log.warning("rejects.retention_failed", error=str(exc), deleted=deleted)
        self.deleted += deleted
        if deleted:
            log.info("rejects.retention", deleted=deleted, older_than_s=self.retention_s)
        return deleted
