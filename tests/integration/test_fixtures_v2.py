"""Every shared fixture through the product's decode -> flush path on a real PostgreSQL,
on the fresh schema and on the legacy one (TimeZone America/Sao_Paulo), checked against
DOMAIN.md v2 (issue 12).

The path is the one `aupus-ha run` wires (app.py): the equipment catalogue read by the
store (type code, category), `Decoder.decode` per message with its arrival time, the
key convention detected from the table, `Store.flush` under an epoch. The expected rows
are in tests/fixtures_v2.py, computed by hand from DOMAIN v2.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import asyncpg
import orjson
import pytest

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Reading, Reject
from aupus_ha.pipeline.store import KeyConvention, Store, detect_convention
from aupus_ha.pipeline.topics import TopicCatalog
from tests.fixtures_v2 import (
    ABSENT,
    FIXTURES,
    M160,
    REJECTS_SQL,
    ROWS_SQL,
    Case,
    Message,
    Report,
    Row,
    Window,
    all_cases,
    as_utc,
    check_case,
    covered_files,
    generic_cases,
    lines,
    m160_cases,
    register_cases,
)
from tests.legacy_schema import LEGACY_TIMEZONE, cuid

CLUSTER = "fixtures-v2"
PREFIX = "fx"


@dataclass
class Pipeline:
    """The product's decode -> flush path, in this process."""

    conn: asyncpg.Connection
    pool: asyncpg.Pool
    store: Store
    convention: KeyConvention
    legacy: bool
    catalog: TopicCatalog = field(default_factory=TopicCatalog)

    @classmethod
    async def open(cls, dsn: str) -> Pipeline:
        conn = await asyncpg.connect(dsn)
        await conn.execute(
            "INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1)", CLUSTER
        )
        convention = await detect_convention(conn, Queries()["column_types"])
        queries = convention.queries()
        settings = load_settings({"DATABASE_URL": dsn, "MQTT_MODE": "disabled"}, dotenv=None)
        pool = await create_pool(settings, "aupus-ha/fixtures-v2")
        store = Store(pool, queries, cluster_name=CLUSTER, instance_id="fixtures-v2")
        return cls(conn, pool, store, convention, convention.legacy_timestamps)

    async def refresh(self) -> None:
        self.catalog = TopicCatalog.build(await self.store.enabled_equipment())

    def decode(
        self, decoder: Decoder, topic: str, payload: bytes, received_at: datetime | None = None
    ) -> tuple[list[Reading], list[Reject]]:
        decoded = decoder.decode(
            topic,
            payload,
            self.catalog.equipment_for(topic),
            received_at or datetime.now(UTC),
        )
        return [self.convention.apply(r) for r in decoded.readings], decoded.rejects

    async def flush(self, readings: list[Reading], rejects: list[Reject]) -> None:
        await self.store.flush(readings, rejects, epoch=1)

    async def ingest(
        self, messages: Sequence[tuple[str, bytes]], decoder: Decoder | None = None
    ) -> tuple[list[Reading], list[Reject]]:
        """Decode `messages` in order (arrival = now) and flush them as one batch."""
        decoder = decoder or Decoder(max_payload_bytes=64 * 1024)
        readings: list[Reading] = []
        rejects: list[Reject] = []
        for topic, payload in messages:
            r, j = self.decode(decoder, topic, payload)
            readings += r
            rejects += j
        late = decoder.flush(datetime.now(UTC) + timedelta(days=1))  # stateful families
        readings += [self.convention.apply(r) for r in late.readings]
        await self.flush(readings, rejects)
        return readings, rejects

    async def rows(self) -> list[dict[str, object]]:
        return [dict(r) for r in await self.conn.fetch(ROWS_SQL)]

    async def rejects(self) -> list[dict[str, object]]:
        return [dict(r) for r in await self.conn.fetch(REJECTS_SQL)]

    async def close(self) -> None:
        await self.pool.close()
        await self.conn.close()


@pytest.fixture
async def pipeline(v2_schema: tuple[str, str]) -> AsyncIterator[Pipeline]:
    kind, dsn = v2_schema
    opened = await Pipeline.open(dsn)
    assert opened.legacy == (kind == "legacy")
    if kind == "legacy":  # the harness itself: new sessions start in Brasília's zone
        probe = await asyncpg.connect(dsn)
        try:
            assert await probe.fetchval("SHOW timezone") == LEGACY_TIMEZONE
        finally:
            await probe.close()
    yield opened
    await opened.close()


