"""The platform's diagnostics routes (`/api/v1/mqtt/diagnostico/...`), served by us.

Operators and their scripts already ask the NestJS API "which equipment is sending?"
through these routes, so the paths and the (Portuguese) field names are kept. The
answers are built anew and differ where the original was wrong (docs/operations.md
lists each correction):

- the 24 h window is computed in the key convention of `timestamp_dados` (a legacy
  `timestamp without time zone` column holds UTC wall time); the original compared it
  with `NOW()` through the session's TimeZone, three hours off in Brasília;
- quality counts every label health counts (`bom`/`boa`/`GOOD` good, `parcial`,
  `ruim`/`BAD` bad); the original counted only `boa` as good;
- "last quality" is the quality of the newest row, not the largest label;
- every per-equipment query walks the (equipamento_id, timestamp_dados) index, so the
  routes stay fast on a table of millions of rows.

Anything about the data is read from the database, so every instance (the standby
too) answers for the cluster; the buffer routes report this instance's own buffer.
The two POST actions need ADMIN_TOKEN, like `/admin/step-down`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import asyncpg
from aiohttp import web

from aupus_ha import constants
from aupus_ha.database.connection import DatabaseUnavailable, translating_db_errors
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.timestamps import from_legacy_wall, to_legacy_wall
from aupus_ha.logs import get_logger
from aupus_ha.operations import admin
from aupus_ha.operations.verdicts import DbGate, db_error, percent, reported_role
from aupus_ha.operations.view import HttpView
from aupus_ha.pipeline.store import read_convention

log = get_logger(__name__)

Body = dict[str, Any]
# Bodies are objects, except the two routes the original answered with a list.
View = Callable[[web.Request], Awaitable[tuple[Any, int]]]
Handler = Callable[[web.Request], Awaitable[web.Response]]

PREFIX = "/api/v1/mqtt/diagnostico"
WINDOW = timedelta(hours=24)
GAP_MIN_S = 15 * 60.0  # the original's threshold for a gap worth listing
GAPS_LIMIT = 20
LATEST_LIMIT = 10
STATUS_WARNING_MIN = 15  # the original /status thresholds, in minutes without data
STATUS_CRITICAL_MIN = 60
# The diagnostics read a whole day per equipment: more than a probe may take.
DIAG_QUERY_TIMEOUT_S = 10.0
FLUSH_WAIT_S = 10.0
FLUSH_POLL_S = 0.05

# The same labels `ingestion_window` (health) counts: ours, the platform's and the
# oldest rows' English ones.
GOOD_LABELS = frozenset({constants.QUALITY_GOOD, "boa", "GOOD"})
PARTIAL_LABELS = frozenset({constants.QUALITY_PARTIAL})
BAD_LABELS = frozenset({constants.QUALITY_BAD, "BAD"})
NULL_LABEL = "null"  # how the original lists rows without a quality
NEVER_RECEIVED = "Nunca recebeu dados"


# --- pure rules (unit-tested) ---------------------------------------------------------------


def quality_class(label: str | None) -> str | None:
    """`boa` / `parcial` / `ruim` for a stored label, None when it says nothing."""
    if label in GOOD_LABELS:
        return "boa"
    if label in PARTIAL_LABELS:
        return "parcial"
    if label in BAD_LABELS:
        return "ruim"
    return None


def inactivity_text(last: datetime | None, now: datetime) -> str:
    """ "Nunca recebeu dados", or "Há N dias" in whole days elapsed (the original rounded:
    it called 36 h "Há 2 dias")."""
    if last is None:
        return NEVER_RECEIVED
    days = max(int((now - last).total_seconds() // 86_400), 0)
    return f"Há {days} dias"


def status_for(minutes_without_data: int | None) -> tuple[str, str]:
    """The original /status verdict: ok, warning (> 15 min), critical (> 60 min, none)."""
    if minutes_without_data is None:
        return "critical", "Nenhum dado recebido nas últimas 24h"
    if minutes_without_data > STATUS_CRITICAL_MIN:
        hours, minutes = divmod(minutes_without_data, 60)
        return "critical", f"Sem dados há {hours}h {minutes}min"
    if minutes_without_data > STATUS_WARNING_MIN:
        return "warning", f"Sem dados há {minutes_without_data} minutos"
    return "ok", "Sistema operando normalmente"


def summarize_window(rows: Iterable[Mapping[str, Any]]) -> tuple[Body, list[Body]]:
    """The original `stats` and `qualidade` from per (equipment, label) rows."""
    equipment: set[str] = set()
    total = readings = with_readings = 0
    first: datetime | None = None
    last: datetime | None = None
    by_label: dict[str, tuple[int, set[str]]] = {}
    for row in rows:
        count = int(row["registros"])
        eq = str(row["equipamento_id"])
        equipment.add(eq)
        total += count
        readings += int(row["soma_leituras"])
        with_readings += int(row["com_leituras"])
        first = row["primeiro"] if first is None else min(first, row["primeiro"])
        last = row["ultimo"] if last is None else max(last, row["ultimo"])
        label = row["qualidade"] if row["qualidade"] is not None else NULL_LABEL
        seen, eqs = by_label.get(label, (0, set()))
        by_label[label] = (seen + count, eqs | {eq})
    stats = {
        "equipamentosAtivos": len(equipment),
        "totalRegistros": total,
        "primeiroRegistro": first,
        "ultimoRegistro": last,
        "mediaLeiturasPorRegistro": round(readings / with_readings, 2) if with_readings else 0,
    }
    quality = [
        {
            "qualidade": label,
            "classe": quality_class(label),
            "registros": count,
            "equipamentos": len(eqs),
            "percentual": percent(count, total, digits=2),  # the platform's rounding
        }
        for label, (count, eqs) in sorted(by_label.items(), key=lambda kv: (-kv[1][0], kv[0]))
    ]
    return stats, quality


def class_percent(quality: list[Body], wanted: str) -> float:
    """Percent of the window's rows whose label falls in one class (all its spellings)."""
    return round(sum(float(q["percentual"]) for q in quality if q["classe"] == wanted), 2)


