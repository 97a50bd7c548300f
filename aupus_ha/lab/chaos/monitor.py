"""Who answers /health/leader, every ~50 ms on every instance, and what that shows.

One polling task per instance (a frozen instance's hanging request must not slow the
others), all owned by `LeaderMonitor.run`. Times are wall-clock seconds (`time.time()`),
the clock PostgreSQL stamps `leader_since` with on this same machine.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiohttp

from aupus_ha.lab.localcluster import InstanceProcess

POLL_S = 0.05
REQUEST_TIMEOUT_S = 0.5
_TOLERANCE_S = 0.02  # clock granularity allowance when comparing leader_since


@dataclass(frozen=True, slots=True)
class Sample:
    name: str
    sent: float
    received: float
    status: int  # 0: no answer
    role: str  # the body's role, or "down"
    epoch: int | None = None
    leader_since: float | None = None

    @property
    def leads(self) -> bool:
        return self.status == 200


class LeaderMonitor:
    def __init__(self, nodes: Sequence[InstanceProcess]) -> None:
        self._nodes = list(nodes)
        self.samples: list[Sample] = []

    async def run(self) -> None:
        """Poll until cancelled."""
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await asyncio.gather(*(self._poll(session, node) for node in self._nodes))

    async def _poll(self, session: aiohttp.ClientSession, node: InstanceProcess) -> None:
        url = f"http://{node.http_host}:{node.http_port}/health/leader"
        while True:
            sent = time.time()
            status, body = await _get(session, url)
            self.samples.append(_sample(node.name, sent, status, body))
            await asyncio.sleep(max(0.0, sent + POLL_S - time.time()))


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, Any]]:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
        async with session.get(url) as resp:
            body = await resp.json(content_type=None)
            return resp.status, body if isinstance(body, dict) else {}
    return 0, {}


def _sample(name: str, sent: float, status: int, body: dict[str, Any]) -> Sample:
    since = body.get("leader_since")
    epoch = body.get("epoch")
    return Sample(
        name=name,
        sent=sent,
        received=time.time(),
        status=status,
        role=str(body.get("role", "down")) if status else "down",
        epoch=epoch if isinstance(epoch, int) else None,
        leader_since=_wall(since) if isinstance(since, str) else None,
    )


def _wall(text: str) -> float | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


# --- what the samples show --------------------------------------------------------------


def by_node(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    out: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: s.sent):
        out.setdefault(s.name, []).append(s)
    return out


def role_spans(samples: Sequence[Sample]) -> list[tuple[float, float, str]]:
    """(from, to, role) of one instance's samples, consecutive equal roles merged; a span
    runs from the request that first saw the role to the one that saw the next."""
    spans: list[tuple[float, float, str]] = []
    for cur, nxt in zip(samples, [*samples[1:], None], strict=True):
        end = nxt.sent if nxt is not None else cur.received
        role = "leader" if cur.leads else cur.role
        if spans and spans[-1][2] == role:
            spans[-1] = (spans[-1][0], end, role)
        else:
            spans.append((cur.sent, end, role))
    return spans


def leaderless(samples: Iterable[Sample], start: float, end: float) -> list[tuple[float, float]]:
    """Intervals within [start, end] in which no instance was seen leading."""
    covered = sorted(
        (a, b)
        for spans in (role_spans(s) for s in by_node(samples).values())
        for a, b, role in spans
        if role == "leader"
    )
    gaps, cursor = [], start
    for a, b in covered:
        if a > cursor:
            gaps.append((cursor, min(a, end)))
        cursor = max(cursor, b)
    if cursor < end:
        gaps.append((cursor, end))
    return [(a, b) for a, b in gaps if b > a]


def two_leader_moments(samples: Iterable[Sample]) -> list[dict[str, Any]]:
    """Proven overlaps: an instance still answering leader for an epoch after a newer
    epoch had been acquired (its request was sent after the newer `leader_since`), or
    two instances answering leader for the same epoch (an epoch has one leader)."""
    leading = [s for s in samples if s.leads and s.epoch is not None]
    starts: dict[int, float] = {}
    names: dict[int, set[str]] = {}
    for s in leading:
        assert s.epoch is not None
        since = s.leader_since if s.leader_since is not None else s.sent
        starts[s.epoch] = min(starts.get(s.epoch, since), since)
        names.setdefault(s.epoch, set()).add(s.name)
    epochs = sorted(starts)
    found: dict[tuple[str, int], dict[str, Any]] = {}
    for s in leading:
        assert s.epoch is not None
        newer = epochs[bisect.bisect_right(epochs, s.epoch) :]
        later = [e for e in newer if starts[e] + _TOLERANCE_S < s.sent]
        if later:
            why = f"epoch {later[-1]} began {s.sent - starts[later[-1]]:.3f}s earlier"
            _note(found, s, why)
        elif len(names[s.epoch]) > 1:
            _note(found, s, f"epoch {s.epoch} claimed by {', '.join(sorted(names[s.epoch]))}")
    return list(found.values())


def _note(found: dict[tuple[str, int], dict[str, Any]], s: Sample, why: str) -> None:
    entry = found.setdefault(
        (s.name, s.epoch or 0),
        {"instance": s.name, "epoch": s.epoch, "at": s.sent, "samples": 0, "why": why},
    )
    entry["samples"] += 1


def first_leader(
    samples: Iterable[Sample], after: float, exclude: str | None = None
) -> Sample | None:
    """The first sample sent at or after `after` in which an instance (not `exclude`)
    answered leader."""
    hits = [s for s in samples if s.leads and s.sent >= after and s.name != exclude]
    return min(hits, key=lambda s: s.received, default=None)
