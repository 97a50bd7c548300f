"""Real device payloads through Mosquitto into a two-instance cluster."""

from __future__ import annotations

import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import orjson

from aupus_ha.database.migrate import apply_migrations
from aupus_ha.lab.localcluster import fetch, wait_single_leader, wait_until
from aupus_ha.lab.publisher import Publisher
from aupus_ha.pipeline import rollup
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import standby_ready

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await apply_migrations(conn)
        await conn.executemany(
            "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
            "VALUES ($1, $1, $2, true)",
            [("inv-1", "t/inv"), ("m160-1", "t/m160"), ("gen-1", "t/gen"), ("gen-2", "t/gen")],
        )
        # DOMAIN v2: the M-160 family is decided by the equipment's type code.
        await conn.execute(
            "INSERT INTO tipos_equipamentos (id, codigo, nome) VALUES ('m160', 'M-160', 'M-160')"
        )
        await conn.execute(
            "UPDATE equipamentos SET tipo_equipamento_id = 'm160' WHERE id = 'm160-1'"
        )
    finally:
        await conn.close()


def _inverter_samples(minute: datetime) -> list[bytes]:
    base = orjson.loads((FIXTURES / "inverter_reading.json").read_bytes())
    out = []
    for i, second in enumerate((0, 10, 20, 30, 40, 50)):
        payload = {
            **base,
            "timestamp": (minute + timedelta(seconds=second)).timestamp(),
            "power": {**base["power"], "active_total": 40_000 + 1000 * i},
        }
        out.append(orjson.dumps(payload))
    return out


async def _send(url: str, messages: list[tuple[str, bytes]]) -> None:
    async with Publisher(url) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)
        await pub.wait_acknowledged()


async def test_fixtures_with_a_leader_kill_mid_minute(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """M-160, inverter and generic fixtures, with the leader killed in the middle of an
    inverter minute: exactly the expected rows, the minute as one row of all six samples."""
    await _seed(database_url)
    url = mosquitto.url  # type: ignore[attr-defined]
    env = {"ROLLUP_GRACE_S": "0"}
    leader = spawn("node-a", **env)
    await wait_single_leader([leader])
    standby = spawn("node-b", **env)
    await wait_until(lambda: standby_ready(standby), 20, "standby not ready")
    minute = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=3)
    samples = _inverter_samples(minute)
    m160 = (FIXTURES / "m160_resumo.json").read_bytes()
    generic = (FIXTURES / "generic_reading.json").read_bytes()
    await _send(url, [("t/inv", s) for s in samples[:3]] + [("t/m160", m160), ("t/gen", generic)])
    await wait_until(lambda: _count(database_url, "inv-1", 3), 15, "first half not written")
    leader.signal(signal.SIGKILL)
    await _send(url, [("t/inv", s) for s in samples[3:]])
    await wait_until(standby.is_leader, 10, "standby did not take over")
    await wait_until(lambda: _count(database_url, "inv-1", 6), 15, "second half not merged")

    rows = await fetch(
        database_url,
        "SELECT equipamento_id, timestamp_dados, num_leituras, "
        "dados::text AS dados, potencia_ativa_kw FROM equipamentos_dados "
        "ORDER BY equipamento_id",
    )
    by_equipment = {r["equipamento_id"]: r for r in rows}
    assert sorted(by_equipment) == ["gen-1", "gen-2", "inv-1", "m160-1"] and len(rows) == 4
    expected = rollup.build_row(
        {
            rollup.sample_key(minute + timedelta(seconds=10 * i)): orjson.loads(s)
            for i, s in enumerate(samples)
        }
    )
    inverter = by_equipment["inv-1"]
    assert inverter["timestamp_dados"] == minute and inverter["num_leituras"] == 6
    assert orjson.loads(inverter["dados"]) == orjson.loads(expected.dados)
    assert inverter["potencia_ativa_kw"] == 42.5
    assert by_equipment["m160-1"]["timestamp_dados"] == datetime(2026, 11, 29, 0, 0, 30, tzinfo=UTC)
    assert by_equipment["gen-1"]["timestamp_dados"] == datetime(2026, 11, 28, 21, 1, tzinfo=UTC)


async def _count(dsn: str, equip: str, samples: int) -> bool:
    rows = await fetch(
        dsn, "SELECT num_leituras FROM equipamentos_dados WHERE equipamento_id = $1", equip
    )
    return bool(rows) and rows[0]["num_leituras"] == samples


def _bad_topic(line: bytes) -> str:
    """DOMAIN v2 decides the family by the equipment first: the `Resumo` line is bad for an
    M-160 (on t/gen it would be a valid generic reading), the inverter frames for t/inv."""
    if b'"Resumo"' in line:
        return "t/m160"
    return "t/inv" if b'"power"' in line else "t/gen"


def _bad_lines() -> list[bytes]:
    lines = (FIXTURES / "bad_inputs.txt").read_bytes().splitlines()
    return [
        re.sub(rb"\\x([0-9a-fA-F]{2})", lambda m: bytes([int(m[1], 16)]), line)
        for line in lines
        if line.strip() and not line.startswith(b"#")
    ]


async def test_every_bad_input_lands_in_ingest_rejects(
    spawn: ClusterFactory, database_url: str, mosquitto: object
) -> None:
    """Each bad payload (and an oversized one) becomes a row in ingest_rejects with a
    reason, written by the leader; the good readings around them are stored."""
    await _seed(database_url)
    url = mosquitto.url  # type: ignore[attr-defined]
    leader = spawn("node-a", MAX_PAYLOAD_BYTES="4096")
    await wait_single_leader([leader])
    standby = spawn("node-b", MAX_PAYLOAD_BYTES="4096")
    await wait_until(lambda: standby_ready(standby), 20, "standby not ready")
    bad = [*_bad_lines(), b'{"power": "' + b"x" * 5000 + b'"}']
    good = [orjson.dumps({"timestamp": f"2026-11-28T20:0{i}:00Z", "power": i}) for i in range(2)]
    await _send(url, [("t/gen", good[0]), *[(_bad_topic(b), b) for b in bad], ("t/gen", good[1])])

    async def all_rejected() -> bool:
        rows = await fetch(database_url, "SELECT count(*) AS n FROM ingest_rejects")
        return bool(rows[0]["n"] == len(bad))

    await wait_until(all_rejected, 15, f"rejects missing: {leader.tail()}")
    rows = await fetch(
        database_url, "SELECT topic, payload, reason, instance_id FROM ingest_rejects"
    )
    assert {bytes(r["payload"][:4096]) for r in rows} == {b[:4096] for b in bad}
    assert all(r["reason"] and r["topic"] == _bad_topic(bytes(r["payload"])) for r in rows)
    assert {r["instance_id"] for r in rows} == {"node-a"}
    reasons = {r["reason"].split(":")[0] for r in rows}
    assert {
        "invalid_json",
        "not_an_object",
        "not_utf8",
        "payload_too_large",
        "m160_unknown_format",
        "inverter_overflow",
    } <= reasons
    stored = await fetch(database_url, "SELECT count(*) AS n FROM equipamentos_dados")
    assert stored[0]["n"] == 4  # two good readings for each of the two equipment on t/gen
