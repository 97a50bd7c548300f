"""`aupus-ha demo`: the whole promise on one machine, in well under a minute.

Starts an embedded PostgreSQL and a broker, two instances with the same configuration,
and the simulated fleet of `simulate.py` in the formats the platform sees today (flat
TON/PD666 M-160 meters, some without NTP, wrapped `Resumo` meters, TON Sungrow
inverters, an A-966 gateway) played at a speed-up, so that the default 30 s show more
than an hour of a working day. It kills the leader with SIGKILL at a third of the run,
restarts it at two thirds, prints a status line a second and a summary: per family
published, stored, with energy, timed by arrival and rejected; then lost, duplicated,
failover time.

Lost and duplicated are counted on the natural keys: each published message is decoded
by the ingest's own `Decoder`, and the rows it must become are the readings' row keys
(an inverter's reading belongs to the row of its minute). A reading timed by its arrival
(a meter without NTP) has a different arrival time on every instance, so it is matched
by its content instead (its `dados` without the ingest's `_` annotations), as the
ingest itself matches it. Everything the demo starts is stopped and every temporary
directory removed on exit, Ctrl-C and SIGTERM included.
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
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import default_value
from aupus_ha.decoding.timestamps import BRASILIA
from aupus_ha.lab.democonsole import (
    QuietFleet,
    console_lines,
    console_url,
    data_loss_report,
    quieted,
    screenshot_soon,
)
from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.interrupt import Interrupted, until_interrupted
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    leaders,
    wait_single_leader,
    wait_until,
)
from aupus_ha.lab.progress import Progress
from aupus_ha.lab.simulate import (
    FAMILY_GATEWAY,
    FAMILY_INVERTER,
    FAMILY_M160_FLAT,
    FAMILY_M160_WRAPPED,
    GATEWAY_CATEGORY,
    Fleet,
    SimMessage,
    SimReport,
    StoredCounts,
    build_fleet,
    family_table,
    read_back,
    register_equipment,
    run_simulation,
)

RowKey = tuple[str, datetime]  # (equipamento_id, timestamp_dados), aware UTC
ContentKey = tuple[str, bytes]  # (equipamento_id, canonical dados) of a row timed by arrival
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


@dataclass(slots=True)
class DemoOptions:
    duration_s: float = 30.0
    fleet: int = 20  # devices: about 60 % M-160 meters, 30 % inverters, 10 % gateways
    rate: float = 100.0  # messages per second, on average
    bad_ratio: float = 0.0  # fraction of the messages replaced by bad inputs
    seed: int = 1
    hold_s: float = 0.0  # keep the cluster (and its consoles) up this long at the end
    screenshot: Path | None = None  # the console during the failover, as a PNG

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
        if not 0.0 <= self.hold_s <= 86_400:
            out.append("--hold must be between 0 and 86400 seconds")
        return out


# --- the simulated fleet and its time ----------------------------------------------------


def demo_fleet(options: DemoOptions) -> Fleet:
    """A site's proportions: a gateway per ten devices (one from four), 30 % inverters,
    the rest meters, mostly flat (some without NTP) and at least one wrapped."""
    gateways = max(1, options.fleet // 10) if options.fleet >= 4 else 0
    inverters = round((options.fleet - gateways) * 0.3) if options.fleet >= 2 else 0
    meters = options.fleet - gateways - inverters
    wrapped = max(1, meters // 4) if meters >= 2 else 0
    flat = meters - wrapped
    clockless = max(1, flat // 4) if flat >= 2 else 0
    return build_fleet(
        meters,
        inverters,
        options.seed,
        gateways=gateways,
        wrapped_meters=wrapped,
        clockless_meters=clockless,
        bad_ratio=options.bad_ratio,
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
    has the rollup module (readings timed by arrival are then not checked);
    `fallback_reason` then says why.
    """

    def __init__(self, fleet: Fleet) -> None:
        self.rows: set[RowKey] = set()
        self.contents: set[ContentKey] = set()  # readings timed by their arrival
        self.rejects: set[RejectKey] = set()
        self.good = 0  # published messages that decode to readings (or are held by a family)
        self.bad = 0  # published messages that decode to a reject
        self.fallback_reason: str | None = None
        self._decoder: Any = None  # Any: only the duck-typed calls below are relied on
        self._equipment: dict[str, Any] = {}
        try:
            from aupus_ha.decoding.messages import Decoder

            self._decoder = Decoder(max_payload_bytes=_max_payload_bytes())
            self._equipment = {
                d.topic: _equipment(d.id, d.topic, d.type_code, d.family) for d in fleet.devices
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
        for reading in readings:
            if getattr(reading, "matchable", True) or _is_sample(reading):
                self.rows.add(row_key(reading))
            else:
                self.contents.add((reading.equipamento_id, content_of(reading.dados)))
        self.rejects.update((r.topic, r.payload_sha256) for r in rejects)

    def _add_by_simulator(self, message: SimMessage) -> None:
        if message.bad_kind is not None:
            self.bad += 1
            return
        self.good += 1
        if message.timestamp is None:  # timed by arrival: no key to expect without the decoder
            return
        ts = message.timestamp.astimezone(UTC)
        if message.family == FAMILY_INVERTER and _ingest_has_rollup():
            ts = minute_of(ts)
        self.rows.add((message.device_id, ts))

    def _fall_back(self, exc: Exception) -> None:
        if self.fallback_reason is None:
            self.fallback_reason = f"{type(exc).__name__}: {exc}"
        self._decoder = None


def _equipment(equipment_id: str, topic: str, type_code: str, family: str) -> Any:
    """The ingest's `Equipment` for a simulated device, its category where it has one."""
    from aupus_ha.pipeline.readings import Equipment

    fields = {f.name for f in dataclasses.fields(Equipment)}
    extra = {}
    for name in ("type_category", "category", "categoria"):  # as the ingest names it
        if name in fields and family == FAMILY_GATEWAY:
            extra[name] = GATEWAY_CATEGORY
    return Equipment(id=equipment_id, topic=topic, type_code=type_code, **extra)


def content_of(dados: bytes | str) -> bytes:
    """A row's `dados` in a canonical form: keys sorted, numbers as floats, and without
    the `_` annotations of the ingest (the time fallback's, a flush's), so that what the
    decoder produced and what jsonb gives back compare equal."""
    obj = orjson.loads(dados)
    if isinstance(obj, dict):
        obj = {k: v for k, v in obj.items() if not k.startswith("_")}
    return orjson.dumps(_floats(obj), option=orjson.OPT_SORT_KEYS)


def _floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_floats(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    return value


def _max_payload_bytes() -> int:
    """The instances' default limit, so the demo's decoder refuses what theirs refuse."""
    limit: int = default_value("MAX_PAYLOAD_BYTES")
    return limit


def _ingest_has_rollup() -> bool:
    try:
        from aupus_ha.pipeline import rollup
    except ImportError:
        return False
    return hasattr(rollup, "bucket_start")


# --- the run -----------------------------------------------------------------------------


@dataclass(slots=True)
class Traffic:
    """What the simulated fleet has published so far, for the status line."""

    published: int = 0
    simulated_at: datetime | None = None


async def run_demo(options: DemoOptions) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aupus-demo-"))
    progress = Progress()
    pg: EmbeddedPostgres | None = None
    broker: EmbeddedMosquitto | None = None
    nodes: list[InstanceProcess] = []
    try:
        progress.say("starting embedded PostgreSQL and the MQTT broker...")
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
        progress.say(f"cluster up: {leader.name} leads (epoch 1), the other stands by")
        return await _scenario(options, progress, dsn, broker.url, nodes=nodes, fleet=fleet)
    finally:
        # Synchronous on purpose: a second Ctrl-C cannot interrupt the teardown halfway.
        for node in nodes:
            node.stop_now()
        for server in (broker, pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)
        progress.say("stopped everything and removed the temporary data")


async def _scenario(
    options: DemoOptions,
    progress: Progress,
    dsn: str,
    broker_url: str,
    *,
    nodes: list[InstanceProcess],
    fleet: Fleet,
) -> int:
    speedup = speedup_for(fleet, options.rate)
    span = timedelta(seconds=options.duration_s * speedup)
    start = simulated_start(span)
    progress.say(
        f"fleet: {_fleet_text(fleet)}; ~{options.rate:.0f} msg/s (QoS 1), "
        f"x{speedup:.0f}: {_local(start)} -> {_local(start + span)} Brasilia, "
        f"{span.total_seconds() / 60:.0f} simulated minutes"
        + (f", {options.bad_ratio:.0%} bad inputs" if options.bad_ratio else "")
    )
    quiet = quieted(fleet, start, span)
    if quiet.quiet_id and quiet.quiet_from and quiet.quiet_to:
        progress.say(
            f"{quiet.quiet_id} goes quiet from {_local(quiet.quiet_from)} to "
            f"{_local(quiet.quiet_to)} Brasilia, on purpose: the data-loss report must find it"
        )
    expected = Expected(fleet)
    traffic = Traffic()
    shots: list[asyncio.Task[str]] = []

    def on_failover(new_leader: InstanceProcess) -> None:
        # The console of the new leader, its bars up to the moment of the kill.
        if options.screenshot is not None and traffic.simulated_at is not None:
            url = console_url(new_leader, start, traffic.simulated_at, refresh_s=1)
            shot = screenshot_soon(url, options.screenshot, len(quiet.devices))
            shots.append(asyncio.create_task(shot))

    def on_message(message: SimMessage) -> None:
        traffic.published += 1
        traffic.simulated_at = message.at
        expected.add(message, datetime.now(UTC))

    publisher = asyncio.create_task(
        run_simulation(
            broker_url,
            quiet,
            start=start,
            duration=options.duration_s,
            speedup=speedup,
            on_message=on_message,
        )
    )
    watcher = asyncio.create_task(_watch(progress, dsn, nodes, traffic))
    try:
        failover_ms = await _kill_and_restart(options, progress, nodes, on_failover)
        report = await publisher
        expected.finish()
        await _settle(dsn, expected)
        for shot in shots:
            progress.say(await shot)
    finally:
        for task in (publisher, watcher, *shots):
            task.cancel()
        for task in (publisher, watcher, *shots):
            with contextlib.suppress(BaseException):
                await task
    code = await _summary(dsn, fleet, report, expected, failover_ms)
    return await _console_and_report(
        options, progress, nodes=nodes, fleet=quiet, start=start, report=report, code=code
    )


async def _console_and_report(
    options: DemoOptions,
    progress: Progress,
    *,
    nodes: list[InstanceProcess],
    fleet: QuietFleet,
    start: datetime,
    report: SimReport,
    code: int,
) -> int:
    """The cluster's own data-loss report of the run, then where its console is."""
    end = report.last_at or start
    found = await leaders(nodes)
    leader = found[0] if found else None
    loss = await data_loss_report(leader or nodes[0], fleet, start, end)
    print("\n" + "\n".join(loss.lines))
    if not loss.as_expected:
        print(f"the report should name {', '.join(loss.expected) or 'no equipment'} only")
        code = constants.EXIT_FAILURE
    print(
        "\n" + "\n".join(console_lines(nodes, leader, console_url(leader or nodes[0], start, end)))
    )
    if options.hold_s > 0:
        progress.say(
            f"the cluster and its consoles stay live for {options.hold_s:.0f} s (Ctrl-C ends it)"
        )
        await asyncio.sleep(options.hold_s)
    else:
        print("(live while the demo holds: it stops now; `aupus-ha demo --hold 300` keeps it open)")
    return code


def _fleet_text(fleet: Fleet) -> str:
    groups = fleet.by_family()
    flat = groups[FAMILY_M160_FLAT]
    clockless = sum(d.clock != "ntp" for d in flat)
    return (
        f"{len(flat)} flat M-160 meters ({clockless} without NTP), "
        f"{len(groups[FAMILY_M160_WRAPPED])} wrapped (Resumo), "
        f"{len(groups[FAMILY_INVERTER])} inverters, {len(groups[FAMILY_GATEWAY])} A-966 gateways"
    )


async def _kill_and_restart(
    options: DemoOptions,
    progress: Progress,
    nodes: list[InstanceProcess],
    on_failover: Callable[[InstanceProcess], None],
) -> float:
    """kill -9 the leader at 1/3 of the run, restart it at 2/3; the failover time in ms."""
    await asyncio.sleep(options.duration_s / 3)
    victim = (await leaders(nodes))[0]
    standby = next(n for n in nodes if n is not victim)
    killed = time.monotonic()
    victim.signal(signal.SIGKILL)
    progress.say(f"kill -9 {victim.name} (the leader)")
    await wait_until(standby.is_leader, 30, "the standby did not take over", interval=0.01)
    failover_ms = (time.monotonic() - killed) * 1000
    progress.say(f"{standby.name} leads after {failover_ms:.0f} ms")
    on_failover(standby)
    await asyncio.sleep(max(0.0, killed + options.duration_s / 3 - time.monotonic()))
    victim.start()
    progress.say(f"restarted {victim.name}")

    async def rejoined() -> bool:
        status, _ = await victim.get("/health/standby")
        return status == 200

    await wait_until(rejoined, 30, f"{victim.name} did not rejoin")
    progress.say(f"{victim.name} is back as a healthy standby (/health/standby = 200)")
    return failover_ms


async def _settle(dsn: str, expected: Expected) -> None:
    """Wait (bounded) until every expected row and reject is in the database."""

    async def complete() -> bool:
        stored = await _stored_rows(dsn)
        if not expected.rows <= {(e, ts) for e, ts, _ in stored}:
            return False
        if not expected.contents <= {(e, c) for e, _, c in stored}:
            return False
        return not expected.rejects or expected.rejects <= await _stored_rejects(dsn)

    with contextlib.suppress(AssertionError):
        await wait_until(complete, SETTLE_TIMEOUT_S, "not everything stored", interval=0.25)


StoredRow = tuple[str, datetime, bytes]  # (equipamento_id, timestamp_dados UTC, content)


async def _stored_rows(dsn: str) -> list[StoredRow]:
    rows = await fetch(
        dsn, "SELECT equipamento_id, timestamp_dados, dados::text AS dados FROM equipamentos_dados"
    )
    return [(r[0], _utc(r[1]), content_of(r[2])) for r in rows]


def lost_and_duplicated(expected: Expected, stored: list[StoredRow]) -> tuple[int, int, int]:
    """(matched, lost, duplicated). A stored row counts for the reading whose key it has,
    else for the reading timed by arrival whose content it has; a second row for one
    reading, or a row for no published reading, is a duplicate."""
    by_key: set[RowKey] = set()
    by_content: set[ContentKey] = set()
    extra = 0
    for equipment_id, ts, content in stored:
        if (equipment_id, ts) in expected.rows:
            extra += (equipment_id, ts) in by_key
            by_key.add((equipment_id, ts))
        elif (equipment_id, content) in expected.contents:
            extra += (equipment_id, content) in by_content
            by_content.add((equipment_id, content))
        else:
            extra += 1
    matched = len(by_key) + len(by_content)
    lost = len(expected.rows) + len(expected.contents) - matched
    return matched, lost, extra


async def _summary(
    dsn: str, fleet: Fleet, report: SimReport, expected: Expected, failover_ms: float
) -> int:
    matched, lost, duplicated = lost_and_duplicated(expected, await _stored_rows(dsn))
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
        "\nper family (stored rows read back from equipamentos_dados, rejects from ingest_rejects):"
    )
    print(family_table(report.counts(await _read_back(dsn, fleet))))
    print(
        f"\nexpected rows: {len(expected.rows) + len(expected.contents)} from {expected.good} "
        f"good messages ({len(expected.contents)} timed by arrival, matched by content; "
        "row keys asked of the ingest's own decoder)"
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
        f"\nsummary: published {report.published}, stored {matched}, lost {lost}, "
        f"duplicated {duplicated}, failover {failover_ms:.0f} ms (kill -9 -> new leader "
        f"answering /health/leader)"
    )
    ok = lost == 0 and duplicated == 0 and rejects_ok
    return constants.EXIT_OK if ok else constants.EXIT_FAILURE


async def _read_back(dsn: str, fleet: Fleet) -> dict[str, StoredCounts]:
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        return await read_back(conn, fleet, None)
    finally:
        await conn.close()


async def _stored_rejects(dsn: str) -> set[RejectKey]:
    rows = await fetch(dsn, "SELECT topic, payload_sha256 FROM ingest_rejects")
    return {(r["topic"], r["payload_sha256"]) for r in rows}


async def _watch(
    progress: Progress, dsn: str, nodes: list[InstanceProcess], traffic: Traffic
) -> None:
    """One compact status line a second: who leads, epoch, simulated time, published, stored."""
    while True:
        found, rows, epoch = await asyncio.gather(
            leaders(nodes),
            fetch(dsn, "SELECT count(*) AS n FROM equipamentos_dados"),
            fetch(dsn, "SELECT epoch FROM ha_leadership"),
        )
        name = found[0].name if found else "none"
        at = traffic.simulated_at
        progress.say(
            f"leader={name:8s} epoch={epoch[0]['epoch'] if epoch else '-'}  "
            f"sim={at.astimezone(BRASILIA).strftime('%H:%M') if at else '--:--'}  "
            f"published={traffic.published:6d}  stored={rows[0]['n']:6d}"
        )
        await asyncio.sleep(1.0)


def _utc(ts: datetime) -> datetime:
    if ts.tzinfo is None:  # a legacy timestamp(0) column: UTC wall time (DOMAIN v2)
        return ts.replace(tzinfo=UTC)
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
