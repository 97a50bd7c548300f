"""The M-160 multimeter's 30-second summary (DOMAIN v2, "M-160 summary").

Why a module of its own: the family has rules that reach past one message. Its energy
comes from `consumo_phf`, a delta the firmware sometimes sends as the whole counter (the
window's first sample read from a stale snapshot); the correction needs the `phf` of the
equipment's PREVIOUS reading in device time. That reading may sit in another batch, be
stored already by another instance, or be decoded by a process that started later, so
the correction cannot be decided per message on arrival: the decoder only marks the
reading (`Reading.outlier_guard`) and `resolve_outliers` decides it inside the flush
transaction, from the batch itself and the equipment's stored row just before it. The
result is the same whichever instance flushes and however batches are cut, as long as
the previous reading is stored (or in the batch) by the time the outlier is flushed.

One row per message, as the platform's writer computes it, with its gaps fixed:

* the summary is the `Resumo` object (wrapped, LoRa firmware) or the payload itself (flat,
  TON/PD666); a payload with neither a `Resumo` object nor a top-level `Va` or
  `consumo_phf` is rejected (`m160_unknown_format`); `dados` is that summary, plus the
  time flags and `_consumo_phf_bruto` below;
* `energia_kwh` = `consumo_phf` if > 0, else `energia_total` if > 0, else
  `Pt/1000 × 30/3600`; with none of them NULL (the legacy wrote 0);
* `potencia_ativa_kw` = `Pt/1000` when `Pt` is present, else `energia_kwh / (30/3600)`;
* `num_leituras` = `total_leituras`, else 1; a `total_leituras` of 0 is 1 too (the
  legacy's `total_leituras || 1`: the row is one reading whatever the firmware counted);
* `timestamp_fim` = `timestamp_dados`;
* outlier guard: `consumo_phf` > 5 kWh (600 kW for 30 s: impossible on this meter) is
  replaced by `max(0, phf − previous phf)` (rounded to 6 decimals, far below the meter's
  resolution, so float noise never reaches `dados`), in `dados` and for the columns, and
  the raw value is kept as `_consumo_phf_bruto`. Without this message's `phf` or the
  previous one's, the window is unknown: `consumo_phf` is stored as null and the energy
  falls through to `energia_total`, then `Pt`;
* quality, never from the type's `mqtt_schema` (the production METER_M160 schema
  describes another firmware): no phase voltage > 0 → `ruim`; a current > 0 and a power
  (`Pa Pb Pc Pt`) > 0 → `bom`; otherwise `parcial` (energised, no load).

The fields a computation uses (`consumo_phf`, `energia_total`, `Pt`, `phf`,
`total_leituras`) must be JSON numbers when present (null counts as absent): anything
else rejects the message (`invalid_summary`), and a number beyond ±1e15 or not finite
`number_out_of_range`; `total_leituras` must be an integer in 0..2^31−1 (the column is an
`integer`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, TypeGuard

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.decoding import timestamps
from aupus_ha.decoding.fields import (
    MAX_ABS_NUMBER,
    REASON_INVALID_SUMMARY,
    REASON_NUMBER_OUT_OF_RANGE,
    DecodeError,
    encode_dados,
)
from aupus_ha.pipeline.readings import Equipment, Reading, ReadingKey

M160_TYPE_CODES: Final = frozenset({"M-160", "M160", "METER_M160"})
REASON_UNKNOWN_FORMAT: Final = "m160_unknown_format"
WINDOW_H: Final = 30 / 3600  # one summary covers 30 s
OUTLIER_KWH: Final = 5.0
RAW_CONSUMO_KEY: Final = "_consumo_phf_bruto"
DELTA_DECIMALS: Final = 6
INT32_MAX: Final = 2**31 - 1  # num_leituras is an `integer` column

_VOLTAGES: Final = ("Va", "Vb", "Vc")
_CURRENTS: Final = ("Ia", "Ib", "Ic")
_POWERS: Final = ("Pa", "Pb", "Pc", "Pt")
_FLAT_MARKERS: Final = ("Va", "consumo_phf")


def is_m160(equipment: Equipment) -> bool:
    """DOMAIN v2 family rule 1: the equipment's type code decides, not the payload."""
    return equipment.type_code in M160_TYPE_CODES