# --- reading the database -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Columns:
    """How `timestamp_dados` is stored, learnt once from the table."""

    queries: Queries
    legacy: bool
    zone: tzinfo

    def column_value(self, instant: datetime) -> datetime:
        """An instant as the column holds it (legacy: naive wall time in the zone)."""
        return to_legacy_wall(instant, self.zone) if self.legacy else instant

    def instant(self, value: object) -> datetime | None:
        """A value read from the column as an aware UTC instant."""
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return from_legacy_wall(value, self.zone)
        return value.astimezone(UTC)


class DiagnosticsReader:
    """The diagnostics queries over the instance's pool (bounded by the health gate)."""

    def __init__(self, view: HttpView, gate: DbGate) -> None:
        self._view = view
        self._gate = gate
        self._columns: _Columns | None = None

    async def _learn_columns(self, pool: asyncpg.Pool) -> _Columns:
        """The key columns' convention, read once (the store's rule)."""
        if self._columns is None:
            zone = self._view.settings.legacy_zone
            convention, _ = await read_convention(pool, Queries()["column_types"], zone)
            self._columns = _Columns(convention.queries(), convention.legacy_timestamps, zone)
        return self._columns

    async def fetch(
        self, name: str, *args: object, window: bool = False
    ) -> tuple[list[asyncpg.Record], _Columns]:
        """Rows of a named query; with `window`, its $1 is the start of the last 24 h
        in the column's convention (the other arguments follow)."""
        pool = self._view.pool
        if pool is None:
            raise DatabaseUnavailable("database not connected yet")
        async with self._gate.slot():
            with translating_db_errors():
                async with asyncio.timeout(DIAG_QUERY_TIMEOUT_S):
                    columns = await self._learn_columns(pool)
                    if window:
                        start = columns.column_value(datetime.now(UTC) - WINDOW)
                        args = (start, *args)
                    rows = await pool.fetch(columns.queries[name], *args)
        return rows, columns


