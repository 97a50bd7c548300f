"""The side traffic of a chaos run: hostile payloads and readings of clockless devices,
and the count of what became of each message.

Why a catalogue and not random bytes: every message must be accounted for afterwards —
stored (found again by its marker, `dados.hx` / `dados.cx`, or inside an inverter
minute's `dados.samples`), rejected (found in `ingest_rejects` by topic and the SHA-256
of the whole payload), refused (never acknowledged by the broker) — so each one is
unique (its ident is in its bytes) and goes to devices of its own, away from the
sequence-numbered load whose lost/duplicated count must stay exact.

Instants: a generic hostile message `i` that carries a usable time is at `base + i s`,
an inverter variant starting at ident `i` owns the minute `base + i min` (its samples
at :10 and :20 of it), so no two side messages share a natural key by accident.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from functools import cached_property

import orjson

HOSTILE_MARK = "hx"
CLOCKLESS_MARK = "cx"
_BRASILIA = timezone(timedelta(hours=-3))


@dataclass(frozen=True)
class SideMessage:
    ident: int
    label: str  # which variant, e.g. "huge_float", "not_json"
    topic: str
    payload: bytes
    # Larger than the maximum packet size the instances announce: the broker drops it
    # for their sessions after acknowledging it to us, so nowhere is its expected fate.
    over_limit: bool = False

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.payload).hexdigest()


@dataclass(frozen=True, slots=True)
class SideTopics:
    generic: tuple[str, ...]
    inverter: tuple[str, ...]


# --- hostile payloads ---------------------------------------------------------------------


def _iso_z(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _obj(i: int, ts: object, **fields: object) -> bytes:
    return orjson.dumps({HOSTILE_MARK: i, "timestamp": ts, **fields})


def _nested(depth: int) -> str:
    return '{"n":' * depth + "1" + "}" * depth


# A generic variant: (ident, its instant, now) -> payload bytes.
GenericBuilder = Callable[[int, datetime, datetime], bytes]


def _timestamp_forms() -> dict[str, GenericBuilder]:
    return {
        "ts_epoch_s": lambda i, t, now: _obj(i, int(t.timestamp()), power=1),
        "ts_epoch_ms": lambda i, t, now: _obj(i, int(t.timestamp() * 1000), power=1),
        "ts_epoch_float": lambda i, t, now: _obj(i, t.timestamp() + 0.25, power=1),
        "ts_numeric_string": lambda i, t, now: _obj(i, str(int(t.timestamp())), power=1),
        "ts_numeric_string_ms": lambda i, t, now: _obj(i, str(int(t.timestamp() * 1e3)), power=1),
        "ts_iso_z": lambda i, t, now: _obj(i, _iso_z(t), power=1),
        "ts_iso_offset": lambda i, t, now: _obj(
            i, t.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat(), power=1
        ),
        "ts_iso_naive_brasilia": lambda i, t, now: _obj(
            i, t.astimezone(_BRASILIA).replace(tzinfo=None).isoformat(), power=1
        ),
        "ts_iso_nanoseconds": lambda i, t, now: _obj(
            i, t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.123456789Z"), power=1
        ),
        "ts_iso_space": lambda i, t, now: _obj(
            i, t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00:00"), power=1
        ),
        "ts_brazilian_text": lambda i, t, now: _obj(
            i, t.astimezone(_BRASILIA).strftime("%d/%m/%Y %H:%M:%S"), power=1
        ),
        "ts_near_future": lambda i, t, now: _obj(i, _iso_z(now + timedelta(minutes=5)), power=1),
        "ts_far_future": lambda i, t, now: _obj(i, _iso_z(now + timedelta(days=400)), power=1),
        "ts_year_9999": lambda i, t, now: _obj(i, "9999-12-31T23:59:59Z", power=1),
        "ts_far_past": lambda i, t, now: _obj(i, "1970-01-01T00:00:01Z", power=1),
        "ts_1999": lambda i, t, now: _obj(i, "1999-12-31T23:59:59-03:00", power=1),
        "ts_since_boot": lambda i, t, now: _obj(i, 1234, power=1),
        "ts_negative": lambda i, t, now: _obj(i, -86400, power=1),
        "ts_huge_number": lambda i, t, now: _obj(i, 1e20, power=1),
        "ts_null": lambda i, t, now: _obj(i, None, power=1),
        "ts_bool": lambda i, t, now: _obj(i, True, power=1),
        "ts_object": lambda i, t, now: _obj(i, {"s": 1}, power=1),
        "ts_garbage_text": lambda i, t, now: _obj(i, "ontem às 3", power=1),
    }


def _number_forms() -> dict[str, GenericBuilder]:
    return {
        "huge_float": lambda i, t, now: _obj(
            i, _iso_z(t), power=1e308, energy=-1.7976931348623157e308
        ),
        "tiny_float": lambda i, t, now: _obj(
            i, _iso_z(t), power=5e-324, voltage=-0.0, current=2.2250738585072014e-308
        ),
        "int64_edges": lambda i, t, now: _obj(
            i, _iso_z(t), power=18446744073709551615, energy=-9223372036854775808
        ),
        "int_beyond_64_bits": lambda i, t, now: (
            f'{{"{HOSTILE_MARK}":{i},"timestamp":"{_iso_z(t)}",'
            f'"power":123456789012345678901234567890}}'
        ).encode(),
        "float_overflowing_text": lambda i, t, now: (
            f'{{"{HOSTILE_MARK}":{i},"timestamp":"{_iso_z(t)}","power":1e400,"v":-1e400}}'
        ).encode(),
        "nan_literal": lambda i, t, now: f'{{"{HOSTILE_MARK}":{i},"power":NaN}}'.encode(),
        "infinity_literal": lambda i, t, now: f'{{"{HOSTILE_MARK}":{i},"power":Infinity}}'.encode(),
    }


def _deep(depth: int) -> GenericBuilder:
    return lambda i, t, now: (
        f'{{"{HOSTILE_MARK}":{i},"timestamp":"{_iso_z(t)}","nest":{_nested(depth)}}}'
    ).encode()


def _shape_forms() -> dict[str, GenericBuilder]:
    return {
        **{f"deep_{depth}": _deep(depth) for depth in (100, 300, 5000)},
        "duplicate_keys": lambda i, t, now: (
            f'{{"{HOSTILE_MARK}":{i},"timestamp":"1999-01-01T00:00:00Z","power":1,'
            f'"power":2,"timestamp":"{_iso_z(t)}","{HOSTILE_MARK}":{i}}}'
        ).encode(),
        "odd_unicode": lambda i, t, now: _obj(
            i,
            _iso_z(t),
            nome="\u202eevil\u200b\u00e9\u0301 \U0001f600 \u4e2d\u6587 \ufeff",
            **{"pot\u00eancia": 1, "": 0, "\U0001f50c": 2},
        ),
        "escaped_surrogate_pair": lambda i, t, now: (
            f'{{"{HOSTILE_MARK}":{i},"timestamp":"{_iso_z(t)}","s":"\\ud83d\\ude00"}}'
        ).encode(),
        "lone_surrogate": lambda i, t, now: (
            f'{{"{HOSTILE_MARK}":{i},"timestamp":"{_iso_z(t)}","s":"\\ud800"}}'
        ).encode(),
        "nul_in_string": lambda i, t, now: _obj(i, _iso_z(t), s="a\u0000b"),
        "nul_in_key": lambda i, t, now: _obj(i, _iso_z(t), **{"k\u0000": 1}),
        "utf8_bom": lambda i, t, now: b"\xef\xbb\xbf" + _obj(i, _iso_z(t), power=1),
        "many_keys": lambda i, t, now: _obj(i, _iso_z(t), **{f"k{n}": n for n in range(5000)}),
        "long_array": lambda i, t, now: _obj(i, _iso_z(t), values=list(range(20000))),
        "whitespace": lambda i, t, now: b" \n\t" * 3000 + _obj(i, _iso_z(t), power=1),
    }


def _not_json_forms() -> dict[str, GenericBuilder]:
    return {
        "not_json": lambda i, t, now: f"hx={i} this is not json".encode(),
        "truncated_json": lambda i, t, now: f'{{"{HOSTILE_MARK}":{i},"power":'.encode(),
        "not_utf8": lambda i, t, now: b"\xff\xfe\x00" + str(i).encode() + b"\xc3\x28",
        "json_array": lambda i, t, now: f'[{i},{{"power":1}}]'.encode(),
        "json_number": lambda i, t, now: str(i).encode(),
        "json_string": lambda i, t, now: f'"hx {i}"'.encode(),
    }


def _oversized(limit: int) -> dict[str, GenericBuilder]:
    return {
        "oversized_just": lambda i, t, now: _obj(i, _iso_z(t), pad="x" * (limit + 16)),
        "oversized_4x": lambda i, t, now: _obj(i, _iso_z(t), pad="y" * (4 * limit)),
    }


def _inverter(i: int, ts: str, **power: object) -> bytes:
    return orjson.dumps(
        {HOSTILE_MARK: i, "timestamp": ts, "power": power, "voltage": {"phase_a-b": 380.0}}
    )


# An inverter variant: the payloads (two samples) of a minute of its own, from their
# instants there, and the arrival time (now).
InverterBuilder = Callable[[int, list[datetime], datetime], list[bytes]]


def _inverter_forms() -> dict[str, InverterBuilder]:
    def pair(**power: object) -> InverterBuilder:
        return lambda i, at, now: [_inverter(i + k, _iso_z(t), **power) for k, t in enumerate(at)]

    return {
        "inverter_power_1e308_pair": pair(active_total=1e308),
        "inverter_power_absurd_pair": pair(active_total=9.99e7, reactive_total=-9.99e7),
        "inverter_power_tiny_pair": pair(active_total=5e-324, reactive_total=-0.0),
        "inverter_voltage_1e308_pair": lambda i, at, now: [
            orjson.dumps(
                {
                    HOSTILE_MARK: i + k,
                    "timestamp": _iso_z(t),
                    "power": {"active_total": 1000},
                    "voltage": {"phase_a-b": 1.7e308},
                    "temperature": {"internal": -1.7e308},
                }
            )
            for k, t in enumerate(at)
        ],
        "inverter_power_not_numbers": lambda i, at, now: [
            _inverter(i, _iso_z(at[0]), active_total="NaN"),
            _inverter(i + 1, _iso_z(at[1]), active_total={"x": [True, None]}),
        ],
        # Future-dated: an open minute ahead of every instance's clock (it closes ~1.5 min
        # later: within the settle time); a naive ISO string from firmware on UTC reads
        # as Brasília, 3 h ahead.
        "inverter_near_future_pair": lambda i, at, now: [
            _inverter(i + k, _iso_z(now + timedelta(seconds=20 + 2 * k)), active_total=5)
            for k in (0, 1)
        ],
        "inverter_naive_utc_pair": lambda i, at, now: [
            _inverter(
                i + k, (now + timedelta(seconds=k)).replace(tzinfo=None).isoformat(), active_total=6
            )
            for k in (0, 1)
        ],
        "inverter_no_timestamp": lambda i, at, now: [
            orjson.dumps({HOSTILE_MARK: i + k, "power": {"active_total": 10 + k}}) for k in (0, 1)
        ],
    }


@dataclass(slots=True)
class HostileCatalogue:
    """Every hostile variant once per `batch()`, with fresh idents and instants."""

    topics: SideTopics
    base: datetime  # well in the past: the instants of usable timestamps
    max_payload_bytes: int
    packet_limit: int  # the instances' announced MQTT maximum packet size
    next_ident: int = 0

    def batch(self, now: datetime) -> list[SideMessage]:
        out: list[SideMessage] = []
        generic = (
            _timestamp_forms()
            | _number_forms()
            | _shape_forms()
            | _not_json_forms()
            | _oversized(self.max_payload_bytes)
        )
        for label, build in generic.items():
            i = self._take(1)
            at = self.base + timedelta(seconds=i)
            topic = self.topics.generic[i % len(self.topics.generic)]
            payload = build(i, at, now)
            over = _packet_bytes(topic, payload) > self.packet_limit
            out.append(SideMessage(i, label, topic, payload, over_limit=over))
        for label, build_minute in _inverter_forms().items():
            i = self._take(2)
            minute = self.base.replace(second=0, microsecond=0) + timedelta(minutes=i)
            pair = [minute + timedelta(seconds=10), minute + timedelta(seconds=20)]
            topic = self.topics.inverter[i % len(self.topics.inverter)]
            for k, payload in enumerate(build_minute(i, pair, now)):
                out.append(SideMessage(i + k, label, topic, payload))
        return out

    def _take(self, n: int) -> int:
        first = self.next_ident
        self.next_ident += n
        return first


def _packet_bytes(topic: str, payload: bytes) -> int:
    """An MQTT 5 QoS 1 PUBLISH: fixed header (<= 5), topic (2 + n), packet id (2),
    properties length (1), payload."""
    return 5 + 2 + len(topic.encode()) + 2 + 1 + len(payload)


# --- clockless devices -------------------------------------------------------------------

# /work/shared/fixtures/clockless.txt (DOMAIN.md v2): each must be STORED with the arrival
# time, the raw value in dados._timestamp_bruto and the reason in dados._timestamp_motivo.
CLOCKLESS_FORMS: tuple[tuple[str, str], ...] = (
    ("sem_ntp", '"timestamp": "sem_ntp"'),
    ("zero_text", '"timestamp": "0"'),
    ("zero", '"timestamp": 0'),
    ("since_boot", '"timestamp": 1000'),
    ("negative", '"timestamp": -5'),
    ("malformed", '"timestamp": "31/02/2026 25:61:00"'),
    ("far_future", '"timestamp": 99999999999999'),
    ("absent", ""),
)


@dataclass(slots=True)
class ClocklessCatalogue:
    topics: tuple[str, ...]
    next_ident: int = 0

    def batch(self) -> list[SideMessage]:
        out = []
        for label, time_field in CLOCKLESS_FORMS:
            i = self.next_ident
            self.next_ident += 1
            fields = [f'"{CLOCKLESS_MARK}": {i}', f'"power": {i % 1000}']
            if time_field:
                fields.insert(0, time_field)
            payload = ("{" + ", ".join(fields) + "}").encode()
            out.append(SideMessage(i, label, self.topics[i % len(self.topics)], payload))
        return out


# --- accounting --------------------------------------------------------------------------


@dataclass(slots=True)
class SideTally:
    """What became of one kind of side message.

    stored: found in equipamentos_dados; rejected: in ingest_rejects (not stored);
    refused: nowhere, and either never acknowledged or larger than the instances'
    maximum packet size (the broker or the client would not take it); lost:
    acknowledged and nowhere — silently dropped; duplicated: rows beyond one per
    message. `must_store`: a reject is a failure too (clockless readings)."""

    name: str
    must_store: bool
    sent: int = 0
    acknowledged: int = 0
    stored: int = 0
    rejected: int = 0
    refused: int = 0
    lost: int = 0
    duplicated: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    # variant -> outcome ("stored", "rejected <code>", "refused", "lost") -> count
    by_label: dict[str, dict[str, int]] = field(default_factory=dict)
    lost_examples: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        bad_rejects = self.rejected if self.must_store else 0
        return self.lost == 0 and self.duplicated == 0 and bad_rejects == 0

    @property
    def accounted(self) -> int:
        return self.stored + self.rejected


def tally(
    name: str,
    messages: Sequence[SideMessage],
    acked: set[int],
    stored: Mapping[int, int],
    rejected: Mapping[int, str],
    *,
    must_store: bool = False,
) -> SideTally:
    """Sort every sent message into exactly one of stored / rejected / refused / lost.

    `stored`: ident -> rows found; `rejected`: ident -> reject reason."""
    out = SideTally(name, must_store, sent=len(messages))
    reasons: Counter[str] = Counter()
    outcomes: dict[str, Counter[str]] = {}
    for m in messages:
        acknowledged = m.ident in acked
        out.acknowledged += acknowledged
        rows = stored.get(m.ident, 0)
        if rows:
            out.stored += 1
            out.duplicated += rows - 1
            outcome = "stored" if rows == 1 else "stored twice or more"
        elif m.ident in rejected:
            out.rejected += 1
            code = rejected[m.ident].split(":", 1)[0].strip()
            reasons[code] += 1
            outcome = f"rejected {code}"
        elif acknowledged and not m.over_limit:
            out.lost += 1
            if len(out.lost_examples) < 20:
                out.lost_examples.append(f"{m.ident} {m.label}")
            outcome = "lost"
        else:
            out.refused += 1
            outcome = "refused"
        outcomes.setdefault(m.label, Counter())[outcome] += 1
    out.rejected_reasons = dict(sorted(reasons.items()))
    out.by_label = {label: dict(c) for label, c in sorted(outcomes.items())}
    return out


def rejected_by_ident(
    messages: Sequence[SideMessage], rejects: Sequence[tuple[str, str, str]]
) -> dict[int, str]:
    """ident -> reason, from ingest_rejects rows (topic, payload_sha256, reason)."""
    reason_by_key = {(topic, sha): reason for topic, sha, reason in rejects}
    out: dict[int, str] = {}
    for m in messages:
        reason = reason_by_key.get((m.topic, m.sha256))
        if reason is not None:
            out[m.ident] = reason
    return out
