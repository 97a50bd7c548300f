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

Beware: the ingest times readings more than 15 minutes ahead of their arrival by the
arrival instead (`FUTURE_TOLERANCE_S`); with a large speedup, start in the past. Readings
timed by arrival land on a legacy database's second-precision key: at a speedup above
30, two summaries of one clockless meter can share a second, and only one is stored.
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import load_dotenv_file, mask_url
from aupus_ha.migrate import apply_migrations
from aupus_ha.publisher import Publisher
from aupus_ha.simdevices import (
    CLOCK_NTP,
    CLOCK_SEM_NTP,
    CLOCK_ZERO,
    GATEWAY_PERIOD_S,
    INVERTER_PERIOD_S,
    M160_PERIOD_S,
    DeviceSpec,
    Gateway,
    Inverter,
    Meter,
    daylight_factor,
)
from aupus_ha.timestamps import TimestampError, parse_timestamp

__all__ = [
    "FAMILIES",
    "DeviceSpec",
    "Fleet",
    "SimMessage",
    "build_fleet",
    "daylight_factor",
    "register_equipment",
    "run_simulation",
]

# The simulator's families: one per device format (the summary's rows).
FAMILY_M160_FLAT: Final = "m160_flat"
FAMILY_M160_WRAPPED: Final = "m160_resumo"
FAMILY_INVERTER: Final = "inverter"
FAMILY_GATEWAY: Final = "a966_gateway"
FAMILIES: Final = (FAMILY_M160_FLAT, FAMILY_M160_WRAPPED, FAMILY_INVERTER, FAMILY_GATEWAY)
METER_FAMILIES: Final = (FAMILY_M160_FLAT, FAMILY_M160_WRAPPED)
FAMILY_LABELS: Final = {
    FAMILY_M160_FLAT: "M-160 flat (TON/PD666)",
    FAMILY_M160_WRAPPED: "M-160 Resumo (LoRa)",
    FAMILY_INVERTER: "inverter (TON Sungrow)",
    FAMILY_GATEWAY: "A-966 gateway",
}
TYPE_M160: Final = "M-160"
TYPE_INVERTER: Final = "INVERSOR"
TYPE_GATEWAY: Final = "SSU_A966"
GATEWAY_CATEGORY: Final = "Gateway"  # DOMAIN v2: the A-966 family is told by this category
# Codes that already mean each type on an existing database (DOMAIN.md): reused, not doubled.
TYPE_ALIASES: Final = {
    TYPE_M160: ("M-160", "M160", "METER_M160"),
    TYPE_INVERTER: ("INVERSOR",),
    TYPE_GATEWAY: ("SSU_A966", "A966", "A-966"),
}
DEFAULT_BROKER: Final = "mqtt://127.0.0.1:1883"
SETTLE_POLL_S: Final = 0.5
SETTLE_STABLE_POLLS: Final = 4  # unchanged for 2 s: longer than any flush interval in use

_RATED_KW: Final = (8, 12, 20, 30, 36, 50, 60, 75, 110)
_PLANT_KW: Final = (150, 300, 500, 1000)


def _epoch(at: datetime) -> int:
    return int(at.timestamp())


# One per line of fixtures/bad_inputs.txt, with the families whose equipment must reject it
# (a `Resumo` string on a gateway's topic, say, is a raw gateway row, not a reject);
# `n` makes every occurrence a distinct payload.
_ALL: Final = FAMILIES
BAD_INPUTS: Final[dict[str, tuple[tuple[str, ...], Callable[[int, datetime], bytes]]]] = {
    "not_json": (_ALL, lambda n, at: f"not json at all #{n}".encode()),
    "array": (_ALL, lambda n, at: orjson.dumps([1, 2, 3, n])),
    "not_utf8": (_ALL, lambda n, at: b"\xff\xfe\x00garbage" + str(n).encode()),
    "resumo_not_object": (
        METER_FAMILIES,
        lambda n, at: orjson.dumps({"Resumo": "should be an object", "seq": n}),
    ),
    "number_out_of_range": (
        (FAMILY_INVERTER,),
        lambda n, at: orjson.dumps(
            {"timestamp": _epoch(at), "power": {"active_total": 1e308, "reactive_total": n}}
        ),
    ),
    "inverter_overflow": (
        (FAMILY_INVERTER,),
        lambda n, at: orjson.dumps(
            {
                "timestamp": _epoch(at),
                "energy": {"total_yield": 4294967000},
                "power": {"active_total": 41250, "reactive_total": n},
            }
        ),
    ),
}


