"""The chaos runner's side traffic and its accounting, without a cluster: the hostile
catalogue, the clockless readings, the tally of what became of each message, and which
fault kinds a machine without mounts runs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from aupus_ha.lab.chaos.faults import runnable_kinds, schedule
from aupus_ha.lab.chaos.options import FAULT_KINDS, SPOOL_KINDS, ChaosOptions
from aupus_ha.lab.chaos.sidemessages import (
    CLOCKLESS_FORMS,
    CLOCKLESS_MARK,
    HOSTILE_MARK,
    ClocklessCatalogue,
    HostileCatalogue,
    SideMessage,
    SideTopics,
    rejected_by_ident,
    tally,
)

LIMIT = 256 * 1024
PACKET = LIMIT + 128 * 1024
BASE = datetime(2026, 11, 28, 10, 0, tzinfo=UTC)
NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def catalogue() -> HostileCatalogue:
    return HostileCatalogue(SideTopics(("g0", "g1", "g2"), ("i0", "i1")), BASE, LIMIT, PACKET)


def test_every_hostile_message_is_unique_across_batches() -> None:
    """Idents never repeat and no two messages share (topic, sha256): the reject table's
    key, so each reject row names exactly one message."""
    cat = catalogue()
    messages = cat.batch(NOW) + cat.batch(NOW)
    assert len({m.ident for m in messages}) == len(messages)
    assert len({(m.topic, m.sha256) for m in messages}) == len(messages)


def test_the_catalogue_covers_the_hostile_forms() -> None:
    """Huge/tiny numbers, deep nesting, odd unicode, duplicate keys, every timestamp form,
    absurd inverter power, oversized and not-JSON payloads are all in one batch."""
    batch = catalogue().batch(NOW)
    labels = {m.label for m in batch}
    for needed in (
        "huge_float",
        "tiny_float",
        "deep_300",
        "odd_unicode",
        "duplicate_keys",
        "ts_far_past",
        "ts_near_future",
        "ts_brazilian_text",
        "inverter_power_1e308_pair",
        "oversized_just",
        "not_json",
        "not_utf8",
    ):
        assert needed in labels
    oversized = [m for m in batch if m.label.startswith("oversized")]
    assert all(len(m.payload) > LIMIT for m in oversized)
    assert all(len(m.payload) <= LIMIT for m in batch if m not in oversized)
    # Just over MAX_PAYLOAD_BYTES reaches the instances (a reject); 4x is beyond the
    # maximum packet size they announce (the broker drops it for them).
    assert [m.over_limit for m in oversized] == [False, True]
    assert not any(m.over_limit for m in batch if m not in oversized)
    dup = next(m for m in batch if m.label == "duplicate_keys")
    assert dup.payload.count(b'"power"') == 2


def test_parseable_hostile_messages_carry_their_ident() -> None:
    """Whatever orjson can read is found again by its marker (stored rows)."""
    for m in catalogue().batch(NOW):
        try:
            obj = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            assert obj[HOSTILE_MARK] == m.ident


def test_an_inverter_pair_shares_one_minute_of_its_own() -> None:
    """Two samples of a minute (so a mean can overflow), and no other variant's minute."""
    batch = catalogue().batch(NOW)
    pair = [m for m in batch if m.label == "inverter_power_1e308_pair"]
    assert len(pair) == 2
    minutes = {orjson.loads(m.payload)["timestamp"][:16] for m in pair}
    assert len(minutes) == 1
    others = {
        orjson.loads(m.payload)["timestamp"][:16]
        for m in batch
        if m.label.startswith("inverter") and m not in pair and b"timestamp" in m.payload
    }
    assert minutes.isdisjoint(others)


def test_usable_generic_instants_are_distinct_seconds() -> None:
    """A usable device time is base + ident seconds: no accidental natural-key clash."""
    batch = catalogue().batch(NOW)
    for label in ("ts_iso_z", "huge_float", "odd_unicode"):
        m = next(m for m in batch if m.label == label)
        expected = BASE + timedelta(seconds=m.ident)
        assert orjson.loads(m.payload)["timestamp"] == expected.isoformat().replace("+00:00", "Z")


