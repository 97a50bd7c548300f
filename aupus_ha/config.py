"""Settings: read once from the environment (and an optional `.env`), validated at start.

A wrong value raises `ConfigError` naming the variable and what it accepts; the CLI turns
that into one line on stderr and exit code 2. Secrets are kept in `Secret` so that no
`repr`, log line or HTTP body can print them by accident.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from aupus_ha import constants
from aupus_ha.pipeline.spool_files import directory_problem

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the variable."""


# Who sees topic lists, host details and raw database errors on the health routes:
# `token` = only requests carrying ADMIN_TOKEN; `public` = everybody (a knowing choice).
HEALTH_DETAILS_TOKEN = "token"  # noqa: S105 - a setting's value, not a secret
HEALTH_DETAILS_PUBLIC = "public"
HEALTH_DETAILS_CHOICES = (HEALTH_DETAILS_TOKEN, HEALTH_DETAILS_PUBLIC)
# A server refuses to start with a shorter ADMIN_TOKEN (http.py): short ones are
# guessable and slip under log scrubbing. Clients (`step-down`) may hold any value.
ADMIN_TOKEN_MIN_LENGTH = 12


class Secret:
    """A string that never shows itself in `repr`/`str`; `.reveal()` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__


@dataclass(frozen=True, slots=True)
class MqttEndpoint:
    host: str
    port: int
    tls: bool
    username: str | None
    password: Secret

    def display(self) -> str:
        scheme = "mqtts" if self.tls else "mqtt"
        user = f"{self.username}:***@" if self.username else ""
        return f"{scheme}://{user}{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of one instance. Defaults follow ARCHITECTURE.md."""

    database_url: Secret
    mqtt: MqttEndpoint | None
    instance_id: str
    cluster_name: str = "aupus"
    mqtt_mode: str = constants.MODE_PRODUCTION
    mqtt_tls_ca: str | None = None
    mqtt_tls_insecure: bool = False
    http_host: str = "0.0.0.0"  # noqa: S104 - a health endpoint must be reachable by the LB
    http_port: int = 3000
    http_max_connections: int = 200
    http_header_timeout_s: float = 10.0
    health_details: str = HEALTH_DETAILS_TOKEN
    lease_ttl_s: float = 5.0
    heartbeat_s: float = 1.0
    renew_deadline_s: float = 3.5
    flush_interval_s: float = 1.0
    rollup_grace_s: float = 15.0
    standby_horizon_s: float = 600.0
    batch_max: int = 5000
    buffer_max_messages: int = 200_000
    max_payload_bytes: int = 256 * 1024
    mqtt_receive_maximum: int = 2000
    spool_dir: Path = field(default_factory=lambda: Path("./spool"))
    spool_max_bytes: int = 1024**3
    spool_fsync: bool = True
    reject_payload_prefix_bytes: int = constants.REJECT_PAYLOAD_PREFIX_BYTES
    reject_rate_per_min: float = constants.REJECT_RATE_PER_MIN
    reject_burst: int = constants.REJECT_BURST
    reject_retention_days: float = constants.REJECT_RETENTION_DAYS
    log_format: str = "json"
    log_level: str = "info"
    admin_token: Secret = field(default_factory=lambda: Secret(""))
    alert_webhook_url: Secret = field(default_factory=lambda: Secret(""))
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_pass: Secret = field(default_factory=lambda: Secret(""))
    alert_email_to: str | None = None
    smtp_tls_ca: str | None = None
    db_connect_timeout_s: float = 5.0
    recent_data_warning_s: float = 600.0
    recent_data_critical_s: float = 7200.0
    alert_interval_s: float = 300.0
    alert_cooldown_s: float = 3600.0
    # Per-device alerts (operations/device_alerts.py): silence before `equipment_offline`,
    # and how many at once before they are grouped into one notification.
    equipment_offline_after_s: float = 900.0
    equipment_offline_storm: int = 10
    # The zone of the wall times in legacy `timestamp without time zone` columns
    # (DOMAIN v2: UTC). Every database session runs in it, so `created_at` defaults too.
    legacy_timestamp_zone: str = "UTC"

    @property
    def legacy_zone(self) -> tzinfo:
        """`legacy_timestamp_zone` as a tzinfo (validated at parse time)."""
        return UTC if self.legacy_timestamp_zone == "UTC" else ZoneInfo(self.legacy_timestamp_zone)

    @property
    def may_lead(self) -> bool:
        return self.mqtt_mode == constants.MODE_PRODUCTION

    @property
    def mqtt_enabled(self) -> bool:
        return self.mqtt_mode != constants.MODE_DISABLED and self.mqtt is not None

    def safe_summary(self) -> dict[str, object]:
        """What may be logged at start: every value, secrets masked."""
        out: dict[str, object] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Secret):
                value = "***" if value else ""
            elif isinstance(value, MqttEndpoint):
                value = value.display()
            elif isinstance(value, Path):
                value = str(value)
            out[f.name] = value
        out["database_url"] = mask_url(self.database_url.reveal())
        return out

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)


