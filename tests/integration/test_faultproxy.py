"""FaultProxy on real loopback sockets: an echo server behind it, each mode in turn."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from aupus_ha.lab.embedded import free_port
from aupus_ha.lab.faultproxy import FaultProxy

SILENCE_S = 0.4  # how long "nothing arrives" is watched for
IO_TIMEOUT_S = 5.0

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class EchoServer:
    """Echoes every byte back; counts the connections it accepted."""

    def __init__(self) -> None:
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0)
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def stop(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in self._writers:
            writer.transport.abort()
        await self._server.wait_closed()

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    assert echo._server is not None
    port = echo._server.sockets[0].getsockname()[1]
    fp = FaultProxy("127.0.0.1", port)
    await fp.start()
    yield fp
    await fp.stop()


async def connect(proxy: FaultProxy) -> Conn:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", proxy.port), timeout=IO_TIMEOUT_S
    )


async def roundtrip(conn: Conn, data: bytes) -> bytes:
    reader, writer = conn
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout=IO_TIMEOUT_S)


async def silent(conn: Conn) -> bool:
    """True when nothing (no byte, no close) arrives for SILENCE_S."""
    try:
        await asyncio.wait_for(conn[0].read(1), timeout=SILENCE_S)
    except TimeoutError:
        return True
    return False


async def closed(conn: Conn) -> bool:
    """True when the connection is closed or reset (within IO_TIMEOUT_S)."""
    try:
        data = await asyncio.wait_for(conn[0].read(1), timeout=IO_TIMEOUT_S)
    except (ConnectionResetError, BrokenPipeError):
        return True
    return data == b""


def close(conn: Conn) -> None:
    conn[1].transport.abort()


async def test_pass_forwards_both_ways_intact(proxy: FaultProxy) -> None:
    """pass: a megabyte goes through and comes back byte for byte."""
    conn = await connect(proxy)
    payload = bytes(range(256)) * 4096
    assert await roundtrip(conn, payload) == payload
    assert proxy.connections == 1
    close(conn)


async def test_blackhole_silences_existing_and_new_connections(
    proxy: FaultProxy, echo: EchoServer
) -> None:
    """blackhole: bytes vanish, nothing is closed, new connections never reach the target;
    back to pass, the broken ones are reset and an idle one carries on."""
    busy, idle = await connect(proxy), await connect(proxy)
    assert await roundtrip(busy, b"hello") == b"hello"
    proxy.set_mode("blackhole")
    busy[1].write(b"lost")
    await busy[1].drain()
    assert await silent(busy)
    fresh = await connect(proxy)
    fresh[1].write(b"nobody hears this")
    assert await silent(fresh)
    assert echo.accepted == 2
    proxy.set_mode("pass")
    assert await closed(busy)
    assert await closed(fresh)
    assert await roundtrip(idle, b"still here") == b"still here"
    assert await roundtrip(await connect(proxy), b"new") == b"new"
    close(idle)


async def test_reject_closes_existing_and_refuses_new(proxy: FaultProxy) -> None:
    """reject: open connections are reset at once, new ones closed on arrival."""
    conn = await connect(proxy)
    assert await roundtrip(conn, b"x") == b"x"
    proxy.set_mode("reject")
    assert await closed(conn)
    assert await closed(await connect(proxy))
    proxy.set_mode("pass")
    assert await roundtrip(await connect(proxy), b"back") == b"back"


async def test_delay_adds_latency_and_keeps_order(proxy: FaultProxy) -> None:
    """delay: each way adds delay_s; many small writes arrive whole and in order."""
    conn = await connect(proxy)
    proxy.set_mode("delay", delay_s=0.2)
    started = time.monotonic()
    assert await roundtrip(conn, b"ping") == b"ping"
    assert time.monotonic() - started >= 0.4
    reader, writer = conn
    chunks = [f"{n:05d};".encode() for n in range(500)]
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    expected = b"".join(chunks)
    got = await asyncio.wait_for(reader.readexactly(len(expected)), timeout=IO_TIMEOUT_S)
    assert got == expected
    close(conn)


async def test_target_down_closes_the_client() -> None:
    """pass with nothing listening behind: the client's connection is closed."""
    fp = FaultProxy("127.0.0.1", free_port())
    await fp.start()
    try:
        assert await closed(await connect(fp))
    finally:
        await fp.stop()


async def test_stop_closes_everything(proxy: FaultProxy) -> None:
    """stop(): open connections end, even blackholed ones, and the port stops listening."""
    conns = [await connect(proxy), await connect(proxy)]
    proxy.set_mode("blackhole")
    conns.append(await connect(proxy))
    await proxy.stop()
    for conn in conns:
        assert await closed(conn)
    assert proxy.connections == 0
    with pytest.raises(OSError):
        await connect(proxy)


def test_unknown_mode_is_refused() -> None:
    """set_mode checks its arguments."""
    fp = FaultProxy("127.0.0.1", 1)
    with pytest.raises(ValueError, match="mode"):
        fp.set_mode("drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="delay_s"):
        fp.set_mode("delay", delay_s=-1)
