"""The spool on a real file system that runs out: inodes (segment creation fails, as with
EMFILE or a read-only remount) and bytes (ENOSPC/EDQUOT on write).

A small tmpfs is mounted for each test (the tests run as root) and unmounted after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from pathlib import Path

from aupus_ha.lab.localcluster import wait_until
from aupus_ha.pipeline.spool import Spool
from tests.helpers import fill, remount, tmpfs


async def stop(spool: Spool, writer: asyncio.Task[None]) -> None:
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await spool.close()


async def replay_all(directory: Path) -> tuple[list[bytes], int]:
    again = Spool(directory, max_bytes=1 << 30)
    again.open(lambda record, item: None)
    bodies: list[bytes] = []
    try:
        while again.replay_cursor is not None:
            records, damaged = await again.read_backlog(4096)
            bodies += [r.body for r in records]
            again.advance(records, damaged_rest=damaged)
    finally:
        await again.close()
    return bodies, again.stats.damaged_bytes


async def test_a_segment_that_cannot_be_created_keeps_the_writer_on_the_current_one(
    tmp_path: Path,
) -> None:
    """Defect 8: rotation fails (no inode left: the same path as EMFILE or a read-only
    remount). The writer keeps appending to the current segment, stays alive, and
    rotates once the file system has room again."""
    with tmpfs(tmp_path / "fs", nr_inodes="3") as fs:  # root, spool dir, lock file
        directory = fs / "spool"
        directory.mkdir(mode=0o700)
        remount(fs, nr_inodes="4")  # now: exactly one segment file fits
        spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1)  # rotate every batch
        spool.open(lambda record, item: spool.taken(record.position.segment, 1))
        writer = asyncio.create_task(spool.run())
        try:
            for n in range(20):
                position = await asyncio.wait_for(spool.append(b"body-%d" % n, None), 5)
                assert position.segment == 1  # no second segment can exist
            assert not writer.done()
            assert spool.stats.rotation_failures >= 1
            remount(fs, nr_inodes="16")
            await wait_until(
                lambda: _appended_beyond(spool, 1),
                15,
                "no rotation once inodes returned",
            )
            assert not writer.done()
        finally:
            await stop(spool, writer)
        bodies, damaged = await replay_all(directory)
        assert bodies[:20] == [b"body-%d" % n for n in range(20)] and damaged == 0


async def _appended_beyond(spool: Spool, segment: int) -> bool:
    position = await asyncio.wait_for(spool.append(b"probe", None), 5)
    return position.segment > segment


async def test_a_full_file_system_fails_the_commit_and_recovers_when_space_returns(
    tmp_path: Path,
) -> None:
    """ENOSPC on write: the group commit fails (no acknowledgement), the writer stays up
    and nothing torn is left behind; once space returns, appends are durable again and
    a replay gives back exactly the acknowledged records."""
    with tmpfs(tmp_path / "fs", size="256k") as fs:
        directory = fs / "spool"
        directory.mkdir(mode=0o700)
        spool = Spool(directory, max_bytes=1 << 30)
        spool.open(lambda record, item: spool.taken(record.position.segment, 1))
        writer = asyncio.create_task(spool.run())
        acknowledged: list[bytes] = []
        try:
            await asyncio.wait_for(spool.append(b"before", None), 5)
            acknowledged.append(b"before")
            filler = fill(fs / "spool-filler")
            failures = 0
            for n in range(5):
                with contextlib.suppress(OSError):
                    await asyncio.wait_for(spool.append(b"x" * 9000 + b"%d" % n, None), 10)
                    acknowledged.append(b"x" * 9000 + b"%d" % n)
                    continue
                failures += 1
            assert failures > 0 and not writer.done()
            assert spool.stats.write_failures >= failures
            filler.unlink()
            for n in range(5):
                body = b"after-%d" % n
                await asyncio.wait_for(spool.append(body, None), 15)
                acknowledged.append(body)
            assert not writer.done()
        finally:
            await stop(spool, writer)
        bodies, damaged = await replay_all(directory)
        assert bodies == acknowledged and damaged == 0


EMFILE_SCRIPT = r"""
import asyncio, os, resource, sys
from pathlib import Path
from aupus_ha.pipeline.spool import Spool

async def main(directory: Path) -> None:
    spool = Spool(directory, max_bytes=1 << 30, segment_bytes=1)  # rotate every batch
    spool.open(lambda record, item: spool.taken(record.position.segment, 1))
    writer = asyncio.create_task(spool.run())
    await spool.append(b"warm-up", None)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
    fillers = []
    try:
        while True:  # take every free descriptor below the limit
            fillers.append(os.open("/dev/null", os.O_RDONLY))
    except OSError:
        pass
    segments = set()
    for n in range(20):
        segments.add((await asyncio.wait_for(spool.append(b"n-%d" % n, None), 5)).segment)
    print("while_emfile", sorted(segments), spool.stats.rotation_failures, writer.done())
    for fd in fillers:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))  # the resource comes back
    for n in range(200):
        position = await asyncio.wait_for(spool.append(b"after-%d" % n, None), 5)
        if position.segment > max(segments):
            break
        await asyncio.sleep(0.05)
    print("after", position.segment > max(segments), writer.done())
    writer.cancel()
    await asyncio.gather(writer, return_exceptions=True)
    await spool.close()

asyncio.run(main(Path(sys.argv[1])))
"""


def test_a_segment_creation_failing_with_emfile_keeps_the_writer_up(tmp_path: Path) -> None:
    """Issue 16's trigger: the process out of file descriptors (RLIMIT_NOFILE, as when slow
    HTTP clients held them all). Run in a child process so the limit is its own."""
    directory = tmp_path / "spool" / "c-i"
    done = subprocess.run(
        [sys.executable, "-c", EMFILE_SCRIPT, str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines() if " " in line)
    segments, failures, died = lines["while_emfile"].rsplit(" ", 2)
    assert segments == "[1]" and int(failures) >= 1 and died == "False", done.stdout
    assert lines["after"] == "True False", done.stdout
    assert "Too many open files" in done.stdout + done.stderr
