"""LEGACY_TIMESTAMP_ZONE: UTC by default (DOMAIN v2), any IANA zone name, nothing else."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from aupus_ha.config import ConfigError, load_settings

BASE = {"DATABASE_URL": "postgresql://u:p@db/x", "MQTT_MODE": "disabled"}


def test_default_is_utc() -> None:
    """Without the variable, legacy columns hold UTC wall time."""
    settings = load_settings(dict(BASE), dotenv=None)
    assert settings.legacy_timestamp_zone == "UTC"
    assert settings.legacy_zone is UTC


@pytest.mark.parametrize(("raw", "name"), [("utc", "UTC"), (" UTC ", "UTC")])
def test_utc_spellings(raw: str, name: str) -> None:
    """Case and surrounding spaces do not matter for UTC."""
    assert load_settings({**BASE, "LEGACY_TIMESTAMP_ZONE": raw}, dotenv=None).legacy_zone is UTC


def test_an_iana_zone() -> None:
    """America/Sao_Paulo: 2026-11-29T00:00:30Z is 21:00:30 wall time the day before."""
    settings = load_settings({**BASE, "LEGACY_TIMESTAMP_ZONE": "America/Sao_Paulo"}, dotenv=None)
    assert settings.legacy_zone == ZoneInfo("America/Sao_Paulo")
    instant = datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert instant.astimezone(settings.legacy_zone).hour == 21


@pytest.mark.parametrize(
    "raw", ["Mars/Olympus", "../../etc/passwd", "/etc/localtime", "UTC; DROP", "x" * 80, "BRT-3"]
)
def test_anything_else_stops_the_start(raw: str) -> None:
    """An unknown zone, a path or odd characters: one error naming the variable."""
    with pytest.raises(ConfigError, match=r"LEGACY_TIMESTAMP_ZONE=.*IANA time zone"):
        load_settings({**BASE, "LEGACY_TIMESTAMP_ZONE": raw}, dotenv=None)
