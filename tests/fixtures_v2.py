"""Every shared fixture as messages to publish and the rows DOMAIN.md v2 predicts for them.

Written from DOMAIN.md v2 alone: each expected value below is computed by hand from the
DOMAIN rule named beside it (the arithmetic is in the comment), never copied from what
the product stores. Used by tests/integration/test_fixtures_v2.py (decode -> flush in
process) and tests/acceptance/test_fixtures_v2.py (a two-instance cluster with a kill -9),
on the fresh schema and on the legacy one (tests/legacy_schema.py).

Each fixture file (each line of clockless.txt, each line of bad_inputs.txt) has its own
equipment, so no two of them share a key: m160_resumo.json, m160_ton_flat.json and
ton_m160_sd_buffer_ts.json all denote 2026-11-29T00:00:30Z.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Final

import asyncpg

from tests.legacy_schema import GATEWAY_CATEGORY, cuid, ensure_type, register_equipment

FIXTURES: Final = Path(__file__).resolve().parent / "fixtures"


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


SKIP: Final = _Marker("SKIP")  # DOMAIN says nothing: not checked
ABSENT: Final = _Marker("ABSENT")  # the key must not be in dados
UNFLAGGED: Final = _Marker("UNFLAGGED")  # a flag: absent, false or null
FLAGGED: Final = _Marker("FLAGGED")  # a flag: present and truthy
ARRIVAL: Final = _Marker("ARRIVAL")  # timed by the arrival time (DOMAIN "Time")
ARRIVAL_MINUTE: Final = _Marker("ARRIVAL_MINUTE")  # the rollup minute of the arrival

# Equipment types (DOMAIN "Equipment, types, topics" and "Which family").
M160, M160_NODASH, METER_M160 = "M-160", "M160", "METER_M160"
GATEWAY, INVERSOR = "SSU_A966", "INVERSOR"
# Shaped like the production METER_M160 `mqtt_schema` the README describes (another
# firmware: `Resumo.timestamp` integer, fields no real summary has). DOMAIN "M-160
# summary": it is NOT applied to summaries, so readings of this type stay `bom`.
OTHER_FIRMWARE_SCHEMA: Final = json.dumps(
    {
        "type": "object",
        "required": ["Resumo"],
        "properties": {
            "Resumo": {
                "type": "object",
                "required": ["timestamp", "energia_ativa_kwh"],
                "properties": {"timestamp": {"type": "integer"}},
            }
        },
    }
)
TYPES: Final[dict[str, tuple[str | None, str | None]]] = {
    M160: (None, None),
    M160_NODASH: (None, None),
    METER_M160: (None, OTHER_FIRMWARE_SCHEMA),
    GATEWAY: (GATEWAY_CATEGORY, None),  # routed by its category (DOMAIN family rule 2)
    INVERSOR: (None, None),  # production inverters: type INVERSOR, no mqtt_schema
}


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@dataclass(frozen=True)
class Message:
    payload: bytes
    # Reason codes one of which the reject must carry; None: not a reject.
    reject: frozenset[str] | None = None


@dataclass(frozen=True)
class Row:
    """One stored row as DOMAIN v2 predicts it."""

    at: datetime | _Marker  # timestamp_dados (UTC instant), ARRIVAL or ARRIVAL_MINUTE
    qualidade: str
    energia_kwh: float | _Marker | None = SKIP
    potencia_ativa_kw: float | _Marker | None = SKIP
    num_leituras: int | _Marker | None = SKIP
    fim: str | _Marker = SKIP  # "same": = timestamp_dados; "minute": + 1 min
    dados: Mapping[str, object] = field(default_factory=dict)  # top-level keys
    # Rollup rows keep their samples inside dados: look the keys up at any depth.
    deep: bool = False


@dataclass(frozen=True)
class Case:
    label: str
    codigo: str | None  # the equipment's type code; None: no type (generic)
    messages: tuple[Message, ...]
    rows: tuple[Row, ...] = ()  # in timestamp order

    @property
    def equipment_id(self) -> str:
        return cuid(self.label)

    def topic(self, prefix: str) -> str:
        # the equipment's topico_mqtt is the full state topic (DOMAIN "A-966").
        if self.codigo == GATEWAY:
            return f"{prefix}/{self.label}/A966/SSU/state"
        return f"{prefix}/{self.label}"

    @property
    def timed_by_arrival(self) -> bool:
        return any(r.at is ARRIVAL or r.at is ARRIVAL_MINUTE for r in self.rows)


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def lines(name: str) -> list[bytes]:
    """The payload lines of a .txt/.jsonl fixture (comments and blanks skipped, `\\xNN`
    escapes turned into the bytes they name)."""
    out = []
    for line in fixture(name).splitlines():
        if not line.strip() or line.startswith(b"#"):
            continue
        out.append(re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), line))
    return out


# --- M-160 (DOMAIN "M-160 summary") ------------------------------------------------------
# Flat TON/PD666 payload with consumo_phf 0.0618 and Pt 7414.5:
#   energia_kwh = consumo_phf = 0.0618 (> 0, first choice)
#   potencia_ativa_kw = Pt / 1000 = 7414.5 / 1000 = 7.4145 (Pt present)
#   num_leituras = 1 (no total_leituras); timestamp_fim = timestamp_dados
#   quality: Va 221.4 > 0; Ia 12.31 > 0 and Pt 7414.5 > 0 -> bom
# Legacy DECIMAL(10,3): 0.0618 -> 0.062, 7.4145 -> 7.415 (exact values stay in dados).
FLAT_DADOS: Final[Mapping[str, object]] = {
    "phf": 15234.77,
    "consumo_phf": 0.0618,  # the exact value, whatever the column rounds to
    "Pt": 7414.5,
    "_validacao": ABSENT,  # the type's mqtt_schema is not applied to summaries
    "_consumo_phf_bruto": ABSENT,  # 0.0618 <= 5 kWh: no outlier
}
NO_FALLBACK: Final[Mapping[str, object]] = {
    "_timestamp_bruto": ABSENT,
    "_timestamp_motivo": ABSENT,
}


def _flat(at: datetime | _Marker, **dados: object) -> Row:
    return Row(
        at,
        "bom",
        energia_kwh=0.0618,
        potencia_ativa_kw=7.4145,
        num_leituras=1,
        fim="same",
        dados={**FLAT_DADOS, **dados},
    )


def _outlier_sequence() -> Case:
    # Brazilian text time "05/05/2026 23:54:30" is Brasília (UTC-3): 2026-05-06T02:54:30Z.
    # Pt 5160 -> potencia_ativa_kw = 5160 / 1000 = 5.16 on every row.
    def row(at: datetime, energia: float, **dados: object) -> Row:
        return Row(at, "bom", energia, 5.16, 1, "same", dados)

    return Case(
        "m160-outlier-seq",
        M160,
        tuple(Message(p) for p in lines("m160_consumo_phf_outlier_sequence.jsonl")),
        (
            row(utc(2026, 5, 6, 2, 54, 30), 0.041, _consumo_phf_bruto=ABSENT),  # consumo_phf
            row(utc(2026, 5, 6, 2, 55, 0), 0.043, _consumo_phf_bruto=ABSENT),  # consumo_phf
            # consumo_phf 10381.6 > 5 kWh: outlier guard, the previous reading in device
            # time is the 2nd (phf 10557.56): max(0, 10557.6 - 10557.56) = 0.04 kWh, used
            # instead of consumo_phf (so in dados too), raw value kept as _consumo_phf_bruto.
            row(
                utc(2026, 5, 6, 2, 55, 30),
                0.04,
                _consumo_phf_bruto=10381.6,
                consumo_phf=0.04,
                phf=10557.6,
            ),
            row(utc(2026, 5, 6, 2, 56, 0), 0.044, _consumo_phf_bruto=ABSENT),  # consumo_phf
        ),
    )


def m160_cases() -> list[Case]:
    return [
        # "28/11/2026 21:00:30" Brasília = 2026-11-29T00:00:30Z (top-level timestamp).
        # METER_M160 carries the other firmware's schema: still bom, no _validacao.
        Case(
            "m160-ton-flat",
            METER_M160,
            (Message(fixture("m160_ton_flat.json")),),
            (_flat(utc(2026, 11, 29, 0, 0, 30), **NO_FALLBACK),),
        ),
        # "28/11/2026 21:01:00" Brasília = 2026-11-29T00:01:00Z; Freq/FPt kept in dados.
        Case(
            "m160-ton-flat-freq",
            M160_NODASH,
            (Message(fixture("m160_ton_flat_freq_fpt.json")),),
            (_flat(utc(2026, 11, 29, 0, 1, 0), Freq=60.01, FPt=0.992, phf=15234.83),),
        ),
        # Wrapped: Resumo.timestamp "28/11/2026 21:00:30" Brasília = 00:00:30Z.
        #   energia_kwh = consumo_phf 0.0618 (> 0; energia_total 0.0618 not needed)
        #   potencia_ativa_kw = Pt / 1000 = 7.4145 (v1 computed 0.0618 / (30/3600) = 7.416)
        #   num_leituras = total_leituras = 30; timestamp_fim = timestamp_dados
        #   quality: Va, Ia, Pt > 0 -> bom, though the type's schema would refuse it
        #   dados = the Resumo object: phf, consumo_phf, Pt at its top level.
        Case(
            "m160-resumo",
            METER_M160,
            (Message(fixture("m160_resumo.json")),),
            (
                Row(
                    utc(2026, 11, 29, 0, 0, 30),
                    "bom",
                    0.0618,
                    7.4145,
                    30,
                    "same",
                    {
                        **FLAT_DADOS,
                        **NO_FALLBACK,
                        "energia_total": 0.0618,
                        "total_leituras": 30,
                        "Resumo": ABSENT,
                    },
                ),
            ),
        ),
        # Resumo.timestamp 1795910430 (epoch s) = 2026-11-29T00:00:30Z. No load:
        #   consumo_phf 0.0 and energia_total 0.0 are not > 0; Pt 0.0 is present:
        #   energia_kwh = 0.0 / 1000 * 30 / 3600 = 0.0; potencia_ativa_kw = 0.0 / 1000 = 0.0
        #   num_leituras = 30; quality: Va 221.4 > 0 but no current > 0 -> parcial.
        Case(
            "m160-resumo-epoch",
            M160,
            (Message(fixture("m160_resumo_epoch.json")),),
            (
                Row(
                    utc(2026, 11, 29, 0, 0, 30),
                    "parcial",
                    0.0,
                    0.0,
                    30,
                    "same",
                    {"phf": 15234.77, "Resumo": ABSENT, **NO_FALLBACK},
                ),
            ),
        ),
        _outlier_sequence(),
        # "timestamp": "sem_ntp", no ts: unusable -> arrival time, flagged (DOMAIN "Time").
        Case(
            "m160-sem-ntp",
            M160,
            (Message(fixture("ton_m160_sem_ntp.json")),),
            (_flat(ARRIVAL, _timestamp_bruto="sem_ntp", _timestamp_motivo="sem_ntp"),),
        ),
        # ts 1795910430 comes first and is usable: 2026-11-29T00:00:30Z; the "sem_ntp"
        # timestamp is never consulted, so no fallback flags.
        Case(
            "m160-sd-buffer-ts",
            M160,
            (Message(fixture("ton_m160_sd_buffer_ts.json")),),
            (_flat(utc(2026, 11, 29, 0, 0, 30), **NO_FALLBACK),),
        ),
        # "timestamp": "0": unusable (zero) -> arrival time.
        Case(
            "m160-timestamp-zero",
            M160,
            (Message(fixture("ton_m160_timestamp_zero.json")),),
            (_flat(ARRIVAL, _timestamp_bruto="0", _timestamp_motivo="zero"),),
        ),
    ]


# --- A-966 gateway (DOMAIN "A-966 gateway"), KD = 0.048 kWh per pulse --------------------
RAW_ONLY: Final[Mapping[str, object]] = {"_aupus_glitch_phf": UNFLAGGED}


def gateway_cases() -> list[Case]:
    return [
        # time "1795910400" = 2026-11-29T00:00:00Z; sts 1, cdo "15", NSU 32: computed.
        #   phf 0, phr 1487: no glitch (phf <= 100)
        #   energia_kwh = (phr - phf) * KD = (1487 - 0) * 0.048 = 71.376
        #   potencia_ativa_kw = 71.376 * 4 = 285.504
        #   P_direto = 0 * 0.048 / 0.25 = 0.0; P_rev = 1487 * 0.048 / 0.25 = 285.504
        #   Q_liquido = ((0 + 0) - (3 + 0)) * 0.048 / 0.25 = -0.576
        #   FP_calc = |0 - 285.504| / hypot(-285.504, -0.576) = 0.999998 -> 1.0 (3 decimals)
        Case(
            "a966-state",
            GATEWAY,
            (Message(fixture("a966_ssu_state.json")),),
            (
                Row(
                    utc(2026, 11, 29, 0, 0, 0),
                    "bom",
                    71.376,
                    285.504,
                    dados={
                        "P_direto": 0.0,
                        "P_rev": 285.504,
                        "Q_liquido": -0.576,
                        "FP_calc": 1.0,
                        "_aupus_glitch_phf": UNFLAGGED,
                        "_aupus_post_boot_dump": UNFLAGGED,
                        **NO_FALLBACK,
                    },
                ),
            ),
        ),
        # NSU = 1: post-boot dump, raw only (NULL energy and power, ruim), flagged.
        # time "1795911300" = 2026-11-29T00:15:00Z.
        Case(
            "a966-post-boot",
            GATEWAY,
            (Message(fixture("a966_ssu_post_boot_dump.json")),),
            (
                Row(
                    utc(2026, 11, 29, 0, 15, 0),
                    "ruim",
                    None,
                    None,
                    dados={"_aupus_post_boot_dump": FLAGGED, **RAW_ONLY},
                ),
            ),
        ),
        # sts 0 (boot): raw only. time "1795912200" = 2026-11-29T00:30:00Z.
        Case(
            "a966-boot-sts0",
            GATEWAY,
            (Message(fixture("a966_ssu_boot_sts0.json")),),
            (Row(utc(2026, 11, 29, 0, 30, 0), "ruim", None, None, dados=RAW_ONLY),),
        ),
        # phf 412 > 100 and phr 1498 > 100: glitch, phf := 0 first, flagged.
        # time "1795913100" = 2026-11-29T00:45:00Z.
        #   energia_kwh = (1498 - 0) * 0.048 = 71.904; potencia_ativa_kw = 71.904 * 4 = 287.616
        #   P_direto = 0 * 0.048 / 0.25 = 0.0; P_rev = 1498 * 0.048 / 0.25 = 287.616
        #   Q_liquido = ((0 + 0) - (5 + 0)) * 0.048 / 0.25 = -0.96
        #   FP_calc = 287.616 / hypot(287.616, 0.96) = 0.999994 -> 1.0
        Case(
            "a966-phf-glitch",
            GATEWAY,
            (Message(fixture("a966_ssu_phf_glitch.json")),),
            (
                Row(
                    utc(2026, 11, 29, 0, 45, 0),
                    "bom",
                    71.904,
                    287.616,
                    dados={
                        "P_direto": 0.0,
                        "P_rev": 287.616,
                        "Q_liquido": -0.96,
                        "FP_calc": 1.0,
                        "_aupus_glitch_phf": FLAGGED,
                    },
                ),
            ),
        ),
        # Old firmware `{}`: cdo missing -> raw only; no time field at all -> arrival time,
        # reason "ausente" and no _timestamp_bruto.
        Case(
            "a966-old-firmware",
            GATEWAY,
            (Message(fixture("a966_old_firmware_empty.json")),),
            (
                Row(
                    ARRIVAL,
                    "ruim",
                    None,
                    None,
                    dados={"_timestamp_motivo": "ausente", "_timestamp_bruto": ABSENT},
                ),
            ),
        ),
    ]


# --- Inverter (DOMAIN "Inverter"): one row per minute, the v1 rollup otherwise ------------
def _minute(at: datetime | _Marker, watts: float, **dados: object) -> Row:
    # One message in the minute: mean active power = its power.active_total.
    #   potencia_ativa_kw = watts / 1000; energia_kwh = potencia * 1 min = watts / 1000 / 60
    #   one valid sample of one -> bom; num_leituras = 1 sample.
    return Row(
        at,
        "bom",
        watts / 1000 / 60,
        watts / 1000,
        1,
        "minute",
        dados,
        deep=True,
    )


def inverter_cases() -> list[Case]:
    return [
        # timestamp 1764374460 = 2025-11-29T00:01:00Z; 41250 W:
        #   potencia = 41.25 kW, energia = 41.25 / 60 = 0.6875 kWh (legacy 0.688)
        Case(
            "inverter-v1",
            INVERSOR,
            (Message(fixture("inverter_reading.json")),),
            (_minute(utc(2025, 11, 29, 0, 1), 41250),),
        ),
        # timestamp 1795910460 = 2026-11-29T00:01:00Z; 81930 W:
        #   potencia = 81.93 kW, energia = 81.93 / 60 = 1.3655 kWh (legacy 1.366)
        Case(
            "inverter-sungrow",
            INVERSOR,
            (Message(fixture("ton_inverter_sungrow.json")),),
            (_minute(utc(2026, 11, 29, 0, 1), 81930, **NO_FALLBACK),),
        ),
        # timestamp 4187 (seconds since boot) is before 2020: arrival time; the row is the
        # arrival's minute, the raw value and the reason kept with the sample.
        Case(
            "inverter-no-ntp",
            INVERSOR,
            (Message(fixture("ton_inverter_no_ntp.json")),),
            (
                _minute(
                    ARRIVAL_MINUTE, 81930, _timestamp_bruto=4187, _timestamp_motivo="antes_de_2020"
                ),
            ),
        ),
        # UINT overflow signatures (total_yield 4294967000, daily_yield 6553.5, 65535,
        # "ffff"): rejected as inverter_overflow, no row.
        Case(
            "inverter-overflow",
            INVERSOR,
            (
                Message(
                    fixture("inverter_uint_overflow.json"), reject=frozenset({"inverter_overflow"})
                ),
            ),
        ),
    ]


# --- Generic (DOMAIN "Generic", "Time") ----------------------------------------------------
# clockless.txt, line by line: (raw timestamp or ABSENT, _timestamp_motivo).
CLOCKLESS_REASONS: Final[tuple[tuple[object, str], ...]] = (
    ("sem_ntp", "sem_ntp"),  # {"timestamp": "sem_ntp"}
    ("0", "zero"),  # {"timestamp": "0"}
    (0, "zero"),  # {"timestamp": 0}
    (1000, "antes_de_2020"),  # epoch 1000 s = 1970-01-01T00:16:40Z
    (-5, "antes_de_2020"),  # epoch -5 s = 1969-12-31T23:59:55Z
    ("31/02/2026 25:61:00", "malformado"),  # no 31 February, no hour 25
    (99999999999999, "futuro"),  # >= 1e10: epoch ms = year 5138, beyond now + 15 min
    (ABSENT, "ausente"),  # no time field at all: no _timestamp_bruto
)


def generic_cases() -> list[Case]:
    # "2026-11-28T21:01:00Z" (ISO with Z) = 2026-11-28T21:01:00Z; no mqtt_schema -> bom.
    cases = [
        Case(
            "generic",
            None,
            (Message(fixture("generic_reading.json")),),
            (
                Row(
                    utc(2026, 11, 28, 21, 1),
                    "bom",
                    dados={"power": 1530.5, "voltage": 220.3, **NO_FALLBACK},
                ),
            ),
        )
    ]
    payloads = lines("clockless.txt")
    assert len(payloads) == len(CLOCKLESS_REASONS), "clockless.txt changed: update this table"
    for n, (payload, (raw, motivo)) in enumerate(zip(payloads, CLOCKLESS_REASONS, strict=True)):
        # Each line is stored (not rejected) by its arrival time, "power" = its line number.
        dados = {"power": n + 1, "_timestamp_motivo": motivo, "_timestamp_bruto": raw}
        cases.append(
            Case(
                f"clockless-{n + 1}", None, (Message(payload),), (Row(ARRIVAL, "bom", dados=dados),)
            )
        )
    return cases


# --- bad_inputs.txt (DOMAIN "Bad input"): every line a reject with its reason -------------
# The family is decided by the equipment first, so each line goes to the equipment whose
# family it was written for: the `Resumo` line is only malformed for an M-160 (on a generic
# equipment it is a valid generic reading), the two inverter frames for an inverter.
BAD_REASONS: Final[tuple[tuple[str | None, frozenset[str]], ...]] = (
    (None, frozenset({"invalid_json"})),  # not json at all
    (None, frozenset({"not_an_object"})),  # [1, 2, 3]
    # Resumo is a string and there is no top-level Va / consumo_phf: m160_unknown_format.
    (M160, frozenset({"m160_unknown_format"})),
    (None, frozenset({"not_utf8"})),  # \xff\xfe\x00garbage
    # power.active_total 1e308 >= 1e8 is an overflow signature (and an absurd number).
    (INVERSOR, frozenset({"inverter_overflow", "number_out_of_range"})),
    (INVERSOR, frozenset({"inverter_overflow"})),  # energy.total_yield 4294967000
)


def bad_input_cases() -> list[Case]:
    payloads = lines("bad_inputs.txt")
    assert len(payloads) == len(BAD_REASONS), "bad_inputs.txt changed: update this table"
    by_type: dict[str | None, list[Message]] = {}
    for payload, (codigo, reasons) in zip(payloads, BAD_REASONS, strict=True):
        by_type.setdefault(codigo, []).append(Message(payload, reject=reasons))
    labels = {None: "bad-generic", M160: "bad-m160", INVERSOR: "bad-inverter"}
    return [Case(labels[codigo], codigo, tuple(msgs)) for codigo, msgs in by_type.items()]


def all_cases() -> list[Case]:
    """Every file of the shared fixtures, each message once."""
    return [
        *m160_cases(),
        *gateway_cases(),
        *inverter_cases(),
        *generic_cases(),
        *bad_input_cases(),
    ]


def covered_files() -> set[str]:
    """The fixture files the cases above read (checked against the directory)."""
    return {
        "m160_ton_flat.json",
        "m160_ton_flat_freq_fpt.json",
        "m160_resumo.json",
        "m160_resumo_epoch.json",
        "m160_consumo_phf_outlier_sequence.jsonl",
        "ton_m160_sem_ntp.json",
        "ton_m160_sd_buffer_ts.json",
        "ton_m160_timestamp_zero.json",
        "a966_ssu_state.json",
        "a966_ssu_post_boot_dump.json",
        "a966_ssu_boot_sts0.json",
        "a966_ssu_phf_glitch.json",
        "a966_old_firmware_empty.json",
        "inverter_reading.json",
        "ton_inverter_sungrow.json",
        "ton_inverter_no_ntp.json",
        "inverter_uint_overflow.json",
        "generic_reading.json",
        "clockless.txt",
        "bad_inputs.txt",
    }


# --- registering the equipment ---------------------------------------------------------


async def register_cases(conn: asyncpg.Connection, cases: Sequence[Case], prefix: str) -> None:
    """One enabled equipment per case, of the case's type (created with its category)."""
    type_ids: dict[str, str] = {}
    for codigo in sorted({c.codigo for c in cases if c.codigo is not None}):
        category, schema = TYPES[codigo]
        type_ids[codigo] = await ensure_type(conn, codigo, category=category, mqtt_schema=schema)
    for case in cases:
        type_id = type_ids[case.codigo] if case.codigo is not None else None
        await register_equipment(conn, case.equipment_id, case.topic(prefix), type_id)


