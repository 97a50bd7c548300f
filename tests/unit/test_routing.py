"""Family routing (DOMAIN v2 "Which family a message belongs to"): the equipment decides
first (type code M-160 → summary, type category Gateway → A-966), then the payload
(an object `power` → inverter, anything else → generic), per equipment on the topic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.decoding.messages import Decoder, default_families
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading

TOPIC = "site1/shared"
RECEIVED = datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
LIMIT = 64 * 1024

# One flat TON meter payload: phase values, consumo_phf, Pt, a Brazilian text time.
FLAT_METER: dict[str, object] = {
    "phf": 15234.77,
    "consumo_phf": 0.0618,
    "Va": 221.4,
    "Ia": 12.31,
    "Pt": 7414.5,
    "timestamp": "28/11/2026 21:00:30",
}
# An A-966 state message.
A966: dict[str, object] = {
    "NSU": 32,
    "data": {"cdo": "15", "phf": 0, "phr": 1487, "sts": 1, "qhfc": 3},
    "time": "1795910400",
}
# An inverter sample: an object `power`.
INVERTER: dict[str, object] = {
    "timestamp": 1795910430,
    "power": {"active_total": 41250, "reactive_total": 0},
}


def equipment(eq_id: str, code: str | None = None, category: str | None = None) -> Equipment:
    return Equipment(eq_id, TOPIC, type_code=code, type_category=category)


M160 = equipment("m160", "M-160")
GATEWAY = equipment("gw", "SSU_A966", "Gateway")
UNTYPED = equipment("plain")


def decode(payload: dict[str, object] | bytes, *items: Equipment) -> Decoded:
    raw = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return Decoder(max_payload_bytes=LIMIT).decode(TOPIC, raw, list(items), RECEIVED)


def only(payload: dict[str, object], item: Equipment) -> Reading:
    decoded = decode(payload, item)
    assert decoded.rejects == [], decoded.rejects
    (reading,) = decoded.readings
    return reading


def test_same_payload_three_types_three_families() -> None:
    """One flat meter payload: an M-160 stores its energy, a Gateway keeps it raw (no
    cdo: old firmware), an untyped equipment stores it as a generic reading."""
    meter = only(FLAT_METER, M160)
    assert meter.energia_kwh == 0.0618  # consumo_phf > 0 (M-160 rule)
    gateway = only(FLAT_METER, GATEWAY)
    assert (gateway.energia_kwh, gateway.qualidade) == (None, "ruim")  # A-966 raw only
    generic = only(FLAT_METER, UNTYPED)
    assert (generic.energia_kwh, generic.qualidade) == (None, "bom")  # generic: as sent
    assert orjson.loads(generic.dados) == FLAT_METER


def test_gateway_payload_is_generic_on_an_untyped_equipment() -> None:
    """The A-966 shape alone never selects the A-966 family: the category does."""
    generic = only(A966, UNTYPED)
    assert generic.energia_kwh is None and "P_rev" not in orjson.loads(generic.dados)
    gateway = only(A966, GATEWAY)
    assert gateway.energia_kwh == pytest.approx(71.376)  # (1487 − 0) × 0.048


def test_an_inverter_payload_on_a_gateway_is_a_gateway_row() -> None:
    """A `power` object routes to the inverter only when the equipment does not decide."""
    gateway = only(INVERTER, GATEWAY)
    assert gateway.sample_at is None and gateway.qualidade == "ruim"  # no cdo: raw only
    sample = only(INVERTER, UNTYPED)
    assert sample.sample_at is not None  # a rollup sample of its minute
    assert sample.timestamp_dados == datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize("code", ["M-160", "M160", "METER_M160"])
def test_every_m160_code_routes_to_the_summary(code: str) -> None:
    """The three type codes of the platform's M-160 select the summary family."""
    assert only(FLAT_METER, equipment("m", code)).energia_kwh == 0.0618


@pytest.mark.parametrize("code", ["m160", "M-160 ", "INVERSOR", None])
def test_other_codes_do_not_route_to_the_summary(code: str | None) -> None:
    """Only the exact codes: anything else falls through to the payload."""
    assert only(FLAT_METER, equipment("m", code)).energia_kwh is None


@pytest.mark.parametrize("category", ["gateway", "Medidor", "", None])
def test_only_the_gateway_category_routes_to_the_a966(category: str | None) -> None:
    """The category `nome` is `Gateway` exactly (as the platform compares it)."""
    assert only(A966, equipment("g", "SSU_A966", category)).energia_kwh is None


