"""The equipment catalogue query (`enabled_equipment`) on a real PostgreSQL: the type's
code and its category (`tipos_equipamentos.categoria_id` → `categorias_equipamentos.nome`,
which routes the A-966 gateway family) on the legacy-shaped schema and on the fresh one,
the previous release's query still answering after migration 007 (rolling upgrade), and
the routing end to end from the database's types to stored rows.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import pytest

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Equipment
from aupus_ha.pipeline.store import Store, detect_convention
from aupus_ha.pipeline.topics import TopicCatalog
from tests.legacy_schema import (
    GATEWAY_CATEGORY,
    SchemaKind,
    build_schema,
    cuid,
    ensure_type,
    register_equipment,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# The query of the release before migration 007: an instance of it keeps running
# against the migrated schema during a rolling upgrade.
PREVIOUS_QUERY = """
SELECT e.id::text AS id, e.topico_mqtt AS topic, t.codigo AS type_code,
       t.mqtt_schema::text AS mqtt_schema
FROM equipamentos e
LEFT JOIN tipos_equipamentos t ON t.id = e.tipo_equipamento_id
WHERE e.mqtt_habilitado AND e.topico_mqtt IS NOT NULL AND e.deleted_at IS NULL
ORDER BY e.id
"""


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    yield connection
    await connection.close()


async def catalogue(dsn: str) -> dict[str, Equipment]:
    """What the running product loads (the store's query and mapping)."""
    settings = load_settings({"DATABASE_URL": dsn, "MQTT_MODE": "disabled"}, dotenv=None)
    pool = await create_pool(settings, "aupus-ha/catalog-test")
    try:
        store = Store(pool, Queries(), cluster_name="catalog", instance_id="catalog")
        return {e.id.strip(): e for e in await store.enabled_equipment()}
    finally:
        await pool.close()


async def register_fleet(conn: asyncpg.Connection) -> None:
    gateway = await ensure_type(conn, "SSU_A966", category=GATEWAY_CATEGORY)
    meter = await ensure_type(conn, "METER_M160", category="Medidor")
    bare = await ensure_type(conn, "INVERSOR")  # a type without a category
    for label, type_id in (("gw", gateway), ("meter", meter), ("inv", bare), ("none", None)):
        await register_equipment(conn, cuid(label), f"site/{label}", type_id)


@pytest.mark.parametrize("kind", ["legacy", "fresh"])
async def test_catalogue_carries_code_and_category(
    database_url: str, conn: asyncpg.Connection, kind: SchemaKind
) -> None:
    """Each enabled equipment comes with its type's code and category name (None when
    the type has no category or the equipment no type), on both schema shapes."""
    await build_schema(database_url, kind)
    await register_fleet(conn)
    found = await catalogue(database_url)
    got = {
        label: (found[cuid(label)].type_code, found[cuid(label)].type_category)
        for label in ("gw", "meter", "inv", "none")
    }
    assert got == {
        "gw": ("SSU_A966", "Gateway"),
        "meter": ("METER_M160", "Medidor"),
        "inv": ("INVERSOR", None),
        "none": (None, None),
    }
    assert found[cuid("gw")].topic == "site/gw"


async def test_fresh_schema_gets_the_category_table(conn: asyncpg.Connection) -> None:
    """Migration 007 gives a fresh database the platform's category table and column
    (additive), so the one query serves both shapes; a second run changes nothing."""
    await apply_migrations(conn)
    columns = await conn.fetch(
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND ("
        "  table_name = 'categorias_equipamentos' OR column_name = 'categoria_id')"
    )
    assert {(r["table_name"], r["column_name"]) for r in columns} >= {
        ("categorias_equipamentos", "id"),
        ("categorias_equipamentos", "nome"),
        ("tipos_equipamentos", "categoria_id"),
    }
    assert await apply_migrations(conn) == []


async def test_legacy_without_categories_gets_them(
    database_url: str, conn: asyncpg.Connection
) -> None:
    """An older legacy shape (no category table, no categoria_id: the v1 test schema)
    is migrated additively and its equipment load with no category."""
    await conn.execute(
        "CREATE TABLE tipos_equipamentos (id char(26) PRIMARY KEY,"
        " codigo varchar(50) NOT NULL UNIQUE, nome varchar(100) NOT NULL);"
        "CREATE TABLE equipamentos (id char(26) PRIMARY KEY, nome varchar(200) NOT NULL,"
        " topico_mqtt varchar(255), mqtt_habilitado boolean NOT NULL DEFAULT false,"
        " tipo_equipamento_id char(26) REFERENCES tipos_equipamentos(id),"
        " deleted_at timestamp(3));"
        "INSERT INTO tipos_equipamentos VALUES ('t0000000000000000000000001', 'M-160', 'M-160');"
        "INSERT INTO equipamentos VALUES ('e0000000000000000000000001', 'm', 'site/m', true,"
        " 't0000000000000000000000001', NULL);"
    )
    await apply_migrations(conn)
    found = await catalogue(database_url)
    item = found["e0000000000000000000000001"]
    assert (item.type_code, item.type_category) == ("M-160", None)


@pytest.mark.parametrize("kind", ["legacy", "fresh"])
async def test_previous_release_query_still_works(
    database_url: str, conn: asyncpg.Connection, kind: SchemaKind
) -> None:
    """Rolling upgrade: the previous release's catalogue query answers on the schema
    this release migrated, with the same rows."""
    await build_schema(database_url, kind)
    await register_fleet(conn)
    rows = await conn.fetch(PREVIOUS_QUERY)
    assert sorted(r["id"].strip() for r in rows) == sorted(
        cuid(label) for label in ("gw", "meter", "inv", "none")
    )


async def test_one_topic_three_types_routed_from_the_database(v2_schema: tuple[str, str]) -> None:
    """The routing end to end: three equipment of different types registered on ONE
    topic, the catalogue read by the store, an A-966 message decoded and flushed on
    both schemas: a gateway row with its energy, an untyped row stored as sent, and
    the M-160's refusal as one reject, all under the same topic."""
    kind, dsn = v2_schema
    topic = "site/A966/SSU/state"
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ('catalog', 1)")
        gateway = await ensure_type(conn, "SSU_A966", category=GATEWAY_CATEGORY)
        meter = await ensure_type(conn, "M-160")
        for label, type_id in (("gw", gateway), ("meter", meter), ("plain", None)):
            await register_equipment(conn, cuid(label), f" {topic} ", type_id)  # stray spaces
        convention = await detect_convention(conn, Queries()["column_types"])
        queries = convention.queries()
        settings = load_settings({"DATABASE_URL": dsn, "MQTT_MODE": "disabled"}, dotenv=None)
        pool = await create_pool(settings, "aupus-ha/catalog-test")
        try:
            store = Store(pool, queries, cluster_name="catalog", instance_id="catalog")
            catalog = TopicCatalog.build(await store.enabled_equipment())
            assert catalog.topics == [topic]  # trimmed, one subscription for the three
            payload = (FIXTURES / "a966_ssu_state.json").read_bytes()
            decoded = Decoder(max_payload_bytes=64 * 1024).decode(
                topic, payload, catalog.equipment_for(topic), datetime.now(UTC)
            )
            readings = [convention.apply(r) for r in decoded.readings]
            await store.flush(readings, decoded.rejects, epoch=1)
        finally:
            await pool.close()
        rows = {
            r["id"]: r
            for r in await conn.fetch(
                "SELECT trim(equipamento_id) AS id, energia_kwh, potencia_ativa_kw, qualidade,"
                " dados::text AS dados FROM equipamentos_dados"
            )
        }
        rejects = await conn.fetch("SELECT topic, reason FROM ingest_rejects")
    finally:
        await conn.close()
    assert set(rows) == {cuid("gw"), cuid("plain")}, kind
    gw = rows[cuid("gw")]
    # (1487 − 0) × 0.048 = 71.376 kWh; × 4 = 285.504 kW (exact at DECIMAL(10,3) too)
    assert float(gw["energia_kwh"]) == pytest.approx(71.376, abs=5e-4)
    assert float(gw["potencia_ativa_kw"]) == pytest.approx(285.504, abs=5e-4)
    assert gw["qualidade"] == "bom"
    assert json.loads(gw["dados"])["P_rev"] == 285.504  # 1487 × 0.048 / 0.25
    plain = rows[cuid("plain")]
    assert plain["energia_kwh"] is None and "P_rev" not in json.loads(plain["dados"])
    # the M-160 refuses a payload in neither of its forms (DOMAIN rule 1)
    assert [(r["topic"], r["reason"].partition(":")[0]) for r in rejects] == [
        (topic, "m160_unknown_format")
    ]
