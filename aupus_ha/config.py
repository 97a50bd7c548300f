"""Settings: read once from the environment (and an optional `.env`), validated at start.

A wrong value raises `ConfigError` naming the variable and what it accepts; the CLI turns
that into one line on stderr and exit code 2. Secrets are kept in `Secret` so that no
`repr`, log line or HTTP body can print them by accident.

Every variable's default and bounds live in one table, `SETTINGS`: the loader reads its
defaults and bounds from it, the `Settings` dataclass its field defaults, the docs check
compares docs/configuration.md with it, and the lab and the tests take "the default"
from it (`default_text`, `default_value`) instead of repeating a literal.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any, Final, Literal, TypeVar
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
LOG_FORMATS = ("json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
# What a boolean variable accepts (any case; blank is false).
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})
# Derived defaults (no literal in the table): the broker's port by TLS, the renewal
# deadline as a share of the lease, the instance named after its host.
MQTT_PORT_PLAIN = 1883
MQTT_PORT_TLS = 8883
RENEW_DEADLINE_SHARE = 0.7

Kind = Literal[
    "int", "float", "bool", "choice", "text", "secret", "path", "zone", "identifier", "file"
]


@dataclass(frozen=True, slots=True)
class Setting:
    """One environment variable: what it parses as, its default as written in an
    environment (None: no default, or `derived` from other values), its bounds."""

    name: str
    kind: Kind
    default: str | None
    doc: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    derived: str | None = None  # how a default without a literal is computed

    @property
    def value(self) -> Any:
        """The default as the loader's type (`Secret("")`, None when there is none)."""
        raw = self.default
        if self.kind == "secret":
            return Secret(raw or "")
        if raw is None:
            return None
        parse: dict[str, Callable[[str], object]] = {
            "int": int,
            "float": float,
            "bool": lambda v: v.strip().lower() in TRUE_WORDS,
            "path": Path,
        }
        return parse.get(self.kind, str)(raw)


def _s(name: str, kind: Kind, default: str | None, doc: str, **more: Any) -> Setting:
    return Setting(name, kind, default, doc, **more)


