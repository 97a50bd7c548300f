"""The thin connector: how aupus-ha opens PostgreSQL connections.

Two kinds: the dedicated *lock connection* (one per process, never pooled: a session
advisory lock lives and dies with it) and a small *pool* for flushes and queries. Both
carry an `application_name` unique to the process, so a standby that evicts a silent
leader can end every session of that process, and both use short TCP keepalives so a
dead peer is noticed in seconds rather than after the Linux default of ~2 h 11 min.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import asyncpg

from aupus_ha.config import Settings


class DatabaseUnavailable(Exception):
    """The database cannot do this work now: it is unreachable, or in a state that
    passes (read-only, disk full, out of connection slots, shutting down, a conflict to
    retry). The work is retried with backoff; the process keeps running."""

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ErrorKind(enum.Enum):
    """What to do about one exception raised while talking to the database."""

    TRANSIENT = "transient"  # the database's state: retry the same work later, back off
    ITEM = "item"  # the item's data: isolate it (ingest_rejects), write the rest
    OTHER = "other"  # neither (a privilege, a missing table, a server bug): back off, log


# The one SQLSTATE table (docs/architecture.md, "Database errors"). A whole class when
# every code in it is a state of the server or the session, single codes otherwise.
TRANSIENT_SQLSTATE_CLASSES: Final = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: 40001 serialization failure, 40P01 deadlock
        "53",  # insufficient resources: 53100 disk full, 53300 too many connections
        "57",  # operator intervention: 57P01-57P03 shutdown, 57P05 idle session, 57014
    }
)
TRANSIENT_SQLSTATES: Final = frozenset(
    {
        "25006",  # read-only transaction: a failover onto a replica, default_..._read_only
        "25P03",  # idle-in-transaction session timeout
        "55P03",  # lock not available (lock_timeout)
        "58030",  # I/O error on the server's storage
    }
)
READ_ONLY_SQLSTATE: Final = "25006"
# A query slower than this counts as slow (the legacy API's SLOW_QUERY_THRESHOLD default).
SLOW_QUERY_MS: Final = 1000.0
# Refused for what one row holds: bisect the batch down to it and keep it as a reject.
ITEM_SQLSTATE_CLASSES: Final = frozenset(
    {
        "22",  # data exception: a value the column cannot hold
        "23",  # integrity constraint (unique conflicts are ON CONFLICT, never errors)
        "54",  # program limit exceeded: a value too large for the server
    }
)

# Errors without a SQLSTATE that mean "the database or the network is not there".
_TRANSPORT_ERRORS: Final[tuple[type[BaseException], ...]] = (
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
    asyncpg.InterfaceError,
    # The server ended the session (e.g. FATAL "terminating connection due to
    # administrator command" on shutdown) while the connection was idle: asyncpg parks
    # it in an error state until the socket closes, and a query sent in that window
    # fails with "cannot switch to state ...; another operation is in progress". The
    # connection is unusable, not the program broken: reconnect like any lost session.
    asyncpg.exceptions.InternalClientError,
)
# The server refused us: wrong password, or no pg_hba.conf entry (e.g. TLS required and
# sslmode=disable). Credentials and pg_hba are fixed on the server side, often without
# touching the cluster's configuration: report the database as unreachable (/health,
# `db.unavailable`) and retry, rather than crash the instance and its HTTP endpoints.
_TRANSIENT_CODES_BY_POLICY: Final = frozenset({"28000", "28P01"})


def sqlstate(exc: BaseException) -> str | None:
    """The SQLSTATE of a server error (or of a DatabaseUnavailable made from one)."""
    code = getattr(exc, "sqlstate", None)
    if isinstance(exc, asyncpg.PostgresError | DatabaseUnavailable) and isinstance(code, str):
        return code
    return None


def _transient_code(code: str) -> bool:
    return (
        code[:2] in TRANSIENT_SQLSTATE_CLASSES
        or code in TRANSIENT_SQLSTATES
        or code in _TRANSIENT_CODES_BY_POLICY
    )


def classify(exc: BaseException) -> ErrorKind:
    """The one place that decides between backing off and isolating an item."""
    if isinstance(exc, DatabaseUnavailable):
        return ErrorKind.TRANSIENT
    code = sqlstate(exc)
    if code is not None:
        if _transient_code(code):
            return ErrorKind.TRANSIENT
        return ErrorKind.ITEM if code[:2] in ITEM_SQLSTATE_CLASSES else ErrorKind.OTHER
    if isinstance(exc, _TRANSPORT_ERRORS):
        return ErrorKind.TRANSIENT
    if isinstance(exc, asyncpg.PostgresError):
        return ErrorKind.OTHER  # a server error without a code: not one item's fault
    # Any other exception was raised by our own code while turning items into SQL (a
    # rollup overflowing, an encoder refusing a value): blame the items, isolate them.
    return ErrorKind.ITEM


def _server_error_classes() -> tuple[type[BaseException], ...]:
    """asyncpg's exception class for every SQLSTATE the table calls transient."""
    found: list[type[BaseException]] = []
    for name in asyncpg.exceptions.__all__:
        cls = getattr(asyncpg.exceptions, name)
        code = getattr(cls, "sqlstate", None)
        if (
            isinstance(cls, type)
            and issubclass(cls, asyncpg.PostgresError)
            and isinstance(code, str)
            and _transient_code(code)
        ):
            found.append(cls)
    return tuple(found)


