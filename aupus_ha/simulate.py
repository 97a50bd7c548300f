"""`aupus-ha simulate`: a deterministic fleet of M-160 meters and solar inverters on MQTT.

Every device has its own slowly wandering state (voltages, load, cloud cover) and
publishes on its own topic in the fixture shapes (`tests/fixtures`): an M-160 summary
every 30 s (wrapped in `Resumo`, or unwrapped for the meters configured so), an inverter
reading every 60 s. Each device starts at a fixed phase offset within its period.

Time is simulated: it starts at `start` (floored to the second, because the Brazilian
text form has no fraction) and `speedup` simulated seconds pass per real second (0 = as
fast as the broker acknowledges). The same seed, start and count give byte-identical
messages. A `bad_ratio` fraction of the messages is replaced, on the same topic, by one
of the bad inputs of `fixtures/bad_inputs.txt`, made unique by the message's sequence
number so that each becomes its own `ingest_rejects` row. The replaced device still
advances, so the good messages do not depend on the ratio.

Beware: the ingest refuses readings more than 15 minutes ahead of their arrival
(`FUTURE_TOLERANCE_S`); with a large speedup, start in the past.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import math
import os
import random
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import load_dotenv_file, mask_url
from aupus_ha.migrate import apply_migrations
from aupus_ha.publisher import Publisher
from aupus_ha.timestamps import BRASILIA, TimestampError, parse_timestamp

M160_PERIOD_S: Final = 30
INVERTER_PERIOD_S: Final = 60
FAMILY_M160: Final = "m160_summary"  # the decoder's family name
FAMILY_INVERTER: Final = "inverter"
FAMILY_BAD: Final = "bad"
TYPE_M160: Final = "M-160"
TYPE_INVERTER: Final = "INVERSOR"
# Codes that already mean each type on an existing database (DOMAIN.md): reused, not doubled.
TYPE_ALIASES: Final = {TYPE_M160: ("M-160", "M160", "METER_M160"), TYPE_INVERTER: ("INVERSOR",)}
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
SUNRISE_H: Final = 6.0
SUNSET_H: Final = 18.0

_PHASES: Final = ("a", "b", "c")
_INVERTER_EFFICIENCY: Final = 0.978
_RATED_KW: Final = (8, 12, 20, 30, 36, 50, 60)

# One per line of fixtures/bad_inputs.txt; `n` makes every occurrence a distinct payload.
BAD_INPUTS: Final[dict[str, Callable[[int], bytes]]] = {
    "not_json": lambda n: f"not json at all #{n}".encode(),
    "invalid_date": lambda n: orjson.dumps({"timestamp": "31/02/2026 25:61:00", "power": n}),
    "absurd_epoch": lambda n: orjson.dumps({"timestamp": 99999999999999, "power": n}),
    "negative_epoch": lambda n: orjson.dumps({"timestamp": -5, "power": n}),
    "array": lambda n: orjson.dumps([1, 2, 3, n]),
    "resumo_not_object": lambda n: orjson.dumps({"Resumo": "should be an object", "seq": n}),
    "not_utf8": lambda n: b"\xff\xfe\x00garbage" + str(n).encode(),
}


# --- the fleet ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message to publish, with what the ingest should make of it."""

    topic: str
    payload: bytes
    family: str  # FAMILY_M160, FAMILY_INVERTER or FAMILY_BAD
    device_id: str
    at: datetime  # simulated send time (UTC)
    timestamp: datetime | None  # the reading's own time; None for a bad input
    bad_kind: str | None = None


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What does not change about a device; its state lives in a fresh simulator per run."""

    id: str
    name: str
    topic: str
    family: str
    type_code: str
    period_s: int
    phase_s: int
    nominal: float  # M-160: phase voltage (V); inverter: rated AC power (W)
    unwrapped: bool = False


@dataclass(frozen=True, slots=True)
class Fleet:
    devices: tuple[DeviceSpec, ...]
    seed: int
    bad_ratio: float = 0.0

    def messages(
        self, start: datetime | None = None, count: int | None = None
    ) -> Iterator[SimMessage]:
        """Messages of every device in simulated-time order; endless when `count` is None."""
        origin = whole_second(start or datetime.now(UTC))
        streams = [_device_stream(spec, self.seed, origin) for spec in self.devices]
        merged = heapq.merge(*streams, key=lambda m: (m.at, m.device_id))
        bad_rng = random.Random(f"{self.seed}/bad")
        for seq, message in enumerate(itertools.islice(merged, count)):
            if bad_rng.random() < self.bad_ratio:
                yield _spoil(message, bad_rng.choice(tuple(BAD_INPUTS)), seq)
            else:
                yield message


def build_fleet(
    meters: int,
    inverters: int,
    seed: int = 1,
    *,
    bad_ratio: float = 0.0,
    unwrapped_meters: int = 0,
    topic_prefix: str = "aupus/sim",
) -> Fleet:
    """`meters` M-160s (`m160-0001`…; the last `unwrapped_meters` unwrapped) and inverters."""
    if meters < 0 or inverters < 0 or not 0 <= unwrapped_meters <= meters:
        raise ValueError("device counts must be >= 0 and unwrapped_meters <= meters")
    if not 0.0 <= bad_ratio <= 1.0:
        raise ValueError("bad_ratio must be between 0 and 1")
    rng = random.Random(seed)
    specs = [
        DeviceSpec(
            id=f"m160-{n:04d}",
            name=f"M-160 simulado {n:04d}",
            topic=f"{topic_prefix}/m160/{n:04d}",
            family=FAMILY_M160,
            type_code=TYPE_M160,
            period_s=M160_PERIOD_S,
            phase_s=rng.randrange(M160_PERIOD_S),
            nominal=rng.choice((127.0, 220.0)),
            unwrapped=n > meters - unwrapped_meters,
        )
        for n in range(1, meters + 1)
    ]
    specs += [
        DeviceSpec(
            id=f"inv-{n:04d}",
            name=f"Inversor simulado {n:04d}",
            topic=f"{topic_prefix}/inverter/{n:04d}",
            family=FAMILY_INVERTER,
            type_code=TYPE_INVERTER,
            period_s=INVERTER_PERIOD_S,
            phase_s=rng.randrange(INVERTER_PERIOD_S),
            nominal=rng.choice(_RATED_KW) * 1000.0,
        )
        for n in range(1, inverters + 1)
    ]
    return Fleet(tuple(specs), seed, bad_ratio)


def whole_second(at: datetime) -> datetime:
    if at.utcoffset() is None:
        raise ValueError("the simulation start must be timezone-aware")
    return at.astimezone(UTC).replace(microsecond=0)


def daylight_factor(at: datetime) -> float:
    """0 at night, rising to 1 at local noon (UTC−3), as a half sine between 6 h and 18 h."""
    hour = _local_hour(at)
    if not SUNRISE_H < hour < SUNSET_H:
        return 0.0
    return math.sin(math.pi * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))


def _local_hour(at: datetime) -> float:
    local = at.astimezone(BRASILIA)
    return local.hour + local.minute / 60 + local.second / 3600


def _device_stream(spec: DeviceSpec, seed: int, origin: datetime) -> Iterator[SimMessage]:
    rng = random.Random(f"{seed}/{spec.id}")
    device = _Meter(spec, rng) if spec.family == FAMILY_M160 else _Inverter(spec, rng, origin)
    at, step = origin + timedelta(seconds=spec.phase_s), timedelta(seconds=spec.period_s)
    while True:
        payload = orjson.dumps(device.payload(at))
        yield SimMessage(spec.topic, payload, spec.family, spec.id, at, at)
        at += step


def _spoil(message: SimMessage, kind: str, seq: int) -> SimMessage:
    payload = BAD_INPUTS[kind](seq)
    return SimMessage(message.topic, payload, FAMILY_BAD, message.device_id, message.at, None, kind)


class _Drift:
    """A mean-reverting random walk: a value that wanders slowly around its set point."""

    __slots__ = ("_hi", "_lo", "_mean", "_rng", "_sigma", "value")

    def __init__(self, rng: random.Random, mean: float, sigma: float, lo: float, hi: float) -> None:
        self._rng, self._mean, self._sigma, self._lo, self._hi = rng, mean, sigma, lo, hi
        self.value = mean

    def step(self) -> float:
        pulled = self.value + 0.1 * (self._mean - self.value) + self._rng.gauss(0.0, self._sigma)
        self.value = min(self._hi, max(self._lo, pulled))
        return self.value


class _Meter:
    """An M-160 on a building's supply: a load that follows business hours and wanders."""

    def __init__(self, spec: DeviceSpec, rng: random.Random) -> None:
        self._spec = spec
        volts = spec.nominal
        self._volts = [
            _Drift(rng, volts, volts * 0.004, volts * 0.94, volts * 1.06) for _ in _PHASES
        ]
        self._pf = [_Drift(rng, rng.uniform(0.96, 0.99), 0.002, 0.95, 1.0) for _ in _PHASES]
        self._freq = _Drift(rng, 60.0, 0.005, 59.9, 60.1)
        self._load = _Drift(rng, 1.0, 0.03, 0.5, 1.5)
        self._base_w = rng.uniform(2_000.0, 20_000.0)
        self._shares = [rng.uniform(0.9, 1.1) for _ in _PHASES]  # a fixed phase imbalance
        self._phf = rng.uniform(1_000.0, 60_000.0)
        self._qhfi = self._phf * rng.uniform(0.05, 0.15)
        self._phr = 0.0  # no generation behind these meters: export stays put
        self._qhfr = rng.uniform(0.0, 20.0)

    def payload(self, at: datetime) -> dict[str, object]:
        business = 0.6 + 0.4 * max(0.0, math.sin(math.pi * (_local_hour(at) - 7) / 14))
        total_w = self._base_w * business * self._load.step()
        p = [total_w * share / sum(self._shares) for share in self._shares]
        v = [d.step() for d in self._volts]
        pf = [d.step() for d in self._pf]
        s = [pi / fi for pi, fi in zip(p, pf, strict=True)]
        q = [math.sqrt(max(0.0, si * si - pi * pi)) for si, pi in zip(s, p, strict=True)]
        window_h = M160_PERIOD_S / 3600
        energy = sum(p) / 1000 * window_h
        self._phf += energy
        self._qhfi += sum(q) / 1000 * window_h
        resumo: dict[str, object] = {
            "timestamp": at.astimezone(BRASILIA).strftime("%d/%m/%Y %H:%M:%S")
        }
        resumo |= {f"V{x}": round(vx, 1) for x, vx in zip(_PHASES, v, strict=True)}
        resumo |= {f"I{x}": round(sx / vx, 2) for x, sx, vx in zip(_PHASES, s, v, strict=True)}
        for name, values in (("P", p), ("Q", q), ("S", s)):
            resumo |= {f"{name}{x}": round(val, 1) for x, val in zip(_PHASES, values, strict=True)}
            resumo[f"{name}t"] = round(sum(values), 1)
        resumo |= {f"FP{x}": round(f, 3) for x, f in zip(_PHASES, pf, strict=True)}
        resumo |= {
            "freq": round(self._freq.step(), 2),
            "energia_total": round(energy, 4),
            "consumo_phf": round(self._phf, 2),
            "consumo_phr": round(self._phr, 2),
            "consumo_qhfi": round(self._qhfi, 2),
            "consumo_qhfr": round(self._qhfr, 2),
            "total_leituras": M160_PERIOD_S,  # one sample a second
        }
        if self._spec.unwrapped:
            return resumo
        # As in the fixture: the envelope carries the window's start, Resumo its end.
        window_start = int(at.timestamp()) - M160_PERIOD_S
        return {"timestamp": window_start, "Resumo": resumo}


