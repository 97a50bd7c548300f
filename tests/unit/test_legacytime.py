"""The verdict of the legacy time check, from the median alone (the query is tested on a
real database in tests/integration/test_legacy_time.py)."""

from __future__ import annotations

import pytest

from aupus_ha.database.legacytime import (
    MIN_ROWS,
    STATUS_MISMATCH,
    STATUS_OK,
    STATUS_UNKNOWN,
    verdict,
)

HOUR = 3600.0


@pytest.mark.parametrize(
    "median_s",
    [0.0, 5.0, -30.0, 15 * 60.0, 20 * 60.0, HOUR - 1],  # A-966 buckets, rollups: near 0
)
def test_agreeing_rows(median_s: float) -> None:
    """Under an hour either way: the writers agree."""
    assert verdict(median_s, 1000, "UTC").status == STATUS_OK


def test_timestamp_dados_in_brasilia_time() -> None:
    """+3 h: timestamp_dados is Brasília wall time next to a UTC created_at; the message
    names the column, the median and the zone."""
    result = verdict(3 * HOUR + 5, 1000, "UTC")
    assert result.status == STATUS_MISMATCH
    assert "timestamp_dados looks like Brasília" in result.message
    assert "+3.00 h" in result.message and "LEGACY_TIMESTAMP_ZONE=UTC" in result.message
    assert result.body()["medianCreatedMinusDataHours"] == 3.001


def test_created_at_in_brasilia_time() -> None:
    """-3 h: created_at is the one in Brasília time."""
    result = verdict(-3 * HOUR, 500, "UTC")
    assert result.status == STATUS_MISMATCH
    assert "created_at looks like Brasília" in result.message


def test_other_offsets_are_a_mismatch_without_a_guess() -> None:
    """+8 h disagrees too, but looks like nothing known."""
    result = verdict(8 * HOUR, 500, "UTC")
    assert result.status == STATUS_MISMATCH
    assert "Brasília" not in result.message


@pytest.mark.parametrize(("median_s", "rows"), [(None, 0), (3 * HOUR, MIN_ROWS - 1)])
def test_too_few_rows_is_no_verdict(median_s: float | None, rows: int) -> None:
    """An empty or new database: unknown, never an alarm."""
    assert verdict(median_s, rows, "UTC").status == STATUS_UNKNOWN