# --- checking what was stored ----------------------------------------------------------

ROWS_SQL: Final = (
    "SELECT trim(equipamento_id) AS equipamento_id, timestamp_dados, timestamp_fim, "
    "created_at, dados::text AS dados, fonte, qualidade, energia_kwh, potencia_ativa_kw, "
    "num_leituras, trim(id) AS id FROM equipamentos_dados ORDER BY equipamento_id, timestamp_dados"
)
REJECTS_SQL: Final = "SELECT topic, payload, reason FROM ingest_rejects"
# The legacy DECIMAL(10,3) columns round to 3 decimals (DOMAIN: 0.0618 -> 0.062).
LEGACY_STEP: Final = Decimal("0.0005")


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as an aware UTC instant: legacy `timestamp(0)` columns hold UTC wall
    time (DOMAIN v2 "The legacy database"), fresh ones are timestamptz."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


@dataclass
class Window:
    """When the messages of a case were published and when their rows were read back:
    an arrival time must fall inside (legacy keys are cut to the second)."""

    published_from: datetime
    checked_at: datetime

    def holds(self, ts: datetime, *, minute: bool = False) -> bool:
        low = self.published_from - timedelta(seconds=1)
        if minute:
            low = low.replace(second=0, microsecond=0)
        return low <= ts <= self.checked_at + timedelta(seconds=1)


