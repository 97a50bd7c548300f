"""The M-160 outlier guard through a real flush (DOMAIN v2 "M-160 summary"): the same rows
whichever instance flushes and however the batches are cut, on the fresh schema and on
the legacy one (`DECIMAL(10,3)` columns, `timestamp(0)` UTC wall time, TimeZone
America/Sao_Paulo: tests/legacy_schema.py).

Each "instance" is its own `Decoder` and its own `Store` over its own pool, as two
`aupus-ha run` processes would be: nothing is shared but the database.

m160_consumo_phf_outlier_sequence.jsonl, by hand (Brasília text time = UTC − 3 h):
  line  time (UTC)            phf        consumo_phf   energia_kwh
  1     2026-05-06 02:54:30   10557.52   0.041         0.041 (consumo_phf > 0)
  2     2026-05-06 02:55:00   10557.56   0.043         0.043
  3     2026-05-06 02:55:30   10557.6    10381.6 > 5   max(0, 10557.6 − 10557.56) = 0.04
  4     2026-05-06 02:56:00   10557.64   0.044         0.044
  potencia_ativa_kw = Pt 5160 / 1000 = 5.16 on every line; num_leituras 1 (no
  total_leituras); quality bom (Va, Ia, Pt > 0); line 3's dados: consumo_phf 0.04,
  _consumo_phf_bruto 10381.6.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import asyncpg
import orjson
import pytest

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline.readings import Equipment, Reading
from aupus_ha.pipeline.store import KeyConvention, Store, detect_convention
from tests.legacy_schema import cuid, ensure_type, register_equipment

CLUSTER = "m160-outlier"
FIXTURE = (
    Path(__file__).resolve().parents[1] / "fixtures" / "m160_consumo_phf_outlier_sequence.jsonl"
)
LINES = [line for line in FIXTURE.read_bytes().splitlines() if line.strip()]
ARRIVAL = datetime(2026, 5, 6, 3, 0, tzinfo=UTC)  # after the last line's time

# (UTC time, energia_kwh, consumo_phf in dados, _consumo_phf_bruto or None), by hand above.
EXPECTED = [
    (datetime(2026, 5, 6, 2, 54, 30, tzinfo=UTC), 0.041, 0.041, None),
    (datetime(2026, 5, 6, 2, 55, 0, tzinfo=UTC), 0.043, 0.043, None),
    (datetime(2026, 5, 6, 2, 55, 30, tzinfo=UTC), 0.04, 0.04, 10381.6),
    (datetime(2026, 5, 6, 2, 56, 0, tzinfo=UTC), 0.044, 0.044, None),
]
ROWS_SQL = (
    "SELECT timestamp_dados, timestamp_fim, dados::text AS dados, fonte, qualidade, "
    "energia_kwh, potencia_ativa_kw, num_leituras FROM equipamentos_dados "
    "WHERE equipamento_id = $1 ORDER BY timestamp_dados"
)


def every_cut(n: int) -> list[list[list[int]]]:
    """Every way to cut messages 0..n-1, kept in publish order, into consecutive batches."""
    cuts = []
    for mask in itertools.product((False, True), repeat=n - 1):
        batches, current = [], [0]
        for i, cut_here in enumerate(mask, start=1):
            if cut_here:
                batches.append(current)
                current = []
            current.append(i)
        batches.append(current)
        cuts.append(batches)
    return cuts


@dataclass
class Cluster:
    """The database, and a way to start "instances" (decoder + store + pool) on it."""

    dsn: str
    conn: asyncpg.Connection
    convention: KeyConvention
    queries: Queries
    pools: list[asyncpg.Pool]

    async def instance(self, n: int) -> tuple[Decoder, Store]:
        settings = load_settings({"DATABASE_URL": self.dsn, "MQTT_MODE": "disabled"}, dotenv=None)
        pool = await create_pool(settings, f"aupus-ha/m160-{n}")
        self.pools.append(pool)
        store = Store(pool, self.queries, cluster_name=CLUSTER, instance_id=f"m160-{n}")
        return Decoder(max_payload_bytes=64 * 1024), store

    async def meter(self, label: str) -> Equipment:
        type_id = await ensure_type(self.conn, "M-160")
        equipment_id = cuid(label)
        await register_equipment(self.conn, equipment_id, f"m160/{label}", type_id)
        return Equipment(equipment_id, f"m160/{label}", type_code="M-160")

    def decode(self, decoder: Decoder, meter: Equipment, payload: bytes) -> list[Reading]:
        decoded = decoder.decode(meter.topic, payload, [meter], ARRIVAL)
        assert decoded.rejects == [], decoded.rejects[0].reason
        return [self.convention.apply(r) for r in decoded.readings]

    async def rows(self, meter: Equipment) -> list[dict[str, object]]:
        return [dict(r) for r in await self.conn.fetch(ROWS_SQL, meter.id)]


@pytest.fixture
async def cluster(v2_schema: tuple[str, str]) -> AsyncIterator[Cluster]:
    _, dsn = v2_schema
    conn = await asyncpg.connect(dsn)
    await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ($1, 1)", CLUSTER)
    convention = await detect_convention(conn, Queries()["column_types"])
    queries = convention.queries()
    opened = Cluster(dsn, conn, convention, queries, [])
    yield opened
    for pool in opened.pools:
        await pool.close()
    await conn.close()


def comparable(rows: Sequence[dict[str, object]]) -> list[tuple[object, ...]]:
    """A meter's rows without what names the meter: dados as JSON values."""
    return [
        (
            r["timestamp_dados"],
            r["timestamp_fim"],
            orjson.loads(str(r["dados"])),
            r["fonte"],
            r["qualidade"],
            r["energia_kwh"],
            r["potencia_ativa_kw"],
            r["num_leituras"],
        )
        for r in rows
    ]


