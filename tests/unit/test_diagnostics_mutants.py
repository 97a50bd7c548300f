"""The diagnostics routes' rules and wiring at their edges (aupus_ha/operations/
diagnostics.py), written against the mutants test_diagnostics.py let through
(docs/testing.md, "Mutation testing"): the verdict and day boundaries, every rounding,
the route table (paths and methods the platform's scripts call), and what a caller
with and without ADMIN_TOKEN reads when the database cannot answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from structlog.testing import capture_logs

from aupus_ha.config import load_settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.operations.diagnostics import (
    PREFIX,
    View,
    admin_view,
    class_percent,
    inactivity_text,
    local_view,
    read_view,
    routes,
    status_for,
    summarize_window,
)
from aupus_ha.operations.verdicts import DbGate
from aupus_ha.operations.view import HttpView

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TOKEN = "diagnostics-admin-token-0123"


class _NoDatabase:
    """An instance before its pool exists, with ADMIN_TOKEN set."""

    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://u@db.internal:5432/x",
            "MQTT_MODE": "disabled",
            "ADMIN_TOKEN": TOKEN,
        }
    )
    pool = None


VIEW = cast(HttpView, _NoDatabase())


def _request(method: str = "GET", token: str | None = None) -> web.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return make_mocked_request(method, PREFIX, headers=headers)


def _row(eq: str, label: str | None, count: int, first: datetime, readings: int) -> Any:
    return {
        "equipamento_id": eq,
        "qualidade": label,
        "registros": count,
        "primeiro": first,
        "ultimo": first + timedelta(minutes=count),
        "soma_leituras": readings,
        "com_leituras": count,
    }


# --- the rules --------------------------------------------------------------------------


def test_a_whole_day_elapsed_is_one_day() -> None:
    assert inactivity_text(NOW - timedelta(days=1), NOW) == "Há 1 dias"
    assert inactivity_text(NOW - timedelta(days=1) + timedelta(seconds=1), NOW) == "Há 0 dias"


def test_the_status_verdict_at_exactly_15_and_60_minutes() -> None:
    """More than 15 minutes is a warning, more than 60 critical: the limits themselves not."""
    assert status_for(15) == ("ok", "Sistema operando normalmente")
    assert status_for(16) == ("warning", "Sem dados há 16 minutos")
    assert status_for(60) == ("warning", "Sem dados há 60 minutos")
    assert status_for(61) == ("critical", "Sem dados há 1h 1min")


def test_the_window_summary_in_full() -> None:
    """The earliest first row wherever it is listed, equipment counted per label, two
    decimals in every share and in the mean readings per row."""
    rows = [
        _row("a", "bom", 1, NOW - timedelta(hours=3), readings=1),
        _row("b", "bom", 1, NOW - timedelta(hours=1), readings=0),
        _row("b", "ruim", 1, NOW - timedelta(hours=2), readings=0),
    ]
    stats, quality = summarize_window(rows)
    assert stats == {
        "equipamentosAtivos": 2,
        "totalRegistros": 3,
        "primeiroRegistro": NOW - timedelta(hours=3),
        "ultimoRegistro": NOW - timedelta(hours=1) + timedelta(minutes=1),
        "mediaLeiturasPorRegistro": 0.33,
    }
    assert quality == [
        {
            "qualidade": "bom",
            "classe": "boa",
            "registros": 2,
            "equipamentos": 2,
            "percentual": 66.67,
        },
        {
            "qualidade": "ruim",
            "classe": "ruim",
            "registros": 1,
            "equipamentos": 1,
            "percentual": 33.33,
        },
    ]
    assert class_percent(quality, "boa") == 66.67


def test_a_label_without_rows_is_zero_percent() -> None:
    """A group of no rows (nothing counted in the window) is 0 %, not a division by zero."""
    _, quality = summarize_window([_row("a", "bom", 0, NOW, readings=0)])
    assert quality[0]["percentual"] == 0.0


# --- the route builders -------------------------------------------------------------------


async def test_an_admin_route_runs_its_action_only_with_the_token() -> None:
    async def action() -> tuple[dict[str, Any], int]:
        return {"done": True}, 202

    handler = admin_view(VIEW, action)
    missing = await handler(_request("POST"))
    assert missing == ({"error": "missing admin token (Authorization: Bearer <ADMIN_TOKEN>)"}, 401)
    assert await handler(_request("POST", "wrong-token-0123456")) == (
        {"error": "wrong admin token"},
        403,
    )
    assert await handler(_request("POST", TOKEN)) == ({"done": True}, 202)


async def test_a_read_answers_200_with_its_body() -> None:
    async def build() -> list[int]:
        return [1, 2]

    assert await read_view(VIEW, build)(_request()) == ([1, 2], 200)
    assert await local_view(lambda: {"a": 1})(_request()) == ({"a": 1}, 200)


async def test_only_an_authorised_caller_reads_why_the_database_failed() -> None:
    """The driver's text (addresses, server messages) only with ADMIN_TOKEN; a refused
    query is logged with the error either way."""

    async def down() -> Any:
        raise DatabaseUnavailable("connection to db.internal:5432 refused")

    async def refused() -> Any:
        raise asyncpg.exceptions.UndefinedColumnError('column "nome" does not exist')

    assert await read_view(VIEW, down)(_request()) == (
        {"error": "cannot read the database"},
        503,
    )
    assert await read_view(VIEW, down)(_request(token=TOKEN)) == (
        {"error": "cannot read the database: connection to db.internal:5432 refused"},
        503,
    )
    with capture_logs() as logs:
        body = await read_view(VIEW, refused)(_request(token=TOKEN))
    assert body == (
        {"error": 'the database refused the query: column "nome" does not exist'},
        503,
    )
    assert [(e["event"], e["log_level"], e["error"]) for e in logs] == [
        (
            "diagnostics.query_failed",
            "warning",
            "UndefinedColumnError('column \"nome\" does not exist')",
        )
    ]


# --- the route table ----------------------------------------------------------------------


def _table() -> dict[tuple[str, str], View]:
    def envelope(view: View) -> Any:
        return view  # the handlers themselves, to call without the legacy envelope

    return {(r.method, r.path): cast(View, r.handler) for r in routes(VIEW, DbGate(1), envelope)}


def test_the_routes_keep_the_platform_s_paths() -> None:
    assert sorted(_table()) == sorted(
        [
            ("GET", PREFIX),
            ("GET", f"{PREFIX}/status"),
            ("GET", f"{PREFIX}/equipamentos"),
            ("GET", f"{PREFIX}/topicos"),
            ("GET", f"{PREFIX}/qualidade"),
            ("GET", f"{PREFIX}/buffer/stats"),
            ("GET", f"{PREFIX}/buffer/health"),
            ("POST", f"{PREFIX}/resync"),
            ("POST", f"{PREFIX}/buffer/forcar-processamento"),
        ]
    )


async def test_every_database_route_without_a_database_is_a_503_naming_why() -> None:
    """Each read route reaches its query (which finds no pool): a 503, never a 500; the
    actions refuse a caller without the token before doing anything."""
    table = _table()
    for path in ["", "/status", "/equipamentos", "/topicos", "/qualidade"]:
        answer = await table["GET", PREFIX + path](_request(token=TOKEN))
        assert answer == (
            {"error": "cannot read the database: database not connected yet"},
            503,
        ), path
    for path in ["/resync", "/buffer/forcar-processamento"]:
        refused = await table["POST", PREFIX + path](_request("POST"))
        assert refused[1] == 401, path