@dataclass
class Report:
    failures: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.failures.append(message)

    def assert_clean(self, header: str) -> None:
        assert not self.failures, f"{header}: {len(self.failures)} mismatches\n" + "\n".join(
            self.failures
        )


def _number_matches(stored: object, expected: float, legacy: bool) -> bool:
    if stored is None:
        return False
    if isinstance(stored, Decimal):
        # DECIMAL(10,3): the exact value rounded to 3 decimals (either way on a tie).
        return abs(stored - Decimal(repr(expected))) <= LEGACY_STEP
    if legacy:
        return math.isclose(float(stored), expected, abs_tol=5e-4)
    return math.isclose(float(stored), expected, rel_tol=1e-9, abs_tol=1e-6)


def _deep_get(value: object, key: str) -> object:
    """The first value of `key` anywhere in a JSON value (depth first), or ABSENT."""
    if isinstance(value, dict):
        if key in value:
            return value[key]
        for child in value.values():
            found = _deep_get(child, key)
            if found is not ABSENT:
                return found
    elif isinstance(value, list):
        for child in value:
            found = _deep_get(child, key)
            if found is not ABSENT:
                return found
    return ABSENT


def _dados_matches(actual: object, expected: object) -> bool:
    if expected is ABSENT:
        return actual is ABSENT
    if expected is UNFLAGGED:
        return actual is ABSENT or not actual
    if expected is FLAGGED:
        return actual is not ABSENT and bool(actual)
    if isinstance(expected, float) and isinstance(actual, int | float):
        return not isinstance(actual, bool) and math.isclose(actual, expected, abs_tol=1e-6)
    return type(actual) is type(expected) and actual == expected


