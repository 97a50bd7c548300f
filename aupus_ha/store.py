"""The store: every SQL statement about readings, rejects and the topic catalogue.

A flush is one transaction that first checks the epoch `FOR SHARE` (the fence), COPYs
the batch into a per-connection staging table, and inserts from it with
`ON CONFLICT DO NOTHING`. A row the database refuses (bad data, a legacy constraint) is
isolated by bisection and turned into a reject, so one poison row can never block the
buffer — the legacy service's 84,335-reading pile-up.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime

import asyncpg
import orjson

from aupus_ha import constants
from aupus_ha.db import CONNECTION_ERRORS, DatabaseUnavailable, describe_error
from aupus_ha.queries import Queries
from aupus_ha.readings import Equipment, Reading, ReadingKey, Reject, RejectKey
from aupus_ha.timestamps import to_legacy_local

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


class Fenced(Exception):
    """The epoch moved on: this process is no longer the leader and must not write."""

    def __init__(self, mine: int, current: int | None) -> None:
        super().__init__(f"flush fenced: our epoch {mine}, current epoch {current}")
        self.mine = mine
        self.current = current


@dataclass(frozen=True, slots=True)
class FlushResult:
    rows: int  # readings newly stored
    duplicates: int  # readings already stored (by us earlier, or by a previous leader)
    rejects: int  # rejects written (including rows the database refused)
    refused: int  # readings the database refused, stored as rejects instead
    ms: float


@dataclass(frozen=True, slots=True)
class KeyConvention:
    """How `timestamp_dados` is stored: full-precision UTC, or legacy Brasília seconds."""

    legacy_timestamps: bool
    legacy_fim: bool
    id_type: str

    def apply(self, reading: Reading) -> Reading:
        """The reading with its timestamps in the column's convention (also its key)."""
        if not (self.legacy_timestamps or self.legacy_fim):
            return reading
        ts = to_legacy_local(reading.timestamp_dados) if self.legacy_timestamps else None
        fim = reading.timestamp_fim
        if self.legacy_fim and fim is not None:
            fim = to_legacy_local(fim)
        return replace(reading, timestamp_dados=ts or reading.timestamp_dados, timestamp_fim=fim)


async def detect_convention(conn: asyncpg.Connection, queries_sql: str) -> KeyConvention:
    rows = await conn.fetch(queries_sql)
    types = {r["column_name"]: r["data_type"] for r in rows}
    if "timestamp_dados" not in types:
        raise RuntimeError("table equipamentos_dados is missing: run `aupus-ha migrate` first")
    return KeyConvention(
        legacy_timestamps=types["timestamp_dados"] == "timestamp without time zone",
        legacy_fim=types.get("timestamp_fim") == "timestamp without time zone",
        id_type="bpchar" if types.get("equipamento_id") == "character" else "text",
    )