def looks_like_summary(obj: Mapping[str, object]) -> bool:
    """A payload in either M-160 form (`Resumo` object, or flat with `Va`/`consumo_phf`)."""
    return isinstance(obj.get("Resumo"), dict) or any(k in obj for k in _FLAT_MARKERS)


@dataclass(frozen=True, slots=True)
class Columns:
    """The computed columns of one summary row."""

    energia_kwh: float | None
    potencia_ativa_kw: float | None


class M160SummaryFamily:
    """One summary → one row per equipment; see the module docstring for the rules."""

    name = "m160_summary"

    def owns(self, equipment: Equipment) -> bool:
        return is_m160(equipment)

    def matches(self, obj: dict[str, object]) -> bool:
        return looks_like_summary(obj)

    def decode(
        self, obj: dict[str, object], equipment: Equipment, received_at: datetime
    ) -> list[Reading]:
        summary, family_time = summary_of(obj)
        when = timestamps.payload_time(obj, received_at, family_time)
        guard = _mark_outlier(summary)
        columns = columns_of(summary)
        return [
            Reading(
                equipamento_id=equipment.id,
                timestamp_dados=when.at,
                dados=encode_dados(when.annotate(summary)),
                qualidade=quality_of(summary),
                fonte=constants.SOURCE_MQTT,
                energia_kwh=columns.energia_kwh,
                potencia_ativa_kw=columns.potencia_ativa_kw,
                num_leituras=count_of(summary),
                timestamp_fim=when.at,
                matchable=when.from_device,
                outlier_guard=guard,
            )
        ]


def summary_of(obj: Mapping[str, object]) -> tuple[dict[str, object], object]:
    """(a copy of the summary, its own time field or MISSING); `m160_unknown_format`
    when the payload is in neither form."""
    resumo = obj.get("Resumo")
    if isinstance(resumo, dict):
        return dict(resumo), resumo.get("timestamp", timestamps.MISSING)
    if any(k in obj for k in _FLAT_MARKERS):
        return dict(obj), timestamps.MISSING  # its `timestamp` is the top-level source
    keys = ", ".join(sorted(obj)[:8]) or "none"
    detail = f"neither a Resumo object nor top-level Va/consumo_phf (keys: {keys})"
    raise DecodeError(REASON_UNKNOWN_FORMAT, detail)


def columns_of(summary: Mapping[str, object]) -> Columns:
    """`energia_kwh` and `potencia_ativa_kw` from the summary as it will be stored."""
    consumo = number(summary, "consumo_phf")
    total = number(summary, "energia_total")
    pt = number(summary, "Pt")
    energia: float | None
    if consumo is not None and consumo > 0:
        energia = consumo
    elif total is not None and total > 0:
        energia = total
    elif pt is not None:
        energia = pt / 1000 * WINDOW_H
    else:
        energia = None
    if pt is not None:
        return Columns(energia, pt / 1000)
    return Columns(energia, None if energia is None else energia / WINDOW_H)


def count_of(summary: Mapping[str, object]) -> int:
    """`total_leituras`, else 1 (0 is 1 too: see the module docstring)."""
    total = number(summary, "total_leituras")
    if total is None:
        return 1
    if not (total.is_integer() and 0 <= total <= INT32_MAX):
        raise DecodeError(REASON_INVALID_SUMMARY, f"total_leituras is not a count: {total!r}")
    return int(total) or 1


