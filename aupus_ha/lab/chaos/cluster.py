"""The system under test: embedded PostgreSQL and Mosquitto, three instances, and a
FaultProxy in front of each instance's database and broker connection.

The instances connect as a non-superuser role owning the database (`dbfaults.APP_ROLE`),
and each one's spool sits on a small tmpfs of its own where mounting is permitted
(`spoolfs`). Devices: `options.equipment` for the sequence-numbered load, and a few of
their own for the side traffic (hostile payloads: generic and inverter devices;
clockless readings).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aupus_ha.lab.chaos.dbfaults import APP_ROLE, create_app_role
from aupus_ha.lab.chaos.options import ChaosOptions
from aupus_ha.lab.chaos.sidemessages import SideTopics
from aupus_ha.lab.chaos.spoolfs import SpoolMounts
from aupus_ha.lab.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.lab.faultproxy import FaultProxy
from aupus_ha.lab.localcluster import InstanceProcess, seed_equipment

NAMES = ("alpha", "bravo", "charlie")
DATABASE = "chaos"
CLUSTER_NAME = "chaos"
HOSTILE_GENERIC_DEVICES = 8
HOSTILE_INVERTER_DEVICES = 2
CLOCKLESS_DEVICES = 10


@dataclass(slots=True)
class NodeProxies:
    db: FaultProxy
    mqtt: FaultProxy


@dataclass(slots=True)
class Cluster:
    workdir: Path
    pg: EmbeddedPostgres
    broker: EmbeddedMosquitto
    nodes: list[InstanceProcess] = field(default_factory=list)
    proxies: dict[str, NodeProxies] = field(default_factory=dict)
    equipment: list[tuple[str, str]] = field(default_factory=list)
    # Wall-clock windows in which the database was down or frozen for everybody.
    outages: list[tuple[float, float]] = field(default_factory=list)
    unexpected_exits: list[dict[str, Any]] = field(default_factory=list)
    hostile_topics: SideTopics = field(default_factory=lambda: SideTopics((), ()))
    clockless_topics: tuple[str, ...] = ()
    side_equipment: list[str] = field(default_factory=list)  # ids of the side devices
    mounts: SpoolMounts = field(default_factory=lambda: SpoolMounts(0))
    spools: dict[str, Path] = field(default_factory=dict)  # instance -> its SPOOL_DIR

    @property
    def dsn(self) -> str:
        """Straight to PostgreSQL as the superuser, for the runner's own queries and
        faults (never through a proxy)."""
        return self.pg.dsn(DATABASE)

    @property
    def app_dsn(self) -> str:
        """As the instances' role: what owns the tables."""
        return f"postgresql://{APP_ROLE}@{self.pg.host}:{self.pg.port}/{DATABASE}"

    def node(self, name: str) -> InstanceProcess:
        return next(n for n in self.nodes if n.name == name)


@contextlib.asynccontextmanager
async def cluster_up(options: ChaosOptions) -> AsyncIterator[Cluster]:
    """Servers, equipment rows, proxies and three running instances; all torn down after."""
    workdir = Path(tempfile.mkdtemp(prefix="aupus-chaos-"))
    cluster = Cluster(
        workdir,
        EmbeddedPostgres(workdir / "pg"),
        EmbeddedMosquitto(persistence_dir=workdir / "mqtt"),
        mounts=SpoolMounts(options.spool_fs_bytes),
    )
    try:
        await asyncio.to_thread(cluster.pg.start)
        await asyncio.to_thread(cluster.broker.start)
        await create_app_role(cluster.pg.dsn(), DATABASE)
        await _seed(cluster, options)
        for name in NAMES:
            await _add_node(cluster, name, options)
        yield cluster
    finally:
        # Shielded, in a thread: a second Ctrl-C cannot leave processes behind.
        await asyncio.shield(_teardown(cluster, options.keep))


async def _seed(cluster: Cluster, options: ChaosOptions) -> None:
    """Migrated as the instances' role (it owns the tables), then every device."""
    cluster.equipment = await seed_equipment(cluster.app_dsn, options.equipment, prefix="chaos")
    generic = await seed_equipment(cluster.app_dsn, HOSTILE_GENERIC_DEVICES, prefix="chaosh")
    inverter = await seed_equipment(cluster.app_dsn, HOSTILE_INVERTER_DEVICES, prefix="chaosi")
    clockless = await seed_equipment(cluster.app_dsn, CLOCKLESS_DEVICES, prefix="chaosc")
    cluster.hostile_topics = SideTopics(tuple(t for _, t in generic), tuple(t for _, t in inverter))
    cluster.clockless_topics = tuple(t for _, t in clockless)
    cluster.side_equipment = [i for i, _ in (*generic, *inverter, *clockless)]


async def _add_node(cluster: Cluster, name: str, options: ChaosOptions) -> None:
    proxies = NodeProxies(
        FaultProxy(cluster.pg.host, cluster.pg.port),
        FaultProxy(cluster.broker.host, cluster.broker.port),
    )
    cluster.proxies[name] = proxies
    await proxies.db.start()
    await proxies.mqtt.start()
    home = cluster.workdir / name
    spool_fs = home / "spoolfs"
    await asyncio.to_thread(cluster.mounts.mount, name, spool_fs)
    spool = spool_fs / "spool"
    spool.mkdir(parents=True)
    cluster.spools[name] = spool
    env = {
        "DATABASE_URL": f"postgresql://{APP_ROLE}@127.0.0.1:{proxies.db.port}/{DATABASE}",
        "MQTT_URL": f"mqtt://127.0.0.1:{proxies.mqtt.port}",
        "CLUSTER_NAME": CLUSTER_NAME,
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        "SPOOL_DIR": str(spool),
        **options.timings,
    }
    node = InstanceProcess(name, env, home)
    cluster.nodes.append(node)
    await asyncio.to_thread(node.start)


async def _teardown(cluster: Cluster, keep: bool) -> None:
    try:
        await asyncio.to_thread(_stop_nodes, cluster.nodes)
    finally:
        # Before the directory is removed; a mount must never outlive the run.
        await asyncio.to_thread(cluster.mounts.unmount_all)
    for proxies in cluster.proxies.values():
        await proxies.db.stop()
        await proxies.mqtt.stop()
    await asyncio.to_thread(_stop_servers, cluster, keep)


def _stop_nodes(nodes: list[InstanceProcess], timeout: float = 15.0) -> None:
    """SIGCONT + SIGTERM to every instance at once, SIGKILL for those still up after."""
    running = [n for n in nodes if n.proc is not None and n.proc.poll() is None]
    for node in running:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.pid, signal.SIGCONT)
            os.kill(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for node in running:
        assert node.proc is not None
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.stop_now()


def _stop_servers(cluster: Cluster, keep: bool) -> None:
    try:
        cluster.broker.cleanup()
    finally:
        cluster.pg.cleanup()
        if keep:
            print(f"logs and data kept in {cluster.workdir}", file=sys.stderr)
        else:
            shutil.rmtree(cluster.workdir, ignore_errors=True)
