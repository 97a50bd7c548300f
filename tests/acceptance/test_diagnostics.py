"""The platform's diagnostics routes (`/api/v1/mqtt/diagnostico/...`) on real processes.

One two-instance cluster for the module (the leader flushes only when told to:
FLUSH_INTERVAL_S is long, so `forcar-processamento` is what writes): three devices
publish over MQTT, one enabled device never sends, one went silent three days ago,
and one legacy device has rows carrying the platform's old quality labels (`boa`,
`BAD`) and a two-hour gap. Both instances answer from the database; each reports its
own buffer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    publish,
    seed_equipment,
    stored_keys,
    wait_single_leader,
    wait_until,
)
from tests.conftest import _admin, run_async
from tests.helpers import instance_env

TOKEN = "diag-token-0123456789abcdef"
BASE = "/api/v1/mqtt/diagnostico"
PER_DEVICE = 4
SENDERS = ["dev-a", "dev-b", "dev-c"]
SILENT = "dev-never"
OLD = "dev-old"
LEGACY = "dev-legacy"
SENT_AGO = timedelta(minutes=30)  # device time of the published readings: "warning"

INSERT_ROW = """
INSERT INTO equipamentos_dados (equipamento_id, timestamp_dados, dados, qualidade, num_leituras)
VALUES ($1, now() - make_interval(secs => $2::float8), '{}', $3, $4)
"""


@dataclass
class Cluster:
    leader: InstanceProcess
    standby: InstanceProcess
    dsn: str
    mqtt_url: str


async def _request(
    inst: InstanceProcess, method: str, path: str, token: str | None = TOKEN
) -> tuple[int, Any]:
    url = f"http://127.0.0.1:{inst.http_port}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    timeout = aiohttp.ClientTimeout(total=20)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.request(method, url, headers=headers) as resp,
    ):
        return resp.status, await resp.json()


async def _data(inst: InstanceProcess, path: str) -> Any:
    """GET a diagnostics route: 200, the legacy envelope, its `data`."""
    status, body = await _request(inst, "GET", BASE + path, token=None)
    assert status == 200, body
    assert body["success"] is True and set(body) == {"success", "data", "meta"}, body
    return body["data"]


async def _seed(dsn: str) -> None:
    await seed_equipment(dsn, 0)  # migrations only
    conn = await asyncpg.connect(dsn)
    try:
        await conn.executemany(
            "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
            "VALUES ($1, $2, $3, true)",
            [(e, f"Medidor {e}", f"aupus/diag/{e}") for e in [*SENDERS, SILENT, OLD, LEGACY]],
        )
        # Went silent three days (and a bit) ago.
        await conn.execute(INSERT_ROW, OLD, 3 * 86_400 + 3_600, "bom", 1)
        # The platform's old labels, and a gap of two hours between its rows.
        legacy = [(LEGACY, 3 * 3_600.0, "boa", 2), (LEGACY, 3_600.0, "BAD", 2)]
        legacy += [(LEGACY, 3_590.0, "bom", 2), (LEGACY, 30 * 3_600.0, "boa", 2)]
        await conn.executemany(INSERT_ROW, legacy)
    finally:
        await conn.close()


async def _start(
    dsn: str, mqtt_url: str, log_dir: Path, cluster_name: str
) -> tuple[InstanceProcess, InstanceProcess]:
    env = instance_env(
        dsn,
        mqtt_url,
        cluster_name,
        ADMIN_TOKEN=TOKEN,
        FLUSH_INTERVAL_S="120",  # only forcar-processamento (or a full batch) writes
    )
    await _seed(dsn)
    leader = InstanceProcess("node-a", env, log_dir).start()
    await wait_single_leader([leader])
    standby = InstanceProcess("node-b", env, log_dir).start()

    async def ready() -> bool:
        return (await standby.get("/health/standby"))[0] == 200

    await wait_until(ready, 20, f"node-b never became a standby: {standby.tail()}")
    return leader, standby


async def _publish_and_flush(
    cluster: Cluster, devices: list[str], per_device: int, ago: timedelta = SENT_AGO
) -> int:
    """Publish, wait until the leader holds them, force the flush; the rows it wrote."""
    equipment = [(e, f"aupus/diag/{e}") for e in devices]
    before = len(await stored_keys(cluster.dsn))
    start = datetime.now(UTC).replace(microsecond=0) - ago
    await publish(cluster.mqtt_url, generic_messages(equipment, per_device, start), rate=500)
    expected = len(devices) * per_device

    async def held() -> bool:
        stats = await _data(cluster.leader, "/buffer/stats")
        return bool(stats["pendentes"] >= expected)

    await wait_until(held, 20, f"the leader never held the readings: {cluster.leader.tail()}")
    status, body = await _request(cluster.leader, "POST", BASE + "/buffer/forcar-processamento")
    assert status == 200, body
    assert body["data"]["pendentes"] == 0 and body["data"]["falhas"] == 0, body
    assert len(await stored_keys(cluster.dsn)) == before + expected
    return int(body["data"]["processados"])


@pytest.fixture(scope="module")
def cluster(
    pg_server: EmbeddedPostgres, mosquitto: EmbeddedMosquitto, tmp_path_factory: Any
) -> Iterator[Cluster]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _admin(pg_server.dsn(), f"CREATE DATABASE {name}"))
    dsn = pg_server.dsn(name)
    log_dir = tmp_path_factory.mktemp("diag")
    cluster_name = f"diag-{uuid.uuid4().hex[:8]}"
    leader, standby = run_async(lambda: _start(dsn, mosquitto.url, log_dir, cluster_name))
    made = Cluster(leader, standby, dsn, mosquitto.url)
    try:
        written = run_async(lambda: _publish_and_flush(made, SENDERS, PER_DEVICE))
        assert written == len(SENDERS) * PER_DEVICE
        yield made
    finally:
        leader.stop_now()
        standby.stop_now()
        run_async(lambda: _admin(pg_server.dsn(), f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


def _iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


async def test_equipamentos_working_and_inactive_on_both_instances(cluster: Cluster) -> None:
    """Working: rows in 24 h, last reception (UTC), hours since, last quality; inactive:
    "Nunca recebeu dados" and "Há 3 dias". The standby answers the same, from the database."""
    for inst in (cluster.leader, cluster.standby):
        body = await _data(inst, "/equipamentos")
        working = {e["id"]: e for e in body["funcionando"]}
        idle = {e["id"]: e for e in body["inativos"]}
        assert set(working) == {*SENDERS, LEGACY}, body
        assert set(idle) == {SILENT, OLD}, body
        assert (body["ativos"], body["countInativos"], body["configurados"]) == (4, 2, 6)
        now = datetime.now(UTC)
        for device in SENDERS:
            row = working[device]
            assert row["registros_24h"] == PER_DEVICE
            assert row["ultima_qualidade"] == "bom"
            assert row["topico_mqtt"] == f"aupus/diag/{device}"
            assert row["nome"] == f"Medidor {device}"
            last = _iso(row["ultima_recepcao"])
            assert last is not None and last.utcoffset() == timedelta(0)
            # Published SENT_AGO in device time, a few seconds (or, loaded, minutes) ago.
            assert SENT_AGO - timedelta(minutes=1) < now - last < SENT_AGO + timedelta(minutes=5)
            assert 0.48 <= row["horas_desde_ultimo"] <= 0.6, row
        legacy = working[LEGACY]
        assert legacy["registros_24h"] == 3  # the 30-hour-old row is outside the window
        assert legacy["ultima_qualidade"] == "bom"  # the newest row's, not the largest label
        assert idle[SILENT]["status_inatividade"] == "Nunca recebeu dados"
        assert idle[SILENT]["ultima_recepcao_conhecida"] is None
        assert idle[OLD]["status_inatividade"] == "Há 3 dias"
        assert [e["id"] for e in body["inativos"]] == [OLD, SILENT]  # known first


async def test_status_topicos_qualidade_and_full(cluster: Cluster) -> None:
    status = await _data(cluster.standby, "/status")
    minutes = status["minutosSemDados"]
    assert 29 <= minutes <= 35, status  # the newest reading is about 30 minutes old
    assert status["status"] == "warning", status
    assert status["mensagem"] == f"Sem dados há {minutes} minutos"
    assert (status["equipamentosAtivos"], status["equipamentosConfigurados"]) == (4, 6)

    topics = {t["topico"]: t for t in await _data(cluster.standby, "/topicos")}
    assert set(topics) == {f"aupus/diag/{e}" for e in [*SENDERS, SILENT, OLD, LEGACY]}
    assert topics["aupus/diag/dev-a"]["status"] == "ativo"
    assert topics["aupus/diag/dev-a"]["equipamentosAtivos24h"] == 1
    assert topics[f"aupus/diag/{SILENT}"] == {
        "topico": f"aupus/diag/{SILENT}",
        "quantidadeEquipamentos": 1,
        "equipamentosAtivos24h": 0,
        "ultimaRecepcao": None,
        "status": "inativo",
    }

    quality = {q["qualidade"]: q for q in await _data(cluster.leader, "/qualidade")}
    total = len(SENDERS) * PER_DEVICE + 3
    assert quality["bom"]["registros"] == len(SENDERS) * PER_DEVICE + 1
    assert quality["bom"]["equipamentos"] == 4
    assert (quality["boa"]["registros"], quality["boa"]["classe"]) == (1, "boa")
    assert (quality["BAD"]["registros"], quality["BAD"]["classe"]) == (1, "ruim")
    assert quality["BAD"]["percentual"] == round(100 / total, 2)

    full = await _data(cluster.leader, "")
    summary = full["summary"]
    assert summary["totalEquipamentosConfigurados"] == 6
    assert summary["equipamentosAtivos24h"] == 4
    assert summary["equipamentosInativos"] == 2
    assert summary["totalRegistros24h"] == total
    # 'bom' and 'boa' are both good (the original counted 'boa' only).
    assert summary["qualidadeBoa"] == pytest.approx(100 * (total - 1) / total, abs=0.02)
    assert summary["qualidadeRuim"] == pytest.approx(100 / total, abs=0.02)
    assert full["stats"]["totalRegistros"] == total
    assert full["stats"]["equipamentosAtivos"] == 4
    gaps = full["gaps"]
    assert summary["gapsDetectados"] == len(gaps) == 1, gaps
    assert gaps[0]["nome"] == f"Medidor {LEGACY}"
    assert gaps[0]["minutos_sem_dados"] == pytest.approx(120, abs=0.5)
    assert len(full["ultimos"]) == 10
    assert set(full["equipamentos"]) == {
        "configurados",
        "ativos",
        "countInativos",
        "funcionando",
        "inativos",
    }
    assert {t["topico"] for t in full["topicos"]} == set(topics)


async def test_buffer_routes_report_this_instance(cluster: Cluster) -> None:
    for inst, role in ((cluster.leader, "leader"), (cluster.standby, "standby")):
        health = await _data(inst, "/buffer/health")
        assert health["redis"] == "online" and health["role"] == role
        assert health["instance_id"] == inst.name
        assert health["processando"] is False
        stats = await _data(inst, "/buffer/stats")
        for key in ("pendentes", "falhados", "totalBuffered", "totalSaved", "totalFailed"):
            assert isinstance(stats[key], int), (key, stats)
        assert stats["totalBuffered"] >= len(SENDERS) * PER_DEVICE
    leader = await _data(cluster.leader, "/buffer/stats")
    assert leader["totalSaved"] >= len(SENDERS) * PER_DEVICE
    standby = await _data(cluster.standby, "/buffer/stats")
    assert standby["totalSaved"] == 0


async def test_actions_need_the_admin_token(cluster: Cluster) -> None:
    for path in ("/resync", "/buffer/forcar-processamento"):
        status, body = await _request(cluster.standby, "POST", BASE + path, token=None)
        assert status == 401 and body["success"] is False, body
        status, body = await _request(cluster.standby, "POST", BASE + path, token="x" * 30)
        assert status == 403 and body["success"] is False, body


async def test_forcar_processamento_writes_now_and_only_on_the_leader(cluster: Cluster) -> None:
    status, body = await _request(cluster.standby, "POST", BASE + "/buffer/forcar-processamento")
    assert status == 409 and body["success"] is False, body
    assert body["data"]["role"] == "standby"
    # Readings of other seconds than the first ones (the same key is one row).
    assert await _publish_and_flush(cluster, ["dev-b"], 3, SENT_AGO - timedelta(minutes=5)) == 3


async def test_resync_picks_up_a_topic_added_in_sql_at_once(cluster: Cluster) -> None:
    topic = "aupus/diag/dev-new"
    conn = await asyncpg.connect(cluster.dsn)
    try:
        await conn.execute(
            "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
            "VALUES ('dev-new', 'novo', $1, true)",
            topic,
        )
        status, body = await _request(cluster.standby, "POST", BASE + "/resync")
        assert status == 200, body
        # The periodic refresh (every 2 s) may, rarely, have been first: then nothing is new.
        assert body["data"]["added"] in ([{"equipamentoId": "dev-new", "topic": topic}], [])
        assert body["data"]["removed"] == [] and body["data"]["total"] == 7
        # Subscribed already when the answer came (no wait for the periodic refresh).
        _, mqtt = await _request(cluster.standby, "GET", "/health/mqtt")
        assert topic in mqtt["topics"], mqtt

        await conn.execute("UPDATE equipamentos SET mqtt_habilitado = false WHERE id = 'dev-new'")
        status, body = await _request(cluster.standby, "POST", BASE + "/resync")
        assert status == 200, body
        assert body["data"]["removed"] in ([{"equipamentoId": "dev-new", "topic": topic}], [])
        assert body["data"]["total"] == 6
        _, mqtt = await _request(cluster.standby, "GET", "/health/mqtt")
        assert topic not in mqtt["topics"], mqtt
    finally:
        await conn.execute("DELETE FROM equipamentos WHERE id = 'dev-new'")
        await conn.close()
    rows = await fetch(cluster.dsn, "SELECT count(*) AS n FROM equipamentos")
    assert rows[0]["n"] == 6
