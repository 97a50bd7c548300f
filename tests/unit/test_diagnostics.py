"""The diagnostics routes' pure rules: inactivity text, /status verdict, quality classes,
and the window summary (stats + qualidade) added up from per-equipment rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import asyncpg
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.config import load_settings
from aupus_ha.operations.diagnostics import (
    NEVER_RECEIVED,
    Diagnostics,
    class_percent,
    inactivity_text,
    quality_class,
    read_view,
    status_for,
    summarize_window,
)
from aupus_ha.operations.verdicts import DbGate
from aupus_ha.operations.view import HttpView

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_inactivity_in_whole_days_elapsed() -> None:
    assert inactivity_text(None, NOW) == NEVER_RECEIVED == "Nunca recebeu dados"
    assert inactivity_text(NOW - timedelta(hours=36), NOW) == "Há 1 dias"  # not rounded to 2
    assert inactivity_text(NOW - timedelta(days=3, hours=1), NOW) == "Há 3 dias"
    assert inactivity_text(NOW + timedelta(hours=1), NOW) == "Há 0 dias"  # a clock ahead


@given(st.integers(0, 10**6))
def test_status_verdict_thresholds(minutes: int) -> None:
    status, message = status_for(minutes)
    if minutes > 60:
        assert status == "critical"
        assert message == f"Sem dados há {minutes // 60}h {minutes % 60}min"
    elif minutes > 15:
        assert (status, message) == ("warning", f"Sem dados há {minutes} minutos")
    else:
        assert (status, message) == ("ok", "Sistema operando normalmente")


def test_no_data_at_all_is_critical() -> None:
    assert status_for(None) == ("critical", "Nenhum dado recebido nas últimas 24h")


def test_every_spelling_of_a_quality_has_its_class() -> None:
    """The labels health counts: ours, the platform's `boa`, the oldest rows' English."""
    assert {label: quality_class(label) for label in ["bom", "boa", "GOOD"]} == dict.fromkeys(
        ["bom", "boa", "GOOD"], "boa"
    )
    assert quality_class("parcial") == "parcial"
    assert quality_class("ruim") == quality_class("BAD") == "ruim"
    assert quality_class(None) is quality_class("good") is quality_class("null") is None


def _row(eq: str, label: str | None, count: int, minutes_ago: int, leituras: int = 1) -> Any:
    at = NOW - timedelta(minutes=minutes_ago)
    return {
        "equipamento_id": eq,
        "qualidade": label,
        "registros": count,
        "primeiro": at - timedelta(minutes=count),
        "ultimo": at,
        "soma_leituras": leituras * count,
        "com_leituras": count,
    }


def test_window_summary_adds_up_per_equipment_rows() -> None:
    rows = [
        _row("a", "bom", 60, 1, leituras=2),
        _row("a", "ruim", 10, 5),
        _row("b", "boa", 20, 30),
        _row("c", None, 10, 90),
    ]
    stats, quality = summarize_window(rows)
    assert stats == {
        "equipamentosAtivos": 3,
        "totalRegistros": 100,
        "primeiroRegistro": NOW - timedelta(minutes=100),
        "ultimoRegistro": NOW - timedelta(minutes=1),
        "mediaLeiturasPorRegistro": 1.6,
    }
    assert [(q["qualidade"], q["registros"], q["percentual"], q["classe"]) for q in quality] == [
        ("bom", 60, 60.0, "boa"),
        ("boa", 20, 20.0, "boa"),
        ("null", 10, 10.0, None),
        ("ruim", 10, 10.0, "ruim"),
    ]
    assert class_percent(quality, "boa") == 80.0  # the original saw 20 % ('boa' only)
    assert class_percent(quality, "ruim") == 10.0


def test_an_empty_window() -> None:
    stats, quality = summarize_window([])
    assert stats["totalRegistros"] == 0 and stats["ultimoRegistro"] is None
    assert stats["mediaLeiturasPorRegistro"] == 0 and quality == []
    assert class_percent(quality, "boa") == 0.0


LABELS = st.sampled_from(["bom", "boa", "GOOD", "parcial", "ruim", "BAD", None, "x"])


@given(
    st.lists(
        st.tuples(st.sampled_from("abcd"), LABELS, st.integers(1, 10_000)),
        max_size=20,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_percentages_cover_the_window(groups: list[tuple[str, str | None, int]]) -> None:
    """Labels' percentages add up to 100 (to rounding); equipment counted once each."""
    rows = [_row(eq, label, count, 1) for eq, label, count in groups]
    stats, quality = summarize_window(rows)
    assert stats["totalRegistros"] == sum(c for _, _, c in groups)
    assert stats["equipamentosAtivos"] == len({eq for eq, _, _ in groups})
    if groups:
        assert abs(sum(q["percentual"] for q in quality) - 100) < 0.01 * len(quality)
    assert sum(q["registros"] for q in quality) == stats["totalRegistros"]


def _request(token: str | None = None) -> web.Request:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return make_mocked_request("GET", "/api/v1/mqtt/diagnostico", headers=headers)


class _NoDatabase:
    """An instance before its pool exists (or whose settings are all it has)."""

    settings = load_settings(
        {"DATABASE_URL": "postgresql://u@db.internal:5432/x", "MQTT_MODE": "disabled"}
    )
    pool = None


async def test_a_database_that_cannot_answer_is_a_503_never_a_500() -> None:
    view = cast(HttpView, _NoDatabase())
    body, status = await read_view(view, Diagnostics(view, DbGate(1)).equipamentos)(_request())
    assert status == 503 and body == {"error": "cannot read the database"}

    async def refused() -> dict[str, Any]:
        raise asyncpg.exceptions.UndefinedColumnError('column "nome" does not exist')

    body, status = await read_view(view, refused)(_request())
    assert status == 503 and body == {"error": "the database refused the query"}
