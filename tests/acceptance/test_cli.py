"""The command line as an operator meets it: bad configuration, migrate, status."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from aupus_ha.database.queries import migrations
from aupus_ha.lab.localcluster import fetch, wait_single_leader
from tests.acceptance.conftest import ClusterFactory


def _run(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "aupus_ha", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tempfile.gettempdir(),  # no stray ./.env
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "eighty"),
        ("LEASE_TTL_S", "0"),
        ("MQTT_MODE", "prod"),
        ("DATABASE_URL", "not-a-url"),
        ("HEARTBEAT_S", "10"),
        ("LOG_FORMAT", "yaml"),
    ],
)
def test_bad_configuration_exits_2_naming_the_variable(
    base_env: dict[str, str], name: str, value: str
) -> None:
    """`aupus-ha run` with a bad value: exit code 2, one line naming the variable."""
    result = _run("run", env={**base_env, name: value})
    assert result.returncode == 2, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("run", "--http-port", "70000"), "HTTP_PORT"),
        (("run", "--instance-id", "a b"), "INSTANCE_ID"),
        (("--env-file", "/no/such/.env", "run"), "--env-file"),
    ],
)
def test_bad_flags_exit_2_too(base_env: dict[str, str], args: tuple[str, ...], name: str) -> None:
    """Flags are validated like the environment: exit 2 and one line naming the setting."""
    result = _run(*args, env=base_env)
    assert result.returncode == 2, result.stderr
    assert name in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_secrets_do_not_reach_error_output(base_env: dict[str, str]) -> None:
    """A bad MQTT_URL carrying a password is reported without the password."""
    result = _run("run", env={**base_env, "MQTT_URL": "http://u:supersecret9@h"})
    assert result.returncode == 2 and "supersecret9" not in result.stderr


async def test_migrate_then_status(
    base_env: dict[str, str], database_url: str, spawn: ClusterFactory
) -> None:
    """`migrate` applies once; `status` shows the leader and its handover."""
    first = _run("migrate", env=base_env)
    count = len(migrations())
    assert first.returncode == 0 and f"applied {count} migration(s)" in first.stdout
    again = _run("migrate", env=base_env)
    assert "none pending" in again.stdout
    leader = spawn("node-a")
    await wait_single_leader([leader])
    status = _run("status", env=base_env)
    assert status.returncode == 0, status.stderr
    assert "leader: node-a" in status.stdout and "initial" in status.stdout
    as_json = _run("status", "--json", env=base_env)
    assert '"leader_instance_id": "node-a"' in as_json.stdout
    assert (await fetch(database_url, "SELECT count(*) AS n FROM ha_handovers"))[0]["n"] == 1
