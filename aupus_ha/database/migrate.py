"""Schema migrations: ordered, recorded, idempotent, safe when instances start together.

All pending migrations run in one transaction under a transaction-level advisory lock:
a second instance starting at the same moment waits on the lock, then finds every
migration recorded and applies nothing.
"""

from __future__ import annotations

import hashlib

import asyncpg

from aupus_ha.database.connection import ErrorKind, classify
from aupus_ha.database.queries import migrations
from aupus_ha.logs import get_logger

log = get_logger(__name__)

# Fixed namespace for aupus-ha's advisory locks (ASCII "aupu"); the second key tells
# the migration lock from the per-cluster leader locks.
LOCK_NAMESPACE = 0x61757075
MIGRATION_LOCK_KEY = 0

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text PRIMARY KEY,
    name       text NOT NULL,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(RuntimeError):
    """A migration failed or a recorded one was changed after it was applied."""


def checksum(sql: str) -> str:
    return hashlib.sha256(sql.encode()).hexdigest()[:16]


async def apply_migrations(conn: asyncpg.Connection) -> list[str]:
    """Apply what is missing; returns the versions applied by this call."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock($1::int4, $2::int4)", LOCK_NAMESPACE, MIGRATION_LOCK_KEY
        )
        await conn.execute(_BOOKKEEPING)
        recorded = {
            r["version"]: r["checksum"]
            for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
        }
        for version, name, sql in migrations():
            digest = checksum(sql)
            if version in recorded:
                if recorded[version] != digest:
                    log.warning("migrate.changed_after_apply", version=version, name=name)
                continue
            try:
                await conn.execute(sql)
            except asyncpg.PostgresError as exc:
                if classify(exc) is ErrorKind.TRANSIENT:
                    raise  # the database's state (read-only, full): the caller retries
                raise MigrationError(f"migration {version}_{name} failed: {exc}") from exc
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                version,
                name,
                digest,
            )
            applied_now.append(version)
            log.info("migrate.applied", version=version, name=name)
    return applied_now
