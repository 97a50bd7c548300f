"""The simulated fleet: which devices, in which proportions, and the messages they send.

A fleet is a tuple of `DeviceSpec` (the device models are in `simdevices.py`) and a seed;
`Fleet.messages` merges every device's stream in simulated-time order and replaces a
`bad_ratio` fraction of the messages by bad inputs the topic's family must reject. The
same seed, start and counts give byte-identical messages. See `simulate.py` for the
command and the proportions.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import orjson

from aupus_ha.lab.simdevices import (
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
)

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
