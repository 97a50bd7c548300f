"""Settings boundary tables: every numeric bound just inside and just outside, the timing
rules at their edges, every documented default, and every value reaching its field.

Each refusal is compared with the whole message (variable, value, what it accepts), so
a case passes only when the rule it is about fired, not some other rule on the way.
The ranges are also checked against the "accepts" column of docs/configuration.md.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aupus_ha.config import (
    ConfigError,
    Secret,
    Settings,
    default_renew_deadline,
    default_value,
    load_settings,
)
from tests.helpers import setting_value
from tests.unit.test_compose_and_docs import CONFIG_DOC, documented_variables

BASE = {"DATABASE_URL": "postgresql://u@db/aupus", "MQTT_URL": "mqtt://broker:1883"}


def load(**env: str) -> Settings:
    return load_settings({**BASE, **env}, dotenv=None)


def refusal(**env: str) -> str:
    """The message of the ConfigError that `env` (over BASE) raises."""
    with pytest.raises(ConfigError) as caught:
        load(**env)
    return str(caught.value)


def field_value(settings: Settings, name: str) -> object:
    """The parsed value of variable `name` (MQTT_PORT lives in the endpoint)."""
    if name == "MQTT_PORT":
        assert settings.mqtt is not None
        return settings.mqtt.port
    return getattr(settings, name.lower())


# --- numeric ranges -------------------------------------------------------------------------


@dataclass(frozen=True)
class Range:
    """A numeric setting: its range as the message prints it, the values just outside,
    and the values just inside when the bound itself is unreachable (a timing rule)."""

    name: str
    kind: type[int] | type[float]
    low: str
    high: str
    below: str
    above: str
    inside_low: str = ""
    inside_high: str = ""
    env: dict[str, str] = field(default_factory=dict)

    @property
    def accepted(self) -> tuple[str, str]:
        return (self.inside_low or self.low, self.inside_high or self.high)

    def environment(self, raw: str) -> dict[str, str]:
        env = {**BASE, **self.env, self.name: raw}
        if self.name == "MQTT_PORT":  # the legacy broker form: MQTT_URL would hide it
            del env["MQTT_URL"]
            env["MQTT_HOST"] = "broker"
        return env


RANGES = [
    Range("MQTT_PORT", int, "1", "65535", "0", "65536"),
    Range("HTTP_PORT", int, "0", "65535", "-1", "65536"),
    Range("HTTP_MAX_CONNECTIONS", int, "4", "100000", "3", "100001"),
    Range("HTTP_HEADER_TIMEOUT_S", float, "0.5", "300", "0.49", "300.01"),
    # A 0.5 s lease needs a heartbeat of at most 0.25 s.
    Range("LEASE_TTL_S", float, "0.5", "300", "0.49", "300.01", env={"HEARTBEAT_S": "0.1"}),
    Range("HEARTBEAT_S", float, "0.05", "60", "0.049", "60.01", env={"LEASE_TTL_S": "300"}),
    # RENEW_DEADLINE_S must stay below LEASE_TTL_S (at most 300): 300 itself is refused
    # by that rule, so the range's top is probed just below it.
    Range(
        "RENEW_DEADLINE_S",
        float,
        "0.1",
        "300",
        "0.09",
        "300.01",
        inside_high="299.99",
        env={"HEARTBEAT_S": "0.05", "LEASE_TTL_S": "300"},
    ),
    Range("FLUSH_INTERVAL_S", float, "0.01", "300", "0.009", "300.01"),
    Range("ROLLUP_GRACE_S", float, "0", "3600", "-0.01", "3600.01"),
    Range("STANDBY_HORIZON_S", float, "1", "86400", "0.99", "86400.01"),
    Range("BATCH_MAX", int, "1", "1000000", "0", "1000001"),
    Range("BUFFER_MAX_MESSAGES", int, "100", "100000000", "99", "100000001"),
    Range("MAX_PAYLOAD_BYTES", int, "64", "268435455", "63", "268435456"),
    Range("MQTT_RECEIVE_MAXIMUM", int, "1", "65535", "0", "65536"),
    Range("SPOOL_MAX_BYTES", int, "1048576", "1125899906842624", "1048575", "1125899906842625"),
    Range("REJECT_PAYLOAD_PREFIX_BYTES", int, "0", "1048576", "-1", "1048577"),
    Range("REJECT_RATE_PER_MIN", float, "0.01", "1000000", "0.009", "1000000.01"),
    Range("REJECT_BURST", int, "1", "1000000", "0", "1000001"),
    Range("REJECT_RETENTION_DAYS", float, "0.001", "36500", "0.0009", "36500.01"),
    Range("SMTP_PORT", int, "1", "65535", "0", "65536"),
    Range("DB_CONNECT_TIMEOUT_S", float, "0.5", "120", "0.49", "120.01"),
    # WARNING < CRITICAL <= 604800 and 1 <= WARNING < CRITICAL: each has one bound that
    # the other makes unreachable, probed just inside.
    Range(
        "RECENT_DATA_WARNING_S",
        float,
        "1",
        "604800",
        "0.99",
        "604800.01",
        inside_high="604799.99",
        env={"RECENT_DATA_CRITICAL_S": "604800"},
    ),
    Range(
        "RECENT_DATA_CRITICAL_S",
        float,
        "1",
        "604800",
        "0.99",
        "604800.01",
        inside_low="1.01",
        env={"RECENT_DATA_WARNING_S": "1"},
    ),
    Range("ALERT_INTERVAL_S", float, "1", "86400", "0.99", "86400.01"),
    Range("ALERT_COOLDOWN_S", float, "0", "604800", "-0.01", "604800.01"),
    Range("EQUIPMENT_OFFLINE_AFTER_S", float, "1", "86400", "0.99", "86400.01"),
    Range("EQUIPMENT_OFFLINE_STORM", int, "1", "1000000", "0", "1000001"),
]
BY_NAME = {r.name: r for r in RANGES}


def _ids(ranges: list[Range]) -> list[str]:
    return [r.name for r in ranges]


@pytest.mark.parametrize("spec", RANGES, ids=_ids(RANGES))
def test_each_bound_is_accepted(spec: Range) -> None:
    """The lowest and the highest accepted value load as numbers of the setting's kind."""
    for raw in spec.accepted:
        value = field_value(load_settings(spec.environment(raw), dotenv=None), spec.name)
        assert type(value) is spec.kind and value == spec.kind(raw), (raw, value)


