"""The pending buffer: dedup by natural key, order, trimming, bounds."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aupus_ha.buffer import PendingBuffer
from aupus_ha.readings import Decoded, Reading, Reject

T0 = datetime(2026, 11, 28, 21, 0, tzinfo=UTC)


def reading(i: int, *, matchable: bool = True, equip: str = "e1") -> Reading:
    return Reading(equip, T0 + timedelta(seconds=i), b"{}", matchable=matchable)


def test_same_key_is_kept_once() -> None:
    """A redelivered message (same natural key) does not become a second pending row."""
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1), reading(1), reading(2)]), 0.0)
    assert buf.readings_pending == 2 and buf.stats.duplicates == 1


def test_oldest_first_and_commit_removes() -> None:
    """Batches are the oldest entries; committing removes exactly them."""
    buf = PendingBuffer(100)
    for i in range(10):
        buf.add(Decoded([reading(i)]), float(i))
    batch, _ = buf.oldest(3)
    assert [r.timestamp_dados.second for r in batch] == [0, 1, 2]
    buf.committed(batch, [])
    assert buf.readings_pending == 7 and buf.stats.committed == 3


def test_older_than_is_a_prefix() -> None:
    """A standby probes only entries older than the cutoff."""
    buf = PendingBuffer(100)
    for i in range(10):
        buf.add(Decoded([reading(i)]), float(i))
    assert len(buf.readings_older_than(4.0, 100)) == 5


def test_confirmed_and_expiry() -> None:
    """Confirmed keys go; unmatchable ones expire after the horizon; others stay."""
    buf = PendingBuffer(100)
    buf.add(Decoded([reading(1), reading(2, matchable=False)]), 0.0)
    buf.add(Decoded([reading(3)]), 10.0)
    buf.confirmed([reading(1).key], [])
    assert buf.readings_pending == 2
    assert buf.expire_unmatchable(5.0) == 1
    assert buf.readings_pending == 1
    assert buf.expire_unconfirmed(20.0) == 1 and buf.readings_pending == 0


def test_full_buffer_blocks_intake_until_space() -> None:
    """At the bound the space event clears (intake waits, PUBACK is delayed)."""
    buf = PendingBuffer(3)
    buf.add(Decoded([reading(i) for i in range(3)]), 0.0)
    assert not buf._space.is_set()
    batch, _ = buf.oldest(1)
    buf.committed(batch, [])
    assert buf._space.is_set()


def test_rejects_keyed_by_topic_and_payload() -> None:
    """The same bad payload on the same topic is one pending reject."""
    buf = PendingBuffer(100)
    rej = Reject("t", b"x", "invalid_json", T0)
    buf.add(Decoded(rejects=[rej, Reject("t", b"x", "invalid_json", T0 + timedelta(1))]), 0.0)
    assert buf.rejects_pending == 1