def check_expected(rows: Sequence[dict[str, object]], legacy: bool) -> None:
    assert len(rows) == len(EXPECTED)
    for row, (at, energia, consumo, bruto) in zip(rows, EXPECTED, strict=True):
        stored_at = row["timestamp_dados"]
        assert isinstance(stored_at, datetime)
        utc_at = stored_at.replace(tzinfo=UTC) if legacy else stored_at
        assert utc_at == at
        assert row["timestamp_fim"] == stored_at
        assert (row["qualidade"], row["num_leituras"]) == ("bom", 1)
        if legacy:  # DECIMAL(10,3): 0.04 -> 0.040, 5.16 -> 5.160
            assert row["energia_kwh"] == Decimal(str(energia)).quantize(Decimal("0.001"))
            assert row["potencia_ativa_kw"] == Decimal("5.160")
        else:
            assert row["energia_kwh"] == pytest.approx(energia, abs=1e-9)
            assert row["potencia_ativa_kw"] == pytest.approx(5.16)
        dados = orjson.loads(str(row["dados"]))
        assert dados["consumo_phf"] == consumo  # the exact value, whatever the column
        assert dados.get("_consumo_phf_bruto") == bruto


async def test_the_same_rows_however_batches_are_cut(cluster: Cluster) -> None:
    """All 8 ways to cut the 4 messages (publish order) into batches, each batch decoded
    and flushed by a fresh instance: every cut stores exactly the rows derived by hand."""
    results = []
    instance = 0
    for cut in every_cut(len(LINES)):
        meter = await cluster.meter(f"cut-{cut}")
        for batch in cut:
            instance += 1
            decoder, store = await cluster.instance(instance)
            readings = [r for i in batch for r in cluster.decode(decoder, meter, LINES[i])]
            await store.flush(readings, [], epoch=1)
        rows = await cluster.rows(meter)
        check_expected(rows, cluster.convention.legacy_timestamps)
        results.append(comparable(rows))
    assert all(result == results[0] for result in results)


async def test_a_split_batch_keeps_the_batch_previous(cluster: Cluster) -> None:
    """The outlier first, a reading the database refuses (jsonb has no \\u0000), then
    its previous reading: the flush bisects and stores the outlier alone BEFORE its
    previous, yet uses the previous from the whole batch: 0.04 kWh, not the Pt fallback
    5160 / 1000 * 30 / 3600 = 0.043."""
    meter = await cluster.meter("split")
    decoder, store = await cluster.instance(0)
    readings = [r for line in LINES for r in cluster.decode(decoder, meter, line)]
    first, second, outlier, fourth = readings
    # Already in the column's convention, like `outlier`: 10 s after it (not its previous).
    poison = Reading(meter.id, outlier.timestamp_dados + timedelta(seconds=10), b'{"a":"\\u0000"}')
    result = await store.flush([outlier, poison, second, first, fourth], [], epoch=1)
    assert (result.rows, result.refused) == (4, 1)
    check_expected(await cluster.rows(meter), cluster.convention.legacy_timestamps)


async def test_the_previous_row_stored_by_another_writer(cluster: Cluster) -> None:
    """The previous reading was stored by the platform (any writer): its dados phf is the
    previous counter. Outlier alone in its batch, previous row phf 10557.5 stored 30 s
    before: max(0, 10557.6 − 10557.5) = 0.1 kWh (6-decimal rounding keeps float noise
    out of dados)."""
    meter = await cluster.meter("other-writer")
    at = EXPECTED[1][0]
    stored_at = at.replace(tzinfo=None) if cluster.convention.legacy_timestamps else at
    await cluster.conn.execute(
        "INSERT INTO equipamentos_dados (id, equipamento_id, timestamp_dados, dados, fonte) "
        "VALUES ($1, $2, $3, $4, 'NUVEM_FUSION')",
        cuid("other-writer-row"),
        meter.id,
        stored_at,
        '{"phf": 10557.5}',
    )
    decoder, store = await cluster.instance(0)
    await store.flush(cluster.decode(decoder, meter, LINES[2]), [], epoch=1)
    (_, row) = await cluster.rows(meter)
    assert orjson.loads(str(row["dados"]))["consumo_phf"] == 0.1
    assert float(row["energia_kwh"]) == pytest.approx(0.1)  # type: ignore[arg-type]


