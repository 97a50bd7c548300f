"""The simulated fleet: DOMAIN v2 shapes, proportions, decodable payloads, timing, bad input."""

from __future__ import annotations

import argparse
import math
import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from aupus_ha.decoding.messages import Decoder
from aupus_ha.decoding.timestamps import BRASILIA
from aupus_ha.lab.demo import DemoOptions, content_of, demo_fleet
from aupus_ha.lab.simdevices import CLOCK_NTP, CLOCK_SEM_NTP, CLOCK_ZERO, GATEWAY_KD_KWH
from aupus_ha.lab.simulate import (
    BAD_INPUTS,
    FAMILIES,
    FAMILY_GATEWAY,
    FAMILY_LABELS,
    FAMILY_M160_FLAT,
    FAMILY_M160_WRAPPED,
    GATEWAY_CATEGORY,
    Fleet,
    SimMessage,
    SimReport,
    SimulateOptions,
    build_fleet,
    daylight_factor,
)
from aupus_ha.pipeline.readings import Equipment, Reading
from tests.helpers import fixture_object

# 15:00 in Brasília: the sun is up, so inverters produce.
START = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)
# What each bad input must end as (DOMAIN v2 routes by the equipment first: a `Resumo`
# string on an M-160 is `m160_unknown_format`; `invalid_summary` is the v1 name).
EXPECTED_REJECT = {
    "not_json": {"invalid_json"},
    "array": {"not_an_object"},
    "not_utf8": {"not_utf8"},
    "resumo_not_object": {"m160_unknown_format", "invalid_summary"},
    "number_out_of_range": {"number_out_of_range"},
    "inverter_overflow": {"inverter_overflow"},
}
# Every fixture the simulator reproduces, by the message that has its shape.
FLAT_FIXTURES = {
    (CLOCK_NTP, False): "m160_ton_flat.json",
    (CLOCK_NTP, True): "m160_ton_flat_freq_fpt.json",
    (CLOCK_SEM_NTP, False): "ton_m160_sem_ntp.json",
    (CLOCK_ZERO, False): "ton_m160_timestamp_zero.json",
}
REASON_BY_CLOCK = {CLOCK_SEM_NTP: "sem_ntp", CLOCK_ZERO: "zero"}


def keys(value: object) -> object:
    """Key structure of a JSON value: objects by their key set, leaves by kind."""
    if isinstance(value, dict):
        return {key: keys(v) for key, v in value.items()}
    if isinstance(value, bool | int | float):
        return "number"
    return type(value).__name__


def first(fleet: Fleet, family: str, count: int = 300) -> list[SimMessage]:
    return [m for m in fleet.messages(START, count) if m.family == family and not m.bad_kind]


def equipment_of(fleet: Fleet) -> dict[str, list[Equipment]]:
    """The ingest's view of the fleet: type code, and the category `Gateway` for A-966s."""
    return {
        d.topic: [
            Equipment(
                d.id,
                d.topic,
                d.type_code,
                type_category=GATEWAY_CATEGORY if d.family == FAMILY_GATEWAY else None,
            )
        ]
        for d in fleet.devices
    }


def decoder() -> Decoder:
    return Decoder(max_payload_bytes=64 * 1024)


def gateway_messages(days: int = 6, gateways: int = 3) -> list[SimMessage]:
    fleet = build_fleet(0, 0, seed=4, gateways=gateways)
    return list(fleet.messages(START, days * 96 * gateways))


# --- shapes ------------------------------------------------------------------------------


