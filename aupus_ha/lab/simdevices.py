"""The simulated devices of `aupus-ha simulate`: what each one sends, in the DOMAIN v2 shapes.

Each class keeps one device's slowly wandering state and turns an instant into the
payload that device would publish then, field for field as the samples in
`tests/fixtures/` (made-up values, the real field names and order):

* `Meter`, an M-160 on a building's supply, in the two formats seen today: the flat
  TON/PD666 one (`m160_ton_flat.json`, the common one; reflashed units add `Freq`,
  `FPt`; units without NTP send `"sem_ntp"` or `"0"` as their time) and the `Resumo`
  wrapped one of the LoRa firmware (`m160_resumo.json`). `consumo_*` are the energy of
  the 30-s publish window (deltas), `phf` the cumulative imported kWh.
* `Inverter`, a three-phase string inverter on the TON firmware's Sungrow layout
  (`ton_inverter_sungrow.json`), following the sun with clouds passing by.
* `Gateway`, an A-966 gateway on a site with a solar plant, one message per 15-min
  bucket with the bucket's pulse counts (`a966_ssu_state.json`), and now and then a
  reboot (a post-boot dump with `NSU` 1, then a frame with `sts` 0) or a `phf` glitch.

Kept apart from the fleet (`simfleet.py`), the database side (`simstore.py`) and the
publishing and its report (`simulate.py`) so that each module stays one noun.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Final

from aupus_ha.decoding.timestamps import BRASILIA

M160_PERIOD_S: Final = 30
INVERTER_PERIOD_S: Final = 60
GATEWAY_PERIOD_S: Final = 900  # the A-966 reports 15-min buckets
GATEWAY_KD_KWH: Final = 0.048  # kWh per pulse (DOMAIN v2)
SUNRISE_H: Final = 6.0
SUNSET_H: Final = 18.0
# How a meter tells its time: NTP (Brasília text), or one of the two clockless forms.
CLOCK_NTP: Final = "ntp"
CLOCK_SEM_NTP: Final = "sem_ntp"
CLOCK_ZERO: Final = "0"
CLOCKS: Final = (CLOCK_NTP, CLOCK_SEM_NTP, CLOCK_ZERO)

_PHASES: Final = ("a", "b", "c")
_INVERTER_EFFICIENCY: Final = 0.978
_GATEWAY_VERSION: Final = "1.2.8.2509"
# Per 15-min frame: a reboot (dump, then sts 0) about once in 3 days, a glitch once a day.
_REBOOT_CHANCE: Final = 1 / 300
_GLITCH_CHANCE: Final = 1 / 100


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """What does not change about a device; its state lives in a fresh model per run."""

    id: str
    name: str
    topic: str
    family: str  # the simulator's family (simulate.FAMILY_*)
    type_code: str
    period_s: int
    phase_s: int
    nominal: float  # meter: phase voltage (V); inverter, gateway: rated AC power (W)
    wrapped: bool = False  # meter: the `Resumo` envelope (LoRa firmware)
    clock: str = CLOCK_NTP  # meter: how it tells time (CLOCKS)
    reflashed: bool = False  # flat meter: sends `Freq` and `FPt` (firmware of 2026-08)


def daylight_factor(at: datetime) -> float:
    """0 at night, rising to 1 at local noon (UTC−3), as a half sine between 6 h and 18 h."""
    hour = local_hour(at)
    if not SUNRISE_H < hour < SUNSET_H:
        return 0.0
    return math.sin(math.pi * (hour - SUNRISE_H) / (SUNSET_H - SUNRISE_H))


def local_hour(at: datetime) -> float:
    local = at.astimezone(BRASILIA)
    return local.hour + local.minute / 60 + local.second / 3600


def brazilian_text(at: datetime) -> str:
    """`DD/MM/YYYY HH:mm:ss` in Brasília time, the M-160's own time form."""
    return at.astimezone(BRASILIA).strftime("%d/%m/%Y %H:%M:%S")