@pytest.mark.parametrize("spec", RANGES, ids=_ids(RANGES))
def test_just_outside_each_bound_is_refused_by_the_range_rule(spec: Range) -> None:
    """One step below the lowest and above the highest: the range rule fires and says
    what it accepts."""
    for raw in (spec.below, spec.above):
        with pytest.raises(ConfigError) as caught:
            load_settings(spec.environment(raw), dotenv=None)
        expected = f"{spec.name}={raw!r} is out of range (accepts {spec.low}..{spec.high})"
        assert str(caught.value) == expected


@pytest.mark.parametrize("spec", RANGES, ids=_ids(RANGES))
def test_a_non_number_is_refused_by_the_type_rule(spec: Range) -> None:
    """Text (and, for integers, a fraction) is refused as not a number of that kind."""
    label = "an integer" if spec.kind is int else "a number"
    for raw in ("abc", "1.5") if spec.kind is int else ("abc", "1,5"):
        with pytest.raises(ConfigError) as caught:
            load_settings(spec.environment(raw), dotenv=None)
        assert str(caught.value) == (
            f"{spec.name}={raw!r} is not {label} (accepts {spec.low}..{spec.high})"
        )


@pytest.mark.parametrize("raw", ["nan", "inf", "-inf"])
def test_nan_and_infinity_are_out_of_range(raw: str) -> None:
    """float() accepts them; the range check must still refuse them."""
    assert refusal(FLUSH_INTERVAL_S=raw) == (
        f"FLUSH_INTERVAL_S={raw!r} is out of range (accepts 0.01..300)"
    )


