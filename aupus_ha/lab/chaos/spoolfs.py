"""Each instance's spool on a small file system of its own, so one instance's disk can be
filled or made read-only while the others carry on — and what the spools and the
processes weigh while the run goes on.

As root the runner mounts a tmpfs of `size` bytes per instance (`mount -t tmpfs`); where
mounting is not permitted (no root, a container without CAP_SYS_ADMIN) the spools stay
plain directories and the `spool_*` faults are skipped with a note. Every mount is
undone at teardown, whatever happened (lazy unmount: a process still holding a file
cannot keep it mounted).

Read-only: `mount -o remount,ro` refuses (EBUSY) while a file is open for writing —
and the spool always has its current segment open. Then a read-only bind mount is put
over the directory instead: every *new* open for writing (the next segment) fails with
EROFS, the already open segment keeps working until it is sealed. The record says which.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

BALLAST = "chaos-ballast"
_CMD_TIMEOUT_S = 15.0
_SAMPLE_S = 0.5


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    # mount/umount with paths of our own temporary directory: no outside input.
    return subprocess.run(  # noqa: S603
        args, capture_output=True, text=True, timeout=_CMD_TIMEOUT_S, check=False
    )


@dataclass(slots=True)
class SpoolMounts:
    size_bytes: int
    roots: dict[str, Path] = field(default_factory=dict)  # instance -> its mount point
    problem: str | None = None  # why there are no mounts (None: mounted, or not tried)

    def mount(self, name: str, root: Path) -> bool:
        """A tmpfs at `root` (created); False, with `problem` set, when not permitted."""
        root.mkdir(parents=True, exist_ok=True)
        if self.problem is not None:
            return False
        try:
            done = _run(
                "mount",
                "-t",
                "tmpfs",
                "-o",
                f"size={self.size_bytes},mode=0700",
                "tmpfs",
                str(root),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self.problem = f"mount: {exc}"
            return False
        if done.returncode != 0:
            self.problem = f"mount -t tmpfs refused: {done.stderr.strip() or done.returncode}"
            return False
        self.roots[name] = root
        return True

    @property
    def available(self) -> bool:
        return bool(self.roots) and self.problem is None

    def fill(self, name: str) -> int:
        """A ballast file taking every free byte of the instance's file system."""
        root = self.roots[name]
        st = os.statvfs(root)
        free = st.f_bavail * st.f_frsize
        fd = os.open(root / BALLAST, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, free)
            _write_until_full(fd)
        finally:
            os.close(fd)
        return (root / BALLAST).stat().st_size

    def free(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.roots[name] / BALLAST).unlink()

    def make_read_only(self, name: str) -> str:
        """'remount' or 'bind' (see the module docstring); raises OSError if neither works."""
        root = str(self.roots[name])
        if _run("mount", "-o", "remount,ro", root).returncode == 0:
            return "remount"
        if _run("mount", "--bind", root, root).returncode == 0:
            done = _run("mount", "-o", "remount,bind,ro", root)
            if done.returncode == 0:
                return "bind"
            _run("umount", "-l", root)
            raise OSError(f"read-only bind mount refused: {done.stderr.strip()}")
        raise OSError("neither remount,ro nor a bind mount was permitted")

    def make_writable(self, name: str, how: str) -> None:
        root = str(self.roots[name])
        if how == "remount":
            _run("mount", "-o", "remount,rw", root)
        elif _run("umount", root).returncode != 0:
            _run("umount", "-l", root)

    def unmount_all(self) -> None:
        """Every layer of every mount, lazily; never raises."""
        for root in self.roots.values():
            for _ in range(4):
                if not os.path.ismount(root):
                    break
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _run("umount", "-l", str(root))
        self.roots.clear()


def _write_until_full(fd: int) -> None:
    """posix_fallocate may leave a few pages (or be unsupported): write zeros to ENOSPC."""
    chunk = bytes(1 << 20)
    os.lseek(fd, 0, os.SEEK_END)
    while True:
        try:
            if os.write(fd, chunk) == 0:
                return
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                if len(chunk) <= 4096:
                    return
                chunk = chunk[: len(chunk) // 4]
                continue
            raise


# --- how much the instances weigh --------------------------------------------------------


@dataclass(slots=True)
class Peak:
    rss_bytes: int = 0
    spool_bytes: int = 0


def tree_bytes(root: Path) -> int:
    """Sum of the file sizes under `root`, the ballast excluded; files vanish meanwhile."""
    total = 0
    stack = [root]
    while stack:
        with contextlib.suppress(OSError):
            for entry in os.scandir(stack.pop()):
                with contextlib.suppress(OSError):
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    elif entry.name != BALLAST:
                        total += entry.stat(follow_symlinks=False).st_size
    return total


def rss_bytes(pid: int) -> int:
    """Resident set size of `pid` (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return 0
    return 0


class UsageSampler:
    """Peak RSS and peak spool bytes per instance, sampled every half second."""

    def __init__(self, pids: Callable[[], dict[str, int | None]], spools: dict[str, Path]) -> None:
        self._pids = pids
        self._spools = spools
        self.peaks: dict[str, Peak] = {name: Peak() for name in spools}

    def sample(self) -> None:
        for name, pid in self._pids().items():
            peak = self.peaks.setdefault(name, Peak())
            if pid is not None:
                peak.rss_bytes = max(peak.rss_bytes, rss_bytes(pid))
            spool = self._spools.get(name)
            if spool is not None:
                peak.spool_bytes = max(peak.spool_bytes, tree_bytes(spool))

    async def run(self) -> None:
        """Until cancelled."""
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(_SAMPLE_S)
