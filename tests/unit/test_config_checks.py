"""Settings checked at start: spool and TLS values stop the start (exit 2), not later."""

from __future__ import annotations

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
