"""The A-966 gateway family (DOMAIN v2 "A-966 gateway"): every a966_* fixture, the raw-only
filters, the phf glitch, energy, power and the derived fields, and properties over any
pulse counts.

Expected values are computed by hand from DOMAIN v2 (KD = 0.048 kWh per pulse, a
15-min bucket = 0.25 h, so one pulse is 0.048 / 0.25 = 0.192 kW); the arithmetic is in
the comments, never taken from what the product returns.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
TOPIC = "site1/A966/SSU/state"  # the equipment's topico_mqtt is the full state topic
GATEWAY = Equipment("gw-1", TOPIC, type_code="SSU_A966", type_category="Gateway")
# Arrival a day after the fixtures' bucket times (all within 2026-11-29T00:00..00:45Z).
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
LIMIT = 64 * 1024


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def decode(payload: bytes | dict[str, object]) -> Decoded:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Decoder(max_payload_bytes=LIMIT).decode(TOPIC, raw, [GATEWAY], RECEIVED)


def reading(payload: bytes | dict[str, object]) -> Reading:
    decoded = decode(payload)
    assert decoded.rejects == [], decoded.rejects
    (only,) = decoded.readings
    assert only.equipamento_id == "gw-1"
    return only


def dados(r: Reading) -> dict[str, object]:
    stored = orjson.loads(r.dados)
    assert isinstance(stored, dict)
    return stored


def reject_code(payload: dict[str, object]) -> str:
    decoded = decode(payload)
    assert decoded.readings == []
    (reject,) = decoded.rejects
    return reject.reason.partition(":")[0]


def state(**data: object) -> dict[str, object]:
    """A computable A-966 message (sts 1, cdo present, NSU not 1) with `data` over it."""
    base: dict[str, object] = {
        "cdo": "15",
        "phf": 0,
        "phr": 0,
        "sts": 1,
        "qhfc": 0,
        "qhfi": 0,
        "qhrc": 0,
        "qhri": 0,
        "frame": "",
    }
    return {"NSU": 32, "ver": "1.2.8.2509", "data": {**base, **data}, "time": "1795910400"}


# --- the fixtures ----------------------------------------------------------------------------


def test_state_fixture() -> None:
    """a966_ssu_state.json: a normal bucket, energy and the derived fields."""
    r = reading(fixture("a966_ssu_state.json"))
    # time "1795910400" (string epoch s) = 20786 days × 86400 s = 2026-11-29T00:00:00Z
    assert r.timestamp_dados == datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    assert r.qualidade == "bom"
    # phf 0, phr 1487: energia = (1487 − 0) × 0.048 = 71.376 kWh (positive: net generation)
    assert r.energia_kwh == pytest.approx(71.376, abs=1e-9)
    # potência = 71.376 × 4 = 285.504 kW
    assert r.potencia_ativa_kw == pytest.approx(285.504, abs=1e-9)
    d = dados(r)
    assert d["P_direto"] == 0.0  # 0 × 0.048 / 0.25
    assert d["P_rev"] == 285.504  # 1487 × 0.048 / 0.25 = 1487 × 0.192
    assert d["Q_liquido"] == -0.576  # ((0 + 0) − (3 + 0)) × 0.192
    # |0 − 285.504| / hypot(−285.504, −0.576) = 0.999998 → 1.0 at 3 decimals
    assert d["FP_calc"] == 1.0
    assert "_aupus_glitch_phf" not in d and "_aupus_post_boot_dump" not in d
    # the raw payload stays as sent
    assert d["NSU"] == 32 and d["data"]["phr"] == 1487 and d["time"] == "1795910400"  # type: ignore[index]


def test_post_boot_dump_fixture() -> None:
    """a966_ssu_post_boot_dump.json: NSU 1 is the downtime dump, kept raw and flagged."""
    r = reading(fixture("a966_ssu_post_boot_dump.json"))
    # time "1795911300" = 1795910400 + 900 s = 2026-11-29T00:15:00Z
    assert r.timestamp_dados == datetime(2026, 11, 29, 0, 15, tzinfo=UTC)
    assert (r.energia_kwh, r.potencia_ativa_kw, r.qualidade) == (None, None, "ruim")
    d = dados(r)
    assert d["_aupus_post_boot_dump"] is True
    assert "_aupus_glitch_phf" not in d
    assert "P_direto" not in d and "FP_calc" not in d  # raw only: nothing derived
    assert d["data"]["phr"] == 48211  # type: ignore[index]


def test_boot_sts0_fixture() -> None:
    """a966_ssu_boot_sts0.json: sts 0 (boot) is kept raw, no flag (NSU is 2)."""
    r = reading(fixture("a966_ssu_boot_sts0.json"))
    # time "1795912200" = 1795910400 + 1800 s = 2026-11-29T00:30:00Z
    assert r.timestamp_dados == datetime(2026, 11, 29, 0, 30, tzinfo=UTC)
    assert (r.energia_kwh, r.potencia_ativa_kw, r.qualidade) == (None, None, "ruim")
    d = dados(r)
    assert "_aupus_post_boot_dump" not in d and "_aupus_glitch_phf" not in d
    assert "P_rev" not in d


def test_phf_glitch_fixture() -> None:
    """a966_ssu_phf_glitch.json: phf 412 > 100 and phr 1498 > 100: phf := 0 first, flagged."""
    r = reading(fixture("a966_ssu_phf_glitch.json"))
    # time "1795913100" = 1795910400 + 2700 s = 2026-11-29T00:45:00Z
    assert r.timestamp_dados == datetime(2026, 11, 29, 0, 45, tzinfo=UTC)
    assert r.qualidade == "bom"
    # energia = (1498 − 0) × 0.048 = 71.904 kWh; potência = 71.904 × 4 = 287.616 kW
    assert r.energia_kwh == pytest.approx(71.904, abs=1e-9)
    assert r.potencia_ativa_kw == pytest.approx(287.616, abs=1e-9)
    d = dados(r)
    assert d["_aupus_glitch_phf"] is True
    assert d["P_direto"] == 0.0  # the zeroed phf: 0 × 0.192
    assert d["P_rev"] == 287.616  # 1498 × 0.192
    assert d["Q_liquido"] == -0.96  # ((0 + 0) − (5 + 0)) × 0.192
    assert d["FP_calc"] == 1.0  # 287.616 / hypot(287.616, 0.96) = 0.999994
    assert d["data"]["phf"] == 412  # type: ignore[index]  # the raw count stays in dados


def test_old_firmware_empty_fixture() -> None:
    """a966_old_firmware_empty.json `{}`: no cdo (old firmware), raw only, arrival time."""
    r = reading(fixture("a966_old_firmware_empty.json"))
    assert r.timestamp_dados == RECEIVED  # no time field at all
    assert (r.energia_kwh, r.potencia_ativa_kw, r.qualidade) == (None, None, "ruim")
    d = dados(r)
    assert "_aupus_post_boot_dump" not in d and "P_direto" not in d


# --- the rules, one by one -------------------------------------------------------------------


def test_fields_at_the_top_level() -> None:
    """Fields may sit at the top level: `data.x`, then `x`."""
    payload: dict[str, object] = {"NSU": 5, "cdo": "15", "sts": 1, "phf": 0, "phr": 100}
    r = reading(payload)
    assert r.energia_kwh == pytest.approx(4.8)  # (100 − 0) × 0.048
    assert r.potencia_ativa_kw == pytest.approx(19.2)  # 4.8 × 4
    assert dados(r)["P_rev"] == 19.2  # 100 × 0.192


def test_data_wins_over_the_top_level() -> None:
    """`data.phr` is read before a top-level `phr`; a null `data.x` falls back to `x`."""
    payload = state(phr=10, cdo=None)
    payload.update(phr=999, cdo="15")
    r = reading(payload)
    assert r.energia_kwh == pytest.approx(0.48)  # 10 × 0.048 (not 999 × 0.048)
    assert r.qualidade == "bom"  # cdo found at the top level: not old firmware


@pytest.mark.parametrize(
    ("change", "flag"),
    [
        ({"sts": 0}, None),  # boot
        ({"sts": 2}, None),
        ({"sts": None}, None),
        ({"cdo": None}, None),  # old firmware: cdo missing
        ({"NSU": 1}, "_aupus_post_boot_dump"),
    ],
)
def test_raw_only_filters(change: dict[str, object], flag: str | None) -> None:
    """sts ≠ 1, cdo missing or NSU = 1: the row is kept raw (NULL energy/power, ruim),
    even with a glitch-sized phf (the glitch is only looked for in computed rows)."""
    payload = state(phf=412, phr=1498)
    if "NSU" in change:
        payload["NSU"] = change["NSU"]
    else:
        payload["data"] = {**payload["data"], **change}  # type: ignore[dict-item]
    r = reading(payload)
    assert (r.energia_kwh, r.potencia_ativa_kw, r.qualidade) == (None, None, "ruim")
    d = dados(r)
    assert "_aupus_glitch_phf" not in d and "P_direto" not in d
    assert (flag in d) if flag else "_aupus_post_boot_dump" not in d


@pytest.mark.parametrize(
    ("phf", "phr", "glitch"),
    [(100, 1498, False), (412, 100, False), (101, 101, True), (0, 1487, False)],
)
def test_glitch_needs_both_counts_above_100(phf: int, phr: int, glitch: bool) -> None:
    """`phf` > 100 and `phr` > 100 (strictly) is the glitch; 100 is not above 100."""
    r = reading(state(phf=phf, phr=phr))
    used_phf = 0 if glitch else phf
    assert r.energia_kwh == pytest.approx((phr - used_phf) * 0.048)
    assert ("_aupus_glitch_phf" in dados(r)) is glitch


def test_net_consumption_and_power_factor() -> None:
    """Import above export is negative energy; FP_calc from the active and reactive parts."""
    r = reading(state(phf=10, phr=0, qhfi=10))
    assert r.energia_kwh == pytest.approx(-0.48)  # (0 − 10) × 0.048
    assert r.potencia_ativa_kw == pytest.approx(-1.92)  # −0.48 × 4
    d = dados(r)
    assert (d["P_direto"], d["P_rev"]) == (1.92, 0.0)  # 10 × 0.192, 0
    assert d["Q_liquido"] == 1.92  # ((10 + 0) − (0 + 0)) × 0.192
    assert d["FP_calc"] == 0.707  # 1.92 / hypot(1.92, 1.92) = 1/√2 = 0.70711


def test_power_factor_of_an_empty_bucket_is_one() -> None:
    """No pulses at all: hypot is 0, FP_calc is 1 (not a division by zero)."""
    r = reading(state())
    assert r.energia_kwh == 0.0 and r.qualidade == "bom"
    d = dados(r)
    assert (d["P_direto"], d["P_rev"], d["Q_liquido"], d["FP_calc"]) == (0.0, 0.0, 0.0, 1.0)


def test_reactive_sums_use_all_four_quadrants() -> None:
    """Q_liquido = ((qhfi + qhri) − (qhfc + qhrc)) × KD / 0.25."""
    d = dados(reading(state(qhfi=7, qhri=3, qhfc=2, qhrc=1)))
    assert d["Q_liquido"] == 1.344  # ((7 + 3) − (2 + 1)) × 0.192 = 7 × 0.192


def test_counts_as_numeric_strings_and_a_string_sts() -> None:
    """The platform reads every field with Number(): "1" is 1, "1487" is 1487."""
    r = reading(state(sts="1", phr="1487"))
    assert r.energia_kwh == pytest.approx(71.376)  # 1487 × 0.048


def test_missing_active_count_is_unknown_not_zero() -> None:
    """Without phf or phr the bucket's energy is unknown: raw only (NULL, not 0)."""
    payload = state()
    del payload["data"]["phr"]  # type: ignore[attr-defined]
    r = reading(payload)
    assert (r.energia_kwh, r.qualidade) == (None, "ruim")


