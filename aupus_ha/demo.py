"""`aupus-ha demo`: the whole promise on one machine, in about a minute.

Starts an embedded PostgreSQL and a broker, two instances with the same configuration,
and a simulated fleet; kills the leader with SIGKILL mid-stream, restarts it later, and
prints a timeline and a summary: published, stored, lost, duplicated, failover time.
Everything it starts is stopped and every temporary directory removed on exit, Ctrl-C
included.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from aupus_ha.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.localcluster import (
    InstanceProcess,
    fetch,
    generic_messages,
    leaders,
    publish,
    seed_equipment,
    stored_keys,
    wait_single_leader,
    wait_until,
)


@dataclass(slots=True)
class DemoOptions:
    duration_s: float = 30.0
    fleet: int = 20
    rate: float = 100.0


class Timeline:
    def __init__(self) -> None:
        self.started = time.monotonic()

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.started:6.2f}s] {text}", flush=True)


async def run_demo(options: DemoOptions) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="aupus-demo-"))
    timeline = Timeline()
    pg = EmbeddedPostgres(workdir / "pg")
    broker = EmbeddedMosquitto(persistence_dir=workdir / "mqtt")
    nodes: list[InstanceProcess] = []
    try:
        timeline.say("starting embedded PostgreSQL and the MQTT broker...")
        await asyncio.to_thread(pg.start)
        await asyncio.to_thread(broker.start)
        dsn = pg.dsn()
        equipment = await seed_equipment(dsn, options.fleet, prefix="inv")
        env = {
            "DATABASE_URL": dsn,
            "MQTT_URL": broker.url,
            "LOG_FORMAT": "json",
            "LEASE_TTL_S": "3",
            "HEARTBEAT_S": "0.5",
            "FLUSH_INTERVAL_S": "0.5",
        }
        nodes = [InstanceProcess(name, env, workdir) for name in ("primary", "backup")]
        for node in nodes:
            node.start()
        leader = await wait_single_leader(nodes, timeout=30)
        timeline.say(f"cluster up: {leader.name} leads (epoch 1), the other stands by")
        return await _scenario(options, timeline, dsn, broker.url, nodes=nodes, equipment=equipment)
    finally:
        for node in nodes:
            node.stop_now()
        await asyncio.to_thread(broker.cleanup)
        await asyncio.to_thread(pg.cleanup)
        shutil.rmtree(workdir, ignore_errors=True)
        timeline.say("stopped everything and removed the temporary data")


async def _scenario(
    options: DemoOptions,
    timeline: Timeline,
    dsn: str,
    broker_url: str,
    *,
    nodes: list[InstanceProcess],
    equipment: list[tuple[str, str]],
) -> int:
    per_equipment = max(1, int(options.duration_s * options.rate / len(equipment)))
    messages = generic_messages(equipment, per_equipment)
    total = len(messages)
    timeline.say(
        f"publishing {total} readings from {len(equipment)} devices at {options.rate:.0f}/s (QoS 1)"
    )
    published_so_far = [0]

    def count(n: int) -> None:
        published_so_far[0] = n

    publisher = asyncio.create_task(publish(broker_url, messages, rate=options.rate, on_sent=count))
    watcher = asyncio.create_task(_watch(timeline, dsn, nodes, published_so_far))
    await asyncio.sleep(options.duration_s / 3)
    victim = (await leaders(nodes))[0]
    standby = next(n for n in nodes if n is not victim)
    killed = time.monotonic()
    victim.signal(signal.SIGKILL)
    timeline.say(f"kill -9 {victim.name} (the leader)")
    await wait_until(standby.is_leader, 30, "the standby did not take over", interval=0.01)
    failover_ms = (time.monotonic() - killed) * 1000
    timeline.say(f"{standby.name} leads after {failover_ms:.0f} ms")
    await asyncio.sleep(options.duration_s / 3)
    victim.start()
    timeline.say(f"restarted {victim.name}")

    async def rejoined() -> bool:
        status, _ = await victim.get("/health/standby")
        return status == 200

    await wait_until(rejoined, 30, f"{victim.name} did not rejoin")
    timeline.say(f"{victim.name} is back as a healthy standby (/health/standby = 200)")
    published = await publisher
    expected = {(e, ts) for _, _, e, ts in messages}

    async def complete() -> bool:
        return expected <= set(await stored_keys(dsn))

    with contextlib.suppress(AssertionError):
        await wait_until(complete, 30, "not everything stored", interval=0.25)
    watcher.cancel()
    keys = await stored_keys(dsn)
    lost = len(expected - set(keys))
    duplicated = len(keys) - len(set(keys))
    handovers = await fetch(
        dsn,
        "SELECT epoch, from_instance_id, to_instance_id, reason, "
        "gap_ms FROM ha_handovers ORDER BY epoch",
    )
    print("\nhandovers:")
    for h in handovers:
        print(
            f"  epoch {h['epoch']}: {h['from_instance_id'] or '-'} -> {h['to_instance_id']} "
            f"({h['reason']}, gap {h['gap_ms'] if h['gap_ms'] is not None else '-'} ms)"
        )
    print(
        f"\nsummary: published {published}, stored {len(set(keys))}, lost {lost}, "
        f"duplicated {duplicated}, failover {failover_ms:.0f} ms (kill -9 -> new leader "
        f"answering /health/leader)"
    )
    return 0 if lost == 0 and duplicated == 0 else 1


async def _watch(
    timeline: Timeline, dsn: str, nodes: list[InstanceProcess], published: list[int]
) -> None:
    """One compact status line a second: who leads, epoch, published vs stored."""
    while True:
        found = await leaders(nodes)
        rows = (await fetch(dsn, "SELECT count(*) AS n FROM equipamentos_dados"))[0]["n"]
        epoch = await fetch(dsn, "SELECT epoch FROM ha_leadership")
        name = found[0].name if found else "none"
        timeline.say(
            f"leader={name:8s} epoch={epoch[0]['epoch'] if epoch else '-'}  "
            f"published={published[0]:6d}  stored={rows:6d}"
        )
        await asyncio.sleep(1.0)


def main(options: DemoOptions) -> int:
    try:
        return asyncio.run(run_demo(options))
    except KeyboardInterrupt:
        print("\ninterrupted: everything stopped", file=sys.stderr)
        return 130