def test_surrounding_spaces_are_ignored_in_numbers() -> None:
    """A value from a hand-edited .env may carry spaces."""
    assert load(BATCH_MAX=" 7 ").batch_max == 7
    assert load(FLUSH_INTERVAL_S=" 0.5 ").flush_interval_s == 0.5


def _documented_rows() -> dict[str, list[str]]:
    """docs/configuration.md's table: variable -> [default, accepts, meaning]."""
    rows: dict[str, list[str]] = {}
    for line in CONFIG_DOC.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.split("|")[1:-1]]
        match = re.fullmatch(r"`([A-Z][A-Z0-9_]*)`", cells[0]) if len(cells) == 4 else None
        if match:
            rows[match.group(1)] = cells[1:]
    assert set(rows) == set(documented_variables())
    return rows


@pytest.mark.parametrize("spec", RANGES, ids=_ids(RANGES))
def test_the_documented_range_is_the_enforced_one(spec: Range) -> None:
    """The docs' "accepts" column gives the same kind and the same two bounds."""
    accepts = _documented_rows()[spec.name][1]
    kind = "integer" if spec.kind is int else "number"
    assert accepts.startswith(f"{kind} {spec.low}..{spec.high}"), accepts


# --- the timing rules -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("lease", "heartbeat"), [("5", "2.5"), ("4", "2"), ("0.5", "0.25"), ("300", "60")]
)
def test_heartbeat_at_exactly_half_the_lease_is_accepted(lease: str, heartbeat: str) -> None:
    """A standby sees two missed heartbeats before the lease runs out: half is allowed."""
    settings = load(LEASE_TTL_S=lease, HEARTBEAT_S=heartbeat)
    assert (settings.lease_ttl_s, settings.heartbeat_s) == (float(lease), float(heartbeat))


@pytest.mark.parametrize(
    ("lease", "heartbeat"), [("5", "2.51"), ("4", "2.01"), ("0.5", "0.26"), ("100", "50.01")]
)
def test_heartbeat_above_half_the_lease_is_refused_by_the_half_rule(
    lease: str, heartbeat: str
) -> None:
    """Just above half: the half rule fires (not the range rule, nor the renew rule)."""
    assert refusal(LEASE_TTL_S=lease, HEARTBEAT_S=heartbeat) == (
        f"HEARTBEAT_S={float(heartbeat)} must be at most half of LEASE_TTL_S={float(lease)}"
    )


def test_the_default_heartbeat_needs_a_lease_of_two_seconds() -> None:
    """Lowering LEASE_TTL_S below 2 alone trips the half rule (the docs say so)."""
    assert load(LEASE_TTL_S="2").heartbeat_s == 1.0
    assert refusal(LEASE_TTL_S="1.99") == (
        "HEARTBEAT_S=1.0 must be at most half of LEASE_TTL_S=1.99"
    )


@pytest.mark.parametrize(
    ("heartbeat", "renew", "lease"),
    [("1", "1.01", "5"), ("1", "4.99", "5"), ("0.05", "0.1", "0.5"), ("2.5", "2.51", "5")],
)
def test_renew_deadline_strictly_between_heartbeat_and_lease_is_accepted(
    heartbeat: str, renew: str, lease: str
) -> None:
    settings = load(HEARTBEAT_S=heartbeat, RENEW_DEADLINE_S=renew, LEASE_TTL_S=lease)
    assert settings.renew_deadline_s == float(renew)


@pytest.mark.parametrize(
    ("heartbeat", "renew", "lease"),
    [("1", "1", "5"), ("1", "5", "5"), ("1", "0.99", "5"), ("1", "5.01", "5"), ("1", "8", "5")],
)
def test_renew_deadline_at_or_beyond_either_end_is_refused_by_the_renew_rule(
    heartbeat: str, renew: str, lease: str
) -> None:
    """Equal to the heartbeat or to the lease is refused: the leader must stop writing
    before anybody may evict it, and later than its own last heartbeat."""
    assert refusal(HEARTBEAT_S=heartbeat, RENEW_DEADLINE_S=renew, LEASE_TTL_S=lease) == (
        f"RENEW_DEADLINE_S={float(renew)} must be above HEARTBEAT_S={float(heartbeat)} "
        f"and below LEASE_TTL_S={float(lease)}"
    )


