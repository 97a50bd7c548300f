"""Loud start-up warnings for transports that do not protect what they carry.

Each of these is a legitimate setting somewhere (a lab, a broker on the same host), so
none stops the start; but each one was accepted silently before (issue 16), and an
operator must see it once, at start, in plain words: a database connection whose server
is not verified, MQTT TLS without certificate checks, broker credentials or an SMTP
login sent in clear across a network.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import parse_qs, urlsplit

from aupus_ha.config import Settings
from aupus_ha.logs import get_logger

log = get_logger(__name__)

# libpq's sslmodes that check the server's certificate; the others (disable, allow,
# prefer - asyncpg's default - and require) accept whoever answers.
VERIFYING_SSLMODES = frozenset({"verify-ca", "verify-full"})
DEFAULT_SSLMODE = "prefer"
SMTP_PLAIN_PORT = 25

Warning = tuple[str, dict[str, object]]


def is_local(host: str | None) -> bool:
    """Loopback addresses, `localhost` and Unix sockets never cross a network."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _database_warning(settings: Settings) -> Warning | None:
    parts = urlsplit(settings.database_url.reveal())
    query = parse_qs(parts.query)
    host = parts.hostname or next(iter(query.get("host", [])), None)
    sslmode = (query.get("sslmode") or [DEFAULT_SSLMODE])[-1]
    if sslmode in VERIFYING_SSLMODES or is_local(host):
        return None
    return (
        "security.database_tls_unverified",
        {
            "host": host,
            "sslmode": sslmode,
            "fix": "DATABASE_URL ...?sslmode=verify-full&sslrootcert=<CA file>",
        },
    )


def _mqtt_warnings(settings: Settings) -> list[Warning]:
    endpoint = settings.mqtt
    if endpoint is None or not settings.mqtt_enabled:
        return []
    found: list[Warning] = []
    if endpoint.tls and settings.mqtt_tls_insecure:
        found.append(
            (
                "security.mqtt_tls_unverified",
                {"broker": endpoint.display(), "fix": "unset MQTT_TLS_INSECURE, set MQTT_TLS_CA"},
            )
        )
    if not endpoint.tls and endpoint.username and not is_local(endpoint.host):
        found.append(
            (
                "security.mqtt_credentials_in_clear",
                {"broker": endpoint.display(), "fix": "mqtts:// (or MQTT_TLS=true)"},
            )
        )
    return found


def _smtp_warning(settings: Settings) -> Warning | None:
    if not (settings.smtp_host and settings.smtp_user) or is_local(settings.smtp_host):
        return None
    if settings.smtp_port != SMTP_PLAIN_PORT:
        return None  # 465: TLS from the first byte; any other port: STARTTLS, verified
    return (
        "security.smtp_login_in_clear",
        {
            "host": settings.smtp_host,
            "port": settings.smtp_port,
            "fix": "SMTP_PORT=587 (STARTTLS) or 465 (TLS)",
        },
    )


def weak_transports(settings: Settings) -> list[Warning]:
    """Every weak transport in `settings`: (event, fields), secrets never included."""
    found = [_database_warning(settings), *_mqtt_warnings(settings), _smtp_warning(settings)]
    return [w for w in found if w is not None]


def warn_weak_transports(settings: Settings) -> None:
    """One warning line per weak transport, at start."""
    for event, fields in weak_transports(settings):
        log.warning(event, **fields)