@pytest.mark.parametrize("value", [True, [1], {"n": 1}, "abc"])
def test_a_count_that_is_not_a_number_is_rejected(value: object) -> None:
    """A pulse count that is no number cannot give an energy: the message is a reject."""
    assert reject_code(state(phr=value)) == "invalid_gateway"


@pytest.mark.parametrize("value", [1e300, -1e16, "1e400"])
def test_absurd_counts_are_rejected(value: object) -> None:
    """Counts beyond ±1e15 (or not finite) are `number_out_of_range` (decoding's bound)."""
    assert reject_code(state(qhri=value)) == "number_out_of_range"


def test_time_is_the_string_epoch() -> None:
    """`time` (string epoch seconds) is the bucket's time; the row is matchable."""
    r = reading(state())
    assert r.timestamp_dados == datetime(2026, 11, 29, 0, 0, tzinfo=UTC)
    assert r.num_leituras == 1 and r.timestamp_fim == r.timestamp_dados  # as the platform
    assert r.sample_at is None  # a row of its own, not a rollup sample


# --- properties ------------------------------------------------------------------------------

COUNT = st.integers(min_value=0, max_value=10**7)


@given(
    phf=COUNT,
    phr=COUNT,
    q=st.tuples(COUNT, COUNT, COUNT, COUNT),
    sts=st.sampled_from([0, 1, 1, 1, 2, "1", None]),
    nsu=st.integers(min_value=0, max_value=500),
    has_cdo=st.booleans(),
    top_level=st.booleans(),
)
def test_gateway_rules_hold_for_any_counts(
    *,
    phf: int,
    phr: int,
    q: tuple[int, int, int, int],
    sts: object,
    nsu: int,
    has_cdo: bool,
    top_level: bool,
) -> None:
    """For any counts and flags: raw only exactly when DOMAIN says, else the glitch rule,
    energy = (phr − phf') × KD, power = 4 × energy, derived fields at 3 decimals,
    FP_calc within [0, 1], and the raw counts untouched in dados."""
    qhfi, qhri, qhfc, qhrc = q
    fields: dict[str, object] = {"phf": phf, "phr": phr, "sts": sts}
    fields.update(qhfi=qhfi, qhri=qhri, qhfc=qhfc, qhrc=qhrc)
    if has_cdo:
        fields["cdo"] = "15"
    payload: dict[str, object] = {"NSU": nsu, "time": "1795910400"}
    if top_level:
        payload.update(fields)
    else:
        payload["data"] = fields
    r = reading(payload)
    d = dados(r)
    raw_only = sts not in (1, "1") or not has_cdo or nsu == 1
    assert ("_aupus_post_boot_dump" in d) is (nsu == 1)
    if raw_only:
        assert (r.energia_kwh, r.potencia_ativa_kw, r.qualidade) == (None, None, "ruim")
        assert "_aupus_glitch_phf" not in d and "FP_calc" not in d
        return
    glitch = phf > 100 and phr > 100
    assert ("_aupus_glitch_phf" in d) is glitch
    used_phf = 0 if glitch else phf
    assert r.qualidade == "bom" and r.energia_kwh is not None
    assert r.energia_kwh == pytest.approx((phr - used_phf) * 0.048, abs=1e-9)
    assert r.potencia_ativa_kw == pytest.approx(4 * r.energia_kwh, abs=1e-9)
    p_direto, p_rev = used_phf * 0.048 / 0.25, phr * 0.048 / 0.25
    q_liq = ((qhfi + qhri) - (qhfc + qhrc)) * 0.048 / 0.25
    assert d["P_direto"] == pytest.approx(p_direto, abs=5e-4)
    assert d["P_rev"] == pytest.approx(p_rev, abs=5e-4)
    assert d["Q_liquido"] == pytest.approx(q_liq, abs=5e-4)
    fp = d["FP_calc"]
    assert isinstance(fp, float) and 0.0 <= fp <= 1.0
    apparent = math.hypot(p_direto - p_rev, q_liq)
    if apparent > 0.01:
        assert fp == pytest.approx(abs(p_direto - p_rev) / apparent, abs=5e-4)
    for key in ("P_direto", "P_rev", "Q_liquido", "FP_calc"):
        value = d[key]
        assert isinstance(value, float) and round(value, 3) == value
    raw = d if top_level else d["data"]
    assert isinstance(raw, dict) and raw["phf"] == phf  # the raw count, glitch or not