def quality_of(summary: Mapping[str, object]) -> str:
    if not _any_positive(summary, _VOLTAGES):
        return constants.QUALITY_BAD
    if _any_positive(summary, _CURRENTS) and _any_positive(summary, _POWERS):
        return constants.QUALITY_GOOD
    return constants.QUALITY_PARTIAL


def number(summary: Mapping[str, object], key: str) -> float | None:
    """A field a computation uses: None when absent or null, else a bounded number."""
    value = summary.get(key)
    if value is None:
        return None
    if not _is_number(value):
        raise DecodeError(REASON_INVALID_SUMMARY, f"{key} is {_kind(value)}, not a number")
    result = float(value)
    if not (math.isfinite(result) and abs(result) <= MAX_ABS_NUMBER):
        raise DecodeError(
            REASON_NUMBER_OUT_OF_RANGE, f"{key} is {value!r}, beyond ±{MAX_ABS_NUMBER:g}"
        )
    return result


def _mark_outlier(summary: dict[str, object]) -> bool:
    """Apply the guard's first half in place; True when the flush must resolve it.

    An outlier's `consumo_phf` becomes null (window unknown) with the raw value kept;
    the flush replaces the null with `phf − previous phf` when both are known.
    """
    consumo = number(summary, "consumo_phf")
    if consumo is None or consumo <= OUTLIER_KWH:
        return False
    phf = number(summary, "phf")
    summary[RAW_CONSUMO_KEY] = summary["consumo_phf"]
    summary["consumo_phf"] = None
    return phf is not None


def corrected_consumo(phf: float, previous_phf: float) -> float:
    """The window's energy from the counter: never negative (a counter reset)."""
    return round(max(0.0, phf - previous_phf), DELTA_DECIMALS)


# --- at flush time ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Previous:
    """The equipment's reading just before a guarded one: its time and `phf` (None: the
    reading had no usable `phf`)."""

    at: datetime
    phf: float | None


def previous_in_batch(readings: Sequence[Reading]) -> dict[int, Previous]:
    """For each guarded reading (by position), the reading of the same equipment just
    before it in device time among `readings` (the whole batch, before any split)."""
    guarded = [i for i, r in enumerate(readings) if r.outlier_guard and not r.is_rollup_sample]
    if not guarded:
        return {}
    wanted = {readings[i].equipamento_id for i in guarded}
    by_equipment: dict[str, list[Reading]] = {}
    for r in readings:
        if r.equipamento_id in wanted and not r.is_rollup_sample:
            by_equipment.setdefault(r.equipamento_id, []).append(r)
    found: dict[int, Previous] = {}
    for i in guarded:
        me = readings[i]
        before = [
            r
            for r in by_equipment[me.equipamento_id]
            if r.timestamp_dados < me.timestamp_dados
            # a reading timed by arrival is never its own previous (a redelivered copy)
            and (me.matchable or r.dados != me.dados)
        ]
        if before:
            last = max(before, key=lambda r: r.timestamp_dados)
            found[i] = Previous(last.timestamp_dados, phf_of(last.dados))
    return found


def later(a: Previous | None, b: Previous | None) -> Previous | None:
    """The closer of two candidates for "previous"; the stored one (`b`) on a tie, since
    a batch reading at a stored row's key is a duplicate the database keeps out."""
    if a is None:
        return b
    if b is None:
        return a
    return a if a.at > b.at else b


def resolve(reading: Reading, previous: Previous | None) -> Reading:
    """A guarded reading with its window decided: the corrected `consumo_phf` when both
    counters are known, else the reading as decoded (window unknown)."""
    if previous is None or previous.phf is None:
        return replace(reading, outlier_guard=False)
    summary = orjson.loads(reading.dados)
    phf = summary.get("phf")
    if not _is_number(phf):  # the decoder only marks readings with a phf
        return replace(reading, outlier_guard=False)
    summary["consumo_phf"] = corrected_consumo(float(phf), previous.phf)
    columns = columns_of(summary)
    return replace(
        reading,
        dados=encode_dados(summary),
        energia_kwh=columns.energia_kwh,
        potencia_ativa_kw=columns.potencia_ativa_kw,
        outlier_guard=False,
    )


