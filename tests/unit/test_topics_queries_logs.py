"""Topic validation, the named-query loader and the secret-scrubbing log processor."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from aupus_ha.logs import SecretScrubber
from aupus_ha.queries import Queries, migrations, parse_queries
from aupus_ha.readings import Equipment
from aupus_ha.topics import TopicCatalog, topic_problem


@pytest.mark.parametrize("topic", ["", "  ", "a/+/b", "a/#", "/a/b", "a/b/", None, " /a "])
def test_invalid_topics_are_refused(topic: str | None) -> None:
    """Wildcards, empty topics and leading/trailing '/' are never subscribed."""
    assert topic_problem(topic) is not None


def test_whitespace_around_a_topic_is_trimmed() -> None:
    """DOMAIN v2: surrounding whitespace is trimmed (as the platform does), so a row whose
    topic was typed with a space still gets its readings; inner spaces are kept."""
    cat = TopicCatalog.build(
        [Equipment("a", " site/m1 "), Equipment("b", "site/m1\t\n"), Equipment("c", "x y")]
    )
    assert cat.topics == ["site/m1", "x y"]
    assert [(e.id, e.topic) for e in cat.equipment_for("site/m1")] == [
        ("a", "site/m1"),
        ("b", "site/m1"),
    ]
    assert cat.invalid == []


def test_catalog_groups_shared_topics_and_skips_invalid() -> None:
    """Several equipment on one topic each get the reading; invalid rows are reported."""
    cat = TopicCatalog.build([Equipment("a", "x/y"), Equipment("b", "x/y"), Equipment("c", "#")])
    assert [e.id for e in cat.equipment_for("x/y")] == ["a", "b"]
    assert cat.topics == ["x/y"]
    assert [(i.equipamento_id, i.problem.split()[0]) for i in cat.invalid] == [("c", "contains")]


def test_query_file_parses_and_fills_only_whitelisted_types() -> None:
    """Every named query loads; type placeholders accept only known column types."""
    q = Queries(id_type="bpchar", ts_type="timestamp")
    assert "unnest($1::bpchar[], $2::timestamp[])" in q["probe_readings"]
    assert {"fence_check", "leader_renew", "try_lock"} <= set(q.names())
    with pytest.raises(ValueError):
        Queries(id_type="text; DROP TABLE x", ts_type="timestamptz")


def test_parse_queries_refuses_a_header_it_would_not_split_on() -> None:
    """A block name with a capital or a space once glued its query onto the block before
    it (a multi-statement error at run time): the loader now refuses it at load; digits
    after the first letter are a valid name."""
    assert parse_queries("-- name: m160_rows\nSELECT 1;\n") == {"m160_rows": "SELECT 1"}
    for bad in ("-- name: Bad\n", "-- name: two words\n", "--name: x\n"):
        with pytest.raises(ValueError, match="malformed query header"):
            parse_queries("-- name: a\nSELECT 1;\n" + bad + "SELECT 2;\n")


def test_parse_queries_rejects_duplicates() -> None:
    """Two blocks with one name is an error, not a silent override."""
    with pytest.raises(ValueError):
        parse_queries("-- name: a\nSELECT 1;\n-- name: a\nSELECT 2;\n")


def test_migrations_are_numbered_in_order() -> None:
    """Migration files sort by their number."""
    versions = [v for v, _, _ in migrations()]
    assert versions == sorted(versions) and versions[0] == "001"


def test_scrubber_masks_secrets_in_nested_values() -> None:
    """A secret inside an error text or a nested dict never reaches the log line."""
    scrub = SecretScrubber(["hunter22", "x"])
    event = scrub(
        None,
        "",
        {
            "event": "e",
            "error": "auth hunter22 failed",
            "nested": {"dsn": ["postgresql://u:hunter22@h"]},
        },
    )
    assert "hunter22" not in repr(event)
    assert event["event"] == "e"  # a too-short 'secret' like 'x' is not applied


def test_capture_logs_sees_structured_events() -> None:
    """structlog's capture_logs works with our logger factory (used by leader.* tests)."""
    from aupus_ha.logs import get_logger

    with capture_logs() as logs:
        get_logger("t").info("leader.acquired", epoch=3)
    assert logs == [{"event": "leader.acquired", "epoch": 3, "log_level": "info"}]
