"""From a decoded message to a durable, pending entry — and back from disk after a crash.

    decoded message -> spool append (group-committed fsync) -> pending buffer -> PUBACK

Before anything is spooled, a message's rejects go through the reject policy
(`rejects.py`: rate-limited per topic, payload cut to a bounded prefix), so a flood of
bad messages costs neither disk nor memory nor database rows beyond those bounds.

The hand-over to the buffer happens in file order, right when a record becomes durable.
While the buffer is full (nobody can write: the database is down, or the leader is not
progressing), records stay on disk only: the spool's replay cursor marks the first of
them, and the replay task hands them over, in order, as the buffer drains. The same
replay path brings back what an earlier process of this instance left in its spool.

No single record can stop the replay: one that cannot be read (another version's,
damaged in a way its checksum missed, or forged by someone who could write the
directory) is skipped, counted (`spool.stats.bad_records`) and logged with its position.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aupus_ha.logs import get_logger
from aupus_ha.pipeline import spool_codec
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.readings import Decoded, Reading
from aupus_ha.pipeline.rejects import RejectPolicy
from aupus_ha.pipeline.spool import Record, Spool

log = get_logger(__name__)

# Bytes read from the spool per replay step (~3,000 generic readings): how far a replay
# may overshoot BUFFER_MAX_MESSAGES.
REPLAY_CHUNK_BYTES = 1024 * 1024
# Unreadable records logged one by one at error level per process; the rest are counted
# (a forged or foreign segment may hold thousands).
BAD_RECORDS_LOGGED = 20

Convention = Callable[[Reading], Reading]


class DurableIntake:
    def __init__(
        self, buffer: PendingBuffer, spool: Spool, rejects: RejectPolicy | None = None
    ) -> None:
        self._buffer = buffer
        self._spool = spool
        self._rejects = rejects  # None: every reject is kept whole (tests, tools)
        self._convention: Convention | None = None  # None: keys are stored as decoded
        self._backlog = asyncio.Event()
        self.replayed = 0
        self.spilled = 0

    def open(self, convention: Convention | None) -> None:
        """Open the spool; anything an earlier process left is queued for replay."""
        self._convention = convention
        self._spool.open(self._on_durable)
        if self._spool.replay_cursor is not None:
            self._backlog.set()

    @property
    def backlog(self) -> bool:
        """Are there acknowledged entries on disk that are not in memory yet?"""
        return self._spool.replay_cursor is not None

    def accept(self, decoded: Decoded) -> Awaitable[object] | None:
        """What completes once the message is durable on this host (then it may be
        PUBACKed); None when there is nothing to keep."""
        if decoded.rejects and self._rejects is not None:
            decoded.rejects = self._rejects.keep(decoded.rejects)
        if decoded.readings or decoded.rejects:
            return self._spool.append(spool_codec.encode(decoded), decoded)
        return None

    def _on_durable(self, record: Record, decoded: Decoded) -> None:
        if self.backlog:
            self.spilled += 1
            return  # behind older records on disk: the replay hands it over in order
        if not self._buffer.has_room:
            log.warning(
                "buffer.spilling",
                pending=len(self._buffer),
                max=self._buffer.max_items,
                spool_bytes=self._spool.total_bytes,
            )
            self._spool.start_replay(record.position)
            self._backlog.set()
            self.spilled += 1
            return
        self._hand_over(record, self._converted(decoded))

    def _converted(self, decoded: Decoded) -> Decoded:
        if self._convention is not None and decoded.readings:
            decoded.readings = [self._convention(r) for r in decoded.readings]
        return decoded

    def _hand_over(self, record: Record, decoded: Decoded, *, replayed: bool = False) -> None:
        segment = record.position.segment
        self._spool.taken(segment, len(decoded.readings) + len(decoded.rejects))
        # A replayed record arrived before now, by an unknown amount: the buffer keeps
        # the leader's published flush progress back until it is written.
        self._buffer.add(decoded, time.monotonic(), segment, replayed=replayed)

    # --- replay -------------------------------------------------------------------------

    async def run_replay(self) -> None:
        """Hand spooled records to the buffer, oldest first, as room appears."""
        while True:
            await self._backlog.wait()
            if not self.backlog:
                self._backlog.clear()
                log.info("spool.replay_caught_up", replayed=self.replayed)
                continue
            await self._buffer.wait_for_space()
            await self._replay_step()

    async def _replay_step(self) -> None:
        records, damaged = await self._spool.read_backlog(REPLAY_CHUNK_BYTES)
        for record in records:
            decoded = self._readable(record)
            if decoded is not None:
                self._hand_over(record, decoded, replayed=True)
        self.replayed += len(records)
        self._spool.advance(records, damaged_rest=damaged)

    def _readable(self, record: Record) -> Decoded | None:
        """The record's message with the key convention applied, or None (skipped)."""
        try:
            return self._converted(spool_codec.decode(record.body))
        except Exception as exc:  # any single record, whatever is wrong with it
            stats = self._spool.stats
            stats.bad_records += 1
            level = log.error if stats.bad_records <= BAD_RECORDS_LOGGED else log.debug
            level(
                "spool.unreadable_record",
                segment=record.position.segment,
                offset=record.position.offset,
                bytes=len(record.body),
                error=f"{type(exc).__name__}: {exc}"[:300],
                skipped_so_far=stats.bad_records,
            )
            return None
