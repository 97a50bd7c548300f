"""Database states that are not an outage: read-only, and no free connection slot.

The instances connect as their own non-superuser role (`APP_ROLE`, owner of the chaos
database), as in production: superusers ignore a role's CONNECTION LIMIT and keep
reserved slots, which would hide the state this fault is about. The runner's own
connections are the superuser's and carry `default_transaction_read_only=off`, so it
can always undo what it did.

* read-only: `ALTER SYSTEM SET default_transaction_read_only = on`, reload, and the
  instances' sessions terminated (so that every one of them is a fresh read-only
  session, as after a failover that lands on a replica); `RESET` and reload after.
* connection slots: the role's CONNECTION LIMIT set to the sessions the other
  instances hold right now (they keep them; none can open another), and the target
  instance's sessions terminated, so it meets "too many connections" (53300) on every
  reconnect; the limit is lifted after.
"""

from __future__ import annotations

import time

import asyncpg

APP_ROLE = "chaos_app"  # a plain identifier: interpolated into DDL, never user input
_CONNECT_TIMEOUT_S = 10.0
_SETTLE_S = 5.0

_TERMINATE = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE usename = $1 AND pid <> pg_backend_pid()
  AND ($2::text IS NULL OR application_name LIKE 'aupus-ha/' || $2 || '/%')
"""
_SESSIONS = """
SELECT count(*) FROM pg_stat_activity
WHERE usename = $1 AND ($2::text IS NULL OR application_name NOT LIKE 'aupus-ha/' || $2 || '/%')
"""


async def admin_connect(dsn: str) -> asyncpg.Connection:
    """A superuser connection that can write even while the server defaults to read-only."""
    return await asyncpg.connect(
        dsn,
        timeout=_CONNECT_TIMEOUT_S,
        server_settings={"default_transaction_read_only": "off"},
    )


async def create_app_role(admin_dsn: str, database: str) -> None:
    conn = await admin_connect(admin_dsn)
    try:
        await conn.execute(f"CREATE ROLE {APP_ROLE} LOGIN", timeout=30)
        await conn.execute(f"CREATE DATABASE {database} OWNER {APP_ROLE}", timeout=30)
    finally:
        await conn.close(timeout=5)


async def set_read_only(admin_dsn: str, read_only: bool) -> int:
    """Switch the server's default; when switching on, end the instances' sessions.
    Returns how many sessions were terminated."""
    conn = await admin_connect(admin_dsn)
    try:
        if read_only:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on", timeout=10)
        else:
            await conn.execute("ALTER SYSTEM RESET default_transaction_read_only", timeout=10)
        await conn.execute("SELECT pg_reload_conf()", timeout=10)
        await _until_default(admin_dsn, "on" if read_only else "off")
        if not read_only:
            return 0
        return int(await conn.fetchval(_TERMINATE, APP_ROLE, None, timeout=10))
    finally:
        await conn.close(timeout=5)


async def _until_default(admin_dsn: str, wanted: str) -> None:
    """A new session sees the reloaded default (the reload is asynchronous)."""
    deadline = time.monotonic() + _SETTLE_S
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(admin_dsn, timeout=_CONNECT_TIMEOUT_S)
        try:
            if await conn.fetchval("SHOW default_transaction_read_only", timeout=5) == wanted:
                return
        finally:
            await conn.close(timeout=5)


async def exhaust_slots(admin_dsn: str, target: str) -> tuple[int, int]:
    """No new connection for the role; the target's sessions ended. (limit, terminated)"""
    conn = await admin_connect(admin_dsn)
    try:
        others = int(await conn.fetchval(_SESSIONS, APP_ROLE, target, timeout=10))
        await conn.execute(f"ALTER ROLE {APP_ROLE} CONNECTION LIMIT {others}", timeout=10)
        terminated = int(await conn.fetchval(_TERMINATE, APP_ROLE, target, timeout=10))
        return others, terminated
    finally:
        await conn.close(timeout=5)


async def release_slots(admin_dsn: str) -> None:
    conn = await admin_connect(admin_dsn)
    try:
        await conn.execute(f"ALTER ROLE {APP_ROLE} CONNECTION LIMIT -1", timeout=10)
    finally:
        await conn.close(timeout=5)
