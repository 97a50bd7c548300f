"""Leader election: a narrow object over one dedicated PostgreSQL connection.

`Election` knows how to claim this process's lease row, take the cluster's session
advisory lock (bumping the epoch in the same transaction), renew, evict a silent leader
and release. It makes no decisions about *when*: that is the HA loop's job (`ha.py`).

Conventions (after Patroni's lesson): losing leadership is a *value*
(`RenewOutcome`), the database being unreachable is an *exception*
(`DatabaseUnavailable`).
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import Settings
from aupus_ha.database.connection import (
    DatabaseUnavailable,
    connect,
    translating_db_errors,
)
from aupus_ha.database.migrate import LOCK_NAMESPACE, MIGRATION_LOCK_KEY
from aupus_ha.database.queries import Queries
from aupus_ha.logs import get_logger
from aupus_ha.names import notify_channel

log = get_logger(__name__)


class IdentityClash(Exception):
    """Another live process holds the lease row of this INSTANCE_ID."""


class IdentityLost(Exception):
    """Our lease row was taken over by another process while we ran."""


class PoolerDetected(Exception):
    """The lock connection goes through a transaction-mode pooler."""


class RenewOutcome(enum.Enum):
    HELD = "held"
    LOCK_GONE = "lock_gone"  # our backend no longer holds the advisory lock
    EPOCH_MOVED = "epoch_moved"  # somebody else was elected after us
    ROW_TAKEN = "row_taken"  # our lease row now belongs to another process


@dataclass(frozen=True, slots=True)
class Identity:
    """Who this process is. The token is fresh for every process start."""

    instance_id: str
    cluster_name: str
    process_token: str
    host: str
    pid: int
    version: str
    mode: str
    http_url: str | None = None

    @property
    def app_name(self) -> str:
        return application_name_for(self.instance_id, self.process_token)


def application_name_for(instance_id: str, process_token: str) -> str:
    # PostgreSQL keeps 63 bytes of application_name; the token prefix keeps it unique.
    return f"aupus-ha/{instance_id[:40]}/{process_token.replace('-', '')[:12]}"


@dataclass(frozen=True, slots=True)
class Term:
    """A leadership term this process has just begun."""

    epoch: int
    previous_leader: str | None
    reason: str
    gap_ms: int | None
    acquired_at: datetime
    # Seconds the previous leader may still believe it leads (its lease outlived a server
    # restart that freed the lock): the term may not be used before they have passed.
    wait_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Eviction:
    instance_id: str | None
    heartbeat_age_s: float | None
    terminated: int
    epoch: int | None = None  # the term the evicted process was leading


def lock_keys(cluster_name: str) -> tuple[int, int]:
    """The advisory lock of a cluster: (namespace, 31-bit hash of the name).

    Two int4 keys rather than one bigint so pg_locks shows them plainly
    (classid/objid) for the "do I still hold it" check.
    """
    digest = hashlib.sha256(f"aupus-ha/cluster/{cluster_name}".encode()).digest()
    key = int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
    return LOCK_NAMESPACE, key if key != MIGRATION_LOCK_KEY else 1


class Election:
    """Lock, lease and epoch operations for one process."""

    def __init__(self, settings: Settings, identity: Identity, queries: Queries) -> None:
        self._settings = settings
        self._identity = identity
        self._q = queries
        self._keys = lock_keys(identity.cluster_name)
        self._conn: asyncpg.Connection | None = None
        self._backend_pid: int | None = None
        # Lock holders with no lease row, first seen at (monotonic): evicted after a TTL.
        self._orphans: dict[int, float] = {}
        self.released = asyncio.Event()  # set when some leader announces a release
        # Called when the lock connection ends without our asking (server restart,
        # pg_terminate_backend, network): the lock is gone with it, at once.
        self.on_connection_lost: Callable[[], None] | None = None

    # --- connection ---------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def open(self) -> None:
        """Open the dedicated lock connection and make sure it is a real session."""
        await self.close()
        conn = await connect(self._settings, self._identity.app_name)
        with translating_db_errors(on_error=lambda _: conn.terminate()):
            first = await conn.fetchval("SELECT pg_backend_pid()", timeout=self._timeout)
            second = await conn.fetchval("SELECT pg_backend_pid()", timeout=self._timeout)
        if first != second:
            conn.terminate()
            raise PoolerDetected(
                "DATABASE_URL goes through a transaction-mode pooler (PgBouncer/Supavisor): "
                f"backend pid changed from {first} to {second} between two queries; "
                "a session advisory lock cannot work there — point DATABASE_URL at "
                "PostgreSQL directly or at a session-mode pooler port"
            )
        self._conn = conn
        self._backend_pid = first
        conn.add_termination_listener(self._on_terminated)
        # A leader that releases the lock NOTIFYs the cluster channel: standbys wake at
        # once instead of at their next poll, so a planned handover has almost no gap.
        await conn.add_listener(self._channel, self._on_notify)

    @property
    def _channel(self) -> str:
        return notify_channel(self._identity.cluster_name)

    def _on_notify(self, *_: object) -> None:
        self.released.set()

    def _on_terminated(self, conn: object) -> None:
        # `close()` forgets the connection before closing it: only a loss we did not ask
        # for reaches the callback.
        if conn is self._conn and self.on_connection_lost is not None:
            self.on_connection_lost()

    async def close(self) -> None:
        """Close the lock connection; the server releases the lock with the session."""
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        try:
            await conn.close(timeout=self._timeout)
        except Exception:
            conn.terminate()

    @property
    def _timeout(self) -> float:
        return min(constants.DB_CALL_TIMEOUT_S, self._settings.lease_ttl_s)

    def _require(self) -> asyncpg.Connection:
        if self._conn is None or self._conn.is_closed():
            raise DatabaseUnavailable("lock connection is closed")
        return self._conn

    # --- lease row ----------------------------------------------------------------

    async def register(self, role: str) -> None:
        """Claim this INSTANCE_ID's lease row for this process.

        Refuses (IdentityClash) when the row belongs to another live process: its
        backend still connected and its heartbeat fresh. A row left by a dead process
        (backend gone) or a silent one (heartbeat older than LEASE_TTL_S) is taken over
        at once; the silent one's sessions are ended first.
        """
        ident = self._identity
        conn = self._require()
        with translating_db_errors():
            async with conn.transaction():
                row = await conn.fetchrow(
                    self._q["instance_for_update"], ident.instance_id, timeout=self._timeout
                )
                if row is not None and str(row["process_token"]) != ident.process_token:
                    await self._check_previous_owner(conn, row)
                await conn.execute(
                    self._q["upsert_instance"],
                    ident.instance_id,
                    ident.cluster_name,
                    ident.process_token,
                    ident.host,
                    ident.pid,
                    ident.version,
                    ident.mode,
                    role,
                    ident.http_url,
                    timeout=self._timeout,
                )

    async def _check_previous_owner(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        alive = row["backend_alive"] and not row["stopped"]
        fresh = row["heartbeat_age_s"] is not None and (
            row["heartbeat_age_s"] <= self._settings.lease_ttl_s
        )
        if alive and fresh:
            raise IdentityClash(
                f"INSTANCE_ID={self._identity.instance_id!r} is already in use by a live "
                f"process (host {row['host']}, pid {row['pid']}, heartbeat "
                f"{row['heartbeat_age_s']:.1f}s ago); give each process its own INSTANCE_ID"
            )
        if alive:
            # Silent but connected (paused?): end its sessions so it cannot keep the lock.
            name = application_name_for(self._identity.instance_id, str(row["process_token"]))
            await conn.fetchval(self._q["terminate_process_backends"], name, timeout=self._timeout)
        log.info(
            "instance.row_taken_over",
            previous_pid=row["pid"],
            previous_host=row["host"],
            previous_alive=bool(row["backend_alive"]),
        )

    async def heartbeat(self, role: str, stats: dict[str, object]) -> None:
        """Renew a non-leader's lease row; IdentityLost if another process owns it."""
        ident = self._identity
        conn = self._require()
        with translating_db_errors():
            ok = await conn.fetchval(
                self._q["standby_heartbeat"],
                ident.instance_id,
                ident.process_token,
                role,
                orjson.dumps(stats),
                timeout=self._timeout,
            )
        if ok is None:
            raise IdentityLost(
                f"lease row of INSTANCE_ID={ident.instance_id!r} was taken over by another process"
            )

    # --- leadership -----------------------------------------------------------------

    async def try_acquire(self) -> Term | None:
        """Take the lock if it is free and begin a new term (epoch + 1)."""
        conn = self._require()
        with translating_db_errors():
            got = await conn.fetchval(self._q["try_lock"], *self._keys, timeout=self._timeout)
            if not got:
                return None
            try:
                return await self._begin_term(conn)
            except BaseException:
                if not conn.is_closed():
                    await conn.fetchval(self._q["unlock"], *self._keys, timeout=self._timeout)
                raise

    async def _begin_term(self, conn: asyncpg.Connection) -> Term:
        ident, t = self._identity, self._timeout
        async with conn.transaction():
            await conn.execute(self._q["ensure_leadership_row"], ident.cluster_name, timeout=t)
            prev = await conn.fetchrow(
                self._q["leadership_for_update"], ident.cluster_name, timeout=t
            )
            bumped = await conn.fetchrow(
                self._q["bump_epoch"],
                ident.cluster_name,
                ident.instance_id,
                ident.process_token,
                timeout=t,
            )
            assert prev is not None and bumped is not None
            epoch, acquired_at = int(bumped["epoch"]), bumped["acquired_at"]
            server = await conn.fetchrow(self._q["server_started"], timeout=t)
            assert server is not None
            wait_s = previous_lease_left(
                prev, server["started_at"], server["db_now"], ident.process_token, self._ttl
            )
            marked = await conn.fetchval(
                self._q["mark_instance_leader"],
                ident.instance_id,
                ident.process_token,
                epoch,
                timeout=t,
            )
            if marked is None:
                raise IdentityLost(f"lease row of INSTANCE_ID={ident.instance_id!r} was taken over")
            reason, gap_ms = _handover_reason(prev, acquired_at)
            await conn.execute(
                self._q["record_handover"],
                ident.cluster_name,
                epoch,
                prev["leader_instance_id"],
                ident.instance_id,
                reason,
                gap_ms,
                timeout=t,
            )
        return Term(epoch, prev["leader_instance_id"], reason, gap_ms, acquired_at, wait_s)

    @property
    def _ttl(self) -> float:
        return self._settings.lease_ttl_s

    async def renew(self, epoch: int, stats: dict[str, object], timeout: float) -> RenewOutcome:
        """One heartbeat of the leader: lease, epoch and lock, in one round trip."""
        ident = self._identity
        conn = self._require()
        with translating_db_errors():
            row = await conn.fetchrow(
                self._q["leader_renew"],
                ident.instance_id,
                ident.process_token,
                epoch,
                orjson.dumps(stats),
                ident.cluster_name,
                *self._keys,
                timeout=timeout,
            )
        assert row is not None
        if row["epoch"] != epoch or row["leader_token"] not in (None, ident.process_token):
            return RenewOutcome.EPOCH_MOVED  # a new term, or our epoch handed out twice
        if not row["renewed"]:
            return RenewOutcome.ROW_TAKEN
        if not row["lock_held"]:
            return RenewOutcome.LOCK_GONE
        return RenewOutcome.HELD

    async def release(self, epoch: int | None, final_role: str, *, stopping: bool) -> None:
        """End our term cleanly (if we lead) and let go of the lock at once."""
        ident, t = self._identity, self._timeout
        conn = self._require()
        with translating_db_errors():
            async with conn.transaction():
                if epoch is not None:
                    await conn.fetchval(
                        self._q["release_leadership"],
                        ident.cluster_name,
                        epoch,
                        ident.process_token,
                        timeout=t,
                    )
                if stopping:
                    await conn.execute(
                        self._q["mark_instance_stopped"],
                        ident.instance_id,
                        ident.process_token,
                        final_role,
                        timeout=t,
                    )
            if epoch is not None:
                await conn.fetchval(self._q["unlock"], *self._keys, timeout=t)
                await conn.execute("SELECT pg_notify($1, $2)", self._channel, str(epoch), timeout=t)

    async def peer_with_broker(self, lease_ttl_s: float) -> bool:
        """Is another live standby of this cluster connected to the MQTT broker?"""
        conn = self._require()
        with translating_db_errors():
            found = await conn.fetchval(
                self._q["standby_with_broker"],
                self._identity.cluster_name,
                self._identity.instance_id,
                lease_ttl_s,
                timeout=self._timeout,
            )
        return bool(found)

    async def leadership(self) -> dict[str, object] | None:
        """The cluster's current term as stored (who leads, since when, last flush)."""
        conn = self._require()
        with translating_db_errors():
            row = await conn.fetchrow(
                self._q["leadership"], self._identity.cluster_name, timeout=self._timeout
            )
        return dict(row) if row is not None else None

    async def evict_silent_leader(self) -> Eviction | None:
        """End the sessions of a lock holder whose heartbeat is older than LEASE_TTL_S."""
        conn = self._require()
        ttl = self._settings.lease_ttl_s
        with translating_db_errors():
            holder = await conn.fetchrow(
                self._q["lock_holder"],
                *self._keys,
                self._identity.cluster_name,
                timeout=self._timeout,
            )
            if holder is None or holder["holder_pid"] == self._backend_pid:
                self._orphans.clear()
                return None
            app_name = holder["application_name"] or ""
            if not app_name.startswith("aupus-ha/"):
                return None  # an operator's session holds it on purpose: never touch it
            if holder["instance_id"] is None:
                return await self._evict_orphan(conn, holder["holder_pid"], app_name, ttl)
            self._orphans.clear()
            age = float(holder["heartbeat_age_s"])
            if age <= ttl:
                return None
            terminated = await conn.fetchval(
                self._q["terminate_process_backends"], app_name, timeout=self._timeout
            )
            await conn.execute(
                self._q["mark_evicted"],
                self._identity.cluster_name,
                holder["instance_id"],
                timeout=self._timeout,
            )
        return Eviction(holder["instance_id"], age, int(terminated or 0), holder["leader_epoch"])

    async def _evict_orphan(
        self, conn: asyncpg.Connection, pid: int, app_name: str, ttl: float
    ) -> Eviction | None:
        # An aupus-ha backend holds the lock but no lease row names it (its row was taken
        # over, or it died between lock and commit): give it one TTL, then end it.
        first_seen = self._orphans.setdefault(pid, time.monotonic())
        waited = time.monotonic() - first_seen
        if waited <= ttl:
            return None
        terminated = await conn.fetchval(
            self._q["terminate_process_backends"], app_name, timeout=self._timeout
        )
        self._orphans.pop(pid, None)
        return Eviction(None, waited, int(terminated or 0))


