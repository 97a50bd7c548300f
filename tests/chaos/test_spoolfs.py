"""The chaos runner's spool file systems on a real tmpfs (needs `mount`, i.e. root): full,
read-only and always unmounted; and the usage sampler's measures."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from aupus_ha.lab.chaos.spoolfs import BALLAST, SpoolMounts, rss_bytes, tree_bytes

SIZE = 4 * 1024 * 1024


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[SpoolMounts]:
    m = SpoolMounts(SIZE)
    if not m.mount("alpha", tmp_path / "fs"):
        pytest.skip(f"cannot mount a tmpfs here: {m.problem}")
    yield m
    m.unmount_all()


def test_fill_leaves_no_room_and_free_gives_it_back(mounts: SpoolMounts) -> None:
    root = mounts.roots["alpha"]
    assert mounts.fill("alpha") >= SIZE - 64 * 1024
    with pytest.raises(OSError) as full, (root / "segment").open("wb") as f:
        f.write(b"x" * 65536)
        f.flush()
    assert full.value.errno == errno.ENOSPC
    mounts.free("alpha")
    (root / "segment").write_bytes(b"x" * 65536)


def test_read_only_refuses_new_files_and_heals(mounts: SpoolMounts) -> None:
    """An open segment keeps working under the read-only bind; a new one is refused."""
    root = mounts.roots["alpha"]
    with (root / "open.seg").open("wb") as open_segment:
        how = mounts.make_read_only("alpha")
        assert how in ("remount", "bind")
        with pytest.raises(OSError) as refused:
            (root / "next.seg").write_bytes(b"x")
        assert refused.value.errno == errno.EROFS
        mounts.make_writable("alpha", how)
        open_segment.write(b"still writable")
    (root / "next.seg").write_bytes(b"x")


def test_unmount_all_removes_every_layer(tmp_path: Path) -> None:
    m = SpoolMounts(SIZE)
    if not m.mount("alpha", tmp_path / "fs"):
        pytest.skip(f"cannot mount a tmpfs here: {m.problem}")
    m.make_read_only("alpha")  # a second layer when it is a bind mount
    m.unmount_all()
    assert not os.path.ismount(tmp_path / "fs")
    assert m.roots == {}


def test_spool_bytes_leave_the_ballast_out(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "1.seg").write_bytes(b"x" * 100)
    (tmp_path / "2.seg").write_bytes(b"x" * 10)
    (tmp_path / BALLAST).write_bytes(b"x" * 1000)
    assert tree_bytes(tmp_path) == 110
    assert tree_bytes(tmp_path / "missing") == 0


def test_rss_of_this_process_and_of_none() -> None:
    assert rss_bytes(os.getpid()) > 1024 * 1024
    assert rss_bytes(2**22 + 12345) == 0
