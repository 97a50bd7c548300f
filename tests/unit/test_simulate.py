"""The simulated fleet: fixture shapes, decodable payloads, timing, determinism, bad input."""

from __future__ import annotations

import argparse
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson
import pytest

from aupus_ha.decoding import Decoder, default_families
from aupus_ha.readings import Equipment, Reading
from aupus_ha.simulate import (
    BAD_INPUTS,
    FAMILY_BAD,
    FAMILY_INVERTER,
    FAMILY_M160,
    Fleet,
    SimMessage,
    SimulateOptions,
    build_fleet,
    daylight_factor,
)
from aupus_ha.timestamps import BRASILIA

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
# 15:00 in Brasília: the sun is up, so inverters produce.
START = datetime(2026, 11, 28, 18, 0, tzinfo=UTC)
EXPECTED_REJECT = {
    "not_json": "invalid_json",
    "invalid_date": "timestamp_unparseable",
    "absurd_epoch": "timestamp_out_of_range",
    "negative_epoch": "timestamp_out_of_range",
    "array": "not_an_object",
    "resumo_not_object": "invalid_summary",
    "not_utf8": "not_utf8",
}


def shape(value: object) -> object:
    """Key structure of a JSON value (objects by key, leaves by kind)."""
    if isinstance(value, dict):
        return {key: shape(v) for key, v in value.items()}
    if isinstance(value, bool | int | float):
        return "number"
    return type(value).__name__


def fixture(name: str) -> dict[str, object]:
    loaded = orjson.loads((FIXTURES / name).read_bytes())
    assert isinstance(loaded, dict)
    return loaded


def first(fleet: Fleet, family: str, count: int = 200) -> list[SimMessage]:
    return [m for m in fleet.messages(START, count) if m.family == family]


def decoder_for(fleet: Fleet) -> tuple[Decoder, dict[str, list[Equipment]]]:
    equipment = {d.topic: [Equipment(d.id, d.topic, d.type_code)] for d in fleet.devices}
    return Decoder(max_payload_bytes=64 * 1024), equipment


def carries(obj: dict[str, object], reference: dict[str, object]) -> bool:
    """`obj` has every field of `reference`, each of the same shape; `timestamp` may be
    text or a number (DOMAIN v2: devices without NTP send "sem_ntp" or "0")."""
    for key, value in reference.items():
        if key not in obj:
            return False
        if key != "timestamp" and shape(obj[key]) != shape(value):
            return False
    return True


def test_payloads_have_the_fixture_shapes() -> None:
    """Wrapped M-160 payloads carry the fields of m160_resumo.json's `Resumo`, unwrapped
    ones those of the flat TON/PD666 form (m160_ton_flat.json: DOMAIN v2, the common one
    today), inverters those of inverter_reading.json."""
    fleet = build_fleet(4, 2, seed=3, unwrapped_meters=2)
    meters = first(fleet, FAMILY_M160)
    wrapped = {m.device_id for m in meters if b'"Resumo"' in m.payload}
    assert wrapped == {"m160-0001", "m160-0002"}
    for message in meters:
        obj = orjson.loads(message.payload)
        if message.device_id in wrapped:
            resumo = fixture("m160_resumo.json")["Resumo"]
            assert isinstance(resumo, dict)
            assert carries(obj["Resumo"], resumo), sorted(set(resumo) - set(obj["Resumo"]))
        else:
            flat = fixture("m160_ton_flat.json")
            assert carries(obj, flat), sorted(set(flat) - set(obj))
    for message in first(fleet, FAMILY_INVERTER):
        assert shape(orjson.loads(message.payload)) == shape(fixture("inverter_reading.json"))


def test_ids_and_topics_are_stable() -> None:
    """Devices are m160-NNNN / inv-NNNN on <prefix>/m160/NNNN and <prefix>/inverter/NNNN."""
    fleet = build_fleet(2, 1, seed=9, topic_prefix="site/x")
    assert [(d.id, d.topic) for d in fleet.devices] == [
        ("m160-0001", "site/x/m160/0001"),
        ("m160-0002", "site/x/m160/0002"),
        ("inv-0001", "site/x/inverter/0001"),
    ]


def test_payloads_decode_as_good_readings_at_their_time() -> None:
    """Every good message decodes without reject, quality `bom`, at the simulated instant."""
    fleet = build_fleet(5, 3, seed=11, unwrapped_meters=2)
    decoder, equipment = decoder_for(fleet)
    families = default_families()
    readings: list[Reading] = []
    for message in fleet.messages(START, 400):
        obj = orjson.loads(message.payload)
        family = next(f for f in families if f.matches(obj)).name
        assert (family == FAMILY_M160) == (message.family == FAMILY_M160)
        decoded = decoder.decode(
            message.topic, message.payload, equipment[message.topic], message.at
        )
        assert decoded.rejects == []
        if message.family == FAMILY_M160:  # stateless: one row per summary, at its time
            (row,) = decoded.readings
            assert row.timestamp_dados == message.timestamp
            assert row.num_leituras == 30 and row.energia_kwh is not None
        readings += decoded.readings
    readings += decoder.flush(START + timedelta(days=1)).readings  # any stateful family
    assert readings and {r.qualidade for r in readings} == {"bom"}


def test_m160_text_timestamp_is_brasilia_time() -> None:
    """`Resumo.timestamp` is `DD/MM/YYYY HH:mm:ss` in UTC−3; the envelope is the window start."""
    (message, *_) = first(build_fleet(1, 0, seed=1), FAMILY_M160, 1)
    obj = orjson.loads(message.payload)
    assert message.timestamp is not None
    local = message.timestamp.astimezone(BRASILIA)
    assert obj["Resumo"]["timestamp"] == local.strftime("%d/%m/%Y %H:%M:%S")
    assert re.fullmatch(r"\d\d/\d\d/\d{4} \d\d:\d\d:\d\d", obj["Resumo"]["timestamp"])
    assert obj["timestamp"] == message.timestamp.timestamp() - 30