def mask_url(url: str) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    userinfo = netloc[0].split(":", 1)[0]
    # Every copy: the same user:password@host may come back in a query parameter.
    return url.replace(parts.netloc, f"{userinfo}:***@{netloc[1]}")


# --- parsing helpers: each names the variable in its error -------------------------


def _parse_bool(name: str, raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean (accepts true/false, 1/0, yes/no)")


def _parse_number(name: str, raw: str, kind: Callable[[str], T], low: float, high: float) -> T:
    try:
        value = kind(raw.strip())
    except ValueError:
        label = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name}={raw!r} is not {label} (accepts {low}..{high})") from None
    if not low <= value <= high:  # type: ignore[operator]
        raise ConfigError(f"{name}={raw!r} is out of range (accepts {low}..{high})")
    return value


def _parse_directory(name: str, raw: str) -> Path:
    """A directory we can create and write, or a clear exit-2 line now (not at the first
    message, when the instance would refuse to acknowledge anything)."""
    if not raw.strip():
        raise ConfigError(f"{name} must be a directory path")
    path = Path(raw)
    existing = next((p for p in (path, *path.parents) if _visible(p)), None)
    if existing is None or not existing.is_dir():
        raise ConfigError(f"{name}={raw!r}: not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{name}={raw!r}: {existing} is not writable by this user")
    if existing == path:  # what the spool will hold must be nobody else's to write
        problem = directory_problem(path)
        if problem is not None:
            raise ConfigError(f"{name}={raw!r} is refused: {problem}")
    return path


def _visible(path: Path) -> bool:
    """Whether `path` exists as far as this user can tell. Behind a parent it may not
    enter, stat() fails with EACCES: that parent, the nearest visible one, then decides
    (and is refused as not writable) instead of a PermissionError traceback."""
    try:
        return path.exists()
    except PermissionError:
        return False


def _readable_file(path: str) -> bool:
    """A file this user may read: one it may not read (or not reach) would only fail
    later, in every TLS handshake."""
    try:
        return Path(path).is_file() and os.access(path, os.R_OK)
    except PermissionError:
        return False


def _parse_choice(name: str, raw: str, choices: tuple[str, ...]) -> str:
    value = raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name}={raw!r} is invalid (accepts {' | '.join(choices)})")
    return value


def _parse_zone(name: str, raw: str) -> str:
    """An IANA time zone name both Python and PostgreSQL know (`UTC`, `America/Sao_Paulo`)."""
    value = raw.strip()
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/_-+")
    problem = f"{name}={raw!r} is invalid (accepts an IANA time zone name, e.g. UTC)"
    if not value or len(value) > 64 or not set(value) <= allowed or value.startswith("/"):
        raise ConfigError(problem)
    if value.upper() == "UTC":
        return "UTC"
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(problem) from None
    return value


def _parse_identifier(name: str, raw: str) -> str:
    value = raw.strip()
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@")
    if not value or len(value) > 128 or not set(value) <= allowed:
        raise ConfigError(
            f"{name}={raw!r} is invalid (accepts 1-128 characters: letters, digits, - _ . : @)"
        )
    return value