async def test_a_previous_row_without_phf_leaves_the_window_unknown(cluster: Cluster) -> None:
    """The stored previous row has no phf (another writer's dados): the window is
    unknown, consumo_phf null, energy from Pt: 5160 / 1000 * 30 / 3600 = 0.043 kWh. An
    older row WITH phf further back is not used (it would count two windows)."""
    meter = await cluster.meter("no-phf")
    legacy = cluster.convention.legacy_timestamps
    for n, (label, dados) in enumerate((("older", '{"phf": 1.0}'), ("prev", '{"Pt": 1}'))):
        at = EXPECTED[n][0]
        await cluster.conn.execute(
            "INSERT INTO equipamentos_dados (id, equipamento_id, timestamp_dados, dados, fonte) "
            "VALUES ($1, $2, $3, $4, 'MQTT')",
            cuid(f"no-phf-{label}"),
            meter.id,
            at.replace(tzinfo=None) if legacy else at,
            dados,
        )
    decoder, store = await cluster.instance(0)
    await store.flush(cluster.decode(decoder, meter, LINES[2]), [], epoch=1)
    row = (await cluster.rows(meter))[-1]
    dados = orjson.loads(str(row["dados"]))
    assert (dados["consumo_phf"], dados["_consumo_phf_bruto"]) == (None, 10381.6)
    assert float(row["energia_kwh"]) == pytest.approx(0.043, abs=5e-4)  # type: ignore[arg-type]


def clockless(line: bytes) -> bytes:
    """The line as a TON without NTP sends it: `"timestamp": "sem_ntp"`."""
    obj = orjson.loads(line)
    obj["timestamp"] = "sem_ntp"
    return orjson.dumps(obj)


async def test_a_clockless_outlier_is_stored_once_across_a_failover(cluster: Cluster) -> None:
    """A meter without NTP: its readings are timed by each instance's own arrival. The
    old leader stored lines 2 and 3 (the outlier resolved: 10557.6 − 10557.56 = 0.04);
    the new leader's copies arrived 1.4 s later. Its copy of line 3 must not take the
    old leader's copy of the SAME message as its previous reading (10557.6 − 10557.6 =
    0, then Pt: 0.043): it resolves to the same dados, is matched by content, and the
    message is stored once."""
    meter = await cluster.meter("clockless-failover")
    lines = [clockless(LINES[1]), clockless(LINES[2])]
    first_arrival = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)
    for n, lag in enumerate((timedelta(0), timedelta(seconds=1.4))):  # old, new leader
        decoder, store = await cluster.instance(10 + n)
        readings = []
        for k, payload in enumerate(lines):
            at = first_arrival + timedelta(seconds=30 * k) + lag
            decoded = decoder.decode(meter.topic, payload, [meter], at)
            readings += [cluster.convention.apply(r) for r in decoded.readings]
        await store.flush(readings, [], epoch=1)
    rows = await cluster.rows(meter)
    assert len(rows) == 2, [str(r["dados"])[:60] for r in rows]
    dados = orjson.loads(str(rows[1]["dados"]))
    assert (dados["consumo_phf"], dados["_consumo_phf_bruto"]) == (0.04, 10381.6)


async def test_a_power_no_legacy_column_holds_is_refused_alone(cluster: Cluster) -> None:
    """Pt 1e11 W: potencia = 1e11 / 1000 = 1e8 kW, within the decoder's ±1e15 bound but
    beyond DECIMAL(10,3) (max 9,999,999.999): the legacy database refuses that row, the
    flush isolates it as a `store_refused` reject and stores the other four; the fresh
    schema (double precision) stores all five."""
    meter = await cluster.meter("huge-power")
    huge = orjson.loads(LINES[3])
    huge.update(Pt=1e11, timestamp="05/05/2026 23:56:30")
    decoder, store = await cluster.instance(0)
    payloads = [*LINES, orjson.dumps(huge)]
    readings = [r for p in payloads for r in cluster.decode(decoder, meter, p)]
    result = await store.flush(readings, [], epoch=1)
    rows = await cluster.rows(meter)
    if cluster.convention.legacy_timestamps:
        assert (result.rows, result.refused, len(rows)) == (4, 1, 4)
        check_expected(rows, legacy=True)
    else:
        assert (result.rows, result.refused, len(rows)) == (5, 0, 5)
        assert rows[4]["potencia_ativa_kw"] == 1e8


async def test_the_largest_count_fits_the_integer_column(cluster: Cluster) -> None:
    """total_leituras 2^31−1 = 2147483647, the `integer` column's maximum: stored as is on
    both schemas (2^31 is refused by the decoder: tests/unit/test_m160.py)."""
    meter = await cluster.meter("largest-count")
    payload = orjson.dumps({**orjson.loads(LINES[0]), "total_leituras": 2**31 - 1})
    decoder, store = await cluster.instance(0)
    await store.flush(cluster.decode(decoder, meter, payload), [], epoch=1)
    (row,) = await cluster.rows(meter)
    assert row["num_leituras"] == 2_147_483_647
