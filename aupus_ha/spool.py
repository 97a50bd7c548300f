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

The spool knows bytes and positions, not readings: `spool_codec` turns decoded messages
into record bodies and back.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, NamedTuple

from aupus_ha.logs import get_logger

log = get_logger(__name__)

HEADER = struct.Struct("<II")  # body length, crc32(body)
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "spool.lock"
# A body longer than this cannot be a record of ours: the header itself is damaged.
MAX_RECORD_BYTES = 64 * 1024 * 1024
READ_CHUNK_BYTES = 4 * 1024 * 1024
WRITE_RETRY_S = 1.0


class SpoolLocked(RuntimeError):
    """Another live process already writes this spool directory."""


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
        self._current_file: IO[bytes] | None = None
        self._current_opened = 0.0
        self._lock_file: IO[bytes] | None = None
        self._queue: list[_Append] = []
        self._queued = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._on_durable: DurableHandler = _ignore
        # Segments before this position may be deleted; the replay moves it forward.
        self._replay_cursor: Position | None = None
        self._inflight: asyncio.Future[Any] | None = None
        self._broken = False  # the last write failed: start a new segment first
        self._full_noted = False

    # --- lifecycle ----------------------------------------------------------------------

    def open(self, on_durable: DurableHandler) -> None:
        """Lock the directory, find what an earlier process left, start a new segment.

        Runs before the event loop has work to do (start-up): plain file calls are fine.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_directory(self.directory)
        self._on_durable = on_durable
        for number, path in _existing_segments(self.directory):
            size = path.stat().st_size
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
        number = max(self._segments, default=0) + 1
        self._install_segment(number, _open_segment(self._segment_path(number), self.fsync))
        self._update_room()

    async def close(self) -> None:
        """After `run` is cancelled: finish the write in flight, make it durable, unlock."""
        if self._inflight is not None:
            with contextlib.suppress(Exception):
                await self._inflight
        handle, self._current_file = self._current_file, None
        if handle is not None:
            await asyncio.to_thread(_close_file, handle, self.fsync)
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    async def run(self) -> None:
        """The writer: one write + fsync per batch of queued appends (group commit)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._queued.wait(), timeout=self.segment_max_age_s)
            self._queued.clear()
            batch, self._queue = self._queue, []
            try:
                if self._needs_rotation():
                    await self._rotate()
                if batch:
                    await self._commit(batch)
            except OSError as exc:
                # Disk full or an I/O error: these messages are not acknowledged (the
                # broker redelivers them); the writer stays up and tries a new segment.
                log.error("spool.write_failed", error=str(exc), directory=str(self.directory))
                for append in batch:
                    if not append.done.done():
                        append.done.set_exception(exc)
                self._broken = True
                await asyncio.sleep(WRITE_RETRY_S)

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
        except OSError:
            self._broken = True  # a torn frame may be on disk: never append after it
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

    async def _in_thread(self, func: Callable[..., Any], *args: Any) -> Any:
        # Shielded: cancelling the writer must not abandon a write half-way; `close`
        # waits for it before closing the file.
        self._inflight = asyncio.ensure_future(asyncio.to_thread(func, *args))
        try:
            return await asyncio.shield(self._inflight)
        finally:
            if self._inflight.done():
                self._inflight = None

    def _write(self, handle: IO[bytes], data: bytes) -> None:
        handle.write(data)
        handle.flush()
        if self.fsync:
            began = time.perf_counter()
            os.fsync(handle.fileno())
            self.stats.fsync_seconds += time.perf_counter() - began
            self.stats.fsyncs += 1

    # --- segments -------------------------------------------------------------------------

    def _needs_rotation(self) -> bool:
        current = self._current
        if self._broken:
            return True
        if current is None or current.size == 0:
            return False
        too_old = time.monotonic() - self._current_opened >= self.segment_max_age_s
        return current.size >= self.segment_bytes or too_old

    async def _rotate(self) -> None:
        old, old_handle = self._current, self._current_file
        assert old is not None and old_handle is not None
        number = old.number + 1
        new_handle = await self._in_thread(
            _swap_files, old_handle, self._segment_path(number), self.fsync
        )
        self._install_segment(number, new_handle)
        self._broken = False
        old.sealed = True
        self._maybe_delete(old)

    def _segment_path(self, number: int) -> Path:
        return self.directory / f"{number:016d}{SEGMENT_SUFFIX}"

    def _install_segment(self, number: int, handle: IO[bytes]) -> None:
        self._current_file = handle
        self._current = _Segment(number, self._segment_path(number), 0, sealed=False)
        self._segments[number] = self._current
        self._current_opened = time.monotonic()

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
    with path.open("rb") as handle:
        handle.seek(offset)
        data = handle.read(max(0, min(end - offset, max_bytes)))
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


def _open_segment(path: Path, fsync: bool) -> IO[bytes]:
    handle = path.open("ab")
    if fsync:
        _fsync_directory(path.parent)  # the new file's name is durable too
    return handle


def _swap_files(old: IO[bytes], new_path: Path, fsync: bool) -> IO[bytes]:
    try:
        _close_file(old, fsync)
    except OSError:  # the old file is the one that failed: its synced part is safe
        with contextlib.suppress(OSError):
            old.close()
    return _open_segment(new_path, fsync)


def _close_file(handle: IO[bytes], fsync: bool) -> None:
    handle.flush()
    if fsync:
        os.fsync(handle.fileno())
    handle.close()


def _existing_segments(directory: Path) -> list[tuple[int, Path]]:
    found = []
    for path in directory.glob(f"*{SEGMENT_SUFFIX}"):
        with contextlib.suppress(ValueError):
            found.append((int(path.stem), path))
    return sorted(found)


def _lock_directory(directory: Path) -> IO[bytes]:
    handle = (directory / LOCK_NAME).open("ab")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SpoolLocked(
            f"spool directory {directory} is in use by another running process "
            "(two instances with the same SPOOL_DIR, CLUSTER_NAME and INSTANCE_ID?)"
        ) from None
    return handle


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