class Diagnostics:
    """The bodies of the diagnostics routes (the actions also give a status code)."""

    def __init__(self, view: HttpView, gate: DbGate) -> None:
        self._view = view
        self._db = DiagnosticsReader(view, gate)

    async def equipamentos(self) -> Body:
        ativos, columns = await self._db.fetch("diag_equipamentos_ativos", window=True)
        inativos, _ = await self._db.fetch("diag_equipamentos_inativos", window=True)
        working = [self._working(dict(r), columns) for r in ativos]
        idle = [self._idle(dict(r), columns) for r in inativos]
        return {
            "configurados": len(working) + len(idle),
            "ativos": len(working),
            "countInativos": len(idle),
            "funcionando": working,
            "inativos": idle,
        }

    @staticmethod
    def _common(row: dict[str, Any]) -> Body:
        return {
            "id": row["id"],
            "nome": row["nome"],
            "tag": row["tag"],
            "topico_mqtt": row["topico_mqtt"],
            "tipo_equipamento": row["tipo_equipamento"],
            "unidade": None,  # the platform's `unidades` table is not ours to read
        }

    def _working(self, row: dict[str, Any], columns: _Columns) -> Body:
        last = columns.instant(row["ultima_recepcao"])
        now = row["db_now"]
        hours = round((now - last).total_seconds() / 3600, 2) if last else None
        return {
            **self._common(row),
            "registros_24h": int(row["registros_24h"]),
            "ultima_recepcao": last,
            "horas_desde_ultimo": hours,
            "ultima_qualidade": row["ultima_qualidade"],
        }

    def _idle(self, row: dict[str, Any], columns: _Columns) -> Body:
        last = columns.instant(row["ultima_recepcao_conhecida"])
        return {
            **self._common(row),
            "ultima_recepcao_conhecida": last,
            "status_inatividade": inactivity_text(last, row["db_now"]),
        }

    async def window(self) -> tuple[Body, list[Body]]:
        rows, columns = await self._db.fetch("diag_janela", window=True)
        as_instants = [
            {
                **dict(r),
                "primeiro": columns.instant(r["primeiro"]),
                "ultimo": columns.instant(r["ultimo"]),
            }
            for r in rows
        ]
        return summarize_window(as_instants)

    async def topicos(self) -> list[Body]:
        rows, columns = await self._db.fetch("diag_topicos", window=True)
        return [
            {
                "topico": r["topico"],
                "quantidadeEquipamentos": int(r["quantidade_equipamentos"]),
                "equipamentosAtivos24h": int(r["equipamentos_ativos_24h"]),
                "ultimaRecepcao": columns.instant(r["ultima_recepcao"]),
                "status": "ativo" if r["equipamentos_ativos_24h"] > 0 else "inativo",
            }
            for r in rows
        ]

    async def gaps(self) -> list[Body]:
        rows, columns = await self._db.fetch("diag_gaps", GAP_MIN_S, GAPS_LIMIT, window=True)
        return [
            {
                "nome": r["nome"],
                "topico_mqtt": r["topico_mqtt"],
                "inicio_gap": columns.instant(r["inicio_gap"]),
                "fim_gap": columns.instant(r["fim_gap"]),
                "minutos_sem_dados": round(float(r["segundos"]) / 60, 2),
            }
            for r in rows
        ]

    async def ultimos(self) -> list[Body]:
        rows, columns = await self._db.fetch("diag_ultimos", LATEST_LIMIT)
        return [
            {
                **dict(r),
                "timestamp_dados": columns.instant(r["timestamp_dados"]),
                "created_at": columns.instant(r["created_at"]),
            }
            for r in rows
        ]

    async def full(self) -> Body:
        equipment = await self.equipamentos()
        stats, quality = await self.window()
        topics = await self.topicos()
        gaps = await self.gaps()
        latest = await self.ultimos()
        return {
            "timestamp": datetime.now(UTC),
            "summary": {
                "totalEquipamentosConfigurados": equipment["configurados"],
                "equipamentosAtivos24h": equipment["ativos"],
                "equipamentosInativos": equipment["countInativos"],
                "totalRegistros24h": stats["totalRegistros"],
                "ultimoRegistro": stats["ultimoRegistro"],
                "qualidadeBoa": class_percent(quality, "boa"),
                "qualidadeRuim": class_percent(quality, "ruim"),
                "gapsDetectados": len(gaps),
            },
            "equipamentos": equipment,
            "stats": stats,
            "qualidade": quality,
            "topicos": topics,
            "gaps": gaps,
            "ultimos": latest,
        }

    async def status(self) -> Body:
        stats, _ = await self.window()
        equipment = await self.equipamentos()
        last: datetime | None = stats["ultimoRegistro"]
        now = datetime.now(UTC)
        minutes = max(int((now - last).total_seconds() // 60), 0) if last else None
        status, message = status_for(minutes)
        return {
            "status": status,
            "mensagem": message,
            "timestamp": now,
            "equipamentosAtivos": equipment["ativos"],
            "equipamentosConfigurados": equipment["configurados"],
            "ultimoRegistro": last,
            "minutosSemDados": minutes,
        }

    # --- this instance's buffer -------------------------------------------------------------

    def buffer_health(self) -> Body:
        view = self._view
        pending = len(view.buffer)
        if not view.keeps_readings:
            state = "disabled"  # development/disabled mode keeps nothing
        elif view.spool.usage >= 1.0:
            state = "offline"  # the spool is full: new readings wait for space
        else:
            state = "online"
        leading = view.ha is not None and view.ha.is_leader()
        return {
            "redis": state,
            "pendentes": pending,
            "processando": leading and pending > 0,
            "instance_id": view.settings.instance_id,
            "role": _role(view),
        }

    def buffer_stats(self) -> Body:
        view = self._view
        flush = view.flusher.stats if view.flusher else None
        kept = view.intake.readings + view.intake.rejects if view.keeps_readings else 0
        return {
            "pendentes": len(view.buffer),
            "falhados": flush.refused if flush else 0,
            "totalBuffered": kept,
            "totalSaved": (flush.rows + flush.merged + flush.rejects) if flush else 0,
            "totalFailed": flush.refused if flush else 0,
            "totalSkipped": flush.duplicates if flush else 0,
            **self.buffer_health(),
            "max": view.buffer.max_items,
            "spool": {
                "files": view.spool.segment_count,
                "bytes": view.spool.total_bytes,
                "maxBytes": view.spool.max_bytes,
                "usage": round(view.spool.usage, 4),
                "backlog": view.durable.backlog,
                "replayed": view.durable.replayed,
            },
            "flushes": {
                "count": flush.flushes if flush else 0,
                "failures": flush.failures if flush else 0,
                "fenced": flush.fenced if flush else 0,
                "lastMs": round(flush.last_ms, 2) if flush else None,
                "lastFlushAt": view.flusher.last_flush_at if view.flusher else None,
            },
        }

    # --- actions ----------------------------------------------------------------------------

    async def resync(self) -> tuple[Body, int]:
        """Reload the topic catalogue now; the (equipment, topic) pairs it added/removed."""
        before = _pairs(self._view)
        try:
            total = await self._view.reload_topics()
        except (DatabaseUnavailable, asyncpg.PostgresError, OSError, TimeoutError) as exc:
            # The catalogue in use stays; the periodic refresh keeps trying.
            log.warning("diagnostics.resync_failed", error=repr(exc))
            return {"message": "Erro ao reconciliar subscriptions MQTT", "error": str(exc)}, 503
        after = _pairs(self._view)
        added = [{"equipamentoId": e, "topic": t} for e, t in sorted(after - before)]
        removed = [{"equipamentoId": e, "topic": t} for e, t in sorted(before - after)]
        log.info("diagnostics.resync", added=len(added), removed=len(removed), topics=total)
        return {"added": added, "removed": removed, "total": total}, 200

    async def force_flush(self) -> tuple[Body, int]:
        """Flush what this instance holds now and wait (bounded) for that flush."""
        view = self._view
        flusher = view.flusher
        pending = len(view.buffer)
        if flusher is None or view.ha is None or not view.ha.is_leader():
            body = {
                "message": "only the leader writes: send this to the leader "
                "(GET /health/leader answers 200 there)",
                "processados": 0,
                "pendentes": pending,
                "falhas": 0,
                "role": _role(view),
            }
            return body, 409
        stats = flusher.stats

        def done() -> int:
            return stats.rows + stats.duplicates + stats.merged + stats.rejects

        def failed() -> int:
            return stats.failures + stats.refused

        def rounds() -> int:
            return stats.flushes + stats.failures + stats.fenced

        done_before, failed_before, rounds_before = done(), failed(), rounds()
        if pending and await view.request_flush():
            # The flusher's own task does the work and publishes only counters: poll
            # them until one round (written, failed or fenced) ended, within a bound.
            for _ in range(int(FLUSH_WAIT_S / FLUSH_POLL_S)):
                if not len(view.buffer) or rounds() != rounds_before:
                    break
                await asyncio.sleep(FLUSH_POLL_S)
        log.info("diagnostics.force_flush", pending_before=pending, pending=len(view.buffer))
        return {
            "message": "Processamento forçado com sucesso",
            "processados": done() - done_before,
            "pendentes": len(view.buffer),
            "falhas": failed() - failed_before,
        }, 200


def _role(view: HttpView) -> str:
    return reported_role(view.ha, view.settings.mqtt_mode)


def _pairs(view: HttpView) -> set[tuple[str, str]]:
    catalog = view.catalog
    return {(eq.id, topic) for topic in catalog.topics for eq in catalog.equipment_for(topic)}


# --- routes ---------------------------------------------------------------------------------


def admin_view(view: HttpView, action: Callable[[], Awaitable[tuple[Body, int]]]) -> View:
    async def handler(request: web.Request) -> tuple[Body, int]:
        refused = admin.refusal(request, view.settings.admin_token)
        if refused is not None:
            return refused
        return await action()

    return handler


def read_view(view: HttpView, build: Callable[[], Awaitable[Any]]) -> View:
    """A database read: 503 with a short reason when the database cannot answer."""

    async def handler(request: web.Request) -> tuple[Body, int]:
        details = admin.authorised(request, view.settings.admin_token)
        try:
            return await build(), 200
        except DatabaseUnavailable as exc:
            return {"error": db_error("cannot read the database", exc, details)}, 503
        except asyncpg.PostgresError as exc:  # a schema we cannot read: say so, never a 500
            log.warning("diagnostics.query_failed", error=repr(exc))
            return {"error": db_error("the database refused the query", exc, details)}, 503

    return handler


def local_view(build: Callable[[], Body]) -> View:
    async def handler(request: web.Request) -> tuple[Body, int]:
        return build(), 200

    return handler


def routes(view: HttpView, gate: DbGate, envelope: Callable[[View], Handler]) -> list[web.RouteDef]:
    """The diagnostics routes, each answered in the legacy envelope by `envelope`."""
    diag = Diagnostics(view, gate)

    async def qualidade() -> list[Body]:
        return (await diag.window())[1]

    gets: list[tuple[str, View]] = [
        ("", read_view(view, diag.full)),
        ("/status", read_view(view, diag.status)),
        ("/equipamentos", read_view(view, diag.equipamentos)),
        ("/topicos", read_view(view, diag.topicos)),
        ("/qualidade", read_view(view, qualidade)),
        ("/buffer/stats", local_view(diag.buffer_stats)),
        ("/buffer/health", local_view(diag.buffer_health)),
    ]
    posts: list[tuple[str, View]] = [
        ("/resync", admin_view(view, diag.resync)),
        ("/buffer/forcar-processamento", admin_view(view, diag.force_flush)),
    ]
    return [web.get(PREFIX + path, envelope(v)) for path, v in gets] + [
        web.post(PREFIX + path, envelope(v)) for path, v in posts
    ]
