"""`aupus-ha status` rendered in full (aupus_ha/operations/status.py), written against the
mutants test_status.py let through (docs/testing.md, "Mutation testing"): the table
byte for byte (every column, alignment, missing values), the last-flush age on the
database clock, the state boundaries at exactly one and five lease times, and views
missing whole parts."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from aupus_ha.operations.status import (
    annotate_states,
    database_now,
    instance_state,
    render_status,
)

TTL = 2.0


def _leadership(**overrides: Any) -> dict[str, Any]:
    return {
        "epoch": 2,
        "leader_instance_id": "node-b",
        "acquired_at": "2026-11-30T09:50:00+00:00",
        "released_at": None,
        "last_flush_at": "2026-11-30T09:59:58+00:00",
    } | overrides


def _instance(name: str, role: str, **overrides: Any) -> dict[str, Any]:
    return {
        "instance_id": name,
        "role": role,
        "heartbeat_at": "2026-11-30T10:00:00+00:00",
        "heartbeat_age_s": 0.5,
        "leader_epoch": None,
        "version": None,
        "host": None,
        "pid": None,
        "stopped_at": None,
        "stats": None,
    } | overrides


def _cluster() -> dict[str, Any]:
    """An old leader dead for an hour (listed first: its heartbeat gives the database
    clock, 10:00:00.5), the live leader, a standby that reports nothing but its role."""
    return {
        "leadership": _leadership(),
        "instances": [
            _instance(
                "a",
                "leader",
                heartbeat_at="2026-11-30T09:00:00+00:00",
                heartbeat_age_s=3600.5,
                leader_epoch=1,
                version="0.1.0",
                host="h1",
                pid=101,
                stats={"pending": 0},
            ),
            _instance(
                "node-b",
                "leader",
                heartbeat_age_s=0.25,
                leader_epoch=2,
                version="0.2.0",
                host="host-two",
                pid=202,
                stats={"pending": 12345},
            ),
            _instance("c", "standby"),
        ],
        "handovers": [
            {
                "at": "2026-11-30T09:50:00+00:00",
                "epoch": 2,
                "from_instance_id": None,
                "to_instance_id": "node-b",
                "reason": "acquired",
                "gap_ms": None,
            },
            {
                "at": "2026-11-30T09:40:00+00:00",
                "epoch": 1,
                "from_instance_id": "x",
                "to_instance_id": "a",
                "reason": "evicted",
                "gap_ms": 2100,
            },
        ],
    }


GOLDEN = "".join(
    line + "\n"
    for line in [
        "leader: node-b   epoch: 2   since: 2026-11-30T09:50:00+00:00   "
        "last flush: 2026-11-30T09:59:58+00:00",
        "",
        "instance  role            heartbeat  epoch  version  last flush  host      pid  pending",
        "--------  --------------  ---------  -----  -------  ----------  --------  ---  -------",
        "a         gone (evicted)  3600.5s    1      0.1.0    -           h1        101  0      ",
        "node-b    leader          0.2s       2      0.2.0    2.5s ago    host-two  202  12345  ",
        "c         standby         0.5s       -      -        -           -         -    -      ",
        "",
        "recent handovers",
        "at                         epoch  from  to      reason    gap_ms",
        "-------------------------  -----  ----  ------  --------  ------",
        "2026-11-30T09:50:00+00:00  2      -     node-b  acquired  -     ",
        "2026-11-30T09:40:00+00:00  1      x     a       evicted   2100  ",
    ]
)


def test_the_status_table_byte_for_byte() -> None:
    """Left-aligned columns as wide as their widest cell, two spaces apart, `-` for
    anything missing, the leader's last flush as an age on the database clock."""
    assert render_status(_cluster(), TTL) == GOLDEN


def test_an_empty_cluster_renders_its_headers() -> None:
    """No instances, no handovers (a fresh database): the headers alone, at their width."""
    text = render_status({"leadership": {}}, TTL)
    assert text == (
        "leader: -   epoch: -   since: -   last flush: -\n\n"
        "instance  role  heartbeat  epoch  version  last flush  host  pid  pending\n"
        "--------  ----  ---------  -----  -------  ----------  ----  ---  -------\n"
        "\nrecent handovers\n"
        "at  epoch  from  to  reason  gap_ms\n"
        "--  -----  ----  --  ------  ------\n"
    )
    assert annotate_states({"leadership": None}, TTL) == {"leadership": None, "instances": []}


def _leader_cell(view: dict[str, Any]) -> str:
    line = next(x for x in render_status(view, TTL).splitlines() if x.startswith("node-b "))
    return line.split("  0.2.0  ")[1].split("  host-two")[0].strip()


def test_the_last_flush_never_happened_or_has_no_clock() -> None:
    """No flush yet: `never`; no heartbeat age to read the database clock from: the
    instant itself; a flush stamped after the clock read (skew): `0.0s ago`, never less."""
    view = _cluster()
    view["leadership"]["last_flush_at"] = None
    assert _leader_cell(view) == "never"
    clockless = _cluster()
    for inst in clockless["instances"]:
        inst["heartbeat_age_s"] = None
    assert _leader_cell(clockless) == "2026-11-30T09:59:58+00:00"
    line = next(x for x in render_status(clockless, TTL).splitlines() if x.startswith("node-b "))
    assert line.split()[:3] == ["node-b", "leader", "-"]  # no age: no heartbeat column
    ahead = _cluster()
    ahead["leadership"]["last_flush_at"] = "2026-11-30T10:00:00.800000+00:00"
    assert _leader_cell(ahead) == "0.0s ago"


def test_the_database_clock_is_the_first_complete_heartbeat_plus_its_age() -> None:
    at = datetime(2026, 11, 30, 10, 0, tzinfo=UTC)
    instances: list[dict[str, Any]] = [
        {"heartbeat_at": None, "heartbeat_age_s": 5.0},
        {"heartbeat_at": at.isoformat(), "heartbeat_age_s": None},
        {"heartbeat_at": at.isoformat(), "heartbeat_age_s": 1.5},
        {"heartbeat_at": at.isoformat(), "heartbeat_age_s": 9.0},
    ]
    assert database_now(instances) == at + timedelta(seconds=1.5)
    assert database_now(instances[:2]) is None


def test_the_state_at_exactly_one_and_five_lease_times() -> None:
    """Silent for exactly the lease: still live; for exactly five: still `leader (silent)`;
    a row without a heartbeat age counts as fresh."""
    lead = {"epoch": 2, "leader_instance_id": "b", "released_at": None}
    leader = _instance("b", "leader", leader_epoch=2)
    standby = _instance("c", "standby")
    assert instance_state(leader | {"heartbeat_age_s": TTL}, lead, TTL) == "leader"
    assert instance_state(standby | {"heartbeat_age_s": TTL}, lead, TTL) == "standby"
    silent = leader | {"heartbeat_age_s": TTL * 5}
    assert instance_state(silent, lead, TTL) == "leader (silent)"
    assert instance_state(standby | {"heartbeat_age_s": None}, lead, 0.5) == "standby"
    assert instance_state(standby | {"heartbeat_age_s": TTL + 0.001}, lead, TTL) == "gone (stale)"