@pytest.mark.parametrize(
    ("lease", "heartbeat", "renew"),
    [("5", "1", 3.5), ("10", "1", 7.0), ("0.5", "0.1", 0.35), ("300", "60", 210.0)],
)
def test_unset_renew_deadline_is_seven_tenths_of_the_lease(
    lease: str, heartbeat: str, renew: float
) -> None:
    """The default always satisfies the renew rule, at both ends of the lease's range."""
    settings = load(LEASE_TTL_S=lease, HEARTBEAT_S=heartbeat)
    assert settings.renew_deadline_s == pytest.approx(renew)
    blank = load(LEASE_TTL_S=lease, HEARTBEAT_S=heartbeat, RENEW_DEADLINE_S="")
    assert blank.renew_deadline_s == settings.renew_deadline_s


def _timing(places: int, low: str, high: str) -> st.SearchStrategy[Decimal]:
    return st.decimals(Decimal(low), Decimal(high), places=places)


@settings(max_examples=300, deadline=None)
@given(
    lease=_timing(2, "0.5", "300"),
    heartbeat=_timing(2, "0.05", "60"),
    renew=st.none() | _timing(2, "0.1", "300"),
    data=st.data(),
)
def test_the_timing_rules_decide_alone(
    lease: Decimal, heartbeat: Decimal, renew: Decimal | None, data: st.DataObject
) -> None:
    """Any in-range lease, heartbeat and renew deadline (often exactly on an edge): the
    half rule, then the renew rule, decide, and the message names the one that fired."""
    # Pull the values onto the edges the rules compare, often.
    if data.draw(st.booleans()):
        heartbeat = min(lease / 2, Decimal(60))
    if renew is not None and data.draw(st.booleans()):
        renew = data.draw(st.sampled_from([v for v in (heartbeat, lease) if v >= Decimal("0.1")]))
    env = {"LEASE_TTL_S": str(lease), "HEARTBEAT_S": str(heartbeat)}
    if renew is not None:
        env["RENEW_DEADLINE_S"] = str(renew)
    if heartbeat * 2 > lease:
        assert refusal(**env) == (
            f"HEARTBEAT_S={float(heartbeat)} must be at most half of LEASE_TTL_S={float(lease)}"
        )
    elif renew is not None and not heartbeat < renew < lease:
        assert refusal(**env) == (
            f"RENEW_DEADLINE_S={float(renew)} must be above HEARTBEAT_S={float(heartbeat)} "
            f"and below LEASE_TTL_S={float(lease)}"
        )
    else:
        loaded = load(**env)
        assert (loaded.lease_ttl_s, loaded.heartbeat_s) == (float(lease), float(heartbeat))
        expected = float(renew) if renew is not None else float(f"{float(lease) * 0.7:g}")
        assert loaded.renew_deadline_s == expected
        assert loaded.heartbeat_s < loaded.renew_deadline_s < loaded.lease_ttl_s


def test_recent_data_critical_must_be_strictly_above_warning() -> None:
    """Equal thresholds are refused by that rule; one hundredth above is accepted."""
    assert refusal(RECENT_DATA_WARNING_S="600", RECENT_DATA_CRITICAL_S="600") == (
        "RECENT_DATA_CRITICAL_S=600.0 must be above RECENT_DATA_WARNING_S=600.0"
    )
    assert refusal(RECENT_DATA_WARNING_S="7200") == (
        "RECENT_DATA_CRITICAL_S=7200.0 must be above RECENT_DATA_WARNING_S=7200.0"
    )
    settings = load(RECENT_DATA_WARNING_S="600", RECENT_DATA_CRITICAL_S="600.01")
    assert (settings.recent_data_warning_s, settings.recent_data_critical_s) == (600.0, 600.01)


