"""`aupus-ha simulate`: a deterministic fleet of the devices the platform sees today, on MQTT.

Every device publishes on its own topic in the DOMAIN v2 formats (`simdevices.py`;
the samples in `tests/fixtures/`), in the proportions of a real site:

* M-160 meters, a summary every 30 s: most in the flat TON/PD666 format (the common
  one today), some of those without NTP (their time is `"sem_ntp"` or `"0"`: the ingest
  stores them with the arrival time), about a quarter wrapped in `Resumo`;
* solar inverters on the TON firmware's Sungrow layout, a reading every 60 s;
* A-966 gateways on `<site>/A966/SSU/state`, the pulse counts of each 15-min bucket,
  with the occasional post-boot dump, boot frame (`sts` 0) and `phf` glitch.

Each device starts at a fixed phase offset within its period (a gateway just after a
bucket ends). Time is simulated: it starts at `start` (floored to the second, because
the Brazilian text form has no fraction) and `speedup` simulated seconds pass per real
second (0 = as fast as the broker acknowledges). The same seed, start and counts give
byte-identical messages. A `bad_ratio` fraction of the messages is replaced, on the same
topic, by one of the bad inputs of `fixtures/bad_inputs.txt` that the topic's family
must reject, made unique by the message's sequence number so that each becomes its own
`ingest_rejects` row. The replaced device still advances, so the good messages do not
depend on the ratio.

`--register` creates the equipment rows with their types (`M-160`, `INVERSOR`,
`SSU_A966` in the category `Gateway` where the database has categories) and, after the
run, reads back per family what was stored, with energy, timed by arrival and rejected.

The parts: `simfleet.py` (which devices, their messages, the bad inputs),
`simdevices.py` (what each device sends), `simstore.py` (registration and read-back);
this module publishes, paces and reports, and holds the command.

Beware: the ingest times readings more than 15 minutes ahead of their arrival by the
arrival instead (`FUTURE_TOLERANCE_S`); with a large speedup, start in the past. Readings
timed by arrival land on a legacy database's second-precision key: at a speedup above
30, two summaries of one clockless meter can share a second, and only one is stored.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import asyncpg

from aupus_ha import constants
from aupus_ha.config import load_dotenv_file, mask_url
from aupus_ha.decoding.timestamps import TimestampError, parse_timestamp
from aupus_ha.lab.publisher import Publisher
from aupus_ha.lab.simdevices import M160_PERIOD_S, DeviceSpec, daylight_factor
from aupus_ha.lab.simfleet import (
    BAD_INPUTS,
    FAMILIES,
    FAMILY_GATEWAY,
    FAMILY_INVERTER,
    FAMILY_LABELS,
    FAMILY_M160_FLAT,
    FAMILY_M160_WRAPPED,
    GATEWAY_CATEGORY,
    TYPE_GATEWAY,
    Fleet,
    SimMessage,
    build_fleet,
    whole_second,
)
from aupus_ha.lab.simstore import (
    Registration,
    StoredCounts,
    read_back,
    register_equipment,
    settle_and_read_back,
)

# The simulator's public surface, re-exported from the modules it is made of.
__all__ = [
    "BAD_INPUTS",
    "FAMILIES",
    "FAMILY_GATEWAY",
    "FAMILY_INVERTER",
    "FAMILY_LABELS",
    "FAMILY_M160_FLAT",
    "FAMILY_M160_WRAPPED",
    "GATEWAY_CATEGORY",
    "DeviceSpec",
    "FamilyCounts",
    "Fleet",
    "Registration",
    "SimMessage",
    "SimReport",
    "SimulateOptions",
    "StoredCounts",
    "build_fleet",
    "daylight_factor",
    "family_table",
    "read_back",
    "register_equipment",
    "run_simulation",
]

DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"


# --- what the ingest made of it ----------------------------------------------------------


@dataclass(slots=True)
class FamilyCounts:
    """One row of the summary: what a family's devices sent, and what became of it."""

    published: int = 0  # acknowledged by the broker, bad inputs included
    bad: int = 0  # of them, bad inputs
    clockless: int = 0  # of them, readings without a usable device time
    stored: int | None = None  # rows in equipamentos_dados (None: not read back)
    with_energy: int | None = None  # of them, energia_kwh not NULL
    by_arrival: int | None = None  # of them, timed by arrival (`_timestamp_motivo`)
    rejected: int | None = None  # rows in ingest_rejects

    def stored_part(self) -> StoredCounts | None:
        if None in (self.stored, self.with_energy, self.by_arrival, self.rejected):
            return None
        return (self.stored or 0, self.with_energy or 0, self.by_arrival or 0, self.rejected or 0)


