"""Issue 12, "What done looks like": every shared fixture through a two-instance cluster
(real `aupus-ha run` processes, Mosquitto, PostgreSQL) with a kill -9 of the leader in
the middle, on the fresh schema and on the legacy one (TimeZone America/Sao_Paulo), lands
exactly as DOMAIN.md v2 says, exactly once; rows written before aupus-ha (the platform,
UTC wall time; the cloud fallback, NUVEM_FUSION) share the key of a reading published
for the same device and instant.

Half of the messages are published to the first leader and written, the leader is
killed with SIGKILL, the other half is published while the standby takes over. The
standby held a copy of everything: its promotion must add no second row, also for the
readings timed by their arrival (each instance has its own arrival time: they are
matched by content). Expected rows: tests/fixtures_v2.py (computed from DOMAIN v2).
"""

from __future__ import annotations

import re
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import aiohttp
import asyncpg

from aupus_ha.lab.localcluster import InstanceProcess, fetch, wait_single_leader, wait_until
from aupus_ha.lab.publisher import Publisher
from tests.acceptance.conftest import ClusterFactory
from tests.fixtures_v2 import (
    ARRIVAL_MINUTE,
    METER_M160,
    REJECTS_SQL,
    ROWS_SQL,
    Case,
    Message,
    Report,
    Window,
    all_cases,
    as_utc,
    check_case,
    fixture,
    generic_cases,
    register_cases,
)
from tests.helpers import standby_ready
from tests.legacy_schema import cuid, register_equipment

# A minute of an inverter timed by its arrival is written once that minute has closed
# (at most a minute after it arrived): the final wait allows for it.
SETTLE_S = 80.0
ENV = {"ROLLUP_GRACE_S": "0"}


def overlap_cases() -> list[Case]:
    """Two M-160 devices whose instant is already stored by another writer."""
    return [
        # m160_ton_flat.json: 2026-11-29 00:00:30 UTC; the platform's row is there.
        Case("platform-row", METER_M160, (Message(fixture("m160_ton_flat.json")),)),
        # m160_ton_flat_freq_fpt.json: 00:01:00 UTC; the cloud fallback's row is there.
        Case("cloud-row", METER_M160, (Message(fixture("m160_ton_flat_freq_fpt.json")),)),
    ]


def padded_topic_case() -> Case:
    """DOMAIN "Equipment, types, topics": whitespace around a stored topic is trimmed (the
    legacy does): the equipment still gets the readings of the trimmed topic."""
    (generic,) = [c for c in generic_cases() if c.label == "generic"]
    return Case("generic-padded-topic", None, generic.messages, generic.rows)


BEFORE = {  # label -> (UTC wall time of the existing row, its fonte)
    "platform-row": (datetime(2026, 11, 29, 0, 0, 30), "MQTT"),
    "cloud-row": (datetime(2026, 11, 29, 0, 1, 0), "NUVEM_FUSION"),
}


async def seed(dsn: str, cases: Sequence[Case], prefix: str, legacy: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await register_cases(conn, [*cases, *overlap_cases()], prefix)
        padded = padded_topic_case()
        await register_equipment(conn, padded.equipment_id, f"  {padded.topic(prefix)} ", None)
        for case in overlap_cases():
            wall_utc, fonte = BEFORE[case.label]
            # As the platform writes it: UTC wall time in the legacy timestamp(0) column.
            at = wall_utc if legacy else wall_utc.replace(tzinfo=UTC)
            await conn.execute(
                "INSERT INTO equipamentos_dados (id, equipamento_id, timestamp_dados, dados, "
                "fonte, qualidade) VALUES ($1, $2, $3, '{\"antes\": true}', $4, 'bom')",
                cuid(f"before:{case.label}"),
                case.equipment_id,
                at,
                fonte,
            )
    finally:
        await conn.close()


def phases(cases: Sequence[Case], prefix: str) -> tuple[list[tuple[str, bytes]], ...]:
    """(before the kill, after it): multi-message cases split in the middle (the outlier
    sequence's outlier comes after the kill), single ones alternate; a minute timed by
    arrival goes first (it is written only once its minute has closed)."""
    first: list[tuple[str, bytes]] = []
    second: list[tuple[str, bytes]] = []
    singles = 0
    for case in cases:
        topic = case.topic(prefix)
        messages = [(topic, m.payload) for m in case.messages]
        if len(messages) > 1:
            half = len(messages) // 2
            first += messages[:half]
            second += messages[half:]
        elif any(r.at is ARRIVAL_MINUTE for r in case.rows):
            first += messages
        else:
            (first if singles % 2 == 0 else second).extend(messages)
            singles += 1
    return first, second


async def send(url: str, messages: Sequence[tuple[str, bytes]]) -> None:
    async with Publisher(url) as pub:
        for topic, payload in messages:
            pub.publish(topic, payload)
        await pub.wait_acknowledged()


async def metrics_text(node: InstanceProcess) -> str:
    url = f"http://{node.http_host}:{node.http_port}/metrics"
    try:
        timeout = aiohttp.ClientTimeout(total=3)
        async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url) as resp:
            return await resp.text()
    except (aiohttp.ClientError, TimeoutError):
        return ""