def check_row(
    report: Report,
    where: str,
    row: Mapping[str, object],
    expected: Row,
    window: Window,
    *,
    legacy: bool,
) -> None:
    _check_times(report, where, row, expected, window)
    report.check(
        row["qualidade"] == expected.qualidade,
        f"{where}: qualidade {row['qualidade']!r} != {expected.qualidade!r}",
    )
    report.check(row["fonte"] == "MQTT", f"{where}: fonte {row['fonte']!r}")
    _check_columns(report, where, row, expected, legacy=legacy)
    _check_dados(report, where, json.loads(str(row["dados"])), expected)


def _check_times(
    report: Report, where: str, row: Mapping[str, object], expected: Row, window: Window
) -> None:
    ts = as_utc(row["timestamp_dados"])  # type: ignore[arg-type]
    assert ts is not None
    # DOMAIN "Time": the time source.
    if isinstance(expected.at, datetime):
        report.check(ts == expected.at, f"{where}: timestamp_dados {ts} != {expected.at}")
    elif expected.at is ARRIVAL:
        report.check(window.holds(ts), f"{where}: timestamp_dados {ts} is not the arrival time")
    else:
        report.check(
            window.holds(ts, minute=True) and ts.second == 0 and ts.microsecond == 0,
            f"{where}: timestamp_dados {ts} is not the arrival's minute",
        )
    fim = as_utc(row["timestamp_fim"])  # type: ignore[arg-type]
    if expected.fim == "same":
        report.check(fim == ts, f"{where}: timestamp_fim {fim} != timestamp_dados {ts}")
    elif expected.fim == "minute":
        report.check(fim == ts + timedelta(minutes=1), f"{where}: timestamp_fim {fim}")
    # DOMAIN v2 "The legacy database": created_at is UTC wall time too (not 3 h early).
    created = as_utc(row["created_at"])  # type: ignore[arg-type]
    report.check(
        created is not None
        and window.published_from - timedelta(seconds=5)
        <= created
        <= window.checked_at + timedelta(seconds=5),
        f"{where}: created_at {created} is not the write time ({window.published_from} ..)",
    )