def previous_lease_left(
    prev: asyncpg.Record | dict[str, object],
    server_started_at: datetime | None,
    db_now: datetime,
    process_token: str,
    lease_ttl_s: float,
) -> float:
    """How long the previous leader may still believe it leads, in seconds (0: not at all).

    A free lock usually means the previous leader's session ended because its process
    died (crash, eviction): nothing of it answers any more, so a new term starts at once.
    But a server restart frees the lock of a *live* leader too, and that leader keeps
    its local lease until it notices. When its last renewal (`heartbeat_at`) is older
    than the server's start, the restart — not its death — freed the lock: wait until
    its lease (LEASE_TTL_S after that renewal, the bound every instance works with) has
    run out. Both instants are read on the database clock.
    """
    if prev["leader_instance_id"] is None or prev["released_at"] is not None:
        return 0.0
    if prev["leader_token"] is not None and str(prev["leader_token"]) == process_token:
        return 0.0  # our own previous term: this process already dropped it
    heartbeat_at = prev["leader_heartbeat_at"]
    if not isinstance(heartbeat_at, datetime) or server_started_at is None:
        return 0.0
    if heartbeat_at >= server_started_at:
        return 0.0  # it renewed on this server: its session ended because it died
    return max(0.0, lease_ttl_s - (db_now - heartbeat_at).total_seconds())


def _handover_reason(prev: asyncpg.Record, acquired_at: datetime) -> tuple[str, int | None]:
    """Why the previous term ended and how long the cluster had no writer (DB clock)."""
    if prev["leader_instance_id"] is None:
        return constants.REASON_INITIAL, None
    if prev["released_at"] is not None:
        return constants.REASON_RELEASED, _ms(acquired_at, prev["released_at"])
    reason = (
        constants.REASON_EVICTED if prev["ended_reason"] == "evicted" else constants.REASON_LOST
    )
    last_seen = prev["leader_heartbeat_at"]
    return reason, _ms(acquired_at, last_seen) if last_seen is not None else None


def _ms(later: datetime, earlier: datetime) -> int:
    return max(0, int((later - earlier).total_seconds() * 1000))