# --- defaults: docs/configuration.md's table is the contract ---------------------------------

# Needed for any start, so they have no default value to compare.
REQUIRED = {"DATABASE_URL", "MQTT_URL", "MQTT_HOST"}
# The minimal environment the defaults are read from: the broker in its legacy form so
# that MQTT_PORT, MQTT_USERNAME, MQTT_PASSWORD and MQTT_TLS keep their defaults.
MINIMAL = {"DATABASE_URL": BASE["DATABASE_URL"], "MQTT_HOST": "broker"}


def _expected_default(name: str, cell: str, loaded: object) -> object:
    """The documented default cell as the value of `loaded`'s type."""
    if name == "INSTANCE_ID":
        assert cell == "the host name"
        return socket.gethostname()
    if name == "RENEW_DEADLINE_S":
        assert cell.startswith("0.7 × `LEASE_TTL_S`"), cell
        return default_renew_deadline(default_value("LEASE_TTL_S"))
    if cell.startswith("none"):
        return Secret("") if isinstance(loaded, Secret) else None
    text = re.match(r"`([^`]+)`", cell)
    assert text, f"{name}: no default value in {cell!r}"
    raw = text.group(1)
    converters: dict[type, Callable[[str], object]] = {
        bool: lambda v: v == "true",
        int: int,
        float: float,
        str: str,
    }
    if isinstance(loaded, Path):
        return Path(raw)
    return converters[type(loaded)](raw)


def test_every_documented_default_applies() -> None:
    """With nothing set, each variable holds the default its docs row gives, of the
    right type: none of them silently becomes None (or 0, or "")."""
    settings = load_settings(MINIMAL, dotenv=None)
    rows = _documented_rows()
    for name in sorted(set(rows) - REQUIRED):
        cell = rows[name][0]
        loaded = setting_value(settings, name)
        expected = _expected_default(name, cell, loaded)
        assert loaded == expected, (name, cell, loaded)
        if not cell.startswith("none"):
            assert loaded is not None and type(loaded) is type(expected), (name, loaded)
    for name in REQUIRED:
        assert rows[name][0].startswith("none"), name


@pytest.mark.parametrize("blank", ["", "   ", "\t"])
def test_an_empty_variable_takes_its_default(blank: str) -> None:
    """Every variable with a default, set to blank, loads exactly as when unset."""
    rows = _documented_rows()
    with_defaults = [n for n in rows if n not in REQUIRED and not rows[n][0].startswith("none")]
    assert len(with_defaults) > 30
    env = {**MINIMAL, **dict.fromkeys(with_defaults, blank)}
    assert load_settings(env, dotenv=None) == load_settings(MINIMAL, dotenv=None)


def test_unset_optional_variables_stay_unset() -> None:
    """The "none" rows set to the empty string stay unset (no empty host, no login)."""
    rows = _documented_rows()
    optional = [n for n in rows if n not in REQUIRED and rows[n][0].startswith("none")]
    assert {"SMTP_HOST", "ADMIN_TOKEN", "MQTT_TLS_CA"} <= set(optional)
    settings = load_settings({**MINIMAL, **dict.fromkeys(optional, "")}, dotenv=None)
    for name in optional:
        assert not setting_value(settings, name), name


def test_the_dataclass_defaults_are_the_loaded_defaults() -> None:
    """`Settings(...)` built in code (tests, tools) gets the same defaults as the
    environment gives."""
    loaded = load_settings({**BASE, "INSTANCE_ID": "a"}, dotenv=None)
    built = Settings(database_url=loaded.database_url, mqtt=loaded.mqtt, instance_id="a")
    for f in fields(Settings):
        assert getattr(built, f.name) == getattr(loaded, f.name), f.name


# --- every value reaches its own field ------------------------------------------------------


