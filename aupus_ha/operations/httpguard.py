"""Bounds on the HTTP server's connections: how many it keeps, and how long a request
may take to arrive.

aiohttp holds a connection that sends half a request until its keepalive timeout (an
hour by default). 300 of them exhausted a process limited to 256 open files: the spool
could not open its next segment and the instance died (issue 16). The HTTP port is
reachable by whoever can reach a load balancer's health checks, so:

- every connection must complete a request within `header_timeout_s` of opening, or of
  its previous response; otherwise it is aborted (its descriptor freed at once);
- at most `max_connections` are kept. When full, the oldest connection still waiting
  for a request is aborted to make room (a real probe sends its request within
  milliseconds; a slow client is the one waiting), and only when every connection is
  busy answering is the new one refused.

It wraps aiohttp's protocol factory, so it works whatever aiohttp's own timeouts are.

The guard sees a connection only at `connection_made`, loop iterations after asyncio
accepted its socket, and `serve_guarded` bounds that gap: see `ACCEPT_BATCH`.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from aupus_ha.logs import get_logger

log = get_logger(__name__)

# At most this share of the open-files limit goes to HTTP connections: the spool, the
# database pool, the broker and the logs need theirs.
HTTP_SHARE_OF_FILE_LIMIT = 0.5
LIMIT_LOG_INTERVAL_S = 60.0
# asyncio's selector loop accepts up to `backlog` sockets each time the listening socket
# is readable (one descriptor each), and the guard sees them only two loop iterations
# later, when their transports call `connection_made`; an evicted one frees its
# descriptor one iteration after that. With asyncio's default of 100, a burst of 300
# connects under CPU load reached the whole limit of 256 open files although the guard
# kept 128 (EMFILE: accepting paused a second at a time). Taking a few per iteration
# keeps the sockets the guard has not seen to a few dozen, well inside the half of the
# file limit it leaves to the rest (peak 155-188 of 256 in the same test).
ACCEPT_BATCH = 16
# The kernel queue of connections not yet accepted holds no descriptor of ours, so it
# stays long (capped by net.core.somaxconn): a burst waits there instead of having its
# SYNs dropped and retried one, three, seven seconds later.
LISTEN_QUEUE = 1024


@dataclass(slots=True)
class GuardStats:
    open: int = 0
    timed_out: int = 0  # no complete request within the header timeout
    evicted: int = 0  # aborted to make room for a new connection
    refused: int = 0  # full of busy connections: the new one was closed


def close_now(transport: asyncio.Transport) -> None:
    """Free the connection's descriptor now, and let its client see an end of stream.

    A socket closed with bytes it has not read yet makes the kernel send a reset instead
    of a FIN. Under load, asyncio may close a connection whose first bytes arrived after
    its last read (a burst evicts it before the next one): the client got "connection
    reset" instead of a close. Half-closing first sends the FIN ahead of that reset,
    and the client reads the end of stream.
    """
    if transport.can_write_eof():
        with contextlib.suppress(OSError):  # the peer may have gone already
            transport.write_eof()
    transport.abort()


class _Guarded(asyncio.Protocol):
    """Passes every call to aiohttp's protocol; tells the guard when it opens and closes."""

    __slots__ = ("_guard", "_inner", "transport")

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        if not self._guard.admit(self):
            close_now(transport)  # type: ignore[arg-type]
            return
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._guard.release(self):
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class ConnectionGuard:
    """The protocol factory given to `loop.create_server`, plus a middleware that tells
    it when a connection is answering a request (not waiting for one)."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        *,
        max_connections: int,
        header_timeout_s: float,
    ) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        # Connections waiting for a request, oldest first, with their deadline timer.
        self._waiting: dict[_Guarded, asyncio.TimerHandle] = {}
        self._busy: set[_Guarded] = set()
        self._by_transport: dict[object, _Guarded] = {}
        self._last_limit_log = 0.0
        self.stats = GuardStats()

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self._factory(), self)

    # --- connections ------------------------------------------------------------------

    def admit(self, conn: _Guarded) -> bool:
        if self.stats.open >= self.max_connections and not self._evict_oldest_waiting():
            self.stats.refused += 1
            self._log_limited()
            return False
        self.stats.open += 1
        self._by_transport[conn.transport] = conn
        self._wait(conn)
        return True

    def release(self, conn: _Guarded) -> bool:
        """Forget a closed connection; False when it was never admitted."""
        if self._by_transport.pop(conn.transport, None) is None:
            return False
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._busy.discard(conn)
        self.stats.open -= 1
        return True

    def _wait(self, conn: _Guarded) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[conn] = loop.call_later(self.header_timeout_s, self._expire, conn)

    def _expire(self, conn: _Guarded) -> None:
        if self._waiting.pop(conn, None) is not None and conn.transport is not None:
            self.stats.timed_out += 1
            close_now(conn.transport)

    def _evict_oldest_waiting(self) -> bool:
        oldest = next(iter(self._waiting), None)
        if oldest is None or oldest.transport is None:
            return False
        self._waiting.pop(oldest).cancel()
        self.stats.evicted += 1
        self._log_limited()
        close_now(oldest.transport)  # connection_lost (and release) follows
        return True

    def _log_limited(self) -> None:
        now = time.monotonic()
        if now - self._last_limit_log >= LIMIT_LOG_INTERVAL_S:
            self._last_limit_log = now
            log.warning(
                "http.connections_limited",
                max_connections=self.max_connections,
                evicted=self.stats.evicted,
                refused=self.stats.refused,
                timed_out=self.stats.timed_out,
            )

    # --- requests -----------------------------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[Any]]
    ) -> Any:
        conn = self._by_transport.get(request.transport)
        if conn is None:
            return await handler(request)
        timer = self._waiting.pop(conn, None)
        if timer is not None:
            timer.cancel()
        self._busy.add(conn)
        try:
            return await handler(request)
        finally:
            self._busy.discard(conn)
            if conn.transport is not None and not conn.transport.is_closing():
                self._wait(conn)  # the next request (keep-alive) gets the same bound


async def serve_guarded(guard: ConnectionGuard, host: str, port: int) -> asyncio.Server:
    """Listen on host:port with `guard` as the protocol factory, accepting at most
    `ACCEPT_BATCH` sockets per loop iteration from a queue of `LISTEN_QUEUE`."""
    loop = asyncio.get_running_loop()
    # asyncio uses `backlog` both for listen() and for the accepts per iteration; the
    # queue is set apart afterwards (listen() again only changes the queue's length).
    server = await loop.create_server(guard, host, port, reuse_address=True, backlog=ACCEPT_BATCH)
    for listening in server.sockets:
        with listening.dup() as same_socket:
            same_socket.listen(LISTEN_QUEUE)
    return server


def http_connection_limit(wanted: int) -> int:
    """`wanted`, or less when the open-files limit could not hold that many."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return wanted
    return max(4, min(wanted, int(soft * HTTP_SHARE_OF_FILE_LIMIT)))


def raise_open_files_limit() -> tuple[int, int]:
    """Raise the soft RLIMIT_NOFILE to the hard one (many systems start at 1,024) and
    log the result; (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    before = soft
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("instance.file_limit_unchanged", soft=soft, hard=hard, error=str(exc))
    log.info("instance.file_limit", soft=soft, hard=hard, was=before)
    return soft, hard
