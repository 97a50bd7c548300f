"""The writer side of an instance.

On the leader it flushes the pending buffer every FLUSH_INTERVAL_S, or as soon as
BATCH_MAX rows are waiting. On a standby it trims the buffer of what the leader has
committed. It never touches SQL itself: `Store` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aupus_ha import constants
from aupus_ha.buffer import PendingBuffer
from aupus_ha.config import Settings
from aupus_ha.db import DatabaseUnavailable, describe_error, sqlstate
from aupus_ha.ha import HaLoop
from aupus_ha.logs import get_logger
from aupus_ha.store import Fenced, FlushResult, Store

log = get_logger(__name__)

PROBE_BATCH = 5000
# A standby keeps unconfirmable entries (readings without a payload timestamp) for this
# long: enough to cover a failover, bounded so memory cannot grow without end.
UNMATCHABLE_HORIZON_S = 60.0
# ...and confirmable ones that the leader never stored (it refused them, or a leader of
# another version keyed them differently) for this long, logging what it drops.
UNCONFIRMED_HORIZON_S = 600.0


@dataclass(slots=True)
class FlushStats:
    flushes: int = 0
    rows: int = 0
    merged: int = 0
    duplicates: int = 0
    rejects: int = 0
    refused: int = 0
    failures: int = 0
    fenced: int = 0
    last_ms: float = 0.0
    last_flush_monotonic: float = 0.0


class Flusher:
    def __init__(self, settings: Settings, buffer: PendingBuffer, store: Store, ha: HaLoop) -> None:
        self._settings = settings
        self._buffer = buffer
        self._store = store
        self._ha = ha
        self._wake = asyncio.Event()
        self._failures_in_row = 0
        self.stats = FlushStats()
        self.last_flush_at: datetime | None = None

    def nudge(self) -> None:
        """Called by the intake when a full batch is waiting."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wait_for_work()
            try:
                if self._ha.is_leader():
                    await self._flush_until_drained()
                elif self._ha.role == constants.ROLE_STANDBY:
                    await self._trim_confirmed()
            except Exception as exc:  # the writer outlives any one step: back off, go on
                self._failed(exc, len(self._buffer), event="flusher.step_failed")

    async def final_flush(self, deadline_s: float) -> None:
        """On graceful stop: write what can be written before the lock is released."""
        end = time.monotonic() + deadline_s
        while self._ha.is_leader() and len(self._buffer) and time.monotonic() < end:
            # Open minutes too: a later sample merges into the row deterministically.
            if not await self._flush_batch(final=True):
                break

    async def _wait_for_work(self) -> None:
        delay = self._settings.flush_interval_s
        if self._failures_in_row:
            delay = min(5.0, delay * 2 ** min(self._failures_in_row, 6))
        promoted = (
            asyncio.ensure_future(self._ha.promoted.wait()) if not self._ha.is_leader() else None
        )
        wake = asyncio.ensure_future(self._wake.wait())
        waiters = {wake} | ({promoted} if promoted else set())
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._wake.clear()

    async def _flush_until_drained(self) -> None:
        # Keep going while full batches wait, so a backlog drains at COPY speed.
        while self._ha.is_leader():
            if not await self._flush_batch():
                return
            if self._buffer.readings_pending < self._settings.batch_max:
                return

    async def _flush_batch(self, *, final: bool = False) -> bool:
        epoch = self._ha.epoch
        closed_before = None if final else self._rollup_cutoff()
        readings, rejects = self._buffer.oldest(self._settings.batch_max, closed_before)
        if epoch is None or not (readings or rejects):
            return False
        try:
            result = await self._store.flush(readings, rejects, epoch)
        except Fenced as fenced:
            self.stats.fenced += 1
            self._ha.fenced(fenced.mine, fenced.current)
            return False
        except Exception as exc:  # DatabaseUnavailable, or a bug: keep the batch, back off
            self._failed(exc, len(readings) + len(rejects))
            return False
        self._buffer.committed(readings, rejects)
        self._committed(result, epoch)
        return True

    def _rollup_cutoff(self) -> datetime:
        """Minutes that ended before this instant (minus the grace period) are closed."""
        return datetime.now(UTC) - timedelta(seconds=self._settings.rollup_grace_s)

    def _committed(self, result: FlushResult, epoch: int) -> None:
        self._failures_in_row = 0
        s = self.stats
        s.flushes += 1
        s.rows += result.rows
        s.merged += result.merged
        s.duplicates += result.duplicates
        s.rejects += result.rejects
        s.refused += result.refused
        s.last_ms = result.ms
        s.last_flush_monotonic = time.monotonic()
        self.last_flush_at = datetime.now(UTC)
        log.info(
            "flush.committed",
            epoch=epoch,
            rows=result.rows,
            merged=result.merged,
            duplicates=result.duplicates,
            rejects=result.rejects,
            refused=result.refused,
            ms=round(result.ms, 2),
            pending=len(self._buffer),
        )

    def _failed(self, exc: Exception, batch: int, event: str = "flush.failed") -> None:
        """Count and log a failed step; the next wait backs off (up to 5 s)."""
        self._failures_in_row += 1
        self.stats.failures += 1
        unexpected = not isinstance(exc, DatabaseUnavailable)
        log.log(
            logging.ERROR if unexpected else logging.WARNING,
            event,
            error=str(exc) if not unexpected else describe_error(exc),
            sqlstate=sqlstate(exc),
            batch=batch,
            pending=len(self._buffer),
            attempt=self._failures_in_row,
            exc_info=unexpected,
        )

    async def _trim_confirmed(self) -> None:
        now = time.monotonic()
        # Entries younger than one flush interval cannot be committed yet: skip them.
        cutoff = now - self._settings.flush_interval_s
        confirmed = 0
        try:
            while True:
                readings = self._buffer.readings_older_than(cutoff, PROBE_BATCH)
                rejects = self._buffer.rejects_older_than(cutoff, PROBE_BATCH)
                found = await self._store.committed_readings(readings)
                found_rejects = await self._store.committed_rejects(rejects)
                self._buffer.confirmed(found, found_rejects)
                confirmed += len(found)
                if len(readings) < PROBE_BATCH or not found:
                    break
        except DatabaseUnavailable as exc:
            log.debug("standby.probe_failed", error=str(exc))
            return
        if not confirmed:
            return  # the leader made no visible progress: drop nothing
        self._buffer.expire_unmatchable(now - UNMATCHABLE_HORIZON_S)
        dropped = self._buffer.expire_unconfirmed(now - UNCONFIRMED_HORIZON_S)
        if dropped:
            log.warning(
                "standby.unconfirmed_dropped", count=dropped, horizon_s=UNCONFIRMED_HORIZON_S
            )