def test_every_variable_reaches_its_field(tmp_path: Path) -> None:
    """A non-default value for every documented variable lands in its own field (a value
    read under the wrong name, or dropped, would leave the default there)."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    spool = tmp_path / "spool"
    values: dict[str, tuple[str, object]] = {
        "INSTANCE_ID": ("node-1.a:b@c_D", "node-1.a:b@c_D"),
        "CLUSTER_NAME": ("west", "west"),
        "MQTT_MODE": ("development", "development"),
        "MQTT_TLS_CA": (str(ca), str(ca)),
        "MQTT_TLS_INSECURE": ("true", True),
        "HTTP_HOST": ("127.0.0.2", "127.0.0.2"),
        "HTTP_PORT": ("3001", 3001),
        "HTTP_MAX_CONNECTIONS": ("201", 201),
        "HTTP_HEADER_TIMEOUT_S": ("11", 11.0),
        "HEALTH_DETAILS": ("public", "public"),
        "LEASE_TTL_S": ("6", 6.0),
        "HEARTBEAT_S": ("1.5", 1.5),
        "RENEW_DEADLINE_S": ("4", 4.0),
        "FLUSH_INTERVAL_S": ("2", 2.0),
        "ROLLUP_GRACE_S": ("16", 16.0),
        "STANDBY_HORIZON_S": ("601", 601.0),
        "BATCH_MAX": ("5001", 5001),
        "BUFFER_MAX_MESSAGES": ("200001", 200001),
        "MAX_PAYLOAD_BYTES": ("262145", 262145),
        "MQTT_RECEIVE_MAXIMUM": ("2001", 2001),
        "SPOOL_DIR": (str(spool), spool),
        "SPOOL_MAX_BYTES": ("1073741825", 1073741825),
        "SPOOL_FSYNC": ("false", False),
        "REJECT_PAYLOAD_PREFIX_BYTES": ("4097", 4097),
        "REJECT_RATE_PER_MIN": ("61", 61.0),
        "REJECT_BURST": ("21", 21),
        "REJECT_RETENTION_DAYS": ("31", 31.0),
        "LOG_FORMAT": ("console", "console"),
        "LOG_LEVEL": ("debug", "debug"),
        "ADMIN_TOKEN": ("admin-token-0123", Secret("admin-token-0123")),
        "ALERT_WEBHOOK_URL": ("https://hooks.example/T", Secret("https://hooks.example/T")),
        "SMTP_HOST": ("smtp.example", "smtp.example"),
        "SMTP_PORT": ("465", 465),
        "SMTP_USER": ("alerts", "alerts"),
        "SMTP_PASS": ("smtp-pass-1", Secret("smtp-pass-1")),
        "ALERT_EMAIL_TO": ("ops@example", "ops@example"),
        "SMTP_TLS_CA": (str(ca), str(ca)),
        "DB_CONNECT_TIMEOUT_S": ("6", 6.0),
        "RECENT_DATA_WARNING_S": ("601", 601.0),
        "RECENT_DATA_CRITICAL_S": ("7201", 7201.0),
        "ALERT_INTERVAL_S": ("301", 301.0),
        "ALERT_COOLDOWN_S": ("3601", 3601.0),
        "EQUIPMENT_OFFLINE_AFTER_S": ("901", 901.0),
        "EQUIPMENT_OFFLINE_STORM": ("11", 11),
        "LEGACY_TIMESTAMP_ZONE": ("America/Sao_Paulo", "America/Sao_Paulo"),
        "DATABASE_URL": ("postgres://x@db2/other", Secret("postgres://x@db2/other")),
    }
    broker = {
        "MQTT_HOST": ("broker2", "broker2"),
        "MQTT_PORT": ("1884", 1884),
        "MQTT_USERNAME": ("dev", "dev"),
        "MQTT_PASSWORD": ("pw-1", Secret("pw-1")),
        "MQTT_TLS": ("on", True),
    }
    covered = {*values, *broker, "MQTT_URL"}  # MQTT_URL: test_config_values.py
    assert covered == set(documented_variables()), "a new variable needs a row here"
    settings = load_settings(
        {name: raw for name, (raw, _) in {**values, **broker}.items()}, dotenv=None
    )
    for name, (_, expected) in {**values, **broker}.items():
        assert setting_value(settings, name) == expected, name
