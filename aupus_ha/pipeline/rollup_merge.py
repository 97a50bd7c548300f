"""Which rollup rows a flush writes: a batch's inverter samples merged into their minutes.

`rollup` computes one minute's row from a set of samples; this module decides, for one
flush, what each touched minute's set is and whether its row must be written. A minute
already stored is rebuilt from the union of its stored samples and the batch's, so a
late sample still counts; a sample timed by arrival (no device clock) that another
instance or a redelivery already brought is recognised by its content and counts once;
a minute whose row would not change is not written at all (nor its `ha_epoch` moved).
It is pure (no SQL): the store reads the stored rows `FOR UPDATE`, asks `rollup_writes`
and runs the upsert, so the merge rules can be tested without a database.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

import orjson

from aupus_ha import constants
from aupus_ha.pipeline import rollup
from aupus_ha.pipeline.readings import Reading

MinuteKey = tuple[str, datetime]  # (equipamento_id, the minute's timestamp_dados)
# One upsert_rollup row: id, minute, dados, qualidade, energia_kwh, potencia_ativa_kw,
# num_leituras, timestamp_fim, ha_epoch.
RollupWrite = tuple[object, ...]


@dataclass(slots=True)
class BatchMinutes:
    """A batch's samples grouped by minute, with what the merge must know of each."""

    samples: dict[MinuteKey, dict[str, rollup.Sample]] = field(default_factory=dict)
    ends: dict[MinuteKey, datetime | None] = field(default_factory=dict)
    invalid: set[str] = field(default_factory=set)  # samples that failed their schema
    clockless: set[str] = field(default_factory=set)  # timed by arrival: matched by content


def group_by_minute(samples: Sequence[Reading]) -> BatchMinutes:
    batch = BatchMinutes()
    for r in samples:
        assert r.sample_at is not None
        key = (r.equipamento_id, r.timestamp_dados)
        name = rollup.sample_key(r.sample_at)
        batch.samples.setdefault(key, {})[name] = orjson.loads(r.dados)
        batch.ends[key] = r.timestamp_fim
        if r.qualidade == constants.QUALITY_BAD:
            batch.invalid.add(name)
        if not r.matchable:
            batch.clockless.add(name)
    return batch


def rollup_writes(
    batch: BatchMinutes, stored: Mapping[MinuteKey, bytes], window_s: float, epoch: int
) -> tuple[list[RollupWrite], int]:
    """The rows to upsert, and how many of them replace a stored row (merged)."""
    writes: list[RollupWrite] = []
    merged = 0
    for key, arrived in batch.samples.items():
        old_samples, invalid = rollup.samples_of(stored.get(key))
        new = without_copies(arrived, old_samples, batch.clockless, window_s)
        invalid |= batch.invalid.intersection(new)
        row = rollup.build_row(rollup.merge_samples(old_samples, new), invalid)
        if key in stored:
            if same_json(row.dados, stored[key]):
                continue  # every sample was already in: leave the row (and ha_epoch)
            merged += 1
        writes.append(
            (
                key[0],
                key[1],
                row.dados,
                row.qualidade,
                row.energia_kwh,
                row.potencia_ativa_kw,
                row.num_leituras,
                batch.ends[key],
                epoch,
            )
        )
    return writes, merged


def same_json(ours: bytes, stored: bytes) -> bool:
    """Equal as JSON values, the way jsonb compares them: jsonb gives its own normalised
    text back (spaces, key order, `1e23` spelled out in digits), never orjson's bytes,
    and its numbers are exact decimals (a double parsed back from 24 digits may differ
    in its last bit), so numbers are compared as Decimal."""
    return bool(_exact_json(ours) == _exact_json(stored))


def _exact_json(text: bytes) -> object:
    return json.loads(text, parse_float=Decimal, parse_int=Decimal)


def without_copies(
    new: dict[str, rollup.Sample],
    stored: Mapping[str, rollup.Sample],
    clockless: set[str],
    window_s: float,
) -> dict[str, rollup.Sample]:
    """A minute's new samples without the copies among those timed by arrival.

    Such a sample is named by this instance's arrival instant, so another instance's
    copy of it (or a redelivery) has another name and would count twice in the minute.
    It is a copy when a sample already in the row, or earlier in the batch (a copy
    itself included, like the plain readings' `lag` in insert_clockless_from_staging),
    has equal content (as jsonb compares it) and an instant within `window_s`."""
    if clockless.isdisjoint(new):
        return new
    window = timedelta(seconds=window_s)
    seen = [(_sample_instant(k), _exact_json(orjson.dumps(s))) for k, s in stored.items()]
    kept: dict[str, rollup.Sample] = {}
    for name in sorted(new):  # time order: the earliest copy is the one kept
        at, content = _sample_instant(name), _exact_json(orjson.dumps(new[name]))
        copy = name in clockless and _seen_near(seen, at, content, window)
        seen.append((at, content))
        if not copy:
            kept[name] = new[name]
    return kept


def _seen_near(
    seen: list[tuple[datetime | None, object]],
    at: datetime | None,
    content: object,
    window: timedelta,
) -> bool:
    return at is not None and any(
        t is not None and abs(at - t) <= window and c == content for t, c in seen
    )


def _sample_instant(name: str) -> datetime | None:
    """The instant a sample is named by (`rollup.sample_key`); None if not one."""
    try:
        at = datetime.fromisoformat(name)
    except ValueError:
        return None
    return at if at.tzinfo is not None else None