class _Inverter:
    """A three-phase string inverter following the sun, with clouds passing by."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, origin: datetime) -> None:
        self._rated_w = spec.nominal
        self._model = f"SUN2000-{round(spec.nominal / 1000)}KTL"
        self._serial = f"HV21{rng.randrange(10**8):08d}"
        self._cloud = _Drift(rng, 0.85, 0.04, 0.3, 1.0)
        self._pf = _Drift(rng, 0.998, 0.0005, 0.99, 1.0)
        self._volts = [_Drift(rng, 380.0, 0.8, 370.0, 390.0) for _ in _PHASES]
        self._freq = _Drift(rng, 60.0, 0.005, 59.9, 60.1)
        self._insulation = _Drift(rng, rng.uniform(2.5, 4.0), 0.02, 1.0, 6.0)
        self._strings_per_mppt = max(1, round(spec.nominal / (2 * 600 * 10)))  # ~10 A strings
        hour = min(max(_local_hour(origin), SUNRISE_H), SUNSET_H)
        # Start mid-day with what a typical (85 % clear) day would have yielded so far.
        sun_hours = 12 / math.pi * (1 - math.cos(math.pi * (hour - SUNRISE_H) / 12))
        self._day = origin.astimezone(BRASILIA).date()
        self._daily_kwh = self._rated_w / 1000 * 0.85 * sun_hours
        self._daily_min = (hour - SUNRISE_H) * 60
        days_in_service = rng.randrange(30, 1500)
        self._total_kwh = self._rated_w / 1000 * 4.5 * days_in_service + self._daily_kwh
        self._total_h = days_in_service * 11.5 + self._daily_min / 60

    def payload(self, at: datetime) -> dict[str, object]:
        self._roll_day(at.astimezone(BRASILIA).date())
        sun = daylight_factor(at)
        p = round(self._rated_w * sun * self._cloud.step())
        pf = self._pf.step() if p else 1.0
        q = round(p * math.tan(math.acos(pf)))
        s = round(math.hypot(p, q))
        volts = [d.step() for d in self._volts]
        amps = s / (math.sqrt(3) * sum(volts) / 3)
        self._accumulate(p)
        return {
            "timestamp": int(at.timestamp()),
            "status": {"state": "running" if p else "standby", "alarm": 0},
            "info": {"model": self._model, "serial": self._serial},
            "power": {
                "active_total": p,
                "reactive_total": q,
                "apparent_total": s,
                "power_factor": round(pf, 3),
                "frequency": round(self._freq.step(), 2),
            },
            "voltage": {
                f"phase_{x}-{y}": round(v, 1)
                for x, y, v in zip(_PHASES, ("b", "c", "a"), volts, strict=True)
            },
            "current": {
                f"phase_{x}": round(amps * (1 + 0.003 * i), 2) for i, x in enumerate(_PHASES)
            },
            "temperature": {"internal": round(24 + 26 * p / self._rated_w, 1)},
            "dc": self._dc(p, sun),
            "energy": {
                "daily_yield": round(self._daily_kwh, 2),
                "total_yield": round(self._total_kwh, 1),
                "total_running_time": int(self._total_h),
                "daily_running_time": int(self._daily_min),
            },
            "protection": {
                "insulation_resistance": round(self._insulation.step(), 1),
                "bus_voltage": round(735.0 if p else 0.0, 1),
            },
            "pid": {"status": "idle"},
        }

    def _roll_day(self, today: date) -> None:
        if today != self._day:  # the inverter's day counters restart at local midnight
            self._day, self._daily_kwh, self._daily_min = today, 0.0, 0.0

    def _accumulate(self, active_w: int) -> None:
        kwh = active_w / 1000 * INVERTER_PERIOD_S / 3600
        self._daily_kwh += kwh
        self._total_kwh += kwh
        if active_w:
            self._daily_min += INVERTER_PERIOD_S / 60
            self._total_h += INVERTER_PERIOD_S / 3600

    def _dc(self, active_w: int, sun: float) -> dict[str, object]:
        dc_w = round(active_w / _INVERTER_EFFICIENCY)
        mppt_v = 560.0 + 60.0 * sun if active_w else 0.0
        string_a = dc_w / (2 * mppt_v * self._strings_per_mppt) if active_w else 0.0
        return {
            "total_power": dc_w,
            "mppt1_voltage": round(mppt_v, 1),
            "mppt2_voltage": round(mppt_v * 0.995, 1),
            "string1_current": round(string_a, 2),
            "string2_current": round(string_a * 0.996, 2),
        }


# --- registering the equipment -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    type_ids: dict[str, str]  # type code -> tipos_equipamentos.id used
    created: int  # equipment rows inserted now
    existing: int  # equipment rows that were already there (left untouched)


_INSERT_TYPE = """
INSERT INTO tipos_equipamentos (id, codigo, nome)
SELECT $1, $2, $3
WHERE NOT EXISTS (SELECT 1 FROM tipos_equipamentos WHERE codigo = ANY($4::text[]))
ON CONFLICT DO NOTHING
"""
_TYPE_ID = """
SELECT id FROM tipos_equipamentos WHERE codigo = ANY($1::text[])
ORDER BY array_position($1::text[], codigo::text) LIMIT 1
"""
_INSERT_EQUIPMENT = """
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado, tipo_equipamento_id)
SELECT d.id, d.nome, d.topic, true, $4
FROM unnest($1::text[], $2::text[], $3::text[]) AS d(id, nome, topic)
ON CONFLICT DO NOTHING
RETURNING id
"""
_TYPE_NAMES: Final = {TYPE_M160: "Multimedidor M-160", TYPE_INVERTER: "Inversor solar"}


async def register_equipment(dsn: str, fleet: Fleet) -> Registration:
    """Migrate, then add the fleet's types and enabled equipment rows; safe to repeat."""
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
        async with conn.transaction():
            codes = dict.fromkeys(d.type_code for d in fleet.devices)  # only the types used
            type_ids = {code: await _type_id(conn, code) for code in codes}
            created = 0
            for code, type_id in type_ids.items():
                specs = [d for d in fleet.devices if d.type_code == code]
                columns = ([d.id for d in specs], [d.name for d in specs], [d.topic for d in specs])
                created += len(await conn.fetch(_INSERT_EQUIPMENT, *columns, type_id))
    finally:
        await conn.close()
    return Registration(type_ids, created, len(fleet.devices) - created)