def test_each_device_advances_by_its_period() -> None:
    """Meters tick every 30 s and inverters every 60 s from a per-device offset; order is global."""
    fleet = build_fleet(6, 4, seed=5)
    messages = list(fleet.messages(START + timedelta(microseconds=400), 600))
    assert [m.at for m in messages] == sorted(m.at for m in messages)
    times: dict[str, list[datetime]] = defaultdict(list)
    for message in messages:
        times[message.device_id].append(message.at)
    offsets = set()
    for spec in fleet.devices:
        ticks = times[spec.id]
        assert START <= ticks[0] < START + timedelta(seconds=spec.period_s)
        assert {b - a for a, b in pairwise(ticks)} == {timedelta(seconds=spec.period_s)}
        offsets.add(ticks[0])
    assert len(offsets) > 1


def test_same_seed_same_messages() -> None:
    """Seed, start and count fix every byte; another seed gives another fleet."""
    twice = [list(build_fleet(3, 2, seed=42, bad_ratio=0.1).messages(START, 300)) for _ in "ab"]
    assert twice[0] == twice[1]
    other = list(build_fleet(3, 2, seed=43, bad_ratio=0.1).messages(START, 300))
    assert [m.payload for m in other] != [m.payload for m in twice[0]]


def test_bad_inputs_are_rejected_and_leave_good_ones_alone() -> None:
    """About `bad_ratio` of the messages are bad, each kind rejected for its reason."""
    clean = list(build_fleet(4, 2, seed=8).messages(START, 2000))
    dirty = list(build_fleet(4, 2, seed=8, bad_ratio=0.3).messages(START, 2000))
    decoder, equipment = decoder_for(build_fleet(4, 2, seed=8))
    bad = [m for m in dirty if m.family == FAMILY_BAD]
    assert 0.25 < len(bad) / len(dirty) < 0.35
    assert {m.bad_kind for m in bad} == set(BAD_INPUTS) == set(EXPECTED_REJECT)
    assert len({m.payload for m in bad}) == len(bad)  # each one its own reject row
    for message in bad:
        assert message.timestamp is None
        decoded = decoder.decode(
            message.topic, message.payload, equipment[message.topic], message.at
        )
        assert decoded.readings == [] and len(decoded.rejects) == 1
        assert message.bad_kind is not None
        assert decoded.rejects[0].reason.startswith(EXPECTED_REJECT[message.bad_kind] + ":")
    kept = [(c, d) for c, d in zip(clean, dirty, strict=True) if d.family != FAMILY_BAD]
    assert all(c == d for c, d in kept)


def test_counters_only_grow_and_daily_yield_resets_at_local_midnight() -> None:
    """Cumulative counters never fall; `daily_yield` restarts at 00:00 in Brasília."""
    fleet = build_fleet(2, 2, seed=13)
    previous: dict[tuple[str, str], float] = {}
    daily: dict[str, list[tuple[datetime, float]]] = defaultdict(list)
    for message in fleet.messages(START, 2 * 24 * 60 * 4):  # two simulated days
        obj = orjson.loads(message.payload)
        if message.family == FAMILY_M160:
            values = {k: v for k, v in obj["Resumo"].items() if k.startswith("consumo_")}
        else:
            energy = obj["energy"]
            values = {k: energy[k] for k in ("total_yield", "total_running_time")}
            assert message.timestamp is not None
            daily[message.device_id].append((message.timestamp, energy["daily_yield"]))
        for key, value in values.items():
            assert value >= previous.get((message.device_id, key), 0.0), key
            previous[message.device_id, key] = value
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
        assert obj["power"]["active_total"] == 0 and obj["status"]["state"] == "standby"


def test_daylight_peaks_at_local_noon() -> None:
    """The curve is 1 at 12:00 in Brasília (15:00 UTC) and inverters produce then."""
    noon = datetime(2026, 11, 28, 15, 0, tzinfo=UTC)
    assert daylight_factor(noon) == pytest.approx(1.0)
    for message in build_fleet(0, 3, seed=2).messages(noon, 3):
        assert orjson.loads(message.payload)["power"]["active_total"] > 0


def test_values_are_plausible_for_brazil() -> None:
    """Phase voltages near 127 or 220 V, 60 Hz, power factors 0.95–1, phase sums consistent."""
    for message in first(build_fleet(8, 0, seed=21), FAMILY_M160, 400):
        summary = orjson.loads(message.payload)["Resumo"]
        nominal = 127.0 if summary["Va"] < 170 else 220.0
        for key in ("Va", "Vb", "Vc"):
            assert abs(summary[key] / nominal - 1) <= 0.06
        assert 59.9 <= summary["freq"] <= 60.1
        assert all(0.95 <= summary[k] <= 1.0 for k in ("FPa", "FPb", "FPc"))
        assert summary["Pt"] == pytest.approx(
            summary["Pa"] + summary["Pb"] + summary["Pc"], abs=0.2
        )
        assert summary["energia_total"] == pytest.approx(summary["Pt"] / 1000 * 30 / 3600, abs=1e-4)


def _args(**overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "env_file": Path("/nonexistent"),
        "broker": "mqtt://127.0.0.1:1883",
        "ca": None,
        "meters": 1,
        "unwrapped_meters": 0,
        "inverters": 1,
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
        {"start": "31/02/2026 10:00:00"},
        {"unwrapped_meters": 2},
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