# --- the fleet ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimMessage:
    """One message to publish, with what the ingest should make of it."""

    topic: str
    payload: bytes
    family: str  # one of FAMILIES (the device's), bad inputs included
    device_id: str
    at: datetime  # simulated send time (UTC)
    # The reading's own time; None for a bad input and for a device without a clock
    # (the ingest uses the arrival time).
    timestamp: datetime | None
    bad_kind: str | None = None

    @property
    def timed_by_arrival(self) -> bool:
        return self.bad_kind is None and self.timestamp is None


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
                kinds = [k for k, (fams, _) in BAD_INPUTS.items() if message.family in fams]
                yield _spoil(message, bad_rng.choice(kinds), seq)
            else:
                yield message

    def by_family(self) -> dict[str, list[DeviceSpec]]:
        return {f: [d for d in self.devices if d.family == f] for f in FAMILIES}


def default_wrapped(meters: int) -> int:
    """About a quarter of the meters still wrap their summary in `Resumo` (LoRa firmware)."""
    return (meters + 2) // 4


def default_clockless(flat_meters: int) -> int:
    """About one flat meter in five runs without NTP."""
    return (flat_meters + 3) // 5


def build_fleet(
    meters: int,
    inverters: int,
    seed: int = 1,
    *,
    gateways: int = 0,
    wrapped_meters: int | None = None,
    clockless_meters: int | None = None,
    bad_ratio: float = 0.0,
    topic_prefix: str = "aupus/sim",
) -> Fleet:
    """`meters` M-160s (`m160-0001`…), `inverters` (`inv-…`) and A-966 `gateways` (`a966-…`).

    The first `clockless_meters` flat meters have no NTP (alternately `"sem_ntp"` and
    `"0"`), the last `wrapped_meters` meters use `Resumo`; None takes the defaults.
    """
    wrapped = default_wrapped(meters) if wrapped_meters is None else wrapped_meters
    flat = meters - wrapped
    clockless = default_clockless(flat) if clockless_meters is None else clockless_meters
    if min(meters, inverters, gateways, wrapped, clockless) < 0 or wrapped > meters:
        raise ValueError("device counts must be >= 0 and wrapped meters <= meters")
    if clockless > flat:
        raise ValueError("clockless meters must be flat ones: at most meters - wrapped meters")
    if not 0.0 <= bad_ratio <= 1.0:
        raise ValueError("bad_ratio must be between 0 and 1")
    rng = random.Random(seed)
    specs = [_meter(n, rng, topic_prefix, flat, clockless) for n in range(1, meters + 1)]
    specs += [_inverter(n, rng, topic_prefix) for n in range(1, inverters + 1)]
    specs += [_gateway(n, rng, topic_prefix) for n in range(1, gateways + 1)]
    return Fleet(tuple(specs), seed, bad_ratio)


def _meter(n: int, rng: random.Random, prefix: str, flat: int, clockless: int) -> DeviceSpec:
    wrapped = n > flat
    clock = CLOCK_NTP if wrapped or n > clockless else (CLOCK_SEM_NTP, CLOCK_ZERO)[(n - 1) % 2]
    return DeviceSpec(
        id=f"m160-{n:04d}",
        name=f"M-160 simulado {n:04d}",
        topic=f"{prefix}/m160/{n:04d}",
        family=FAMILY_M160_WRAPPED if wrapped else FAMILY_M160_FLAT,
        type_code=TYPE_M160,
        period_s=M160_PERIOD_S,
        phase_s=rng.randrange(M160_PERIOD_S),
        nominal=rng.choice((127.0, 220.0)),
        wrapped=wrapped,
        clock=clock,
        reflashed=not wrapped and n % 3 == 0,  # some units already send Freq and FPt
    )


