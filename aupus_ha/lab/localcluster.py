"""A local cluster of real `aupus-ha run` processes: start, signal, probe, read logs.

Shared by the acceptance tests, `aupus-ha demo` and the benchmarks, so all three
exercise exactly the same processes an operator runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.lab.embedded import free_port
from aupus_ha.lab.publisher import Publisher, publish_paced

# Fast but realistic timings for tests: failover in well under the defaults.
FAST_TIMINGS = {
    "LEASE_TTL_S": "2",
    "HEARTBEAT_S": "0.25",
    "RENEW_DEADLINE_S": "1.4",
    "FLUSH_INTERVAL_S": "0.2",
}


@dataclass
class InstanceProcess:
    """One `python -m aupus_ha run` child process with its own log file and HTTP port."""

    name: str
    env: dict[str, str]
    log_dir: Path
    http_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    # Command prefix the process is started under, e.g. ("ip", "netns", "exec", ns) to
    # run it in a network namespace; it must exec the command (keep the pid).
    wrap: tuple[str, ...] = ()
    # Address the HTTP server binds to and probes go to (the namespace's own address).
    http_host: str = "127.0.0.1"

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.log"

    def start(self, *extra_args: str) -> InstanceProcess:
        env = {
            **os.environ,
            **self.env,
            "INSTANCE_ID": self.name,
            "HTTP_PORT": str(self.http_port),
            "HTTP_HOST": self.http_host,
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [*self.wrap, sys.executable, "-m", "aupus_ha", "run", *extra_args],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.log_dir,
            start_new_session=True,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def wait_exit(self, timeout: float = 30) -> int:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {timeout}s")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def stop_now(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(10)

    # --- observing ----------------------------------------------------------------------

    async def get(self, path: str, timeout: float = 1.0) -> tuple[int, dict[str, Any] | None]:
        """Status and JSON body of a route; (0, None) when nothing answers."""
        url = f"http://{self.http_host}:{self.http_port}{path}"
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout)
            async with aiohttp.ClientSession(timeout=client_timeout) as s, s.get(url) as resp:
                return resp.status, await resp.json()
        except (aiohttp.ClientError, TimeoutError):
            return 0, None

    async def is_leader(self) -> bool:
        status, _ = await self.get("/health/leader")
        return status == 200

    def events(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return out
        for line in self.log_path.read_bytes().splitlines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict):
                out.append(event)
        return out

    def find(self, event: str, **match: Any) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events()
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items())
        ]

    def tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


async def wait_until(
    predicate: Callable[[], Any], timeout: float, message: str, interval: float = 0.05
) -> Any:
    """Poll an (async or sync) predicate until truthy; AssertionError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {message}")
        await asyncio.sleep(interval)


async def leaders(instances: list[InstanceProcess]) -> list[InstanceProcess]:
    results = await asyncio.gather(*(i.is_leader() for i in instances))
    return [i for i, ok in zip(instances, results, strict=True) if ok]


async def wait_single_leader(
    instances: list[InstanceProcess], timeout: float = 20
) -> InstanceProcess:
    async def one() -> InstanceProcess | None:
        found = await leaders(instances)
        return found[0] if len(found) == 1 else None

    detail = "; ".join(f"{i.name}: {i.tail(5)}" for i in instances)
    return await wait_until(one, timeout, f"no single leader. logs: {detail}")  # type: ignore[no-any-return]


# --- database fixtures and assertions ---------------------------------------------------


async def seed_equipment(dsn: str, count: int, prefix: str = "eq") -> list[tuple[str, str]]:
    """`count` enabled equipment rows with one topic each; returns [(id, topic)]."""
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
        rows = [(f"{prefix}{i:04d}", f"aupus/test/{prefix}{i:04d}") for i in range(count)]
        await conn.executemany(
            "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
            "VALUES ($1, $1, $2, true) ON CONFLICT (id) DO NOTHING",
            rows,
        )
        return rows
    finally:
        await conn.close()


def generic_messages(
    equipment: list[tuple[str, str]], per_equipment: int, start: datetime | None = None
) -> list[tuple[str, bytes, str, datetime]]:
    """Interleaved generic readings with unique timestamps: (topic, payload, id, ts)."""
    start = start or datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    out = []
    for n in range(per_equipment):
        for equip_id, topic in equipment:
            ts = start + timedelta(seconds=n, milliseconds=7)
            payload = {
                "timestamp": ts.isoformat().replace("+00:00", "Z"),
                "power": 1000 + n,
                "voltage": 220.1,
                "current": 4.5,
                "seq": n,
            }
            out.append((topic, json.dumps(payload).encode(), equip_id, ts))
    return out


async def publish(
    url: str,
    messages: list[tuple[str, bytes, str, datetime]],
    rate: float,
    on_sent: Callable[[int], None] | None = None,
    stop: asyncio.Event | None = None,
) -> int:
    """Publish (topic, payload) of `messages`; returns how many were acknowledged."""
    async with Publisher(url) as pub:
        report = await publish_paced(
            pub, [(t, p) for t, p, _, _ in messages], rate=rate, on_sent=on_sent, stop=stop
        )
    return report.sent


async def stored_keys(dsn: str) -> list[tuple[str, datetime]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT equipamento_id, timestamp_dados FROM equipamentos_dados")
    finally:
        await conn.close()
    return [(r[0], r[1]) for r in rows]


async def fetch(dsn: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def wait_all_stored(
    dsn: str, expected: set[tuple[str, datetime]], timeout: float = 30
) -> None:
    async def complete() -> bool:
        return expected <= set(await stored_keys(dsn))

    try:
        await wait_until(complete, timeout, "not every reading was stored", interval=0.2)
    except AssertionError:
        missing = expected - set(await stored_keys(dsn))
        raise AssertionError(
            f"{len(missing)} of {len(expected)} readings missing, e.g. {sorted(missing)[:3]}"
        ) from None
