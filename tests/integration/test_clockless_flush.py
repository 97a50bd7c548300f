"""Readings timed by arrival are stored once whichever instance flushes them (issue 12).

Each instance keys a reading without a device time by its OWN arrival time, so the old
leader's row and the new leader's copy of the same message have different keys. The
flush itself matches such readings by content (same equipment, equal `dados` as jsonb,
key times within the matching window), in its transaction: the new leader's first
flush, a redelivery to the same instance and copies inside one batch all collapse to
one row. Two `Store`s (two instances, their own pools) on a real PostgreSQL, on the
fresh schema and on the legacy-shaped one (second-precision `timestamp(0)` key).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import InverterFamily
from aupus_ha.pipeline.readings import Equipment, Reading
from aupus_ha.pipeline.store import KeyConvention, Store, detect_convention
from tests.legacy_schema import cuid, register_equipment

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

CLUSTER = "clockless-flush"
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
PAYLOAD = b'{"Va":221.4,"Pt":7414.5,"_timestamp_bruto":"sem_ntp","_timestamp_motivo":"sem_ntp"}'
# The same JSON value spelled another way (key order, spacing): equal as jsonb.
RESPELLED = (
    b'{"_timestamp_motivo": "sem_ntp", "Pt": 7414.5, "_timestamp_bruto": "sem_ntp", "Va": 221.4}'
)


@dataclass
class Cluster:
    """Two instances' stores on one database, and a connection to look at the rows."""

    conn: asyncpg.Connection
    a: Store
    b: Store
    pools: list[asyncpg.Pool]
    convention: KeyConvention
    equipment: str

    def reading(self, at: datetime, dados: bytes = PAYLOAD, *, clockless: bool = True) -> Reading:
        """A reading as an instance's decoder hands it to the buffer (key convention on)."""
        return self.convention.apply(
            Reading(self.equipment, at, dados, qualidade="bom", matchable=not clockless)
        )

    async def new_term(self) -> int:
        """A failover: the epoch moves on (the old leader is fenced from here)."""
        return int(
            await self.conn.fetchval(
                "UPDATE ha_leadership SET epoch = epoch + 1 WHERE cluster_name = $1 "
                "RETURNING epoch",
                CLUSTER,
            )
        )

    async def rows(self) -> int:
        return int(
            await self.conn.fetchval(
                "SELECT count(*) FROM equipamentos_dados WHERE equipamento_id = $1",
                self.equipment,
            )
        )


@pytest.fixture
async def cluster(v2_schema: tuple[str, str]) -> AsyncIterator[Cluster]:
    _, dsn = v2_schema
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1)", CLUSTER)
    equipment = cuid("clockless-flush")
    await register_equipment(conn, equipment, "clockless/flush", None)
    convention = await detect_convention(conn, Queries()["column_types"])
    queries = convention.queries()
    settings = load_settings({"DATABASE_URL": dsn, "MQTT_MODE": "disabled"}, dotenv=None)
    pools = [await create_pool(settings, f"aupus-ha/clockless-{n}") for n in "ab"]
    a, b = (
        Store(p, queries, cluster_name=CLUSTER, instance_id=n)
        for p, n in zip(pools, "ab", strict=True)
    )
    yield Cluster(conn, a, b, pools, convention, equipment)
    for pool in pools:
        await pool.close()
    await conn.close()


async def test_the_new_leaders_copy_of_a_stored_reading_is_a_duplicate(cluster: Cluster) -> None:
    """Instance A (the leader) stores the reading under its arrival time; after a
    failover instance B flushes its own copy, timed by ITS arrival 3 s later (another
    host's clock, spelled differently): one row, counted as a duplicate. Then A, back
    and restarted (no memory of the first copy), gets a redelivery 7 s after it."""
    first = await cluster.a.flush([cluster.reading(T0)], [], epoch=1)
    assert (first.rows, first.duplicates) == (1, 0)
    epoch = await cluster.new_term()
    copy = await cluster.b.flush([cluster.reading(T0 + timedelta(seconds=3), RESPELLED)], [], epoch)
    assert (copy.rows, copy.duplicates) == (0, 1)
    assert await cluster.rows() == 1
    epoch = await cluster.new_term()
    again = await cluster.a.flush([cluster.reading(T0 + timedelta(seconds=7))], [], epoch)
    assert (again.rows, again.duplicates) == (0, 1)
    assert await cluster.rows() == 1


