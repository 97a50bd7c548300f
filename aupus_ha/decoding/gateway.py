"""The A-966 gateway family (DOMAIN v2, "A-966 gateway").

Why a family of its own: the A-966 (SSU, NBR 14522 reader) publishes pulse counts of a
15-minute bucket, not energies, and it says by itself when those counts cannot be
trusted. Its payload has no shape another family would recognise reliably (old
firmware sends `{}`), so it is chosen by the equipment: the type's category `Gateway`
(`categorias_equipamentos.nome` on the platform's database), never by the payload.

`{"NSU", "ver", "data": {"cdo", "phf", "phr", "sts", "qhfc", "qhfi", "qhrc", "qhri",
"frame"}, "time"}`; every field is read from `data.x`, then `x` (some firmware puts
them at the top level). One row per message and equipment:

* raw only — the row is kept with `energia_kwh` / `potencia_ativa_kw` NULL and quality
  `ruim` — when `sts` ≠ 1 (boot), `cdo` is missing (old firmware) or `NSU` = 1 (the
  post-boot dump of the whole downtime, flagged `_aupus_post_boot_dump`); also when
  `phf` or `phr` is missing (unknown, not zero);
* the glitch: `phf` > 100 and `phr` > 100 in one bucket is a pulse leaked from the
  reverse counter, so `phf` := 0 first, flagged `_aupus_glitch_phf` (the raw count
  stays in `dados`);
* `energia_kwh` = (phr − phf) × KD (KD = 0.048 kWh per pulse; positive = net
  generation), `potencia_ativa_kw` = `energia_kwh` × 4 (the bucket is 0.25 h);
* added to `dados` (3 decimals): `P_direto` = phf × KD / 0.25, `P_rev` = phr × KD /
  0.25, `Q_liquido` = ((qhfi + qhri) − (qhfc + qhrc)) × KD / 0.25 (a missing reactive
  count is 0), `FP_calc` = |P_direto − P_rev| / hypot(P_direto − P_rev, Q_liquido), 1
  when that apparent power is below 0.001 kVA; quality `bom`;
* `num_leituras` 1 and `timestamp_fim` = `timestamp_dados`, as the platform writes them.

Time: `ts`, then the A-966's own `time` (a string epoch), then `timestamp`, then the
arrival (`timestamps.payload_time`). Every field is read as the platform's `Number()`
reads it: a JSON number or a string holding one (`"1"` is 1). A count the computation
needs that is anything else rejects the message (`invalid_gateway`); one beyond ±1e15
or not finite is `number_out_of_range`. The type's `mqtt_schema` is not applied: the
quality is the rule above.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from aupus_ha import constants
from aupus_ha.decoding import timestamps
from aupus_ha.decoding.fields import (
    MAX_ABS_NUMBER,
    REASON_NUMBER_OUT_OF_RANGE,
    DecodeError,
    encode_dados,
)
from aupus_ha.pipeline.readings import Equipment, Reading

REASON_INVALID_GATEWAY: Final = "invalid_gateway"
GATEWAY_CATEGORY: Final = "Gateway"  # categorias_equipamentos.nome
KD_WH_PER_PULSE: Final = 48
KD_KWH_PER_PULSE: Final = KD_WH_PER_PULSE / 1000  # KD = 0.048 kWh per pulse
BUCKET_H: Final = 0.25  # a 15-minute bucket
GLITCH_PULSES: Final = 100  # above this in both counters: a leaked pulse (≈ 4.8 kWh)
MIN_APPARENT_KVA: Final = 0.001  # below: no load, FP_calc is 1
DERIVED_DECIMALS: Final = 3
FLAG_GLITCH: Final = "_aupus_glitch_phf"
FLAG_POST_BOOT: Final = "_aupus_post_boot_dump"
TIME_FIELD: Final = "time"

_DATA: Final = "data"
_REACTIVE_IN: Final = ("qhfi", "qhri")  # inductive quadrants (+)
_REACTIVE_OUT: Final = ("qhfc", "qhrc")  # capacitive quadrants (−)
_NUMBER_CHARS: Final = frozenset("0123456789+-.eE")
_KINDS: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "a boolean",
}


def is_gateway(equipment: Equipment) -> bool:
    """DOMAIN v2 family rule 2: the type's category is `Gateway` (as the platform compares)."""
    return equipment.type_category == GATEWAY_CATEGORY


