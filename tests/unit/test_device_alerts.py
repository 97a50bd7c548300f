"""The per-device alert decisions (operations/device_alerts.py), without a database:
which equipment go offline or come back, that a decision applied is not repeated (sent
once), that never-seen and long-silent equipment stay quiet, and the storm grouping."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.operations.device_alerts import (
    BACK,
    OFFLINE,
    SEEN_WINDOW_S,
    STORM_SHOWN,
    Seen,
    back_notices,
    changes,
    offline_notices,
)

AFTER = 900.0
IDS = st.sampled_from([f"eq{i:02d}" for i in range(30)])
AGES = st.one_of(
    st.none(),
    st.floats(min_value=0, max_value=2 * SEEN_WINDOW_S, allow_nan=False),
    st.sampled_from([AFTER, AFTER + 0.001, SEEN_WINDOW_S, SEEN_WINDOW_S + 1]),
)
FLEETS = st.dictionaries(IDS, AGES, max_size=30).map(
    lambda d: [Seen(eid, age) for eid, age in sorted(d.items())]
)
OPEN = st.frozensets(IDS, max_size=30)


def test_silent_equipment_goes_offline_and_returns() -> None:
    """Silent past the threshold (within 7 days) → offline; an open one sending → back."""
    seen = [Seen("a", AFTER + 1), Seen("b", 10.0), Seen("c", 5.0), Seen("d", AFTER + 1)]
    found = changes(seen, {"c", "d"}, offline_after_s=AFTER)
    assert [s.equipment_id for s in found.offline] == ["a"]
    assert found.back == ("c",)
    assert found.gone == ()


def test_never_seen_and_long_silent_do_not_alert() -> None:
    """A fresh install's equipment (never sent) and one silent for more than the seen
    window raise nothing; one already open stays open however long it is silent."""
    seen = [Seen("never", None), Seen("old", SEEN_WINDOW_S + 1), Seen("open", 1e9)]
    found = changes(seen, {"open"}, offline_after_s=AFTER)
    assert found.offline == () and found.back == () and found.gone == ()


def test_disabled_equipment_is_resolved_quietly() -> None:
    """An open alert whose equipment left the catalogue is 'gone', not 'back'."""
    found = changes([Seen("a", 1.0)], {"a", "removed"}, offline_after_s=AFTER)
    assert found.back == ("a",) and found.gone == ("removed",)


@given(FLEETS, OPEN)
def test_decisions_are_consistent(seen: list[Seen], open_ids: frozenset[str]) -> None:
    """offline only for closed, seen-in-window, past-threshold ones; back and gone only
    for open ones; the three sets are disjoint."""
    found = changes(seen, open_ids, offline_after_s=AFTER)
    ages = {s.equipment_id: s.age_s for s in seen}
    offline = {s.equipment_id for s in found.offline}
    for eid in offline:
        age = ages[eid]
        assert eid not in open_ids and age is not None and AFTER < age <= SEEN_WINDOW_S
    assert set(found.back) <= open_ids and set(found.gone) <= open_ids
    assert not set(found.gone) & set(ages)
    assert not (offline & set(found.back)) and not (set(found.back) & set(found.gone))
    for eid, age in ages.items():  # nothing that should change is missed
        if eid in open_ids and age is not None and age <= AFTER:
            assert eid in found.back
        if eid not in open_ids and age is not None and AFTER < age <= SEEN_WINDOW_S:
            assert eid in offline


@given(FLEETS, OPEN)
def test_a_decision_applied_is_not_repeated(seen: list[Seen], open_ids: frozenset[str]) -> None:
    """Once the changes are stored (the rows a new leader reads), the same ages decide
    nothing more: each equipment is announced once."""
    found = changes(seen, open_ids, offline_after_s=AFTER)
    stored = (open_ids | {s.equipment_id for s in found.offline}) - set(found.back)
    stored -= set(found.gone)
    again = changes(seen, stored, offline_after_s=AFTER)
    assert again.offline == () and again.gone == ()
    # Back ones are no longer open, and sending again they do not reopen.
    assert not set(again.back) & set(found.back)


@given(st.lists(IDS, unique=True, max_size=30), st.integers(min_value=1, max_value=40))
def test_storm_groups_above_the_limit(ids: list[str], storm: int) -> None:
    """Up to the limit one notice per equipment (each named once); above it exactly one
    grouped notice with the count and at most STORM_SHOWN ids."""
    silent = [Seen(eid, AFTER * 2) for eid in ids]
    for notices, kind in (
        (offline_notices(silent, storm, "7"), OFFLINE),
        (back_notices(ids, storm, "7"), BACK),
    ):
        if len(ids) > storm:
            assert len(notices) == 1
            (grouped,) = notices
            assert grouped.kind == f"{kind}_storm:7"
            assert grouped.metadata["count"] == len(ids)
            assert grouped.metadata["equipmentIds"] == ids[:STORM_SHOWN]
            assert str(len(ids)) in grouped.message
        else:
            assert [n.kind for n in notices] == [f"{kind}:{eid}" for eid in ids]
            assert all(n.metadata["equipmentId"] in n.message for n in notices)


def test_back_notices_are_resolutions() -> None:
    """`equipment_back` is sent as a resolution (green), `equipment_offline` as a WARNING."""
    (back,) = back_notices(["a"], 10, "1")
    (off,) = offline_notices([Seen("a", 1800.0)], 10, "1")
    assert back.resolved and back.level == "INFO"
    assert not off.resolved and off.level == "WARNING" and "30 min" in off.message
