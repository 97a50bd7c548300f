"""The content-matching window of readings timed by arrival (issue 12), and the named
queries the flush's content path depends on."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.config import default_value
from aupus_ha.database.queries import Queries
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.buffer import CONTENT_MATCH_WINDOW_S
from aupus_ha.pipeline.rollup_merge import without_copies
from aupus_ha.pipeline.store import (
    CONTENT_WINDOW_MARGIN_S,
    CONTENT_WINDOW_MAX_S,
    Store,
    content_match_window_s,
)

ROOT = Path(__file__).resolve().parents[2]
MINUTE = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def test_the_default_cluster_keeps_the_ten_second_window() -> None:
    """LEASE_TTL_S 5 (the default) plus the margin is the buffer's own 10 s, which is
    also what a Store uses until it is told (`aupus-ha status`, tests)."""
    default_lease: float = default_value("LEASE_TTL_S")
    assert content_match_window_s(default_lease) == CONTENT_MATCH_WINDOW_S == 10.0
    assert Store.content_window_s == CONTENT_MATCH_WINDOW_S


@given(st.floats(min_value=0.5, max_value=300.0))
def test_the_window_covers_a_short_broker_loss_within_bounds(lease_ttl_s: float) -> None:
    """Never below the buffer's window, never above half a device's 30 s period, and it
    covers LEASE_TTL_S plus the margin whenever that bound allows."""
    window = content_match_window_s(lease_ttl_s)
    assert CONTENT_MATCH_WINDOW_S <= window <= CONTENT_WINDOW_MAX_S <= 15.0
    if lease_ttl_s + CONTENT_WINDOW_MARGIN_S <= CONTENT_WINDOW_MAX_S:
        assert window >= lease_ttl_s + CONTENT_WINDOW_MARGIN_S


def test_every_named_block_is_its_own_query() -> None:
    """A `-- name:` line the loader does not recognise (a digit in the name) silently
    glued its block onto the previous query: `record_flush` became two statements and
    every flush failed with 'cannot insert multiple commands into a prepared statement'."""
    text = (ROOT / "sql/queries.sql").read_text()
    declared = re.findall(r"^-- name: (\S+)\s*$", text, re.MULTILINE)
    assert sorted(Queries().names()) == sorted(declared)
    assert {"create_staging_clockless", "insert_clockless_from_staging"} <= set(declared)
    for name in Queries().names():
        assert ";" not in Queries()[name], name


def _name(second: float) -> str:
    return rollup.sample_key(MINUTE + timedelta(seconds=second))


def test_sample_copies_are_dropped_like_plain_readings() -> None:
    """Within one minute: a sample timed by arrival equal to one stored, or to an earlier
    one of the batch (a copy itself included: a chain, like the plain path's `lag`),
    within the window is a copy; other content, a sample beyond the window and samples
    with a device time are kept."""
    same: rollup.Sample = {"power": {"active_total": 1.5}}
    other: rollup.Sample = {"power": {"active_total": 2.0}}
    stored = {_name(1): {"power": {"active_total": 1.50}}}
    new = {
        _name(4): dict(same),  # the stored one's copy, 3 s later
        _name(12): dict(same),  # 8 s after that copy: chained
        _name(13): dict(other),
        _name(30): dict(same),  # beyond the window of every earlier one
        _name(31): dict(same),  # a device time: never matched by content
    }
    clockless = {_name(s) for s in (4, 12, 13, 30)}
    kept = without_copies(new, stored, clockless, 10.0)
    assert sorted(kept) == [_name(13), _name(30), _name(31)]
    assert without_copies(new, stored, set(), 10.0) is new  # nothing timed by arrival