def _parse_webhook_url(raw: str) -> Secret:
    """http(s) only: another scheme (file:, ftp:, ...) is not a webhook. The URL is a
    secret (it usually carries the token), so the error does not quote it."""
    value = raw.strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ConfigError(
                "ALERT_WEBHOOK_URL is invalid (accepts an http:// or https:// URL with a host)"
            )
    return Secret(value)


def _parse_database_url(raw: str) -> Secret:
    value = raw.strip()
    parts = urlsplit(value)
    query = parse_qs(parts.query)  # drops empty values: `host=` names no host
    # A host in the URL or a `host=` parameter (a Unix socket directory); without one
    # asyncpg would quietly pick a default host.
    if parts.scheme not in {"postgres", "postgresql"} or not (parts.hostname or query.get("host")):
        raise ConfigError(
            "DATABASE_URL is invalid (accepts postgresql://user:password@host:port/database)"
        )
    _check_tls_query(query)
    return Secret(value)


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _check_tls_query(query: Mapping[str, list[str]]) -> None:
    """Bad TLS options fail at start (exit 2), not as an endless "database unavailable"."""
    for mode in query.get("sslmode", []):
        if mode not in SSLMODES:
            raise ConfigError(
                f"DATABASE_URL sslmode={mode!r} is invalid (accepts {', '.join(SSLMODES)})"
            )
    for name in ("sslrootcert", "sslcert", "sslkey"):
        for path in query.get(name, []):
            if path != "system" and not _readable_file(path):
                raise ConfigError(f"DATABASE_URL {name}={path!r} is not a readable file")


def _parse_mqtt_url(raw: str, tls_flag: bool) -> MqttEndpoint:
    parts = urlsplit(raw.strip())
    schemes = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}
    if parts.scheme not in schemes or not parts.hostname:
        raise ConfigError(
            f"MQTT_URL={mask_url(raw)!r} is invalid (accepts mqtt://host:port or mqtts://...)"
        )
    tls = schemes[parts.scheme] or tls_flag
    try:
        port = parts.port if parts.port is not None else (8883 if tls else 1883)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise ConfigError("MQTT_URL has an invalid port (accepts 1..65535)")
    return MqttEndpoint(
        host=parts.hostname,
        port=port,
        tls=tls,
        username=unquote(parts.username) if parts.username else None,
        password=Secret(unquote(parts.password) if parts.password else ""),
    )


def _mqtt_endpoint(env: Mapping[str, str]) -> MqttEndpoint | None:
    tls = _parse_bool("MQTT_TLS", env.get("MQTT_TLS", "false"))
    user = env.get("MQTT_USERNAME") or None
    password = env.get("MQTT_PASSWORD", "")
    if env.get("MQTT_URL", "").strip():
        endpoint = _parse_mqtt_url(env["MQTT_URL"], tls)
        if endpoint.username is None and user:
            # A legacy .env may keep the credentials apart from the URL.
            endpoint = replace(endpoint, username=user, password=Secret(password))
        return endpoint
    host = env.get("MQTT_HOST", "").strip()
    if not host:
        return None
    port_raw = env.get("MQTT_PORT", "").strip() or ("8883" if tls else "1883")
    port = _parse_number("MQTT_PORT", port_raw, int, 1, 65535)
    return MqttEndpoint(host, port, tls, user, Secret(password))


def _tls_ca(env: Mapping[str, str], name: str) -> str | None:
    path = env.get(name, "").strip()
    if path and not _readable_file(path):
        raise ConfigError(f"{name}={path!r} is not a readable file (accepts a PEM CA bundle)")
    return path or None


def load_dotenv_file(path: Path) -> dict[str, str]:
    """Values from a `.env` file; the process environment wins over them."""
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def load_settings(
    env: Mapping[str, str] | None = None,
    *,
    dotenv: Path | None = Path(".env"),
    overrides: Mapping[str, str] | None = None,
) -> Settings:
    """Build `Settings` from `env` (default: `.env` overlaid by `os.environ`).

    `overrides` (command-line flags, by variable name) win over both and go through
    the same validation.
    """
    if env is None:
        merged = load_dotenv_file(dotenv) if dotenv else {}
        merged.update(os.environ)
        env = merged
    if overrides:
        env = {**env, **overrides}
    return _settings_from(env)


