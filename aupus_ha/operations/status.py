"""`aupus-ha status`: the cluster as a readable table.

Ages are on the database clock, like the heartbeat ages the query computes: "now" is
taken as any instance's `heartbeat_at + heartbeat_age_s`, so a status run from a host
whose clock is off still shows the right last-flush age.
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


def _last_flush(inst: dict[str, Any], lead: dict[str, Any], now: datetime | None) -> str:
    """On the leader's row only: how long ago it last committed a flush."""
    leads = inst.get("role") == "leader" and inst.get("leader_epoch") == lead.get("epoch")
    if not leads or lead.get("released_at"):
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
    stale = isinstance(age, float) and age > lease_ttl_s and not inst.get("stopped_at")
    return [
        inst["instance_id"],
        inst["role"] + (" (silent)" if stale else ""),
        f"{age:.1f}s" if isinstance(age, float) else "-",
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
    out = [
        f"leader: {_s(lead.get('leader_instance_id'))}   epoch: {_s(lead.get('epoch'))}   "
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