def messages_of(cases: Sequence[Case]) -> list[tuple[str, bytes]]:
    return [(case.topic(PREFIX), m.payload) for case in cases for m in case.messages]


async def check_all(
    pipeline: Pipeline, cases: Sequence[Case], started: datetime, header: str
) -> None:
    rows, rejects = await pipeline.rows(), await pipeline.rejects()
    window = Window(started, datetime.now(UTC))
    report = Report()
    for case in cases:
        check_case(report, case, rows, rejects, window, prefix=PREFIX, legacy=pipeline.legacy)
    known = {c.equipment_id for c in cases}
    strays = [r for r in rows if r["equipamento_id"] not in known]
    report.check(not strays, f"rows of no case: {strays[:3]}")
    report.assert_clean(header)


def test_every_shared_fixture_has_a_case() -> None:
    """The cases cover every fixture file there is (a new file needs its expectations)."""
    files = {p.name for p in FIXTURES.iterdir() if p.is_file() and p.name != "README.md"}
    assert files == covered_files()


async def test_every_fixture_lands_as_domain_v2_says(pipeline: Pipeline) -> None:
    """All fixtures decoded in publish order and flushed: each row as DOMAIN v2 predicts
    (values, quality, time source, flags, gateway fields, legacy DECIMAL and UTC wall
    time), each reject with its reason; flushing the same batch again changes nothing."""
    cases = all_cases()
    started = datetime.now(UTC)
    await register_cases(pipeline.conn, cases, PREFIX)
    await pipeline.refresh()
    readings, rejects = await pipeline.ingest(messages_of(cases))
    await check_all(pipeline, cases, started, f"{pipeline.legacy=}")
    before = await pipeline.rows()
    await pipeline.flush(readings, rejects)  # the same batch again: ON CONFLICT, one key
    assert await pipeline.rows() == before


OUTLIER_CUTS = {
    # DOMAIN "Outlier guard": "The result must not depend on which instance flushes or
    # how batches are cut"; "previous" is the reading just before in device time.
    "one-batch": [[0, 1, 2, 3]],
    "one-each": [[0], [1], [2], [3]],
    "split-before-outlier": [[0, 1], [2, 3]],
    "outlier-arrives-last": [[0, 1, 3], [2]],
}


@pytest.mark.parametrize("cut", sorted(OUTLIER_CUTS))
async def test_outlier_guard_however_batches_are_cut(pipeline: Pipeline, cut: str) -> None:
    """The 3rd message's consumo_phf 10381.6 becomes 0.04 kWh whatever the batches."""
    (case,) = [c for c in m160_cases() if c.label == "m160-outlier-seq"]
    started = datetime.now(UTC)
    await register_cases(pipeline.conn, [case], PREFIX)
    await pipeline.refresh()
    topic = case.topic(PREFIX)
    decoder = Decoder(max_payload_bytes=64 * 1024)
    for batch in OUTLIER_CUTS[cut]:
        await pipeline.ingest([(topic, case.messages[i].payload) for i in batch], decoder)
    await check_all(pipeline, [case], started, cut)


async def test_outlier_guard_on_an_instance_that_did_not_see_the_previous_reading(
    pipeline: Pipeline,
) -> None:
    """A new leader that started after the 2nd reading was stored (its own decoder never
    saw it) still finds phf 10557.56 as the previous reading: the same 0.04 kWh."""
    (case,) = [c for c in m160_cases() if c.label == "m160-outlier-seq"]
    started = datetime.now(UTC)
    await register_cases(pipeline.conn, [case], PREFIX)
    await pipeline.refresh()
    topic = case.topic(PREFIX)
    await pipeline.ingest([(topic, m.payload) for m in case.messages[:2]])
    await pipeline.ingest([(topic, m.payload) for m in case.messages[2:]])  # a fresh decoder
    await check_all(pipeline, [case], started, "new instance")


