"""Readings without a device time survive a kill -9 of the leader exactly once (issue 12).

Real `aupus-ha run` processes, Mosquitto and PostgreSQL, on the fresh schema and on the
legacy-shaped one. Each instance keys such a reading by its own arrival time, so the
successor's copy of a reading the old leader wrote has another key; before the flush
matched by content, a leader killed right after a flush — before the standby had
probed (it probes entries older than one flush interval, at most once an interval) —
had every reading of that flush written a second time by its successor.

The standby runs with a 5 s flush interval, which makes "the standby has not probed
yet" certain instead of a race: the kill and the promotion happen well inside it. And
it is paused (SIGSTOP) while the messages are published, so its copies arrive
`STANDBY_LATE_S` after the leader's (a slow subscriber, or skewed clocks): on the legacy
schema two arrivals within the same second would share the second-precision key and
hide the defect.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from typing import Any

import asyncpg

from aupus_ha.lab.localcluster import InstanceProcess, fetch, wait_single_leader, wait_until
from aupus_ha.lab.publisher import Publisher
from tests.acceptance.conftest import ClusterFactory
from tests.legacy_schema import cuid, register_equipment

# One message per device (the legacy key has one-second precision: two readings of one
# device timed by arrival within the same second are one key there, by design).
DEVICES = 40
STANDBY_FLUSH_INTERVAL_S = "5"
STANDBY_LATE_S = 1.5  # below LEASE_TTL_S (2 s in FAST_TIMINGS): nobody's lease lapses


async def pending(node: InstanceProcess) -> int:
    _, body = await node.get("/health", timeout=3)
    return -1 if body is None else int(body["checks"]["buffer"]["pending"])


async def standby_holds(node: InstanceProcess, count: int) -> bool:
    status, _ = await node.get("/health/standby")
    return status == 200 and await pending(node) >= count


def committed_rows(node: InstanceProcess) -> int:
    return sum(int(e.get("rows", 0)) for e in node.find("flush.committed"))


async def test_clockless_readings_are_stored_once_when_the_leader_dies_after_a_flush(
    spawn: ClusterFactory, v2_schema: tuple[str, str], mosquitto: Any
) -> None:
    kind, dsn = v2_schema
    prefix = uuid.uuid4().hex[:6]
    devices = [(cuid(f"{prefix}-{n}"), f"clockless/{prefix}/{n}") for n in range(DEVICES)]
    conn = await asyncpg.connect(dsn)
    try:
        for equipment_id, topic in devices:
            await register_equipment(conn, equipment_id, topic, None)
    finally:
        await conn.close()

    leader = spawn("node-a")
    await wait_single_leader([leader], timeout=30)
    standby = spawn("node-b", FLUSH_INTERVAL_S=STANDBY_FLUSH_INTERVAL_S)
    await wait_until(lambda: standby_holds(standby, 0), 30, f"no standby: {standby.tail()}")

    standby.signal(signal.SIGSTOP)
    try:
        async with Publisher(mosquitto.url) as pub:
            for n, (equipment_id, topic) in enumerate(devices):
                payload = {"power": 500 + n, "voltage": 221.0, "device": equipment_id.strip()}
                pub.publish(topic, json.dumps(payload).encode())  # no time field at all
            await pub.wait_acknowledged()
        await asyncio.sleep(STANDBY_LATE_S)  # the stimulus: the standby's copies come late
    finally:
        standby.signal(signal.SIGCONT)
    await wait_until(lambda: standby_holds(standby, DEVICES), 20, "the standby missed some")
    await wait_until(
        lambda: committed_rows(leader) >= DEVICES,
        20,
        f"the leader did not write them: {leader.tail()}",
        interval=0.02,
    )
    leader.signal(signal.SIGKILL)  # right after its flush: the standby still holds copies
    held = await pending(standby)
    await wait_until(standby.is_leader, 20, f"the standby did not take over: {standby.tail()}")
    await wait_until(lambda: standby_holds_none(standby), 20, f"not flushed: {standby.tail()}")

    rows = await fetch(
        dsn,
        "SELECT count(*) AS total, count(DISTINCT (equipamento_id, dados::jsonb)) AS contents "
        "FROM equipamentos_dados WHERE equipamento_id = ANY($1::text[])",
        [e for e, _ in devices],
    )
    total, contents = rows[0]["total"], rows[0]["contents"]
    assert held == DEVICES, f"the standby probed before the kill ({held} held): no race shown"
    assert (total, contents) == (DEVICES, DEVICES), f"{kind}: {total} rows of {contents} readings"
    skipped = sum(int(e.get("duplicates", 0)) for e in standby.find("flush.committed"))
    assert skipped == DEVICES, f"the successor counted {skipped} duplicates"


async def standby_holds_none(node: InstanceProcess) -> bool:
    return await pending(node) == 0