class Drift:
    """A mean-reverting random walk: a value that wanders slowly around its set point."""

    __slots__ = ("_hi", "_lo", "_mean", "_rng", "_sigma", "value")

    def __init__(self, rng: random.Random, mean: float, sigma: float, lo: float, hi: float) -> None:
        self._rng, self._mean, self._sigma, self._lo, self._hi = rng, mean, sigma, lo, hi
        self.value = mean

    def step(self) -> float:
        pulled = self.value + 0.1 * (self._mean - self.value) + self._rng.gauss(0.0, self._sigma)
        self.value = min(self._hi, max(self._lo, pulled))
        return self.value


class Meter:
    """An M-160 on a building's supply: a load that follows business hours and wanders."""

    def __init__(self, spec: DeviceSpec, rng: random.Random) -> None:
        self._spec = spec
        volts = spec.nominal
        self._volts = [
            Drift(rng, volts, volts * 0.004, volts * 0.94, volts * 1.06) for _ in _PHASES
        ]
        self._pf = [Drift(rng, rng.uniform(0.96, 0.99), 0.002, 0.95, 1.0) for _ in _PHASES]
        self._freq = Drift(rng, 60.0, 0.005, 59.9, 60.1)
        self._load = Drift(rng, 1.0, 0.03, 0.5, 1.5)
        self._base_w = rng.uniform(2_000.0, 20_000.0)
        self._shares = [rng.uniform(0.9, 1.1) for _ in _PHASES]  # a fixed phase imbalance
        self._phf = rng.uniform(1_000.0, 60_000.0)

    def payload(self, at: datetime) -> dict[str, object]:
        business = 0.6 + 0.4 * max(0.0, math.sin(math.pi * (local_hour(at) - 7) / 14))
        total_w = self._base_w * business * self._load.step()
        p = [total_w * share / sum(self._shares) for share in self._shares]
        v = [d.step() for d in self._volts]
        pf = [d.step() for d in self._pf]
        s = [pi / fi for pi, fi in zip(p, pf, strict=True)]
        q = [math.sqrt(max(0.0, si * si - pi * pi)) for si, pi in zip(s, p, strict=True)]
        window_h = M160_PERIOD_S / 3600
        energy = sum(p) / 1000 * window_h  # the window's imported kWh (a delta)
        self._phf += energy
        fields = _Fields(v, [sx / vx for sx, vx in zip(s, v, strict=True)], p, q, s, pf)
        if self._spec.wrapped:
            return {"Resumo": self._resumo(at, fields, energy)}
        return self._flat(at, fields, energy, sum(q) / 1000 * window_h)

    def _flat(self, at: datetime, f: _Fields, energy: float, reactive: float) -> dict[str, object]:
        """The TON/PD666 format (`m160_ton_flat.json`): no `Pa..Pc`, no `energia_total`."""
        out: dict[str, object] = {
            "phf": round(self._phf, 2),
            "consumo_phf": round(energy, 4),
            "consumo_phr": 0.0,  # no generation behind these meters
            "consumo_qhf": round(reactive, 4),
            "consumo_qhr": 0.0,
        }
        out |= f.phase_values()
        out |= f.totals()
        if self._spec.reflashed:
            out |= {"Freq": round(self._freq.step(), 2), "FPt": f.total_pf()}
        out["timestamp"] = self._time_field(at)
        return out

    def _resumo(self, at: datetime, f: _Fields, energy: float) -> dict[str, object]:
        """The LoRa firmware's summary (`m160_resumo.json`), one sample a second."""
        out: dict[str, object] = {"timestamp": brazilian_text(at)}
        out |= {k: v for k, v in f.phase_values().items() if not k.startswith("FP")}
        out |= {f"P{x}": round(px, 1) for x, px in zip(_PHASES, f.p, strict=True)}
        out |= f.totals()
        out |= {k: v for k, v in f.phase_values().items() if k.startswith("FP")}
        out |= {
            "phf": round(self._phf, 2),
            "consumo_phf": round(energy, 4),
            "consumo_phr": 0.0,
            "energia_total": round(energy, 4),
            "total_leituras": M160_PERIOD_S,
        }
        return out

    def _time_field(self, at: datetime) -> str:
        return brazilian_text(at) if self._spec.clock == CLOCK_NTP else self._spec.clock


