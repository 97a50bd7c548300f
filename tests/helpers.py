"""Helpers for tests: wait for a condition with a deadline (never a blind sleep), the
in-process instance pieces (settings, a variable's loaded value, a migrated database, a
store), a process's environment, a running instance's readiness and metrics, the
`status` view's instances and table rows, a webhook receiver and aged readings for the
alert tests, a small tmpfs that can be filled up, the JSON fixture files and a decoder
family with a bug."""

from __future__ import annotations

import contextlib
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self, TypeVar

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from aupus_ha.config import MqttEndpoint, Settings, load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.lab.embedded import free_port
from aupus_ha.lab.localcluster import FAST_TIMINGS, InstanceProcess, wait_until
from aupus_ha.pipeline.readings import Equipment, Reading
from aupus_ha.pipeline.store import Store

if TYPE_CHECKING:
    from aupus_ha.lab.embedded import EmbeddedMosquitto

T = TypeVar("T")

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return it.

    Raises AssertionError(message) when `timeout` seconds pass first. The predicate is
    always evaluated at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(min(interval, remaining))


async def async_wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Async wait_for: `predicate` may be a coroutine function or a plain callable."""
    result: T = await wait_until(
        predicate, timeout, message or f"condition not met within {timeout}s", interval
    )
    return result


class BrokerFactory(Protocol):
    """Type of the make_broker fixture."""

    def __call__(
        self,
        *,
        port: int | None = None,
        persistence_dir: Path | None = None,
        extra_config: str = "",
        start: bool = True,
    ) -> EmbeddedMosquitto: ...


class Inbox:
    """Collects (topic, payload) pairs from a gmqtt client's on_message callback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def on_message(
        self, client: object, topic: str, payload: bytes, qos: int, properties: object
    ) -> int:
        self.messages.append((topic, payload))
        return 0


def ha_settings(dsn: str, name: str) -> Settings:
    """An in-process instance `name`: no MQTT, a 2 s lease with 0.2 s heartbeats."""
    return load_settings(
        {
            "DATABASE_URL": dsn,
            "MQTT_MODE": "disabled",
            "INSTANCE_ID": name,
            "LEASE_TTL_S": "2",
            "HEARTBEAT_S": "0.2",
            "RENEW_DEADLINE_S": "1.4",
        }
    )


# Variables that are parts of the broker endpoint (`Settings.mqtt`), not fields of their own.
ENDPOINT_PARTS = {
    "MQTT_HOST": "host",
    "MQTT_PORT": "port",
    "MQTT_USERNAME": "username",
    "MQTT_PASSWORD": "password",
    "MQTT_TLS": "tls",
}


def setting_value(settings: Settings, name: str) -> object:
    """The loaded value of the variable `name` (a `Settings` field or a part of the
    broker endpoint)."""
    if name in ENDPOINT_PARTS:
        assert isinstance(settings.mqtt, MqttEndpoint)
        return getattr(settings.mqtt, ENDPOINT_PARTS[name])
    return getattr(settings, name.lower())


def instance_env(dsn: str, mqtt_url: str, cluster_name: str, **extra: str) -> dict[str, str]:
    """The environment of an `aupus-ha run` process of `cluster_name`: JSON logs and the
    short test timings (FAST_TIMINGS), then `extra` (which may override them)."""
    return {
        "DATABASE_URL": dsn,
        "MQTT_URL": mqtt_url,
        "CLUSTER_NAME": cluster_name,
        "LOG_FORMAT": "json",
        **FAST_TIMINGS,
        **extra,
    }


async def migrate_fresh(dsn: str, *equipment: str) -> str:
    """Migrates the (fresh) database at `dsn` and registers each equipment id, MQTT
    enabled on topic `t/<id>`; returns `dsn`."""
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
        for ident in equipment:
            await conn.execute(
                "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
                "VALUES ($1, $2, $3, true)",
                ident,
                ident,
                f"t/{ident}",
            )
    finally:
        await conn.close()
    return dsn


@contextlib.asynccontextmanager
async def store_of(dsn: str, name: str, app_name: str) -> AsyncIterator[Store]:
    """A `Store` writing as instance `name` (no process token), on a pool of its own."""
    settings = ha_settings(dsn, name)
    pool = await create_pool(settings, app_name)
    try:
        yield Store(pool, Queries(), cluster_name=settings.cluster_name, instance_id=name)
    finally:
        await pool.close()


async def standby_ready(node: InstanceProcess) -> bool:
    """The instance answers 200 on /health/standby (a ready standby)."""
    status, _ = await node.get("/health/standby")
    return status == 200