def _check_columns(
    report: Report, where: str, row: Mapping[str, object], expected: Row, *, legacy: bool
) -> None:
    for column in ("energia_kwh", "potencia_ativa_kw"):
        want = getattr(expected, column)
        got = row[column]
        if want is SKIP:
            continue
        if want is None:
            report.check(got is None, f"{where}: {column} {got!r} is not NULL")
        else:
            assert isinstance(want, float | int)
            report.check(
                _number_matches(got, float(want), legacy), f"{where}: {column} {got!r} != {want}"
            )
    if expected.num_leituras is not SKIP:
        report.check(
            row["num_leituras"] == expected.num_leituras,
            f"{where}: num_leituras {row['num_leituras']!r} != {expected.num_leituras!r}",
        )


def _check_dados(report: Report, where: str, dados: object, expected: Row) -> None:
    assert isinstance(dados, dict), f"{where}: dados is not an object"
    for key, want in expected.dados.items():
        got = _deep_get(dados, key) if expected.deep else dados.get(key, ABSENT)
        report.check(_dados_matches(got, want), f"{where}: dados.{key} = {got!r}, want {want!r}")
    for key in ("P_direto", "P_rev", "Q_liquido", "FP_calc"):  # DOMAIN A-966: 3 decimals
        got = dados.get(key, ABSENT)
        if key in expected.dados and isinstance(got, float | int):
            report.check(round(got, 3) == got, f"{where}: dados.{key} {got!r} not 3 decimals")


