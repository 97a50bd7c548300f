"""`aupus-ha status`: the cluster as a readable table.

Ages are on the database clock, like the heartbeat ages the query computes: "now" is
taken as any instance's `heartbeat_at + heartbeat_age_s`, so a status run from a host
whose clock is off still shows the right last-flush age.

A lease row says what its process last claimed: the row of a process that died while
leading keeps `role = leader` and its epoch forever (nobody rewrites a dead process's
row). So the role shown is judged against the cluster's current term and the heartbeat
age: only the live holder of the current epoch is ever shown leading; a row whose epoch
ended is `gone (evicted)` (or `fenced` while it still heartbeats), a silent row is
`gone (stale)`.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

INSTANCE_HEADERS = [
    "instance",
    "role",
    "heartbeat",
    "epoch",
    "version",
    "last flush",
    "host",
    "pid",
    "pending",
]
HANDOVER_HEADERS = ["at", "epoch", "from", "to", "reason", "gap_ms"]
# A current leader silent for longer than this many lease times leads nothing any more
# (its own renew deadline stopped its flushes long before): its process is gone.
GONE_AFTER_TTLS = 5


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body]) + "\n"


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


def _when(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def database_now(instances: list[dict[str, Any]]) -> datetime | None:
    """The database clock at query time, from a heartbeat and its (database) age."""
    for inst in instances:
        at, age = _when(inst.get("heartbeat_at")), inst.get("heartbeat_age_s")
        if at is not None and isinstance(age, int | float):
            return at + timedelta(seconds=age)
    return None


def _holds_current_term(inst: dict[str, Any], lead: dict[str, Any]) -> bool:
    """Does this row lead the cluster's current, unreleased epoch?"""
    return (
        inst.get("role") == "leader"
        and inst.get("leader_epoch") is not None
        and inst.get("leader_epoch") == lead.get("epoch")
        and inst.get("instance_id") == lead.get("leader_instance_id")
        and not lead.get("released_at")
    )


def instance_state(inst: dict[str, Any], lead: dict[str, Any], lease_ttl_s: float) -> str:
    """What an instance is now, judged from the current term and its heartbeat age."""
    role = str(inst.get("role"))
    if inst.get("stopped_at"):
        return role  # stopped on purpose: the row says so itself
    age = inst.get("heartbeat_age_s")
    age_s = float(age) if isinstance(age, int | float) else 0.0
    stale = age_s > lease_ttl_s
    if _holds_current_term(inst, lead):
        if not stale:
            return role
        return "leader (silent)" if age_s <= lease_ttl_s * GONE_AFTER_TTLS else "gone (stale)"
    if role == "leader":  # claims an epoch that is not (or no longer) the current one
        taken_over = _newer_epoch(lead, inst.get("leader_epoch"))
        if stale:
            return "gone (evicted)" if taken_over else "gone (stale)"
        return f"fenced (epoch {_s(inst.get('leader_epoch'))} ended)"
    return "gone (stale)" if stale else role


def _newer_epoch(lead: dict[str, Any], epoch: object) -> bool:
    current = lead.get("epoch")
    return isinstance(current, int) and (not isinstance(epoch, int) or current > epoch)


def annotate_states(view: dict[str, Any], lease_ttl_s: float) -> dict[str, Any]:
    """The view with each instance's judged `state` (for `status --json`)."""
    lead = view.get("leadership") or {}
    instances = [
        {**inst, "state": instance_state(inst, lead, lease_ttl_s)}
        for inst in view.get("instances", [])
    ]
    return {**view, "instances": instances}


def _last_flush(inst: dict[str, Any], lead: dict[str, Any], now: datetime | None) -> str:
    """On the leader's row only: how long ago it last committed a flush."""
    if not _holds_current_term(inst, lead):
        return "-"
    flushed = _when(lead.get("last_flush_at"))
    if flushed is None:
        return "never"
    if now is None:
        return flushed.isoformat()
    return f"{max((now - flushed).total_seconds(), 0.0):.1f}s ago"


def _instance_row(
    inst: dict[str, Any], lead: dict[str, Any], now: datetime | None, lease_ttl_s: float
) -> list[str]:
    age = inst.get("heartbeat_age_s")
    return [
        inst["instance_id"],
        instance_state(inst, lead, lease_ttl_s),
        f"{age:.1f}s" if isinstance(age, int | float) else "-",
        _s(inst.get("leader_epoch")),
        _s(inst.get("version")),
        _last_flush(inst, lead, now),
        _s(inst.get("host")),
        _s(inst.get("pid")),
        _s((inst.get("stats") or {}).get("pending")),
    ]


def render_status(view: dict[str, Any], lease_ttl_s: float) -> str:
    lead = view.get("leadership") or {}
    instances = view.get("instances", [])
    now = database_now(instances)
    leader = _s(lead.get("leader_instance_id"))
    states = {i.get("instance_id"): instance_state(i, lead, lease_ttl_s) for i in instances}
    if lead.get("released_at"):
        leader = f"- (epoch {_s(lead.get('epoch'))} released by {leader})"
    elif states.get(lead.get("leader_instance_id"), "").startswith("gone"):
        leader += " (gone)"
    out = [
        f"leader: {leader}   epoch: {_s(lead.get('epoch'))}   "
        f"since: {_s(lead.get('acquired_at'))}   last flush: {_s(lead.get('last_flush_at'))}\n\n"
    ]
    rows = [_instance_row(inst, lead, now, lease_ttl_s) for inst in instances]
    out.append(_table(INSTANCE_HEADERS, rows))
    out.append("\nrecent handovers\n")
    hand = [
        [
            _s(h["at"]),
            _s(h["epoch"]),
            _s(h["from_instance_id"]),
            h["to_instance_id"],
            h["reason"],
            _s(h["gap_ms"]),
        ]
        for h in view.get("handovers", [])
    ]
    out.append(_table(HANDOVER_HEADERS, hand))
    return "".join(out)
