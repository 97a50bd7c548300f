"""`aupus-ha bench`: an end-to-end benchmark on embedded servers, with same-run baselines.

It starts an embedded PostgreSQL and Mosquitto and first measures the raw limits of this
machine: asyncpg binary COPY into `equipamentos_dados` (a scratch database, same
migrations), the store's own flush (fence check, COPY into the staging table, INSERT …
ON CONFLICT DO NOTHING — exactly `Store.flush`), one INSERT per reading (the legacy
service's way), and broker fan-out to one gmqtt subscriber (the instances' client
settings, an empty callback) at QoS 1 and QoS 0. Then it runs a leader and a standby
(`python -m aupus_ha run`) and measures, in phases:

* ``max``: publishing as fast as the broker accepts (a bounded PUBACK window, and a
  bounded backlog so the leader always has full batches but memory stays sane): the
  sustained ingest rate, published → committed;
* ``paced``: publishing at a fixed rate (default half the measured max): latency
  publish → committed (p50/p99);
* ``failover``: the paced load while the leader is killed (kill -9), stopped (SIGTERM)
  and frozen (SIGSTOP): time until the standby answers /health/leader, writer gap.

CPU and peak RSS of every process (instances, their PostgreSQL backends, the broker,
this publisher) are sampled with psutil in every phase. Latency needs no clock sync:
each payload carries its publish wall time (`sent_at`) and PostgreSQL stamps
`created_at` = now(), the flush transaction's start, on the same machine clock.
Figures are reported as numbers and as ratios to the baselines; nothing is asserted.
Everything started is stopped and the temporary directory removed on exit, Ctrl-C
included.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import math
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import asyncpg
import gmqtt
import orjson

from aupus_ha.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from aupus_ha.migrate import apply_migrations
from aupus_ha.publisher import Publisher
from aupus_ha.queries import Queries
from aupus_ha.readings import Reading
from aupus_ha.store import STAGING_COLUMNS, Store

T = TypeVar("T")
RateSpec = float | Literal["auto", "max"]

CLUSTER = "bench"
NODE_NAMES = ("node-a", "node-b")
BENCH_DB = "aupus_bench"
SCRATCH_DB = "aupus_scratch"
TOPIC_FILTER = "aupus/test/#"  # seed_equipment's topics
FAULTS: dict[str, signal.Signals] = {
    "kill-9": signal.SIGKILL,
    "sigterm": signal.SIGTERM,
    "sigstop": signal.SIGSTOP,
}
BATCH = 5000  # the instances' default BATCH_MAX: baselines write batches of this size
BACKLOG_CAP = 4 * BATCH  # max mode: published but not yet committed, at most
RECEIVE_MAXIMUM = 2000  # the instances' default MQTT_RECEIVE_MAXIMUM
CHUNK = 100  # messages published between two looks at the windows
SAMPLE_S = 0.5  # psutil sampling period
STALL_S = 60.0  # no progress for this long: give up instead of hanging
FANOUT_WINDOW = 20_000  # fan-out baseline: published but not yet received, at most


# --- options -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchOptions:
    duration_s: float = 30.0  # per measured phase
    rate: RateSpec = "auto"  # auto: max phase, then paced at half of it
    equipment: int = 1000
    payload_bytes: int = 300
    window: int = 1000  # unacknowledged QoS 1 publishes, at most
    baseline_s: float = 4.0  # time budget of each raw baseline
    warmup_s: float = 1.0
    failover_runs: int = 1
    skip_failover: bool = False
    fast_timings: bool = False
    durable: bool = False  # PostgreSQL with fsync on
    keep: bool = False
    plot: Path | None = None


def parse_rate(text: str) -> RateSpec:
    """`auto`, `max` or a positive number of readings per second."""
    if text in ("auto", "max"):
        return text  # type: ignore[return-value]
    rate = float(text)
    if not rate > 0 or math.isinf(rate):
        raise ValueError(text)
    return rate


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from the `aupus-ha bench` flags; ValueError names a bad one."""
    try:
        rate = parse_rate(args.rate)
    except ValueError:
        raise ValueError("--rate must be auto, max or a positive number") from None
    if args.plot is not None and args.plot.suffix.lower() not in (".html", ".htm", ".svg"):
        raise ValueError(
            "--plot must end in .html or .svg (a .png needs matplotlib, which is not a "
            "dependency of aupus-ha)"
        )
    if args.equipment < 1 or args.payload_bytes < 1 or args.window < 1:
        raise ValueError("--equipment, --payload-bytes and --window must be positive")
    duration = args.duration if args.duration is not None else (8.0 if args.quick else 30.0)
    if duration <= 0:
        raise ValueError("--duration must be positive")
    return BenchOptions(
        duration_s=duration,
        rate=rate,
        equipment=args.equipment,
        payload_bytes=args.payload_bytes,
        window=args.window,
        baseline_s=1.0 if args.quick else 4.0,
        warmup_s=0.5 if args.quick else 1.0,
        failover_runs=max(1, args.failover_runs),
        skip_failover=args.skip_failover,
        fast_timings=args.fast_timings,
        durable=args.durable,
        keep=args.keep,
        plot=args.plot,
    )


# --- results -------------------------------------------------------------------------


@dataclass(slots=True)
class Usage:
    cpu_pct: float  # of one core, averaged over the phase
    peak_rss_mb: float
    cpu_s: float  # CPU seconds over the phase


@dataclass(slots=True)
class PhaseResult:
    name: str
    target_rate: float | None  # None: as fast as the broker accepts
    span_s: tuple[float, float]  # since the first publish of the run
    publish_s: float
    published: int
    committed: int
    lost: int
    publish_rate: float
    ingest_rate: float  # committed / (last commit - first publish)
    latency_ms: dict[str, float]
    flushes: dict[str, float]
    resources: dict[str, Usage]
    cpu_us_per_reading: dict[str, float]


@dataclass(slots=True)
class FaultResult:
    kind: str
    at_s: float
    failover_s: float
    gap_ms: float
    from_node: str
    to_node: str


@dataclass(slots=True)
class Timeline:
    bucket_s: float
    committed: list[tuple[float, str, float]]  # (t, leader, rows/s over the last 2 s)
    published: list[tuple[float, float]]  # (t, readings/s), by the payload's publish time
    leaders: list[tuple[float, float, str]]  # (from, to, instance): who held the lock
    phases: list[tuple[str, float, float]]
    faults: list[tuple[str, float]]


@dataclass(slots=True)
class BenchReport:
    machine: dict[str, object]
    settings: dict[str, object]
    baselines: dict[str, float]
    costs: dict[str, float]  # CPU µs per message of the baseline subscriber
    phases: list[PhaseResult]
    failover: dict[str, dict[str, float]]
    faults: list[FaultResult]
    ratios: dict[str, float]
    integrity: dict[str, int]
    timeline: Timeline
    processes: dict[str, object]

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2)


# --- readings ------------------------------------------------------------------------