class Drained:
    """Has `node` heard `received` messages (or heard nothing new for QUIET_S: a topic it
    never subscribed must not stall the test) and written all it holds but `held`?"""

    QUIET_S = 3.0

    def __init__(self, node: InstanceProcess, received: int, held: int = 0) -> None:
        self.node, self.received, self.held = node, received, held
        self._last: tuple[float, float] | None = None  # (count, since)

    async def __call__(self) -> bool:
        text = await metrics_text(self.node)
        match = re.search(r"^aupus_ha_messages_received_total (\S+)$", text, re.MULTILINE)
        if match is None:
            return False
        count, now = float(match[1]), time.monotonic()
        if self._last is None or self._last[0] != count:
            self._last = (count, now)
        heard_all = count >= self.received or now - self._last[1] >= self.QUIET_S
        _, body = await self.node.get("/health", timeout=3)
        pending = int(body["checks"]["buffer"]["pending"]) if body is not None else -1
        return heard_all and 0 <= pending <= self.held


async def settle(
    report: Report, predicate: Callable[[], Awaitable[bool]], timeout: float, what: str
) -> None:
    try:
        await wait_until(predicate, timeout, what, interval=0.2)
    except AssertionError as exc:
        report.check(False, str(exc))


async def test_every_fixture_through_a_failover_lands_once(
    spawn: ClusterFactory, v2_schema: tuple[str, str], mosquitto: object
) -> None:
    """Each fixture's rows as DOMAIN v2 predicts (values, labels, time source, flags),
    exactly once across the kill -9; each bad input a reject with its reason; the rows
    of other writers keep their key."""
    kind, dsn = v2_schema
    legacy = kind == "legacy"
    url = mosquitto.url  # type: ignore[attr-defined]
    prefix = f"fx-{uuid.uuid4().hex[:6]}"
    await seed(dsn, all_cases(), prefix, legacy)
    cases = [*all_cases(), padded_topic_case()]
    started = datetime.now(UTC)

    leader = spawn("node-a", **ENV)
    await wait_single_leader([leader], timeout=30)
    standby = spawn("node-b", **ENV)
    await wait_until(lambda: standby_ready(standby), 30, f"standby not ready: {standby.tail()}")

    first, second = phases([*cases, *overlap_cases()], prefix)
    held = sum(1 for c in cases for r in c.rows if r.at is ARRIVAL_MINUTE)
    report = Report()
    await send(url, first)
    # A message the product never hears (a topic it did not subscribe) must not hide the
    # rest of the report: a wait that runs out is a mismatch, the checks still run.
    await settle(report, Drained(leader, len(first), held), 30, "first half not written")
    leader.signal(signal.SIGKILL)  # in the middle: the standby holds copies of it all
    await send(url, second)
    await wait_until(standby.is_leader, 20, f"the standby did not take over: {standby.tail()}")
    total = len(first) + len(second)
    await settle(report, Drained(standby, total), SETTLE_S, "the new leader holds entries")

    rows = [dict(r) for r in await fetch(dsn, ROWS_SQL)]
    rejects = [dict(r) for r in await fetch(dsn, REJECTS_SQL)]
    window = Window(started, datetime.now(UTC))
    for case in cases:
        check_case(report, case, rows, rejects, window, prefix=prefix, legacy=legacy)
    check_other_writers(report, rows)
    check_counters(report, await metrics_text(standby), all_cases())
    known = {c.equipment_id for c in [*cases, *overlap_cases()]}
    strays = [r for r in rows if r["equipamento_id"] not in known]
    report.check(not strays, f"rows of no case: {strays[:3]}")
    report.assert_clean(f"{kind} schema")


def check_other_writers(report: Report, rows: Sequence[dict[str, object]]) -> None:
    """DOMAIN v2 "The legacy database": one key for one device and instant, whichever
    writer came first (ON CONFLICT DO NOTHING: the row already there stays)."""
    for case in overlap_cases():
        wall_utc, fonte = BEFORE[case.label]
        mine = [r for r in rows if r["equipamento_id"] == case.equipment_id]
        report.check(len(mine) == 1, f"{case.label}: {len(mine)} rows for one instant")
        if len(mine) == 1:
            (row,) = mine
            report.check(
                row["id"] == cuid(f"before:{case.label}") and row["fonte"] == fonte,
                f"{case.label}: the existing row was replaced: {row}",
            )
            at = as_utc(row["timestamp_dados"])  # type: ignore[arg-type]
            report.check(at == wall_utc.replace(tzinfo=UTC), f"{case.label}: key moved to {at}")


def check_counters(report: Report, metrics: str, cases: Sequence[Case]) -> None:
    """DOMAIN "Bad input": each reject counted by reason; "Time": the arrival-time
    fallbacks counted per reason. The surviving instance decoded every message."""
    codes: set[str] = set()
    motivos: set[str] = set()
    for case in cases:
        for message in case.messages:
            if message.reject is not None and len(message.reject) == 1:
                codes |= message.reject
        motivos |= {m for r in case.rows if isinstance(m := r.dados.get("_timestamp_motivo"), str)}
    for code in sorted(codes):
        report.check(f'reason="{code}"' in metrics, f"no reject counter for reason {code!r}")
    for motivo in sorted(motivos):
        report.check(f'"{motivo}"' in metrics, f"no time-fallback counter for {motivo!r}")
