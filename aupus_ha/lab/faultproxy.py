"""A fault-injecting TCP proxy for chaos tests: pass, blackhole, reject or delay traffic.

Put one between a client and a server (an instance and PostgreSQL, or the broker) and
switch its mode while traffic flows:

* ``pass``: bytes are forwarded both ways as they come.
* ``blackhole``: a pulled cable. Existing and new connections go silent: whatever
  either side sends is read and dropped, nothing is closed (a close from either side is
  swallowed too), new connections are accepted but never reach the target. Clients only
  notice through their own timeouts, exactly as with a real partition.
* ``reject``: existing connections are reset at once and new ones are closed as soon as
  they are accepted (as with a server that is down).
* ``delay``: every chunk is forwarded `delay_s` after it was read; order is preserved
  and throughput is not limited (chunks wait in a queue, not in the reader).

Leaving ``blackhole``: a connection that lost bytes (or a close) while silent, or that
never reached the target, has a hole in its stream, so it is reset when the mode changes
back (what the far side of a long partition does: it has long given the connection up).
A connection that stayed idle through the blackhole simply carries on.

Every connection is a `_Link` owned by the proxy; its tasks are owned by the link and
`stop()` closes the listener and every link, waiting for their tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Literal, get_args

Mode = Literal["pass", "blackhole", "reject", "delay"]
MODES: tuple[str, ...] = get_args(Mode)

CHUNK_BYTES = 65536
CONNECT_TIMEOUT_S = 5.0
_QUEUE_CHUNKS = 256  # per direction: backpressure on the reader in pass/delay modes
_STOP_TIMEOUT_S = 5.0


class _Direction:
    """One way of a link: a reader task filling a queue, a writer task draining it."""

    def __init__(
        self, link: _Link, src: asyncio.StreamReader, dst: asyncio.StreamWriter | None
    ) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUE_CHUNKS)

    async def read_loop(self) -> None:
        try:
            await self._read_loop()
        except OSError:  # a reset from this side
            self.link.end_of_stream()

    async def write_loop(self) -> None:
        try:
            await self._write_loop()
        except OSError:  # the other side is gone
            self.link.end_of_stream()

    async def _read_loop(self) -> None:
        proxy = self.link.proxy
        while True:
            data = await self.src.read(CHUNK_BYTES)
            if proxy.mode == "blackhole" or self.dst is None:
                self.link.poisoned = True  # dropped bytes, or a dropped close
                if not data:
                    return
                continue
            if not data:
                await self.queue.join()  # what was read goes out before the close
                self.link.close()
                return
            due = time.monotonic() + (proxy.delay_s if proxy.mode == "delay" else 0.0)
            await self.queue.put((due, data))

    async def _write_loop(self) -> None:
        assert self.dst is not None
        while True:
            due, data = await self.queue.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if self.link.proxy.mode == "blackhole":
                    self.link.poisoned = True
                    continue
                self.dst.write(data)
                await self.dst.drain()
            finally:
                self.queue.task_done()


class _Link:
    """One proxied connection: the client's streams and (unless blackholed) the target's."""

    def __init__(
        self,
        proxy: FaultProxy,
        client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None,
    ) -> None:
        self.proxy = proxy
        self.client_writer = client[1]
        self.upstream_writer = upstream[1] if upstream else None
        self.poisoned = upstream is None  # never reached the target: can never pass
        self.closed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        up_writer = upstream[1] if upstream else None
        ways = [_Direction(self, client[0], up_writer)]
        if upstream is not None:
            ways.append(_Direction(self, upstream[0], client[1]))
        for way in ways:
            self._tasks.append(asyncio.create_task(way.read_loop(), name="faultproxy-read"))
            if way.dst is not None:
                self._tasks.append(asyncio.create_task(way.write_loop(), name="faultproxy-write"))

    def end_of_stream(self) -> None:
        """A side closed or reset: pass it on, unless blackholed (then it is swallowed)."""
        if self.proxy.mode == "blackhole":
            self.poisoned = True
        else:
            self.close()

    def close(self) -> None:
        """Reset both sides now and cancel the link's tasks (idempotent, synchronous)."""
        if self.closed.is_set():
            return
        self.closed.set()
        for writer in (self.client_writer, self.upstream_writer):
            if writer is not None:
                writer.transport.abort()
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()

    async def run(self) -> None:
        """Until the link is closed; then wait for its tasks to end."""
        try:
            await self.closed.wait()
        finally:
            self.close()
            await asyncio.gather(*self._tasks, return_exceptions=True)


class FaultProxy:
    """A TCP proxy from `listen_host:listen_port` (0 = pick one) to the target."""

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self._listen_port = listen_port
        self._mode: Mode = "pass"
        self._delay_s = 0.0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The listening port (the one picked by the kernel once started, for port 0)."""
        return self._listen_port

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def delay_s(self) -> float:
        return self._delay_s

    @property
    def connections(self) -> int:
        """Connections currently open through the proxy."""
        return len(self._links)

    async def start(self) -> None:
        if self._server is not None:
            return
        self._server = await asyncio.start_server(self._accept, self.listen_host, self._listen_port)
        self._listen_port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait for all tasks to end."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for link in list(self._links):
            link.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        if handlers:
            await asyncio.wait(handlers, timeout=_STOP_TIMEOUT_S)
        if server is not None:
            await server.wait_closed()

    def set_mode(self, mode: Mode, delay_s: float = 0.0) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._mode, self._delay_s = mode, delay_s
        if mode == "reject":
            for link in list(self._links):
                link.close()
        elif mode != "blackhole":
            for link in [lnk for lnk in self._links if lnk.poisoned]:
                link.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._serve(reader, writer)
        finally:
            self._handlers.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing():
            return
        upstream = None
        if self._mode != "blackhole":
            upstream = await self._connect_upstream()
            if upstream is None or self._refusing():  # the mode may have changed meanwhile
                if upstream is not None:
                    upstream[1].transport.abort()
                return
        link = _Link(self, (reader, writer), upstream)
        self._links.add(link)
        try:
            await link.run()
        finally:
            self._links.discard(link)

    def _refusing(self) -> bool:
        return self._mode == "reject" or self._server is None

    async def _connect_upstream(
        self,
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        """A connection to the target, or None when it refuses or does not answer."""
        with contextlib.suppress(OSError, TimeoutError):
            return await asyncio.wait_for(
                asyncio.open_connection(self.target_host, self.target_port),
                timeout=CONNECT_TIMEOUT_S,
            )
        return None
