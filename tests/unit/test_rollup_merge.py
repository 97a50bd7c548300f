"""Which rollup rows a flush writes (aupus_ha.pipeline.rollup_merge), without a database.

The integration tests (test_hostile_flush, test_clockless_flush, test_fixtures_v2) run
the same rules through PostgreSQL; these pin them down fast: a new minute is written,
a stored minute that gains a sample is merged, one that gains nothing is left alone.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson

from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.readings import Reading
from aupus_ha.pipeline.rollup_merge import group_by_minute, rollup_writes, same_json

MINUTE = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
EPOCH = 7


def _sample(device: str, second: int, power: float, *, matchable: bool = True) -> Reading:
    return Reading(
        equipamento_id=device,
        timestamp_dados=MINUTE,
        dados=orjson.dumps({"power": {"active_total": power}}),
        sample_at=MINUTE + timedelta(seconds=second),
        matchable=matchable,
    )


def _stored_row(*samples: Reading) -> bytes:
    """The dados a minute holds once these samples were written."""
    batch = group_by_minute(list(samples))
    writes, _ = rollup_writes(batch, {}, 10.0, EPOCH)
    (write,) = writes
    dados = write[2]
    assert isinstance(dados, bytes)
    return dados


def test_a_new_minute_is_written_once_with_every_sample() -> None:
    batch = group_by_minute([_sample("a", 0, 1.0), _sample("a", 30, 3.0), _sample("b", 5, 2.0)])
    writes, merged = rollup_writes(batch, {}, 10.0, EPOCH)
    assert merged == 0
    assert sorted((w[0], w[6], w[8]) for w in writes) == [("a", 2, EPOCH), ("b", 1, EPOCH)]


def test_a_stored_minute_gaining_a_sample_is_merged() -> None:
    stored = {("a", MINUTE): _stored_row(_sample("a", 0, 1.0))}
    batch = group_by_minute([_sample("a", 30, 3.0)])
    writes, merged = rollup_writes(batch, stored, 10.0, EPOCH)
    assert merged == 1 and len(writes) == 1
    dados = writes[0][2]
    assert isinstance(dados, bytes)
    samples, _ = rollup.samples_of(dados)
    assert len(samples) == 2


def test_a_stored_minute_gaining_nothing_is_left_alone() -> None:
    """A redelivered sample (same name) or a copy timed by arrival (same content within
    the window) does not rewrite the row, nor move its ha_epoch."""
    first = _sample("a", 0, 1.0, matchable=False)
    stored = {("a", MINUTE): _stored_row(first)}
    again = group_by_minute([first, _sample("a", 3, 1.0, matchable=False)])
    assert rollup_writes(again, stored, 10.0, EPOCH) == ([], 0)
    beyond = group_by_minute([_sample("a", 20, 1.0, matchable=False)])
    assert rollup_writes(beyond, stored, 10.0, EPOCH)[1] == 1  # outside the window: a sample


def test_same_json_compares_like_jsonb() -> None:
    assert same_json(b'{"a": 1, "b": [1e23]}', b'{"b": [100000000000000000000000], "a": 1}')
    assert not same_json(b'{"a": 1.0000000000000002}', b'{"a": 1}')
