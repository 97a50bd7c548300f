"""What `aupus-ha simulate` does with the database: register the fleet, read back the result.

`register_equipment` creates the fleet's types and enabled equipment rows, on a fresh
schema and on the platform's legacy one (`char(26)` ids without defaults, Prisma's
timestamp columns, categories); `read_back` counts per family what the ingest stored
(with energy, timed by arrival) and rejected. A tool's queries, kept here rather than
in `sql/queries.sql`: the product never runs them.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Final

import asyncpg

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.lab.simfleet import (
    FAMILIES,
    GATEWAY_CATEGORY,
    TYPE_ALIASES,
    TYPE_GATEWAY,
    TYPE_INVERTER,
    TYPE_M160,
    Fleet,
)

SETTLE_POLL_S: Final = 0.5
SETTLE_STABLE_POLLS: Final = 4  # unchanged for 2 s: longer than any flush interval in use
StoredCounts = tuple[int, int, int, int]  # stored, with energy, timed by arrival, rejected

# --- registering the equipment -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    type_ids: dict[str, str]  # type code -> tipos_equipamentos.id used
    created: int  # equipment rows inserted now
    existing: int  # equipment rows that were already there (left untouched)
    # The category name the gateway type has now; None: the database has no categories
    # (then the ingest cannot tell a gateway from its equipment).
    gateway_category: str | None = None


_HAS_CATEGORIES = """
SELECT to_regclass('categorias_equipamentos') IS NOT NULL AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = 'tipos_equipamentos'
      AND column_name = 'categoria_id')
"""
# Timestamp columns a table has: a legacy (Prisma) table may need them filled by the writer.
_STAMP_COLUMNS = """
SELECT column_name::text FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1
  AND column_name IN ('created_at', 'updated_at')
ORDER BY column_name
"""
_INSERT_TYPE = """
INSERT INTO tipos_equipamentos (id, codigo, nome{stamps})
SELECT $1::text, $2::text, $3::text{nows}
WHERE NOT EXISTS (SELECT 1 FROM tipos_equipamentos WHERE codigo = ANY($4::text[]))
ON CONFLICT DO NOTHING
"""
_TYPE_ID = """
SELECT id::text FROM tipos_equipamentos WHERE codigo = ANY($1::text[])
ORDER BY array_position($1::text[], codigo::text) LIMIT 1
"""
_CATEGORY_ID = "SELECT id FROM categorias_equipamentos WHERE nome = $1::text ORDER BY id LIMIT 1"
_INSERT_CATEGORY = """
INSERT INTO categorias_equipamentos (id, nome{stamps})
SELECT $1::text, $2::text{nows}
WHERE NOT EXISTS (SELECT 1 FROM categorias_equipamentos WHERE nome = $2::text)
ON CONFLICT DO NOTHING
"""
_SET_TYPE_CATEGORY = """
UPDATE tipos_equipamentos SET categoria_id = $1 WHERE id = $2 AND categoria_id IS NULL
"""
_TYPE_CATEGORY = """
SELECT c.nome::text FROM tipos_equipamentos t
JOIN categorias_equipamentos c ON c.id = t.categoria_id
WHERE t.id = $1
"""
_INSERT_EQUIPMENT = """
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado, tipo_equipamento_id{stamps})
SELECT d.id, d.nome, d.topic, true, $4{nows}
FROM unnest($1::text[], $2::text[], $3::text[]) AS d(id, nome, topic)
ON CONFLICT DO NOTHING
RETURNING id
"""
_TYPE_NAMES: Final = {
    TYPE_M160: "Multimedidor M-160",
    TYPE_INVERTER: "Inversor solar",
    TYPE_GATEWAY: "Gateway A-966 (SSU)",
}


async def register_equipment(dsn: str, fleet: Fleet) -> Registration:
    """Migrate, then add the fleet's types and enabled equipment rows; safe to repeat.

    The gateway type gets the category `Gateway` when the database has categories
    (a legacy one does; a fresh one once its migrations add them); without, it is
    registered all the same.
    """
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        await apply_migrations(conn)
        async with conn.transaction():
            codes = dict.fromkeys(d.type_code for d in fleet.devices)  # only the types used
            type_ids = {code: await _type_id(conn, code) for code in codes}
            category = None
            if TYPE_GATEWAY in type_ids and await conn.fetchval(_HAS_CATEGORIES):
                category = await _categorise_gateway(conn, type_ids[TYPE_GATEWAY])
            created = 0
            sql = await _with_stamps(conn, _INSERT_EQUIPMENT, "equipamentos")
            for code, type_id in type_ids.items():
                specs = [d for d in fleet.devices if d.type_code == code]
                columns = ([d.id for d in specs], [d.name for d in specs], [d.topic for d in specs])
                created += len(await conn.fetch(sql, *columns, type_id))
    finally:
        await conn.close()
    return Registration(type_ids, created, len(fleet.devices) - created, category)


async def _with_stamps(conn: asyncpg.Connection, sql: str, table: str) -> str:
    """`sql` with the table's created_at/updated_at filled by now(), where it has them."""
    stamps = [r[0] for r in await conn.fetch(_STAMP_COLUMNS, table)]
    return sql.format(stamps="".join(f", {c}" for c in stamps), nows=", now()" * len(stamps))