# For `except` clauses: the errors `classify` calls TRANSIENT, as types (asyncpg has one
# class per SQLSTATE it knows). Retried with backoff; they never crash the process. A
# code asyncpg does not know (a newer server's) arrives as UnknownPostgresError, which
# no type can sort by class: it is retried too, since a loop that cannot name an error
# must not die of it (the flush path asks `classify`, which reads the code itself).
CONNECTION_ERRORS: Final[tuple[type[BaseException], ...]] = (
    _TRANSPORT_ERRORS + _server_error_classes() + (asyncpg.exceptions.UnknownPostgresError,)
)


def unavailable(exc: BaseException) -> DatabaseUnavailable:
    """`exc` as the DatabaseUnavailable to raise (keeps its SQLSTATE for the logs)."""
    if isinstance(exc, DatabaseUnavailable):
        return exc
    return DatabaseUnavailable(describe_error(exc), sqlstate=sqlstate(exc))


@contextlib.contextmanager
def translating_db_errors(
    on_error: Callable[[BaseException], object] | None = None,
) -> Iterator[None]:
    """The one translation of a database failure into `DatabaseUnavailable`.

    Inside the block, every error `classify` calls TRANSIENT (a lost socket, a timeout,
    a server state that passes: `CONNECTION_ERRORS`) leaves as `DatabaseUnavailable`
    (SQLSTATE kept, original chained); anything else (a privilege, a missing table, a
    bug) leaves unchanged. `on_error` sees the original first (to log it, or to drop a
    connection it leaves unusable). A plain `with`: it works around `await`s too.
    """
    try:
        yield
    except CONNECTION_ERRORS as exc:
        if on_error is not None:
            on_error(exc)
        raise unavailable(exc) from exc


@dataclass(slots=True)
class QueryStats:
    """Queries this process ran on its pool (`GET /health/metrics/database`, the legacy
    route's `totalQueries` / `slowQueries` / `errorCount`). Fed by asyncpg's query
    logger, which runs after each statement (scheduled on the loop, never inline)."""

    slow_ms: float = SLOW_QUERY_MS
    total: int = 0
    slow: int = 0
    errors: int = 0

    def observe(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.total += 1
        if record.elapsed * 1000 > self.slow_ms:
            self.slow += 1
        if record.exception is not None:
            self.errors += 1


def _server_settings(settings: Settings, app_name: str) -> dict[str, str]:
    idle = max(1, int(settings.lease_ttl_s / 2))
    return {
        "application_name": app_name,
        # Legacy `timestamp without time zone` columns hold wall time of this zone (UTC,
        # DOMAIN v2): `created_at DEFAULT now()` and every `::timestamptz` cast of them
        # follow the session's TimeZone, never the server's (often America/Sao_Paulo).
        "TimeZone": settings.legacy_timestamp_zone,
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
    with translating_db_errors():
        conn: asyncpg.Connection = await asyncpg.connect(
            settings.database_url.reveal(),
            timeout=settings.db_connect_timeout_s,
            server_settings=_server_settings(settings, app_name),
            statement_cache_size=0,  # behind a misconfigured pooler, fail clearly, not oddly
        )
    if tune:
        _tune_client_socket(conn, settings)
    # The session may have ended (or gone read-only...) already: drop it, retry later.
    with translating_db_errors(on_error=lambda _: conn.terminate()):
        await _init_connection(conn)
    return conn


async def create_pool(
    settings: Settings,
    app_name: str,
    *,
    max_size: int = 4,
    query_stats: QueryStats | None = None,
) -> asyncpg.Pool:
    """The pool for flushes and queries (never for the lock); `query_stats` counts what
    runs on it."""

    async def init(conn: asyncpg.Connection) -> None:
        _tune_client_socket(conn, settings)
        await _init_connection(conn)
        if query_stats is not None:
            conn.add_query_logger(query_stats.observe)

    with translating_db_errors():
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
    return pool


def describe_error(exc: BaseException) -> str:
    """A short, secret-free description of a database error for logs."""
    name = type(exc).__name__
    code = sqlstate(exc)
    if code is not None and not isinstance(exc, DatabaseUnavailable):
        name = f"{name} [{code}]"
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{name}: {text}"[:300] if text else name


def rows_to_dicts(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [dict(r) for r in rows]
