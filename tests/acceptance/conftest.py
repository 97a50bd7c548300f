"""Fixtures for tests that run real `aupus-ha run` processes."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aupus_ha.lab.embedded import EmbeddedPostgres
from aupus_ha.lab.localcluster import InstanceProcess
from tests.helpers import instance_env

ClusterFactory = Callable[..., InstanceProcess]


@pytest.fixture
def base_env(database_url: str, mosquitto: object) -> dict[str, str]:
    # A cluster name per test gives every instance a fresh MQTT session (the client id
    # includes it), so no test inherits messages queued for an earlier one.
    return instance_env(
        database_url,
        mosquitto.url,  # type: ignore[attr-defined]
        f"test-{uuid.uuid4().hex[:8]}",
        LOG_LEVEL="info",
    )


@pytest.fixture
def spawn(base_env: dict[str, str], tmp_path: Path) -> Iterator[ClusterFactory]:
    """Start instances by name; every one still running is killed after the test."""
    started: list[InstanceProcess] = []

    def factory(name: str, *args: str, **env: str) -> InstanceProcess:
        inst = InstanceProcess(name, {**base_env, **env}, tmp_path)
        started.append(inst)
        return inst.start(*args)

    yield factory
    for inst in started:
        inst.stop_now()


@pytest.fixture
def own_postgres() -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this test alone: it gets stopped, paused and started."""
    server = EmbeddedPostgres()
    server.start()
    yield server
    server.cleanup()
