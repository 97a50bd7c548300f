"""From a decoded message to a durable, pending entry — and back from disk after a crash.

    decoded message -> spool append (group-committed fsync) -> pending buffer -> PUBACK

The hand-over to the buffer happens in file order, right when a record becomes durable.
While the buffer is full (nobody can write: the database is down, or the leader is not
progressing), records stay on disk only: the spool's replay cursor marks the first of
them, and the replay task hands them over, in order, as the buffer drains. The same
replay path brings back what an earlier process of this instance left in its spool.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aupus_ha import spool_codec
from aupus_ha.buffer import PendingBuffer
from aupus_ha.logs import get_logger
from aupus_ha.readings import Decoded, Reading
from aupus_ha.spool import Record, Spool

log = get_logger(__name__)

# Bytes read from the spool per replay step (~3,000 generic readings): how far a replay
# may overshoot BUFFER_MAX_MESSAGES.
REPLAY_CHUNK_BYTES = 1024 * 1024

Convention = Callable[[Reading], Reading]


class DurableIntake:
    def __init__(self, buffer: PendingBuffer, spool: Spool) -> None:
        self._buffer = buffer
        self._spool = spool
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
        self._hand_over(record, decoded)

    def _hand_over(self, record: Record, decoded: Decoded) -> None:
        if self._convention is not None and decoded.readings:
            decoded.readings = [self._convention(r) for r in decoded.readings]
        segment = record.position.segment
        self._spool.taken(segment, len(decoded.readings) + len(decoded.rejects))
        self._buffer.add(decoded, time.monotonic(), segment)

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
            try:
                decoded = spool_codec.decode(record.body)
            except (ValueError, KeyError, IndexError, TypeError) as exc:
                # A whole record with a valid checksum that we cannot read: written by
                # another version. Logged with its position and skipped.
                log.error("spool.unreadable_record", position=record.position, error=str(exc))
                continue
            self._hand_over(record, decoded)
        self.replayed += len(records)
        self._spool.advance(records, damaged_rest=damaged)