def test_meter_payloads_have_the_fixture_shapes() -> None:
    """Flat meters (NTP, reflashed, `sem_ntp`, `"0"`) and `Resumo` meters carry exactly
    the fields of their fixture files, and the clockless ones send the fixture's value."""
    fleet = build_fleet(12, 0, seed=3)
    specs = {d.id: d for d in fleet.devices}
    seen: set[object] = set()
    for message in first(fleet, FAMILY_M160_FLAT) + first(fleet, FAMILY_M160_WRAPPED):
        spec = specs[message.device_id]
        obj = orjson.loads(message.payload)
        if spec.wrapped:
            name = "m160_resumo.json"
        else:
            name = FLAT_FIXTURES[spec.clock, spec.reflashed]
            if spec.clock != CLOCK_NTP:
                assert obj["timestamp"] == fixture_object(name)["timestamp"]
        assert keys(obj) == keys(fixture_object(name)), name
        sample: object = fixture_object(name)
        inner, sample = (obj["Resumo"], sample["Resumo"]) if spec.wrapped else (obj, sample)  # type: ignore[index]
        assert isinstance(inner, dict) and isinstance(sample, dict)
        assert list(inner) == list(sample)  # the field order too
        seen.add(name)
    assert seen == {*FLAT_FIXTURES.values(), "m160_resumo.json"}


def test_inverter_payloads_have_the_ton_sungrow_shape() -> None:
    """Inverters send the TON firmware's Sungrow layout, day and night."""
    night = datetime(2026, 11, 28, 2, 0, tzinfo=BRASILIA)
    for at in (START, night):
        for message in build_fleet(0, 3, seed=2).messages(at, 9):
            obj = orjson.loads(message.payload)
            assert keys(obj) == keys(fixture_object("ton_inverter_sungrow.json"))


def test_gateway_payloads_have_the_a966_shapes() -> None:
    """Gateway frames have the A-966 fields, and the reboot sequence and the glitch of
    the fixtures occur: a post-boot dump (NSU 1), then `sts` 0 (NSU 2), and a frame
    with `phf` and `phr` both above 100."""
    messages = gateway_messages()
    state = keys(fixture_object("a966_ssu_state.json"))
    frames = [orjson.loads(m.payload) for m in messages]
    assert all(keys(f) == state for f in frames)
    by_topic: dict[str, list[dict[str, object]]] = defaultdict(list)
    for message, frame in zip(messages, frames, strict=True):
        by_topic[message.topic].append(frame)
    dumps = 0
    for series in by_topic.values():
        for before, after in pairwise(series):
            if after["NSU"] == 1:
                dumps += 1
                assert after["data"]["sts"] == 1  # type: ignore[index]
            elif before["NSU"] == 1:
                assert after["NSU"] == 2 and after["data"]["sts"] == 0  # type: ignore[index]
            else:
                assert after["NSU"] == before["NSU"] + 1  # type: ignore[operator]
    glitches = [f for f in frames if f["data"]["phf"] > 100 and f["data"]["phr"] > 100]
    assert dumps >= 1 and glitches, (dumps, len(glitches))
    assert keys(fixture_object("a966_ssu_post_boot_dump.json")) == state
    assert keys(fixture_object("a966_ssu_boot_sts0.json")) == state


def test_gateway_reports_consecutive_15_minute_buckets() -> None:
    """`time` is the string epoch of the bucket start, one bucket per message, sent just
    after the bucket ends; the message's own time is that bucket start."""
    by_device: dict[str, list[SimMessage]] = defaultdict(list)
    for message in gateway_messages(days=1, gateways=2):
        by_device[message.device_id].append(message)
    for series in by_device.values():
        starts = [int(orjson.loads(m.payload)["time"]) for m in series]
        assert all(s % 900 == 0 for s in starts)
        assert {b - a for a, b in pairwise(starts)} == {900}
        for message, bucket in zip(series, starts, strict=True):
            assert message.timestamp == datetime.fromtimestamp(bucket, UTC)
            assert timedelta(seconds=900) < message.at - message.timestamp < timedelta(seconds=960)


# --- proportions -------------------------------------------------------------------------


