"""The writer side of an instance.

On the leader it flushes the pending buffer every FLUSH_INTERVAL_S, or as soon as
BATCH_MAX rows are waiting. On a standby it trims the buffer of what the leader has
committed. It never touches SQL itself: `Store` does.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from aupus_ha import constants
from aupus_ha.config import Settings
from aupus_ha.database.connection import (
    DatabaseUnavailable,
    ErrorKind,
    classify,
    describe_error,
    sqlstate,
)
from aupus_ha.leadership.ha import HaLoop
from aupus_ha.logs import get_logger
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.readings import Reading
from aupus_ha.pipeline.store import Fenced, FlushResult, LeaderProgress, Store

log = get_logger(__name__)

# A standby probes its buffer in windows of this many keys (one query each), at most
# PROBE_WINDOWS_PER_TICK windows per flush interval, resuming where it stopped: the
# whole buffer is covered in turn, however much of its front can never be confirmed.
PROBE_BATCH = 5000
PROBE_WINDOWS_PER_TICK = 4
# Entries a standby looks at per tick when expiring (the oldest ones).
EXPIRE_SCAN_MAX = 50_000
# A standby never expires an entry the leader has not reported processing (see
# `StandbyTrim`). Beyond that it keeps entries it could not confirm for at least
# this long — readings timed by arrival (when no content match was found) and rejects
# (capped by STANDBY_HORIZON_S)...
UNMATCHABLE_HORIZON_S = 60.0
# ...and readings with a device time (the leader refused them, or a leader of another
# version keyed them differently), logging what it drops: STANDBY_HORIZON_S, default
UNCONFIRMED_HORIZON_S = 600.0
# Added to the leader's reported lag before anything is expired: covers the difference
# between the moments a message reaches the leader and the standby, messages in flight
# (PUBACK window, spool group commit), heartbeat latency, and a leader draining its
# broker queue after a reconnect (it must have been connected at least this long).
# Capped by STANDBY_HORIZON_S (tests run with a few seconds).
WATERMARK_MARGIN_S = 60.0


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


# Told of every committed flush (the metrics' latency histogram): an observer, so the
# store needs no timing subclass and the flusher no metrics import.
FlushObserver = Callable[[FlushResult], None]


def _unobserved(result: FlushResult) -> None:
    return None


class Flusher:
    def __init__(
        self,
        settings: Settings,
        buffer: PendingBuffer,
        store: Store,
        ha: HaLoop,
        on_committed: FlushObserver = _unobserved,
    ) -> None:
        self._settings = settings
        self._on_committed = on_committed
        self._buffer = buffer
        self._store = store
        self._ha = ha
        self._wake = asyncio.Event()
        self._failures_in_row = 0
        self._standby = StandbyTrim(buffer, store, settings.standby_horizon_s)
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
        self._on_committed(result)
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
        """Standby: forget what the leader has committed, expire only what the leader
        reports having processed (`StandbyTrim`)."""
        await self._standby.tick(self._settings.flush_interval_s)


class StandbyTrim:
    """A standby's trimming, resumable over the whole buffer.

    Every tick it probes up to PROBE_WINDOWS_PER_TICK windows of PROBE_BATCH keys,
    continuing after the last window of the previous tick and wrapping at the end, so
    a front that can never be confirmed (readings the leader refused, a burst without
    device time) does not hide the rest. Then, independently of what was confirmed, it
    expires what the leader reports having processed: an entry goes only when it is
    older than its horizon *and* than the leader's lag plus WATERMARK_MARGIN_S, and the
    leader has been connected to the broker for at least the margin. With no such
    report (no live leader, a leader of the previous version, a leader replaying its
    spool) nothing is expired: the buffer and spool bounds apply instead.
    """

    def __init__(
        self, buffer: PendingBuffer, store: Store, horizon_s: float = UNCONFIRMED_HORIZON_S
    ) -> None:
        self._buffer = buffer
        self._store = store
        self.unconfirmed_horizon_s = horizon_s
        self.unmatchable_horizon_s = min(UNMATCHABLE_HORIZON_S, horizon_s)
        self.margin_s = min(WATERMARK_MARGIN_S, horizon_s)
        self._reading_pos = 0
        self._reject_pos = 0
        self._paused: str | None = None

    async def tick(self, min_age_s: float) -> None:
        now = time.monotonic()
        # Entries younger than one flush interval cannot be committed yet: skip them.
        cutoff = now - min_age_s
        try:
            for _ in range(PROBE_WINDOWS_PER_TICK):
                if not await self._probe_readings(cutoff):
                    break
            for _ in range(PROBE_WINDOWS_PER_TICK):
                if not await self._probe_rejects(cutoff):
                    break
            if not len(self._buffer):
                return  # nothing left to expire: no need to ask how far the leader is
            progress = await self._store.leader_progress()
        except Exception as exc:  # a probe never stops the standby: try again next tick
            if classify(exc) is ErrorKind.TRANSIENT:
                log.debug("standby.probe_failed", error=describe_error(exc))
            else:
                log.warning("standby.probe_failed", error=describe_error(exc))
            return
        self._expire(now, progress)

    async def _probe_readings(self, cutoff: float) -> bool:
        """One window; False once the end of the buffer was reached (next tick wraps)."""
        window, scanned = self._buffer.readings_window(self._reading_pos, PROBE_BATCH, cutoff)
        by_key: list[Reading] = []
        by_content: list[Reading] = []
        for r in window:  # readings timed by arrival: by content (the key is ours alone)
            (by_key if r.matchable or r.is_rollup_sample else by_content).append(r)
        try:
            found = await self._store.committed_readings(by_key)
            if by_content:
                found += await self._store.committed_by_content(by_content)
        except Exception as exc:
            self._window_failed(exc, len(window))
            found = []
        self._buffer.confirmed(found, [])
        if scanned < PROBE_BATCH:
            self._reading_pos = 0
            return False
        self._reading_pos += scanned - len(set(found))
        return True

    async def _probe_rejects(self, cutoff: float) -> bool:
        window, scanned = self._buffer.rejects_window(self._reject_pos, PROBE_BATCH, cutoff)
        try:
            found = await self._store.committed_rejects(window)
        except Exception as exc:
            self._window_failed(exc, len(window))
            found = []
        self._buffer.confirmed([], found)
        if scanned < PROBE_BATCH:
            self._reject_pos = 0
            return False
        self._reject_pos += scanned - len(found)
        return True

    @staticmethod
    def _window_failed(exc: Exception, entries: int) -> None:
        """A probe the database refused for what the window holds, not for its state:
        skip the window (its entries stay; the next pass tries again), log it."""
        if classify(exc) is ErrorKind.TRANSIENT:
            raise exc
        log.warning("standby.probe_failed", error=describe_error(exc), entries=entries)

    def _expire(self, now: float, progress: LeaderProgress | None) -> None:
        reason = _expiry_blocked(progress, self.margin_s)
        self._note_pause(reason)
        if reason is not None or progress is None or progress.lag_s is None:
            return
        behind = progress.lag_s + self.margin_s
        dropped = self._buffer.expire(
            now - max(self.unmatchable_horizon_s, behind),
            now - max(self.unconfirmed_horizon_s, behind),
            EXPIRE_SCAN_MAX,
        )
        if dropped:
            log.warning(
                "standby.unconfirmed_dropped",
                count=dropped,
                horizon_s=self.unconfirmed_horizon_s,
                leader_lag_s=round(progress.lag_s, 3),
                pending=len(self._buffer),
            )

    def _note_pause(self, reason: str | None) -> None:
        if reason == self._paused:
            return
        if reason is None:
            log.info("standby.expiry_resumed", pending=len(self._buffer))
        else:
            log.info("standby.expiry_paused", reason=reason, pending=len(self._buffer))
        self._paused = reason


def _expiry_blocked(progress: LeaderProgress | None, margin_s: float) -> str | None:
    """Why a standby may not expire anything now (None: it may, up to the watermark)."""
    if progress is None:
        return "no_leader"
    if progress.lag_s is None:
        return "no_progress_published"
    if progress.connected_for_s is None or progress.connected_for_s < margin_s:
        return "leader_broker_not_settled"
    return None


class FlushProgress:
    """What every instance publishes in its heartbeat stats about its flush progress;
    standbys read the leader's (`Store.leader_progress`).

    `backlog_age_s`: seconds since the oldest entry still pending here arrived —
    everything older has been written, merged, rejected or refused. None (so standbys
    expire nothing) while acknowledged entries wait on disk only or entries handed over
    from the spool are pending: their real arrival is unknown. `mqtt_connected_for_s`:
    how long the broker connection has been up (None: down).
    """

    def __init__(self, buffer: PendingBuffer) -> None:
        self._buffer = buffer

    def stats(self, *, connected_since: float | None, disk_backlog: bool) -> dict[str, object]:
        """`connected_since`: monotonic time the current broker connection came up."""
        now = time.monotonic()
        age = None if disk_backlog else self._buffer.unprocessed_age(now)
        up = None if connected_since is None else now - connected_since
        return {
            "backlog_age_s": None if age is None else round(age, 3),
            "mqtt_connected_for_s": None if up is None else round(up, 3),
        }