class ReadingSource:
    """Unique generic readings of about `payload_bytes`, round-robin over the equipment.

    `seq` numbers every reading of the run, so a phase is a range of seq; reading n of
    an equipment has `timestamp` start + n s (unique natural keys), and `sent_at` is the
    wall time at which it is built, i.e. published.
    """

    def __init__(self, equipment: list[tuple[str, str]], payload_bytes: int) -> None:
        self._equipment = equipment
        self._start = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)
        self.seq = 0
        self._pad = ""
        sample = len(self._payload(10**7, self._start, time.time()))
        self._pad = "x" * max(0, payload_bytes - sample - len(',"tag":""'))

    def next(self) -> tuple[str, bytes]:
        """(topic, payload) of the next reading, stamped with the current wall time."""
        seq = self.seq
        self.seq += 1
        _, topic = self._equipment[seq % len(self._equipment)]
        return topic, self._payload(seq, self._timestamp(seq), time.time())

    def readings(self, count: int) -> list[Reading]:
        """The next `count` readings as the decoder would produce them (for baselines)."""
        out = []
        for _ in range(count):
            seq = self.seq
            self.seq += 1
            equipment_id, _ = self._equipment[seq % len(self._equipment)]
            ts = self._timestamp(seq)
            out.append(Reading(equipment_id, ts, self._payload(seq, ts, time.time())))
        return out

    def _timestamp(self, seq: int) -> datetime:
        return self._start + timedelta(seconds=seq // len(self._equipment), milliseconds=7)

    def _payload(self, seq: int, ts: datetime, sent_at: float) -> bytes:
        reading: dict[str, object] = {
            "timestamp": ts.isoformat().replace("+00:00", "Z"),
            "sent_at": round(sent_at, 6),
            "seq": seq,
            "power_w": 1000 + seq % 997,
            "voltage_v": [220.1, 219.8, 221.3],
            "current_a": [4.51, 4.48, 4.62],
            "energy_kwh": round(seq * 0.0125, 4),
            "frequency_hz": 60.01,
            "power_factor": 0.97,
            "temperature_c": 41.5,
            "status": "ok",
        }
        if self._pad:
            reading["tag"] = self._pad
        return orjson.dumps(reading)


# --- small async helpers -------------------------------------------------------------


class Progress:
    """One line per step on stderr, with the elapsed time."""

    def __init__(self) -> None:
        self._started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self._started:7.1f}s] {text}", file=sys.stderr, flush=True)


@contextlib.asynccontextmanager
async def _background(coro: Coroutine[Any, Any, T], name: str) -> AsyncIterator[asyncio.Task[T]]:
    """Run `coro` as a task for the duration of the block; cancelled and awaited on exit."""
    task = asyncio.create_task(coro, name=name)
    try:
        yield task
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _wall_to_iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat()


# --- resources -----------------------------------------------------------------------


@dataclass(slots=True)
class _Window:
    started: float
    cpu_at_start: dict[str, float]
    peak_rss: dict[str, int] = field(default_factory=dict)


MACHINE = "whole machine"
OTHERS = "other processes (not the bench's)"


class ResourceSampler:
    """CPU seconds and RSS of named groups of processes, sampled with psutil.

    Every method reads /proc: call them through `asyncio.to_thread`. A pid first seen
    after the first sample is a new process, so its whole CPU time counts. The machine's
    busy time is sampled too, so a report shows how much CPU went to processes the bench
    did not start (another test-suite on a shared machine skews every figure).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: dict[str, float] = {MACHINE: 0.0}
        self._last: dict[int, float] = {}
        self._machine_last: float | None = None
        self._windows: dict[str, _Window] = {}

    def sample(self, groups: Mapping[str, Sequence[int]]) -> None:
        with self._lock:
            self._sample(groups)

    def start_window(self, name: str, groups: Mapping[str, Sequence[int]]) -> None:
        with self._lock:
            self._sample(groups)
            self._windows[name] = _Window(time.monotonic(), dict(self._cpu))

    def end_window(self, name: str, groups: Mapping[str, Sequence[int]]) -> dict[str, Usage]:
        """CPU % of one core and peak RSS per group since `start_window(name)`."""
        with self._lock:
            self._sample(groups)
            window = self._windows.pop(name)
            seconds = max(1e-9, time.monotonic() - window.started)
            used = {g: cpu - window.cpu_at_start.get(g, 0.0) for g, cpu in self._cpu.items()}
        used[OTHERS] = max(0.0, used[MACHINE] - sum(v for g, v in used.items() if g != MACHINE))
        return {
            group: Usage(
                cpu_pct=round(100 * cpu / seconds, 1),
                peak_rss_mb=round(window.peak_rss.get(group, 0) / 2**20, 1),
                cpu_s=round(cpu, 3),
            )
            for group, cpu in used.items()
        }

    def _sample(self, groups: Mapping[str, Sequence[int]]) -> None:
        primed = self._machine_last is not None
        for name, pids in groups.items():
            rss = sum(self._account(name, pid, primed) for pid in pids)
            for window in self._windows.values():
                window.peak_rss[name] = max(window.peak_rss.get(name, 0), rss)
        busy = _machine_busy_s()
        if self._machine_last is not None:
            self._cpu[MACHINE] += max(0.0, busy - self._machine_last)
        self._machine_last = busy

    def _account(self, group: str, pid: int, primed: bool) -> int:
        """Add the pid's CPU since the last sample to its group; returns its memory: RSS,
        or for PostgreSQL RSS minus shared pages (every backend maps the shared buffers,
        so summing RSS would count them once per backend)."""
        import psutil

        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                mem = proc.memory_info()
        except psutil.Error:
            return 0
        rss: int = mem.rss - mem.shared if group.startswith("postgres") else mem.rss
        cpu = float(times.user + times.system)
        previous = self._last.get(pid)
        delta = cpu - previous if previous is not None else (cpu if primed else 0.0)
        self._cpu[group] = self._cpu.get(group, 0.0) + max(0.0, delta)
        self._last[pid] = cpu
        return rss


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (Linux: guest time is already in user,
    and steal is time the hypervisor gave to somebody else)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


# --- servers -------------------------------------------------------------------------


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


async def _connect(dsn: str) -> asyncpg.Connection:
    """A connection that sends jsonb as raw bytes, as the instances' connections do."""
    conn: asyncpg.Connection = await asyncpg.connect(dsn, timeout=10)
    await _jsonb_as_bytes(conn)
    return conn


async def _jsonb_as_bytes(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        schema="pg_catalog",
        encoder=lambda value: b"\x01" + value,
        decoder=lambda value: bytes(value[1:]),
        format="binary",
    )


# --- raw baselines: database ---------------------------------------------------------

Writer = Callable[[list[Reading]], Awaitable[object]]
NAIVE_INSERT = (
    f"INSERT INTO equipamentos_dados ({', '.join(STAGING_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i + 1}' for i in range(len(STAGING_COLUMNS)))})"
)


def _as_record(r: Reading) -> tuple[object, ...]:
    return (
        r.equipamento_id,
        r.timestamp_dados,
        r.dados,
        r.fonte,
        r.qualidade,
        r.energia_kwh,
        r.potencia_ativa_kw,
        r.num_leituras,
        r.timestamp_fim,
    )


async def _rows_per_second(
    write: Writer,
    source: ReadingSource,
    *,
    batch: int,
    budget_s: float,
) -> float:
    """Write batches until `budget_s` of write time is spent; rows per second of it."""
    rows, spent = 0, 0.0
    while spent < budget_s:
        readings = source.readings(batch)
        started = time.perf_counter()
        await write(readings)
        spent += time.perf_counter() - started
        rows += len(readings)
    return rows / spent


async def database_baselines(
    dsn: str, source: ReadingSource, budget_s: float, say: Progress
) -> dict[str, float]:
    """COPY, the store's flush, and one INSERT per reading, each into an empty table."""
    await _prepare_scratch(dsn)
    async with contextlib.AsyncExitStack() as stack:
        conn = await _connect(dsn)
        stack.push_async_callback(conn.close, timeout=5)
        pool = await asyncpg.create_pool(
            dsn, min_size=1, max_size=1, init=_jsonb_as_bytes, timeout=10
        )
        stack.push_async_callback(asyncio.wait_for, pool.close(), 10)
        results = {}
        for name, write, batch in _writers(conn, pool):
            await conn.execute("TRUNCATE equipamentos_dados", timeout=60)
            results[name] = await _rows_per_second(write, source, batch=batch, budget_s=budget_s)
            say.say(f"baseline {name}: {results[name]:,.0f}")
        return results
    raise AssertionError("unreachable")  # for mypy: the block returns or raises


