"""Topic validation, the named-query loader and the secret-scrubbing log processor."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from aupus_ha.database.queries import Queries, migrations, parse_queries
from aupus_ha.logs import SecretScrubber
from aupus_ha.pipeline.readings import Equipment
from aupus_ha.pipeline.topics import InvalidTopic, TopicCatalog, topic_problem


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


# Topics of the real fixtures (tests/fixtures/README.md): an inverter's and an A-966's.
INVERTER_TOPIC = "STA_BRANCA/GO/SOLAR_POWER/UFV05/INVERSOR/1"
GATEWAY_TOPIC = "STA_BRANCA/GO/SOLAR_POWER/UFV05/A966/SSU/state"
EMPTY = "empty topic"
WILDCARD = "contains an MQTT wildcard (+ or #)"
SLASH = "leading or trailing '/'"
NOT_MQTT = "not a valid MQTT topic name"


@pytest.mark.parametrize(
    ("topic", "problem"),
    [
        (None, EMPTY),
        ("", EMPTY),
        (" \t\n", EMPTY),
        (INVERTER_TOPIC, None),
        (f"  {GATEWAY_TOPIC}\t", None),  # trimmed first
        (INVERTER_TOPIC.replace("UFV05", "+"), WILDCARD),
        (GATEWAY_TOPIC + "/#", WILDCARD),
        ("/" + INVERTER_TOPIC, SLASH),
        (INVERTER_TOPIC + "/", SLASH),
        (INVERTER_TOPIC + "\x00", NOT_MQTT),  # MQTT forbids U+0000 in a topic name
        ("\x00", NOT_MQTT),
        ("a" * 65_535, None),  # the MQTT maximum: 65,535 bytes of UTF-8
        ("a" * 65_536, NOT_MQTT),
        ("é" * 32_767 + "a", None),  # counted in bytes, not characters: 65,535 bytes
        ("é" * 32_768, NOT_MQTT),  # 32,768 characters, 65,536 bytes
    ],
)
def test_topic_rules_name_the_rule_that_fired(topic: str | None, problem: str | None) -> None:
    """Each stored topic gets the exact problem reported for it (None: subscribable); the
    size bound is in UTF-8 bytes, inclusive at 65,535."""
    assert topic_problem(topic) == problem


def test_one_bad_equipment_row_does_not_drop_the_later_ones() -> None:
    """Every row after an invalid one is still catalogued, and the invalid one is reported
    with the topic as stored (untrimmed) and the rule that refused it."""
    cat = TopicCatalog.build(
        [
            Equipment("inv-1", INVERTER_TOPIC),
            Equipment("bad-1", " a/\x00/b "),
            Equipment("gw-1", GATEWAY_TOPIC),
            Equipment("bad-2", None),  # type: ignore[arg-type]  # a NULL topico_mqtt
            Equipment("inv-2", INVERTER_TOPIC),
        ]
    )
    assert cat.by_topic == {
        INVERTER_TOPIC: (Equipment("inv-1", INVERTER_TOPIC), Equipment("inv-2", INVERTER_TOPIC)),
        GATEWAY_TOPIC: (Equipment("gw-1", GATEWAY_TOPIC),),
    }
    assert cat.invalid == [
        InvalidTopic("bad-1", " a/\x00/b ", NOT_MQTT),
        InvalidTopic("bad-2", None, EMPTY),
    ]


def test_a_topic_nobody_owns_has_no_equipment() -> None:
    """An unknown topic gives an empty tuple (never None: callers iterate and test it)."""
    cat = TopicCatalog.build([Equipment("inv-1", INVERTER_TOPIC)])
    assert cat.equipment_for(GATEWAY_TOPIC) == ()
    assert cat.equipment_for(INVERTER_TOPIC) == (Equipment("inv-1", INVERTER_TOPIC),)


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
