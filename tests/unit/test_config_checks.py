"""Settings checked at start: spool and TLS values stop the start (exit 2), not later."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aupus_ha.config import ConfigError, load_settings

BASE = {"DATABASE_URL": "postgresql://u@h/db", "MQTT_URL": "mqtt://broker:1883"}


def test_spool_defaults() -> None:
    settings = load_settings(BASE)
    assert settings.spool_dir == Path("./spool")
    assert settings.spool_max_bytes == 1024**3
    assert settings.spool_fsync is True


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