async def test_outlier_without_a_previous_reading_falls_back_to_power(
    pipeline: Pipeline,
) -> None:
    """The outlier message alone: no previous phf, so the window is unknown; the outlier
    is dropped, no energia_total, so Pt: 5160 / 1000 * 30 / 3600 = 0.043 kWh."""
    payload = lines("m160_consumo_phf_outlier_sequence.jsonl")[2]
    case = Case(
        "m160-outlier-alone",
        M160,
        (Message(payload),),
        # "05/05/2026 23:55:30" Brasília = 2026-05-06T02:55:30Z; potencia = 5160 / 1000.
        (Row(datetime(2026, 5, 6, 2, 55, 30, tzinfo=UTC), "bom", 0.043, 5.16, 1, "same"),),
    )
    started = datetime.now(UTC)
    await register_cases(pipeline.conn, [case], PREFIX)
    await pipeline.refresh()
    await pipeline.ingest(messages_of([case]))
    await check_all(pipeline, [case], started, "outlier alone")


async def test_clockless_lines_of_one_device_a_second_apart(pipeline: Pipeline) -> None:
    """clockless.txt on ONE generic equipment, arriving 1 s apart (the README: the legacy
    key has second precision): eight rows, each at its own arrival time, with its raw
    value and reason (DOMAIN "Time")."""
    per_line = [c for c in generic_cases() if c.label.startswith("clockless-")]
    one = Case(
        "clockless-one-device",
        None,
        tuple(m for c in per_line for m in c.messages),
        tuple(r for c in per_line for r in c.rows),
    )
    await register_cases(pipeline.conn, [one], PREFIX)
    await pipeline.refresh()
    decoder = Decoder(max_payload_bytes=64 * 1024)
    first = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    readings: list[Reading] = []
    for n, message in enumerate(one.messages):
        arrival = first + timedelta(seconds=n)
        got, rejected = pipeline.decode(decoder, one.topic(PREFIX), message.payload, arrival)
        assert rejected == [], f"line {n + 1} rejected: {rejected[0].reason}"
        readings += got
    await pipeline.flush(readings, [])
    rows = [r for r in await pipeline.rows() if r["equipamento_id"] == one.equipment_id]
    report = Report()
    report.check(len(rows) == len(one.rows), f"{len(rows)} rows for 8 lines")
    for n, (row, expected) in enumerate(zip(rows, one.rows, strict=False)):
        arrival = first + timedelta(seconds=n)
        report.check(as_utc(row["timestamp_dados"]) == arrival, f"line {n + 1}: not at {arrival}")  # type: ignore[arg-type]
        dados = orjson.loads(str(row["dados"]))
        for key, want in expected.dados.items():
            if key.startswith("_timestamp_"):
                got = dados.get(key, ABSENT)
                report.check(got == want, f"line {n + 1}: dados.{key} {got!r} != {want!r}")
    report.assert_clean("one device")


async def test_the_future_bound_is_fifteen_minutes(pipeline: Pipeline) -> None:
    """DOMAIN "Time": a device time up to 15 min after arrival is the reading's time;
    beyond it the reading is stored at its arrival with `_timestamp_motivo` futuro."""
    case = Case("future-bound", None, ())
    await register_cases(pipeline.conn, [case], PREFIX)
    await pipeline.refresh()
    arrival = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    near = arrival + timedelta(minutes=14)  # 14 min ahead: usable
    far = arrival + timedelta(minutes=16)  # 16 min ahead: unusable, arrival time
    decoder = Decoder(max_payload_bytes=64 * 1024)
    readings: list[Reading] = []
    for n, ts in enumerate((near, far)):
        payload = orjson.dumps({"timestamp": int(ts.timestamp()), "power": n})
        got, rejected = pipeline.decode(decoder, case.topic(PREFIX), payload, arrival)
        assert rejected == [], rejected[0].reason
        readings += got
    await pipeline.flush(readings, [])
    rows = {
        orjson.loads(str(r["dados"]))["power"]: r
        for r in await pipeline.rows()
        if r["equipamento_id"] == case.equipment_id
    }
    assert sorted(rows) == [0, 1]
    assert as_utc(rows[0]["timestamp_dados"]) == near  # type: ignore[arg-type]
    assert as_utc(rows[1]["timestamp_dados"]) == arrival  # type: ignore[arg-type]
    far_dados = orjson.loads(str(rows[1]["dados"]))
    assert far_dados["_timestamp_motivo"] == "futuro"
    assert far_dados["_timestamp_bruto"] == int(far.timestamp())