def check_case(
    report: Report,
    case: Case,
    rows: Sequence[Mapping[str, object]],
    rejects: Sequence[Mapping[str, object]],
    window: Window,
    *,
    prefix: str,
    legacy: bool,
) -> None:
    """Rows of the case's equipment, exactly as many as predicted (exactly once), each as
    predicted; every message meant to be rejected is in ingest_rejects with its reason."""
    mine = [r for r in rows if r["equipamento_id"] == case.equipment_id]
    report.check(
        len(mine) == len(case.rows),
        f"{case.label}: {len(mine)} rows stored, {len(case.rows)} expected "
        f"(times {[str(as_utc(r['timestamp_dados'])) for r in mine]})",  # type: ignore[arg-type]
    )
    if len(mine) == len(case.rows):
        for n, (row, expected) in enumerate(zip(mine, case.rows, strict=True)):
            check_row(report, f"{case.label}[{n}]", row, expected, window, legacy=legacy)
    topic = case.topic(prefix)
    stored = [r for r in rejects if r["topic"] == topic]
    wanted = [m for m in case.messages if m.reject is not None]
    report.check(
        len(stored) == len(wanted),
        f"{case.label}: {len(stored)} rejects stored, {len(wanted)} expected: "
        f"{[r['reason'] for r in stored]}",
    )
    for message in wanted:
        assert message.reject is not None
        found = [r for r in stored if bytes(r["payload"]) == message.payload]
        codes = [str(r["reason"]).partition(":")[0] for r in found]
        report.check(
            len(found) == 1 and codes[0] in message.reject,
            f"{case.label}: reject of {message.payload[:40]!r}: reasons {codes}, "
            f"want one of {sorted(message.reject)}",
        )
