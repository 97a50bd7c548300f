"""The thin connector: how aupus-ha opens PostgreSQL connections.

Two kinds: the dedicated *lock connection* (one per process, never pooled: a session
advisory lock lives and dies with it) and a small *pool* for flushes and queries. Both
carry an `application_name` unique to the process, so a standby that evicts a silent
leader can end every session of that process, and both use short TCP keepalives so a
dead peer is noticed in seconds rather than after the Linux default of ~2 h 11 min.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import asyncpg

from aupus_ha.config import Settings


class DatabaseUnavailable(Exception):
    """The database could not be reached or did not answer in time."""


# Errors that mean "the database or the network is not there", as opposed to a bug or
# bad data. Retried with backoff; they never crash the process.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.QueryCanceledError,
    # The server ended the session (e.g. FATAL "terminating connection due to
    # administrator command" on shutdown) while the connection was idle: asyncpg parks
    # it in an error state until the socket closes, and a query sent in that window
    # fails with "cannot switch to state ...; another operation is in progress". The
    # connection is unusable, not the program broken: reconnect like any lost session.
    asyncpg.exceptions.InternalClientError,
    # The server refused us: wrong password, or no pg_hba.conf entry (e.g. TLS required
    # and sslmode=disable). Credentials and pg_hba are fixed on the server side, often
    # without touching the cluster's configuration: report the database as unreachable
    # (/health, `db.unavailable`) and retry, rather than crash the instance and its HTTP
    # endpoints.
    asyncpg.InvalidAuthorizationSpecificationError,
)


def _server_settings(settings: Settings, app_name: str) -> dict[str, str]:
    idle = max(1, int(settings.lease_ttl_s / 2))
    return {
        "application_name": app_name,
        # The server notices a vanished client (host dead, cable cut) within about
        # idle + interval * count seconds and ends its session, releasing the lock.
        "tcp_keepalives_idle": str(idle),
        "tcp_keepalives_interval": "1",
        "tcp_keepalives_count": "3",
        "tcp_user_timeout": str(int(settings.lease_ttl_s * 1000)),
        # A paused process must not hold a transaction (and its row locks) forever.
        "idle_in_transaction_session_timeout": str(int(max(settings.lease_ttl_s * 2, 10) * 1000)),
    }


def _tune_client_socket(conn: asyncpg.Connection, settings: Settings) -> None:
    """Client-side keepalive and user timeout on the connection's socket (Linux)."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    idle = max(1, int(settings.lease_ttl_s / 2))
    for name, value in (
        ("TCP_KEEPIDLE", idle),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", int(settings.lease_ttl_s * 1000)),
    ):
        option = getattr(socket, name, None)
        if option is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, value)


def _encode_jsonb(value: bytes) -> bytes:
    return b"\x01" + value  # jsonb binary format: version byte, then the JSON text


def _decode_jsonb(value: bytes) -> bytes:
    return bytes(value[1:])


def _passthrough(value: bytes) -> bytes:
    return bytes(value)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # json/jsonb travel as raw bytes: readings are encoded once by orjson at decode time.
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=_encode_jsonb,
        decoder=_decode_jsonb,
        format="binary",
    )
    await conn.set_type_codec(
        "json",
        schema="pg_catalog",
        encoder=_passthrough,
        decoder=_passthrough,
        format="binary",
    )


async def connect(settings: Settings, app_name: str, *, tune: bool = True) -> asyncpg.Connection:
    """A dedicated connection (used for the session advisory lock)."""
    try:
        conn: asyncpg.Connection = await asyncpg.connect(
            settings.database_url.reveal(),
            timeout=settings.db_connect_timeout_s,
            server_settings=_server_settings(settings, app_name),
            statement_cache_size=0,  # behind a misconfigured pooler, fail clearly, not oddly
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(describe_error(exc)) from exc
    if tune:
        _tune_client_socket(conn, settings)
    await _init_connection(conn)
    return conn


async def create_pool(settings: Settings, app_name: str, *, max_size: int = 4) -> asyncpg.Pool:
    """The pool for flushes and queries (never for the lock)."""

    async def init(conn: asyncpg.Connection) -> None:
        _tune_client_socket(conn, settings)
        await _init_connection(conn)

    try:
        pool: asyncpg.Pool = await asyncpg.create_pool(
            settings.database_url.reveal(),
            min_size=1,
            max_size=max_size,
            timeout=settings.db_connect_timeout_s,
            command_timeout=30,
            server_settings=_server_settings(settings, app_name),
            init=init,
            max_inactive_connection_lifetime=60,
        )
    except CONNECTION_ERRORS as exc:
        raise DatabaseUnavailable(describe_error(exc)) from exc
    return pool


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a database error for logs."""
    name = type(exc).__name__
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}"[:300] if text else name


def rows_to_dicts(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]