# The one table of settings, in the order of docs/configuration.md.
SETTINGS: Final[tuple[Setting, ...]] = (
    _s("DATABASE_URL", "secret", None, "the PostgreSQL database (required)"),
    _s("MQTT_URL", "secret", None, "the broker: mqtt://, mqtts://, optional user:password@"),
    _s("MQTT_HOST", "text", None, "legacy broker host, used only when MQTT_URL is empty"),
    _s(
        "MQTT_PORT",
        "int",
        None,
        "legacy broker port",
        low=1,
        high=65535,
        derived=f"{MQTT_PORT_PLAIN} ({MQTT_PORT_TLS} with MQTT_TLS)",
    ),
    _s("MQTT_USERNAME", "text", None, "legacy broker user name"),
    _s("MQTT_PASSWORD", "secret", None, "legacy broker password"),
    _s("MQTT_TLS", "bool", "false", "TLS to the broker"),
    _s("MQTT_TLS_CA", "file", None, "CA bundle that verifies the broker"),
    _s("MQTT_TLS_INSECURE", "bool", "false", "skip the broker's certificate check (tests)"),
    _s(
        "MQTT_MODE",
        "choice",
        constants.MODE_PRODUCTION,
        "may lead / only show / no MQTT",
        choices=constants.MQTT_MODES,
    ),
    _s("MQTT_RECEIVE_MAXIMUM", "int", "2000", "QoS 1 messages in flight", low=1, high=65535),
    _s(
        "MAX_PAYLOAD_BYTES",
        "int",
        str(256 * 1024),
        "larger payloads are rejects",
        low=64,
        high=268_435_455,
    ),
    _s(
        "REJECT_PAYLOAD_PREFIX_BYTES",
        "int",
        "4096",
        "bytes of a bad message kept",
        low=0,
        high=1024**2,
    ),
    _s(
        "REJECT_RATE_PER_MIN",
        "float",
        "60",
        "rejects kept per topic per minute",
        low=0.01,
        high=1_000_000,
    ),
    _s("REJECT_BURST", "int", "20", "rejects a topic may keep at once", low=1, high=1_000_000),
    _s("REJECT_RETENTION_DAYS", "float", "30", "days a reject row is kept", low=0.001, high=36_500),
    _s("INSTANCE_ID", "identifier", None, "this process in the cluster", derived="the host name"),
    _s("CLUSTER_NAME", "identifier", "aupus", "instances that compete for one lock"),
    _s("HTTP_HOST", "text", "0.0.0.0", "where the HTTP API listens"),  # noqa: S104
    _s("HTTP_PORT", "int", "3000", "port of the HTTP API (0: any free)", low=0, high=65535),
    _s(
        "HTTP_MAX_CONNECTIONS",
        "int",
        "200",
        "HTTP connections kept open at once",
        low=4,
        high=100_000,
    ),
    _s(
        "HTTP_HEADER_TIMEOUT_S", "float", "10", "seconds to send a whole request", low=0.5, high=300
    ),
    _s(
        "HEALTH_DETAILS",
        "choice",
        HEALTH_DETAILS_TOKEN,
        "who sees the health details",
        choices=HEALTH_DETAILS_CHOICES,
    ),
    _s("LEASE_TTL_S", "float", "5", "a silent leader is replaced after this", low=0.5, high=300),
    _s("HEARTBEAT_S", "float", "1", "how often the lease rows are renewed", low=0.05, high=60),
    _s(
        "RENEW_DEADLINE_S",
        "float",
        None,
        "a leader unrenewed this long stops writing",
        low=0.1,
        high=300,
        derived=f"{RENEW_DEADLINE_SHARE} x LEASE_TTL_S",
    ),
    _s(
        "FLUSH_INTERVAL_S",
        "float",
        "1",
        "the leader writes at least this often",
        low=0.01,
        high=300,
    ),
    _s(
        "ROLLUP_GRACE_S",
        "float",
        "15",
        "wait after a minute before its rollup row",
        low=0,
        high=3600,
    ),
    _s(
        "STANDBY_HORIZON_S",
        "float",
        "600",
        "a standby may drop an unconfirmed reading after",
        low=1,
        high=86_400,
    ),
    _s("BATCH_MAX", "int", "5000", "most rows per flush transaction", low=1, high=1_000_000),
    _s(
        "BUFFER_MAX_MESSAGES",
        "int",
        "200000",
        "bound of the in-memory buffer",
        low=100,
        high=100_000_000,
    ),
    _s("DB_CONNECT_TIMEOUT_S", "float", "5", "one attempt to open a connection", low=0.5, high=120),
    _s("LEGACY_TIMESTAMP_ZONE", "zone", "UTC", "zone of legacy timestamp columns"),
    _s(
        "RECENT_DATA_WARNING_S",
        "float",
        "600",
        "newest reading older: warning",
        low=1,
        high=604_800,
    ),
    _s(
        "RECENT_DATA_CRITICAL_S",
        "float",
        "7200",
        "newest reading older: critical",
        low=1,
        high=604_800,
    ),
    _s("ALERT_INTERVAL_S", "float", "300", "how often alerts are evaluated", low=1, high=86_400),
    _s("ALERT_COOLDOWN_S", "float", "3600", "an open alert is repeated after", low=0, high=604_800),
    _s(
        "EQUIPMENT_OFFLINE_AFTER_S",
        "float",
        "900",
        "silence before equipment_offline",
        low=1,
        high=86_400,
    ),
    _s(
        "EQUIPMENT_OFFLINE_STORM",
        "int",
        "10",
        "more at once: one grouped notification",
        low=1,
        high=1_000_000,
    ),
    _s("LOG_FORMAT", "choice", "json", "log lines as JSON or for people", choices=LOG_FORMATS),
    _s("LOG_LEVEL", "choice", "info", "lowest level logged", choices=LOG_LEVELS),
    _s("SPOOL_DIR", "path", "./spool", "where the write-ahead spool lives"),
    _s(
        "SPOOL_MAX_BYTES",
        "int",
        str(1024**3),
        "upper bound of the spool",
        low=1024**2,
        high=1024**5,
    ),
    _s("SPOOL_FSYNC", "bool", "true", "every acknowledgement waits for an fsync"),
    _s("ADMIN_TOKEN", "secret", None, "token of the admin routes and health details"),
    _s("ALERT_WEBHOOK_URL", "secret", None, "where alerts are POSTed"),
    _s("SMTP_HOST", "text", None, "SMTP server for alert e-mails"),
    _s("SMTP_PORT", "int", "587", "SMTP port (465: TLS, 25: plain)", low=1, high=65535),
    _s("SMTP_TLS_CA", "file", None, "CA bundle that verifies the SMTP server"),
    _s("SMTP_USER", "text", None, "SMTP login (also the sender)"),
    _s("SMTP_PASS", "secret", None, "SMTP password"),
    _s("ALERT_EMAIL_TO", "text", None, "recipients of alert e-mails"),
)
SETTING: Final[Mapping[str, Setting]] = {s.name: s for s in SETTINGS}