def test_default_proportions() -> None:
    """Most meters flat, a quarter wrapped, a fifth of the flat ones without NTP
    (alternately `sem_ntp` and `"0"`); ids and topics stable per family."""
    fleet = build_fleet(10, 5, seed=1, gateways=1, topic_prefix="site/x")
    groups = fleet.by_family()
    assert [len(groups[f]) for f in FAMILIES] == [7, 3, 5, 1]
    clocks = [d.clock for d in groups[FAMILY_M160_FLAT]]
    assert clocks[:2] == [CLOCK_SEM_NTP, CLOCK_ZERO] and set(clocks[2:]) == {CLOCK_NTP}
    assert (fleet.devices[0].id, fleet.devices[0].topic) == ("m160-0001", "site/x/m160/0001")
    (gateway,) = groups[FAMILY_GATEWAY]
    assert (gateway.id, gateway.topic, gateway.type_code) == (
        "a966-0001",
        "site/x/site0001/A966/SSU/state",
        "SSU_A966",
    )
    assert {d.type_code for d in fleet.devices if d.family != FAMILY_GATEWAY} == {
        "M-160",
        "INVERSOR",
    }


@pytest.mark.parametrize("size", [5, 6, 20])
def test_demo_fleet_has_every_family(size: int) -> None:
    """The demo's fleet (6 devices in its acceptance test) shows every family and a
    meter without NTP."""
    fleet = demo_fleet(DemoOptions(fleet=size))
    groups = fleet.by_family()
    assert len(fleet.devices) == size
    assert all(groups[f] for f in FAMILIES), {f: len(g) for f, g in groups.items()}
    assert any(d.clock != CLOCK_NTP for d in groups[FAMILY_M160_FLAT])


# --- what the ingest makes of them (DOMAIN v2) ------------------------------------------


def _decode_all(fleet: Fleet, count: int) -> list[tuple[SimMessage, list[Reading]]]:
    dec, equipment = decoder(), equipment_of(fleet)
    out = []
    for message in fleet.messages(START, count):
        decoded = dec.decode(message.topic, message.payload, equipment[message.topic], message.at)
        assert decoded.rejects == [], (message.family, message.payload, decoded.rejects)
        out.append((message, decoded.readings))
    return out


def test_meters_decode_as_domain_v2_says() -> None:
    """Flat and wrapped summaries: one row at their time with the window's energy
    (`consumo_phf`), `bom`; a clockless meter's row is timed by its arrival and says why."""
    fleet = build_fleet(8, 0, seed=11)
    specs = {d.id: d for d in fleet.devices}
    for message, readings in _decode_all(fleet, 400):
        (row,) = readings
        dados = orjson.loads(row.dados)
        assert row.energia_kwh == pytest.approx(dados["consumo_phf"])
        assert row.qualidade == "bom"
        clock = specs[message.device_id].clock
        if clock == CLOCK_NTP:
            assert row.timestamp_dados == message.timestamp and row.matchable
        else:
            assert message.timed_by_arrival and not row.matchable
            assert row.timestamp_dados == message.at  # the arrival, here the send time
            assert dados["_timestamp_motivo"] == REASON_BY_CLOCK[clock]
            assert dados["_timestamp_bruto"] == clock


def test_gateways_decode_as_domain_v2_says() -> None:
    """Normal frames get `(phr − phf) × KD` at their bucket; dumps and boot frames are
    raw (NULL energy); a glitch has its `phf` zeroed."""
    fleet = build_fleet(0, 0, seed=4, gateways=3)
    kinds: Counter[str] = Counter()
    for message, readings in _decode_all(fleet, 6 * 96 * 3):
        (row,) = readings
        frame = orjson.loads(message.payload)
        data = frame["data"]
        assert row.timestamp_dados == message.timestamp
        if frame["NSU"] == 1 or data["sts"] != 1:
            kinds["raw"] += 1
            assert row.energia_kwh is None and row.qualidade == "ruim"
            continue
        phf = 0 if data["phf"] > 100 and data["phr"] > 100 else data["phf"]
        kinds["glitch" if phf != data["phf"] else "normal"] += 1
        assert row.energia_kwh == pytest.approx((data["phr"] - phf) * GATEWAY_KD_KWH)
        assert row.qualidade == "bom"
    assert kinds["raw"] >= 2 and kinds["glitch"] >= 1 and kinds["normal"] > 100, kinds