async def test_rows_written_before_aupus_ha_share_the_key(pipeline: Pipeline) -> None:
    """DOMAIN v2 "The legacy database": the platform writes UTC wall time, the cloud
    fallback inserts `NUVEM_FUSION` rows; a reading of the same device and instant is
    the same key: one row, the one already there (ON CONFLICT DO NOTHING), no error."""
    flat, freq = (c for c in m160_cases() if c.label in ("m160-ton-flat", "m160-ton-flat-freq"))
    await register_cases(pipeline.conn, [flat, freq], PREFIX)
    await pipeline.refresh()
    # m160_ton_flat.json: "28/11/2026 21:00:30" Brasília = 2026-11-29 00:00:30 UTC;
    # m160_ton_flat_freq_fpt.json: 21:01:00 Brasília = 00:01:00 UTC.
    existing = {
        flat.equipment_id: (datetime(2026, 11, 29, 0, 0, 30), "MQTT"),
        freq.equipment_id: (datetime(2026, 11, 29, 0, 1, 0), "NUVEM_FUSION"),
    }
    for equipment_id, (wall_utc, fonte) in existing.items():
        at: datetime = wall_utc if pipeline.legacy else wall_utc.replace(tzinfo=UTC)
        await pipeline.conn.execute(
            "INSERT INTO equipamentos_dados (id, equipamento_id, timestamp_dados, dados, fonte, "
            "qualidade) VALUES ($1, $2, $3, '{\"antes\": true}', $4, 'bom')",
            cuid(f"before:{equipment_id}"),
            equipment_id,
            at,
            fonte,
        )
    await pipeline.ingest(messages_of([flat, freq]))
    rows = await pipeline.rows()
    for equipment_id, (wall_utc, fonte) in existing.items():
        mine = [r for r in rows if r["equipamento_id"] == equipment_id]
        assert len(mine) == 1, f"{equipment_id}: {len(mine)} rows for one instant"
        (row,) = mine
        assert row["id"] == cuid(f"before:{equipment_id}")
        assert as_utc(row["timestamp_dados"]) == wall_utc.replace(tzinfo=UTC)  # type: ignore[arg-type]
        assert row["fonte"] == fonte and orjson.loads(str(row["dados"])) == {"antes": True}


def test_the_checker_tells_a_right_legacy_row_from_a_wrong_one() -> None:
    """The harness itself: the legacy row DOMAIN v2 predicts for m160_ton_flat.json passes
    (UTC wall time, DECIMAL(10,3) values, the exact ones in dados); the same row written
    in Brasília wall time with v1's NULL energy fails on exactly those columns."""
    (case,) = [c for c in m160_cases() if c.label == "m160-ton-flat"]
    written = datetime.now(UTC).replace(microsecond=0)
    dados = orjson.loads(case.messages[0].payload)
    right = {
        "equipamento_id": case.equipment_id,
        "timestamp_dados": datetime(2026, 11, 29, 0, 0, 30),  # naive UTC wall time
        "timestamp_fim": datetime(2026, 11, 29, 0, 0, 30),
        "created_at": written.replace(tzinfo=None),
        "dados": orjson.dumps(dados).decode(),
        "fonte": "MQTT",
        "qualidade": "bom",
        "energia_kwh": Decimal("0.062"),  # 0.0618 in DECIMAL(10,3)
        "potencia_ativa_kw": Decimal("7.415"),  # 7.4145
        "num_leituras": 1,
    }
    window = Window(written - timedelta(seconds=2), written + timedelta(seconds=2))
    report = Report()
    check_case(report, case, [right], [], window, prefix=PREFIX, legacy=True)
    assert report.failures == []
    brasilia = {
        **right,
        "timestamp_dados": datetime(2026, 11, 28, 21, 0, 30),
        "timestamp_fim": None,
        "created_at": (written - timedelta(hours=3)).replace(tzinfo=None),
        "energia_kwh": None,
        "potencia_ativa_kw": Decimal("7.416"),
    }
    report = Report()
    check_case(report, case, [brasilia], [], window, prefix=PREFIX, legacy=True)
    wrong = sorted(f.split(": ")[1].split(" ")[0] for f in report.failures)
    assert wrong == [
        "created_at",
        "energia_kwh",
        "potencia_ativa_kw",
        "timestamp_dados",
        "timestamp_fim",
    ]
