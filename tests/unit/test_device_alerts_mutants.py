"""The per-device notices in full (aupus_ha/operations/device_alerts.py), written against
the mutants test_device_alerts.py let through (docs/testing.md, "Mutation testing"):
what an operator reads (message, level, resolution) and what a webhook's consumer
parses (metadata keys and values), single and grouped."""

from __future__ import annotations

from aupus_ha.operations.device_alerts import (
    STORM_SHOWN,
    Notice,
    Seen,
    back_notices,
    offline_notices,
)

IDS = [f"eq{i:02d}" for i in range(STORM_SHOWN + 2)]


def test_an_offline_notice_in_full() -> None:
    """Minutes rounded in the text, seconds to a tenth in the metadata."""
    assert offline_notices([Seen("eq1", 3_600.04)], 10, "7") == [
        Notice(
            "equipment_offline:eq1",
            "WARNING",
            "equipment eq1 silent for 60 min",
            {"equipmentId": "eq1", "silentForS": 3_600.0},
        )
    ]
    (odd,) = offline_notices([Seen("eq2", 1_234.567)], 10, "7")
    assert odd.message == "equipment eq2 silent for 21 min"
    assert odd.metadata == {"equipmentId": "eq2", "silentForS": 1_234.6}


def test_an_offline_notice_without_an_age_says_zero() -> None:
    (notice,) = offline_notices([Seen("eq1", None)], 10, "7")
    assert notice.message == "equipment eq1 silent for 0 min"
    assert notice.metadata == {"equipmentId": "eq1", "silentForS": 0.0}


def test_a_back_notice_in_full() -> None:
    assert back_notices(["eq1"], 10, "7") == [
        Notice(
            "equipment_back:eq1",
            "INFO",
            "equipment eq1 is sending again",
            {"equipmentId": "eq1"},
            resolved=True,
        )
    ]


def test_a_storm_of_offline_equipment_is_one_warning_naming_the_first_ids() -> None:
    silent = [Seen(eid, 1_000.0) for eid in IDS]
    assert offline_notices(silent, 3, "42") == [
        Notice(
            "equipment_offline_storm:42",
            "WARNING",
            f"{len(IDS)} equipment went silent at once: "
            + ", ".join(IDS[:STORM_SHOWN])
            + " and 2 more",
            {"count": len(IDS), "equipmentIds": IDS[:STORM_SHOWN], "stormLimit": 3},
        )
    ]


def test_a_storm_of_returns_is_one_resolution_naming_the_first_ids() -> None:
    assert back_notices(IDS, 3, "42") == [
        Notice(
            "equipment_back_storm:42",
            "INFO",
            f"{len(IDS)} equipment are sending again: "
            + ", ".join(IDS[:STORM_SHOWN])
            + " and 2 more",
            {"count": len(IDS), "equipmentIds": IDS[:STORM_SHOWN], "stormLimit": 3},
            resolved=True,
        )
    ]


def test_a_storm_names_up_to_the_shown_ids_without_an_and_more() -> None:
    """Exactly STORM_SHOWN ids: all named, nothing `and 0 more`; one more: `and 1 more`."""
    exact = IDS[:STORM_SHOWN]
    (notice,) = back_notices(exact, 1, "1")
    assert notice.message == f"{STORM_SHOWN} equipment are sending again: " + ", ".join(exact)
    (one_more,) = offline_notices([Seen(e, 1_000.0) for e in IDS[: STORM_SHOWN + 1]], 1, "1")
    assert one_more.message.endswith(f"{IDS[STORM_SHOWN - 1]} and 1 more")
    few = IDS[:2]
    (small,) = back_notices(few, 1, "1")
    assert small.message == "2 equipment are sending again: eq00, eq01"
