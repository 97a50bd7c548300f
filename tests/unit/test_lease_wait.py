"""When a new term must wait out the previous leader's lease (issue 17, defect 11)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aupus_ha.leadership.election import previous_lease_left

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
TTL = 5.0


def _prev(
    *, heartbeat_ago: float | None, owner: str = "old-token", released: bool = False
) -> dict[str, object]:
    return {
        "leader_instance_id": "node-a",
        "leader_token": owner,
        "released_at": NOW if released else None,
        "leader_heartbeat_at": (
            NOW - timedelta(seconds=heartbeat_ago) if heartbeat_ago is not None else None
        ),
    }


def test_server_restarted_after_the_last_renewal_waits_the_rest_of_the_lease() -> None:
    """Renewed 1.5 s ago, then the server restarted 1 s ago: 3.5 s of lease are left."""
    started = NOW - timedelta(seconds=1)
    assert previous_lease_left(_prev(heartbeat_ago=1.5), started, NOW, "me", TTL) == 3.5


def test_crash_of_the_leader_process_does_not_wait() -> None:
    """The leader renewed on this server (after its start): its session ended because
    it died, so the crash failover stays immediate."""
    started = NOW - timedelta(hours=3)
    assert previous_lease_left(_prev(heartbeat_ago=0.3), started, NOW, "me", TTL) == 0.0


def test_no_wait_when_released_ours_expired_or_unknown() -> None:
    """A graceful release, our own previous term, a lease already over, or no heartbeat
    or start time known: no wait."""
    started = NOW - timedelta(seconds=1)
    assert previous_lease_left(_prev(heartbeat_ago=2, released=True), started, NOW, "me", TTL) == 0
    assert previous_lease_left(_prev(heartbeat_ago=2, owner="me"), started, NOW, "me", TTL) == 0
    assert previous_lease_left(_prev(heartbeat_ago=9), started, NOW, "me", TTL) == 0
    assert previous_lease_left(_prev(heartbeat_ago=None), started, NOW, "me", TTL) == 0
    assert previous_lease_left(_prev(heartbeat_ago=2), None, NOW, "me", TTL) == 0
    first = {**_prev(heartbeat_ago=2), "leader_instance_id": None}
    assert previous_lease_left(first, started, NOW, "me", TTL) == 0