@dataclass(frozen=True, slots=True)
class _Fields:
    """One window's electrical values, per phase (lists of three)."""

    v: list[float]
    i: list[float]
    p: list[float]
    q: list[float]
    s: list[float]
    pf: list[float]

    def phase_values(self) -> dict[str, object]:
        out: dict[str, object] = {
            f"V{x}": round(vx, 1) for x, vx in zip(_PHASES, self.v, strict=True)
        }
        out |= {f"I{x}": round(ix, 2) for x, ix in zip(_PHASES, self.i, strict=True)}
        out |= {f"FP{x}": round(fx, 3) for x, fx in zip(_PHASES, self.pf, strict=True)}
        return out

    def totals(self) -> dict[str, object]:
        return {
            "Pt": round(sum(self.p), 1),
            "Qt": round(sum(self.q), 1),
            "St": round(sum(self.s), 1),
        }

    def total_pf(self) -> float:
        return round(sum(self.p) / sum(self.s), 3) if sum(self.s) else 1.0


class Inverter:
    """A three-phase string inverter (TON firmware, Sungrow registers) following the sun."""

    def __init__(self, spec: DeviceSpec, rng: random.Random, origin: datetime) -> None:
        self._rated_w = spec.nominal
        self._cloud = Drift(rng, 0.85, 0.04, 0.3, 1.0)
        self._pf = Drift(rng, 0.998, 0.0005, 0.99, 1.0)
        self._volts = [Drift(rng, 380.0, 0.8, 370.0, 390.0) for _ in _PHASES]
        self._freq = Drift(rng, 60.0, 0.005, 59.9, 60.1)
        self._insulation = Drift(rng, rng.uniform(2000.0, 4000.0), 20.0, 1000.0, 6000.0)
        self._strings_per_mppt = max(1, round(spec.nominal / (3 * 700 * 10)))  # ~10 A strings
        hour = min(max(local_hour(origin), SUNRISE_H), SUNSET_H)
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
            "inverter_id": 1,
            "samples": 6,  # the TON firmware averages six register reads a minute
            "info": {"device_type": "e2f", "nominal_power": self._rated_w / 1000, "output_type": 2},
            "energy": self._energy(s),
            "temperature": {"internal": round(24 + 26 * p / self._rated_w, 1)},
            "dc": self._dc(p, sun),
            "voltage": {
                f"phase_{x}-{y}": round(v, 1)
                for x, y, v in zip(_PHASES, ("b", "c", "a"), volts, strict=True)
            },
            "current": {
                f"phase_{x}": round(amps * (1 + 0.003 * i), 2) for i, x in enumerate(_PHASES)
            },
            "power": {
                "active_total": p,
                "reactive_total": q,
                "apparent_total": s,
                "power_factor": round(pf, 3),
                "frequency": round(self._freq.step(), 2),
            },
            "status": {"work_state": 0, "work_state_text": "Run"}
            if p
            else {"work_state": 32768, "work_state_text": "Stop"},
            "protection": {
                "insulation_resistance": round(self._insulation.step()),
                "bus_voltage": round(748.0 if p else 0.0, 1),
            },
            "regulation": {"nominal_reactive_power": round(self._rated_w * 0.6 / 1000, 1)},
            "pid": {"work_state": 0, "alarm_code": 0},
        }

    def _energy(self, apparent_w: int) -> dict[str, object]:
        return {
            "daily_yield": round(self._daily_kwh, 1),
            "total_yield": round(self._total_kwh, 1),
            "total_running_time": int(self._total_h),
            "daily_running_time": int(self._daily_min),
            "Potencia Aparente1": apparent_w,
            "Potencia Aparente2": 0,
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
        mppt_v = 700.0 + 50.0 * sun if active_w else 0.0
        string_a = dc_w / (3 * mppt_v * self._strings_per_mppt) if active_w else 0.0
        out: dict[str, object] = {
            f"mppt{n}_voltage": round(mppt_v * (1 - 0.003 * n), 1) for n in (1, 2, 3)
        }
        out |= {f"string{n}_current": round(string_a * (1 - 0.002 * n), 2) for n in (1, 2, 3, 4)}
        out["total_power"] = dc_w
        return out


class Gateway:
    """An A-966 gateway: the site's pulse counts per 15-min bucket, a plant behind it.

    `phf` counts imported pulses, `phr` exported ones (KD = 0.048 kWh each); `NSU` is the
    frame number since the last boot. After a reboot the gateway first dumps what it
    counted while down (`NSU` 1, one large bucket), then sends one frame before the meter
    link is up (`sts` 0). A glitch frame carries a spurious `phf` above 100 beside a real
    `phr` above 100.
    """

    def __init__(self, spec: DeviceSpec, rng: random.Random) -> None:
        self._rng = rng
        self._plant_w = spec.nominal
        self._load_w = Drift(rng, spec.nominal * 0.25, spec.nominal * 0.01, 0.0, spec.nominal)
        self._cloud = Drift(rng, 0.85, 0.04, 0.3, 1.0)
        self._nsu = rng.randrange(2, 500)
        self._pending: list[str] = []  # the frames still due after a reboot
        self._frame = rng.randrange(2**16)

    def payload(self, at: datetime) -> dict[str, object]:
        """The frame sent at `at`, the end of the bucket it reports."""
        bucket_start = at - timedelta(seconds=at.timestamp() % GATEWAY_PERIOD_S)
        bucket_start -= timedelta(seconds=GATEWAY_PERIOD_S)
        phf, phr, qhfc = self._pulses(bucket_start)
        if not self._pending and self._rng.random() < _REBOOT_CHANCE:
            self._pending, self._nsu = ["dump", "boot"], 0
        kind = self._pending.pop(0) if self._pending else "normal"
        self._nsu += 1
        sts = 0 if kind == "boot" else 1
        if kind == "dump":  # what was counted while the link was down: hours of export
            phr *= self._rng.randrange(20, 40)
        elif kind == "boot":
            phf = phr = qhfc = 0
        elif phr > 100 and self._rng.random() < _GLITCH_CHANCE:
            phf = self._rng.randrange(101, 600)
        data = {
            "cdo": "15",
            "phf": phf,
            "phr": phr,
            "sts": sts,
            "qhfc": qhfc,
            "qhfi": 0,
            "qhrc": 0,
            "qhri": 0,
            "frame": "" if kind == "boot" else self._frame_hex(),
        }
        return {
            "NSU": self._nsu,
            "ver": _GATEWAY_VERSION,
            "data": data,
            "time": str(int(bucket_start.timestamp())),
        }

    def _pulses(self, bucket_start: datetime) -> tuple[int, int, int]:
        """(imported, exported, reactive) pulses of the bucket: plant output minus the load."""
        middle = bucket_start + timedelta(seconds=GATEWAY_PERIOD_S / 2)
        net_w = self._plant_w * daylight_factor(middle) * self._cloud.step() - self._load_w.step()
        pulses = round(abs(net_w) / 1000 * 0.25 / GATEWAY_KD_KWH)
        reactive = round(self._load_w.value * 0.1 / 1000 * 0.25 / GATEWAY_KD_KWH)
        return (0, pulses, reactive) if net_w >= 0 else (pulses, 0, reactive)

    def _frame_hex(self) -> str:
        self._frame = (self._frame + 1) % 2**16
        return f"00 90 a2 fc 05 04 00 {self._frame >> 8:02x} {self._frame & 0xFF:02x}"