def _inverter(n: int, rng: random.Random, prefix: str) -> DeviceSpec:
    return DeviceSpec(
        id=f"inv-{n:04d}",
        name=f"Inversor simulado {n:04d}",
        topic=f"{prefix}/inverter/{n:04d}",
        family=FAMILY_INVERTER,
        type_code=TYPE_INVERTER,
        period_s=INVERTER_PERIOD_S,
        phase_s=rng.randrange(INVERTER_PERIOD_S),
        nominal=rng.choice(_RATED_KW) * 1000.0,
    )


def _gateway(n: int, rng: random.Random, prefix: str) -> DeviceSpec:
    return DeviceSpec(
        id=f"a966-{n:04d}",
        name=f"Gateway A-966 simulado {n:04d}",
        topic=f"{prefix}/site{n:04d}/A966/SSU/state",
        family=FAMILY_GATEWAY,
        type_code=TYPE_GATEWAY,
        period_s=GATEWAY_PERIOD_S,
        phase_s=rng.randrange(5, 60),  # a few seconds after its bucket closes
        nominal=rng.choice(_PLANT_KW) * 1000.0,
    )


def whole_second(at: datetime) -> datetime:
    if at.utcoffset() is None:
        raise ValueError("the simulation start must be timezone-aware")
    return at.astimezone(UTC).replace(microsecond=0)


def _device_stream(spec: DeviceSpec, seed: int, origin: datetime) -> Iterator[SimMessage]:
    rng = random.Random(f"{seed}/{spec.id}")
    device: Meter | Inverter | Gateway
    step = timedelta(seconds=spec.period_s)
    at = origin + timedelta(seconds=spec.phase_s)
    if spec.family == FAMILY_INVERTER:
        device = Inverter(spec, rng, origin)
    elif spec.family == FAMILY_GATEWAY:
        device = Gateway(spec, rng)
        into_bucket = _epoch(origin) % spec.period_s
        at += timedelta(seconds=(spec.period_s - into_bucket) % spec.period_s)
    else:
        device = Meter(spec, rng)
    while True:
        payload = device.payload(at)
        own_time = _own_time(spec, at)
        yield SimMessage(spec.topic, orjson.dumps(payload), spec.family, spec.id, at, own_time)
        at += step


def _own_time(spec: DeviceSpec, at: datetime) -> datetime | None:
    """The instant the reading carries: None without a clock, a gateway's bucket start."""
    if spec.clock != CLOCK_NTP:
        return None
    if spec.family == FAMILY_GATEWAY:
        return at - timedelta(seconds=_epoch(at) % spec.period_s + spec.period_s)
    return at


def _spoil(message: SimMessage, kind: str, seq: int) -> SimMessage:
    payload = BAD_INPUTS[kind][1](seq, message.at)
    return SimMessage(
        message.topic, payload, message.family, message.device_id, message.at, None, kind
    )


# --- registering the equipment -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Registration:
    type_ids: dict[str, str]  # type code -> tipos_equipamentos.id used
    created: int  # equipment rows inserted now
    existing: int  # equipment rows that were already there (left untouched)
    # The category name the gateway type has now; None: the database has no categories
    # (then the ingest cannot tell a gateway from its equipment).
    gateway_category: str | None = None