def default_text(name: str) -> str:
    """Variable `name`'s default as an environment would hold it (e.g. "5")."""
    raw = SETTING[name].default
    if raw is None:
        raise KeyError(f"{name} has no literal default ({SETTING[name].derived or 'none'})")
    return raw


def default_value(name: str) -> Any:
    """Variable `name`'s default as the loaded `Settings` holds it (e.g. 5.0)."""
    return SETTING[name].value


def default_renew_deadline(lease_ttl_s: float) -> float:
    """RENEW_DEADLINE_S when unset: a share of the lease (3.5 s of the default 5 s)."""
    return float(f"{lease_ttl_s * RENEW_DEADLINE_SHARE:g}")


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
    """Every knob of one instance. Defaults: the `SETTINGS` table (ARCHITECTURE.md's)."""

    database_url: Secret
    mqtt: MqttEndpoint | None
    instance_id: str
    cluster_name: str = default_value("CLUSTER_NAME")
    mqtt_mode: str = default_value("MQTT_MODE")
    mqtt_tls_ca: str | None = default_value("MQTT_TLS_CA")
    mqtt_tls_insecure: bool = default_value("MQTT_TLS_INSECURE")
    http_host: str = default_value("HTTP_HOST")  # reachable by the load balancer
    http_port: int = default_value("HTTP_PORT")
    http_max_connections: int = default_value("HTTP_MAX_CONNECTIONS")
    http_header_timeout_s: float = default_value("HTTP_HEADER_TIMEOUT_S")
    health_details: str = default_value("HEALTH_DETAILS")
    lease_ttl_s: float = default_value("LEASE_TTL_S")
    heartbeat_s: float = default_value("HEARTBEAT_S")
    renew_deadline_s: float = default_renew_deadline(default_value("LEASE_TTL_S"))
    flush_interval_s: float = default_value("FLUSH_INTERVAL_S")
    rollup_grace_s: float = default_value("ROLLUP_GRACE_S")
    standby_horizon_s: float = default_value("STANDBY_HORIZON_S")
    batch_max: int = default_value("BATCH_MAX")
    buffer_max_messages: int = default_value("BUFFER_MAX_MESSAGES")
    max_payload_bytes: int = default_value("MAX_PAYLOAD_BYTES")
    mqtt_receive_maximum: int = default_value("MQTT_RECEIVE_MAXIMUM")
    spool_dir: Path = field(default_factory=lambda: default_value("SPOOL_DIR"))
    spool_max_bytes: int = default_value("SPOOL_MAX_BYTES")
    spool_fsync: bool = default_value("SPOOL_FSYNC")
    reject_payload_prefix_bytes: int = default_value("REJECT_PAYLOAD_PREFIX_BYTES")
    reject_rate_per_min: float = default_value("REJECT_RATE_PER_MIN")
    reject_burst: int = default_value("REJECT_BURST")
    reject_retention_days: float = default_value("REJECT_RETENTION_DAYS")
    log_format: str = default_value("LOG_FORMAT")
    log_level: str = default_value("LOG_LEVEL")
    admin_token: Secret = field(default_factory=lambda: default_value("ADMIN_TOKEN"))
    alert_webhook_url: Secret = field(default_factory=lambda: default_value("ALERT_WEBHOOK_URL"))
    smtp_host: str | None = default_value("SMTP_HOST")
    smtp_port: int = default_value("SMTP_PORT")
    smtp_user: str | None = default_value("SMTP_USER")
    smtp_pass: Secret = field(default_factory=lambda: default_value("SMTP_PASS"))
    alert_email_to: str | None = default_value("ALERT_EMAIL_TO")
    smtp_tls_ca: str | None = default_value("SMTP_TLS_CA")
    db_connect_timeout_s: float = default_value("DB_CONNECT_TIMEOUT_S")
    recent_data_warning_s: float = default_value("RECENT_DATA_WARNING_S")
    recent_data_critical_s: float = default_value("RECENT_DATA_CRITICAL_S")
    alert_interval_s: float = default_value("ALERT_INTERVAL_S")
    alert_cooldown_s: float = default_value("ALERT_COOLDOWN_S")
    # Per-device alerts (operations/device_alerts.py): silence before `equipment_offline`,
    # and how many at once before they are grouped into one notification.
    equipment_offline_after_s: float = default_value("EQUIPMENT_OFFLINE_AFTER_S")
    equipment_offline_storm: int = default_value("EQUIPMENT_OFFLINE_STORM")
    # The zone of the wall times in legacy `timestamp without time zone` columns
    # (DOMAIN v2: UTC). Every database session runs in it, so `created_at` defaults too.
    legacy_timestamp_zone: str = default_value("LEGACY_TIMESTAMP_ZONE")

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
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
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
        port = parts.port if parts.port is not None else _mqtt_default_port(tls)
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