def family_table(counts: Mapping[str, FamilyCounts], families: tuple[str, ...] = FAMILIES) -> str:
    """The per-family summary, one line per family (every family, sent or not)."""
    head = (
        f"  {'family':24s} {'published':>9s} {'bad':>5s} {'no clock':>8s} "
        f"{'stored':>7s} {'energy':>7s} {'arrival':>7s} {'rejected':>8s}"
    )
    lines = [head]
    for family in families:
        c = counts.get(family, FamilyCounts())
        part = c.stored_part()
        tail = " ".join(f"{v:>{w}}" for v, w in zip(part or ("-",) * 4, (7, 7, 7, 8), strict=True))
        lines.append(
            f"  {FAMILY_LABELS[family]:24s} {c.published:>9d} {c.bad:>5d} {c.clockless:>8d} {tail}"
        )
    lines.append(
        "  (energy: rows with energia_kwh; arrival: rows timed by the arrival time, "
        "`_timestamp_motivo`; an inverter row is one minute)"
    )
    return "\n".join(lines)


# --- publishing --------------------------------------------------------------------------


@dataclass(slots=True)
class SimReport:
    published: int = 0  # acknowledged by the broker (QoS 1)
    per_family: Counter[str] = field(default_factory=Counter)
    bad_per_family: Counter[str] = field(default_factory=Counter)
    clockless_per_family: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    first_at: datetime | None = None
    last_at: datetime | None = None
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def bad(self) -> int:
        return self.bad_per_family.total()

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0

    def add(self, message: SimMessage) -> None:
        self.published += 1
        self.per_family[message.family] += 1
        self.bad_per_family[message.family] += message.bad_kind is not None
        self.clockless_per_family[message.family] += message.timed_by_arrival
        self.first_at = self.first_at or message.at
        self.last_at = message.at

    def counts(self, stored: Mapping[str, StoredCounts] | None = None) -> dict[str, FamilyCounts]:
        out = {}
        for family in FAMILIES:
            c = FamilyCounts(
                self.per_family[family],
                self.bad_per_family[family],
                self.clockless_per_family[family],
            )
            if stored is not None:
                c.stored, c.with_energy, c.by_arrival, c.rejected = stored[family]
            out[family] = c
        return out

    def line(self) -> str:
        span = f"; simulated {_iso(self.first_at)} .. {_iso(self.last_at)}" if self.last_at else ""
        return (
            f"simulate: {self.published} published and acknowledged, {self.bad} bad "
            f"in {self.seconds:.2f} s, {self.rate:.1f} msg/s{span}"
        )

    def summary(self, stored: Mapping[str, StoredCounts] | None = None) -> str:
        return f"{self.line()}\n{family_table(self.counts(stored))}"


def _iso(at: datetime | None) -> str:
    return at.isoformat().replace("+00:00", "Z") if at else "-"


class _Clock:
    """Maps simulated instants to real deadlines: `speedup` simulated seconds per second."""

    def __init__(self, origin: datetime, speedup: float, duration: float | None) -> None:
        self._origin, self._speedup = origin, speedup
        self.started = time.monotonic()
        self._deadline = self.started + duration if duration is not None else math.inf

    async def wait_until(self, at: datetime, stop: asyncio.Event) -> bool:
        """Sleep until `at` is due; False when the run must end first (duration, stop)."""
        lag = (at - self._origin).total_seconds() / self._speedup if self._speedup > 0 else 0.0
        delay = min(self.started + lag, self._deadline) - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        return not stop.is_set() and time.monotonic() < self._deadline