def test_clockless_batch_is_every_fixture_form_with_a_marker() -> None:
    cat = ClocklessCatalogue(("c0", "c1"))
    first, second = cat.batch(), cat.batch()
    assert [m.label for m in first] == [label for label, _ in CLOCKLESS_FORMS]
    for m in first + second:
        obj = orjson.loads(m.payload)
        assert obj[CLOCKLESS_MARK] == m.ident
    assert "timestamp" not in orjson.loads(first[-1].payload)  # the "absent" form
    assert {m.ident for m in first}.isdisjoint({m.ident for m in second})


def msg(ident: int, label: str = "x") -> SideMessage:
    return SideMessage(ident, label, "t", f"payload {ident}".encode())


def test_tally_puts_every_message_in_exactly_one_place() -> None:
    """stored / rejected / refused (never acked) / lost (acked, nowhere); duplicates are
    rows beyond the first."""
    messages = [msg(i) for i in range(6)]
    result = tally(
        "hostile_payloads",
        messages,
        acked={0, 1, 2, 3},
        stored={0: 1, 1: 3, 5: 1},  # 5 stored though its PUBACK never arrived
        rejected={2: "invalid_json: unexpected character"},
    )
    assert (result.stored, result.rejected, result.lost, result.refused) == (3, 1, 1, 1)
    assert result.duplicated == 2
    assert result.rejected_reasons == {"invalid_json": 1}
    assert result.lost_examples == ["3 x"]
    assert result.by_label == {
        "x": {
            "stored": 2,
            "stored twice or more": 1,
            "rejected invalid_json": 1,
            "lost": 1,
            "refused": 1,
        }
    }
    assert result.stored + result.rejected + result.lost + result.refused == result.sent
    assert not result.ok


def test_a_message_beyond_the_packet_limit_is_refused_not_lost() -> None:
    """Acknowledged by the broker, dropped for the instances' sessions: refused."""
    big = SideMessage(0, "oversized_4x", "t", b"x", over_limit=True)
    result = tally("h", [big], acked={0}, stored={}, rejected={})
    assert (result.refused, result.lost) == (1, 0)
    assert result.ok


def test_a_stored_message_also_rejected_counts_once_as_stored() -> None:
    result = tally("h", [msg(0)], acked={0}, stored={0: 1}, rejected={0: "r"})
    assert (result.stored, result.rejected) == (1, 0)
    assert result.ok


def test_clockless_readings_must_be_stored_not_rejected() -> None:
    result = tally("clockless", [msg(0)], {0}, {}, {0: "timestamp_unparseable: x"}, must_store=True)
    assert result.rejected == 1 and result.lost == 0
    assert not result.ok
    hostile = tally("hostile", [msg(0)], {0}, {}, {0: "timestamp_unparseable: x"})
    assert hostile.ok


def test_rejects_are_matched_by_topic_and_whole_payload_hash() -> None:
    messages = [msg(0), msg(1)]
    rows = [
        ("t", messages[1].sha256, "payload_too_large: 300000 bytes"),
        ("u", messages[0].sha256, "x"),
    ]
    assert rejected_by_ident(messages, rows) == {1: "payload_too_large: 300000 bytes"}


def test_without_mounts_the_spool_kinds_leave_the_schedule() -> None:
    """Every other kind still runs once per round."""
    kinds = runnable_kinds(FAULT_KINDS, {k: "no mount" for k in SPOOL_KINDS})
    assert set(kinds) == set(FAULT_KINDS) - set(SPOOL_KINDS)
    first_round = list(itertools.islice(schedule(kinds, 1), len(kinds)))
    assert {rnd for rnd, _ in first_round} == {0}
    assert sorted(k for _, k in first_round) == sorted(kinds)


def test_new_kinds_have_positive_bounded_durations() -> None:
    options = ChaosOptions(fault_scale=0.5)
    for value in (options.db_fault_s, options.spool_fault_s, options.side_load_s):
        assert 0 < value <= 3 * options.lease_ttl_s
    assert ChaosOptions(kinds=("spool_full", "nope")).problems() != []


@pytest.mark.parametrize(
    "kind",
    ["hostile_payloads", "db_read_only", "db_conn_slots", "spool_full", "spool_ro", "clockless"],
)
def test_every_new_kind_is_known(kind: str) -> None:
    assert kind in FAULT_KINDS
    assert ChaosOptions(kinds=(kind,)).problems() == []
