"""A database shaped like the platform's legacy one, and the fresh one beside it.

The legacy shape follows DOMAIN.md v2 ("The legacy database") and extends the schema
tests/integration/test_migrations.py has used since v1 (`LEGACY_SCHEMA` there: char(26)
ids, `timestamp(0)` key, jsonb `dados`) with what v2 found in production:

* `timestamp_dados`, `timestamp_fim` and `created_at` are `timestamp(0) without time
  zone` holding UTC wall time (the platform writes them so; v1 said Brasília: wrong);
* `energia_kwh` / `potencia_ativa_kw` are `DECIMAL(10,3)`, `num_leituras` an integer,
  `fonte` a varchar (another writer inserts `NUVEM_FUSION` rows);
* the natural key is the unique INDEX `uk_equipamento_timestamp` (an index, not a
  constraint: `ON CONFLICT ON CONSTRAINT` cannot name it, `ON CONFLICT (cols)` can);
* `tipos_equipamentos.categoria_id` → `categorias_equipamentos (id, nome)`, the
  A-966 gateway family is told by the category `Gateway`;
* the database's `TimeZone` is `America/Sao_Paulo` (set with ALTER DATABASE, so every
  new session starts in it): a writer that lets the server turn instants into wall
  time writes Brasília time, 3 h off the platform's rows.

`build_schema(dsn, kind)` prepares either shape in an empty database; the fresh one is
the product's own migrations, plus the platform's category table (created only when
the migrations did not) so one equipment registration serves both.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Literal

import asyncpg

from aupus_ha.database.migrate import apply_migrations

SchemaKind = Literal["fresh", "legacy"]
SCHEMA_KINDS: Final[tuple[SchemaKind, ...]] = ("fresh", "legacy")
LEGACY_TIMEZONE: Final = "America/Sao_Paulo"
GATEWAY_CATEGORY: Final = "Gateway"

# The platform's tables, before aupus-ha ever ran (no aupus-ha column, no seed row).
LEGACY_DDL: Final = """
CREATE TABLE categorias_equipamentos (
    id char(26) PRIMARY KEY, nome varchar(100) NOT NULL,
    created_at timestamp(0), updated_at timestamp(0)
);
CREATE TABLE tipos_equipamentos (
    id char(26) PRIMARY KEY, codigo varchar(50) NOT NULL UNIQUE, nome varchar(100) NOT NULL,
    categoria_id char(26) REFERENCES categorias_equipamentos(id), mqtt_schema jsonb,
    created_at timestamp(0), updated_at timestamp(0)
);
CREATE TABLE equipamentos (
    id char(26) PRIMARY KEY, nome varchar(200) NOT NULL, topico_mqtt varchar(255),
    mqtt_habilitado boolean NOT NULL DEFAULT false, tipo_equipamento_id char(26)
        REFERENCES tipos_equipamentos(id), diagrama_id char(26),
    created_at timestamp(0), updated_at timestamp(0), deleted_at timestamp(0)
);
CREATE TABLE equipamentos_dados (
    id char(26) PRIMARY KEY,
    equipamento_id char(26) NOT NULL REFERENCES equipamentos(id),
    dados jsonb NOT NULL,
    fonte varchar(20) NOT NULL DEFAULT 'MQTT',
    timestamp_dados timestamp(0) without time zone NOT NULL,
    qualidade varchar(20),
    created_at timestamp(0) without time zone NOT NULL DEFAULT now(),
    num_leituras integer,
    timestamp_fim timestamp(0) without time zone,
    energia_kwh decimal(10, 3),
    potencia_ativa_kw decimal(10, 3)
);
CREATE UNIQUE INDEX uk_equipamento_timestamp
    ON equipamentos_dados (equipamento_id, timestamp_dados);
CREATE INDEX equipamentos_dados_created_at_idx ON equipamentos_dados (created_at DESC);
"""

# On a fresh database the platform's category table does not exist; the test adds it
# the way the platform has it (only if the product's migrations did not create one).
FRESH_CATEGORIES: Final = (
    "CREATE TABLE IF NOT EXISTS categorias_equipamentos (id text PRIMARY KEY, nome text NOT NULL)",
    "ALTER TABLE tipos_equipamentos ADD COLUMN IF NOT EXISTS categoria_id text",
)

SET_TIMEZONE: Final = """
DO $$ BEGIN
    EXECUTE format('ALTER DATABASE %I SET timezone TO %L', current_database(), '{zone}');
END $$
"""


def cuid(label: str) -> str:
    """A 26-character id (the legacy `char(26)` cuid size) that still shows its label."""
    head = re.sub(r"[^a-z0-9]", "", label.lower())[:12]
    return (head + hashlib.sha256(label.encode()).hexdigest())[:26]


async def set_database_timezone(conn: asyncpg.Connection, zone: str) -> None:
    """The database's default TimeZone for every NEW session (not this one)."""
    await conn.execute(SET_TIMEZONE.format(zone=zone.replace("'", "")))


async def create_legacy_tables(conn: asyncpg.Connection) -> None:
    """The platform's tables as they are before aupus-ha (DOMAIN v2 shape)."""
    await conn.execute(LEGACY_DDL)


async def build_schema(dsn: str, kind: SchemaKind, *, migrate: bool = True) -> None:
    """Prepare an empty database as `kind`: fresh (the product's migrations) or legacy
    (the platform's tables, TimeZone America/Sao_Paulo, then the migrations)."""
    conn = await asyncpg.connect(dsn)
    try:
        if kind == "legacy":
            await set_database_timezone(conn, LEGACY_TIMEZONE)
            await create_legacy_tables(conn)
        if migrate:
            await apply_migrations(conn)
        if kind == "fresh":
            for statement in FRESH_CATEGORIES:
                await conn.execute(statement)
    finally:
        await conn.close()


async def ensure_type(
    conn: asyncpg.Connection,
    codigo: str,
    *,
    category: str | None = None,
    mqtt_schema: str | None = None,
) -> str:
    """The id of the equipment type `codigo` (created, with its category, if missing)."""
    category_id = None
    if category is not None:
        category_id = cuid(f"categoria:{category}")
        await conn.execute(
            "INSERT INTO categorias_equipamentos (id, nome) VALUES ($1, $2) "
            "ON CONFLICT (id) DO NOTHING",
            category_id,
            category,
        )
    type_id = cuid(f"tipo:{codigo}")
    await conn.execute(
        "INSERT INTO tipos_equipamentos (id, codigo, nome, categoria_id, mqtt_schema) "
        "VALUES ($1, $2, $5, $3, $4::jsonb) ON CONFLICT (id) DO NOTHING",
        type_id,
        codigo,
        category_id,
        mqtt_schema,
        codigo,
    )
    return type_id


async def register_equipment(
    conn: asyncpg.Connection, equipment_id: str, topic: str, type_id: str | None
) -> None:
    """One enabled equipment row on `topic` (the way the platform's UI creates it)."""
    await conn.execute(
        "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado, tipo_equipamento_id) "
        "VALUES ($1, $4, $2, true, $3)",
        equipment_id,
        topic,
        type_id,
        equipment_id,
    )