def _mqtt_default_port(tls: bool) -> int:
    return MQTT_PORT_TLS if tls else MQTT_PORT_PLAIN


class _Env:
    """An environment read through `SETTINGS`: an unset or blank variable is its row's
    default, parsed with its row's kind and bounds. A row without a literal default
    takes `derived` (computed by the caller), and only a row that says it is derived."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self._env = env

    def text(self, name: str, derived: str | None = None) -> str:
        spec = SETTING[name]
        value = self._env.get(name)
        if value is not None and value.strip():
            return value
        if spec.default is not None:
            return spec.default
        if derived is None or spec.derived is None:
            raise ConfigError(f"{name} is required")
        return derived

    def integer(self, name: str, derived: str | None = None) -> int:
        spec = self._kind(name, "int")
        return _parse_number(name, self.text(name, derived), int, *self._bounds(spec))

    def real(self, name: str, derived: str | None = None) -> float:
        spec = self._kind(name, "float")
        return _parse_number(name, self.text(name, derived), float, *self._bounds(spec))

    def flag(self, name: str) -> bool:
        self._kind(name, "bool")
        return _parse_bool(name, self.text(name))

    def choice(self, name: str) -> str:
        return _parse_choice(name, self.text(name), self._kind(name, "choice").choices)

    def optional(self, name: str) -> str | None:
        """Text without a default: unset or empty is None (kept as written otherwise)."""
        return self._env.get(self._kind(name, "text", "file").name) or None

    def secret(self, name: str) -> Secret:
        return Secret(self._env.get(self._kind(name, "secret").name) or "")

    @staticmethod
    def _kind(name: str, *kinds: Kind) -> Setting:
        spec = SETTING[name]
        assert spec.kind in kinds, f"{name} is a {spec.kind} setting, read as {kinds}"
        return spec

    @staticmethod
    def _bounds(spec: Setting) -> tuple[float, float]:
        assert spec.low is not None and spec.high is not None, spec.name
        return spec.low, spec.high


def _mqtt_endpoint(env: _Env) -> MqttEndpoint | None:
    tls = env.flag("MQTT_TLS")
    user = env.optional("MQTT_USERNAME")
    password = env.secret("MQTT_PASSWORD")
    url = env.secret("MQTT_URL").reveal()
    if url.strip():
        endpoint = _parse_mqtt_url(url, tls)
        if endpoint.username is None and user:
            # A legacy .env may keep the credentials apart from the URL.
            endpoint = replace(endpoint, username=user, password=password)
        return endpoint
    host = (env.optional("MQTT_HOST") or "").strip()
    if not host:
        return None
    port = env.integer("MQTT_PORT", derived=str(_mqtt_default_port(tls)))
    return MqttEndpoint(host, port, tls, user, password)


def _tls_ca(name: str, raw: str | None) -> str | None:
    path = (raw or "").strip()
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


def _settings_from(variables: Mapping[str, str]) -> Settings:
    env = _Env(variables)
    database_url = env.secret("DATABASE_URL").reveal()
    if not database_url.strip():
        raise ConfigError(
            "DATABASE_URL is required (accepts postgresql://user:password@host:port/db)"
        )
    mode = env.choice("MQTT_MODE")
    mqtt = _mqtt_endpoint(env)
    if mqtt is None and mode != constants.MODE_DISABLED:
        raise ConfigError("MQTT_URL (or MQTT_HOST) is required unless MQTT_MODE=disabled")
    lease_ttl, heartbeat, renew = _lease_timings(env)
    warning, critical = _recent_data_thresholds(env)
    return Settings(
        database_url=_parse_database_url(database_url),
        mqtt=mqtt,
        instance_id=_parse_identifier(
            "INSTANCE_ID", env.text("INSTANCE_ID", derived=socket.gethostname())
        ),
        cluster_name=_parse_identifier("CLUSTER_NAME", env.text("CLUSTER_NAME")),
        mqtt_mode=mode,
        mqtt_tls_ca=_tls_ca("MQTT_TLS_CA", env.optional("MQTT_TLS_CA")),
        mqtt_tls_insecure=env.flag("MQTT_TLS_INSECURE"),
        http_host=env.text("HTTP_HOST"),
        http_port=env.integer("HTTP_PORT"),
        http_max_connections=env.integer("HTTP_MAX_CONNECTIONS"),
        http_header_timeout_s=env.real("HTTP_HEADER_TIMEOUT_S"),
        health_details=env.choice("HEALTH_DETAILS"),
        lease_ttl_s=lease_ttl,
        heartbeat_s=heartbeat,
        renew_deadline_s=renew,
        flush_interval_s=env.real("FLUSH_INTERVAL_S"),
        rollup_grace_s=env.real("ROLLUP_GRACE_S"),
        standby_horizon_s=env.real("STANDBY_HORIZON_S"),
        batch_max=env.integer("BATCH_MAX"),
        buffer_max_messages=env.integer("BUFFER_MAX_MESSAGES"),
        max_payload_bytes=env.integer("MAX_PAYLOAD_BYTES"),
        mqtt_receive_maximum=env.integer("MQTT_RECEIVE_MAXIMUM"),
        spool_dir=_parse_directory("SPOOL_DIR", env.text("SPOOL_DIR")),
        spool_max_bytes=env.integer("SPOOL_MAX_BYTES"),
        spool_fsync=env.flag("SPOOL_FSYNC"),
        reject_payload_prefix_bytes=env.integer("REJECT_PAYLOAD_PREFIX_BYTES"),
        reject_rate_per_min=env.real("REJECT_RATE_PER_MIN"),
        reject_burst=env.integer("REJECT_BURST"),
        reject_retention_days=env.real("REJECT_RETENTION_DAYS"),
        log_format=env.choice("LOG_FORMAT"),
        log_level=env.choice("LOG_LEVEL"),
        admin_token=env.secret("ADMIN_TOKEN"),
        alert_webhook_url=_parse_webhook_url(env.secret("ALERT_WEBHOOK_URL").reveal()),
        smtp_host=env.optional("SMTP_HOST"),
        smtp_port=env.integer("SMTP_PORT"),
        smtp_user=env.optional("SMTP_USER"),
        smtp_pass=env.secret("SMTP_PASS"),
        smtp_tls_ca=_tls_ca("SMTP_TLS_CA", env.optional("SMTP_TLS_CA")),
        alert_email_to=env.optional("ALERT_EMAIL_TO"),
        db_connect_timeout_s=env.real("DB_CONNECT_TIMEOUT_S"),
        recent_data_warning_s=warning,
        recent_data_critical_s=critical,
        alert_interval_s=env.real("ALERT_INTERVAL_S"),
        alert_cooldown_s=env.real("ALERT_COOLDOWN_S"),
        equipment_offline_after_s=env.real("EQUIPMENT_OFFLINE_AFTER_S"),
        equipment_offline_storm=env.integer("EQUIPMENT_OFFLINE_STORM"),
        legacy_timestamp_zone=_parse_zone(
            "LEGACY_TIMESTAMP_ZONE", env.text("LEGACY_TIMESTAMP_ZONE")
        ),
    )


def _lease_timings(env: _Env) -> tuple[float, float, float]:
    """LEASE_TTL_S, HEARTBEAT_S and RENEW_DEADLINE_S, with the rules between them."""
    lease_ttl = env.real("LEASE_TTL_S")
    heartbeat = env.real("HEARTBEAT_S")
    if heartbeat * 2 > lease_ttl:
        raise ConfigError(
            f"HEARTBEAT_S={heartbeat} must be at most half of LEASE_TTL_S={lease_ttl}"
        )
    renew = env.real("RENEW_DEADLINE_S", derived=f"{default_renew_deadline(lease_ttl):g}")
    if not heartbeat < renew < lease_ttl:
        raise ConfigError(
            f"RENEW_DEADLINE_S={renew} must be above HEARTBEAT_S={heartbeat} "
            f"and below LEASE_TTL_S={lease_ttl}"
        )
    return lease_ttl, heartbeat, renew


def _recent_data_thresholds(env: _Env) -> tuple[float, float]:
    warning = env.real("RECENT_DATA_WARNING_S")
    critical = env.real("RECENT_DATA_CRITICAL_S")
    if critical <= warning:
        raise ConfigError(
            f"RECENT_DATA_CRITICAL_S={critical} must be above RECENT_DATA_WARNING_S={warning}"
        )
    return warning, critical
