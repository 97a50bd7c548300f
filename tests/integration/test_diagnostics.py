"""The diagnostics window on a real PostgreSQL, fresh and legacy (DOMAIN v2).

The legacy database holds UTC wall time in `timestamp(0) without time zone` columns and
its default TimeZone is America/Sao_Paulo. The platform's own queries compared those
columns with `NOW() - INTERVAL '24 hours'`, which casts them through the session's zone:
in Brasília a row 25 h old looked 22 h old and was counted, and "hours since" came out
three hours short. Here the pool is a plain one (the database's own TimeZone, not the
UTC our instances set), so the answers cannot lean on the session's zone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
import pytest

from aupus_ha.config import Settings
from aupus_ha.operations.diagnostics import Diagnostics
from aupus_ha.operations.verdicts import DbGate
from aupus_ha.operations.view import HttpView
from tests.helpers import ha_settings
from tests.legacy_schema import cuid, register_equipment

SENDING = cuid("diag-sending")
SILENT = cuid("diag-silent")
INSERT = (
    "INSERT INTO equipamentos_dados "
    "(equipamento_id, timestamp_dados, dados, qualidade, created_at) "
    "VALUES ($1, $2, '{}', 'bom', $3)"
)


@dataclass
class _Reads:
    """What the diagnostics read of an instance: its settings and its pool."""

    settings: Settings
    pool: asyncpg.Pool


@pytest.fixture
async def diag(
    v2_schema: tuple[str, str],
) -> AsyncIterator[tuple[Diagnostics, str, datetime, asyncpg.Pool]]:
    kind, dsn = v2_schema
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(dsn)
    try:
        await register_equipment(conn, SENDING, "diag/sending", None)
        await register_equipment(conn, SILENT, "diag/silent", None)

        def stored(instant: datetime) -> datetime:  # as each writer stores an instant
            return instant.replace(tzinfo=None) if kind == "legacy" else instant

        rows = [(SENDING, now - timedelta(hours=h)) for h in (25.0, 23.0, 0.5)]
        rows.append((SILENT, now - timedelta(hours=26)))
        # Arrival as the platform writes it too (UTC wall time on a legacy table).
        await conn.executemany(INSERT, [(eq, stored(at), stored(now)) for eq, at in rows])
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)  # the database's TimeZone
    try:
        view = cast(HttpView, _Reads(ha_settings(dsn, "diag"), pool))
        yield Diagnostics(view, DbGate(2)), kind, now, pool
    finally:
        await pool.close()


async def test_the_24h_window_and_ages_ignore_the_session_zone(
    diag: tuple[Diagnostics, str, datetime, asyncpg.Pool],
) -> None:
    diagnostics, kind, now, _ = diag
    body = await diagnostics.equipamentos()
    assert [e["id"].strip() for e in body["funcionando"]] == [SENDING], (kind, body)
    working: dict[str, Any] = body["funcionando"][0]
    assert working["registros_24h"] == 2, kind  # the 25-hour-old row is outside
    assert working["ultima_recepcao"] == now - timedelta(hours=0.5), kind
    assert working["horas_desde_ultimo"] == pytest.approx(0.5, abs=0.02), kind
    idle: dict[str, Any] = body["inativos"][0]
    assert idle["id"].strip() == SILENT
    assert idle["ultima_recepcao_conhecida"] == now - timedelta(hours=26), kind
    assert idle["status_inatividade"] == "Há 1 dias"

    stats, quality = await diagnostics.window()
    assert stats["totalRegistros"] == 2 and stats["equipamentosAtivos"] == 1, kind
    assert stats["primeiroRegistro"] == now - timedelta(hours=23), kind
    assert [(q["qualidade"], q["registros"]) for q in quality] == [("bom", 2)]

    topics = {t["topico"]: t["status"] for t in await diagnostics.topicos()}
    assert topics == {"diag/sending": "ativo", "diag/silent": "inativo"}, kind
    latest = await diagnostics.ultimos()
    expected = {now - timedelta(hours=h) for h in (25.0, 23.0, 0.5, 26.0)}
    assert {row["timestamp_dados"] for row in latest} == expected, kind
    assert {row["created_at"] for row in latest} == {now}, kind
    gaps = await diagnostics.gaps()
    assert len(gaps) == 1 and gaps[0]["minutos_sem_dados"] == pytest.approx(22.5 * 60), kind
    assert gaps[0]["inicio_gap"] == now - timedelta(hours=23), kind


async def test_the_original_query_miscounts_in_brasilia(
    diag: tuple[Diagnostics, str, datetime, asyncpg.Pool],
) -> None:
    """The correction is needed: the platform's predicate, in a Brasília session, counts
    the 25-hour-old legacy row (on a timestamptz column it compares instants and is
    right); shown here so docs/operations.md's claim stays true."""
    diagnostics, kind, _, pool = diag
    original = await pool.fetchval(
        "SELECT count(*) FROM equipamentos_dados "
        "WHERE equipamento_id = $1 AND timestamp_dados >= NOW() - INTERVAL '24 hours'",
        SENDING,
    )
    assert original == (3 if kind == "legacy" else 2)
    assert (await diagnostics.equipamentos())["funcionando"][0]["registros_24h"] == 2
