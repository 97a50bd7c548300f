"""`aupus-ha status`: the cluster as a readable table."""

from __future__ import annotations

from typing import Any


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    body = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([line, "  ".join("-" * w for w in widths), *body]) + "\n"


def _s(value: Any) -> str:
    return "-" if value is None else str(value)


def render_status(view: dict[str, Any], lease_ttl_s: float) -> str:
    lead = view.get("leadership") or {}
    out = [
        f"leader: {_s(lead.get('leader_instance_id'))}   epoch: {_s(lead.get('epoch'))}   "
        f"since: {_s(lead.get('acquired_at'))}   last flush: {_s(lead.get('last_flush_at'))}\n\n"
    ]
    rows = []
    for inst in view.get("instances", []):
        age = inst.get("heartbeat_age_s")
        stale = isinstance(age, float) and age > lease_ttl_s and not inst.get("stopped_at")
        rows.append(
            [
                inst["instance_id"],
                inst["role"] + (" (silent)" if stale else ""),
                f"{age:.1f}s" if isinstance(age, float) else "-",
                _s(inst.get("leader_epoch")),
                _s(inst.get("version")),
                _s(inst.get("host")),
                _s(inst.get("pid")),
                _s((inst.get("stats") or {}).get("pending")),
            ]
        )
    out.append(
        _table(
            ["instance", "role", "heartbeat", "epoch", "version", "host", "pid", "pending"], rows
        )
    )
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
    out.append(_table(["at", "epoch", "from", "to", "reason", "gap_ms"], hand))
    return "".join(out)
