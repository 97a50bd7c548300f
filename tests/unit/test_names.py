"""Names derived from CLUSTER_NAME / INSTANCE_ID: bounded, distinct, unchanged when they fit."""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from aupus_ha.leadership.election import Election, Identity
from aupus_ha.names import (
    FILE_NAME_MAX,
    MQTT_CLIENT_ID_MAX,
    NOTIFY_CHANNEL_MAX,
    bounded,
    notify_channel,
    spool_directory_name,
)
from aupus_ha.pipeline.mqtt import client_id_for

IDENTIFIER_CHARS = string.ascii_letters + string.digits + "-_.:@"
identifiers = st.text(alphabet=IDENTIFIER_CHARS, min_size=1, max_size=128)


def test_names_that_fit_are_unchanged() -> None:
    """A rolling upgrade keeps the channel and the client id of every name that worked."""
    assert notify_channel("aupus") == "aupus_ha/aupus"
    assert notify_channel("c" * 54) == "aupus_ha/" + "c" * 54  # exactly 63 bytes
    assert client_id_for("node-a", "aupus") == "aupus-ha-aupus-node-a"
    fits = "n" * (MQTT_CLIENT_ID_MAX - len("aupus-ha-aupus-"))
    assert client_id_for(fits, "aupus") == f"aupus-ha-aupus-{fits}"


def test_spool_directory_fits_a_file_name() -> None:
    """128 + 1 + 128 characters exceeded NAME_MAX (255): the spool failed at start."""
    assert spool_directory_name("aupus", "node-a") == "aupus-node-a"
    longest = spool_directory_name("c" * 128, "n" * 128)
    assert len(longest.encode()) == FILE_NAME_MAX and "/" not in longest


def test_long_cluster_name_gives_a_valid_channel() -> None:
    """55+ characters used to exceed PostgreSQL's 63-byte channel limit."""
    channel = notify_channel("c" * 100)
    assert len(channel.encode()) == NOTIFY_CHANNEL_MAX
    assert channel.startswith("aupus_ha/ccc") and "~" in channel
    assert notify_channel("c" * 100) != notify_channel("c" * 99 + "d")


def test_instance_ids_sharing_a_128_char_prefix_get_different_client_ids() -> None:
    """A plain cut at 128 characters gave two instances one MQTT session."""
    cluster = "plant-" + "x" * 94  # 100 characters
    first = client_id_for("node-" + "a" * 120 + "-1", cluster)
    second = client_id_for("node-" + "a" * 120 + "-2", cluster)
    assert first != second
    assert len(first) <= MQTT_CLIENT_ID_MAX and len(second) <= MQTT_CLIENT_ID_MAX
    assert first.startswith(f"aupus-ha-{cluster}-n")


def test_election_listens_on_the_bounded_channel() -> None:
    """The lock connection LISTENs on the same channel a release NOTIFYs."""
    from aupus_ha.config import Secret, Settings

    settings = Settings(database_url=Secret("postgresql://u@h/db"), mqtt=None, instance_id="a")
    ident = Identity("a", "c" * 100, "token", "host", 1, "v", "production")
    assert Election(settings, ident, None)._channel == notify_channel("c" * 100)  # type: ignore[arg-type]


@given(identifiers, identifiers, identifiers)
def test_bounded_names_fit_and_stay_distinct(cluster: str, one: str, other: str) -> None:
    """Every valid pair fits both limits; different instance ids never share a client id."""
    assert len(notify_channel(cluster).encode()) <= NOTIFY_CHANNEL_MAX
    assert len(client_id_for(one, cluster)) <= MQTT_CLIENT_ID_MAX
    assert len(spool_directory_name(cluster, one).encode()) <= FILE_NAME_MAX
    if one != other:
        assert client_id_for(one, cluster) != client_id_for(other, cluster)


@given(st.text(min_size=0, max_size=200), st.integers(min_value=20, max_value=200))
def test_bounded_respects_the_byte_limit_for_any_text(name: str, limit: int) -> None:
    """Multi-byte characters are never split and the result never exceeds the limit."""
    out = bounded(name, limit)
    assert len(out.encode()) <= limit
    assert out == name or len(name.encode()) > limit
