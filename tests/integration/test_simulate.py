"""`simulate` against a real broker and database: registration, delivery, the CLI, and the
whole v2 fleet through a real `aupus-ha run` on both schema shapes."""

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
from pathlib import Path

import asyncpg
import gmqtt
import pytest

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.lab.embedded import EmbeddedMosquitto
from aupus_ha.lab.localcluster import InstanceProcess, wait_until
from aupus_ha.lab.simulate import (
    FAMILIES,
    FAMILY_GATEWAY,
    FAMILY_LABELS,
    FAMILY_M160_FLAT,
    FAMILY_M160_WRAPPED,
    GATEWAY_CATEGORY,
    SimMessage,
    build_fleet,
    register_equipment,
    run_simulation,
)
from tests.helpers import Inbox, async_wait_for, instance_env

START = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)  # 15:00 in Brasília, in the past

_HAS_CATEGORIES = "SELECT to_regclass('categorias_equipamentos') IS NOT NULL"


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
        timeout=90,
        cwd=tempfile.gettempdir(),  # no stray ./.env
    )


async def _equipment(dsn: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(
            await conn.fetch(
                "SELECT e.id::text AS id, e.topico_mqtt, e.mqtt_habilitado, "
                "t.codigo::text AS codigo FROM equipamentos e "
                "JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id ORDER BY e.id"
            )
        )
    finally:
        await conn.close()


async def _gateway_category(dsn: str) -> str | None:
    conn = await asyncpg.connect(dsn)
    try:
        if not await conn.fetchval(_HAS_CATEGORIES):
            return None
        name: str | None = await conn.fetchval(
            "SELECT c.nome::text FROM tipos_equipamentos t "
            "JOIN categorias_equipamentos c ON c.id = t.categoria_id WHERE t.codigo = 'SSU_A966'"
        )
        return name
    finally:
        await conn.close()


async def test_register_creates_typed_rows_idempotently(v2_schema: tuple[str, str]) -> None:
    """On the fresh and the legacy-shaped schema: one enabled row per device, typed
    M-160, INVERSOR or SSU_A966, the gateway type in the category `Gateway`; twice is once."""
    _, dsn = v2_schema
    fleet = build_fleet(3, 2, seed=1, gateways=1)
    first = await register_equipment(dsn, fleet)
    again = await register_equipment(dsn, fleet)
    assert (first.created, first.existing) == (6, 0)
    assert (again.created, again.existing) == (0, 6)
    assert first.type_ids == again.type_ids
    assert first.gateway_category == again.gateway_category == GATEWAY_CATEGORY
    rows = await _equipment(dsn)
    assert [(r["id"].strip(), r["topico_mqtt"], r["codigo"]) for r in rows] == sorted(
        (d.id, d.topic, d.type_code) for d in fleet.devices
    )
    assert all(r["mqtt_habilitado"] for r in rows)
    assert await _gateway_category(dsn) == GATEWAY_CATEGORY


async def test_register_tolerates_a_database_without_categories(database_url: str) -> None:
    """Where the schema has no category table, the gateway is registered all the same
    and the registration says it has no category (the CLI warns)."""
    conn = await asyncpg.connect(database_url)
    try:
        await apply_migrations(conn)
        has_categories = await conn.fetchval(_HAS_CATEGORIES)
    finally:
        await conn.close()
    done = await register_equipment(database_url, build_fleet(0, 0, gateways=1))
    assert done.created == 1
    assert done.gateway_category == (GATEWAY_CATEGORY if has_categories else None)


async def test_register_keeps_an_existing_gateway_category(v2_schema: tuple[str, str]) -> None:
    """An existing SSU_A966 type keeps the category it has; no second type is added."""
    _, dsn = v2_schema
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO categorias_equipamentos (id, nome) VALUES ('cat-outra', 'Outra');"
            "INSERT INTO tipos_equipamentos (id, codigo, nome, categoria_id) "
            "VALUES ('tipo-a966', 'SSU_A966', 'x', 'cat-outra')"
        )
        done = await register_equipment(dsn, build_fleet(0, 0, gateways=1))
        codes = await conn.fetch("SELECT codigo::text FROM tipos_equipamentos")
    finally:
        await conn.close()
    assert done.gateway_category == "Outra"
    assert [r["codigo"] for r in codes] == ["SSU_A966"]


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
    """120 messages at speedup 0 are all acknowledged and delivered, bad ones included,
    and the report counts them per family."""
    fleet = build_fleet(4, 2, seed=5, gateways=1, bad_ratio=0.2, topic_prefix=prefix)
    sent: list[SimMessage] = []
    report = await run_simulation(
        mosquitto.url, fleet, start=START, count=120, speedup=0, on_message=sent.append
    )
    await async_wait_for(lambda: len(inbox.messages) >= 120, 10, message="not all delivered")
    assert report.published == 120 and sum(report.per_family.values()) == 120
    assert report.bad == sum(m.bad_kind is not None for m in sent) > 0
    assert report.per_family == Counter(m.family for m in sent)
    assert set(report.per_family) == set(FAMILIES)
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
    """`python -m aupus_ha simulate --count 40 --speedup 0` exits 0 and prints the report,
    a line per family."""
    result = _cli(
        "--count", "40", "--speedup", "0", "--bad-ratio", "0.1", "--broker", mosquitto.url,
        "--topic-prefix", prefix,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "simulate: 40 published and acknowledged" in result.stdout
    assert "msg/s" in result.stdout
    for label in FAMILY_LABELS.values():
        assert label in result.stdout


def test_cli_register_only_uses_database_url(database_url: str) -> None:
    """`--register` without a value takes DATABASE_URL; `--count 0` needs no broker."""
    result = _cli(
        "--register", "--count", "0", "--meters", "2", "--inverters", "1", "--gateways", "1",
        "--broker", "mqtt://127.0.0.1:1",
        env={"DATABASE_URL": database_url},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "equipment 4 new, 0 already present" in result.stdout


def test_cli_unreachable_broker_fails_cleanly() -> None:
    """An unreachable broker: exit 1 with one line on stderr, no traceback."""
    result = _cli("--count", "1", "--broker", "mqtt://127.0.0.1:1")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "aupus-ha: simulate:" in result.stderr


# --- the whole fleet through a real instance ---------------------------------------------


def _family_numbers(stdout: str) -> dict[str, list[int]]:
    """The summary's numbers per family: published, bad, no clock, stored, energy,
    arrival, rejected."""
    out = {}
    for family, label in FAMILY_LABELS.items():
        (line,) = [row for row in stdout.splitlines() if row.strip().startswith(label)]
        out[family] = [int(v) for v in line.split()[-7:]]
    return out


async def test_every_family_is_stored_as_domain_v2_says(
    v2_schema: tuple[str, str], mosquitto: EmbeddedMosquitto, prefix: str, tmp_path: Path
) -> None:
    """`simulate --register` against a running instance: every family is stored, flat and
    wrapped meters with energy, the clockless meter's rows timed by arrival, gateway
    frames with energy, every bad input rejected; the summary reads it all back.

    On the legacy-shaped schema the clockless meter is left out: its readings, timed by
    arrival at speedup 0, would share a second of the second-precision key (DOMAIN v2)."""
    kind, dsn = v2_schema
    clockless = "1" if kind == "fresh" else "0"
    fleet_args = (
        "--meters", "4", "--wrapped-meters", "1", "--clockless-meters", clockless,
        "--inverters", "2", "--gateways", "2", "--seed", "3", "--topic-prefix", prefix,
    )  # fmt: skip
    registered = _cli("--register", dsn, "--count", "0", *fleet_args)
    assert registered.returncode == 0, registered.stderr
    env = instance_env(dsn, mosquitto.url, f"sim-{uuid.uuid4().hex[:8]}")
    instance = InstanceProcess("sim-1", env, tmp_path).start()
    try:

        async def ready() -> bool:
            status, body = await instance.get("/health")
            mqtt = (body or {}).get("checks", {}).get("mqtt", {})
            return status == 200 and mqtt.get("subscribedTopics") == 8

        await wait_until(ready, 30, f"instance not ready: {instance.tail()}")
        result = await asyncio.to_thread(
            _cli, "--register", dsn, "--broker", mosquitto.url, "--count", "500",
            "--speedup", "0", "--bad-ratio", "0.05", "--start", START.isoformat(),
            "--settle", "30", *fleet_args,
        )  # fmt: skip
    finally:
        instance.stop_now()
    assert result.returncode == 0, result.stderr
    numbers = _family_numbers(result.stdout)
    for family in FAMILIES:
        published, bad, no_clock, stored, energy, arrival, rejected = numbers[family]
        assert stored > 0 and rejected == bad, (family, numbers[family], result.stdout)
        assert arrival == (no_clock if family == FAMILY_M160_FLAT else 0), result.stdout
        if family in (FAMILY_M160_FLAT, FAMILY_M160_WRAPPED):
            assert stored == published - bad and energy == stored, result.stdout
        if family == FAMILY_GATEWAY:
            assert stored == published - bad and 0 < energy <= stored, result.stdout
    if kind == "fresh":
        assert numbers[FAMILY_M160_FLAT][2] > 0  # the clockless meter did publish
