"""The throwaway servers the other tests stand on: start, restart, kill, pause, persistence."""

from __future__ import annotations

import asyncio
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import gmqtt
import psutil
import pytest

from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from tests.helpers import BrokerFactory, Inbox, async_wait_for, wait_for


def _refuses_connections(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _mqtt_connack(port: int, timeout: float) -> bool:
    """True if the broker answers a bare MQTT 3.1.1 CONNECT with a CONNACK in time."""
    connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(connect)
        try:
            return sock.recv(4) == b"\x20\x02\x00\x00"
        except TimeoutError:
            return False


def _gone(proc: psutil.Process) -> bool:
    try:
        return bool(proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def own_pg() -> Iterator[EmbeddedPostgres]:
    """A private server for tests that restart, kill or pause it, on a caller-chosen data
    directory (the demo's way). Not under tmp_path: as root, every pytest session start
    chmods /tmp/pytest-of-root back to 0700, locking the postgres user out mid-initdb."""
    workdir = Path(tempfile.mkdtemp(prefix="aupus-test-pg-"))
    server = EmbeddedPostgres(workdir / "pgdata")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
        assert (workdir / "pgdata").exists()  # a caller-given data directory is kept
        shutil.rmtree(workdir)


async def _scalar(dsn: str, sql: str) -> object:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def test_postgres_starts_and_answers(pg_server: EmbeddedPostgres) -> None:
    """The session server runs and answers a query over TCP as superuser postgres."""
    assert pg_server.is_running
    assert pg_server.pid is not None
    assert pg_server.dsn("x") == f"postgresql://postgres@127.0.0.1:{pg_server.port}/x"
    conn = await asyncpg.connect(pg_server.dsn(), timeout=10)
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SELECT current_user") == "postgres"
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
        assert await conn.fetchval("SHOW max_connections") == "300"
        assert await conn.fetchval("SHOW fsync") == "off"
    finally:
        await conn.close()


async def test_database_url_is_a_fresh_database(database_url: str) -> None:
    """database_url points at an existing, empty per-test database."""
    assert (
        await _scalar(database_url, "SELECT current_database()") == database_url.rsplit("/", 1)[1]
    )
    tables = await _scalar(
        database_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    )
    assert tables == 0


async def test_postgres_restart_keeps_data(own_pg: EmbeddedPostgres) -> None:
    """stop()+start() on the same data directory keeps committed rows and the port."""
    conn = await asyncpg.connect(own_pg.dsn(), timeout=10)
    await conn.execute("CREATE TABLE kept (v int); INSERT INTO kept VALUES (42)")
    await conn.close()
    old_pid, port = own_pg.pid, own_pg.port
    await asyncio.to_thread(own_pg.restart)
    assert own_pg.pid not in (None, old_pid)
    assert own_pg.port == port
    assert await _scalar(own_pg.dsn(), "SELECT v FROM kept") == 42


async def test_postgres_kill_frees_port_and_restart_works(own_pg: EmbeddedPostgres) -> None:
    """kill() SIGKILLs postmaster and backends, frees the port; committed rows survive."""
    conn = await asyncpg.connect(own_pg.dsn(), timeout=10)
    await conn.execute("CREATE TABLE survivor (v int); INSERT INTO survivor VALUES (7)")
    assert own_pg.pid is not None
    tree = [psutil.Process(own_pg.pid), *psutil.Process(own_pg.pid).children(recursive=True)]
    assert len(tree) > 2  # postmaster, auxiliary processes and our backend
    own_pg.kill()
    assert not own_pg.is_running
    assert own_pg.pid is None
    assert all(_gone(p) for p in tree)
    assert _refuses_connections(own_pg.port)
    with pytest.raises((asyncpg.PostgresError, OSError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    await asyncio.to_thread(own_pg.start)
    assert await _scalar(own_pg.dsn(), "SELECT v FROM survivor") == 7


async def test_postgres_pause_times_out_and_resume_recovers(own_pg: EmbeddedPostgres) -> None:
    """pause() freezes server and backends (queries and connects time out); resume() heals."""
    conn = await asyncpg.connect(own_pg.dsn(), timeout=10)
    own_pg.pause()
    try:
        assert own_pg.is_paused and own_pg.is_running
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.fetchval("SELECT 1"), 0.5)
        with pytest.raises(TimeoutError):
            await asyncpg.connect(own_pg.dsn(), timeout=0.5)
    finally:
        own_pg.resume()
    conn.terminate()
    assert not own_pg.is_paused
    assert await _scalar(own_pg.dsn(), "SELECT 1") == 1


async def _subscriber(
    broker: EmbeddedMosquitto, client_id: str, topic: str, inbox: Inbox, **kwargs: object
) -> gmqtt.Client:
    client = gmqtt.Client(client_id, **kwargs)
    client.on_message = inbox.on_message
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    await asyncio.wait_for(client.connect(broker.host, broker.port), 10)
    client.subscribe(topic, qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)
    return client


async def _publish_acked(broker: EmbeddedMosquitto, topic: str, payloads: list[bytes]) -> None:
    publisher = gmqtt.Client(f"pub-{uuid.uuid4().hex[:8]}")
    await asyncio.wait_for(publisher.connect(broker.host, broker.port), 10)
    for payload in payloads:
        publisher.publish(topic, payload, qos=1)
    await async_wait_for(
        lambda: publisher._persistent_storage.is_empty, 10, message="PUBACKs missing"
    )
    await publisher.disconnect()


async def test_mosquitto_qos1_round_trip(mosquitto: EmbeddedMosquitto) -> None:
    """The session broker delivers QoS 1 publishes to a QoS 1 subscriber, in order."""
    assert mosquitto.url == f"mqtt://127.0.0.1:{mosquitto.port}"
    topic = f"test/{uuid.uuid4().hex}"
    inbox = Inbox()
    sub = await _subscriber(mosquitto, f"sub-{uuid.uuid4().hex[:8]}", topic, inbox)
    payloads = [f"m{i}".encode() for i in range(100)]
    try:
        await _publish_acked(mosquitto, topic, payloads)
        await async_wait_for(lambda: len(inbox.messages) >= 100, 10, message="not delivered")
    finally:
        await sub.disconnect()
    assert [p for _, p in inbox.messages] == payloads


async def test_mosquitto_persistent_session_survives_restart(make_broker: BrokerFactory) -> None:
    """Messages queued for an offline persistent session survive a broker restart."""
    broker = make_broker()
    topic, client_id = "plant/readings", f"durable-{uuid.uuid4().hex[:8]}"
    session = {"clean_session": False, "session_expiry_interval": 3600}
    sub = await _subscriber(broker, client_id, topic, Inbox(), **session)
    await sub.disconnect()

    payloads = [f"offline-{i}".encode() for i in range(2000)]  # > the default 1000 queue cap
    await _publish_acked(broker, topic, payloads)
    await asyncio.to_thread(broker.restart)

    inbox = Inbox()
    client = gmqtt.Client(client_id, **session)
    client.on_message = inbox.on_message
    await asyncio.wait_for(client.connect(broker.host, broker.port), 10)
    try:
        await async_wait_for(
            lambda: len(inbox.messages) >= len(payloads),
            15,
            message="queued messages lost across restart",
        )
    finally:
        await client.disconnect()
    assert [p for _, p in inbox.messages] == payloads


def test_mosquitto_kill_pause_and_restart(make_broker: BrokerFactory) -> None:
    """kill() frees the port and start() reuses it; pause() stops answering until resume()."""
    broker = make_broker()
    port = broker.port
    broker.kill()
    assert not broker.is_running
    assert _refuses_connections(port)
    broker.start()
    assert broker.port == port
    assert _mqtt_connack(port, 5)
    broker.pause()
    assert broker.is_paused
    assert not _mqtt_connack(port, 0.5)  # the kernel still accepts, the broker is frozen
    broker.resume()
    wait_for(lambda: _mqtt_connack(port, 1), 5, message="broker did not come back")