_HAS_CATEGORIES = """
SELECT to_regclass('categorias_equipamentos') IS NOT NULL AND EXISTS (
    SELECT 1 FROM information_schema.columns
    WHERE table_schema = current_schema() AND table_name = 'tipos_equipamentos'
      AND column_name = 'categoria_id')
"""
# Timestamp columns a table has: a legacy (Prisma) table may need them filled by the writer.
_STAMP_COLUMNS = """
SELECT column_name::text FROM information_schema.columns
WHERE table_schema = current_schema() AND table_name = $1
  AND column_name IN ('created_at', 'updated_at')
ORDER BY column_name
"""
_INSERT_TYPE = """
INSERT INTO tipos_equipamentos (id, codigo, nome{stamps})
SELECT $1::text, $2::text, $3::text{nows}
WHERE NOT EXISTS (SELECT 1 FROM tipos_equipamentos WHERE codigo = ANY($4::text[]))
ON CONFLICT DO NOTHING
"""
_TYPE_ID = """
SELECT id::text FROM tipos_equipamentos WHERE codigo = ANY($1::text[])
ORDER BY array_position($1::text[], codigo::text) LIMIT 1
"""
_CATEGORY_ID = "SELECT id FROM categorias_equipamentos WHERE nome = $1::text ORDER BY id LIMIT 1"
_INSERT_CATEGORY = """
INSERT INTO categorias_equipamentos (id, nome{stamps})
SELECT $1::text, $2::text{nows}
WHERE NOT EXISTS (SELECT 1 FROM categorias_equipamentos WHERE nome = $2::text)
ON CONFLICT DO NOTHING
"""
_SET_TYPE_CATEGORY = """
UPDATE tipos_equipamentos SET categoria_id = $1 WHERE id = $2 AND categoria_id IS NULL
"""
_TYPE_CATEGORY = """
SELECT c.nome::text FROM tipos_equipamentos t
JOIN categorias_equipamentos c ON c.id = t.categoria_id
WHERE t.id = $1
"""
_INSERT_EQUIPMENT = """
INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado, tipo_equipamento_id{stamps})
SELECT d.id, d.nome, d.topic, true, $4{nows}
FROM unnest($1::text[], $2::text[], $3::text[]) AS d(id, nome, topic)
ON CONFLICT DO NOTHING
RETURNING id
"""
_TYPE_NAMES: Final = {
    TYPE_M160: "Multimedidor M-160",
    TYPE_INVERTER: "Inversor solar",
    TYPE_GATEWAY: "Gateway A-966 (SSU)",
}


async def register_equipment(dsn: str, fleet: Fleet) -> Registration:
    """Migrate, then add the fleet's types and enabled equipment rows; safe to repeat.

    The gateway type gets the category `Gateway` when the database has categories
    (a legacy one does; a fresh one once its migrations add them); without, it is
    registered all the same.
    """
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"})
    try:
        await apply_migrations(conn)
        async with conn.transaction():
            codes = dict.fromkeys(d.type_code for d in fleet.devices)  # only the types used
            type_ids = {code: await _type_id(conn, code) for code in codes}
            category = None
            if TYPE_GATEWAY in type_ids and await conn.fetchval(_HAS_CATEGORIES):
                category = await _categorise_gateway(conn, type_ids[TYPE_GATEWAY])
            created = 0
            sql = await _with_stamps(conn, _INSERT_EQUIPMENT, "equipamentos")
            for code, type_id in type_ids.items():
                specs = [d for d in fleet.devices if d.type_code == code]
                columns = ([d.id for d in specs], [d.name for d in specs], [d.topic for d in specs])
                created += len(await conn.fetch(sql, *columns, type_id))
    finally:
        await conn.close()
    return Registration(type_ids, created, len(fleet.devices) - created, category)


async def _with_stamps(conn: asyncpg.Connection, sql: str, table: str) -> str:
    """`sql` with the table's created_at/updated_at filled by now(), where it has them."""
    stamps = [r[0] for r in await conn.fetch(_STAMP_COLUMNS, table)]
    return sql.format(stamps="".join(f", {c}" for c in stamps), nows=", now()" * len(stamps))


async def _type_id(conn: asyncpg.Connection, code: str) -> str:
    aliases = list(TYPE_ALIASES[code])
    # An explicit id: a legacy table (char(26), ids made by Prisma) has no default.
    sql = await _with_stamps(conn, _INSERT_TYPE, "tipos_equipamentos")
    await conn.execute(sql, f"sim-{code.lower()}", code, _TYPE_NAMES[code], aliases)
    type_id: str = await conn.fetchval(_TYPE_ID, aliases)
    return type_id


