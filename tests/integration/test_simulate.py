"""`simulate` against a real broker and database: registration, delivery, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import gmqtt
import pytest

from aupus_ha.embedded import EmbeddedMosquitto
from aupus_ha.migrate import apply_migrations
from aupus_ha.simulate import (
    FAMILY_BAD,
    SimMessage,
    build_fleet,
    register_equipment,
    run_simulation,
)
from tests.helpers import Inbox, async_wait_for

START = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)


@pytest.fixture
def prefix() -> str:
    """A topic prefix of this test's own: the session broker is shared."""
    return f"sim-test/{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def inbox(mosquitto: EmbeddedMosquitto, prefix: str) -> AsyncIterator[Inbox]:
    received = Inbox()
    client = gmqtt.Client(f"sub-{uuid.uuid4().hex[:8]}")
    client.on_message = received.on_message
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    await asyncio.wait_for(client.connect(mosquitto.host, mosquitto.port), 10)
    client.subscribe(f"{prefix}/#", qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)
    yield received
    await client.disconnect()


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aupus_ha", "simulate", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),  # no stray ./.env
    )


async def _equipment(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT e.id, e.topico_mqtt, e.mqtt_habilitado, t.codigo FROM equipamentos e "
                "JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id ORDER BY e.id"
            )
        )
    finally:
        await conn.close()


async def test_register_creates_rows_idempotently(database_url: str) -> None:
    """Registering twice leaves one enabled row per device, typed M-160 or INVERSOR."""
    fleet = build_fleet(3, 2, seed=1)
    first = await register_equipment(database_url, fleet)
    again = await register_equipment(database_url, fleet)
    assert (first.created, first.existing) == (5, 0)
    assert (again.created, again.existing) == (0, 5)
    assert first.type_ids == again.type_ids
    rows = await _equipment(database_url)
    assert [(r["id"], r["topico_mqtt"], r["codigo"]) for r in rows] == sorted(
        (d.id, d.topic, d.type_code) for d in fleet.devices
    )
    assert all(r["mqtt_habilitado"] for r in rows)


async def test_register_reuses_an_existing_m160_alias(database_url: str) -> None:
    """An existing `M160` type is used for the meters instead of adding `M-160`."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO tipos_equipamentos (id, codigo, nome) VALUES ('legacy-m160', 'M160', 'x')"
        )
        await register_equipment(database_url, build_fleet(1, 0))
        codes = await conn.fetch("SELECT codigo FROM tipos_equipamentos ORDER BY codigo")
    finally:
        await conn.close()
    assert [r["codigo"] for r in codes] == ["M160"]
    assert [r["codigo"] for r in await _equipment(database_url)] == ["M160"]


async def test_short_run_reaches_a_subscriber(
    mosquitto: EmbeddedMosquitto, prefix: str, inbox: Inbox
) -> None:
    """50 messages at speedup 0 are all acknowledged and delivered, bad ones included."""
    fleet = build_fleet(4, 2, seed=5, bad_ratio=0.2, topic_prefix=prefix)
    sent: list[SimMessage] = []
    report = await run_simulation(
        mosquitto.url, fleet, start=START, count=50, speedup=0, on_message=sent.append
    )
    await async_wait_for(lambda: len(inbox.messages) >= 50, 10, message="not all delivered")
    assert report.published == 50 and sum(report.per_family.values()) == 50
    assert report.bad == sum(m.family == FAMILY_BAD for m in sent) > 0
    assert Counter(inbox.messages) == Counter((m.topic, m.payload) for m in sent)


async def test_speedup_paces_and_duration_stops(mosquitto: EmbeddedMosquitto, prefix: str) -> None:
    """At speedup 600 one simulated minute takes ~0.1 s; --duration ends an endless run."""
    fleet = build_fleet(2, 1, seed=5, topic_prefix=prefix)
    report = await run_simulation(mosquitto.url, fleet, start=START, duration=0.5, speedup=600)
    assert 0.45 <= report.seconds < 2.0
    assert report.first_at is not None and report.last_at is not None
    simulated = (report.last_at - START).total_seconds()
    assert 0.2 * 600 <= simulated <= 0.5 * 600


def test_cli_publishes_and_reports(mosquitto: EmbeddedMosquitto, prefix: str) -> None:
    """`python -m aupus_ha simulate --count 20 --speedup 0` exits 0 and prints the report."""
    result = _cli(
        "--count", "20", "--speedup", "0", "--bad-ratio", "0.1", "--broker", mosquitto.url,
        "--topic-prefix", prefix,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "simulate: 20 published and acknowledged" in result.stdout
    assert "msg/s" in result.stdout


def test_cli_register_only_uses_database_url(database_url: str) -> None:
    """`--register` without a value takes DATABASE_URL; `--count 0` needs no broker."""
    result = _cli(
        "--register", "--count", "0", "--meters", "2", "--inverters", "1",
        "--broker", "mqtt://127.0.0.1:1",
        env={"DATABASE_URL": database_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "equipment 3 new, 0 already present" in result.stdout


def test_cli_unreachable_broker_fails_cleanly() -> None:
    """An unreachable broker: exit 1 with one line on stderr, no traceback."""
    result = _cli("--count", "1", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "aupus-ha: simulate:" in result.stderr
