"""The write-ahead spool on real files: group commit, replay, torn tails, deletion, limits."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import zlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aupus_ha.pipeline import spool_codec
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.intake import DurableIntake
from aupus_ha.pipeline.readings import Decoded, Reading, Reject
from aupus_ha.pipeline.spool import HEADER, Position, Record, Spool, SpoolLocked, _read_records
from aupus_ha.pipeline.spool_files import SegmentFile

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def reading(n: int, eq: str = "eq-1") -> Reading:
    return Reading(eq, T0 + timedelta(seconds=n), b'{"n":%d}' % n)


def message(n: int) -> Decoded:
    return Decoded(readings=[reading(n)])


def seg_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def tear(path: Path, cut_end: int) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - cut_end])


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


class Running:
    """A spool with its writer task, closed on exit (like the instance does)."""

    def __init__(self, spool: Spool, task: asyncio.Task[None]) -> None:
        self.spool = spool
        self.task = task

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.spool.close()


@contextlib.asynccontextmanager
async def running(
    directory: Path, on_durable: Callable[[Record, object], None] | None = None, **kw: object
) -> AsyncIterator[Running]:
    max_bytes = kw.pop("max_bytes", 1 << 30)
    assert isinstance(max_bytes, int)
    spool = Spool(directory, max_bytes=max_bytes, **kw)  # type: ignore[arg-type]

    def held_in_memory(record: Record, item: object) -> None:
        spool.taken(record.position.segment, 1)  # as the buffer would: never settled here

    spool.open(on_durable or held_in_memory)
    handle = Running(spool, asyncio.create_task(spool.run()))
    try:
        yield handle
    finally:
        await handle.stop()


async def drain_backlog(spool: Spool) -> list[bytes]:
    bodies: list[bytes] = []
    while spool.replay_cursor is not None:
        records, damaged = await spool.read_backlog(256)
        bodies.extend(r.body for r in records)
        spool.advance(records, damaged_rest=damaged)
    return bodies


async def test_appends_are_handed_over_in_order_and_replayed_after_restart(
    tmp_path: Path,
) -> None:
    seen: list[Position] = []

    def note(record: Record, item: object) -> None:
        seen.append(record.position)

    async with running(tmp_path, note, segment_bytes=1 << 20) as run:
        bodies = [b"body-%d" % i for i in range(200)]
        positions = await asyncio.gather(*(run.spool.append(b, None) for b in bodies))
        assert seen == sorted(seen) == list(positions)
        assert run.spool.stats.fsyncs < len(bodies)  # group commit: far fewer fsyncs
    async with running(tmp_path) as again:
        assert again.spool.replay_cursor == Position(1, 0)
        assert await drain_backlog(again.spool) == bodies


async def test_a_torn_tail_keeps_every_whole_record_before_it(tmp_path: Path) -> None:
    async with running(tmp_path) as run:
        for i in range(10):
            await run.spool.append(b"record-%d" % i, None)
    tear(seg_files(tmp_path)[0], cut_end=3)  # the last record cut mid-body
    async with running(tmp_path) as again:
        recovered = await drain_backlog(again.spool)
        assert recovered == [b"record-%d" % i for i in range(9)]
        assert again.spool.stats.damaged_bytes == HEADER.size + len(b"record-9") - 3


async def test_a_corrupt_record_ends_its_segment_but_not_the_next(tmp_path: Path) -> None:
    async with running(tmp_path, segment_bytes=1) as run:  # one batch per segment
        await run.spool.append(b"first-a", None)
        await run.spool.append(b"second", None)
    flip_byte(seg_files(tmp_path)[0], HEADER.size)  # the checksum no longer matches
    async with running(tmp_path) as again:
        assert await drain_backlog(again.spool) == [b"second"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bodies=st.lists(st.binary(min_size=0, max_size=300), min_size=1, max_size=30),
    cut=st.integers(min_value=0, max_value=10_000),
)
def test_any_truncation_recovers_exactly_the_whole_records(
    tmp_path_factory: pytest.TempPathFactory, bodies: list[bytes], cut: int
) -> None:
    path = tmp_path_factory.mktemp("seg") / "0000000000000001.seg"
    frames = [HEADER.pack(len(b), zlib.crc32(b)) + b for b in bodies]
    data = b"".join(frames)[: min(cut, sum(map(len, frames)))]
    path.write_bytes(data)
    records, damaged = _read_records(path, 1, 0, len(data), 64)
    whole, used = [], 0
    for frame, body in zip(frames, bodies, strict=True):
        if used + len(frame) > len(data):
            break
        whole.append(body)
        used += len(frame)
    # Read in small chunks like the replay does, until nothing more comes.
    offset = records[-1].position.offset + HEADER.size + len(records[-1].body) if records else 0
    while records and offset < len(data) and not damaged:
        more, damaged = _read_records(path, 1, offset, len(data), 64)
        if not more:
            break
        records += more
        offset = more[-1].position.offset + HEADER.size + len(more[-1].body)
    assert [r.body for r in records] == whole
    assert damaged == len(data) - used


async def test_settled_segments_are_deleted_and_a_full_spool_waits(tmp_path: Path) -> None:
    async with running(tmp_path, segment_bytes=1, max_bytes=4 * 48) as run:
        spool = run.spool
        for _ in range(4):
            await spool.append(b"x" * 40, None)
        assert spool.total_bytes == 4 * 48  # full
        blocked = asyncio.ensure_future(spool.append(b"late", None))
        try:
            await asyncio.sleep(0)  # one loop step: it reaches the wait (checked next)
            assert not blocked.done() and spool.stats.full_waits == 1
            spool.settle([(1, 1), (2, 1)])  # sealed and settled: deleted, room again
            await asyncio.wait_for(blocked, timeout=5)
        finally:
            blocked.cancel()
        assert not (tmp_path / "0000000000000001.seg").exists()
        assert spool.stats.segments_deleted == 2


async def test_a_second_process_cannot_share_the_directory(tmp_path: Path) -> None:
    async with running(tmp_path):
        with pytest.raises(SpoolLocked, match="in use"):
            Spool(tmp_path, max_bytes=1 << 20).open(lambda record, item: None)


readings_strategy = st.builds(
    Reading,
    equipamento_id=st.text(min_size=1, max_size=20),
    timestamp_dados=st.datetimes(timezones=st.just(UTC)),
    dados=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1)).map(orjson.dumps),
    qualidade=st.sampled_from(["bom", "ruim", "parcial"]),
    energia_kwh=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    num_leituras=st.none() | st.integers(0, 1000),
    matchable=st.booleans(),
    sample_at=st.none() | st.datetimes(timezones=st.just(UTC)),
)
rejects_strategy = st.builds(
    Reject,
    topic=st.text(max_size=30),
    payload=st.binary(max_size=100),
    reason=st.text(max_size=30),
    received_at=st.datetimes(timezones=st.just(UTC)),
)


@given(st.lists(readings_strategy, max_size=5), st.lists(rejects_strategy, max_size=3))
def test_the_codec_gives_back_identical_entries(
    readings: list[Reading], rejects: list[Reject]
) -> None:
    back = spool_codec.decode(spool_codec.encode(Decoded(readings, rejects)))
    assert back.readings == readings
    assert back.rejects == rejects


async def durable(intake: DurableIntake, decoded: Decoded) -> None:
    pending = intake.accept(decoded)
    assert pending is not None
    await pending


async def test_a_full_buffer_spills_to_disk_and_replays_in_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 30, segment_bytes=256)
    buffer = PendingBuffer(max_items=5, on_settled=spool.settle)
    intake = DurableIntake(buffer, spool)
    intake.open(lambda r: r)
    tasks = [asyncio.create_task(spool.run()), asyncio.create_task(intake.run_replay())]
    try:
        for n in range(20):
            await durable(intake, message(n))
        assert len(buffer) == 5 and intake.backlog  # the other 15 are on disk only
        order: list[int] = []
        while len(order) < 20:  # the "leader": commits the oldest, the replay refills
            batch, _ = buffer.oldest(3)
            if not batch:
                await asyncio.wait_for(buffer.wait_not_empty().wait(), timeout=5)
                continue
            order += [int((r.timestamp_dados - T0).total_seconds()) for r in batch]
            buffer.committed(batch, [])
        assert order == list(range(20))
        assert not intake.backlog
        await durable(intake, message(99))  # caught up: straight into memory again
        assert buffer.readings_pending == 1
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await spool.close()
    # Everything but the live segment was settled and deleted.
    assert len(seg_files(tmp_path)) <= 2


class FailingOnce(Spool):
    """A disk that fails one write half-way (ENOSPC after a torn frame)."""

    failed = False

    def _write(self, handle: SegmentFile, data: bytes) -> None:
        if not self.failed:
            self.failed = True
            handle.append(data[:5])
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write(handle, data)


async def test_a_failed_write_is_not_acknowledged_and_the_writer_goes_on(
    tmp_path: Path,
) -> None:
    spool = FailingOnce(tmp_path, max_bytes=1 << 20)
    spool.open(lambda record, item: spool.taken(record.position.segment, 1))
    writer = asyncio.create_task(spool.run())
    try:
        with pytest.raises(OSError, match="No space"):
            await asyncio.wait_for(spool.append(b"lost-to-the-broker", None), timeout=5)
        position = await asyncio.wait_for(spool.append(b"after", None), timeout=10)
        assert position == Position(1, 0)  # the torn frame was cut off, not appended after
    finally:
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        await spool.close()
    again = Spool(tmp_path, max_bytes=1 << 20)
    again.open(lambda record, item: None)
    try:
        assert await drain_backlog(again) == [b"after"]
        assert again.stats.recovered_segments == 1 and again.stats.damaged_bytes == 0
    finally:
        await again.close()
