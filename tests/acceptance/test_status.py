"""`aupus-ha status` against a running two-instance cluster: the table and `--json`.

The issue's columns: instance, role, heartbeat age, epoch, version, last flush (on the
leader's row), then the recent handovers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from typing import Any

from aupus_ha import __version__
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    publish,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from aupus_ha.operations.status import render_status
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import status_instance, status_rows

COLUMNS = ["instance", "role", "heartbeat", "epoch", "version", "last flush"]


def _status(env: dict[str, str], *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "aupus_ha", "status", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tempfile.gettempdir(),  # no stray ./.env
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def _flushing_cluster(
    spawn: ClusterFactory, database_url: str, mqtt_url: str
) -> tuple[InstanceProcess, InstanceProcess]:
    equipment = await seed_equipment(database_url, 2)
    leader = spawn("node-a")
    await wait_single_leader([leader])
    standby = spawn("node-b")

    async def ready() -> bool:
        return (await standby.get("/health/standby"))[0] == 200

    await wait_until(ready, 20, f"node-b never became a standby: {standby.tail()}")
    await publish(mqtt_url, generic_messages(equipment, 3), rate=200)

    async def flushed() -> bool:
        rows = await fetch(database_url, "SELECT last_flush_at FROM ha_leadership")
        return bool(rows) and rows[0]["last_flush_at"] is not None

    await wait_until(flushed, 20, f"the leader never flushed: {leader.tail()}")
    return leader, standby


async def test_status_table_shows_every_column_and_the_handovers(
    base_env: dict[str, str], database_url: str, spawn: ClusterFactory
) -> None:
    """Leader row: role, heartbeat age, epoch 1, version, last flush; standby: no flush."""
    await _flushing_cluster(spawn, database_url, base_env["MQTT_URL"])
    out = _status(base_env)
    assert out.startswith("leader: node-a   epoch: 1"), out
    rows = status_rows(out)
    assert set(rows) == {"node-a", "node-b"}, out
    a, b = rows["node-a"], rows["node-b"]
    assert list(a)[: len(COLUMNS)] == COLUMNS
    assert (a["role"], a["epoch"], a["version"]) == ("leader", "1", __version__)
    assert (b["role"], b["epoch"], b["version"]) == ("standby", "-", __version__)
    for row in (a, b):
        assert re.fullmatch(r"\d+\.\ds", row["heartbeat"]), row  # fresh: well under a minute
        assert float(row["heartbeat"][:-1]) < 5
    assert re.fullmatch(r"\d+\.\ds ago", a["last flush"]), a
    assert b["last flush"] == "-"
    handovers = out[out.index("recent handovers") :]
    assert re.search(r"\s1\s+-\s+node-a\s+initial\s", handovers), handovers


async def test_status_json_carries_the_same_facts(
    base_env: dict[str, str], database_url: str, spawn: ClusterFactory
) -> None:
    """`--json`: leadership (epoch, leader, last flush), instances, handovers."""
    await _flushing_cluster(spawn, database_url, base_env["MQTT_URL"])
    view: dict[str, Any] = json.loads(_status(base_env, "--json"))
    lead = view["leadership"]
    assert lead["leader_instance_id"] == "node-a" and lead["epoch"] == 1
    assert lead["last_flush_at"] is not None and lead["released_at"] is None
    instances = {i["instance_id"]: i for i in view["instances"]}
    assert instances["node-a"]["role"] == "leader" and instances["node-a"]["leader_epoch"] == 1
    assert instances["node-b"]["role"] == "standby"
    for inst in instances.values():
        assert inst["version"] == __version__ and 0 <= inst["heartbeat_age_s"] < 5
    assert [(h["epoch"], h["to_instance_id"], h["reason"]) for h in view["handovers"]] == [
        (1, "node-a", "initial")
    ]


async def test_a_killed_leader_is_shown_gone_never_leader(
    base_env: dict[str, str], database_url: str, spawn: ClusterFactory
) -> None:
    """SIGKILL the leader: once the standby leads, the dead row (still `role = leader`,
    epoch 1, in ha_instances) reads `gone (evicted)`; only node-b is shown leading."""
    leader, standby = await _flushing_cluster(spawn, database_url, base_env["MQTT_URL"])
    leader.signal(signal.SIGKILL)
    assert await wait_single_leader([standby]) is standby
    seen: list[str] = []

    def gone() -> bool:
        seen.append(_status(base_env))
        return status_rows(seen[-1])["node-a"]["role"] == "gone (evicted)"

    await wait_until(gone, 20, "node-a never shown gone")
    rows = status_rows(seen[-1])
    assert rows["node-a"]["epoch"] == "1" and rows["node-a"]["last flush"] == "-", seen[-1]
    assert rows["node-b"]["role"] == "leader" and rows["node-b"]["epoch"] == "2", seen[-1]
    assert seen[-1].startswith("leader: node-b   epoch: 2"), seen[-1]
    assert all(not status_rows(out)["node-a"]["role"].startswith("leader") for out in seen), seen
    judged = {
        i["instance_id"]: i["state"] for i in json.loads(_status(base_env, "--json"))["instances"]
    }
    assert judged == {"node-a": "gone (evicted)", "node-b": "leader"}, judged


def test_last_flush_age_is_on_the_database_clock() -> None:
    """Age = (heartbeat_at + heartbeat_age_s) - last_flush_at; a silent leader is marked."""
    view: dict[str, Any] = {
        "leadership": {"epoch": 4, "leader_instance_id": "a", "last_flush_at": _ts(10.0)},
        "instances": [
            status_instance("a", "leader", 4, heartbeat_at=_ts(11.0), age=7.5),
            status_instance("b", "standby", None, heartbeat_at=_ts(18.0), age=0.5),
        ],
        "handovers": [],
    }
    rows = status_rows(render_status(view, lease_ttl_s=5.0))
    assert rows["a"]["last flush"] == "8.5s ago"  # (11.0 + 7.5) - 10.0
    assert rows["a"]["role"] == "leader (silent)"
    assert rows["b"]["last flush"] == "-"
    view["leadership"]["last_flush_at"] = None
    assert status_rows(render_status(view, lease_ttl_s=5.0))["a"]["last flush"] == "never"


def _ts(seconds: float) -> str:
    return f"2026-11-29T06:00:{seconds:06.3f}+00:00"
