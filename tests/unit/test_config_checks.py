"""Settings checked at start: spool and TLS values stop the start (exit 2), not later."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aupus_ha import config
from aupus_ha.config import ConfigError, default_value, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h/db", "MQTT_URL": "mqtt://broker:1883"}


def test_spool_defaults() -> None:
    settings = load_settings(BASE)
    assert settings.spool_dir == default_value("SPOOL_DIR") == Path("./spool")
    assert settings.spool_max_bytes == default_value("SPOOL_MAX_BYTES")
    assert settings.spool_fsync is default_value("SPOOL_FSYNC") is True


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SPOOL_MAX_BYTES", "10"),
        ("SPOOL_MAX_BYTES", "lots"),
        ("SPOOL_FSYNC", "sometimes"),
    ],
)
def test_bad_spool_values_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({**BASE, name: value})


def test_spool_dir_must_be_a_writable_directory(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(ConfigError, match=r"SPOOL_DIR.*not a directory"):
        load_settings({**BASE, "SPOOL_DIR": str(a_file / "spool")})
    created_later = tmp_path / "not" / "yet"
    assert load_settings({**BASE, "SPOOL_DIR": str(created_later)}).spool_dir == created_later


def test_a_blank_spool_dir_is_refused_by_the_parser() -> None:
    """load_settings turns a blank SPOOL_DIR into the default; the parser itself still
    refuses a blank path rather than taking the working directory."""
    for raw in ("", "   "):
        with pytest.raises(ConfigError) as caught:
            config._parse_directory("SPOOL_DIR", raw)
        assert str(caught.value) == "SPOOL_DIR must be a directory path"


NOBODY = 65534


def as_unprivileged(check: Callable[[], str]) -> str:
    """`check()` run as a user without special rights: as uid/gid 65534 in a forked
    child when the tests run as root (root may write anywhere), else directly."""
    if os.geteuid() != 0:
        return check()
    # Root first, in this process: modes do not limit root, so the same settings must be
    # accepted (the refusal is about the user). It also lets mutmut (docs/testing.md),
    # which learns which tests reach which function in this process only, pick this test.
    assert check() == "accepted"
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12 warns about fork() in a process with threads; the child only
        # parses settings and exits, holding no lock another thread could own.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: drop root for good, report, never return into pytest
        code = 0
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            answer = check()
        except BaseException as exc:  # reported to the parent, which fails the test
            answer, code = f"{type(exc).__name__}: {exc}", 1
        os.write(write_end, answer.encode())
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, answer
    return answer


@pytest.fixture
def shared_base() -> Iterator[Path]:
    """A directory every user may enter but nobody else may write (pytest's tmp_path
    is private to its owner, so another user could not even look into it)."""
    base = Path(tempfile.mkdtemp(prefix="aupus-spool-check-"))
    base.chmod(0o755)
    yield base
    for path in base.rglob("*"):
        path.chmod(0o700)
    shutil.rmtree(base)


def _refusal_of(spool_dir: Path) -> Callable[[], str]:
    return _message_of({"SPOOL_DIR": str(spool_dir)})


def test_a_spool_dir_under_a_read_only_directory_is_refused(shared_base: Path) -> None:
    """The nearest existing directory must be writable by the user who runs aupus-ha."""
    read_only = shared_base / "read-only"
    read_only.mkdir(mode=0o555)
    read_only.chmod(0o555)
    spool = read_only / "spool"
    assert as_unprivileged(_refusal_of(spool)) == (
        f"SPOOL_DIR={str(spool)!r}: {read_only} is not writable by this user"
    )


def test_a_spool_dir_behind_a_directory_this_user_cannot_enter_is_refused(
    shared_base: Path,
) -> None:
    """A parent this user may not search hides whether the spool exists (stat fails with
    EACCES): still one configuration line naming that parent, not a traceback."""
    closed = shared_base / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o000)
    spool = closed / "inner" / "spool"
    assert as_unprivileged(_refusal_of(spool)) == (
        f"SPOOL_DIR={str(spool)!r}: {closed} is not writable by this user"
    )


# Never created: load_settings only checks that its nearest parent (/tmp) is writable.
ANY_USERS_SPOOL = str(Path(tempfile.gettempdir()) / "aupus-config-check-spool")


def _message_of(env: dict[str, str]) -> Callable[[], str]:
    def check() -> str:
        try:
            load_settings({**BASE, "SPOOL_DIR": ANY_USERS_SPOOL, **env}, dotenv=None)
        except ConfigError as exc:
            return str(exc)
        return "accepted"

    return check


def test_tls_files_this_user_cannot_read_are_refused(shared_base: Path) -> None:
    """A CA bundle or client key that exists but that this user may not read (or may not
    even reach) fails at start like a missing one, not later in every TLS handshake and
    not as a PermissionError traceback."""
    closed = shared_base / "closed"
    closed.mkdir(mode=0o700)
    hidden = closed / "ca.pem"
    hidden.write_text("pem\n")
    closed.chmod(0o000)
    unreadable = shared_base / "key.pem"
    unreadable.write_text("pem\n")
    unreadable.chmod(0o000)
    for path in (hidden, unreadable):
        for name in ("MQTT_TLS_CA", "SMTP_TLS_CA"):
            assert as_unprivileged(_message_of({name: str(path)})) == (
                f"{name}={str(path)!r} is not a readable file (accepts a PEM CA bundle)"
            )
        for option in ("sslrootcert", "sslkey"):
            url = f"{BASE['DATABASE_URL']}?sslmode=verify-full&{option}={path}"
            assert as_unprivileged(_message_of({"DATABASE_URL": url})) == (
                f"DATABASE_URL {option}={str(path)!r} is not a readable file"
            )
    readable = shared_base / "ok.pem"
    readable.write_text("pem\n")
    readable.chmod(0o644)
    assert as_unprivileged(_message_of({"MQTT_TLS_CA": str(readable)})) == "accepted"


def test_run_as_another_user_exits_2_for_a_spool_dir_it_cannot_reach(shared_base: Path) -> None:
    """The same through `aupus-ha run` started as an unprivileged user (setpriv when the
    tests run as root): exit 2 and one line, not a PermissionError traceback."""
    closed = shared_base / "closed"
    closed.mkdir(mode=0o700)
    closed.chmod(0o000)
    spool = closed / "spool"
    drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot start as another user")
    result = subprocess.run(
        [*(drop if os.geteuid() == 0 else []), *_aupus_ha(), "run", "--no-migrate"],
        env={"PATH": "/usr/bin:/bin", **BASE, "INSTANCE_ID": "cfg-run", "SPOOL_DIR": str(spool)},
        cwd=shared_base,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (result.returncode, result.stderr.splitlines()) == (
        2,
        [
            f"aupus-ha: configuration error: SPOOL_DIR={str(spool)!r}: "
            f"{closed} is not writable by this user"
        ],
    ), result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://u@h/db?sslmode=bogus", "sslmode='bogus'"),
        ("postgresql://u@h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem", "sslrootcert"),
    ],
)
def test_bad_database_tls_options_stop_the_start(url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({**BASE, "DATABASE_URL": url})


def test_mqtt_port_zero_is_refused() -> None:
    with pytest.raises(ConfigError, match="MQTT_URL has an invalid port"):
        load_settings({**BASE, "MQTT_URL": "mqtts://broker:0"})


# --- `aupus-ha run`: one line, exit 2, for one bad value of each rule family ------------------

# (variable to change or drop, value or None to leave it out, the exact message)
RULE_FAMILIES = [
    ("HTTP_PORT", "70000", "HTTP_PORT='70000' is out of range (accepts 0..65535)"),
    ("BATCH_MAX", "many", "BATCH_MAX='many' is not an integer (accepts 1..1000000)"),
    (
        "SPOOL_FSYNC",
        "sometimes",
        "SPOOL_FSYNC='sometimes' is not a boolean (accepts true/false, 1/0, yes/no)",
    ),
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is invalid (accepts json | console)"),
    (
        "INSTANCE_ID",
        "has space",
        "INSTANCE_ID='has space' is invalid (accepts 1-128 characters: letters, digits, - _ . : @)",
    ),
    (
        "LEGACY_TIMESTAMP_ZONE",
        "Mars/Olympus",
        "LEGACY_TIMESTAMP_ZONE='Mars/Olympus' is invalid"
        " (accepts an IANA time zone name, e.g. UTC)",
    ),
    ("HEARTBEAT_S", "2.6", "HEARTBEAT_S=2.6 must be at most half of LEASE_TTL_S=5.0"),
    (
        "RENEW_DEADLINE_S",
        "5",
        "RENEW_DEADLINE_S=5.0 must be above HEARTBEAT_S=1.0 and below LEASE_TTL_S=5.0",
    ),
    (
        "RECENT_DATA_CRITICAL_S",
        "600",
        "RECENT_DATA_CRITICAL_S=600.0 must be above RECENT_DATA_WARNING_S=600.0",
    ),
    ("MQTT_URL", None, "MQTT_URL (or MQTT_HOST) is required unless MQTT_MODE=disabled"),
    (
        "DATABASE_URL",
        None,
        "DATABASE_URL is required (accepts postgresql://user:password@host:port/db)",
    ),
    (
        "DATABASE_URL",
        "postgresql://u@h/db?sslmode=bogus",
        "DATABASE_URL sslmode='bogus' is invalid"
        " (accepts disable, allow, prefer, require, verify-ca, verify-full)",
    ),
    ("MQTT_URL", "mqtt://broker:99999", "MQTT_URL has an invalid port (accepts 1..65535)"),
    (
        "MQTT_TLS_CA",
        "/no/such/ca.pem",
        "MQTT_TLS_CA='/no/such/ca.pem' is not a readable file (accepts a PEM CA bundle)",
    ),
    (
        "ALERT_WEBHOOK_URL",
        "ftp://hooks.example/x",
        "ALERT_WEBHOOK_URL is invalid (accepts an http:// or https:// URL with a host)",
    ),
    ("SPOOL_DIR", "/dev/null", "SPOOL_DIR='/dev/null': not a directory"),
]


def _aupus_ha() -> list[str]:
    """The installed console script, as operators run it (else the module)."""
    script = Path(sys.executable).with_name("aupus-ha")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "aupus_ha"]


@pytest.mark.parametrize(
    ("name", "value", "message"), RULE_FAMILIES, ids=[f"{n}={v}" for n, v, _ in RULE_FAMILIES]
)
def test_run_exits_2_with_the_rule_that_fired(
    name: str, value: str | None, message: str, tmp_path: Path
) -> None:
    """`aupus-ha run` stops before connecting anywhere: exit code 2 and one stderr line
    that is exactly this rule's message (the variable, the value, what it accepts)."""
    env = {
        "PATH": "/usr/bin:/bin",
        **BASE,
        "INSTANCE_ID": "cfg-run",
        "RECENT_DATA_WARNING_S": "600",
        "SPOOL_DIR": str(tmp_path / "spool"),
    }
    if value is None:
        del env[name]
    else:
        env[name] = value
    result = subprocess.run(
        [*_aupus_ha(), "run", "--no-migrate"],
        env=env,
        cwd=tmp_path,  # no ./.env
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [f"aupus-ha: configuration error: {message}"]
    assert result.stdout == ""