def _writers(conn: asyncpg.Connection, pool: asyncpg.Pool) -> list[tuple[str, Writer, int]]:
    """(name, write, batch size) of each database baseline."""
    store = Store(pool, Queries(), cluster_name=CLUSTER, instance_id="bench")

    async def copy(readings: list[Reading]) -> None:
        records = [_as_record(r) for r in readings]
        await conn.copy_records_to_table(
            "equipamentos_dados", records=records, columns=STAGING_COLUMNS, timeout=60
        )

    async def flush(readings: list[Reading]) -> None:
        await store.flush(readings, [], 1)

    async def naive(readings: list[Reading]) -> None:
        for r in readings:
            await conn.execute(NAIVE_INSERT, *_as_record(r), timeout=10)

    return [
        ("copy_rows_s", copy, BATCH),
        ("store_flush_rows_s", flush, BATCH),
        ("naive_insert_rows_s", naive, 200),
    ]


async def _prepare_scratch(dsn: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        await apply_migrations(conn)
        await conn.execute(
            "INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1) "
            "ON CONFLICT (cluster_name) DO UPDATE SET epoch = 1",
            CLUSTER,
            timeout=10,
        )
    finally:
        await conn.close(timeout=5)


# --- raw baselines: broker fan-out ---------------------------------------------------


class CountingSubscriber:
    """A subscriber in its own process (like an instance) that counts what it receives.

    The child prints "ready" once subscribed, then "<count> <wall time of the last
    message>" every 50 ms; `received` and `last` follow those lines.
    """

    def __init__(self) -> None:
        self.pid = 0
        self.received = 0
        self.last = 0.0
        self.ready = asyncio.Event()
        self._changed = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def running(
        cls, url: str, topic_filter: str, qos: int, pids: list[int]
    ) -> AsyncIterator[CountingSubscriber]:
        sub = cls()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "aupus_ha.bench",
            "subscribe",
            url,
            topic_filter,
            str(qos),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
        )
        pids.append(proc.pid)
        sub.pid = proc.pid
        try:
            assert proc.stdout is not None
            async with _background(sub._follow(proc.stdout), "subscriber-output"):
                await asyncio.wait_for(sub.ready.wait(), timeout=30)
                yield sub
        finally:
            await _end_process(proc)

    async def _follow(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            fields = line.split()
            if fields == [b"ready"]:
                self.ready.set()
            elif len(fields) == 2:
                self.received, self.last = int(fields[0]), float(fields[1])
                self._changed.set()

    async def wait_below(self, sent: int, window: int) -> None:
        """Wait until at most `window` published messages are not yet received."""
        while sent - self.received > window:
            self._changed.clear()
            await asyncio.wait_for(self._changed.wait(), timeout=STALL_S)

    async def wait_all(self, sent: int, quiet_s: float = 3.0) -> None:
        """Wait until `sent` messages arrived, or nothing arrived for `quiet_s` (QoS 0)."""
        while self.received < sent:
            self._changed.clear()
            before = self.received
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=quiet_s)
            if self.received == before:
                return