async def run_simulation(
    broker_url: str,
    fleet: Fleet,
    *,
    start: datetime | None = None,
    count: int | None = None,
    duration: float | None = None,
    speedup: float = 1.0,
    stop: asyncio.Event | None = None,
    on_message: Callable[[SimMessage], None] | None = None,
    window: int = 500,
    ca_file: str | None = None,
) -> SimReport:
    """Publish the fleet at QoS 1 until `count` messages, `duration` real seconds or `stop`.

    At most `window` messages await their PUBACK at a time; the report counts only what
    the broker acknowledged (it waits for every PUBACK before returning).
    """
    origin = whole_second(start or datetime.now(UTC))
    clock = _Clock(origin, speedup, duration)
    stop = stop or asyncio.Event()
    report = SimReport()
    async with Publisher(broker_url, ca_file=ca_file) as publisher:
        for message in fleet.messages(origin, count):
            if not await clock.wait_until(message.at, stop):
                break
            if publisher.unacknowledged >= window:
                await publisher.wait_acknowledged(max_pending=window // 2)
            publisher.publish(message.topic, message.payload)
            report.add(message)
            if on_message is not None:
                on_message(message)
        await publisher.wait_acknowledged()
    report.seconds = time.monotonic() - clock.started
    return report


# --- the command -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimulateOptions:
    broker: str
    fleet: Fleet
    start: datetime | None
    count: int | None
    duration: float | None
    speedup: float
    register_dsn: str | None
    ca_file: str | None = None
    settle_s: float = 15.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> SimulateOptions:
        """Validated options; `ValueError` names the flag. Defaults come from env/.env."""
        dotenv = load_dotenv_file(args.env_file or Path(".env"))  # a missing file is no error
        env = {**dotenv, **os.environ}
        broker = args.broker or env.get("MQTT_URL") or DEFAULT_BROKER
        if urlsplit(broker).scheme not in ("mqtt", "mqtts"):
            raise ValueError(
                "--broker: accepts mqtt://[user:pass@]host[:port] or mqtts://... (TLS), "
                f"got {mask_url(broker)!r}"
            )
        ca_file = args.ca or env.get("MQTT_TLS_CA") or None
        if ca_file is not None and not Path(ca_file).is_file():
            raise ValueError(f"--ca: {ca_file!r} is not a readable file")
        if min(args.speedup, args.count or 0, args.duration or 0, args.settle) < 0:
            raise ValueError("--speedup, --count, --duration and --settle must not be negative")
        dsn = args.register
        if dsn == "":  # --register without a value
            dsn = env.get("DATABASE_URL") or None
            if dsn is None:
                raise ValueError("--register without a DSN needs DATABASE_URL")
        fleet = build_fleet(
            args.meters,
            args.inverters,
            args.seed,
            gateways=args.gateways,
            wrapped_meters=args.wrapped_meters,
            clockless_meters=args.clockless_meters,
            bad_ratio=args.bad_ratio,
            topic_prefix=args.topic_prefix,
        )
        return cls(
            broker,
            fleet,
            _start(args.start),
            args.count,
            args.duration,
            args.speedup,
            dsn,
            ca_file,
            args.settle,
        )


def _start(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return parse_timestamp(text, now=datetime.now(UTC))
    except TimestampError as exc:
        raise ValueError(f"--start: {exc.message}") from None


def main(args: argparse.Namespace) -> int:
    try:
        options = SimulateOptions.from_args(args)
    except ValueError as exc:
        print(f"aupus-ha: simulate: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    try:
        return asyncio.run(_main(options))
    except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
        # No URL in the message: it may carry a password.
        print(f"aupus-ha: simulate: {type(exc).__name__}: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE


async def _main(options: SimulateOptions) -> int:
    if options.register_dsn is not None:
        done = await register_equipment(options.register_dsn, options.fleet)
        print(
            f"simulate: registered types {', '.join(done.type_ids)}; equipment "
            f"{done.created} new, {done.existing} already present"
        )
        _say_gateway_category(options.fleet, done)
    if options.count == 0:
        return constants.EXIT_OK
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop publishing but still print the report
        loop.add_signal_handler(sig, stop.set)
    report = await run_simulation(
        options.broker,
        options.fleet,
        start=options.start,
        count=options.count,
        duration=options.duration,
        speedup=options.speedup,
        stop=stop,
        ca_file=options.ca_file,
    )
    stored = None
    if options.register_dsn is not None:
        since = report.started_at - timedelta(seconds=1)  # created_at may be whole seconds
        stored = await settle_and_read_back(
            options.register_dsn, options.fleet, since, options.settle_s
        )
    print(report.summary(stored))
    if stored is None:
        print("simulate: stored, energy, arrival, rejected: read back with --register")
    horizon = datetime.now(UTC) + timedelta(seconds=constants.FUTURE_TOLERANCE_S)
    if report.last_at is not None and report.last_at > horizon:
        print(
            f"simulate: warning: readings more than {constants.FUTURE_TOLERANCE_S} s ahead "
            "are timed by their arrival by the ingest; use an earlier --start",
            file=sys.stderr,
        )
    if report.clockless_per_family.total() and not 0 < options.speedup <= M160_PERIOD_S:
        print(
            "simulate: note: meters without NTP are timed by their arrival; faster than "
            f"--speedup {M160_PERIOD_S}, a legacy database (keys to the second) keeps only "
            "one of their readings per second",
            file=sys.stderr,
        )
    return constants.EXIT_OK


def _say_gateway_category(fleet: Fleet, done: Registration) -> None:
    if not any(d.family == FAMILY_GATEWAY for d in fleet.devices):
        return
    if done.gateway_category is None:
        print(
            "simulate: warning: the database has no equipment categories: the A-966 "
            f"gateways cannot be put in {GATEWAY_CATEGORY!r}, so the ingest cannot tell them "
            "from their equipment",
            file=sys.stderr,
        )
    elif done.gateway_category != GATEWAY_CATEGORY:
        print(
            f"simulate: warning: the existing type {TYPE_GATEWAY} is in the category "
            f"{done.gateway_category!r}, not {GATEWAY_CATEGORY!r} (left as it was)",
            file=sys.stderr,
        )