def test_inverters_decode_into_minute_rollups() -> None:
    """Inverter readings are samples of their minute's row; none is an overflow frame."""
    fleet = build_fleet(0, 3, seed=2)
    for message, readings in _decode_all(fleet, 60):
        (sample,) = readings
        assert sample.is_rollup_sample and sample.sample_at == message.timestamp


# --- timing, determinism, counters --------------------------------------------------------


def test_each_device_advances_by_its_period() -> None:
    """Meters tick every 30 s, inverters 60 s, gateways 900 s, from a per-device offset;
    the merged order is global."""
    fleet = build_fleet(6, 4, seed=5, gateways=2)
    messages = list(fleet.messages(START + timedelta(microseconds=400), 1200))
    assert [m.at for m in messages] == sorted(m.at for m in messages)
    times: dict[str, list[datetime]] = defaultdict(list)
    for message in messages:
        times[message.device_id].append(message.at)
    offsets = set()
    for spec in fleet.devices:
        ticks = times[spec.id]
        assert START <= ticks[0] < START + timedelta(seconds=spec.period_s + 60)
        assert {b - a for a, b in pairwise(ticks)} == {timedelta(seconds=spec.period_s)}
        offsets.add(ticks[0])
    assert len(offsets) > 1


def test_same_seed_same_messages() -> None:
    """Seed, start and counts fix every byte; another seed gives another fleet."""
    twice = [
        list(build_fleet(3, 2, seed=42, gateways=1, bad_ratio=0.1).messages(START, 300))
        for _ in "ab"
    ]
    assert twice[0] == twice[1]
    other = list(build_fleet(3, 2, seed=43, gateways=1, bad_ratio=0.1).messages(START, 300))
    assert [m.payload for m in other] != [m.payload for m in twice[0]]


def test_meter_energy_is_a_window_delta_and_phf_a_counter() -> None:
    """`consumo_phf` is the window's energy (≈ Pt × 30 s) and `phf` grows by it."""
    previous: dict[str, float] = {}
    for message in first(build_fleet(6, 0, seed=13), FAMILY_M160_FLAT, 600):
        obj = orjson.loads(message.payload)
        assert obj["consumo_phf"] == pytest.approx(obj["Pt"] / 1000 * 30 / 3600, abs=2e-4)
        assert 0 < obj["consumo_phf"] < 5  # never the firmware's outlier
        if message.device_id in previous:
            grown = obj["phf"] - previous[message.device_id]
            assert grown == pytest.approx(obj["consumo_phf"], abs=0.011)
        previous[message.device_id] = obj["phf"]


def test_inverter_counters_only_grow_and_daily_yield_resets_at_local_midnight() -> None:
    """`total_yield`, running times never fall; `daily_yield` restarts at 00:00 Brasília."""
    previous: dict[tuple[str, str], float] = {}
    daily: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for message in build_fleet(0, 2, seed=13).messages(START, 2 * 24 * 60 * 2):
        energy = orjson.loads(message.payload)["energy"]
        for key in ("total_yield", "total_running_time"):
            assert energy[key] >= previous.get((message.device_id, key), 0.0), key
            previous[message.device_id, key] = energy[key]
        assert message.timestamp is not None
        daily[message.device_id].append((message.timestamp, energy["daily_yield"]))
    for series in daily.values():
        for (t0, y0), (t1, y1) in pairwise(series):
            same_day = t0.astimezone(BRASILIA).date() == t1.astimezone(BRASILIA).date()
            assert y1 >= y0 if same_day else (y1 == 0.0 and y0 > 0.0)