async def _end_process(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout=5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def broker_fanout(
    url: str, source: ReadingSource, qos: int, budget_s: float, pids: list[int]
) -> tuple[float, float]:
    """(messages/s, subscriber CPU µs per message) from one publisher through the broker
    to one subscriber process."""
    async with (
        CountingSubscriber.running(url, TOPIC_FILTER, qos, pids) as sub,
        _FanoutSender(url, qos) as sender,
    ):
        cpu_before = await asyncio.to_thread(_cpu_seconds, sub.pid)
        first = time.time()
        end = time.monotonic() + budget_s
        sent = 0
        while time.monotonic() < end:
            for _ in range(CHUNK):
                sender.send(*source.next())
            sent += CHUNK
            await sender.window()
            await sub.wait_below(sent, FANOUT_WINDOW)
        await sub.wait_all(sent)
        cpu = await asyncio.to_thread(_cpu_seconds, sub.pid) - cpu_before
        rate = sub.received / max(1e-9, sub.last - first)
        return rate, 1e6 * cpu / max(1, sub.received)


def _cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


class _FanoutSender:
    """QoS 1: the project's Publisher (PUBACK window); QoS 0: a bare gmqtt client."""

    def __init__(self, url: str, qos: int) -> None:
        self._qos = qos
        self._publisher = Publisher(url)
        parts = urlsplit(url)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 1883
        self._client = gmqtt.Client(f"aupus-bench-q0-{uuid.uuid4().hex[:8]}")

    async def __aenter__(self) -> _FanoutSender:
        if self._qos:
            await self._publisher.__aenter__()
        else:
            await asyncio.wait_for(self._client.connect(self._host, self._port), timeout=10)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._qos:
            await self._publisher.__aexit__(*exc)
        else:
            await asyncio.wait_for(self._client.disconnect(), timeout=5)

    def send(self, topic: str, payload: bytes) -> None:
        if self._qos:
            self._publisher.publish(topic, payload)
        else:
            self._client.publish(topic, payload, qos=0)

    async def window(self, size: int = 1000) -> None:
        if self._qos and self._publisher.unacknowledged >= size:
            await self._publisher.wait_acknowledged(timeout=STALL_S, max_pending=size // 2)
        await asyncio.sleep(0)


async def _count_messages(url: str, topic_filter: str, qos: int) -> None:
    """The subscriber process: the instances' client settings and an empty callback."""
    count, last = 0, 0.0

    async def on_message(*_: object) -> int:
        nonlocal count, last
        count += 1
        last = time.time()
        return 0

    subscribed = asyncio.Event()
    client = gmqtt.Client(
        f"aupus-bench-sub-{uuid.uuid4().hex[:8]}",
        optimistic_acknowledgement=False,
        receive_maximum=RECEIVE_MAXIMUM,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    parts = urlsplit(url)
    await asyncio.wait_for(client.connect(parts.hostname, parts.port or 1883), timeout=10)
    client.subscribe(gmqtt.Subscription(topic_filter, qos=qos))
    await asyncio.wait_for(subscribed.wait(), timeout=10)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    while True:  # ends with SIGTERM from the parent
        await asyncio.sleep(0.05)
        sys.stdout.write(f"{count} {last:.6f}\n")
        sys.stdout.flush()


# --- the cluster under test ----------------------------------------------------------


@dataclass(slots=True)
class RunContext:
    """What the phases share: servers, cluster, publisher, sampler, the run's clock."""

    options: BenchOptions
    servers: Servers
    nodes: list[InstanceProcess]
    db: asyncpg.Pool  # a pool: the sampler task queries while a phase does
    publisher: Publisher
    source: ReadingSource
    sampler: ResourceSampler
    say: Progress
    t0: float = 0.0  # wall time of the first publish
    phases: list[PhaseResult] = field(default_factory=list)
    faults: list[FaultResult] = field(default_factory=list)
    published: int = 0

    @property
    def dsn(self) -> str:
        return self.servers.dsn(BENCH_DB)


def node_env(servers: Servers, fast_timings: bool) -> dict[str, str]:
    return {
        "DATABASE_URL": servers.dsn(BENCH_DB),
        "MQTT_URL": servers.broker.url,
        "CLUSTER_NAME": CLUSTER,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        **(FAST_TIMINGS if fast_timings else {}),
    }


async def start_cluster(servers: Servers, options: BenchOptions) -> list[InstanceProcess]:
    """node-a (which will lead), then node-b (standby); both subscribed to every topic."""
    env = node_env(servers, options.fast_timings)
    nodes = [InstanceProcess(name, env, servers.workdir) for name in NODE_NAMES]
    servers.nodes = nodes
    for node in nodes:  # node-a first, so that it is the one that leads
        await asyncio.to_thread(node.start)
        servers.pids.append(node.pid)
        await wait_single_leader(nodes, timeout=60)

    async def subscribed() -> bool:
        counts = await asyncio.gather(*(_subscribed_topics(n) for n in nodes))
        return all(c >= options.equipment for c in counts)

    await wait_until(subscribed, 60, "the instances did not subscribe to every topic", 0.1)
    await wait_until(lambda: _healthy_standby(nodes[1]), 60, "node-b is not a healthy standby")
    return nodes


async def _subscribed_topics(node: InstanceProcess) -> int:
    _, body = await node.get("/health")
    with contextlib.suppress(KeyError, TypeError):
        return int(body["checks"]["mqtt"]["subscribedTopics"])  # type: ignore[index]
    return 0


async def _healthy_standby(node: InstanceProcess) -> bool:
    status, _ = await node.get("/health/standby")
    return status == 200


async def _process_groups(ctx: RunContext) -> dict[str, list[int]]:
    """Instances, broker, this process, and PostgreSQL backends by whom they serve."""
    groups: dict[str, list[int]] = {n.name: [n.pid] for n in ctx.nodes if n.alive()}
    groups["mosquitto"] = [p for p in (ctx.servers.broker.pid,) if p is not None]
    groups["bench (publisher)"] = [os.getpid()]
    for name in (*NODE_NAMES, "other"):
        groups[f"postgres ({name})"] = []
    postmaster = ctx.servers.pg.pid
    groups["postgres (other)"] += [postmaster] if postmaster is not None else []
    rows = await ctx.db.fetch("SELECT pid, application_name FROM pg_stat_activity", timeout=5)
    for row in rows:
        owner = next(
            (n for n in NODE_NAMES if (row["application_name"] or "").startswith(f"aupus-ha/{n}/")),
            "other",
        )
        groups[f"postgres ({owner})"].append(row["pid"])
    return groups


async def sample_once(ctx: RunContext) -> None:
    groups = await _process_groups(ctx)
    await asyncio.to_thread(ctx.sampler.sample, groups)


async def start_window(ctx: RunContext, name: str) -> None:
    groups = await _process_groups(ctx)
    await asyncio.to_thread(ctx.sampler.start_window, name, groups)


async def end_window(ctx: RunContext, name: str) -> dict[str, Usage]:
    groups = await _process_groups(ctx)
    return await asyncio.to_thread(ctx.sampler.end_window, name, groups)


async def sample_forever(ctx: RunContext) -> None:
    while True:
        with contextlib.suppress(
            asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError
        ):
            await sample_once(ctx)
        await asyncio.sleep(SAMPLE_S)


# --- publishing ----------------------------------------------------------------------


@dataclass(slots=True)
class PublishResult:
    first_seq: int
    end_seq: int
    seconds: float

    @property
    def sent(self) -> int:
        return self.end_seq - self.first_seq


Gate = Callable[[int], Awaitable[None]]


async def publish_stream(
    pub: Publisher,
    source: ReadingSource,
    *,
    rate: float | None,
    window: int,
    until: Callable[[], bool],
    gate: Gate | None = None,
) -> PublishResult:
    """Publish at `rate` (None: as fast as the broker accepts) until `until()` is true.

    At most `window` messages await their PUBACK; `gate(sent)` may hold the publisher
    back further. Returns once every message is acknowledged by the broker.
    """
    first = source.seq
    started = time.monotonic()
    while not until():
        sent = source.seq - first
        burst = _due(rate, time.monotonic() - started, sent)
        if burst <= 0:
            assert rate is not None
            await asyncio.sleep(max(0.002, (sent + 1) / rate - (time.monotonic() - started)))
            continue
        for _ in range(burst):
            pub.publish(*source.next())
        if pub.unacknowledged >= window:
            await pub.wait_acknowledged(timeout=STALL_S, max_pending=window // 2)
        if gate is not None:
            await gate(source.seq - first)
        await asyncio.sleep(0)
    await pub.wait_acknowledged(timeout=STALL_S)
    return PublishResult(first, source.seq, time.monotonic() - started)


def _due(rate: float | None, elapsed: float, sent: int) -> int:
    if rate is None:
        return CHUNK
    return min(CHUNK, int(elapsed * rate) + 1 - sent)


def _for(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


class BacklogGate:
    """Max mode: keeps published-but-not-committed under `cap` readings.

    The leader's /health says how many messages it took in and how many it still holds;
    the difference since the phase began is what it committed. Polled every 50 ms.
    """

    def __init__(self, leader: InstanceProcess, cap: int) -> None:
        self._leader = leader
        self._cap = cap
        self._base: int | None = None
        self.committed = 0

    async def poll(self) -> None:
        _, body = await self._leader.get("/health")
        try:
            checks = body["checks"]  # type: ignore[index]
            done = int(checks["intake"]["messages"]) - int(checks["buffer"]["pending"])
        except (KeyError, TypeError, ValueError):
            return
        if self._base is None:
            self._base = done
        self.committed = done - self._base

    async def follow(self) -> None:
        while True:
            await self.poll()
            await asyncio.sleep(0.05)

    async def __call__(self, sent: int) -> None:
        deadline = time.monotonic() + STALL_S
        while sent - self.committed > self._cap:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the leader committed nothing for {STALL_S:.0f}s")
            await asyncio.sleep(0.005)


# --- phases --------------------------------------------------------------------------

# One flush = one transaction = one now(): rows sharing created_at were flushed together.
# "steady": the flushes that started before the phase's last publish (see commit_rate).
PHASE_STATS = """
WITH r AS (
    SELECT (dados->>'sent_at')::float8 AS sent, extract(epoch FROM created_at)::float8 AS at
    FROM equipamentos_dados
    WHERE (dados->>'seq')::bigint >= $1 AND (dados->>'seq')::bigint < $2
), steady AS (
    SELECT at, count(*) AS n FROM r GROUP BY at HAVING at <= (SELECT max(sent) FROM r)
)
SELECT (SELECT count(*) FROM r) AS rows,
       (SELECT count(*) FROM steady) AS flushes,
       ((SELECT sum(n) FROM steady) - (SELECT n FROM steady ORDER BY at LIMIT 1))::bigint
           AS later_rows,
       (SELECT max(at) - min(at) FROM steady) AS flush_span,
       (SELECT max(at) - min(sent) FROM r) AS span,
       (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY at - sent) FROM r) AS p50,
       (SELECT percentile_cont(0.99) WITHIN GROUP (ORDER BY at - sent) FROM r) AS p99,
       (SELECT max(at - sent) FROM r) AS worst
"""
ROWS_SINCE = "SELECT count(*) FROM equipamentos_dados WHERE created_at >= to_timestamp($1)"


async def run_phase(
    ctx: RunContext, name: str, rate: float | None, duration_s: float
) -> PhaseResult:
    """Publish for `duration_s`, wait until all is committed, measure."""
    ctx.say.say(f"phase {name}: publishing {_rate_text(rate)} for {duration_s:.0f}s")
    await start_window(ctx, name)
    started = time.time()
    if rate is None:
        gate = BacklogGate(await wait_single_leader(ctx.nodes, timeout=30), BACKLOG_CAP)
        await gate.poll()
        async with _background(gate.follow(), "backlog-gate"):
            sent = await _publish(ctx, rate, _for(duration_s), gate)
    else:
        sent = await _publish(ctx, rate, _for(duration_s))
    return await _finish_phase(ctx, name, rate, started, sent)


async def _publish(
    ctx: RunContext, rate: float | None, until: Callable[[], bool], gate: Gate | None = None
) -> PublishResult:
    result = await publish_stream(
        ctx.publisher, ctx.source, rate=rate, window=ctx.options.window, until=until, gate=gate
    )
    ctx.published += result.sent
    return result


async def _finish_phase(
    ctx: RunContext, name: str, rate: float | None, started: float, sent: PublishResult
) -> PhaseResult:
    await _drain(ctx, started, sent.sent)
    resources = await end_window(ctx, name)
    ended = time.time()
    stats = await ctx.db.fetchrow(PHASE_STATS, sent.first_seq, sent.end_seq, timeout=120)
    assert stats is not None
    rows = int(stats["rows"])
    result = PhaseResult(
        name=name,
        target_rate=rate,
        span_s=(round(started - ctx.t0, 3), round(ended - ctx.t0, 3)),
        publish_s=round(sent.seconds, 3),
        published=sent.sent,
        committed=rows,
        lost=sent.sent - rows,
        publish_rate=round(sent.sent / max(1e-9, sent.seconds), 1),
        ingest_rate=round(commit_rate(stats), 1),
        latency_ms={k: round(1000 * float(stats[k] or 0), 1) for k in ("p50", "p99", "worst")},
        flushes=await asyncio.to_thread(flush_summary, ctx.nodes, started, ended),
        resources=resources,
        cpu_us_per_reading={
            g: round(1e6 * u.cpu_s / max(1, sent.sent), 1) for g, u in resources.items()
        },
    )
    ctx.phases.append(result)
    ctx.say.say(
        f"phase {name}: {result.ingest_rate:,.0f} rows/s committed, "
        f"p50 {result.latency_ms['p50']:.0f} ms, p99 {result.latency_ms['p99']:.0f} ms"
    )
    return result


def commit_rate(stats: asyncpg.Record) -> float:
    """Rows/s committed in steady state: between the first flush of the phase and the
    last one that started before publishing ended.

    A flush's rows were published before it started (its created_at), so the rows of
    flushes 2..k are those published between flush 1 and flush k: neither the wait for
    the first batch nor the drain after the last publish biases the rate.
    """
    if int(stats["flushes"]) >= 2 and stats["flush_span"] > 0:
        return float(stats["later_rows"] / stats["flush_span"])
    rows = int(stats["rows"])
    return float(rows / max(1e-3, stats["span"])) if rows else 0.0


async def _drain(ctx: RunContext, started: float, sent: int) -> None:
    """Wait until every reading published since `started` is committed (bounded)."""

    async def drained() -> bool:
        count = await ctx.db.fetchval(ROWS_SINCE, started, timeout=30)
        return int(count) >= sent

    timeout = max(60.0, 4 * ctx.options.duration_s)
    with contextlib.suppress(AssertionError):  # reported as lost readings instead
        await wait_until(drained, timeout, "readings not committed", interval=0.5)


def flush_summary(
    nodes: Sequence[InstanceProcess], started: float, ended: float
) -> dict[str, float]:
    """The leaders' flush.committed events between two wall times (reads log files)."""
    low, high = _wall_to_iso(started), _wall_to_iso(ended)
    rows: list[float] = []
    ms: list[float] = []
    for node in nodes:
        for event in node.find("flush.committed"):
            stamp = str(event.get("timestamp", "")).replace("Z", "+00:00")
            if low <= stamp <= high:
                rows.append(float(event.get("rows", 0)) + float(event.get("duplicates", 0)))
                ms.append(float(event.get("ms", 0.0)))
    return {
        "count": len(ms),
        "rows_mean": round(statistics.fmean(rows), 1) if rows else 0.0,
        "ms_p50": round(_percentile(ms, 0.5), 1),
        "ms_p99": round(_percentile(ms, 0.99), 1),
    }


def _rate_text(rate: float | None) -> str:
    return "as fast as the broker accepts" if rate is None else f"{rate:,.0f} readings/s"


# --- failover ------------------------------------------------------------------------


async def measure_fault(ctx: RunContext, kind: str) -> FaultResult:
    """Fault the leader; time until the other instance answers 200 on /health/leader."""
    leader = await wait_single_leader(ctx.nodes, timeout=60)
    other = next(n for n in ctx.nodes if n is not leader)
    await wait_until(lambda: _healthy_standby(other), 60, f"{other.name} not a healthy standby")
    epoch = await ctx.db.fetchval(
        "SELECT epoch FROM ha_leadership WHERE cluster_name = $1", CLUSTER, timeout=10
    )
    at = time.time()
    started = time.monotonic()
    leader.signal(FAULTS[kind])
    await wait_until(other.is_leader, 60, f"{kind}: no takeover", interval=0.005)
    seconds = time.monotonic() - started
    gap = await ctx.db.fetchval(
        "SELECT gap_ms FROM ha_handovers WHERE cluster_name = $1 AND epoch = $2",
        CLUSTER,
        epoch + 1,
        timeout=10,
    )
    await _recover(ctx, leader, kind)
    result = FaultResult(
        kind, round(at - ctx.t0, 3), round(seconds, 3), float(gap or 0), leader.name, other.name
    )
    ctx.faults.append(result)
    ctx.say.say(f"{kind}: {other.name} leads after {seconds:.3f}s (writer gap {gap} ms)")
    return result


async def _recover(ctx: RunContext, node: InstanceProcess, kind: str) -> None:
    """Thaw or restart the faulted instance and wait until it is a healthy standby."""
    if kind == "sigstop":
        node.signal(signal.SIGCONT)
    else:
        await node.wait_exit(30)
        await asyncio.to_thread(node.start)
        ctx.servers.pids.append(node.pid)
    await wait_until(lambda: _healthy_standby(node), 60, f"{node.name} did not rejoin")


async def run_failover_phase(ctx: RunContext, rate: float, runs: int) -> PhaseResult:
    """The paced load while each fault kind hits the leader `runs` times."""
    name = "failover"
    ctx.say.say(f"phase {name}: {_rate_text(rate)}, {runs} run(s) of {', '.join(FAULTS)}")
    await start_window(ctx, name)
    started = time.time()
    stop = asyncio.Event()
    async with _background(_publish(ctx, rate, stop.is_set), "failover-load") as load:
        settle = min(3.0, ctx.options.duration_s / 4)
        await asyncio.sleep(settle)
        for _ in range(runs):
            for kind in FAULTS:
                await measure_fault(ctx, kind)
                await asyncio.sleep(settle)
        stop.set()
        sent = await asyncio.wait_for(asyncio.shield(load), timeout=STALL_S)
    return await _finish_phase(ctx, name, rate, started, sent)


def fault_stats(faults: Sequence[FaultResult]) -> dict[str, dict[str, float]]:
    """Median and worst takeover time and writer gap, per fault kind."""
    out: dict[str, dict[str, float]] = {}
    for kind in FAULTS:
        rows = [f for f in faults if f.kind == kind]
        if not rows:
            continue
        seconds = [f.failover_s for f in rows]
        gaps = [f.gap_ms for f in rows]
        out[kind] = {
            "median_s": round(statistics.median(seconds), 3),
            "worst_s": round(max(seconds), 3),
            "median_gap_ms": statistics.median(gaps),
            "worst_gap_ms": max(gaps),
            "n": len(rows),
        }
    return out


# --- the run -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def cluster_run(
    servers: Servers, options: BenchOptions, say: Progress
) -> AsyncIterator[RunContext]:
    """Seeded database, two instances, a connected publisher and the resource sampler."""
    equipment = await seed_equipment(servers.dsn(BENCH_DB), options.equipment)
    say.say(f"starting node-a and node-b ({len(equipment)} equipment)")
    nodes = await start_cluster(servers, options)
    db = await asyncpg.create_pool(
        servers.dsn(BENCH_DB), min_size=1, max_size=3, init=_jsonb_as_bytes, timeout=10
    )
    try:
        async with Publisher(servers.broker.url) as publisher:
            ctx = RunContext(
                options,
                servers,
                nodes,
                db,
                publisher,
                ReadingSource(equipment, options.payload_bytes),
                ResourceSampler(),
                say,
            )
            async with _background(sample_forever(ctx), "sampler"):
                yield ctx
    finally:
        await asyncio.wait_for(db.close(), timeout=10)


async def warm_up(ctx: RunContext) -> None:
    """A short paced burst (connections, staging tables, caches), drained, not reported."""
    ctx.t0 = time.time()
    started = ctx.t0
    sent = await _publish(ctx, 500.0, _for(ctx.options.warmup_s))
    await _drain(ctx, started, sent.sent)


async def run_bench(options: BenchOptions, say: Progress | None = None) -> BenchReport:
    say = say or Progress()
    async with embedded_servers(durable=options.durable, keep=options.keep) as servers:
        say.say(f"servers up in {servers.workdir}; measuring the raw limits")
        baselines, costs = await measure_baselines(servers, options, say)
        async with cluster_run(servers, options, say) as ctx:
            await warm_up(ctx)
            await run_phases(ctx)
            parts = await _collect(ctx)
    return _assemble(ctx, baselines, parts | {"costs": costs})


async def measure_baselines(
    servers: Servers, options: BenchOptions, say: Progress
) -> tuple[dict[str, float], dict[str, float]]:
    """The raw limits (per second), and the fan-out subscriber's CPU µs per message."""
    equipment = [(f"eq{i:04d}", f"aupus/test/eq{i:04d}") for i in range(options.equipment)]
    source = ReadingSource(equipment, options.payload_bytes)
    results = await database_baselines(servers.dsn(SCRATCH_DB), source, options.baseline_s, say)
    costs = {}
    for qos in (1, 0):
        rate, cost = await broker_fanout(
            servers.broker.url, source, qos, options.baseline_s, servers.pids
        )
        results[f"broker_qos{qos}_msgs_s"] = rate
        costs[f"subscriber_qos{qos}_cpu_us_per_msg"] = round(cost, 1)
        say.say(f"baseline broker fan-out QoS {qos}: {rate:,.0f} msgs/s, {cost:.0f} µs CPU/msg")
    return {k: round(v, 1) for k, v in results.items()}, costs


async def run_phases(ctx: RunContext) -> None:
    options = ctx.options
    paced = options.rate if isinstance(options.rate, float) else None
    if options.rate in ("auto", "max"):
        best = await run_phase(ctx, "max", None, options.duration_s)
        paced = max(100.0, round(best.ingest_rate / 2, -2))
    assert paced is not None
    if options.rate != "max":
        await run_phase(ctx, "paced", paced, options.duration_s)
    if not options.skip_failover:
        await run_failover_phase(ctx, paced, options.failover_runs)


async def _collect(ctx: RunContext) -> dict[str, Any]:
    """What needs the database before the servers go: integrity, timeline, versions."""
    row = await ctx.db.fetchrow(
        "SELECT count(DISTINCT (dados->>'seq')::bigint) AS stored, count(*) AS rows "
        "FROM equipamentos_dados",
        timeout=120,
    )
    assert row is not None
    return {
        "integrity": {
            "published": ctx.published,
            "stored": int(row["stored"]),
            "lost": ctx.published - int(row["stored"]),
            "duplicates": int(row["rows"]) - int(row["stored"]),
        },
        "timeline": await build_timeline(ctx),
        "machine": await _machine(ctx),
    }


async def _machine(ctx: RunContext) -> dict[str, object]:
    version = await ctx.db.fetchval("SHOW server_version", timeout=10)
    log = await asyncio.to_thread(ctx.servers.broker.log_path.read_text, errors="replace")
    found = re.search(r"mosquitto version (\S+)", log)
    return {
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "postgres": version,
        "mosquitto": found.group(1) if found else "?",
        "fsync": "on" if ctx.options.durable else "off",
        "load_average_at_start": ctx.servers.load_at_start,
    }


def _assemble(ctx: RunContext, baselines: dict[str, float], parts: dict[str, Any]) -> BenchReport:
    options, servers = ctx.options, ctx.servers
    settings = asdict(options) | {
        "plot": str(options.plot) if options.plot else None,
        "instance_timings": FAST_TIMINGS if options.fast_timings else "defaults",
        "backlog_cap": BACKLOG_CAP,
        "payload_bytes_actual": len(ctx.source.next()[1]),
    }
    return BenchReport(
        machine=parts["machine"],
        settings=settings,
        baselines=baselines,
        costs=parts["costs"],
        phases=ctx.phases,
        failover=fault_stats(ctx.faults),
        faults=ctx.faults,
        ratios=compute_ratios(baselines, ctx.phases),
        integrity=parts["integrity"],
        timeline=parts["timeline"],
        processes={"pids": sorted(set(servers.pids)), "workdir": str(servers.workdir)},
    )


def compute_ratios(
    baselines: Mapping[str, float], phases: Sequence[PhaseResult]
) -> dict[str, float]:
    """Every end-to-end figure against the raw limits of the same run."""
    by_name = {p.name: p for p in phases}
    best = by_name.get("max") or by_name.get("paced")
    ratios: dict[str, float] = {}
    if best is not None:
        for key in baselines:
            ratios[f"e2e_{best.name}_vs_{key.removesuffix('_rows_s').removesuffix('_msgs_s')}"] = (
                round(best.ingest_rate / baselines[key], 3) if baselines[key] else 0.0
            )
    if baselines.get("copy_rows_s"):
        copy = baselines["copy_rows_s"]
        ratios["store_flush_vs_copy"] = round(baselines["store_flush_rows_s"] / copy, 3)
        ratios["naive_insert_vs_copy"] = round(baselines["naive_insert_rows_s"] / copy, 3)
    return ratios


# --- timeline and plot ---------------------------------------------------------------

FLUSHES = """
SELECT extract(epoch FROM created_at)::float8 AS at, ha_epoch, count(*) AS n
FROM equipamentos_dados GROUP BY created_at, ha_epoch ORDER BY 1
"""
PUBLISHED = """
SELECT round((dados->>'sent_at')::numeric, 1)::float8 AS at, count(*) AS n
FROM equipamentos_dados GROUP BY 1 ORDER BY 1
"""
HANDOVERS = """
SELECT epoch, to_instance_id, extract(epoch FROM at)::float8 AS at
FROM ha_handovers WHERE cluster_name = $1 ORDER BY epoch
"""
RATE_WINDOW_S = 2.0  # the plotted rates are trailing averages over this window


async def build_timeline(ctx: RunContext) -> Timeline:
    """Committed rows/s (by leading instance) and published readings/s over the run."""
    end = time.time() - ctx.t0
    step = next((b for b in (0.25, 0.5, 1.0, 2.0, 5.0) if end / b <= 600), 10.0)
    hand = await ctx.db.fetch(HANDOVERS, CLUSTER, timeout=30)
    leader_of = {int(h["epoch"]): str(h["to_instance_id"]) for h in hand}
    flushes = await ctx.db.fetch(FLUSHES, timeout=120)
    published = await ctx.db.fetch(PUBLISHED, timeout=120)
    times = [i * step for i in range(int(end / step) + 1)]
    by_leader: dict[str, list[tuple[float, float]]] = {}
    for f in flushes:
        leader = leader_of.get(f["ha_epoch"] or 0, "?")
        by_leader.setdefault(leader, []).append((f["at"] - ctx.t0, float(f["n"])))
    committed = [
        (t, leader, rate)
        for leader, events in sorted(by_leader.items())
        for t, rate in zip(times, trailing_rate(events, times, RATE_WINDOW_S), strict=True)
        if rate > 0
    ]
    sent = [(p["at"] - ctx.t0, float(p["n"])) for p in published]
    faults = [(f.kind, f.at_s) for f in ctx.faults]
    return Timeline(
        bucket_s=step,
        committed=sorted(committed),
        published=list(zip(times, trailing_rate(sent, times, RATE_WINDOW_S), strict=True)),
        leaders=leader_spans(
            [(h["at"] - ctx.t0, str(h["to_instance_id"])) for h in hand], faults, end
        ),
        phases=[(p.name, *p.span_s) for p in ctx.phases],
        faults=faults,
    )


def trailing_rate(
    events: Sequence[tuple[float, float]], times: Sequence[float], window: float
) -> list[float]:
    """For each time t: the sum of event amounts in (t - window, t], per second."""
    out, total, lo, hi = [], 0.0, 0, 0
    for t in times:
        while hi < len(events) and events[hi][0] <= t:
            total += events[hi][1]
            hi += 1
        while lo < hi and events[lo][0] <= t - window:
            total -= events[lo][1]
            lo += 1
        out.append(round(max(0.0, total) / window, 1))
    return out


def leader_spans(
    handovers: Sequence[tuple[float, str]], faults: Sequence[tuple[str, float]], end: float
) -> list[tuple[float, float, str]]:
    """(from, to, instance): each term, from its acquisition to the next fault or term."""
    spans = []
    for i, (start, name) in enumerate(handovers):
        stop = handovers[i + 1][0] if i + 1 < len(handovers) else end
        stop = min([stop, *(t for _, t in faults if start < t < stop)])
        spans.append((round(max(0.0, start), 3), round(stop, 3), name))
    return spans


_PLOT_W, _PLOT_H = 980, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 52, 70
_COLORS = {"node-a": "#3b7dd8", "node-b": "#e8853d"}


def _color(name: str) -> str:
    return _COLORS.get(name, "#888")


def _nice_ceiling(value: float) -> float:
    if value <= 0:
        return 1.0
    power = 10.0 ** math.floor(math.log10(value))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= value)


class _Axes:
    """Data → SVG coordinates."""

    def __init__(self, tmax: float, ymax: float) -> None:
        self.tmax, self.ymax = tmax, ymax
        self.x0, self.x1 = _LEFT, _PLOT_W - _RIGHT
        self.y0, self.y1 = _PLOT_H - _BOTTOM, _TOP

    def x(self, t: float) -> float:
        return round(self.x0 + (self.x1 - self.x0) * min(max(t, 0.0), self.tmax) / self.tmax, 1)

    def y(self, v: float) -> float:
        return round(self.y0 - (self.y0 - self.y1) * v / self.ymax, 1)


def render_svg(tl: Timeline, title: str) -> str:
    """A dependency-free SVG: committed rows/s stacked by leader, published rate, faults,
    and a strip showing which instance held the lock."""
    tmax = max([t for t, _ in tl.published] + [end for _, end, _ in tl.leaders] + [1.0])
    stacks: dict[float, float] = {}
    for t, _, v in tl.committed:
        stacks[t] = stacks.get(t, 0.0) + v
    peak = max([*stacks.values(), *(v for _, v in tl.published), 1.0])
    ax = _Axes(tmax, _nice_ceiling(peak * 1.05))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_PLOT_W} {_PLOT_H}" '
        f'width="{_PLOT_W}" height="{_PLOT_H}" font-family="sans-serif" font-size="11">',
        f'<rect width="{_PLOT_W}" height="{_PLOT_H}" fill="white"/>',
        f'<text x="{_LEFT}" y="18" font-size="14" font-weight="bold">{html.escape(title)}</text>',
        *_svg_phases(tl, ax),
        *_svg_grid(ax),
        *_svg_bars(tl, ax),
        _svg_published(tl, ax),
        *_svg_faults(tl, ax),
        *_svg_leaders(tl, ax),
        *_svg_legend(tl),
        "</svg>",
    ]
    return "\n".join(p for p in parts if p)


def _svg_phases(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    for i, (name, start, end) in enumerate(tl.phases):
        fill = "#f3f3f3" if i % 2 == 0 else "#e9f0f8"
        x0, x1 = ax.x(start), ax.x(end)
        out.append(
            f'<rect x="{x0}" y="{ax.y1}" width="{max(0.0, x1 - x0):.1f}" '
            f'height="{ax.y0 - ax.y1}" fill="{fill}"/>'
            f'<text x="{x0 + 4}" y="{ax.y1 + 12}" fill="#555">{html.escape(name)}</text>'
        )
    return out


def _svg_bars(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    stacked: dict[float, float] = {}
    width = max(0.5, ax.x(tl.bucket_s) - ax.x(0))
    for t, leader, value in tl.committed:
        below = stacked.get(t, 0.0)
        stacked[t] = below + value
        top, bottom = ax.y(below + value), ax.y(below)
        out.append(
            f'<rect x="{ax.x(t) - width:.1f}" y="{top}" width="{width:.1f}" '
            f'height="{max(0.0, bottom - top):.1f}" fill="{_color(leader)}" fill-opacity="0.85"/>'
        )
    return out


def _svg_published(tl: Timeline, ax: _Axes) -> str:
    if not tl.published:
        return ""
    points = " ".join(f"{ax.x(t)},{ax.y(v)}" for t, v in tl.published)
    return f'<polyline points="{points}" fill="none" stroke="#222" stroke-width="1.2"/>'


def _svg_faults(tl: Timeline, ax: _Axes) -> list[str]:
    out = []
    for i, (kind, t) in enumerate(tl.faults):
        x = ax.x(t)
        out.append(
            f'<line x1="{x}" y1="{ax.y1}" x2="{x}" y2="{ax.y0}" stroke="#c0392b" '
            f'stroke-dasharray="4 3"/><text x="{x + 3}" y="{ax.y1 + 26 + 12 * (i % 3)}" '
            f'fill="#c0392b">{html.escape(kind)}</text>'
        )
    return out


def _svg_leaders(tl: Timeline, ax: _Axes) -> list[str]:
    y = ax.y0 + 22
    out = [f'<text x="{ax.x0 - 6}" y="{y + 9}" text-anchor="end">leader</text>']
    for start, end, name in tl.leaders:
        out.append(
            f'<rect x="{ax.x(start)}" y="{y}" width="{max(0.5, ax.x(end) - ax.x(start)):.1f}" '
            f'height="10" fill="{_color(name)}"><title>{html.escape(name)}</title></rect>'
        )
    return out


def _svg_grid(ax: _Axes) -> list[str]:
    out = [
        f'<line x1="{ax.x0}" y1="{ax.y0}" x2="{ax.x1}" y2="{ax.y0}" stroke="#333"/>',
        f'<text x="{(ax.x0 + ax.x1) / 2}" y="{_PLOT_H - 8}" text-anchor="middle">'
        f"seconds since the first publish (rates: trailing {RATE_WINDOW_S:g}-s averages)</text>",
        f'<text x="14" y="{(ax.y0 + ax.y1) / 2}" text-anchor="middle" '
        f'transform="rotate(-90 14 {(ax.y0 + ax.y1) / 2})">rows/s</text>',
    ]
    for i in range(6):
        v = ax.ymax * i / 5
        out.append(
            f'<text x="{ax.x0 - 6}" y="{ax.y(v) + 4}" text-anchor="end">{v:,.0f}</text>'
            f'<line x1="{ax.x0}" y1="{ax.y(v)}" x2="{ax.x1}" y2="{ax.y(v)}" stroke="#ddd"/>'
        )
    step = _nice_ceiling(ax.tmax / 12)
    for i in range(int(ax.tmax / step) + 1):
        out.append(
            f'<text x="{ax.x(i * step)}" y="{ax.y0 + 14}" text-anchor="middle">{i * step:g}</text>'
        )
    return out


def _svg_legend(tl: Timeline) -> list[str]:
    names = sorted({leader for _, leader, _ in tl.committed} | {n for *_, n in tl.leaders})
    items = [(f"committed while {n} leads", _color(n)) for n in names]
    items += [("published", "#222"), ("fault", "#c0392b")]
    out: list[str] = []
    x = float(_LEFT)
    for label, color in items:
        out.append(
            f'<rect x="{x}" y="28" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="38">{html.escape(label)}</text>'
        )
        x += 24 + 6.5 * len(label)
    return out


def write_plot(path: Path, report: BenchReport, table: str) -> None:
    title = (
        f"aupus-ha bench: committed rows/s by leader, {report.machine.get('cpus')} CPUs, "
        f"{report.settings.get('equipment')} equipment"
    )
    svg = render_svg(report.timeline, title)
    if path.suffix.lower() == ".svg":
        path.write_text(svg + "\n")
        return
    path.write_text(
        "<!doctype html>\n<html><head><meta charset='utf-8'><title>aupus-ha bench</title>"
        "<style>body{font-family:sans-serif;margin:2em}pre{font-size:12px}</style></head>"
        f"<body>\n{svg}\n<pre>{html.escape(table)}</pre>\n</body></html>\n"
    )


# --- the table -----------------------------------------------------------------------

BASELINE_LABELS = {
    "copy_rows_s": "asyncpg COPY into equipamentos_dados (5,000-row batches)",
    "store_flush_rows_s": "store flush: COPY → staging, INSERT … ON CONFLICT DO NOTHING",
    "naive_insert_rows_s": "naive: one INSERT (one commit) per reading, as the legacy service",
    "broker_qos1_msgs_s": "broker fan-out to 1 gmqtt subscriber, QoS 1",
    "broker_qos0_msgs_s": "broker fan-out to 1 gmqtt subscriber, QoS 0",
}


def render_table(report: BenchReport) -> str:
    sections = [
        _header(report),
        _baseline_lines(report),
        _phase_lines(report),
        _resource_lines(report),
        _cost_lines(report),
        _flush_lines(report),
        _failover_lines(report),
        _ratio_lines(report),
        _integrity_line(report),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


def _header(report: BenchReport) -> str:
    m, s = report.machine, report.settings
    timings = "test timings (LEASE_TTL_S 2)" if s["fast_timings"] else "default timings"
    return (
        f"aupus-ha bench — {m['cpus']} CPUs, Python {m['python']}, PostgreSQL {m['postgres']} "
        f"(fsync {m['fsync']}), Mosquitto {m['mosquitto']}\n"
        f"{s['equipment']} equipment, {s['payload_bytes_actual']}-byte generic readings, "
        f"leader + standby, {timings}, {s['duration_s']:g}s per phase; load average "
        f"at start {' '.join(f'{v:.2f}' for v in m['load_average_at_start'])}"  # type: ignore[attr-defined]
    )


def _baseline_lines(report: BenchReport) -> str:
    lines = ["raw limits of this machine (same run)" + " " * 33 + "per second"]
    for key, label in BASELINE_LABELS.items():
        if key in report.baselines:
            unit = "rows" if key.endswith("rows_s") else "msgs"
            lines.append(f"  {label:<66s}{report.baselines[key]:>10,.0f} {unit}")
    return "\n".join(lines)


def _phase_lines(report: BenchReport) -> str:
    head = (
        f"{'end to end (publish → committed)':<34s}{'target/s':>9s}{'published/s':>12s}"
        f"{'committed/s':>12s}{'p50 ms':>8s}{'p99 ms':>8s}{'max ms':>8s}{'lost':>6s}"
    )
    lines = [head]
    for p in report.phases:
        target = "max" if p.target_rate is None else f"{p.target_rate:,.0f}"
        lat = p.latency_ms
        lines.append(
            f"  {p.name:<32s}{target:>9s}{p.publish_rate:>12,.0f}{p.ingest_rate:>12,.0f}"
            f"{lat['p50']:>8,.0f}{lat['p99']:>8,.0f}{lat['worst']:>8,.0f}{p.lost:>6d}"
        )
    return "\n".join(lines)


def _resource_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    names = [p.name for p in report.phases]
    lines = [f"{'CPU % of one core / peak RSS MB*':<34s}" + "".join(f"{n:>18s}" for n in names)]
    groups = [g for g in report.phases[0].resources if g not in (OTHERS, MACHINE)]
    groups += [OTHERS, MACHINE]
    for group in groups:
        cells = [_usage_cell(p.resources.get(group), group) for p in report.phases]
        lines.append(f"  {group:<32s}" + "".join(f"{c:>18s}" for c in cells))
    lines.append("  * postgres rows: private memory (RSS minus shared pages), summed over backends")
    return "\n".join(lines)


def _cost_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    lines = [f"{'CPU µs per reading':<34s}" + "".join(f"{p.name:>18s}" for p in report.phases)]
    groups = [g for g in report.phases[0].cpu_us_per_reading if g not in (OTHERS, MACHINE)]
    for group in [*groups, MACHINE]:
        cells = [p.cpu_us_per_reading.get(group) for p in report.phases]
        lines.append(
            f"  {group:<32s}"
            + "".join(f"{c:>18,.1f}" if c is not None else " " * 18 for c in cells)
        )
    for key, value in report.costs.items():
        lines.append(f"  baseline {key.replace('_', ' '):<50s}{value:>10,.1f}")
    return "\n".join(lines)


def _usage_cell(usage: Usage | None, group: str) -> str:
    if usage is None:
        return ""
    if group in (OTHERS, MACHINE):  # CPU only: no memory figure for these
        return f"{usage.cpu_pct:>8.0f}%        "
    return f"{usage.cpu_pct:>8.0f}% / {usage.peak_rss_mb:>5.0f}"


def _flush_lines(report: BenchReport) -> str:
    if not report.phases:
        return ""
    lines = [f"{'leader flushes':<34s}" + "".join(f"{p.name:>18s}" for p in report.phases)]
    for key, label in (
        ("count", "flushes"),
        ("rows_mean", "rows per flush (mean)"),
        ("ms_p50", "flush ms p50"),
        ("ms_p99", "flush ms p99"),
    ):
        lines.append(
            f"  {label:<32s}" + "".join(f"{p.flushes[key]:>18,.1f}" for p in report.phases)
        )
    return "\n".join(lines)


def _failover_lines(report: BenchReport) -> str:
    if not report.failover:
        return ""
    lines = [
        f"{'failover under load':<34s}{'takeover s (median/worst)':>28s}"
        f"{'writer gap ms (median/worst)':>31s}"
    ]
    for kind, s in report.failover.items():
        lines.append(
            f"  {kind:<32s}{s['median_s']:>18.3f} / {s['worst_s']:<7.3f}"
            f"{s['median_gap_ms']:>21.0f} / {s['worst_gap_ms']:<7.0f}"
        )
    return "\n".join(lines)


def _ratio_lines(report: BenchReport) -> str:
    lines = ["ratios (end to end ÷ raw limit of the same run)"]
    for key, value in report.ratios.items():
        lines.append(f"  {key:<56s}{value:>10.3f}")
    return "\n".join(lines)


def _integrity_line(report: BenchReport) -> str:
    i = report.integrity
    return (
        f"integrity: published {i['published']:,}, stored {i['stored']:,}, "
        f"lost {i['lost']}, duplicates {i['duplicates']}"
    )


# --- entry points --------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """`aupus-ha bench`: run, print the table (or JSON), write the plot."""
    try:
        options = options_from_args(args)
    except ValueError as exc:
        print(f"aupus-ha bench: {exc}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(run_bench(options))
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped and removed", file=sys.stderr)
        return 130
    table = render_table(report)
    if options.plot is not None:
        write_plot(options.plot, report, table)
    if args.json:
        sys.stdout.write(report.to_json().decode() + "\n")
    else:
        sys.stdout.write(table)
    return 0


async def failover_report(
    *, runs: int, rate: float, fast: bool, keep: bool, equipment: int = 50
) -> dict[str, object]:
    """bench/failover.py: failover times over many runs, and the integrity check."""
    options = BenchOptions(
        duration_s=8.0, equipment=equipment, fast_timings=fast, keep=keep, failover_runs=runs
    )
    say = Progress()
    async with (
        embedded_servers(durable=False, keep=keep) as servers,
        cluster_run(servers, options, say) as ctx,
    ):
        await warm_up(ctx)
        await run_failover_phase(ctx, rate, runs)
        parts = await _collect(ctx)
    integrity = parts["integrity"]
    return {
        "runs": runs,
        "timings": "fast" if fast else "contract defaults",
        "faults": fault_stats(ctx.faults),
        "published": integrity["published"],
        "stored": integrity["stored"],
        "lost": integrity["lost"],
        "duplicates": integrity["duplicates"],
    }


def _subscriber_main(argv: Sequence[str]) -> int:
    url, topic_filter, qos = argv
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_count_messages(url, topic_filter, int(qos)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["subscribe"]:
        raise SystemExit(_subscriber_main(sys.argv[2:]))
    raise SystemExit("usage: aupus-ha bench (this module's own entry is for its subscriber)")