async def _type_id(conn: asyncpg.Connection, code: str) -> str:
    aliases = list(TYPE_ALIASES[code])
    # An explicit id: a legacy table (char(26), ids made by Prisma) has no default.
    sql = await _with_stamps(conn, _INSERT_TYPE, "tipos_equipamentos")
    await conn.execute(sql, f"sim-{code.lower()}", code, _TYPE_NAMES[code], aliases)
    type_id: str = await conn.fetchval(_TYPE_ID, aliases)
    return type_id


async def _categorise_gateway(conn: asyncpg.Connection, type_id: str) -> str | None:
    """Put the gateway type in the `Gateway` category (kept if it already has one)."""
    sql = await _with_stamps(conn, _INSERT_CATEGORY, "categorias_equipamentos")
    await conn.execute(sql, "sim-categoria-gateway", GATEWAY_CATEGORY)
    category_id = await conn.fetchval(_CATEGORY_ID, GATEWAY_CATEGORY)
    await conn.execute(_SET_TYPE_CATEGORY, category_id, type_id)
    name: str | None = await conn.fetchval(_TYPE_CATEGORY, type_id)
    return name


_STORED_BY_FAMILY = """
SELECT f.family, count(*) AS stored, count(d.energia_kwh) AS with_energy,
       count(*) FILTER (WHERE d.dados ? '_timestamp_motivo') AS by_arrival
FROM unnest($1::text[], $2::text[]) AS f(id, family)
JOIN equipamentos_dados d ON d.equipamento_id = f.id
WHERE $3::timestamptz IS NULL OR d.created_at >= $3::timestamptz
GROUP BY f.family
"""
_REJECTED_BY_FAMILY = """
SELECT f.family, count(*) AS rejected
FROM unnest($1::text[], $2::text[]) AS f(topic, family)
JOIN ingest_rejects r ON r.topic = f.topic
WHERE $3::timestamptz IS NULL OR r.received_at >= $3::timestamptz
GROUP BY f.family
"""


async def read_back(
    conn: asyncpg.Connection, fleet: Fleet, since: datetime | None
) -> dict[str, StoredCounts]:
    """Per family: (stored, with energy, timed by arrival, rejected) since `since`.

    `conn` should run its session in UTC: a legacy `created_at` (timestamp without time
    zone, UTC wall time) is compared with `since` in the session's zone.
    """
    ids = [d.id for d in fleet.devices]
    topics = [d.topic for d in fleet.devices]
    families = [d.family for d in fleet.devices]
    stored = {r["family"]: r for r in await conn.fetch(_STORED_BY_FAMILY, ids, families, since)}
    rejected = {
        r["family"]: r["rejected"]
        for r in await conn.fetch(_REJECTED_BY_FAMILY, topics, families, since)
    }
    out = {}
    for family in FAMILIES:
        row = stored.get(family)
        counts = (row["stored"], row["with_energy"], row["by_arrival"]) if row else (0, 0, 0)
        out[family] = (*counts, rejected.get(family, 0))
    return out


async def settle_and_read_back(
    dsn: str, fleet: Fleet, since: datetime | None, timeout: float
) -> dict[str, StoredCounts]:
    """Read back once the figures stop moving (the ingest has flushed), or at `timeout`."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"}, timeout=10)
    try:
        last, stable = await read_back(conn, fleet, since), 0
        while stable < SETTLE_STABLE_POLLS and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
            now = await read_back(conn, fleet, since)
            stable = stable + 1 if now == last else 0
            last = now
        return last
    finally:
        await conn.close()