async def test_an_earlier_copy_is_matched_too(cluster: Cluster) -> None:
    """The window is symmetric: the copy flushed second may carry the EARLIER arrival
    time (the successor's clock is behind the old leader's)."""
    await cluster.a.flush([cluster.reading(T0 + timedelta(seconds=5))], [], epoch=1)
    epoch = await cluster.new_term()
    result = await cluster.b.flush([cluster.reading(T0 + timedelta(seconds=1))], [], epoch)
    assert result.duplicates == 1 and await cluster.rows() == 1


async def test_copies_inside_one_batch_count_once(cluster: Cluster) -> None:
    """Two copies of one message in the same batch (a redelivery the buffer did not
    recognise: it restarted in between, or its content memory was full) are one row."""
    batch = [cluster.reading(T0), cluster.reading(T0 + timedelta(seconds=4), RESPELLED)]
    result = await cluster.b.flush(batch, [], epoch=1)
    assert (result.rows, result.duplicates) == (1, 1)
    assert await cluster.rows() == 1


async def test_what_is_not_a_copy_is_stored(cluster: Cluster) -> None:
    """Other content, the same content beyond the window, and readings with a device
    time (whatever their content) are separate rows: only arrival-timed readings take
    the content path."""
    window = cluster.a.content_window_s
    await cluster.a.flush([cluster.reading(T0)], [], epoch=1)
    other = cluster.reading(T0 + timedelta(seconds=2), b'{"Va": 221.5}')
    later = cluster.reading(T0 + timedelta(seconds=window + 2))
    timed = [
        cluster.reading(T0 + timedelta(seconds=s), clockless=False) for s in (-30, -29)
    ]  # byte-identical dados, device times 1 s apart: two readings
    result = await cluster.a.flush([other, later, *timed], [], epoch=1)
    assert (result.rows, result.duplicates) == (4, 0)
    assert await cluster.rows() == 5


async def test_an_inverter_sample_timed_by_arrival_is_one_sample_of_its_minute(
    cluster: Cluster,
) -> None:
    """An inverter without a clock (ton_inverter_no_ntp.json): its sample is keyed inside
    the minute's row by the arrival instant. The successor's copy, stamped 3 s later by
    its own clock, is the same sample: the row keeps one (before, it counted two)."""
    payload = json.loads((FIXTURES / "ton_inverter_no_ntp.json").read_text())
    equipment = Equipment(cluster.equipment, "clockless/flush")
    arrived = T0.replace(second=20)  # both copies inside one minute

    def sample(at: datetime) -> list[Reading]:
        decoded = InverterFamily().decode(payload, equipment, at)
        assert decoded and not decoded[0].matchable
        return [cluster.convention.apply(r) for r in decoded]

    first = await cluster.a.flush(sample(arrived), [], epoch=1)
    assert first.rows == 1
    epoch = await cluster.new_term()
    copy = await cluster.b.flush(sample(arrived + timedelta(seconds=3)), [], epoch)
    assert (copy.rows, copy.merged) == (0, 0)
    both = sample(arrived + timedelta(seconds=5)) + sample(arrived + timedelta(seconds=8))
    await cluster.b.flush(both, [], epoch)  # two more copies in one batch
    row = await cluster.conn.fetchrow(
        "SELECT num_leituras, dados::text AS dados FROM equipamentos_dados "
        "WHERE equipamento_id = $1",
        cluster.equipment,
    )
    assert row is not None
    assert (row["num_leituras"], len(json.loads(row["dados"])["samples"])) == (1, 1)
    other = dict(payload, temperature={"internal": 49.0})  # another reading: a sample
    decoded = InverterFamily().decode(other, equipment, arrived + timedelta(seconds=9))
    result = await cluster.b.flush([cluster.convention.apply(r) for r in decoded], [], epoch)
    assert result.merged == 1