def _settings_from(env: Mapping[str, str]) -> Settings:
    def get(name: str, default: str) -> str:
        value = env.get(name)
        return default if value is None or value.strip() == "" else value

    if not env.get("DATABASE_URL", "").strip():
        raise ConfigError(
            "DATABASE_URL is required (accepts postgresql://user:password@host:port/db)"
        )
    mode = _parse_choice("MQTT_MODE", get("MQTT_MODE", "production"), constants.MQTT_MODES)
    mqtt = _mqtt_endpoint(env)
    if mqtt is None and mode != constants.MODE_DISABLED:
        raise ConfigError("MQTT_URL (or MQTT_HOST) is required unless MQTT_MODE=disabled")
    num = _parse_number
    lease_ttl = num("LEASE_TTL_S", get("LEASE_TTL_S", "5"), float, 0.5, 300)
    heartbeat = num("HEARTBEAT_S", get("HEARTBEAT_S", "1"), float, 0.05, 60)
    if heartbeat * 2 > lease_ttl:
        raise ConfigError(
            f"HEARTBEAT_S={heartbeat} must be at most half of LEASE_TTL_S={lease_ttl}"
        )
    renew_default = f"{lease_ttl * 0.7:g}"
    renew = num("RENEW_DEADLINE_S", get("RENEW_DEADLINE_S", renew_default), float, 0.1, 300)
    if not heartbeat < renew < lease_ttl:
        raise ConfigError(
            f"RENEW_DEADLINE_S={renew} must be above HEARTBEAT_S={heartbeat} "
            f"and below LEASE_TTL_S={lease_ttl}"
        )
    warning = num("RECENT_DATA_WARNING_S", get("RECENT_DATA_WARNING_S", "600"), float, 1, 604_800)
    critical = num(
        "RECENT_DATA_CRITICAL_S", get("RECENT_DATA_CRITICAL_S", "7200"), float, 1, 604_800
    )
    if critical <= warning:
        raise ConfigError(
            f"RECENT_DATA_CRITICAL_S={critical} must be above RECENT_DATA_WARNING_S={warning}"
        )
    return Settings(
        database_url=_parse_database_url(env["DATABASE_URL"]),
        mqtt=mqtt,
        instance_id=_parse_identifier("INSTANCE_ID", get("INSTANCE_ID", socket.gethostname())),
        cluster_name=_parse_identifier("CLUSTER_NAME", get("CLUSTER_NAME", "aupus")),
        mqtt_mode=mode,
        mqtt_tls_ca=_tls_ca(env, "MQTT_TLS_CA"),
        mqtt_tls_insecure=_parse_bool("MQTT_TLS_INSECURE", get("MQTT_TLS_INSECURE", "false")),
        http_host=get("HTTP_HOST", "0.0.0.0"),  # noqa: S104
        http_port=num("HTTP_PORT", get("HTTP_PORT", "3000"), int, 0, 65535),
        http_max_connections=num(
            "HTTP_MAX_CONNECTIONS", get("HTTP_MAX_CONNECTIONS", "200"), int, 4, 100_000
        ),
        http_header_timeout_s=num(
            "HTTP_HEADER_TIMEOUT_S", get("HTTP_HEADER_TIMEOUT_S", "10"), float, 0.5, 300
        ),
        health_details=_parse_choice(
            "HEALTH_DETAILS", get("HEALTH_DETAILS", HEALTH_DETAILS_TOKEN), HEALTH_DETAILS_CHOICES
        ),
        lease_ttl_s=lease_ttl,
        heartbeat_s=heartbeat,
        renew_deadline_s=renew,
        flush_interval_s=num("FLUSH_INTERVAL_S", get("FLUSH_INTERVAL_S", "1"), float, 0.01, 300),
        rollup_grace_s=num("ROLLUP_GRACE_S", get("ROLLUP_GRACE_S", "15"), float, 0, 3600),
        standby_horizon_s=num(
            "STANDBY_HORIZON_S", get("STANDBY_HORIZON_S", "600"), float, 1, 86_400
        ),
        batch_max=num("BATCH_MAX", get("BATCH_MAX", "5000"), int, 1, 1_000_000),
        buffer_max_messages=num(
            "BUFFER_MAX_MESSAGES", get("BUFFER_MAX_MESSAGES", "200000"), int, 100, 100_000_000
        ),
        max_payload_bytes=num(
            "MAX_PAYLOAD_BYTES", get("MAX_PAYLOAD_BYTES", str(256 * 1024)), int, 64, 268_435_455
        ),
        mqtt_receive_maximum=num(
            "MQTT_RECEIVE_MAXIMUM", get("MQTT_RECEIVE_MAXIMUM", "2000"), int, 1, 65535
        ),
        spool_dir=_parse_directory("SPOOL_DIR", get("SPOOL_DIR", "./spool")),
        spool_max_bytes=num(
            "SPOOL_MAX_BYTES", get("SPOOL_MAX_BYTES", str(1024**3)), int, 1024**2, 1024**5
        ),
        spool_fsync=_parse_bool("SPOOL_FSYNC", get("SPOOL_FSYNC", "true")),
        reject_payload_prefix_bytes=num(
            "REJECT_PAYLOAD_PREFIX_BYTES",
            get("REJECT_PAYLOAD_PREFIX_BYTES", str(constants.REJECT_PAYLOAD_PREFIX_BYTES)),
            int,
            0,
            1024**2,
        ),
        reject_rate_per_min=num(
            "REJECT_RATE_PER_MIN", get("REJECT_RATE_PER_MIN", "60"), float, 0.01, 1_000_000
        ),
        reject_burst=num("REJECT_BURST", get("REJECT_BURST", "20"), int, 1, 1_000_000),
        reject_retention_days=num(
            "REJECT_RETENTION_DAYS", get("REJECT_RETENTION_DAYS", "30"), float, 0.001, 36_500
        ),
        log_format=_parse_choice("LOG_FORMAT", get("LOG_FORMAT", "json"), ("json", "console")),
        log_level=_parse_choice(
            "LOG_LEVEL", get("LOG_LEVEL", "info"), ("debug", "info", "warning", "error")
        ),
        admin_token=Secret(env.get("ADMIN_TOKEN", "")),
        alert_webhook_url=_parse_webhook_url(env.get("ALERT_WEBHOOK_URL", "")),
        smtp_host=env.get("SMTP_HOST") or None,
        smtp_port=num("SMTP_PORT", get("SMTP_PORT", "587"), int, 1, 65535),
        smtp_user=env.get("SMTP_USER") or None,
        smtp_pass=Secret(env.get("SMTP_PASS", "")),
        smtp_tls_ca=_tls_ca(env, "SMTP_TLS_CA"),
        alert_email_to=env.get("ALERT_EMAIL_TO") or None,
        db_connect_timeout_s=num(
            "DB_CONNECT_TIMEOUT_S", get("DB_CONNECT_TIMEOUT_S", "5"), float, 0.5, 120
        ),
        recent_data_warning_s=warning,
        recent_data_critical_s=critical,
        alert_interval_s=num("ALERT_INTERVAL_S", get("ALERT_INTERVAL_S", "300"), float, 1, 86_400),
        alert_cooldown_s=num(
            "ALERT_COOLDOWN_S", get("ALERT_COOLDOWN_S", "3600"), float, 0, 604_800
        ),
        equipment_offline_after_s=num(
            "EQUIPMENT_OFFLINE_AFTER_S", get("EQUIPMENT_OFFLINE_AFTER_S", "900"), float, 1, 86_400
        ),
        equipment_offline_storm=num(
            "EQUIPMENT_OFFLINE_STORM", get("EQUIPMENT_OFFLINE_STORM", "10"), int, 1, 1_000_000
        ),
        legacy_timestamp_zone=_parse_zone(
            "LEGACY_TIMESTAMP_ZONE", get("LEGACY_TIMESTAMP_ZONE", "UTC")
        ),
    )
