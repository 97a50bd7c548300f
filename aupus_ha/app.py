"""One aupus-ha instance: wires the parts, supervises their tasks, shuts down in order.

Side tasks are named and supervised: if one dies, the instance stops cleanly rather
than limping on. Shutdown order is fixed: stop intake → final flush → release the lock
→ close HTTP and the pool.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
from tenacity import AsyncRetrying, retry_if_exception_type

from aupus_ha import __version__, constants
from aupus_ha.backoff import jittered
from aupus_ha.config import Settings
from aupus_ha.database.connection import (
    DatabaseUnavailable,
    QueryStats,
    connect,
    create_pool,
    describe_error,
    translating_db_errors,
)
from aupus_ha.database.legacytime import NOT_LEGACY, LegacyTimeCheck, check_legacy_time
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.decoding.timestamps import time_motivo_of
from aupus_ha.gctuning import tune_gc
from aupus_ha.leadership.election import (
    Election,
    Identity,
    IdentityClash,
    IdentityLost,
    PoolerDetected,
)
from aupus_ha.leadership.ha import HaLoop
from aupus_ha.logs import get_logger
from aupus_ha.names import spool_directory_name
from aupus_ha.operations.alerts import AlertManager
from aupus_ha.operations.http import HttpServer
from aupus_ha.operations.httpguard import raise_open_files_limit
from aupus_ha.operations.metrics import Metrics
from aupus_ha.operations.security import warn_weak_transports
from aupus_ha.operations.view import Body
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.flusher import Flusher, FlushProgress
from aupus_ha.pipeline.intake import DurableIntake
from aupus_ha.pipeline.mqtt import MqttIngest
from aupus_ha.pipeline.rejects import RejectLimiter, RejectPolicy, RejectRetention
from aupus_ha.pipeline.spool import Spool, SpoolRefused
from aupus_ha.pipeline.store import KeyConvention, Store, content_match_window_s, detect_convention
from aupus_ha.pipeline.topics import TopicCatalog

log = get_logger(__name__)

FINAL_FLUSH_DEADLINE_S = 10.0
TASK_CANCEL_TIMEOUT_S = 5.0


@dataclass(slots=True)
class IntakeStats:
    messages: int = 0
    readings: int = 0
    rejects: int = 0
    last_message_at: datetime | None = None
    by_reason: dict[str, int] = field(default_factory=dict)
    # Readings stored with the arrival time, by `_timestamp_motivo` (DOMAIN v2 "Time").
    time_fallbacks: dict[str, int] = field(default_factory=dict)


class Instance:
    """Everything one `aupus-ha run` process does."""

    def __init__(self, settings: Settings, *, migrate: bool = True) -> None:
        self.settings = settings
        self.migrate = migrate
        token = str(uuid.uuid4())
        self.identity = Identity(
            instance_id=settings.instance_id,
            cluster_name=settings.cluster_name,
            process_token=token,
            host=socket.gethostname(),
            pid=os.getpid(),
            version=__version__,
            mode=settings.mqtt_mode,
            http_url=f"http://{socket.gethostname()}:{settings.http_port}",
        )
        self.started_monotonic = time.monotonic()
        # The spool is per process identity: two instances on one host never share one.
        self.spool = Spool(
            settings.spool_dir / spool_directory_name(settings.cluster_name, settings.instance_id),
            max_bytes=settings.spool_max_bytes,
            fsync=settings.spool_fsync,
        )
        self.buffer = PendingBuffer(settings.buffer_max_messages, on_settled=self.spool.settle)
        self.reject_policy = RejectPolicy(
            RejectLimiter(settings.reject_rate_per_min / 60, settings.reject_burst),
            settings.reject_payload_prefix_bytes,
        )
        self.durable = DurableIntake(self.buffer, self.spool, self.reject_policy)
        self.progress = FlushProgress(self.buffer)
        self.decoder = Decoder(max_payload_bytes=settings.max_payload_bytes)
        self.catalog = TopicCatalog()
        self.intake = IntakeStats()
        self.pool: asyncpg.Pool | None = None
        self.store: Store | None = None
        self.ha: HaLoop | None = None
        self.flusher: Flusher | None = None
        self.mqtt: MqttIngest | None = None
        self.convention = KeyConvention(False, False, "text")
        # The start-up check of a legacy database's wall-time convention (/health).
        self.legacy_time: LegacyTimeCheck = NOT_LEGACY
        self._queries = Queries()
        self._topics_lock = asyncio.Lock()  # the periodic refresh and `reload_topics`
        self._stop = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._fatal: BaseException | None = None
        self.metrics = Metrics(self)  # per-instance Prometheus registry (GET /metrics)
        self.query_stats = QueryStats()  # queries on the pool (/health/metrics/database)
        self.alerts = AlertManager(self)  # checks, ha_alerts, webhook/e-mail delivery

    # --- lifecycle --------------------------------------------------------------------

    def request_stop(self, reason: str = "signal") -> None:
        if not self._stop.is_set():
            log.info("instance.stopping", reason=reason)
        self._stop.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)

    async def run(self) -> int:
        """Run until stopped; returns the process exit code."""
        raise_open_files_limit()  # slow HTTP clients must not starve the spool of files
        warn_weak_transports(self.settings)
        http = HttpServer(self)  # sees this instance as an operations.view.HttpView
        await http.start()
        if http.guard is not None:
            self.metrics.http = http.guard.stats
        try:
            if not await self._prepare():
                return constants.EXIT_OK  # stopped while waiting for the database
            self._start_tasks()
            failed = await self._wait_stop_or_failure()
            await self._shutdown()
            if isinstance(
                self._fatal, IdentityClash | IdentityLost | PoolerDetected | SpoolRefused
            ):
                raise self._fatal
            return constants.EXIT_FAILURE if failed else constants.EXIT_OK
        finally:
            await self._cancel_tasks()
            await http.stop()
            if self.pool is not None:
                await self.pool.close()

    async def _prepare(self) -> bool:
        """Migrate, open the pool, claim the lease row; retry while the DB is away."""
        log.info(
            "instance.starting",
            version=__version__,
            mode=self.settings.mqtt_mode,
            cluster=self.settings.cluster_name,
            pid=os.getpid(),
        )
        prepared = await self._until_stopped(self._open_database)
        if not prepared:
            return False
        assert self.pool is not None and self.store is not None
        self.ha = HaLoop(
            self.settings,
            Election(self.settings, self.identity, self._queries),
            self.stats_for_heartbeat,
            self._broker_connected if self.settings.mqtt_enabled else None,
        )
        self.flusher = Flusher(
            self.settings, self.buffer, self.store, self.ha, self.metrics.observe_flush
        )
        start = asyncio.ensure_future(self.ha.start())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({start, stop}, return_when=asyncio.FIRST_COMPLETED)
        if not start.done():
            start.cancel()
            await asyncio.gather(start, return_exceptions=True)
            return False
        stop.cancel()
        start.result()  # IdentityClash / PoolerDetected propagate to the CLI
        if not await self._until_stopped(self._first_topics):
            return False
        if self.keeps_readings:
            # After the database: replayed readings need its key convention.
            legacy = self.convention.legacy_timestamps or self.convention.legacy_fim
            self.durable.open(self.convention.apply if legacy else None)
        return True

    @property
    def keeps_readings(self) -> bool:
        """Only an instance that may lead and hears MQTT acknowledges (and so spools)."""
        return self.settings.may_lead and self.settings.mqtt_enabled

    async def _until_stopped(self, step: object) -> bool:
        async def attempt_all() -> None:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(DatabaseUnavailable),
                wait=jittered(5.0),
            ):
                with attempt:
                    await step()  # type: ignore[operator]

        task = asyncio.ensure_future(attempt_all())
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return False
        task.result()
        return True

    async def _open_database(self) -> None:
        try:
            conn = await connect(self.settings, self.identity.app_name, tune=False)
        except DatabaseUnavailable as exc:
            log.warning("db.unavailable", during="start", error=str(exc))
            raise

        def unavailable_at_start(exc: BaseException) -> None:  # read-only, disk full...: retried
            log.warning("db.unavailable", during="start", error=describe_error(exc))

        try:
            with translating_db_errors(on_error=unavailable_at_start):
                if self.migrate:
                    await apply_migrations(conn)
                self.convention = await detect_convention(
                    conn, Queries()["column_types"], self.settings.legacy_zone
                )
                if self.convention.legacy_timestamps:
                    self.legacy_time = await check_legacy_time(
                        conn, Queries()["legacy_time_offset"], self.settings.legacy_timestamp_zone
                    )
        finally:
            await conn.close()
        self._queries = self.convention.queries()
        if self.pool is None:
            self.pool = await create_pool(
                self.settings, self.identity.app_name, query_stats=self.query_stats
            )
        self.store = Store(
            self.pool,
            self._queries,
            cluster_name=self.settings.cluster_name,
            instance_id=self.settings.instance_id,
            process_token=self.identity.process_token,
        )
        self.store.reject_prefix_bytes = self.settings.reject_payload_prefix_bytes
        self.store.content_window_s = content_match_window_s(self.settings.lease_ttl_s)

    def _start_tasks(self) -> None:
        assert self.ha is not None and self.flusher is not None and self.store is not None
        self._spawn("ha", self.ha.run())
        self._spawn("topics", self._topics_loop())
        self._spawn("alerts", self.alerts.run())
        self._spawn("alerts-delivery", self.alerts.notifier.run())
        if self.settings.may_lead:
            self._spawn("flusher", self.flusher.run())
            retention_s = self.settings.reject_retention_days * 86_400
            retention = RejectRetention(self.store, self.ha.is_leader, retention_s)
            self._spawn("rejects-retention", retention.run())
        if self.keeps_readings:
            tune_gc()  # after start-up: the heap so far is frozen out of collections
            self._spawn("spool", self.spool.run())
            self._spawn("replay", self.durable.run_replay())
        if self.settings.mqtt_enabled:
            self.mqtt = MqttIngest(self.settings, self.on_message)
            self.mqtt.set_topics(self.catalog.topics)
            self._spawn("mqtt", self.mqtt.run())

    def _spawn(self, name: str, coro: object) -> None:
        self._tasks[name] = asyncio.create_task(coro, name=name)  # type: ignore[arg-type]

    async def _wait_stop_or_failure(self) -> bool:
        stop = asyncio.ensure_future(self._stop.wait())
        done, _ = await asyncio.wait(
            {stop, *self._tasks.values()}, return_when=asyncio.FIRST_COMPLETED
        )
        stop.cancel()
        failed = [t for t in done if t is not stop]
        for task in failed:
            exc = task.exception() if not task.cancelled() else None
            log.error(
                "instance.task_died", task=task.get_name(), error=repr(exc) if exc else "returned"
            )
            if exc is not None:
                self._fatal = exc
        return bool(failed)

    async def _shutdown(self) -> None:
        # 1. stop intake: nothing new is acknowledged from here on
        if self.mqtt is not None:
            await self._cancel("mqtt")
            await self.mqtt.close()
        # 2. the leader writes what it holds while it still holds the lock
        await self._cancel("flusher")
        if self.flusher is not None and self.ha is not None and self.ha.is_leader():
            await self.flusher.final_flush(FINAL_FLUSH_DEADLINE_S)
        # 3. what is still pending stays in the spool for the next start
        await self._cancel("replay")
        await self._cancel("spool")
        if self.keeps_readings:
            await self.spool.close()
        # 4. release the lock: the standby takes over at once
        if self.ha is not None:
            self.ha.stop()
            await self._cancel("ha")
            await self.ha.release()
        log.info("instance.stopped", pending=len(self.buffer), spool_bytes=self.spool.total_bytes)

    async def _cancel(self, name: str) -> None:
        task = self._tasks.pop(name, None)
        if task is None:
            return
        task.cancel()
        await asyncio.wait({task}, timeout=TASK_CANCEL_TIMEOUT_S)

    async def _cancel_tasks(self) -> None:
        for name in list(self._tasks):
            await self._cancel(name)

    # --- intake ----------------------------------------------------------------------------

    def on_message(self, topic: str, payload: bytes) -> Awaitable[object] | None:
        """Decode one message and queue it for the spool; what it returns completes once
        it is safe to PUBACK (None: nothing to keep, PUBACK now)."""
        received = datetime.now(UTC)
        decoded = self.decoder.decode(topic, payload, self.catalog.equipment_for(topic), received)
        stats = self.intake
        stats.messages += 1
        stats.readings += len(decoded.readings)
        stats.rejects += len(decoded.rejects)
        stats.last_message_at = received
        for reject in decoded.rejects:
            code = reject.reason.split(":", 1)[0]
            stats.by_reason[code] = stats.by_reason.get(code, 0) + 1
        for reading in decoded.readings:
            if not reading.matchable:  # timed by arrival: count why (a byte search)
                motivo = time_motivo_of(reading.dados)
                if motivo is not None:
                    stats.time_fallbacks[motivo] = stats.time_fallbacks.get(motivo, 0) + 1
        if not self.settings.may_lead:
            return None  # development mode shows data but never writes: nothing to keep
        durable = self.durable.accept(decoded)
        if (
            self.flusher is not None
            and self.buffer.readings_pending >= self.settings.batch_max
            and self.ha is not None
            and self.ha.is_leader()  # a standby trims on its own clock, never per message
        ):
            self.flusher.nudge()
        return durable

    # --- topics ------------------------------------------------------------------------------

    async def _topics_loop(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(constants.TOPIC_REFRESH_S)
            try:
                await self._refresh_topics(log_invalid=False)
            except Exception as exc:
                # A lost database, but also a schema an operator changed under us (a
                # renamed column, a missing table): keep the last catalogue, keep trying,
                # say so once per episode.
                if not failing:
                    log.warning("topics.refresh_failed", error=describe_error(exc))
                failing = True
                continue
            if failing:
                log.info("topics.refresh_recovered")
            failing = False

    async def _first_topics(self) -> None:
        try:
            await self._refresh_topics(log_invalid=True)
        except DatabaseUnavailable as exc:
            log.warning("db.unavailable", during="start", error=str(exc))
            raise

    async def _refresh_topics(self, *, log_invalid: bool) -> None:
        async with self._topics_lock:  # one subscription sync at a time
            await self._refresh_topics_locked(log_invalid=log_invalid)

    async def _refresh_topics_locked(self, *, log_invalid: bool) -> None:
        if self.store is None:
            raise DatabaseUnavailable("database not connected yet")
        catalog = TopicCatalog.build(await self.store.enabled_equipment())
        previous_invalid = {(i.equipamento_id, i.topic) for i in self.catalog.invalid}
        for bad in catalog.invalid:
            if log_invalid or (bad.equipamento_id, bad.topic) not in previous_invalid:
                log.warning(
                    "topics.invalid",
                    equipamento_id=bad.equipamento_id,
                    topic=bad.topic,
                    problem=bad.problem,
                )
        self.catalog = catalog
        if self.mqtt is not None:
            self.mqtt.set_topics(catalog.topics)
            await self.mqtt.sync_subscriptions()

    def _broker_connected(self) -> bool:
        return self.mqtt is not None and self.mqtt.connected

    # --- views -------------------------------------------------------------------------------

    def stats_for_heartbeat(self) -> dict[str, object]:
        """What each instance publishes in its lease row (shown by /health/cluster)."""
        flush = self.flusher.stats if self.flusher else None
        return {
            "pending": len(self.buffer),
            "messages": self.intake.messages,
            "rejects": self.intake.rejects,
            "mqtt_connected": bool(self.mqtt and self.mqtt.connected),
            "rows_written": flush.rows if flush else 0,
            # The flush progress standbys expire by (flusher.FlushProgress).
            **self.progress.stats(
                connected_since=self.mqtt.stats.connected_since if self.mqtt else None,
                disk_backlog=self.durable.backlog,
            ),
        }

    @property
    def rejects_rate_limited(self) -> int:
        """Rejects counted but not kept (beyond REJECT_RATE_PER_MIN for their topic)."""
        return self.reject_policy.limiter.suppressed

    # --- what an operator may ask (operations.view.HttpView) ------------------------------

    async def step_down(self, timeout_s: float) -> bool:
        """Hand the leadership over; the HA loop performs it (it owns the lock)."""
        if self.ha is None:
            return False
        return await self.ha.request_step_down(timeout_s)

    async def check_alerts(self) -> Body:
        return await self.alerts.check()

    async def request_flush(self) -> bool:
        """Wake the flusher now (it writes at once, then on its usual clock)."""
        if self.flusher is None or self.ha is None or not self.ha.is_leader():
            return False
        self.flusher.nudge()
        return True

    async def reload_topics(self) -> int:
        """Reload the catalogue and resubscribe now, like the periodic refresh."""
        await self._refresh_topics(log_invalid=False)
        return len(self.catalog.topics)
