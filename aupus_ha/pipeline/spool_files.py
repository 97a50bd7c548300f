"""The spool's file-system calls, each shaped by what may be found on a local disk.

* Private: the instance's spool directory is 0700 and segments are 0600 (readings are
  nobody else's business); `SPOOL_DIR` and the instance directory must belong to this
  user and must not be writable by group or others, or the instance refuses to start.
* No symlinks: segments are opened with `O_NOFOLLOW` (a symlinked `.seg` is ignored,
  never read or appended to) and created with `O_EXCL` (a name squatted in advance is
  skipped, never followed).
* No user-space write buffer: segments are raw descriptors written with `os.write`, so a
  write that failed (ENOSPC, EDQUOT) leaves nothing queued to be written later, and the
  torn bytes it may have left can be cut off with `ftruncate`.

What this does not defend against (docs/security.md, "The spool"): root, or a process
running as this user, can still write records of its own.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600
SEGMENT_SUFFIX = ".seg"
LOCK_NAME = "spool.lock"

_NOFOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_CREATE = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | _NOFOLLOW
_READ = os.O_RDONLY | _NOFOLLOW


class SpoolRefused(RuntimeError):
    """The spool directory cannot be used by this process (the CLI exits 2)."""


class SpoolLocked(SpoolRefused):
    """Another live process already writes this spool directory."""


class SpoolUntrusted(SpoolRefused):
    """The spool directory could be written by someone else."""


def directory_problem(path: Path) -> str | None:
    """Why an existing directory may not hold a spool (one phrase), or None.

    Follows a symlink at `path` itself: an operator may point SPOOL_DIR elsewhere, and
    then the target is what must be private.
    """
    info = path.stat()
    if not stat.S_ISDIR(info.st_mode):
        return "not a directory"
    me = os.geteuid()
    if info.st_uid != me:
        return f"owned by uid {info.st_uid}, not by this user (uid {me})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        mode = stat.S_IMODE(info.st_mode)
        return f"writable by group or others (mode {mode:o}; chmod go-w)"
    return None


def prepare_directory(directory: Path) -> None:
    """Create or check `directory` (SPOOL_DIR/<cluster>-<instance>) and its parent.

    Raises SpoolUntrusted naming SPOOL_DIR and the reason.
    """
    spool_dir = directory.parent
    spool_dir.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    problem = directory_problem(spool_dir)
    if problem is not None:
        raise SpoolUntrusted(f"SPOOL_DIR={spool_dir} is refused: {problem}")
    with contextlib.suppress(FileExistsError):
        directory.mkdir(mode=DIR_MODE)
    if directory.is_symlink():
        raise SpoolUntrusted(f"SPOOL_DIR={spool_dir} is refused: {directory} is a symlink")
    problem = directory_problem(directory)
    if problem is not None:
        raise SpoolUntrusted(f"SPOOL_DIR={spool_dir} is refused: {directory} is {problem}")
    # A directory left by an earlier version may be 0755: make its readings private.
    directory.chmod(DIR_MODE)


class SegmentFile:
    """One segment open for appending: a raw descriptor (see the module docstring)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd

    @classmethod
    def create(cls, path: Path, fsync: bool) -> SegmentFile:
        """A new, empty segment; FileExistsError if the name is taken (even by a symlink)."""
        fd = os.open(path, _CREATE, FILE_MODE)
        try:
            if fsync:
                fsync_directory(path.parent)  # the new file's name is durable too
        except OSError:
            os.close(fd)
            with contextlib.suppress(OSError):
                path.unlink()  # empty and never used: the next attempt may take the name
            raise
        return cls(fd)

    def append(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]

    def sync(self) -> None:
        os.fsync(self._fd)

    def cut(self, size: int) -> None:
        """Drop what a failed append may have left after `size` (the durable end)."""
        os.ftruncate(self._fd, size)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def read_at(path: Path, offset: int, length: int) -> bytes:
    """Up to `length` bytes of a segment from `offset`; never through a symlink."""
    fd = os.open(path, _READ)
    try:
        chunks: list[bytes] = []
        while length > 0:
            chunk = os.pread(fd, length, offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            length -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def existing_segments(directory: Path) -> tuple[list[tuple[int, Path, int]], list[str], int]:
    """Regular segment files (number, path, size) in order; the names of `.seg` entries
    that are not regular files (symlinks and the like: ignored); the highest segment
    number seen among all of them (a new segment is numbered after it)."""
    found: list[tuple[int, Path, int]] = []
    ignored: list[str] = []
    highest = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            name = entry.name
            if not name.endswith(SEGMENT_SUFFIX):
                continue
            try:
                number = int(name[: -len(SEGMENT_SUFFIX)])
            except ValueError:
                continue
            highest = max(highest, number)
            if entry.is_symlink() or not entry.is_file(follow_symlinks=False):
                ignored.append(name)
                continue
            found.append((number, Path(entry.path), entry.stat(follow_symlinks=False).st_size))
    return sorted(found), sorted(ignored), highest


def lock_directory(directory: Path) -> int:
    """An exclusive `flock` on the directory's lock file, held while the fd is open."""
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SpoolLocked(
            f"spool directory {directory} is in use by another running process "
            "(two instances with the same SPOOL_DIR, CLUSTER_NAME and INSTANCE_ID?)"
        ) from None
    except OSError:
        os.close(fd)
        raise
    return fd


def open_lock(directory: Path) -> int:
    """`lock_directory`, with a symlinked lock file reported as an untrusted directory."""
    try:
        return lock_directory(directory)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise SpoolUntrusted(
            f"SPOOL_DIR={directory.parent} is refused: {directory / LOCK_NAME} is a symlink"
        ) from None


def fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