async def _categorise_gateway(conn: asyncpg.Connection, type_id: str) -> str | None:
    """Put the gateway type in the `Gateway` category (kept if it already has one)."""
    sql = await _with_stamps(conn, _INSERT_CATEGORY, "categorias_equipamentos")
    await conn.execute(sql, "sim-categoria-gateway", GATEWAY_CATEGORY)
    category_id = await conn.fetchval(_CATEGORY_ID, GATEWAY_CATEGORY)
    await conn.execute(_SET_TYPE_CATEGORY, category_id, type_id)
    name: str | None = await conn.fetchval(_TYPE_CATEGORY, type_id)
    return name


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

    def stored_part(self) -> tuple[int, int, int, int] | None:
        if None in (self.stored, self.with_energy, self.by_arrival, self.rejected):
            return None
        return (self.stored or 0, self.with_energy or 0, self.by_arrival or 0, self.rejected or 0)


_STORED_BY_FAMILY = """
SELECT f.family, count(*) AS stored, count(d.energia_kwh) AS with_energy,
       count(*) FILTER (WHERE d.dados ? '_timestamp_motivo') AS by_arrival
FROM unnest($1::text[], $2::text[]) AS f(id, family)
JOIN equipamentos_dados d ON d.equipamento_id = f.id
WHERE $3::timestamptz IS NULL OR d.created_at >= $3::timestamptz
GROUP BY f.family
"""
_REJECTED_BY_FAMILY = """
SELECT f.family, count(*) AS rejected
FROM unnest($1::text[], $2::text[]) AS f(topic, family)
JOIN ingest_rejects r ON r.topic = f.topic
WHERE $3::timestamptz IS NULL OR r.received_at >= $3::timestamptz
GROUP BY f.family
"""


async def read_back(
    conn: asyncpg.Connection, fleet: Fleet, since: datetime | None
) -> dict[str, tuple[int, int, int, int]]:
    """Per family: (stored, with energy, timed by arrival, rejected) since `since`.

    `conn` should run its session in UTC: a legacy `created_at` (timestamp without time
    zone, UTC wall time) is compared with `since` in the session's zone.
    """
    ids = [d.id for d in fleet.devices]
    topics = [d.topic for d in fleet.devices]
    families = [d.family for d in fleet.devices]
    stored = {r["family"]: r for r in await conn.fetch(_STORED_BY_FAMILY, ids, families, since)}
    rejected = {
        r["family"]: r["rejected"]
        for r in await conn.fetch(_REJECTED_BY_FAMILY, topics, families, since)
    }
    out = {}
    for family in FAMILIES:
        row = stored.get(family)
        counts = (row["stored"], row["with_energy"], row["by_arrival"]) if row else (0, 0, 0)
        out[family] = (*counts, rejected.get(family, 0))
    return out


async def settle_and_read_back(
    dsn: str, fleet: Fleet, since: datetime | None, timeout: float
) -> dict[str, tuple[int, int, int, int]]:
    """Read back once the figures stop moving (the ingest has flushed), or at `timeout`."""
    deadline = time.monotonic() + timeout
    conn = await asyncpg.connect(dsn, server_settings={"timezone": "UTC"}, timeout=10)
    try:
        last, stable = await read_back(conn, fleet, since), 0
        while stable < SETTLE_STABLE_POLLS and time.monotonic() < deadline:
            await asyncio.sleep(SETTLE_POLL_S)
            now = await read_back(conn, fleet, since)
            stable = stable + 1 if now == last else 0
            last = now
        return last
    finally:
        await conn.close()


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

    def counts(
        self, stored: Mapping[str, tuple[int, int, int, int]] | None = None
    ) -> dict[str, FamilyCounts]:
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

    def summary(self, stored: Mapping[str, tuple[int, int, int, int]] | None = None) -> str:
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
