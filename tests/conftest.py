"""Shared fixtures: one throwaway PostgreSQL and one broker per session, a fresh database
per test, and fresh brokers on demand for tests that kill or restart them.

Fixtures are synchronous; the few admin statements run asyncpg through asyncio.run in a
worker thread, so they never touch the event loop pytest-asyncio gives the test. The one
exception, the alert tests' webhook `receiver`, serves on the test's own loop.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import asyncpg
import pytest

from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from tests.helpers import BrokerFactory, WebhookReceiver

T = TypeVar("T")


def run_async(make_coro: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion on a private loop in a worker thread."""

    async def main() -> T:
        return await make_coro()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, main()).result()


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=30)
    finally:
        await conn.close(timeout=5)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One PostgreSQL for the whole session (tests get their own database on it)."""
    server = EmbeddedPostgres()
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def database_url(pg_server: EmbeddedPostgres) -> Iterator[str]:
    """DSN of a fresh, empty database, dropped (connections and all) after the test."""
    # A test must not take the shared server down, but if one did, don't fail every test
    # after it: bring it back (the data directory is kept).
    if pg_server.is_paused:
        pg_server.resume()
    if not pg_server.is_running:
        pg_server.start()
    name = f"t_{secrets.token_hex(6)}"
    admin = pg_server.dsn()
    run_async(lambda: _admin(admin, f"CREATE DATABASE {name}"))
    yield pg_server.dsn(name)
    if pg_server.is_paused:
        pg_server.resume()
    if not pg_server.is_running:
        pg_server.start()
    run_async(
        lambda: _admin(
            admin,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()",
            f"DROP DATABASE IF EXISTS {name} WITH (FORCE)",
        )
    )


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[EmbeddedMosquitto]:
    """One broker for the whole session; tests that stop or kill a broker use make_broker."""
    broker = EmbeddedMosquitto()
    try:
        broker.start()
        yield broker
    finally:
        broker.cleanup()


@pytest.fixture
def make_broker() -> Iterator[BrokerFactory]:
    """Factory of fresh brokers (started unless start=False), all cleaned up after the test."""
    brokers: list[EmbeddedMosquitto] = []

    def factory(
        *,
        port: int | None = None,
        persistence_dir: Path | None = None,
        extra_config: str = "",
        start: bool = True,
    ) -> EmbeddedMosquitto:
        broker = EmbeddedMosquitto(
            port=port, persistence_dir=persistence_dir, extra_config=extra_config
        )
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield factory
    for broker in brokers:
        broker.cleanup()


@pytest.fixture
async def receiver() -> AsyncIterator[WebhookReceiver]:
    """A webhook receiver listening for the test (give `receiver.url` as ALERT_WEBHOOK_URL)."""
    async with WebhookReceiver() as rec:
        yield rec


@pytest.fixture(params=["fresh", "legacy"])
def v2_schema(request: pytest.FixtureRequest, database_url: str) -> tuple[str, str]:
    """(kind, dsn): the test's database migrated fresh, or shaped like the platform's
    legacy one with TimeZone America/Sao_Paulo (tests/legacy_schema.py, DOMAIN v2)."""
    from tests.legacy_schema import build_schema

    kind = str(request.param)
    run_async(lambda: build_schema(database_url, kind))  # type: ignore[arg-type]
    return kind, database_url