async def resolve_outliers(
    conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
    previous_rows_sql: str,
    plain: list[Reading],
    in_batch: Mapping[ReadingKey, Previous],
) -> list[Reading]:
    """`plain` with every guarded reading decided, inside the flush transaction: its
    previous reading is the closer of the batch's (`in_batch`, from the whole batch
    before any split) and the equipment's stored row just before it
    (`summary_previous_rows`)."""
    guarded = [r for r in plain if r.outlier_guard]
    if not guarded:
        return plain
    rows = await conn.fetch(
        previous_rows_sql,
        [r.equipamento_id for r in guarded],
        [r.timestamp_dados for r in guarded],
    )
    candidates: dict[int, list[StoredRow]] = {}
    for row in rows:  # newest first per position
        stored_row = StoredRow(row["timestamp_dados"], row["phf"], row["bruto"])
        candidates.setdefault(row["pos"] - 1, []).append(stored_row)
    decided = {}
    for n, reading in enumerate(guarded):
        stored = stored_previous(reading, candidates.get(n, []))
        decided[id(reading)] = resolve(reading, later(in_batch.get(reading.key), stored))
    return [decided.get(id(r), r) for r in plain]


@dataclass(frozen=True, slots=True)
class StoredRow:
    """A stored row before a guarded reading: `phf` and `_consumo_phf_bruto` as text."""

    at: datetime
    phf: str | None
    bruto: str | None


def stored_previous(reading: Reading, rows: Sequence[StoredRow]) -> Previous | None:
    """The stored previous reading, newest first. A reading timed by arrival skips
    stored copies of ITSELF (same `phf`, same raw outlier): another instance stored the
    same message under its own, slightly earlier arrival, and 0 kWh against it would
    also make the two copies' dados differ, so content matching would store both."""
    mine = _copy_identity(reading) if not reading.matchable else None
    for row in rows:
        phf = parse_phf_text(row.phf)
        if mine is not None and (phf, parse_phf_text(row.bruto)) == mine:
            continue
        return Previous(row.at, phf)
    return None


def _copy_identity(reading: Reading) -> tuple[float | None, float | None]:
    summary = orjson.loads(reading.dados)
    return phf_of(reading.dados), _finite(summary.get(RAW_CONSUMO_KEY))


def _finite(value: object) -> float | None:
    return float(value) if _is_number(value) and math.isfinite(value) else None


def previous_by_key(readings: Sequence[Reading]) -> dict[ReadingKey, Previous]:
    """`previous_in_batch` keyed by the guarded readings' keys (a split batch reorders)."""
    return {readings[i].key: p for i, p in previous_in_batch(readings).items()}


def phf_of(dados: bytes | str | None) -> float | None:
    """`phf` at the top of a stored or decoded `dados`, when it is a finite number."""
    if dados is None:
        return None
    try:
        obj = orjson.loads(dados)
    except orjson.JSONDecodeError:
        return None
    value = obj.get("phf") if isinstance(obj, dict) else None
    return float(value) if _is_number(value) and math.isfinite(value) else None


def parse_phf_text(text: str | None) -> float | None:
    """A stored row's `dados->>'phf'` (a JSON number as text) as a finite float."""
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _any_positive(summary: Mapping[str, object], keys: tuple[str, ...]) -> bool:
    for key in keys:  # a plain loop: any() over a generator costs 3x here
        value = summary.get(key)
        if (type(value) is float or type(value) is int) and value > 0:
            return True
    return False


def _is_number(value: object) -> TypeGuard[int | float]:
    # type(), not isinstance: JSON true/false must not count as 1/0.
    return type(value) is float or type(value) is int


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )
