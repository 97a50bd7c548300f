"""`aupus-ha status`: a process that died is shown as gone, never as a leader.

Its lease row keeps `role = leader` and the epoch it led: nobody rewrites the row of a
dead process. The table must read the cluster's current term (`ha_leadership`) and the
heartbeat age, not the row's own claim.
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.operations.status import annotate_states, instance_state, render_status
from tests.helpers import status_instance, status_rows

TTL = 2.0


def _view(*instances: dict[str, Any], epoch: int = 2, leader: str = "b") -> dict[str, Any]:
    return {
        "leadership": {
            "epoch": epoch,
            "leader_instance_id": leader,
            "acquired_at": "2026-11-30T09:50:00+00:00",
            "released_at": None,
            "last_flush_at": "2026-11-30T10:00:00+00:00",
        },
        "instances": list(instances),
        "handovers": [
            {
                "at": "2026-11-30T09:50:00+00:00",
                "epoch": 2,
                "from_instance_id": "a",
                "to_instance_id": "b",
                "reason": "evicted",
                "gap_ms": 2100,
            }
        ],
    }


def test_a_dead_leader_taken_over_long_ago_is_gone_not_leader() -> None:
    """Two rows claim `leader`: the one of the current term leads, the other is gone."""
    view = _view(
        status_instance("a", "leader", 1, age=3_600.0), status_instance("b", "leader", 2, age=0.2)
    )
    rows = status_rows(render_status(view, TTL))
    assert rows["a"]["role"] == "gone (evicted)"
    assert rows["a"]["epoch"] == "1"  # its last epoch stays visible
    assert rows["a"]["last flush"] == "-"
    assert rows["b"]["role"] == "leader"
    assert "leader" not in rows["a"]["role"]


def test_a_dead_standby_is_gone_stale() -> None:
    view = _view(
        status_instance("b", "leader", 2, age=0.2), status_instance("c", "standby", None, age=900.0)
    )
    assert status_rows(render_status(view, TTL))["c"]["role"] == "gone (stale)"


def test_the_current_leader_silent_for_long_is_gone_too() -> None:
    """Briefly silent (before a standby evicts it): `leader (silent)`; silent for many
    lease times with nobody to take over: its process is gone, it leads nothing."""
    brief = _view(status_instance("b", "leader", 2, age=TTL * 1.5))
    assert status_rows(render_status(brief, TTL))["b"]["role"] == "leader (silent)"
    long = _view(status_instance("b", "leader", 2, age=TTL * 100))
    assert status_rows(render_status(long, TTL))["b"]["role"] == "gone (stale)"


def test_an_old_leader_still_heartbeating_is_fenced_not_leader() -> None:
    """A paused old leader that woke up (fresh heartbeat, ended epoch) leads nothing."""
    view = _view(
        status_instance("a", "leader", 1, age=0.1), status_instance("b", "leader", 2, age=0.2)
    )
    assert status_rows(render_status(view, TTL))["a"]["role"] == "fenced (epoch 1 ended)"


def test_a_released_term_has_no_leader_row() -> None:
    view = _view(status_instance("b", "leader", 2, age=TTL * 2))
    view["leadership"]["released_at"] = "2026-11-30T10:00:01+00:00"
    assert status_rows(render_status(view, TTL))["b"]["role"] == "gone (stale)"


def test_the_header_never_names_a_gone_or_released_leader_plainly() -> None:
    dead = _view(status_instance("b", "leader", 2, age=TTL * 100))
    assert render_status(dead, TTL).startswith("leader: b (gone)   epoch: 2")
    released = _view(status_instance("b", "standby", None, age=0.1))
    released["leadership"]["released_at"] = "2026-11-30T10:00:01+00:00"
    assert render_status(released, TTL).startswith("leader: - (epoch 2 released by b)")
    live = _view(status_instance("b", "leader", 2, age=0.1))
    assert render_status(live, TTL).startswith("leader: b   epoch: 2")


def test_stopped_rows_keep_their_role() -> None:
    view = _view(
        status_instance("b", "leader", 2, age=0.2), status_instance("a", "stopped", None, age=500.0)
    )
    view["instances"][1]["stopped_at"] = "2026-11-30T09:00:00+00:00"
    assert status_rows(render_status(view, TTL))["a"]["role"] == "stopped"


def test_json_carries_the_same_state() -> None:
    view = _view(
        status_instance("a", "leader", 1, age=3_600.0), status_instance("b", "leader", 2, age=0.2)
    )
    states = {i["instance_id"]: i["state"] for i in annotate_states(view, TTL)["instances"]}
    assert states == {"a": "gone (evicted)", "b": "leader"}


ROLES = st.sampled_from(["leader", "standby", "observer"])


@given(
    role=ROLES,
    epoch=st.one_of(st.none(), st.integers(1, 5)),
    current=st.integers(1, 5),
    age=st.floats(0, 1e6, allow_nan=False),
    leader=st.sampled_from(["x", "y"]),
)
def test_only_the_holder_of_the_current_term_is_ever_shown_leading(
    role: str, epoch: int | None, current: int, age: float, leader: str
) -> None:
    """Whatever the row claims: `leader...` only for the live holder of the current epoch."""
    lead = {"epoch": current, "leader_instance_id": leader, "released_at": None}
    state = instance_state(status_instance("x", role, epoch, age), lead, TTL)
    holds = role == "leader" and epoch == current and leader == "x"
    if state.startswith("leader"):
        assert holds and age <= TTL * 5, (state, role, epoch, current, age)