async def _type_id(conn: asyncpg.Connection, code: str) -> str:
    aliases = list(TYPE_ALIASES[code])
    # An explicit id: a legacy table (char(26), ids made by Prisma) has no default.
    await conn.execute(_INSERT_TYPE, f"sim-{code.lower()}", code, _TYPE_NAMES[code], aliases)
    type_id: str = await conn.fetchval(_TYPE_ID, aliases)
    return type_id


# --- publishing --------------------------------------------------------------------------


@dataclass(slots=True)
class SimReport:
    published: int = 0  # acknowledged by the broker (QoS 1)
    per_family: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0
    first_at: datetime | None = None
    last_at: datetime | None = None

    @property
    def bad(self) -> int:
        return self.per_family[FAMILY_BAD]

    @property
    def rate(self) -> float:
        return self.published / self.seconds if self.seconds else 0.0

    def add(self, message: SimMessage) -> None:
        self.published += 1
        self.per_family[message.family] += 1
        self.first_at = self.first_at or message.at
        self.last_at = message.at

    def line(self) -> str:
        families = ", ".join(f"{name} {n}" for name, n in sorted(self.per_family.items()))
        span = f"; simulated {_iso(self.first_at)} .. {_iso(self.last_at)}" if self.last_at else ""
        return (
            f"simulate: {self.published} published and acknowledged, {self.bad} bad "
            f"({families or 'none'}) in {self.seconds:.2f} s, {self.rate:.1f} msg/s{span}"
        )


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
        if args.speedup < 0 or (args.count or 0) < 0 or (args.duration or 0) < 0:
            raise ValueError("--speedup, --count and --duration must not be negative")
        dsn = args.register
        if dsn == "":  # --register without a value
            dsn = env.get("DATABASE_URL") or None
            if dsn is None:
                raise ValueError("--register without a DSN needs DATABASE_URL")
        fleet = build_fleet(
            args.meters,
            args.inverters,
            args.seed,
            bad_ratio=args.bad_ratio,
            unwrapped_meters=args.unwrapped_meters,
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
    print(report.line())
    horizon = datetime.now(UTC) + timedelta(seconds=constants.FUTURE_TOLERANCE_S)
    if report.last_at is not None and report.last_at > horizon:
        print(
            f"simulate: warning: readings more than {constants.FUTURE_TOLERANCE_S} s ahead "
            "are rejected by the ingest; "
            "use an earlier --start",
            file=sys.stderr,
        )
    return constants.EXIT_OK