def test_type_code_comes_before_the_category() -> None:
    """An M-160 code with the Gateway category is an M-160 (rule 1 before rule 2)."""
    both = equipment("both", "M160", "Gateway")
    assert only(FLAT_METER, both).energia_kwh == 0.0618


def test_several_types_on_one_topic_each_get_their_family() -> None:
    """One A-966 message on a topic shared by equipment of three types: one row each,
    each decoded by its own family."""
    inverter_type = equipment("inv", "INVERSOR")
    decoded = decode(A966, GATEWAY, UNTYPED, inverter_type)
    assert decoded.rejects == []
    by_id = {r.equipamento_id: r for r in decoded.readings}
    assert set(by_id) == {"gw", "plain", "inv"}
    assert by_id["gw"].energia_kwh == pytest.approx(71.376)  # (1487 − 0) × 0.048
    assert "P_rev" in orjson.loads(by_id["gw"].dados)
    assert by_id["plain"].energia_kwh is None and by_id["inv"].energia_kwh is None
    assert "P_rev" not in orjson.loads(by_id["inv"].dados)  # stored as sent
    assert by_id["gw"].timestamp_dados == datetime(2026, 11, 29, 0, 0, tzinfo=UTC)


def test_mixed_topic_with_a_meter_payload() -> None:
    """A meter payload on a topic shared by an M-160, a Gateway and an untyped equipment."""
    decoded = decode(FLAT_METER, M160, GATEWAY, UNTYPED)
    assert decoded.rejects == []
    energy = {r.equipamento_id: (r.energia_kwh, r.qualidade) for r in decoded.readings}
    assert energy == {"m160": (0.0618, "bom"), "gw": (None, "ruim"), "plain": (None, "bom")}


def test_one_refusal_is_one_reject_and_costs_the_others_nothing() -> None:
    """A family refusing the message for its equipment gives one reject for the message;
    the equipment whose family accepts it still get their rows."""
    bad_summary = {"Resumo": "not an object", "timestamp": 1795910430}
    decoded = decode(bad_summary, M160, UNTYPED, equipment("m2", "METER_M160"))
    assert [r.equipamento_id for r in decoded.readings] == ["plain"]
    assert len(decoded.rejects) == 1


def test_the_type_schema_is_not_applied_to_equipment_families() -> None:
    """A Gateway type's `mqtt_schema` does not judge A-966 rows (their quality is DOMAIN's
    rule); an untyped-family reading is still judged by its type's schema."""
    schema = {"type": "object", "required": ["energia_ativa_kwh"]}
    from aupus_ha.decoding.schemas import compile_schema

    compiled = compile_schema(orjson.dumps(schema).decode())
    gw = Equipment("gw", TOPIC, type_code="SSU_A966", type_category="Gateway", mqtt_schema=compiled)
    row = only(A966, gw)
    assert row.qualidade == "bom" and "_validacao" not in orjson.loads(row.dados)
    plain = Equipment("p", TOPIC, type_code="OUTRO", mqtt_schema=compiled)
    assert only(A966, plain).qualidade == "ruim"


def test_default_families_in_routing_order() -> None:
    """Equipment-decided families come first, then the payload ones, generic last."""
    names = [f.name for f in default_families()]
    assert names.index("a966_gateway") < names.index("inverter") < names.index("generic")
    assert names[-1] == "generic"


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
PAYLOADS = sorted(
    p.name for p in FIXTURES.glob("*.json") if p.name.startswith(("a966", "m160", "ton", "inv"))
)
TYPES = [
    (None, None),
    ("M-160", None),
    ("METER_M160", "Gateway"),
    ("SSU_A966", "Gateway"),
    ("INVERSOR", None),
    ("OUTRO", "Medidor"),
]


@given(
    kinds=st.lists(st.sampled_from(TYPES), min_size=1, max_size=5),
    name=st.sampled_from(PAYLOADS),
)
def test_each_equipment_is_routed_as_if_alone(
    kinds: list[tuple[str | None, str | None]], name: str
) -> None:
    """Whatever types share a topic and whatever the fixture: each equipment's reading is
    exactly the one it gets alone on the topic, and the message has one reject when any
    equipment's family refused it (none otherwise)."""
    payload = (FIXTURES / name).read_bytes()
    items = [equipment(f"eq-{n}", code, category) for n, (code, category) in enumerate(kinds)]
    together = decode(payload, *items)
    alone = [decode(payload, item) for item in items]
    assert together.readings == [r for d in alone for r in d.readings]
    refused = [d.rejects[0].reason for d in alone if d.rejects]
    assert [r.reason for r in together.rejects] == refused[:1]
