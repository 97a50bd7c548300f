"""The embedded PostgreSQL and Mosquitto the bench runs on, and connections to them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

from aupus_ha.lab.bench.constants import BENCH_DB, SCRATCH_DB
from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.localcluster import InstanceProcess


@dataclass(slots=True)
class Servers:
    workdir: Path
    pg: EmbeddedPostgres
    broker: EmbeddedMosquitto
    nodes: list[InstanceProcess] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)  # everything we started, for the report
    load_at_start: tuple[float, ...] = field(default_factory=lambda: tuple(os.getloadavg()))

    def dsn(self, database: str) -> str:
        return self.pg.dsn(database)

    def teardown(self, keep: bool) -> None:
        """Stop the instances, the broker and PostgreSQL; remove the workdir (blocking)."""
        try:
            for node in self.nodes:
                _stop_node(node)
        finally:
            try:
                self.broker.cleanup()
            finally:
                self.pg.cleanup()
                if not keep:
                    shutil.rmtree(self.workdir, ignore_errors=True)


def _stop_node(node: InstanceProcess, timeout: float = 15.0) -> None:
    """Graceful stop (SIGTERM, after SIGCONT in case it is frozen); SIGKILL on timeout."""
    proc = node.proc
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGCONT)
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        node.stop_now()


@contextlib.asynccontextmanager
async def embedded_servers(*, durable: bool, keep: bool) -> AsyncIterator[Servers]:
    """PostgreSQL (with the bench and scratch databases) and Mosquitto in a temp dir."""
    workdir = Path(tempfile.mkdtemp(prefix="aupus-bench-"))
    servers = Servers(
        workdir,
        EmbeddedPostgres(workdir / "pg", fast=not durable),
        EmbeddedMosquitto(persistence_dir=workdir / "mqtt"),
    )
    try:
        await asyncio.to_thread(servers.pg.start)
        await asyncio.to_thread(servers.broker.start)
        servers.pids += [p for p in (servers.pg.pid, servers.broker.pid) if p is not None]
        await _create_databases(servers.dsn("postgres"))
        yield servers
    finally:
        # Shielded, in a thread: even a second Ctrl-C cannot leave servers behind, and
        # asyncio.run waits for the thread before it returns.
        await asyncio.shield(asyncio.to_thread(servers.teardown, keep))
        if keep:
            print(f"logs and data kept in {workdir}", file=sys.stderr)


async def _create_databases(admin_dsn: str) -> None:
    conn = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        for name in (BENCH_DB, SCRATCH_DB):
            await conn.execute(f"CREATE DATABASE {name}", timeout=30)
    finally:
        await conn.close(timeout=5)


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection that sends jsonb as raw bytes, as the instances' connections do."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    await jsonb_as_bytes(conn)
    return conn


async def open_pool(dsn: str, *, max_size: int) -> asyncpg.Pool:
    """A pool of such connections."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=max_size, init=jsonb_as_bytes, timeout=10
    )
    return pool


async def jsonb_as_bytes(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + value,
        decoder=lambda value: bytes(value[1:]),
        format="binary",
    )
