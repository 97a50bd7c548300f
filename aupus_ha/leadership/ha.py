"""The HA loop: a small state machine that drives `Election`.

    STANDBY --lock free--> LEADER --renew lost / deadline passed / fenced--> STANDBY
    OBSERVER (MQTT_MODE=development) and DISABLED only heartbeat; they never lead.

"Am I leader" is a lease with an expiry (`lease_deadline`, monotonic): it is extended
by every successful renewal and simply runs out if the loop stalls, so the writer stops
on its own even when this loop cannot run. It also ends the moment the lock connection
is lost (the lock dies with the session), and a new term whose predecessor may still
hold a lease (a server restart freed its lock) begins only once that lease has run
out. Every transition is one log event.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tenacity import AsyncRetrying, retry_if_exception_type

from aupus_ha import constants
from aupus_ha.backoff import jittered
from aupus_ha.config import Settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.leadership.election import Election, IdentityLost, RenewOutcome, Term
from aupus_ha.logs import get_logger

log = get_logger(__name__)

StatsProvider = Callable[[], dict[str, object]]


def role_for_mode(mode: str) -> str:
    """The role an MQTT_MODE gives before any election (the one mode -> role mapping):
    development observes, disabled serves HTTP only, production waits as a standby."""
    if mode == constants.MODE_DISABLED:
        return constants.ROLE_DISABLED
    if mode == constants.MODE_DEVELOPMENT:
        return constants.ROLE_OBSERVER
    return constants.ROLE_STANDBY


@dataclass(slots=True)
class LeaderInfo:
    """Who leads, as last seen by this instance (for /health/leader)."""

    leader_id: str | None = None
    epoch: int | None = None
    leader_since: datetime | None = None
    last_flush_at: datetime | None = None


class HaLoop:
    """Runs the election for one process and tells the writer when it may write."""

    def __init__(
        self,
        settings: Settings,
        election: Election,
        stats: StatsProvider,
        broker_connected: Callable[[], bool] | None = None,
    ) -> None:
        self._settings = settings
        self._election = election
        self._stats = stats
        # None when this instance has no MQTT intake (then the broker never matters).
        self._broker_connected = broker_connected
        self._broker_lost_at: float | None = None
        self.role = self._initial_role()
        self.term: Term | None = None
        self.lease_deadline = 0.0
        self.db_ok = False
        self.last_tick = 0.0
        self.promoted = asyncio.Event()  # wakes the writer at once on promotion
        self._stop = asyncio.Event()
        self._step_down_until = 0.0
        # Step-downs asked from outside the loop (the admin route): the lock connection
        # belongs to the loop alone, so the loop performs them at its next tick.
        self._step_down_requests: list[asyncio.Future[bool]] = []
        self._wake = asyncio.Event()
        self._last_heartbeat = 0.0
        # A new term may not be used before this instant (monotonic): see Term.wait_s.
        self._leading_from = 0.0
        self.leader_info = LeaderInfo()
        election.on_connection_lost = self._on_lock_connection_lost

    def _initial_role(self) -> str:
        return role_for_mode(self._settings.mqtt_mode)

    # --- what the rest of the process asks ------------------------------------------------

    def is_leader(self) -> bool:
        """True only while our lease is valid: it expires by itself if renewals stop,
        and ends at once with the lock connection (the lock is gone with it)."""
        if self.role != constants.ROLE_LEADER:
            return False
        now = time.monotonic()
        return self._leading_from <= now < self.lease_deadline and self._election.connected

    @property
    def epoch(self) -> int | None:
        return self.term.epoch if self.term and self.role == constants.ROLE_LEADER else None

    def fenced(self, mine: int, current: int | None) -> None:
        """The writer's flush found another epoch: stop leading now."""
        if self.term is None or self.term.epoch != mine:
            return
        log.error(
            "leader.fenced",
            epoch=mine,
            current_epoch=current,
            # Same number: another process leads this epoch (it was handed out twice).
            reason="other_process" if current == mine else "epoch_moved",
            previous_leader=self.term.previous_leader,
        )
        self._demote()

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect and claim the lease row, retrying while the database is unreachable.

        IdentityClash and PoolerDetected are not retried: they are configuration errors.
        """
        await self._connect(during="start")
        if self._election.connected:
            # Know who leads from the first moment (/health/leader on a fresh standby).
            with contextlib.suppress(DatabaseUnavailable):
                self._observe(await self._election.leadership())

    async def run(self) -> None:
        """The loop; returns when `stop()` is called."""
        while not self._stop.is_set():
            self.last_tick = time.monotonic()
            try:
                await self._serve_step_down_requests()
                await self._tick()
                self.db_ok = True
            except DatabaseUnavailable as exc:
                await self._on_unavailable(exc)
            await self._sleep(self._interval())

    def stop(self) -> None:
        self._stop.set()

    async def release(self) -> None:
        """Graceful end: release the lock and mark our row stopped (best effort)."""
        epoch = self.term.epoch if self.role == constants.ROLE_LEADER and self.term else None
        final_role = constants.ROLE_STOPPED
        try:
            if self._election.connected:
                await self._election.release(epoch, final_role, stopping=True)
                if epoch is not None:
                    log.info("leader.released", epoch=epoch, reason="shutdown")
        except DatabaseUnavailable as exc:
            log.warning("leader.release_failed", epoch=epoch, error=str(exc))
        finally:
            self.role = final_role
            self.lease_deadline = 0.0
            await self._election.close()

    async def step_down(self, reason: str = "step_down") -> bool:
        """Hand leadership over on demand; we stay a standby and wait before re-trying."""
        if self.role != constants.ROLE_LEADER or self.term is None:
            return False
        epoch = self.term.epoch
        self._demote()
        self._step_down_until = time.monotonic() + self._settings.lease_ttl_s
        await self._election.release(epoch, constants.ROLE_STANDBY, stopping=False)
        log.info("leader.released", epoch=epoch, reason=reason)
        return True

    async def request_step_down(self, timeout: float) -> bool:
        """Ask the loop to hand over now; True once it has released the leadership."""
        if not self.is_leader():
            return False
        request: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._step_down_requests.append(request)
        self._wake.set()
        return await asyncio.wait_for(asyncio.shield(request), timeout)

    async def _serve_step_down_requests(self) -> None:
        requests, self._step_down_requests = self._step_down_requests, []
        if not requests:
            return
        try:
            done = await self.step_down()
        except DatabaseUnavailable as exc:
            for request in requests:
                if not request.done():
                    request.set_exception(exc)
            raise
        for request in requests:
            if not request.done():
                request.set_result(done)

    def _broker_lost_for(self) -> float:
        """How long this instance has been without its broker (0 while connected)."""
        if self._broker_connected is None or self._broker_connected():
            self._broker_lost_at = None
            return 0.0
        if self._broker_lost_at is None:
            self._broker_lost_at = time.monotonic()
        return time.monotonic() - self._broker_lost_at

    async def _cut_off_from_broker(self) -> bool:
        """True when we have lost the broker for a lease TTL and a peer still has it.

        A leader that cannot hear the devices writes nothing new: better to hand over to
        a standby that can. With no such peer we keep leading (our buffer still needs
        writing, and nobody would do better).
        """
        if self._broker_lost_for() <= self._settings.lease_ttl_s:
            return False
        return await self._election.peer_with_broker(self._settings.lease_ttl_s)

    # --- the state machine ----------------------------------------------------------------

    def _interval(self) -> float:
        if self.role == constants.ROLE_STANDBY:
            return min(constants.ACQUIRE_POLL_S, self._settings.heartbeat_s)
        return self._settings.heartbeat_s

    async def _tick(self) -> None:
        if not self._election.connected:
            if self.role == constants.ROLE_LEADER:
                await self._lose("connection_lost")  # the lock died with the session
            await self._connect(during="tick")
        if self.role == constants.ROLE_LEADER:
            await self._lead()
        elif self.role == constants.ROLE_STANDBY:
            await self._stand_by()
        else:
            await self._heartbeat_if_due()

    async def _lead(self) -> None:
        assert self.term is not None
        if self._leading_from and time.monotonic() >= self._leading_from:
            self._leading_from = 0.0
            self._announce(self.term)
        remaining = self.lease_deadline - time.monotonic()
        if remaining <= 0:
            await self._lose("renew_deadline")
            return
        sent = time.monotonic()
        try:
            outcome = await self._election.renew(
                self.term.epoch, self._stats(), timeout=min(remaining, constants.DB_CALL_TIMEOUT_S)
            )
        except DatabaseUnavailable:
            if not self._election.connected:
                await self._lose("connection_lost")  # the lock died with the session
                return
            if time.monotonic() >= self.lease_deadline:
                await self._lose("renew_deadline")
                return
            raise
        if outcome is RenewOutcome.HELD:
            self.lease_deadline = sent + self._settings.renew_deadline_s
            if await self._cut_off_from_broker():
                await self.step_down(reason="broker_unreachable")
        else:
            await self._lose(outcome.value)

    async def _stand_by(self) -> None:
        await self._heartbeat_if_due(evict=True)
        # Cleared before trying (a later NOTIFY wakes us), and also while we hold off
        # after a step-down: our own release NOTIFY would otherwise wake the loop again
        # and again, spinning a core for LEASE_TTL_S.
        self._election.released.clear()
        if time.monotonic() < self._step_down_until:
            return
        if await self._cut_off_from_broker():
            return  # a peer that hears the devices should lead, not us
        term = await self._election.try_acquire()
        if term is not None:
            self._promote(term)

    async def _heartbeat_if_due(self, *, evict: bool = False) -> None:
        now = time.monotonic()
        if now - self._last_heartbeat < self._settings.heartbeat_s:
            return
        try:
            await self._election.heartbeat(self.role, self._stats())
        except IdentityLost:
            log.error("instance.identity_lost", instance_id=self._settings.instance_id)
            raise
        self._last_heartbeat = now
        self._observe(await self._election.leadership())
        if evict:
            eviction = await self._election.evict_silent_leader()
            if eviction is not None:
                log.warning(
                    "leader.evicted",
                    epoch=eviction.epoch,
                    previous_leader=eviction.instance_id,
                    heartbeat_age_s=round(eviction.heartbeat_age_s or 0, 3),
                    sessions_terminated=eviction.terminated,
                )

    def _observe(self, row: dict[str, object] | None) -> None:
        if row is None:
            self.leader_info = LeaderInfo()
            return
        active = row["released_at"] is None and row["leader_instance_id"] is not None
        self.leader_info = LeaderInfo(
            leader_id=str(row["leader_instance_id"]) if active else None,
            epoch=int(row["epoch"]),  # type: ignore[call-overload]
            leader_since=row["acquired_at"] if active else None,  # type: ignore[arg-type]
            last_flush_at=row["last_flush_at"],  # type: ignore[arg-type]
        )

    def _promote(self, term: Term) -> None:
        self.term = term
        self.role = constants.ROLE_LEADER
        self.lease_deadline = time.monotonic() + self._settings.renew_deadline_s
        self.leader_info = LeaderInfo(self._settings.instance_id, term.epoch, term.acquired_at)
        if term.wait_s > 0:
            # The epoch is bumped already (the previous leader's flushes are fenced), but
            # it may still answer as leader until its lease runs out: so do we not.
            self._leading_from = time.monotonic() + term.wait_s
            log.warning(
                "leader.lease_wait",
                epoch=term.epoch,
                previous_leader=term.previous_leader,
                wait_ms=round(term.wait_s * 1000),
                reason="server_restarted",
            )
            return
        self._announce(term)

    def _announce(self, term: Term) -> None:
        """The term is usable: wake the writer and say so."""
        self.promoted.set()
        waited = {"waited_ms": round(term.wait_s * 1000)} if term.wait_s else {}
        log.info(
            "leader.acquired",
            epoch=term.epoch,
            previous_leader=term.previous_leader,
            gap_ms=term.gap_ms,
            reason=term.reason,
            **waited,
        )

    def _on_lock_connection_lost(self) -> None:
        """The lock connection ended under us: the lock went with it, so leadership ends
        now, not at the next tick (a restarted server may grant it to a standby soon)."""
        if self.role == constants.ROLE_LEADER and self.term is not None:
            log.error(
                "leader.lost",
                epoch=self.term.epoch,
                reason="connection_lost",
                previous_leader=self.term.previous_leader,
            )
            self._demote()
        self._wake.set()  # reconnect at once

    async def _lose(self, reason: str) -> None:
        assert self.term is not None
        if self.role != constants.ROLE_LEADER:
            # Already dropped (the lock connection's termination listener): just close.
            await self._election.close()
            return
        log.error(
            "leader.lost",
            epoch=self.term.epoch,
            reason=reason,
            previous_leader=self.term.previous_leader,
        )
        self._demote()
        # Close the lock connection now: if the server still holds our lock, this frees
        # it; the next tick opens a fresh session as a standby.
        await self._election.close()

    def _demote(self) -> None:
        self.role = constants.ROLE_STANDBY
        self.lease_deadline = 0.0
        self._leading_from = 0.0
        self.promoted.clear()

    async def _on_unavailable(self, exc: DatabaseUnavailable) -> None:
        if self.db_ok:
            log.warning("db.unavailable", role=self.role, error=str(exc))
        self.db_ok = False
        if self.role == constants.ROLE_LEADER and time.monotonic() >= self.lease_deadline:
            await self._lose("renew_deadline")
        if not self._election.connected:
            return
        if self.role != constants.ROLE_LEADER:
            # A broken session is reopened on the next tick.
            await self._election.close()

    async def _connect(self, *, during: str) -> None:
        """(Re)open the lock connection and claim our row, backing off while the database
        is away; gives up quietly when the loop is stopped."""
        # Capped at half the TTL: once the database is back, a leader is elected within
        # about one TTL (a longer backoff left the cluster leaderless for seconds).
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(DatabaseUnavailable),
            wait=jittered(max(0.5, self._settings.lease_ttl_s / 2)),
            reraise=True,
        ):
            with attempt:
                if self._stop.is_set():
                    return
                try:
                    await self._election.open()
                    await self._election.register(self.role)
                except DatabaseUnavailable as exc:
                    if self.db_ok or during == "start":
                        log.warning("db.unavailable", during=during, role=self.role, error=str(exc))
                    self.db_ok = False
                    self.last_tick = time.monotonic()
                    raise
        self._last_heartbeat = time.monotonic()
        if during != "start" and not self.db_ok:
            log.info("db.reconnected", role=self.role)
        self.db_ok = True

    async def _sleep(self, seconds: float) -> None:
        """Wait for the next tick, a stop, or (standby) a leader announcing its release."""
        released = self._election.released
        if self._step_down_requests:
            return  # asked while we were ticking: serve it at once
        self._wake.clear()
        waiters = {
            asyncio.ensure_future(self._stop.wait()),
            asyncio.ensure_future(self._wake.wait()),
        }
        if self.role == constants.ROLE_STANDBY and time.monotonic() >= self._step_down_until:
            waiters.add(asyncio.ensure_future(released.wait()))
        if self._leading_from:
            seconds = min(seconds, max(0.0, self._leading_from - time.monotonic()))
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    def snapshot(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "is_leader": self.is_leader(),
            "epoch": self.epoch,
            "leader_since": self.term.acquired_at if self.term and self.is_leader() else None,
            "db_ok": self.db_ok,
        }