class GatewayFamily:
    """One A-966 bucket → one row per equipment; see the module docstring for the rules."""

    name = "a966_gateway"

    def owns(self, equipment: Equipment) -> bool:
        return is_gateway(equipment)

    def matches(self, obj: dict[str, object]) -> bool:
        """The A-966 shape (tools and the simulator); the decoder routes by `owns`."""
        return "NSU" in obj or isinstance(obj.get(_DATA), dict)

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        when = timestamps.payload_time(obj, received_at, obj.get(TIME_FIELD, timestamps.MISSING))
        bucket = Bucket(obj)
        dados = dict(obj)
        if bucket.post_boot_dump():
            dados[FLAG_POST_BOOT] = True
        energy = bucket.energy() if bucket.trusted() else None
        if energy is not None:
            if energy.glitch:
                dados[FLAG_GLITCH] = True
            dados.update(energy.derived)
        return [
            Reading(
                equipamento_id=equipment.id,
                timestamp_dados=when.at,
                dados=encode_dados(when.annotate(dados)),
                qualidade=constants.QUALITY_BAD if energy is None else constants.QUALITY_GOOD,
                fonte=constants.SOURCE_MQTT,
                energia_kwh=None if energy is None else energy.kwh,
                potencia_ativa_kw=None if energy is None else energy.kwh / BUCKET_H,
                num_leituras=1,
                timestamp_fim=when.at,
                matchable=when.from_device,
            )
        ]


@dataclass(frozen=True, slots=True)
class Energy:
    """What a trusted bucket computes: the energy, whether the glitch rule fired, and
    the fields added to `dados`."""

    kwh: float
    glitch: bool
    derived: dict[str, float]


class Bucket:
    """The fields of one A-966 message, read `data.x` then `x`."""

    __slots__ = ("_data", "_obj")

    def __init__(self, obj: Mapping[str, object]) -> None:
        data = obj.get(_DATA)
        self._obj = obj
        self._data: Mapping[str, object] = data if isinstance(data, dict) else {}

    def field(self, key: str) -> object:
        value = self._data.get(key)
        return self._obj.get(key) if value is None else value

    def trusted(self) -> bool:
        """False for the raw-only cases: boot, old firmware, post-boot dump, no counts."""
        return (
            _is_one(self.field("sts"))
            and self.field("cdo") is not None
            and not self.post_boot_dump()
            and self.field("phf") is not None
            and self.field("phr") is not None
        )

    def post_boot_dump(self) -> bool:
        return _is_one(self.field("NSU"))

    def energy(self) -> Energy:
        """The energy and derived fields of a trusted bucket (glitch rule first)."""
        phf, phr = self.count("phf"), self.count("phr")
        glitch = phf > GLITCH_PULSES and phr > GLITCH_PULSES
        if glitch:
            phf = 0.0
        reactive = sum(self.count(k) for k in _REACTIVE_IN) - sum(
            self.count(k) for k in _REACTIVE_OUT
        )
        p_direto, p_rev, q_liquido = _kw(phf), _kw(phr), _kw(reactive)
        net = p_direto - p_rev
        apparent = math.hypot(net, q_liquido)
        power_factor = abs(net) / apparent if apparent >= MIN_APPARENT_KVA else 1.0
        derived = {
            "P_direto": _rounded(p_direto),
            "P_rev": _rounded(p_rev),
            "Q_liquido": _rounded(q_liquido),
            "FP_calc": _rounded(power_factor),
        }
        # pulses × 48 Wh / 1000: the division last gives the nearest double to the exact
        # product (71.376, where × 0.048 gives 71.37599999999999).
        return Energy((phr - phf) * KD_WH_PER_PULSE / 1000, glitch, derived)

    def count(self, key: str) -> float:
        """A pulse count as a bounded number; absent or null is 0 (`trusted` checks that
        the active counts are present)."""
        value = self.field(key)
        if value is None:
            return 0.0
        number = _as_number(value)
        if number is None:
            kind = _KINDS.get(type(value), type(value).__name__)
            raise DecodeError(REASON_INVALID_GATEWAY, f"{key} is {kind}, not a pulse count")
        if not (math.isfinite(number) and abs(number) <= MAX_ABS_NUMBER):
            raise DecodeError(
                REASON_NUMBER_OUT_OF_RANGE, f"{key} is {value!r}, beyond ±{MAX_ABS_NUMBER:g}"
            )
        return number


def _kw(pulses: float) -> float:
    """Mean power of the bucket, kW (kVAr for reactive pulses): pulses × KD / 0.25 h."""
    return pulses * KD_KWH_PER_PULSE / BUCKET_H


def _rounded(value: float) -> float:
    return round(value, DERIVED_DECIMALS) + 0.0  # + 0.0: never a "-0.0" in dados


def _as_number(value: object) -> float | None:
    """A JSON number, or a string holding one (not bool, not "nan"/"inf"), else None."""
    if type(value) is int or type(value) is float:
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text and len(text) <= 64 and _NUMBER_CHARS.issuperset(text):
            try:
                return float(text)
            except ValueError:
                return None
    return None


def _is_one(value: object) -> bool:
    return _as_number(value) == 1.0
