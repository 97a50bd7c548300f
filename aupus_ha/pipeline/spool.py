"""The local write-ahead spool: what this instance acknowledged, on its own disk.

Durability rule (docs/architecture.md, "Durability"): a message is acknowledged to the
broker (PUBACK) only after what it decoded to is appended to the spool and the append is
durable (`fsync`, group-committed: one write + one fsync for every message that arrived
while the previous fsync ran). From then on the reading lives in two places until the
leader's commit is known — this instance's pending buffer (memory) and the spool (disk) —
so a `kill -9` of the instance, or of its host, loses nothing: at the next start the
spool is replayed into the buffer, and rows already written are skipped by their natural
key.

Layout: `SPOOL_DIR/<cluster>-<instance>/` holds numbered segment files and a lock file.
A segment is an append-only run of records `[u32 length][u32 crc32][body]`; a record cut
short by a crash, or whose checksum does not match, ends the readable part of its segment
— everything before it is recovered, never the whole file refused. A segment is deleted
when it is sealed (a newer one is being written), fully handed to the buffer, and every
entry that came from it has been settled (committed by us, confirmed as committed by the
leader, or dropped as a duplicate).

A failing disk never stops the writer (`run`): a write that fails (ENOSPC, EDQUOT, EIO)
fails its group commit — nothing of it is acknowledged, the broker redelivers — and the
torn bytes it may have left are cut off, so the segment stays usable; a segment that
cannot be created (EMFILE, no inode, a read-only remount) leaves the writer on the
current one. Both are retried with backoff, counted and logged, and end by themselves
when the resource comes back. File-system details (modes, `O_NOFOLLOW`, `O_EXCL`, the
directory checks) live in `spool_files`.

The spool knows bytes and positions, not readings: `spool_codec` turns decoded messages
into record bodies and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from aupus_ha.logs import get_logger
from aupus_ha.pipeline.spool_files import (
    SEGMENT_SUFFIX,
    SegmentFile,
    SpoolLocked,
    SpoolRefused,
    SpoolUntrusted,
    existing_segments,
    open_lock,
    prepare_directory,
    read_at,
)

__all__ = [
    "HEADER",
    "Position",
    "Record",
    "Spool",
    "SpoolLocked",
    "SpoolRefused",
    "SpoolStats",
    "SpoolUntrusted",
]

log = get_logger(__name__)

HEADER = struct.Struct("<II")  # body length, crc32(body)
# A body longer than this cannot be a record of ours: the header itself is damaged.
MAX_RECORD_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 4 * 1024 * 1024
# Backoff after a failed write or segment creation: from the first to the cap, doubling.
WRITE_RETRY_FIRST_S = 0.1
WRITE_RETRY_MAX_S = 5.0


class FsyncFailed(OSError):
    """fsync reported an error: what the file holds is unknown, so it takes no more."""


class Position(NamedTuple):
    """Where a record starts: segment number and byte offset (ordered like the file)."""

    segment: int
    offset: int


class Record(NamedTuple):
    position: Position
    body: bytes


# Called in file order, in the event loop, right after a record became durable: it is
# where the caller hands the record to its buffer (or leaves it for replay).
DurableHandler = Callable[[Record, Any], None]


@dataclass(slots=True)
class SpoolStats:
    records: int = 0
    bytes_written: int = 0
    fsyncs: int = 0
    fsync_seconds: float = 0.0
    segments_deleted: int = 0
    recovered_segments: int = 0
    damaged_bytes: int = 0  # unreadable tails skipped during replay
    full_waits: int = 0
    write_failures: int = 0  # group commits that failed (not acknowledged)
    rotation_failures: int = 0  # segments that could not be created
    bad_records: int = 0  # checksummed records the replay could not read (skipped)
    ignored_files: int = 0  # `.seg` entries that are not regular files (symlinks...)


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int
    sealed: bool
    outstanding: int = 0  # entries from this segment still in the buffer


@dataclass(slots=True)
class _Append:
    body: bytes
    item: Any
    done: asyncio.Future[Position]


class Spool:
    """Append-only segments with group commit, replay from a cursor, and settlement."""

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        segment_bytes: int = 16 * 1024 * 1024,
        segment_max_age_s: float = 10.0,
        fsync: bool = True,
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.segment_max_age_s = segment_max_age_s
        self.fsync = fsync
        self.stats = SpoolStats()
        self._segments: dict[int, _Segment] = {}
        self._current: _Segment | None = None
        self._current_file: SegmentFile | None = None
        self._current_opened = 0.0
        self._next_number = 1
        self._lock_fd: int | None = None
        self._queue: list[_Append] = []
        self._queued = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._on_durable: DurableHandler = _ignore
        # Segments before this position may be deleted; the replay moves it forward.
        self._replay_cursor: Position | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._broken = False  # the current segment takes no more appends
        self._full_noted = False
        self._failures = 0  # consecutive failed attempts: the backoff step
        self._failure_logged = False  # spool.write_failed logged in this episode
        self._create_streak = 0  # consecutive failed segment creations
        self._rotate_not_before = 0.0  # no creation attempt before (monotonic)

    # --- lifecycle ----------------------------------------------------------------------

    def open(self, on_durable: DurableHandler) -> None:
        """Check and lock the directory, find what an earlier process left, start a new
        segment (or leave that to the writer if the file system refuses one now).

        Runs before the event loop has work to do (start-up): plain file calls are fine.
        Raises SpoolRefused (untrusted directory, or locked by another process).
        """
        prepare_directory(self.directory)
        self._lock_fd = open_lock(self.directory)
        self._on_durable = on_durable
        found, ignored, highest = existing_segments(self.directory)
        if ignored:
            self.stats.ignored_files += len(ignored)
            log.error("spool.ignored_files", names=ignored, directory=str(self.directory))
        for number, path, size in found:
            if size == 0:
                path.unlink()
                continue
            self._segments[number] = _Segment(number, path, size, sealed=True)
        self.stats.recovered_segments = len(self._segments)
        if self._segments:
            self._replay_cursor = Position(min(self._segments), 0)
            log.info(
                "spool.recovering",
                segments=len(self._segments),
                bytes=self.total_bytes,
                directory=str(self.directory),
            )
        self._next_number = highest + 1
        try:
            self._install_segment(self._create_next())
        except OSError as exc:
            self._creation_failed(exc)  # the writer creates one when it can
        self._update_room()

    async def close(self) -> None:
        """After `run` is cancelled: finish the write in flight, make it durable, unlock."""
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
        handle, self._current_file = self._current_file, None
        if handle is not None:
            await asyncio.to_thread(_close_quietly, handle, self.fsync)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def run(self) -> None:
        """The writer: one write + fsync per batch of queued appends (group commit).

        Never ends on an OSError: the batch it hit is failed (not acknowledged, the
        broker redelivers it), and the next attempt waits a growing delay.
        """
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queued.wait(), timeout=self.segment_max_age_s)
            self._queued.clear()
            batch, self._queue = self._queue, []
            try:
                await self._ensure_segment()
                if batch:
                    await self._commit(batch)
            except OSError as exc:
                self._fail(batch, exc)
                await asyncio.sleep(self._backoff())
                continue
            if self._failures and batch:
                if self._failure_logged:
                    log.info("spool.write_recovered", after_failures=self._failures)
                self._failures = 0
                self._failure_logged = False

    def _fail(self, batch: list[_Append], exc: OSError) -> None:
        self._failures += 1
        if not batch:
            return  # no segment to write to yet, and nothing waiting: only back off
        self.stats.write_failures += 1
        # Once per episode at error level; the rest of the episode is counted only.
        level = log.debug if self._failure_logged else log.error
        self._failure_logged = True
        level(
            "spool.write_failed",
            error=str(exc),
            errno=exc.errno,
            directory=str(self.directory),
            messages=len(batch),
        )
        for append in batch:
            if not append.done.done():
                append.done.set_exception(exc)

    def _backoff(self) -> float:
        return min(WRITE_RETRY_MAX_S, WRITE_RETRY_FIRST_S * 2.0 ** min(self._failures - 1, 16))

    # --- appending ----------------------------------------------------------------------

    def append(self, body: bytes, item: Any) -> Awaitable[Position]:
        """Queue a record; the awaitable completes once it is durable and was handed to
        `on_durable`.

        Not a coroutine on purpose: with room on disk (the usual case) it returns the
        commit's own future, so the MQTT intake can PUBACK from that future's callback
        without a Task per message (ingest.py). A full spool returns a coroutine that
        waits for room first.
        """
        if not self._room.is_set():
            return self._append_when_room(body, item)
        return self._enqueue(body, item)

    async def _append_when_room(self, body: bytes, item: Any) -> Position:
        self.stats.full_waits += 1
        if not self._full_noted:  # once per episode, not once per waiting message
            self._full_noted = True
            log.warning("spool.full", bytes=self.total_bytes, max_bytes=self.max_bytes)
        await self._room.wait()
        return await self._enqueue(body, item)

    def _enqueue(self, body: bytes, item: Any) -> asyncio.Future[Position]:
        done: asyncio.Future[Position] = asyncio.get_running_loop().create_future()
        self._queue.append(_Append(body, item, done))
        self._queued.set()
        return done

    async def _commit(self, batch: list[_Append]) -> None:
        segment, handle = self._current, self._current_file
        assert segment is not None and handle is not None
        frames = [HEADER.pack(len(a.body), zlib.crc32(a.body)) + a.body for a in batch]
        start = segment.size
        try:
            await self._in_thread(self._write, handle, b"".join(frames))
        except FsyncFailed:
            self._broken = True  # unknown what reached the disk: never append after it
            raise
        except OSError:
            await self._cut_torn_tail(handle, start)
            raise
        # Synchronous from here: positions, hand-off and acknowledgement happen in file
        # order, in one step of the event loop, so a replay cursor is never overtaken.
        offset = start
        for append, frame in zip(batch, frames, strict=True):
            record = Record(Position(segment.number, offset), append.body)
            offset += len(frame)
            self._on_durable(record, append.item)
            if not append.done.done():
                append.done.set_result(record.position)
        segment.size = offset
        self.stats.records += len(batch)
        self.stats.bytes_written += offset - start
        self._update_room()

    async def _cut_torn_tail(self, handle: SegmentFile, durable_end: int) -> None:
        """A failed write may have left part of a frame: cut it, or stop using the file."""
        try:
            await self._in_thread(handle.cut, durable_end)
        except OSError as exc:
            log.warning("spool.segment_abandoned", error=str(exc))
            self._broken = True

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        # Shielded: cancelling the writer must not abandon a write half-way; `close`
        # waits for it before closing the file.
        self._inflight = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight.done():
                self._inflight = None

    def _write(self, handle: SegmentFile, data: bytes) -> None:
        handle.append(data)
        if self.fsync:
            began = time.perf_counter()
            try:
                handle.sync()
            except OSError as exc:
                raise FsyncFailed(exc.errno, exc.strerror) from exc
            self.stats.fsync_seconds += time.perf_counter() - began
            self.stats.fsyncs += 1

    # --- segments -------------------------------------------------------------------------

    async def _ensure_segment(self) -> None:
        """Rotate when the current segment is full, old or unusable. Raises OSError only
        when there is no usable segment at all; a rotation that merely could not happen
        now leaves the writer on the current segment."""
        must = self._current_file is None or self._broken
        if not must and not self._rotation_due():
            return
        if not must and time.monotonic() < self._rotate_not_before:
            return
        try:
            handle = await self._in_thread(self._create_next)
        except OSError as exc:
            self._creation_failed(exc)
            if must:
                raise
            return
        old, old_handle = self._current, self._current_file
        self._install_segment(handle)
        if old is not None:
            old.sealed = True
            self._maybe_delete(old)
        if old_handle is not None:
            # Everything acknowledged in it was fsynced already: a close error loses nothing.
            await self._in_thread(_close_quietly, old_handle, False)

    def _rotation_due(self) -> bool:
        current = self._current
        if current is None or current.size == 0:
            return False
        too_old = time.monotonic() - self._current_opened >= self.segment_max_age_s
        return current.size >= self.segment_bytes or too_old

    def _create_next(self) -> tuple[int, SegmentFile]:
        """A new segment numbered after every name seen (plain file calls: the writer
        runs it in a thread). A name already taken, even by a symlink, is never opened:
        its number is skipped at the next attempt."""
        number = self._next_number
        try:
            handle = SegmentFile.create(self._segment_path(number), self.fsync)
        except FileExistsError:
            self._next_number = number + 1
            raise
        self._next_number = number + 1
        return number, handle

    def _creation_failed(self, exc: OSError) -> None:
        self.stats.rotation_failures += 1
        self._create_streak += 1
        delay = WRITE_RETRY_FIRST_S * 2.0 ** min(self._create_streak - 1, 16)
        self._rotate_not_before = time.monotonic() + min(WRITE_RETRY_MAX_S, delay)
        usable = self._current is not None and not self._broken
        # Once per episode at warning level; the rest of the episode is counted only.
        level = log.warning if self._create_streak == 1 else log.debug
        level(
            "spool.segment_create_failed",
            error=str(exc),
            errno=exc.errno,
            directory=str(self.directory),
            writing_to=self._current.path.name if usable and self._current else None,
        )

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:016d}{SEGMENT_SUFFIX}"

    def _install_segment(self, created: tuple[int, SegmentFile]) -> None:
        number, handle = created
        self._current_file = handle
        self._current = _Segment(number, self._segment_path(number), 0, sealed=False)
        self._segments[number] = self._current
        self._current_opened = time.monotonic()
        self._broken = False
        if self._create_streak:
            log.info("spool.segment_created", segment=self._current.path.name)
        self._create_streak = 0

    # --- settlement ---------------------------------------------------------------------------

    def taken(self, segment: int, entries: int) -> None:
        """`entries` from `segment` went into the buffer."""
        found = self._segments.get(segment)
        if found is not None:
            found.outstanding += entries

    def settle(self, counts: Iterable[tuple[int, int]]) -> None:
        """Entries left the buffer (committed, confirmed, duplicate or expired)."""
        for number, entries in counts:
            segment = self._segments.get(number)
            if segment is None:
                continue
            segment.outstanding -= entries
            self._maybe_delete(segment)

    def _maybe_delete(self, segment: _Segment) -> None:
        cursor = self._replay_cursor
        unreplayed = cursor is not None and segment.number >= cursor.segment
        if not segment.sealed or segment.outstanding > 0 or unreplayed:
            return
        del self._segments[segment.number]
        with contextlib.suppress(FileNotFoundError):
            segment.path.unlink()  # metadata only: cheap, no data is flushed by an unlink
        self.stats.segments_deleted += 1
        self._update_room()

    @property
    def total_bytes(self) -> int:
        return sum(s.size for s in self._segments.values())

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def usage(self) -> float:
        return self.total_bytes / self.max_bytes if self.max_bytes else 0.0

    def _update_room(self) -> None:
        if self.total_bytes < self.max_bytes:
            if self._full_noted:
                log.info("spool.room_again", bytes=self.total_bytes, max_bytes=self.max_bytes)
            self._full_noted = False
            self._room.set()
        else:
            self._room.clear()

    # --- replay -------------------------------------------------------------------------------

    @property
    def replay_cursor(self) -> Position | None:
        return self._replay_cursor

    def start_replay(self, at: Position) -> None:
        """Records from `at` on stay on disk only, until `read_backlog` hands them out."""
        if self._replay_cursor is None:
            self._replay_cursor = at

    async def read_backlog(self, max_bytes: int = READ_CHUNK_BYTES) -> tuple[list[Record], bool]:
        """The next whole records after the replay cursor, and whether the rest of that
        segment is unreadable. Does not move the cursor: `advance` does."""
        cursor = self._replay_cursor
        segment = self._segments.get(cursor.segment) if cursor else None
        if cursor is None or segment is None:
            return [], False
        # Only durable bytes: `size` moves after the fsync, in the event loop.
        records, damaged = await asyncio.to_thread(
            _read_records, segment.path, cursor.segment, cursor.offset, segment.size, max_bytes
        )
        if damaged:
            self.stats.damaged_bytes += damaged
            log.warning(
                "spool.damaged_tail",
                segment=segment.path.name,
                recovered_records=len(records),
                skipped_bytes=damaged,
            )
        return records, bool(damaged)

    def advance(self, records: list[Record], *, damaged_rest: bool = False) -> bool:
        """Move the cursor past `records`; True when the backlog is empty (cursor cleared)."""
        cursor = self._replay_cursor
        if cursor is None:
            return True
        segment = self._segments[cursor.segment]
        if records:
            last = records[-1]
            cursor = Position(cursor.segment, last.position.offset + HEADER.size + len(last.body))
        at_end = damaged_rest or cursor.offset >= segment.size
        if at_end and segment.sealed:
            later = [n for n in self._segments if n > segment.number]
            self._replay_cursor = Position(min(later), 0) if later else None
            self._maybe_delete(segment)
            return self._replay_cursor is None
        if at_end:
            self._replay_cursor = None  # caught up with the writer: the backlog is gone
            return True
        self._replay_cursor = cursor
        return False


def _ignore(record: Record, item: Any) -> None:
    return None


def _read_records(
    path: Path, segment: int, offset: int, end: int, max_bytes: int
) -> tuple[list[Record], int]:
    """Whole, checksummed records in [offset, end) (up to about `max_bytes`), and how many
    bytes from the first unreadable one to `end` (a torn or corrupt tail), else 0."""
    data = read_at(path, offset, max(0, min(end - offset, max_bytes)))
    records: list[Record] = []
    pos = 0
    while pos < len(data):
        if pos + HEADER.size > len(data):
            break
        length, crc = HEADER.unpack_from(data, pos)
        body_start = pos + HEADER.size
        if length > MAX_RECORD_BYTES:
            return records, end - (offset + pos)
        if body_start + length > len(data):
            break
        body = data[body_start : body_start + length]
        if zlib.crc32(body) != crc:
            return records, end - (offset + pos)
        records.append(Record(Position(segment, offset + pos), body))
        pos = body_start + length
    if offset + pos >= end:
        return records, 0
    if offset + len(data) >= end:
        return records, end - (offset + pos)  # the segment ends inside a record: torn
    if not records:
        # One record larger than the chunk: read exactly as much as it needs.
        return _read_records(path, segment, offset, end, HEADER.size + _length_at(data))
    return records, 0


def _length_at(data: bytes) -> int:
    return int(HEADER.unpack_from(data, 0)[0]) if len(data) >= HEADER.size else HEADER.size


def _close_quietly(handle: SegmentFile, fsync: bool) -> None:
    """Close a segment; errors are logged, not raised (its acknowledged part was fsynced)."""
    try:
        if fsync:
            handle.sync()
    except OSError as exc:
        log.warning("spool.close_failed", error=str(exc))
    finally:
        with contextlib.suppress(OSError):
            handle.close()
