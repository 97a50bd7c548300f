"""The faults, one at a time: inject, hold, heal, then wait for a healthy cluster.

The schedule is round-robin over the chosen kinds, each round in a fresh random order
(seeded): a run of N rounds has every kind exactly N times. Faults aimed at an instance
pick their target at random, the leader half of the time (so that failovers get
measured). The side-traffic kinds (`hostile_payloads`, `clockless`) break nothing by
themselves: they mix their messages into the load while the fault lasts.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from aupus_ha.lab.chaos import dbfaults
from aupus_ha.lab.chaos.cluster import Cluster
from aupus_ha.lab.chaos.options import LOAD_KINDS, RESTART_PAUSE_S, TARGETED_KINDS, ChaosOptions
from aupus_ha.lab.chaos.sideload import SideLoad
from aupus_ha.lab.chaos.sidemessages import ClocklessCatalogue, HostileCatalogue, SideMessage
from aupus_ha.lab.localcluster import InstanceProcess, leaders, wait_until

_POLL_S = 0.1
_EXIT_TIMEOUT_S = 30.0
_CLOCKLESS_PER_S = 20.0
_UNDO_ATTEMPTS = 10
_PUBLISHED_GRACE_S = 30.0  # side messages still queued this long after the fault: noted


@dataclass(slots=True)
class FaultRecord:
    kind: str
    target: str  # an instance name, "postgres" or "broker"
    target_led: bool  # the target was the leader when the fault began
    at: float  # wall clock, injected
    healed_at: float = 0.0  # wall clock, the fault undone (restarted, thawed, healed)
    failover_s: float | None = None  # injected -> another instance answers leader
    recovery_s: float | None = None  # healed -> an instance answers leader
    recovered: bool = True  # healthy again within the recovery timeout
    notes: list[str] = field(default_factory=list)


@dataclass(slots=True)
class SideTraffic:
    """The side publishers and what they publish (see sidemessages)."""

    hostile: SideLoad
    hostile_catalogue: HostileCatalogue
    clockless: SideLoad
    clockless_catalogue: ClocklessCatalogue


def runnable_kinds(kinds: tuple[str, ...], unavailable: dict[str, str]) -> tuple[str, ...]:
    """`kinds` without those this machine cannot inject (kind -> why, e.g. no mount)."""
    return tuple(k for k in kinds if k not in unavailable)


def schedule(kinds: tuple[str, ...], seed: int) -> Iterator[tuple[int, str]]:
    """(round, kind) forever: every round is each kind once, in a seeded random order."""
    rng = random.Random(seed)
    rnd = 0
    while True:
        order = list(kinds)
        rng.shuffle(order)
        for kind in order:
            yield rnd, kind
        rnd += 1


class FaultInjector:
    def __init__(self, cluster: Cluster, options: ChaosOptions, side: SideTraffic) -> None:
        self.cluster = cluster
        self.options = options
        self.side = side
        self.rng = random.Random(f"{options.seed}/targets")
        self.handlers: dict[str, Callable[[FaultRecord], Awaitable[None]]] = {
            "kill9": self._kill9,
            "sigstop": self._sigstop,
            "sigterm": self._sigterm,
            "pg_restart": self._pg_restart,
            "pg_down": self._pg_down,
            "broker_restart": self._broker_restart,
            "broker_down": self._broker_down,
            "slow_db": self._slow_db,
            "partition_db": self._partition_db,
            "partition_mqtt": self._partition_mqtt,
            "hostile_payloads": self._hostile_payloads,
            "db_read_only": self._db_read_only,
            "db_conn_slots": self._db_conn_slots,
            "spool_full": self._spool_full,
            "spool_ro": self._spool_ro,
            "clockless": self._clockless,
        }

    async def inject(self, kind: str) -> FaultRecord:
        target, led = await self._target(kind)
        record = FaultRecord(kind, target, led, at=time.time())
        try:
            await self.handlers[kind](record)
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            # The runner could not do (or undo) it: noted, the run goes on.
            record.notes.append(f"FAULT NOT INJECTED CLEANLY: {type(exc).__name__}: {exc}")
        record.healed_at = record.healed_at or time.time()
        return record

    async def _target(self, kind: str) -> tuple[str, bool]:
        if kind in LOAD_KINDS:
            return "load", False
        if kind not in TARGETED_KINDS:
            return ("postgres" if "pg" in kind or "db" in kind else "broker"), False
        found = await leaders(self.cluster.nodes)
        leader = found[0] if len(found) == 1 else None
        others = [n for n in self.cluster.nodes if n is not leader]
        node = leader if leader is not None and self.rng.random() < 0.5 else self.rng.choice(others)
        return node.name, node is leader

    # -- instances -----------------------------------------------------------------------

    async def _kill9(self, record: FaultRecord) -> None:
        await self._restart_after(record, signal.SIGKILL)

    async def _sigterm(self, record: FaultRecord) -> None:
        await self._restart_after(record, signal.SIGTERM)

    async def _restart_after(self, record: FaultRecord, sig: signal.Signals) -> None:
        node = self.cluster.node(record.target)
        node.signal(sig)
        try:
            code = await node.wait_exit(_EXIT_TIMEOUT_S)
        except AssertionError:
            record.notes.append(f"still running {_EXIT_TIMEOUT_S:.0f}s after {sig.name}: killed")
            await asyncio.to_thread(node.stop_now)
            code = -9
        if sig == signal.SIGTERM and code != 0:
            record.notes.append(f"exit code {code} after SIGTERM")
        await asyncio.sleep(RESTART_PAUSE_S)
        await asyncio.to_thread(node.start)

    async def _sigstop(self, record: FaultRecord) -> None:
        node = self.cluster.node(record.target)
        node.signal(signal.SIGSTOP)
        await asyncio.sleep(self.options.sigstop_s)
        node.signal(signal.SIGCONT)

    async def _partition_db(self, record: FaultRecord) -> None:
        await self._partition(self.cluster.proxies[record.target].db)

    async def _partition_mqtt(self, record: FaultRecord) -> None:
        await self._partition(self.cluster.proxies[record.target].mqtt)

    async def _partition(self, proxy: Any) -> None:
        proxy.set_mode("blackhole")
        try:
            await asyncio.sleep(self.options.partition_s)
        finally:
            proxy.set_mode("pass")

    # -- servers -------------------------------------------------------------------------

    async def _pg_restart(self, record: FaultRecord) -> None:
        await self._db_outage(record, asyncio.to_thread(self.cluster.pg.restart))

    async def _pg_down(self, record: FaultRecord) -> None:
        async def crash_and_wait() -> None:
            await asyncio.to_thread(self.cluster.pg.kill)
            await asyncio.sleep(self.options.outage_s)
            await asyncio.to_thread(self.cluster.pg.start)

        await self._db_outage(record, crash_and_wait())

    async def _slow_db(self, record: FaultRecord) -> None:
        async def freeze() -> None:
            await asyncio.to_thread(self.cluster.pg.pause)
            try:
                await asyncio.sleep(self.options.slow_db_s)
            finally:
                await asyncio.to_thread(self.cluster.pg.resume)

        await self._db_outage(record, freeze())

    async def _db_outage(self, record: FaultRecord, action: Awaitable[None]) -> None:
        """Run `action`, noting the time the database was unavailable to everybody."""
        try:
            await action
        finally:
            self.cluster.outages.append((record.at, time.time()))

    async def _broker_restart(self, record: FaultRecord) -> None:
        await asyncio.to_thread(self.cluster.broker.restart)

    async def _broker_down(self, record: FaultRecord) -> None:
        await asyncio.to_thread(self.cluster.broker.stop)
        await asyncio.sleep(self.options.outage_s)
        await asyncio.to_thread(self.cluster.broker.start)

    # -- the database's states -----------------------------------------------------------

    async def _db_read_only(self, record: FaultRecord) -> None:
        async def read_only() -> None:
            ended = await dbfaults.set_read_only(self.cluster.dsn, True)
            record.notes.append(f"{ended} sessions terminated")
            try:
                await asyncio.sleep(self.options.db_fault_s)
            finally:
                await _undo(lambda: dbfaults.set_read_only(self.cluster.dsn, False))

        await self._db_outage(record, read_only())

    async def _db_conn_slots(self, record: FaultRecord) -> None:
        limit, ended = await dbfaults.exhaust_slots(self.cluster.dsn, record.target)
        record.notes.append(f"role limit {limit} connections, {ended} of its sessions ended")
        try:
            await asyncio.sleep(self.options.db_fault_s)
        finally:
            await _undo(lambda: dbfaults.release_slots(self.cluster.dsn))

    # -- an instance's spool file system -------------------------------------------------

    async def _spool_full(self, record: FaultRecord) -> None:
        mounts = self.cluster.mounts
        ballast = await asyncio.to_thread(mounts.fill, record.target)
        record.notes.append(f"ballast {ballast / 1e6:.1f} MB")
        try:
            await asyncio.sleep(self.options.spool_fault_s)
        finally:
            await asyncio.to_thread(mounts.free, record.target)

    async def _spool_ro(self, record: FaultRecord) -> None:
        mounts = self.cluster.mounts
        how = await asyncio.to_thread(mounts.make_read_only, record.target)
        record.notes.append(f"read-only by {how}")
        try:
            await asyncio.sleep(self.options.spool_ro_s)
        finally:
            await asyncio.to_thread(mounts.make_writable, record.target, how)

    # -- side traffic --------------------------------------------------------------------

    async def _hostile_payloads(self, record: FaultRecord) -> None:
        batch = self.side.hostile_catalogue.batch(datetime.now(UTC))
        await self._publish_side(record, self.side.hostile, batch, "hostile")

    async def _clockless(self, record: FaultRecord) -> None:
        hold = self.options.side_load_s
        rounds = max(1, round(hold * _CLOCKLESS_PER_S / 8))
        batch = [m for _ in range(rounds) for m in self.side.clockless_catalogue.batch()]
        await self._publish_side(record, self.side.clockless, batch, "clockless")

    async def _publish_side(
        self, record: FaultRecord, load: SideLoad, batch: list[SideMessage], what: str
    ) -> None:
        load.enqueue(batch, self.options.side_load_s)
        record.notes.append(f"{len(batch)} {what} messages")
        timeout = self.options.side_load_s + _PUBLISHED_GRACE_S
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: not load.queued, timeout, "side messages queued", _POLL_S)
        if load.queued:
            record.notes.append(f"{load.queued} still unpublished (broker unreachable?)")

    # -- recovery ------------------------------------------------------------------------

    async def wait_healthy(self, timeout: float) -> bool:
        """Until one leader and every other instance a healthy standby; an instance that
        exited on its own meanwhile is restarted (as systemd would) and noted."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            await self._restart_exited()
            if await self._healthy():
                return True
            await asyncio.sleep(_POLL_S)
        return False

    async def _restart_exited(self) -> None:
        for node in self.cluster.nodes:
            if node.proc is not None and node.proc.poll() is not None:
                self.cluster.unexpected_exits.append(
                    {
                        "instance": node.name,
                        "code": node.proc.returncode,
                        "at": time.time(),
                        "log_tail": node.tail(8),
                    }
                )
                await asyncio.sleep(RESTART_PAUSE_S)
                await asyncio.to_thread(node.start)

    async def _healthy(self) -> bool:
        roles = await asyncio.gather(*(_role(n) for n in self.cluster.nodes))
        return roles.count("leader") == 1 and roles.count("standby") == len(roles) - 1


async def _undo(action: Callable[[], Awaitable[object]]) -> None:
    """Undo a database state, retried: a database left read-only or without connection
    slots would spoil the rest of the run. The last failure is raised (and noted)."""
    for attempt in range(_UNDO_ATTEMPTS):
        try:
            await action()
        except (OSError, asyncpg.PostgresError, TimeoutError):
            if attempt == _UNDO_ATTEMPTS - 1:
                raise
            await asyncio.sleep(1.0)
        else:
            return


async def _role(node: InstanceProcess) -> str:
    status, _ = await node.get("/health/leader", timeout=1.0)
    if status == 200:
        return "leader"
    status, _ = await node.get("/health/standby", timeout=1.0)
    return "standby" if status == 200 else "unhealthy"
