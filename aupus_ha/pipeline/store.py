"""The store: every SQL statement about readings, rejects and the topic catalogue.

A flush is one transaction that first checks the epoch `FOR SHARE` (the fence), COPYs
the batch into a per-connection staging table, and inserts from it with
`ON CONFLICT DO NOTHING`. An item the batch fails on — the database refuses its data
(SQLSTATE class 22, 23, 54: bad data, a legacy constraint) or our own code raises while
turning it into a row (a rollup that overflows) — is isolated by bisection and turned
into a reject, so one poison item can never block the buffer (the legacy service's
84,335-reading pile-up) nor stop the writer. Every other failure is the database's
state (`db.classify`) and is raised as `DatabaseUnavailable`: the whole batch is
retried with backoff, nothing is rejected. Which inverter rollup rows a flush writes
(the merge of a minute's samples) is decided without SQL in `rollup_merge`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, tzinfo
from types import MappingProxyType

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.config import default_value
from aupus_ha.database.connection import (
    READ_ONLY_SQLSTATE,
    ErrorKind,
    classify,
    describe_error,
    translating_db_errors,
    unavailable,
)
from aupus_ha.database.queries import Queries
from aupus_ha.decoding import m160
from aupus_ha.decoding.schemas import compile_schema
from aupus_ha.decoding.timestamps import to_legacy_wall
from aupus_ha.logs import get_logger
from aupus_ha.pipeline import rollup, rollup_merge
from aupus_ha.pipeline.buffer import CONTENT_MATCH_WINDOW_S
from aupus_ha.pipeline.readings import Equipment, Reading, ReadingKey, Reject, RejectKey

log = get_logger(__name__)

# A pooled connection or a plain one: the flush helpers work on either.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy
Item = Reading | Reject

# The batch's own "previous reading" of each M-160 outlier (m160.previous_by_key).
_PreviousByKey = Mapping[ReadingKey, m160.Previous]
_NO_PREVIOUS: _PreviousByKey = MappingProxyType({})

STAGING_COLUMNS = (
    "equipamento_id",
    "timestamp_dados",
    "dados",
    "fonte",
    "qualidade",
    "energia_kwh",
    "potencia_ativa_kw",
    "num_leituras",
    "timestamp_fim",
)

# The content-matching window of the flush and of a standby's probe (readings timed by
# arrival). It must cover the gap between the arrival stamps of two copies of ONE
# message — not the time between two leaders' flushes: a copy keeps the time it arrived
# whenever it is flushed. Two instances receive a message within a second of each other
# plus their clocks' skew; a leader that lost the broker for less than LEASE_TTL_S keeps
# leading and receives its queued copies that much later (plus a reconnect attempt);
# an MQTT redelivery to one instance comes after its reconnect. So: LEASE_TTL_S plus a
# margin for skew, fan-out and a reconnect, never below the buffer's 10 s — and never
# above half the 30 s a device waits between readings, or two genuine byte-identical
# readings of one device would count once.
CONTENT_WINDOW_MARGIN_S = 5.0
CONTENT_WINDOW_MAX_S = 15.0


def content_match_window_s(lease_ttl_s: float) -> float:
    """The matching window for a cluster with this LEASE_TTL_S (10 s by default)."""
    wanted = lease_ttl_s + CONTENT_WINDOW_MARGIN_S
    return min(CONTENT_WINDOW_MAX_S, max(CONTENT_MATCH_WINDOW_S, wanted))


class Fenced(Exception):
    """The epoch moved on: this process is no longer the leader and must not write."""

    def __init__(self, mine: int, current: int | None) -> None:
        super().__init__(f"flush fenced: our epoch {mine}, current epoch {current}")
        self.mine = mine
        self.current = current


@dataclass(frozen=True, slots=True)
class FlushResult:
    rows: int  # rows newly stored (readings, and rollup minutes seen for the first time)
    duplicates: int  # plain readings already stored (by us earlier, or a previous leader)
    rejects: int  # rejects written (including rows the database refused)
    refused: int  # readings the database refused, stored as rejects instead
    ms: float
    merged: int = 0  # rollup minutes that already had a row and gained samples


@dataclass(slots=True)
class _Tally:
    rows: int = 0
    merged: int = 0
    plain_rows: int = 0
    refused: list[Reject] = field(default_factory=list)  # readings turned into rejects
    refused_plain: int = 0  # of which plain readings (not rollup samples)
    dropped: int = 0  # rejects that could not be stored even once escaped (logged)

    def add(self, other: _Tally) -> _Tally:
        self.rows += other.rows
        self.merged += other.merged
        self.plain_rows += other.plain_rows
        self.refused += other.refused
        self.refused_plain += other.refused_plain
        self.dropped += other.dropped
        return self


@dataclass(frozen=True, slots=True)
class KeyConvention:
    """How `timestamp_dados` is stored: full-precision UTC (timestamptz), or legacy wall
    time to the second in `zone` (LEGACY_TIMESTAMP_ZONE: UTC, as the platform writes it;
    v1 wrote Brasília time, 3 h off the platform's keys)."""

    legacy_timestamps: bool
    legacy_fim: bool
    id_type: str
    zone: tzinfo = UTC

    def queries(self) -> Queries:
        """The named queries typed for these key columns (id type, timestamp type)."""
        ts_type = "timestamp" if self.legacy_timestamps else "timestamptz"
        return Queries(id_type=self.id_type, ts_type=ts_type)

    def apply(self, reading: Reading) -> Reading:
        """The reading with its timestamps in the column's convention (also its key)."""
        if not (self.legacy_timestamps or self.legacy_fim):
            return reading
        zone = self.zone
        ts = to_legacy_wall(reading.timestamp_dados, zone) if self.legacy_timestamps else None
        fim = reading.timestamp_fim
        if self.legacy_fim and fim is not None:
            fim = to_legacy_wall(fim, zone)
        return replace(reading, timestamp_dados=ts or reading.timestamp_dados, timestamp_fim=fim)


async def read_convention(
    conn: asyncpg.Pool | asyncpg.Connection, queries_sql: str, zone: tzinfo = UTC
) -> tuple[KeyConvention, bool]:
    """The key columns' convention, and whether `equipamentos_dados` exists at all (a
    missing table reads as the fresh convention: the caller decides if that is fatal)."""
    rows = await conn.fetch(queries_sql)
    types = {r["column_name"]: r["data_type"] for r in rows}
    convention = KeyConvention(
        legacy_timestamps=types.get("timestamp_dados") == "timestamp without time zone",
        legacy_fim=types.get("timestamp_fim") == "timestamp without time zone",
        id_type="bpchar" if types.get("equipamento_id") == "character" else "text",
        zone=zone,
    )
    return convention, "timestamp_dados" in types


async def detect_convention(
    conn: asyncpg.Connection, queries_sql: str, zone: tzinfo = UTC
) -> KeyConvention:
    convention, table_exists = await read_convention(conn, queries_sql, zone)
    if not table_exists:
        raise RuntimeError("table equipamentos_dados is missing: run `aupus-ha migrate` first")
    return convention


class Store:
    """Domain queries over the pool. Never used for the lock."""

    # Bytes of a reject's payload stored (REJECT_PAYLOAD_PREFIX_BYTES, set at start): the
    # intake bounds its rejects already; this bounds the rows the database refused too.
    reject_prefix_bytes: int = default_value("REJECT_PAYLOAD_PREFIX_BYTES")
    # Readings timed by arrival closer than this to a stored row of the same equipment
    # with equal `dados` are that row (set at start: `content_match_window_s`).
    content_window_s: float = CONTENT_MATCH_WINDOW_S

    def __init__(
        self,
        pool: asyncpg.Pool,
        queries: Queries,
        *,
        cluster_name: str,
        instance_id: str,
        process_token: str | None = None,
    ) -> None:
        self._pool = pool
        # The fence compares the epoch AND the process that leads it (None: epoch only).
        self._process_token = process_token
        self._q = queries
        self._cluster = cluster_name
        self._instance_id = instance_id

    # --- flushing (leader) ------------------------------------------------------------

    async def flush(
        self, readings: list[Reading], rejects: list[Reject], epoch: int
    ) -> FlushResult:
        """Write one batch under the epoch fence, isolating the items it fails on.

        Raises `Fenced`, or `DatabaseUnavailable` for every failure that is not one
        item's (`db.classify`): the caller keeps the batch and retries it later.
        """
        started = time.perf_counter()
        # M-160 outliers look at the whole batch once, so a split cannot change them.
        in_batch = m160.previous_by_key(readings)
        try:
            tally = await self._flush_isolating([*readings, *rejects], epoch, in_batch)
        except Fenced:
            raise
        except Exception as exc:  # every failure becomes "retry later"
            error = unavailable(exc)
            if error.sqlstate == READ_ONLY_SQLSTATE:
                # A session keeps the read-only default it started with: once the server
                # is writable again only new sessions can write. Replace the pooled ones.
                await self._pool.expire_connections()
            raise error from exc
        ms = (time.perf_counter() - started) * 1000
        plain = sum(1 for r in readings if not r.is_rollup_sample)
        refused = len(tally.refused)
        duplicates = max(0, plain - tally.plain_rows - tally.refused_plain)
        return FlushResult(
            tally.rows,
            duplicates,
            len(rejects) - tally.dropped + refused,
            refused,
            ms,
            tally.merged,
        )

    async def _flush_isolating(
        self, items: Sequence[Item], epoch: int, in_batch: _PreviousByKey = _NO_PREVIOUS
    ) -> _Tally:
        """Flush `items` in one transaction; when it fails for an item, bisect down to
        the items it fails on (about 2·log2(n) transactions per poison item)."""
        if not items:
            return _Tally()
        readings = [i for i in items if isinstance(i, Reading)]
        rejects = [i for i in items if isinstance(i, Reject)]
        try:
            return await self._flush_once(readings, rejects, epoch, in_batch)
        except Fenced:
            raise
        except Exception as exc:  # classified: all but an item's re-raise
            if classify(exc) is not ErrorKind.ITEM:
                raise
            failure = exc
        if len(items) == 1:
            return await self._store_refused(items[0], failure, epoch)
        middle = len(items) // 2
        first = await self._flush_isolating(items[:middle], epoch, in_batch)
        return first.add(await self._flush_isolating(items[middle:], epoch, in_batch))

    async def _store_refused(self, item: Item, failure: BaseException, epoch: int) -> _Tally:
        """The one item a flush fails on, kept as a reject that can be stored."""
        error = describe_error(failure)
        if isinstance(item, Reading):
            reject = _refused(item, failure)
            log.warning(
                "flush.item_refused",
                equipamento_id=item.equipamento_id.strip(),
                timestamp_dados=item.timestamp_dados.isoformat(),
                error=error,
            )
        else:
            reject = _escaped(item)
            log.warning("flush.reject_escaped", topic=reject.topic, error=error)
        try:
            await self._flush_once([], [reject], epoch)
        except Fenced:
            raise
        except Exception as exc:  # classified: all but an item's re-raise
            if classify(exc) is not ErrorKind.ITEM:
                raise
            log.error("flush.reject_dropped", topic=reject.topic, error=describe_error(exc))
            return _Tally(dropped=1)
        if isinstance(item, Reading):
            return _Tally(refused=[reject], refused_plain=int(not item.is_rollup_sample))
        return _Tally()

    async def _flush_once(
        self,
        readings: list[Reading],
        rejects: list[Reject],
        epoch: int,
        in_batch: _PreviousByKey = _NO_PREVIOUS,
    ) -> _Tally:
        plain = [r for r in readings if not r.is_rollup_sample]
        samples = [r for r in readings if r.is_rollup_sample]
        async with self._pool.acquire() as conn, conn.transaction():
            fence = await conn.fetchrow(self._q["fence_check"], self._cluster, self._process_token)
            current = fence["epoch"] if fence is not None else None
            if current != epoch or not (fence and fence["ours"]):
                raise Fenced(epoch, current)
            tally = _Tally()
            if plain:
                plain = await m160.resolve_outliers(
                    conn, self._q["summary_previous_rows"], plain, in_batch
                )
                tally.plain_rows = await self._copy_plain(conn, plain, epoch)
                tally.rows = tally.plain_rows
            if samples:
                new, merged = await self._merge_rollups(conn, samples, epoch)
                tally.rows += new
                tally.merged = merged
            if rejects:
                await self._insert_rejects(conn, rejects, epoch)
            await conn.execute(self._q["record_flush"], self._cluster)
            return tally

    async def _copy_plain(self, conn: Conn, readings: list[Reading], epoch: int) -> int:
        """COPY and insert the plain readings; returns how many rows were new. Readings
        timed by arrival go through their own staging table and are matched by content
        there (`insert_clockless_from_staging`); the others never pay for it."""
        ordinary = [r for r in readings if r.matchable]
        clockless = [r for r in readings if not r.matchable]
        stored = 0
        if ordinary:
            await self._stage(conn, "aupus_staging", "create_staging", ordinary)
            stored += int(await conn.fetchval(self._q["insert_from_staging"], epoch))
        if clockless:
            await self._stage(
                conn, "aupus_staging_clockless", "create_staging_clockless", clockless
            )
            stored += int(
                await conn.fetchval(
                    self._q["insert_clockless_from_staging"], epoch, self.content_window_s
                )
            )
        return stored

    async def _stage(self, conn: Conn, table: str, create: str, readings: list[Reading]) -> None:
        await conn.execute(self._q[create])
        await conn.copy_records_to_table(
            table, records=[_record(r) for r in readings], columns=STAGING_COLUMNS
        )

    async def _merge_rollups(
        self, conn: Conn, samples: list[Reading], epoch: int
    ) -> tuple[int, int]:
        """Union each minute's new samples with its stored ones and rewrite the row
        (`rollup_merge`); returns (minutes new, minutes merged)."""
        batch = rollup_merge.group_by_minute(samples)
        keys = list(batch.samples)
        stored = {
            (row["equipamento_id"], row["timestamp_dados"]): row["dados"]
            for row in await conn.fetch(
                self._q["rollup_rows_for_update"], [k[0] for k in keys], [k[1] for k in keys]
            )
        }
        writes, merged = rollup_merge.rollup_writes(batch, stored, self.content_window_s, epoch)
        if writes:
            await conn.executemany(self._q["upsert_rollup"], writes)
        return len(writes) - merged, merged

    async def _insert_rejects(self, conn: Conn, rejects: list[Reject], epoch: int) -> None:
        await conn.executemany(
            self._q["insert_reject"],
            [
                (
                    r.topic,
                    r.payload[: self.reject_prefix_bytes],
                    r.payload_sha256,
                    r.reason,
                    r.received_at,
                    self._instance_id,
                    epoch,
                    r.payload_bytes if r.payload_bytes is not None else len(r.payload),
                )
                for r in rejects
            ],
        )

    async def delete_old_rejects(self, older_than_s: float, limit: int) -> int:
        """Delete up to `limit` of the oldest rejects stored more than `older_than_s`
        ago (the leader's retention, rejects.py); returns how many went."""
        with translating_db_errors():
            status = await self._pool.execute(
                self._q["delete_old_rejects"],
                older_than_s,
                limit,
                timeout=constants.DB_CALL_TIMEOUT_S,
            )
        return int(status.split()[-1])

    # --- confirming (standby) -----------------------------------------------------------

    async def committed_readings(self, readings: list[Reading]) -> list[ReadingKey]:
        """Which of these readings are already stored (by whichever leader)."""
        plain = [r for r in readings if not r.is_rollup_sample]
        samples = [r for r in readings if r.is_rollup_sample]
        found: list[ReadingKey] = []
        with translating_db_errors():
            if plain:
                rows = await self._pool.fetch(
                    self._q["probe_readings"],
                    [r.equipamento_id for r in plain],
                    [r.timestamp_dados for r in plain],
                    timeout=constants.DB_CALL_TIMEOUT_S,
                )
                found += [plain[row["pos"] - 1].key for row in rows]
            if samples:
                rows = await self._pool.fetch(
                    self._q["probe_rollup_samples"],
                    [r.equipamento_id for r in samples],
                    [r.timestamp_dados for r in samples],
                    [rollup.sample_key(r.sample_at) for r in samples if r.sample_at],
                    timeout=constants.DB_CALL_TIMEOUT_S,
                )
                found += [samples[row["pos"] - 1].key for row in rows]
        return found

    async def committed_rejects(self, rejects: list[Reject]) -> list[RejectKey]:
        if not rejects:
            return []
        with translating_db_errors():
            rows = await self._pool.fetch(
                self._q["probe_rejects"],
                [r.topic for r in rejects],
                [r.payload_sha256 for r in rejects],
                timeout=constants.DB_CALL_TIMEOUT_S,
            )
        return [rejects[row["pos"] - 1].key for row in rows]

    # --- catalogue and cluster view ------------------------------------------------------

    async def enabled_equipment(self) -> list[Equipment]:
        with translating_db_errors():
            rows = await self._pool.fetch(
                self._q["enabled_equipment"], timeout=constants.DB_CALL_TIMEOUT_S
            )
        return [
            Equipment(
                id=r["id"],
                topic=r["topic"],
                type_code=r["type_code"],
                mqtt_schema=compile_schema(r["mqtt_schema"]),
                type_category=r["type_category"],
            )
            for r in rows
        ]

    async def cluster_view(self, handovers: int = 10) -> dict[str, object]:
        """Instances, the current term and recent handovers, for /health/cluster and status."""
        with translating_db_errors():
            async with self._pool.acquire() as conn:
                t = constants.DB_CALL_TIMEOUT_S
                lead = await conn.fetchrow(self._q["leadership"], self._cluster, timeout=t)
                inst = await conn.fetch(self._q["cluster_instances"], self._cluster, timeout=t)
                hand = await conn.fetch(
                    self._q["recent_handovers"], self._cluster, handovers, timeout=t
                )
        return {
            "leadership": _jsonable(dict(lead)) if lead else None,
            "instances": [_instance_view(dict(r)) for r in inst],
            "handovers": [_jsonable(dict(r)) for r in hand],
        }

    async def ping(self, timeout: float = constants.DB_CALL_TIMEOUT_S) -> float:
        """Round-trip latency in ms (waiting for a pooled connection included)."""
        started = time.perf_counter()
        with translating_db_errors():
            async with asyncio.timeout(timeout):
                await self._pool.fetchval("SELECT 1")
        return (time.perf_counter() - started) * 1000

    # --- health and metrics (any instance answers for the cluster) ---------------------

    async def _fetchrow(self, name: str, *args: object, timeout: float) -> dict[str, object]:
        with translating_db_errors():
            async with asyncio.timeout(timeout):  # bounds waiting for a pooled connection too
                row = await self._pool.fetchrow(self._q[name], *args)
        return dict(row) if row is not None else {}

    async def last_data(
        self, timeout: float = constants.DB_CALL_TIMEOUT_S
    ) -> tuple[datetime | None, float | None]:
        """The newest stored reading's arrival and its age in seconds (DB clock)."""
        row = await self._fetchrow("last_data", timeout=timeout)
        last, age = row.get("last_at"), row.get("age_s")
        return (
            last if isinstance(last, datetime) else None,
            float(age) if isinstance(age, int | float) else None,
        )

    async def ingestion_window(
        self, window_s: float, short_s: float, timeout: float = constants.DB_CALL_TIMEOUT_S
    ) -> dict[str, int]:
        """Rows in the window by quality, rows in the short window, coverage counts."""
        row = await self._fetchrow("ingestion_window", window_s, short_s, timeout=timeout)
        return {k: int(v) if isinstance(v, int) else 0 for k, v in row.items()}

    async def rejects_window(
        self, window_s: float, timeout: float = constants.DB_CALL_TIMEOUT_S
    ) -> int:
        row = await self._fetchrow("rejects_window", window_s, timeout=timeout)
        count = row.get("count")
        return count if isinstance(count, int) else 0

    async def handovers_summary(
        self, window_s: float, timeout: float = constants.DB_CALL_TIMEOUT_S
    ) -> dict[str, object]:
        """Handovers of this cluster: total, in the window, and the newest one's time."""
        return await self._fetchrow("handovers_summary", self._cluster, window_s, timeout=timeout)

    async def leadership(self, timeout: float = constants.DB_CALL_TIMEOUT_S) -> dict[str, object]:
        """The cluster's current term as stored (empty before any leader)."""
        return await self._fetchrow("leadership", self._cluster, timeout=timeout)

    # --- standby probes (trimming and expiry) -------------------------------------------

    async def committed_by_content(self, readings: list[Reading]) -> list[ReadingKey]:
        """Which of these readings timed by arrival the leader stored under its own
        arrival time: same equipment, equal `dados`, within `content_window_s`."""
        if not readings:
            return []
        with translating_db_errors():
            rows = await self._pool.fetch(
                self._q["probe_readings_by_content"],
                [r.equipamento_id for r in readings],
                [r.timestamp_dados for r in readings],
                [r.dados.decode() for r in readings],
                self.content_window_s,
                timeout=constants.DB_CALL_TIMEOUT_S,
            )
        return [readings[row["pos"] - 1].key for row in rows]

    async def leader_progress(self) -> LeaderProgress | None:
        """The current leader's published flush progress; None when there is no live
        leader. See `LeaderProgress`."""
        row = await self._fetchrow(
            "leader_progress", self._cluster, timeout=constants.DB_CALL_TIMEOUT_S
        )
        if not row:
            return None
        lag, connected = row.get("lag_s"), row.get("connected_for_s")
        return LeaderProgress(
            float(lag) if isinstance(lag, int | float) else None,
            float(connected) if isinstance(connected, int | float) else None,
        )


def _record(r: Reading) -> tuple[object, ...]:
    return (
        r.equipamento_id,
        r.timestamp_dados,
        r.dados,
        r.fonte,
        r.qualidade,
        r.energia_kwh,
        r.potencia_ativa_kw,
        r.num_leituras,
        r.timestamp_fim,
    )


def _text_safe(text: str) -> str:
    """`text` without NUL, which a PostgreSQL text column cannot hold."""
    return text.replace("\x00", "\\x00")


def _refused(reading: Reading, exc: BaseException) -> Reject:
    return Reject(
        topic=f"equipamento/{_text_safe(reading.equipamento_id.strip())}",
        payload=reading.dados,
        reason=_text_safe(f"store_refused: {describe_error(exc)}")[:500],
        received_at=datetime.now().astimezone(),
    )


def _escaped(reject: Reject) -> Reject:
    """A reject the database refused (a NUL in its topic): escaped, same identity hash."""
    return Reject(
        topic=_text_safe(reject.topic),
        payload=reject.payload,
        reason=_text_safe(reject.reason)[:500],
        received_at=reject.received_at,
        payload_sha256=reject.payload_sha256,
    )


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _instance_view(row: dict[str, object]) -> dict[str, object]:
    stats = row.pop("stats", None)
    out = _jsonable(row)
    out["stats"] = orjson.loads(stats) if isinstance(stats, str) else {}
    age = out.get("heartbeat_age_s")
    out["heartbeat_age_s"] = round(age, 3) if isinstance(age, float) else age
    return out


@dataclass(frozen=True, slots=True)
class LeaderProgress:
    """The leader's flush progress as a standby reads it (database clock).

    `lag_s`: the leader had processed (written, merged, rejected or refused) everything
    that reached it more than `lag_s` seconds ago; None when it published none (a
    previous version, or it holds entries whose arrival it does not know: a spool
    replay or backlog). `connected_for_s`: how long its broker connection has been up
    (None: down, or not published).
    """

    lag_s: float | None
    connected_for_s: float | None