class Store:
    """Domain queries over the pool. Never used for the lock."""

    def __init__(
        self, pool: asyncpg.Pool, queries: Queries, *, cluster_name: str, instance_id: str
    ) -> None:
        self._pool = pool
        self._q = queries
        self._cluster = cluster_name
        self._instance_id = instance_id

    # --- flushing (leader) ------------------------------------------------------------

    async def flush(
        self, readings: list[Reading], rejects: list[Reject], epoch: int
    ) -> FlushResult:
        """Write one batch under the epoch fence; isolates rows the database refuses."""
        started = time.perf_counter()
        try:
            rows, refused = await self._flush_isolating(readings, rejects, epoch)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        ms = (time.perf_counter() - started) * 1000
        duplicates = len(readings) - rows - len(refused)
        return FlushResult(rows, duplicates, len(rejects) + len(refused), len(refused), ms)

    async def _flush_isolating(
        self, readings: list[Reading], rejects: list[Reject], epoch: int
    ) -> tuple[int, list[Reject]]:
        try:
            return await self._flush_once(readings, rejects, epoch), []
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            if len(readings) <= 1:
                refused = [_refused(r, exc) for r in readings]
                await self._flush_once([], rejects + refused, epoch)
                return 0, refused
        middle = len(readings) // 2
        rows_a, refused_a = await self._flush_isolating(readings[:middle], rejects, epoch)
        rows_b, refused_b = await self._flush_isolating(readings[middle:], [], epoch)
        return rows_a + rows_b, refused_a + refused_b

    async def _flush_once(self, readings: list[Reading], rejects: list[Reject], epoch: int) -> int:
        async with self._pool.acquire() as conn, conn.transaction():
            current = await conn.fetchval(self._q["fence_check"], self._cluster)
            if current != epoch:
                raise Fenced(epoch, current)
            inserted = 0
            if readings:
                await conn.execute(self._q["create_staging"])
                await conn.copy_records_to_table(
                    "aupus_staging",
                    records=[_record(r) for r in readings],
                    columns=STAGING_COLUMNS,
                )
                inserted = int(await conn.fetchval(self._q["insert_from_staging"], epoch))
            if rejects:
                await conn.executemany(
                    self._q["insert_reject"],
                    [
                        (
                            r.topic,
                            r.payload,
                            r.payload_sha256,
                            r.reason,
                            r.received_at,
                            self._instance_id,
                            epoch,
                        )
                        for r in rejects
                    ],
                )
            await conn.execute(self._q["record_flush"], self._cluster)
            return inserted

    # --- confirming (standby) -----------------------------------------------------------

    async def committed_readings(self, readings: list[Reading]) -> list[ReadingKey]:
        """Which of these readings are already stored (by whichever leader)."""
        if not readings:
            return []
        try:
            rows = await self._pool.fetch(
                self._q["probe_readings"],
                [r.equipamento_id for r in readings],
                [r.timestamp_dados for r in readings],
                timeout=constants.DB_CALL_TIMEOUT_S,
            )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        return [readings[row["pos"] - 1].key for row in rows]

    async def committed_rejects(self, rejects: list[Reject]) -> list[RejectKey]:
        if not rejects:
            return []
        try:
            rows = await self._pool.fetch(
                self._q["probe_rejects"],
                [r.topic for r in rejects],
                [r.payload_sha256 for r in rejects],
                timeout=constants.DB_CALL_TIMEOUT_S,
            )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        return [rejects[row["pos"] - 1].key for row in rows]

    # --- catalogue and cluster view ------------------------------------------------------

    async def enabled_equipment(self) -> list[Equipment]:
        try:
            rows = await self._pool.fetch(
                self._q["enabled_equipment"], timeout=constants.DB_CALL_TIMEOUT_S
            )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        return [
            Equipment(
                id=r["id"],
                topic=r["topic"],
                type_code=r["type_code"],
                mqtt_schema=_load_schema(r["mqtt_schema"]),
            )
            for r in rows
        ]

    async def cluster_view(self, handovers: int = 10) -> dict[str, object]:
        """Instances, the current term and recent handovers, for /health/cluster and status."""
        try:
            async with self._pool.acquire() as conn:
                t = constants.DB_CALL_TIMEOUT_S
                lead = await conn.fetchrow(self._q["leadership"], self._cluster, timeout=t)
                inst = await conn.fetch(self._q["cluster_instances"], self._cluster, timeout=t)
                hand = await conn.fetch(
                    self._q["recent_handovers"], self._cluster, handovers, timeout=t
                )
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        return {
            "leadership": _jsonable(dict(lead)) if lead else None,
            "instances": [_instance_view(dict(r)) for r in inst],
            "handovers": [_jsonable(dict(r)) for r in hand],
        }

    async def ping(self) -> float:
        """Round-trip latency in ms."""
        started = time.perf_counter()
        try:
            await self._pool.fetchval("SELECT 1", timeout=constants.DB_CALL_TIMEOUT_S)
        except CONNECTION_ERRORS as exc:
            raise DatabaseUnavailable(describe_error(exc)) from exc
        return (time.perf_counter() - started) * 1000


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


def _refused(reading: Reading, exc: BaseException) -> Reject:
    return Reject(
        topic=f"equipamento/{reading.equipamento_id.strip()}",
        payload=reading.dados,
        reason=f"store_refused: {describe_error(exc)}"[:500],
        received_at=datetime.now().astimezone(),
    )


def _load_schema(raw: str | None) -> object | None:
    if raw is None:
        return None
    try:
        schema: object = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return schema


def _jsonable(row: dict[str, object]) -> dict[str, object]:
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in row.items()}


def _instance_view(row: dict[str, object]) -> dict[str, object]:
    stats = row.pop("stats", None)
    out = _jsonable(row)
    out["stats"] = orjson.loads(stats) if isinstance(stats, str) else {}
    age = out.get("heartbeat_age_s")
    out["heartbeat_age_s"] = round(age, 3) if isinstance(age, float) else age
    return out