@pytest.mark.parametrize(
    ("hour", "minute"), [(0, 0), (3, 30), (5, 59), (18, 0), (21, 30), (23, 59)]
)
def test_inverters_produce_nothing_at_night(hour: int, minute: int) -> None:
    """The daylight curve is zero at night, and so is an inverter's active power."""
    night = datetime(2026, 11, 28, hour, minute, tzinfo=BRASILIA)
    assert daylight_factor(night) == 0.0
    for message in build_fleet(0, 3, seed=2).messages(night, 3):
        obj = orjson.loads(message.payload)
        assert obj["power"]["active_total"] == 0 and obj["status"]["work_state_text"] == "Stop"


def test_daylight_peaks_at_local_noon() -> None:
    """The curve is 1 at 12:00 in Brasília (15:00 UTC) and inverters produce then."""
    noon = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    assert daylight_factor(noon) == pytest.approx(1.0)
    for message in build_fleet(0, 3, seed=2).messages(noon, 3):
        assert orjson.loads(message.payload)["power"]["active_total"] > 0


def test_values_are_plausible_for_brazil() -> None:
    """Phase voltages near 127 or 220 V, 60 Hz, power factors 0.95–1, phase sums consistent."""
    fleet = build_fleet(8, 0, seed=21, wrapped_meters=8)
    for message in first(fleet, FAMILY_M160_WRAPPED, 400):
        summary = orjson.loads(message.payload)["Resumo"]
        nominal = 127.0 if summary["Va"] < 170 else 220.0
        for key in ("Va", "Vb", "Vc"):
            assert abs(summary[key] / nominal - 1) <= 0.06
        assert all(0.95 <= summary[k] <= 1.0 for k in ("FPa", "FPb", "FPc"))
        assert summary["Pt"] == pytest.approx(
            summary["Pa"] + summary["Pb"] + summary["Pc"], abs=0.2
        )
        assert summary["energia_total"] == pytest.approx(summary["Pt"] / 1000 * 30 / 3600, abs=1e-4)
        assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", summary["timestamp"])
        assert message.timestamp is not None
        local = message.timestamp.astimezone(BRASILIA)
        assert summary["timestamp"] == local.strftime("%d/%m/%Y %H:%M:%S")
    for message in first(build_fleet(6, 0, seed=21, wrapped_meters=0), FAMILY_M160_FLAT):
        obj = orjson.loads(message.payload)
        if "Freq" in obj:
            assert 59.9 <= obj["Freq"] <= 60.1 and 0.95 <= obj["FPt"] <= 1.0


# --- bad input ---------------------------------------------------------------------------


def test_bad_inputs_are_rejected_and_leave_good_ones_alone() -> None:
    """About `bad_ratio` of the messages are bad, each kind only on a family that must
    reject it, each rejected for its reason (DOMAIN v2 routing by the equipment)."""
    clean = list(build_fleet(4, 2, seed=8, gateways=1).messages(START, 2000))
    dirty = list(build_fleet(4, 2, seed=8, gateways=1, bad_ratio=0.3).messages(START, 2000))
    dec, equipment = decoder(), equipment_of(build_fleet(4, 2, seed=8, gateways=1))
    bad = [m for m in dirty if m.bad_kind is not None]
    assert 0.25 < len(bad) / len(dirty) < 0.35
    assert {m.bad_kind for m in bad} == set(BAD_INPUTS) == set(EXPECTED_REJECT)
    assert len({m.payload for m in bad}) == len(bad)  # each one its own reject row
    for message in bad:
        assert message.bad_kind is not None and message.timestamp is None
        assert message.family in BAD_INPUTS[message.bad_kind][0]
        decoded = dec.decode(message.topic, message.payload, equipment[message.topic], message.at)
        assert decoded.readings == [] and len(decoded.rejects) == 1, (message, decoded)
        code = decoded.rejects[0].reason.split(":")[0]
        assert code in EXPECTED_REJECT[message.bad_kind], (message.bad_kind, code)
    kept = [(c, d) for c, d in zip(clean, dirty, strict=True) if d.bad_kind is None]
    assert all(c == d for c, d in kept)


# --- the summary -------------------------------------------------------------------------


