"""Hostile but valid JSON through decode → buffer → rollup → store.flush, on a real
PostgreSQL (issue 17: "no numeric value can break a rollup", "the writer survives any
item").

Huge and tiny numbers, deep nesting, odd unicode, duplicate keys, every timestamp form
in the past and the future, in the three payload families. For every example: nothing
raises out of the flush path, every message ends stored or rejected with a reason, and
nothing is stored twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from aupus_ha.config import load_settings
from aupus_ha.database.connection import create_pool
from aupus_ha.database.migrate import apply_migrations
from aupus_ha.database.queries import Queries
from aupus_ha.decoding.messages import Decoder
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.buffer import PendingBuffer
from aupus_ha.pipeline.readings import Decoded, Equipment, Reading, Reject
from aupus_ha.pipeline.store import Store

NOW = datetime.now(UTC).replace(microsecond=0)
EQUIPMENT = {
    "t/inv": [Equipment("inv-1", "t/inv")],
    "t/m160": [Equipment("m160-1", "t/m160")],
    "t/gen": [Equipment("gen-1", "t/gen"), Equipment("gen-2", "t/gen")],
    "t/unknown": [],
}

# --- payloads -----------------------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",)),  # orjson cannot encode surrogates
    max_size=6,
) | st.sampled_from(["\u202e", "\ufeff", "\U0001f600", "e\u0301", "\u00a0", "\\u0000", ""])
numbers = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),  # up to ±1.8e308
    st.floats(min_value=-1e-300, max_value=1e-300, allow_nan=False),  # tiny, subnormal
    st.sampled_from([1e308, -1e308, 1e15, 1e16, 5e-324, 0.0, -0.0]),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, odd_text)
values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=8,
)


def _iso(at: datetime, form: str) -> str:
    if form == "z":
        return at.isoformat().replace("+00:00", "Z")
    if form == "offset":
        return at.astimezone(UTC).isoformat()
    if form == "naive":
        return at.replace(tzinfo=None).isoformat()
    return at.strftime("%d/%m/%Y %H:%M:%S")  # the Brazilian text form


instants = st.sampled_from(
    [
        NOW - timedelta(minutes=5),
        NOW - timedelta(days=400),
        datetime(1999, 12, 31, 23, 59, 59, tzinfo=UTC),  # before the earliest year
        datetime(1970, 1, 1, tzinfo=UTC),
        NOW + timedelta(hours=3),
        NOW + timedelta(days=3),  # beyond the future tolerance
        datetime(2100, 1, 1, tzinfo=UTC),
    ]
) | st.builds(lambda s: NOW - timedelta(seconds=s), st.floats(0, 3600, allow_nan=False))
timestamps = st.one_of(
    st.builds(lambda at: at.timestamp(), instants),  # epoch seconds
    st.builds(lambda at: int(at.timestamp() * 1000), instants),  # epoch milliseconds
    st.builds(lambda at: str(int(at.timestamp())), instants),  # a number in a string
    st.builds(_iso, instants, st.sampled_from(["z", "offset", "naive", "br"])),
    st.just(None),
    leaves,  # any other JSON value
)


def _object_text(pairs: list[tuple[str, Any]]) -> bytes:
    """A JSON object from pairs: the same key may come twice (valid JSON, last wins)."""
    return b"{" + b",".join(orjson.dumps(k) + b":" + orjson.dumps(v) for k, v in pairs) + b"}"


def _group(name: str) -> st.SearchStrategy[tuple[str, Any]]:
    return st.tuples(st.just(name), st.dictionaries(st.sampled_from(["a", "b"]), numbers))


@st.composite
def inverter(draw: st.DrawFn) -> tuple[str, bytes]:
    power = {"active_total": draw(numbers), **draw(st.dictionaries(odd_text, numbers))}
    pairs = [("timestamp", draw(timestamps)), ("power", power)]
    pairs += draw(st.lists(st.one_of(*(_group(g) for g in rollup.MEAN_GROUPS)), max_size=3))
    pairs += draw(st.lists(st.tuples(odd_text, values), max_size=3))
    if draw(st.booleans()):
        pairs.append(("power", {"active_total": draw(numbers)}))  # a duplicate key
    return "t/inv", _object_text(pairs)


@st.composite
def m160(draw: st.DrawFn) -> tuple[str, bytes]:
    resumo = {
        "timestamp": draw(timestamps),
        "Va": draw(numbers),
        "Ia": draw(numbers),
        "Pt": draw(numbers),
        "energia_total": draw(numbers | leaves),
        "total_leituras": draw(numbers | leaves),
    }
    return "t/m160", _object_text(
        [("Resumo", resumo), *draw(st.lists(st.tuples(odd_text, values), max_size=2))]
    )


@st.composite
def generic(draw: st.DrawFn) -> tuple[str, bytes]:
    pairs = [
        ("timestamp", draw(timestamps)),
        *draw(st.lists(st.tuples(odd_text, values), max_size=4)),
    ]
    depth = draw(st.sampled_from([0, 0, 0, 50, 253, 254, 300]))
    if depth:
        pairs.append(("deep", None))  # placeholder, replaced by raw nesting below
        text = _object_text(pairs)
        return "t/gen", text.replace(
            b'"deep":null', b'"deep":' + b"[" * depth + b"1" + b"]" * depth
        )
    return draw(st.sampled_from(["t/gen", "t/unknown"])), _object_text(pairs)


messages = st.lists(st.one_of(inverter(), m160(), generic()), min_size=1, max_size=10).flatmap(
    # Each message may arrive twice (a redelivery): stored once all the same.
    lambda ms: st.lists(st.sampled_from(ms), min_size=len(ms), max_size=len(ms) + 3).map(
        lambda extra: ms + extra
    )
)

# --- the run ---------------------------------------------------------------------------


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


Batch = tuple[list[Reading], list[Reject]]


async def _flush_all(store: Store, buffer: PendingBuffer) -> list[Batch]:
    batches = []
    for _ in range(20):
        readings, rejects = buffer.oldest(5000, None)
        if not (readings or rejects):
            return batches
        await store.flush(readings, rejects, epoch=1)  # must not raise
        buffer.committed(readings, rejects)
        batches.append((readings, rejects))
    raise AssertionError("the buffer did not drain")


async def _reflush_changes_nothing(store: Store, batches: list[Batch]) -> None:
    """A successor flushing the same entries again writes no row (defect 10)."""
    for readings, rejects in batches:
        result = await store.flush(readings, rejects, epoch=1)
        assert (result.rows, result.merged) == (0, 0), result


async def _check(conn: asyncpg.Connection, decoded: list[Decoded]) -> None:
    rows = await conn.fetch(
        "SELECT equipamento_id, timestamp_dados, num_leituras, dados::text AS dados "
        "FROM equipamentos_dados"
    )
    stored = {(r["equipamento_id"], r["timestamp_dados"]): r for r in rows}
    rejected = {
        (r["topic"], r["payload_sha256"]): r["reason"]
        for r in await conn.fetch("SELECT topic, payload_sha256, reason FROM ingest_rejects")
    }
    assert all(reason for reason in rejected.values()), rejected
    samples: dict[tuple[str, datetime], set[str]] = {}
    for d in decoded:
        for reject in d.rejects:
            assert reject.key in rejected, f"reject not stored: {reject.reason}"
        for reading in d.readings:
            refused = (f"equipamento/{reading.equipamento_id}", _sha(reading.dados))
            if refused in rejected:
                continue  # the store refused it: kept as a reject with its reason
            _assert_stored(reading, stored, samples)
    for key, keys in samples.items():
        row_samples = orjson.loads(stored[key]["dados"])["samples"]
        assert keys <= set(row_samples)
        assert stored[key]["num_leituras"] == len(row_samples)  # each sample once


def _assert_stored(
    reading: Reading,
    stored: dict[tuple[str, datetime], Any],
    samples: dict[tuple[str, datetime], set[str]],
) -> None:
    key = (reading.equipamento_id, reading.timestamp_dados)
    if not reading.matchable:
        # Timed by arrival: a redelivery arrives later but is the same reading (the
        # buffer matches it by content), so look for its content, not its key.
        assert _stored_by_content(reading, stored), f"neither stored nor rejected: {key}"
        return
    assert key in stored, f"neither stored nor rejected: {key}"
    if reading.sample_at is not None:
        samples.setdefault(key, set()).add(rollup.sample_key(reading.sample_at))


def _exact(text: bytes | str) -> Any:
    """JSON with exact numbers, as jsonb compares them."""
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def _stored_by_content(reading: Reading, stored: dict[tuple[str, datetime], Any]) -> bool:
    content = _exact(reading.dados)
    for (equip, _), row in stored.items():
        if equip != reading.equipamento_id:
            continue
        dados = _exact(row["dados"])
        if reading.sample_at is None and dados == content:
            return True
        if reading.sample_at is not None and content in dados.get("samples", {}).values():
            return True
    return False


def _run(loop: asyncio.AbstractEventLoop, make: Callable[[], Any]) -> Any:
    return loop.run_until_complete(make())


def test_hostile_json_is_stored_or_rejected_once(database_url: str) -> None:
    """Property: for hostile but valid JSON, the flush path never raises, every message
    is stored or rejected with a reason, and nothing is stored twice."""
    loop = asyncio.new_event_loop()

    async def open_db() -> tuple[asyncpg.Connection, asyncpg.Pool]:
        conn = await asyncpg.connect(database_url)
        await apply_migrations(conn)
        await conn.execute("INSERT INTO ha_leadership (cluster_name, epoch) VALUES ('aupus', 1)")
        await conn.executemany(
            "INSERT INTO equipamentos (id, nome, topico_mqtt, mqtt_habilitado) "
            "VALUES ($1, $1, $2, true)",
            [(e.id, e.topic) for group in EQUIPMENT.values() for e in group],
        )
        env = {"DATABASE_URL": database_url, "MQTT_MODE": "disabled"}
        return conn, await create_pool(load_settings(env), "aupus-ha/hostile")

    conn, pool = _run(loop, open_db)
    store = Store(pool, Queries(), cluster_name="aupus", instance_id="t")

    @settings(
        max_examples=60,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(batch=messages)
    def one_example(batch: list[tuple[str, bytes]]) -> None:
        async def example() -> None:
            await conn.execute("TRUNCATE equipamentos_dados, ingest_rejects")
            decoder = Decoder(max_payload_bytes=64 * 1024)
            buffer = PendingBuffer(10_000)
            decoded = []
            for topic, payload in batch:
                d = decoder.decode(topic, payload, EQUIPMENT[topic], datetime.now(UTC))
                buffer.add(d, time.monotonic())
                decoded.append(d)
            batches = await _flush_all(store, buffer)
            assert len(buffer) == 0
            await _check(conn, decoded)
            await _reflush_changes_nothing(store, batches)

        _run(loop, example)

    try:
        one_example()
    finally:
        _run(loop, pool.close)
        _run(loop, conn.close)
        loop.close()
