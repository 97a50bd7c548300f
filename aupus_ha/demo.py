"""`aupus-ha demo`: the whole promise on one machine, in well under a minute.

Starts an embedded PostgreSQL and a broker, two instances with the same configuration,
and the simulated fleet of `simulate.py` (M-160 meters, some without the `Resumo`
envelope, and solar inverters) played at a speed-up, so that the default 30 s show more
than an hour of a working day. It kills the leader with SIGKILL at a third of the run,
restarts it at two thirds, prints a status line a second and a summary: published,
stored, lost, duplicated, failover time.

Lost and duplicated are counted on the natural keys: each published message is decoded
by the ingest's own `Decoder`, and the rows it must become are the readings' row keys
(an inverter's reading belongs to the row of its minute). Everything the demo starts is
stopped and every temporary directory removed on exit, Ctrl-C and SIGTERM included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from aupus_ha import constants
from aupus_ha.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.interrupt import Interrupted, until_interrupted
from aupus_ha.localcluster import (
    InstanceProcess,
    fetch,
    leaders,
    stored_keys,
    wait_single_leader,
    wait_until,
)
from aupus_ha.simulate import (
    FAMILY_BAD,
    FAMILY_INVERTER,
    Fleet,
    SimMessage,
    build_fleet,
    register_equipment,
    run_simulation,
)
from aupus_ha.timestamps import BRASILIA

RowKey = tuple[str, datetime]  # (equipamento_id, timestamp_dados), aware UTC
RejectKey = tuple[str, str]  # (topic, sha256 of the payload)

DEMO_ENV: Final = {
    "LOG_FORMAT": "json",
    "LEASE_TTL_S": "3",
    "HEARTBEAT_S": "0.5",
    "FLUSH_INTERVAL_S": "0.5",
}
SIM_DAY_START_H: Final = 8  # the simulated window opens at 08:00 Brasília, on a past day
SIM_END_MARGIN: Final = timedelta(minutes=5)  # every reading (and its minute) is in the past
SETTLE_TIMEOUT_S: Final = 30.0
_DEFAULT_MAX_PAYLOAD: Final = 256 * 1024


@dataclass(slots=True)
class DemoOptions:
    duration_s: float = 30.0
    fleet: int = 20  # devices: two thirds M-160 meters, one third inverters
    rate: float = 100.0  # messages per second, on average
    bad_ratio: float = 0.0  # fraction of the messages replaced by bad inputs
    seed: int = 1

    def problems(self) -> list[str]:
        out = []
        if not self.duration_s > 0:
            out.append("--duration must be positive")
        if self.fleet < 1:
            out.append("--fleet must be at least 1")
        if not self.rate > 0:
            out.append("--rate must be positive")
        if not 0.0 <= self.bad_ratio <= 1.0:
            out.append("--bad-ratio must be between 0 and 1")
        return out


# --- the simulated fleet and its time ----------------------------------------------------


def demo_fleet(options: DemoOptions) -> Fleet:
    """Two thirds meters (a third of them unwrapped), one third inverters."""
    meters = max(1, round(options.fleet * 2 / 3))
    inverters = options.fleet - meters
    unwrapped = max(meters // 3, min(1, meters - 1))
    return build_fleet(
        meters,
        inverters,
        options.seed,
        bad_ratio=options.bad_ratio,
        unwrapped_meters=unwrapped,
        topic_prefix="aupus/demo",
    )


def speedup_for(fleet: Fleet, rate: float) -> float:
    """Simulated seconds per real second that make the fleet publish `rate` messages/s."""
    per_simulated_second = sum(1.0 / d.period_s for d in fleet.devices)
    return rate / per_simulated_second


def simulated_start(span: timedelta, now: datetime | None = None) -> datetime:
    """08:00 Brasília on the latest day whose window of `span` ends safely in the past.

    Daytime, so the inverters produce; in the past, so the ingest accepts every reading
    (nothing ahead of its arrival) and every inverter minute is already closed.
    """
    now = now or datetime.now(UTC)
    local = now.astimezone(BRASILIA)
    start = local.replace(hour=SIM_DAY_START_H, minute=0, second=0, microsecond=0)
    while start + span > now - SIM_END_MARGIN:
        start -= timedelta(days=1)
    return start.astimezone(UTC)


# --- what the published messages must become ---------------------------------------------


def minute_of(ts: datetime) -> datetime:
    """The UTC minute of an instant: seconds and microseconds zeroed."""
    return ts.astimezone(UTC).replace(second=0, microsecond=0)


def row_key(reading: Any) -> RowKey:
    """The `equipamentos_dados` key a decoded reading ends under.

    A plain reading is its own row: `(equipamento_id, timestamp_dados)`. A reading that
    is one sample of an aggregate (a `bucket`, or a `sample_at` / `is_rollup_sample`
    marker, as the per-minute inverter rollup sets) lands in the row of its bucket: the
    bucket's start when the reading says it, else its minute.
    """
    equipment_id: str = reading.equipamento_id
    ts: datetime = reading.timestamp_dados
    bucket = getattr(reading, "bucket", None)
    if isinstance(bucket, datetime):
        ts = bucket
    elif bucket is not None or _is_sample(reading):
        ts = minute_of(ts)
    return equipment_id, ts.astimezone(UTC)


def _is_sample(reading: Any) -> bool:
    return bool(getattr(reading, "sample_at", None) or getattr(reading, "is_rollup_sample", False))


class Expected:
    """Rows and rejects the published messages must end as, asked of the ingest's decoder.

    When the decoder cannot be used (its API changed), falls back to the simulator's own
    account: the reading's timestamp, an inverter's mapped to its minute when the ingest
    has the rollup module; `fallback_reason` then says why.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.rows: set[RowKey] = set()
        self.rejects: set[RejectKey] = set()
        self.good = 0  # published messages that decode to readings (or are held by a family)
        self.bad = 0  # published messages that decode to a reject
        self.fallback_reason: str | None = None
        self._decoder: Any = None  # Any: only the duck-typed calls below are relied on
        self._equipment: dict[str, Any] = {}
        try:
            from aupus_ha.decoding import Decoder
            from aupus_ha.readings import Equipment

            self._decoder = Decoder(max_payload_bytes=_max_payload_bytes())
            self._equipment = {
                d.topic: Equipment(id=d.id, topic=d.topic, type_code=d.type_code)
                for d in fleet.devices
            }
        except Exception as exc:  # any API drift: fall back, and say so
            self._fall_back(exc)

    def add(self, message: SimMessage, received_at: datetime) -> None:
        if self._decoder is not None:
            try:
                equipment = [self._equipment[message.topic]]
                decoded = self._decoder.decode(
                    message.topic, message.payload, equipment, received_at
                )
                readings, rejects = list(decoded.readings), list(decoded.rejects)
                self._keep(readings, rejects)
            except Exception as exc:  # the decoder's API changed under us
                self._fall_back(exc)
            else:
                if rejects:
                    self.bad += 1
                else:
                    self.good += 1
                return
        self._add_by_simulator(message)

    def finish(self) -> None:
        """Collect what a stateful family only releases on time (a closed minute)."""
        flush = getattr(self._decoder, "flush", None)
        if flush is None:
            return
        try:
            self._keep(list(flush(datetime.now(UTC) + timedelta(days=2)).readings), [])
        except Exception as exc:
            self._fall_back(exc)

    def _keep(self, readings: list[Any], rejects: list[Any]) -> None:
        rows = [row_key(r) for r in readings]
        keys = [(r.topic, r.payload_sha256) for r in rejects]
        self.rows.update(rows)
        self.rejects.update(keys)

    def _add_by_simulator(self, message: SimMessage) -> None:
        if message.family == FAMILY_BAD or message.timestamp is None:
            self.bad += 1
            return
        self.good += 1
        ts = message.timestamp.astimezone(UTC)
        if message.family == FAMILY_INVERTER and _ingest_has_rollup():
            ts = minute_of(ts)
        self.rows.add((message.device_id, ts))

    def _fall_back(self, exc: Exception) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
        self._decoder = None