async def metric(node: InstanceProcess, name: str) -> float:
    """A counter or gauge of a running instance's /metrics (-1 if it does not answer)."""
    url = f"http://{node.http_host}:{node.http_port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as resp:
            text = await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return -1
    for family in text_string_to_metric_families(text):
        if family.name == name:
            return family.samples[0].value
    return -1


# A reading that arrived $2 seconds ago ($1 = equipamento_id): its `created_at` lies in
# the past, so the alert tests make ages without waiting on the clock.
INSERT_AGED_READING = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, qualidade, created_at)
VALUES ($1, now() - make_interval(secs => $2::float8), '{}', 'bom',
        now() - make_interval(secs => $2::float8))
"""


class WebhookReceiver:
    """A stand-in for a Slack incoming webhook: a small aiohttp server on a free port of
    127.0.0.1 (while used as an async context manager) recording every JSON body POSTed
    to /hook."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.port = free_port()
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def handle(self, request: web.Request) -> web.Response:
        self.bodies.append(await request.json())
        return web.Response(text="ok")

    def kinds(self, prefix: str = "") -> list[str]:
        """The `kind` field of every body received, in order (those starting with
        `prefix`)."""
        found = [
            field["value"]
            for body in self.bodies
            for field in body["attachments"][0]["fields"]
            if field["title"] == "kind"
        ]
        return [k for k in found if k.startswith(prefix)]

    def about(self, kind: str, *, resolved: bool = False) -> list[dict[str, Any]]:
        """Bodies whose attachment names `kind` (resolved ones or the others)."""
        out = []
        for body in self.bodies:
            attachment = body["attachments"][0]
            kinds = {f["value"] for f in attachment["fields"] if f["title"] == "kind"}
            if kind in kinds and ("RESOLVED" in attachment["title"]) == resolved:
                out.append(body)
        return out

    async def __aenter__(self) -> Self:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


def status_rows(table: str) -> dict[str, dict[str, str]]:
    """The instance table of `aupus-ha status` as {instance: {column: cell}} (columns split
    on 2+ spaces)."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("instance "))
    header = re.split(r"\s{2,}", lines[start].strip())
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 2 :]:
        if not line.strip():
            break
        cells = re.split(r"\s{2,}", line.strip())
        rows[cells[0]] = dict(zip(header, cells, strict=True))
    return rows


def status_instance(
    name: str, role: str, epoch: int | None, age: float, **extra: Any
) -> dict[str, Any]:
    """One entry of the `instances` list `render_status` reads (`extra` overrides, e.g.
    heartbeat_at or stopped_at)."""
    return {
        "instance_id": name,
        "role": role,
        "heartbeat_at": "2026-11-30T10:00:00+00:00",
        "heartbeat_age_s": age,
        "leader_epoch": epoch,
        "version": "0.1.0",
        "host": "h",
        "pid": 1,
        "stopped_at": None,
        "stats": {"pending": 0},
        **extra,
    }


@contextlib.contextmanager
def tmpfs(where: Path, **options: str) -> Iterator[Path]:
    """A tmpfs of its own at `where` (e.g. size=64k, nr_inodes=3), unmounted on exit;
    the test is skipped where it cannot be mounted (the tests run as root)."""
    where.mkdir()
    opts = ",".join(["mode=0700", *(f"{k}={v}" for k, v in options.items())])
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def remount(where: Path, **options: str) -> None:
    """Changes a mounted tmpfs's options (e.g. nr_inodes=64) in place."""
    opts = ",".join(["remount", *(f"{k}={v}" for k, v in options.items())])
    subprocess.run(["mount", "-o", opts, str(where)], check=True)


def fill(filler: Path) -> Path:
    """Writes `filler` until its file system says ENOSPC; returns it."""
    with filler.open("wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
    return filler


def fixture_object(name: str) -> dict[str, object]:
    """The JSON object in tests/fixtures/`name`."""
    obj = orjson.loads((FIXTURES / name).read_bytes())
    assert isinstance(obj, dict)
    return obj


def fixture_lines(name: str) -> list[dict[str, object]]:
    """The JSON objects of tests/fixtures/`name`, one a line (blank lines skipped)."""
    text = (FIXTURES / name).read_bytes()
    return [orjson.loads(line) for line in text.splitlines() if line.strip()]


class BrokenFamily:
    """A decoder family with a bug: it claims every payload and decode raises."""

    name = "broken"

    def matches(self, obj: dict[str, object]) -> bool:
        return True

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        raise RuntimeError("boom")