def test_summary_lists_every_family() -> None:
    """The printed summary has a line per family (sent or not) with published, bad,
    clockless, and — once read back — stored, with energy, timed by arrival, rejected."""
    report = SimReport()
    for message in build_fleet(4, 1, seed=1, bad_ratio=0.2).messages(START, 200):
        report.add(message)
    text = report.summary()
    assert text.startswith(f"simulate: {report.published} published and acknowledged")
    lines = {label: _line(text, label) for label in FAMILY_LABELS.values()}
    flat = lines[FAMILY_LABELS[FAMILY_M160_FLAT]].split()
    assert flat[-4:] == ["-", "-", "-", "-"]  # nothing read back yet
    assert lines[FAMILY_LABELS[FAMILY_GATEWAY]].split()[-7:-4] == ["0", "0", "0"]
    stored = {f: (10 + n, 5 + n, n, 2) for n, f in enumerate(FAMILIES)}
    text = report.summary(stored)
    for n, family in enumerate(FAMILIES):
        numbers = _line(text, FAMILY_LABELS[family]).split()[-7:]
        counts = report.counts()[family]
        assert numbers == [
            str(v) for v in (counts.published, counts.bad, counts.clockless, 10 + n, 5 + n, n, 2)
        ]
    assert sum(report.counts()[f].published for f in FAMILIES) == report.published
    assert report.counts()[FAMILY_M160_FLAT].clockless > 0


def _line(text: str, label: str) -> str:
    (line,) = [row for row in text.splitlines() if row.strip().startswith(label)]
    return line


def test_content_key_ignores_annotations_and_number_forms() -> None:
    """The demo matches a row timed by arrival by content: jsonb's number forms and the
    ingest's `_` annotations do not change it; another value does."""
    sent = b'{"phf": 10, "Va": 221.4, "_timestamp_motivo": "sem_ntp"}'
    assert content_of(sent) == content_of('{"Va": 221.4, "phf": 10.0}')
    assert content_of(sent) != content_of('{"Va": 221.5, "phf": 10.0}')
    assert not math.isnan(orjson.loads(content_of(sent))["phf"])


# --- options -----------------------------------------------------------------------------


def _args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "env_file": Path("/nonexistent"),
        "broker": "mqtt://127.0.0.1:1883",
        "ca": None,
        "meters": 1,
        "wrapped_meters": None,
        "clockless_meters": None,
        "inverters": 1,
        "gateways": 1,
        "settle": 15.0,
        "speedup": 0.0,
        "count": 1,
        "duration": None,
        "bad_ratio": 0.0,
        "seed": 1,
        "start": None,
        "topic_prefix": "aupus/sim",
        "register": None,
    }
    return argparse.Namespace(**(values | overrides))


@pytest.mark.parametrize(
    "overrides",
    [
        {"bad_ratio": 1.5},
        {"broker": "http://broker:8883"},
        {"broker": "mqtts://broker:8883", "ca": "/nonexistent/ca.pem"},
        {"speedup": -1.0},
        {"settle": -1.0},
        {"gateways": -1},
        {"start": "31/02/2026 10:00:00"},
        {"wrapped_meters": 2},
        {"meters": 4, "wrapped_meters": 2, "clockless_meters": 3},
    ],
)
def test_invalid_options_are_refused(overrides: dict[str, object]) -> None:
    """Out-of-range flags, an unsupported broker scheme or a bad --start raise ValueError."""
    with pytest.raises(ValueError):
        SimulateOptions.from_args(_args(**overrides))


def test_register_without_dsn_takes_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--register` with no value uses DATABASE_URL; `--start` without offset is Brasília time."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
    options = SimulateOptions.from_args(_args(register="", start="2026-11-28T12:00:00"))
    assert options.register_dsn == "postgresql://u@h/db"
    assert options.start == datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    monkeypatch.delenv("DATABASE_URL")
    with pytest.raises(ValueError, match="DATABASE_URL"):
        SimulateOptions.from_args(_args(register=""))