JSON_LEAF = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_VALUE = st.recursive(
    JSON_LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
GATEWAY_KEYS = ["NSU", "cdo", "phf", "phr", "sts", "qhfc", "qhfi", "qhrc", "qhri", "time"]


@given(
    data=st.dictionaries(st.sampled_from(GATEWAY_KEYS), JSON_VALUE),
    top=st.dictionaries(st.sampled_from(GATEWAY_KEYS), JSON_VALUE),
)
def test_any_gateway_payload_is_one_reading_or_one_reject(
    data: dict[str, object], top: dict[str, object]
) -> None:
    """Whatever sits in the fields, the decoder answers one row or one reject with a
    known reason (a NUL in a string: jsonb refuses it); a stored row's energy and power
    are finite or NULL."""
    decoded = decode({**top, "data": data})
    assert len(decoded.readings) + len(decoded.rejects) == 1
    if decoded.rejects:
        code = decoded.rejects[0].reason.partition(":")[0]
        # an unusable time is stored at arrival, never a reject (DOMAIN v2 "Time")
        assert code in {"invalid_gateway", "number_out_of_range", "unstorable_json"}
        return
    (r,) = decoded.readings
    for value in (r.energia_kwh, r.potencia_ativa_kw):
        assert value is None or math.isfinite(value)
    assert r.qualidade in {"bom", "ruim"}
