"""A standby lets go of what the leader wrote, and only of that (issue 17, defects 2 and 4).

Real `aupus-ha run` processes, a real PostgreSQL and Mosquitto:

* a burst of readings without a device time at the front of the buffer must not stop
  the standby's trimming for good (it used to probe only the oldest 5,000 entries and
  to expire nothing unless something was confirmed in the same tick);
* after a database outage longer than the standby's horizon, the leader works through
  its backlog oldest-first; the standby must keep every reading the leader has not
  written (it used to drop everything older than the horizon after one successful
  probe), so a kill -9 of the leader in the middle of the backlog loses nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path

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
from tests.helpers import instance_env, standby_ready


async def pending(node: InstanceProcess) -> int:
    """The entries an instance holds (its /health buffer check); -1 if it does not answer."""
    _, body = await node.get("/health", timeout=3)
    if body is None:
        return -1
    return int(body["checks"]["buffer"]["pending"])


def clockless_messages(
    equipment: list[tuple[str, str]], per_equipment: int
) -> list[tuple[str, bytes, str, datetime]]:
    """Generic readings without any time field, each payload distinct."""
    out = []
    for n in range(per_equipment):
        for equip_id, topic in equipment:
            payload = {"power": 500 + n, "voltage": 221.0, "burst": n, "equip": equip_id}
            out.append((topic, json.dumps(payload).encode(), equip_id, datetime.now(UTC)))
    return out


async def test_a_clockless_burst_does_not_stall_the_standby(
    database_url: str, mosquitto: EmbeddedMosquitto, tmp_path: Path
) -> None:
    """6,000 readings without a timestamp, then ordinary traffic: the standby's pending
    count comes back to near zero (before the fix it kept ~16,000 for good)."""
    equipment = await seed_equipment(database_url, 10)
    env = instance_env(database_url, mosquitto.url, "trim-clockless")
    nodes = [InstanceProcess(n, env, tmp_path).start() for n in ("node-a", "node-b")]
    try:
        leader = await wait_single_leader(nodes, timeout=30)
        standby = next(n for n in nodes if n is not leader)
        await wait_until(lambda: standby_ready(standby), 30, "the standby did not come up")
        burst = clockless_messages(equipment, 600)
        assert await publish(mosquitto.url, burst, rate=2000) == len(burst)
        ordinary = generic_messages(equipment, 400)
        assert await publish(mosquitto.url, ordinary, rate=1000) == len(ordinary)

        async def stored_all() -> bool:
            rows = await fetch(database_url, "SELECT count(*) FROM equipamentos_dados")
            return int(rows[0][0]) >= len(burst) + len(ordinary)

        await wait_until(stored_all, 30, "the leader did not store everything")

        async def standby_drained() -> bool:
            return 0 <= await pending(standby) < 100

        await wait_until(
            standby_drained, 30, f"the standby still holds {await pending(standby)} entries"
        )
        rows = await fetch(database_url, "SELECT count(*) FROM equipamentos_dados")
        assert int(rows[0][0]) == len(burst) + len(ordinary)
    finally:
        for node in nodes:
            node.stop_now()


async def test_clockless_readings_are_stored_once_across_a_failover(
    database_url: str, mosquitto: EmbeddedMosquitto, tmp_path: Path
) -> None:
    """Readings without a device time are keyed by arrival, which differs per instance:
    the standby recognises the leader's rows by content and lets its copies go, so a
    kill -9 of the leader after they were written adds no second copy (before, the
    standby kept them for 60 s and its promotion wrote every one again)."""
    equipment = await seed_equipment(database_url, 10)
    env = instance_env(database_url, mosquitto.url, "trim-clockless-failover")
    nodes = [InstanceProcess(n, env, tmp_path).start() for n in ("node-a", "node-b")]
    try:
        leader = await wait_single_leader(nodes, timeout=30)
        standby = next(n for n in nodes if n is not leader)
        await wait_until(lambda: standby_ready(standby), 30, "the standby did not come up")
        burst = clockless_messages(equipment, 50)
        assert await publish(mosquitto.url, burst, rate=500) == len(burst)

        async def count() -> int:
            rows = await fetch(database_url, "SELECT count(*) FROM equipamentos_dados")
            return int(rows[0][0])

        await wait_until(lambda: _at_least(count, len(burst)), 30, "not everything stored")
        await wait_until(
            lambda: _at_most(lambda: pending(standby), 0), 20, "the standby kept its copies"
        )
        leader.stop_now()  # SIGKILL
        await wait_single_leader([standby], timeout=30)
        await wait_until(
            lambda: _at_most(lambda: pending(standby), 0), 20, "the new leader holds entries"
        )
        assert await count() == len(burst)
    finally:
        for node in nodes:
            node.stop_now()


async def _at_least(value: Callable[[], Awaitable[int]], bound: int) -> bool:
    return await value() >= bound


async def _at_most(value: Callable[[], Awaitable[int]], bound: int) -> bool:
    return 0 <= await value() <= bound


# Every insert statement takes 20 ms more: the leader's backlog drains slowly enough to
# kill it halfway.
SLOW_INSERTS = (
    "CREATE FUNCTION slow_insert() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN PERFORM pg_sleep(0.02); RETURN NULL; END $$",
    "CREATE TRIGGER slow_insert AFTER INSERT ON equipamentos_dados "
    "FOR EACH STATEMENT EXECUTE FUNCTION slow_insert()",
)


async def test_standby_keeps_what_the_leader_has_not_written(
    own_postgres: EmbeddedPostgres, mosquitto: EmbeddedMosquitto, tmp_path: Path
) -> None:
    """Database down longer than the standby's horizon, then back: the leader drains its
    backlog oldest-first (slowly: small batches, 20 ms per insert), the standby confirms
    what is written but drops nothing else; the leader is killed with SIGKILL halfway,
    the standby takes over, and every reading is stored exactly once."""
    dsn = own_postgres.dsn()
    equipment = await seed_equipment(dsn, 10)
    for statement in SLOW_INSERTS:
        await fetch(dsn, statement)
    env = instance_env(dsn, mosquitto.url, "trim-backlog", BATCH_MAX="10", STANDBY_HORIZON_S="3")
    nodes = [InstanceProcess(n, env, tmp_path).start() for n in ("node-a", "node-b")]
    try:
        first = await wait_single_leader(nodes, timeout=30)
        other = next(n for n in nodes if n is not first)
        await wait_until(lambda: standby_ready(other), 30, "the standby did not come up")
        await asyncio.to_thread(own_postgres.stop)
        messages = generic_messages(equipment, 300)
        assert await publish(mosquitto.url, messages, rate=1000) == len(messages)

        async def all_buffered() -> bool:
            counts = await asyncio.gather(*(pending(n) for n in nodes))
            return all(c >= len(messages) for c in counts)

        await wait_until(all_buffered, 30, "the instances did not buffer every reading")
        await asyncio.sleep(4)  # longer than STANDBY_HORIZON_S: everything is "old" now
        await asyncio.to_thread(own_postgres.start)
        leader = await wait_single_leader(nodes, timeout=30)
        standby = next(n for n in nodes if n is not leader)

        async def leader_halfway() -> bool:
            return len(await stored_keys(dsn)) >= len(messages) // 4

        await wait_until(leader_halfway, 30, "the leader did not start on its backlog")
        # Give the standby's probes time to run (and, before the fix, to drop entries).
        await asyncio.sleep(1.0)
        held = await pending(standby)
        written = len(await stored_keys(dsn))  # after: what was unwritten then still is
        leader.stop_now()  # SIGKILL in the middle of the backlog
        assert written < len(messages), "the backlog drained too fast for this test"
        assert held >= len(messages) - written, (
            f"the standby holds {held} but {len(messages) - written} were not written"
        )
        await wait_single_leader([standby], timeout=30)
        expected = {(e, ts) for _, _, e, ts in messages}

        async def complete() -> bool:
            return expected <= set(await stored_keys(dsn))

        await wait_until(complete, 40, "readings were lost", interval=0.2)
        keys = await stored_keys(dsn)
        assert len(keys) == len(set(keys)) == len(messages)
    finally:
        for node in nodes:
            node.stop_now()