def _max_payload_bytes() -> int:
    """The instances' default limit, so the demo's decoder refuses what theirs refuse."""
    from aupus_ha.config import Settings

    for f in dataclasses.fields(Settings):
        if f.name == "max_payload_bytes" and isinstance(f.default, int):
            return f.default
    return _DEFAULT_MAX_PAYLOAD


def _ingest_has_rollup() -> bool:
    try:
        from aupus_ha import rollup
    except ImportError:
        return False
    return hasattr(rollup, "bucket_start")


# --- the run -----------------------------------------------------------------------------


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}", flush=True)


@dataclass(slots=True)
class Progress:
    published: int = 0
    simulated_at: datetime | None = None


async def run_demo(options: DemoOptions) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aupus-demo-"))
    timeline = Timeline()
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedMosquitto | None = None
    nodes: list[InstanceProcess] = []
    try:
        timeline.say("starting embedded PostgreSQL and the MQTT broker...")
        pg = EmbeddedPostgres(workdir / "pg")
        broker = EmbeddedMosquitto(persistence_dir=workdir / "mqtt")
        # In this thread, not a worker one: an interrupt must not leave a server starting
        # behind the teardown's back (Ctrl-C takes effect once the start returns).
        pg.start()
        broker.start()
        dsn = pg.dsn()
        fleet = demo_fleet(options)
        await register_equipment(dsn, fleet)
        env = {"DATABASE_URL": dsn, "MQTT_URL": broker.url, **DEMO_ENV}
        nodes = [InstanceProcess(name, env, workdir) for name in ("primary", "backup")]
        for node in nodes:
            node.start()
        leader = await wait_single_leader(nodes, timeout=30)
        timeline.say(f"cluster up: {leader.name} leads (epoch 1), the other stands by")
        return await _scenario(options, timeline, dsn, broker.url, nodes=nodes, fleet=fleet)
    finally:
        # Synchronous on purpose: a second Ctrl-C cannot interrupt the teardown halfway.
        for node in nodes:
            node.stop_now()
        for server in (broker, pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        timeline.say("stopped everything and removed the temporary data")


async def _scenario(
    options: DemoOptions,
    timeline: Timeline,
    dsn: str,
    broker_url: str,
    *,
    nodes: list[InstanceProcess],
    fleet: Fleet,
) -> int:
    speedup = speedup_for(fleet, options.rate)
    span = timedelta(seconds=options.duration_s * speedup)
    start = simulated_start(span)
    meters = [d for d in fleet.devices if d.family != FAMILY_INVERTER]
    unwrapped = sum(d.unwrapped for d in meters)
    timeline.say(
        f"fleet: {len(meters)} M-160 meters ({unwrapped} unwrapped) and "
        f"{len(fleet.devices) - len(meters)} inverters, ~{options.rate:.0f} msg/s (QoS 1), "
        f"x{speedup:.0f}: {_local(start)} -> {_local(start + span)} Brasilia, "
        f"{span.total_seconds() / 60:.0f} simulated minutes"
        + (f", {options.bad_ratio:.0%} bad inputs" if options.bad_ratio else "")
    )
    expected = Expected(fleet)
    progress = Progress()

    def on_message(message: SimMessage) -> None:
        progress.published += 1
        progress.simulated_at = message.at
        expected.add(message, datetime.now(UTC))

    publisher = asyncio.create_task(
        run_simulation(
            broker_url,
            fleet,
            start=start,
            duration=options.duration_s,
            speedup=speedup,
            on_message=on_message,
        )
    )
    watcher = asyncio.create_task(_watch(timeline, dsn, nodes, progress))
    try:
        failover_ms = await _kill_and_restart(options, timeline, nodes)
        report = await publisher
        expected.finish()
        await _settle(dsn, expected)
    finally:
        for task in (publisher, watcher):
            task.cancel()
        for task in (publisher, watcher):
            with contextlib.suppress(BaseException):
                await task
    return await _summary(dsn, report.published, expected, failover_ms)


async def _kill_and_restart(
    options: DemoOptions, timeline: Timeline, nodes: list[InstanceProcess]
) -> float:
    """kill -9 the leader at 1/3 of the run, restart it at 2/3; the failover time in ms."""
    await asyncio.sleep(options.duration_s / 3)
    victim = (await leaders(nodes))[0]
    standby = next(n for n in nodes if n is not victim)
    killed = time.monotonic()
    victim.signal(signal.SIGKILL)
    timeline.say(f"kill -9 {victim.name} (the leader)")
    await wait_until(standby.is_leader, 30, "the standby did not take over", interval=0.01)
    failover_ms = (time.monotonic() - killed) * 1000
    timeline.say(f"{standby.name} leads after {failover_ms:.0f} ms")
    await asyncio.sleep(max(0.0, killed + options.duration_s / 3 - time.monotonic()))
    victim.start()
    timeline.say(f"restarted {victim.name}")

    async def rejoined() -> bool:
        status, _ = await victim.get("/health/standby")
        return status == 200

    await wait_until(rejoined, 30, f"{victim.name} did not rejoin")
    timeline.say(f"{victim.name} is back as a healthy standby (/health/standby = 200)")
    return failover_ms


async def _settle(dsn: str, expected: Expected) -> None:
    """Wait (bounded) until every expected row and reject is in the database."""

    async def complete() -> bool:
        if not expected.rows <= set(await stored_keys(dsn)):
            return False
        return not expected.rejects or expected.rejects <= await _stored_rejects(dsn)

    with contextlib.suppress(AssertionError):
        await wait_until(complete, SETTLE_TIMEOUT_S, "not everything stored", interval=0.25)


async def _summary(dsn: str, published: int, expected: Expected, failover_ms: float) -> int:
    keys = [(e, _utc(ts)) for e, ts in await stored_keys(dsn)]
    stored = set(keys)
    lost = len(expected.rows - stored)
    # A second row for a reading: the same key twice, or a key no published reading has.
    duplicated = len(keys) - len(stored) + len(stored - expected.rows)
    handovers = await fetch(
        dsn,
        "SELECT epoch, from_instance_id, to_instance_id, reason, "
        "gap_ms FROM ha_handovers ORDER BY epoch",
    )
    print("\nhandovers:")
    for h in handovers:
        print(
            f"  epoch {h['epoch']}: {h['from_instance_id'] or '-'} -> {h['to_instance_id']} "
            f"({h['reason']}, gap {h['gap_ms'] if h['gap_ms'] is not None else '-'} ms)"
        )
    print(
        f"\nexpected rows: {len(expected.rows)} from {expected.good} good messages "
        "(row keys asked of the ingest's own decoder)"
    )
    rejects_ok = True
    if expected.bad or expected.rejects:
        in_db = expected.rejects & await _stored_rejects(dsn)
        rejects_ok = in_db == expected.rejects
        if expected.rejects:
            print(
                f"bad inputs: {expected.bad} published, {len(expected.rejects)} distinct "
                f"rejects expected, {len(in_db)} of them in ingest_rejects"
            )
        else:  # the simulator's account knows no reject keys
            print(f"bad inputs: {expected.bad} published (rejects not checked)")
    if expected.fallback_reason is not None:
        print(
            f"note: the decoder could not be used ({expected.fallback_reason}); "
            "expected keys come from the simulator's timestamps instead"
        )
    print(
        f"\nsummary: published {published}, stored {len(stored & expected.rows)}, lost {lost}, "
        f"duplicated {duplicated}, failover {failover_ms:.0f} ms (kill -9 -> new leader "
        f"answering /health/leader)"
    )
    ok = lost == 0 and duplicated == 0 and rejects_ok
    return constants.EXIT_OK if ok else constants.EXIT_FAILURE


async def _stored_rejects(dsn: str) -> set[RejectKey]:
    rows = await fetch(dsn, "SELECT topic, payload_sha256 FROM ingest_rejects")
    return {(r["topic"], r["payload_sha256"]) for r in rows}


async def _watch(
    timeline: Timeline, dsn: str, nodes: list[InstanceProcess], progress: Progress
) -> None:
    """One compact status line a second: who leads, epoch, simulated time, published, stored."""
    while True:
        found, rows, epoch = await asyncio.gather(
            leaders(nodes),
            fetch(dsn, "SELECT count(*) AS n FROM equipamentos_dados"),
            fetch(dsn, "SELECT epoch FROM ha_leadership"),
        )
        name = found[0].name if found else "none"
        at = progress.simulated_at
        timeline.say(
            f"leader={name:8s} epoch={epoch[0]['epoch'] if epoch else '-'}  "
            f"sim={at.astimezone(BRASILIA).strftime('%H:%M') if at else '--:--'}  "
            f"published={progress.published:6d}  stored={rows[0]['n']:6d}"
        )
        await asyncio.sleep(1.0)


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:  # a legacy timestamp(0) column: Brasília wall time
        from aupus_ha.timestamps import from_legacy_local

        return from_legacy_local(ts)
    return ts.astimezone(UTC)


def _local(ts: datetime) -> str:
    return ts.astimezone(BRASILIA).strftime("%Y-%m-%d %H:%M")


def main(options: DemoOptions) -> int:
    problems = options.problems()
    if problems:
        print(f"aupus-ha: demo: {'; '.join(problems)}", file=sys.stderr)
        return constants.EXIT_CONFIG
    try:
        return asyncio.run(_main(options))
    except (AssertionError, OSError, RuntimeError, TimeoutError) as exc:
        # A server that would not start, a cluster that did not come up or take over.
        print(f"aupus-ha: demo: failed: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE


async def _main(options: DemoOptions) -> int:
    """The demo; SIGINT and SIGTERM end it through its teardown."""
    try:
        return await until_interrupted(run_demo(options))
    except Interrupted as stop:
        print("\ninterrupted: everything stopped", file=sys.stderr)
        return 128 + stop.signum
