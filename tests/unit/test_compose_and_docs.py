"""The compose example and the docs agree with the code (no Docker, no YAML library needed).

docker-compose.yml is read with a few indentation rules instead of a YAML parser: a
block is the lines indented deeper than its header, and `<<: *name` merges the block
whose header carries `&name`. That is all the compose file uses.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import cast

from aupus_ha.app import Instance
from aupus_ha.config import SETTINGS
from aupus_ha.operations.http import HttpServer

ROOT = Path(__file__).resolve().parents[2]
CONFIG_PY = ROOT / "aupus_ha" / "config.py"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
RUNBOOK = ROOT / "docs" / "runbook.pt-BR.md"
COMPOSE = ROOT / "compose" / "docker-compose.yml"
DOCKERFILE = ROOT / "compose" / "Dockerfile"
MOSQUITTO_CONF = ROOT / "compose" / "mosquitto.conf"
ENV_EXAMPLE = ROOT / "compose" / ".env.example"
AUPUS_SERVICES = ("aupus-primary", "aupus-backup")
# The example database's and the devices' passwords, and where published ports listen.
COMPOSE_ONLY_VARIABLES = {"POSTGRES_PASSWORD", "DEVICES_MQTT_PASSWORD", "BIND_ADDRESS"}

NAME = r"[A-Z][A-Z0-9_]*"


# --- helpers ------------------------------------------------------------------------------


def config_variables() -> set[str]:
    """Every environment variable that aupus_ha/config.py reads: its `SETTINGS` table
    (test_config_defaults.py checks that the loader reads exactly the table)."""
    return {setting.name for setting in SETTINGS}


def documented_variables() -> list[str]:
    """First column of the `| variable | default | accepts | meaning |` table."""
    lines = CONFIG_DOC.read_text(encoding="utf-8").splitlines()
    header = next(
        i for i, line in enumerate(lines) if re.match(r"\|\s*variable\s*\|\s*default\s*\|", line)
    )
    names: list[str] = []
    for line in lines[header + 2 :]:  # skip the |---| separator
        if not line.startswith("|"):
            break
        cell = line.split("|")[1].strip()
        match = re.fullmatch(rf"`({NAME})`", cell)
        assert match, f"first column is not a `VARIABLE` in backticks: {line!r}"
        names.append(match.group(1))
    return names


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _meaningful(line: str) -> bool:
    return bool(line.strip()) and not line.lstrip().startswith("#")


def _block_after(lines: list[str], index: int) -> list[str]:
    """The lines nested under lines[index] (deeper indentation), comments dropped."""
    own = _indent(lines[index])
    block: list[str] = []
    for line in lines[index + 1 :]:
        if not _meaningful(line):
            continue
        if _indent(line) <= own:
            break
        block.append(line)
    return block


def _find(lines: list[str], pattern: str) -> int:
    matches = [i for i, line in enumerate(lines) if re.fullmatch(pattern, line.rstrip())]
    assert len(matches) == 1, f"expected exactly one line matching {pattern!r}"
    return matches[0]


def compose_lines() -> list[str]:
    return COMPOSE.read_text(encoding="utf-8").splitlines()


def service_block(name: str) -> list[str]:
    lines = compose_lines()
    services = _find(lines, r"services:")
    block = _block_after(lines, services)
    return _block_after(block, _find(block, rf"  {re.escape(name)}:"))


def anchor_block(anchor: str) -> list[str]:
    lines = compose_lines()
    return _block_after(lines, _find(lines, rf"\s*[\w.-]+:\s*&{re.escape(anchor)}"))


def _top_keys(block: list[str]) -> dict[str, int]:
    """Keys at the block's own indentation -> their index in the block."""
    if not block:
        return {}
    level = min(_indent(line) for line in block)
    keys: dict[str, int] = {}
    for i, line in enumerate(block):
        match = re.match(r"\s*([\w.<-]+):", line)
        if _indent(line) == level and match:
            keys[match.group(1)] = i
    return keys


def _merged(block: list[str]) -> list[list[str]]:
    """The block itself, preceded by every block it merges with `<<: *anchor`."""
    level = min(_indent(line) for line in block)
    anchors = [
        m.group(1)
        for line in block
        if _indent(line) == level and (m := re.match(r"\s*<<:\s*\*([\w.-]+)\s*$", line))
    ]
    return [*(anchor_block(a) for a in anchors), block]


def effective_section(service: str, key: str) -> list[str]:
    """A service's `key:` section, from the service or else from what it merges."""
    for block in reversed(_merged(service_block(service))):
        keys = _top_keys(block)
        if key in keys:
            index = keys[key]
            return [block[index], *_block_after(block, index)]
    return []


def service_environment(service: str) -> dict[str, str]:
    """The environment a service gets: merged anchors first, its own keys override."""
    env: dict[str, str] = {}
    section = effective_section(service, "environment")
    assert section, f"{service} has no environment"
    for part in _merged(section[1:]):
        for line in part:
            mapping = re.fullmatch(rf"\s*({NAME}):\s*(.*?)\s*", line)
            listed = re.fullmatch(rf"\s*-\s*({NAME})=(.*?)\s*", line)
            if match := mapping or listed:
                env[match.group(1)] = match.group(2).strip("\"'")
    return env


def service_ports(service: str) -> list[str]:
    section = effective_section(service, "ports")
    return [re.sub(r"^\s*-\s*", "", line).strip("\"'") for line in section[1:]]


def service_scalar(service: str, key: str) -> str:
    section = effective_section(service, key)
    assert section, f"{service} has no {key}"
    return section[0].split(":", 1)[1].strip().strip("\"'")


# --- configuration reference ---------------------------------------------------------------


def test_config_variables_found() -> None:
    """The regex over config.py finds the variables we know about (the checks are not vacuous)."""
    found = config_variables()
    expected = {"DATABASE_URL", "MQTT_URL", "MQTT_HOST", "MQTT_PORT", "INSTANCE_ID"}
    assert expected | {"MQTT_USERNAME", "MQTT_PASSWORD", "LEASE_TTL_S", "SPOOL_DIR"} <= found


def test_docs_table_has_one_row_per_variable() -> None:
    """docs/configuration.md's table lists each variable once."""
    names = documented_variables()
    assert names, "no rows found in the configuration table"
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"documented twice: {duplicates}"


def test_every_config_variable_is_documented() -> None:
    """Every variable config.py reads has a row in docs/configuration.md."""
    missing = config_variables() - set(documented_variables())
    assert not missing, f"read by config.py but not documented: {sorted(missing)}"


def test_every_documented_variable_is_read() -> None:
    """Every row of the docs table is a variable config.py still reads (no stale docs)."""
    stale = set(documented_variables()) - config_variables()
    assert not stale, f"documented but not read by config.py: {sorted(stale)}"


# --- compose -----------------------------------------------------------------------------------


def test_compose_env_names_are_documented() -> None:
    """Every variable given to the aupus services is in the docs table (and read by config.py)."""
    documented = set(documented_variables())
    for service in AUPUS_SERVICES:
        unknown = set(service_environment(service)) - documented
        assert not unknown, f"{service} sets undocumented variables: {sorted(unknown)}"
        assert set(service_environment(service)) <= config_variables()


def test_aupus_services_differ_only_in_instance_id_and_ports() -> None:
    """aupus-primary and aupus-backup are identical except INSTANCE_ID, the host port and
    their own spool volume."""

    def normalised(service: str) -> list[str]:
        block = service_block(service)
        skip: set[int] = set()
        for key in ("ports", "volumes"):
            start = _top_keys(block).get(key)
            if start is not None:
                skip |= set(range(start + 1, start + 1 + len(_block_after(block, start))))
        return [
            line
            for i, line in enumerate(block)
            if i not in skip and not line.strip().startswith("INSTANCE_ID:")
        ]

    primary, backup = AUPUS_SERVICES
    assert normalised(primary) == normalised(backup)
    env_a, env_b = service_environment(primary), service_environment(backup)
    assert env_a.pop("INSTANCE_ID") != env_b.pop("INSTANCE_ID")
    assert env_a == env_b
    ports_a, ports_b = service_ports(primary), service_ports(backup)
    assert len(ports_a) == len(ports_b) == 1 and ports_a != ports_b
    assert {p.rsplit(":", 1)[1] for p in ports_a + ports_b} == {"3000"}
    spools = [
        [line.strip() for line in service_block(s) if "/var/lib/aupus-ha/spool" in line]
        for s in AUPUS_SERVICES
    ]
    assert all(len(v) == 1 for v in spools) and spools[0] != spools[1]  # never shared


def test_aupus_services_listen_where_they_are_probed() -> None:
    """The published container port, HTTP_PORT and the Dockerfile's EXPOSE agree."""
    exposed = re.findall(r"^EXPOSE\s+(\d+)", DOCKERFILE.read_text(encoding="utf-8"), re.M)
    assert exposed == ["3000"]
    for service in AUPUS_SERVICES:
        assert service_environment(service).get("HTTP_PORT", "3000") == "3000"


def test_aupus_healthchecks_hit_health() -> None:
    """Both aupus services probe GET /health on their own HTTP port with urllib."""
    for service in AUPUS_SERVICES:
        text = "\n".join(effective_section(service, "healthcheck"))
        assert re.search(r"://(?:127\.0\.0\.1|localhost):3000/health['\"]", text), service
        assert "urllib" in text  # the slim image has no curl


def test_aupus_services_run_and_stop_gracefully() -> None:
    """`aupus-ha run`, stopped by SIGTERM with a 30 s grace period (final flush, release)."""
    for service in AUPUS_SERVICES:
        command = re.sub(r"\s", "", service_scalar(service, "command"))
        assert command == '["aupus-ha","run"]', service
        assert service_scalar(service, "stop_signal") == "SIGTERM"
        assert service_scalar(service, "stop_grace_period") == "30s"


def test_compose_interpolations_are_in_env_example() -> None:
    """Every ${VAR} in docker-compose.yml is listed in .env.example, and that file has no strays."""
    used = set(re.findall(rf"\$\{{({NAME})", COMPOSE.read_text(encoding="utf-8")))
    example = {
        line.split("=", 1)[0].strip()
        for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
        if _meaningful(line) and "=" in line
    }
    assert used <= example, f"not in .env.example: {sorted(used - example)}"
    stray = example - config_variables() - COMPOSE_ONLY_VARIABLES
    assert not stray, f".env.example names no variable aupus-ha reads: {sorted(stray)}"


def test_mosquitto_is_persistent_bounded_and_closed() -> None:
    """mosquitto.conf: persistent sessions with large but bounded queues (issue 16: an
    unbounded queue lets a session nobody reads fill the broker's memory), a packet size
    limit above MAX_PAYLOAD_BYTES, no anonymous access, an ACL; listener on 1883."""
    directives: dict[str, str] = {}
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        if _meaningful(line):
            key, _, value = line.strip().partition(" ")
            directives[key] = value.strip()
    assert int(directives["max_queued_messages"]) >= 1_000_000
    assert int(directives["max_queued_bytes"]) >= 256 * 1024**2
    assert 256 * 1024 < int(directives["max_packet_size"]) < 1024**2
    assert directives.get("allow_anonymous") == "false"
    assert directives.get("password_file") and directives.get("acl_file")
    assert directives.get("persistence") == "true"
    assert directives.get("listener", "").split()[0] == "1883"


def test_compose_requires_passwords_and_binds_to_localhost() -> None:
    """No default password anywhere; every published port listens on 127.0.0.1 unless
    BIND_ADDRESS says otherwise."""
    text = COMPOSE.read_text(encoding="utf-8")
    for name in ("POSTGRES_PASSWORD", "MQTT_PASSWORD", "DEVICES_MQTT_PASSWORD"):
        uses = re.findall(rf"\$\{{{name}(:[-?])", text)
        assert uses and set(uses) == {":?"}, (name, uses)
    published = re.findall(r'^\s*-\s*"([^"]*:\d+:\d+)"\s*$', text, re.M)
    assert len(published) == 4, published  # broker, two instances, Prometheus
    assert all(p.startswith("${BIND_ADDRESS:-127.0.0.1}:") for p in published), published


def test_dockerfile_runs_unprivileged() -> None:
    """The image is python:3.11-slim, runs as a non-root user and starts `aupus-ha run`."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert re.findall(r"^CMD\s+(.*)$", text, re.M)[-1].strip() == '["aupus-ha", "run"]'


# --- runbook ------------------------------------------------------------------------------------


def test_runbook_endpoint_table_matches_http_routes() -> None:
    """The runbook's endpoint table lists exactly the routes http.py serves today."""
    app = HttpServer(cast(Instance, object())).build_app()  # wiring only: nothing is read
    served = {
        r.resource.canonical
        for r in app.router.routes()
        if r.method == "GET" and r.resource and not r.resource.canonical.startswith("/api/v1")
    }
    listed = set(re.findall(r"^\| `GET (/[^`\s]*)`", RUNBOOK.read_text(encoding="utf-8"), re.M))
    assert served, "no routes found in http.py"
    assert listed == served


def test_runbook_log_events_exist() -> None:
    """Every log event the runbook names is emitted somewhere in aupus_ha."""
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "aupus_ha").rglob("*.py"))
    pattern = r"`((?:leader|flush|mqtt|db|topics|standby|instance)\.[a-z_]+)`"
    named = set(re.findall(pattern, RUNBOOK.read_text(encoding="utf-8")))
    assert {"leader.acquired", "leader.fenced", "flush.committed", "mqtt.connected"} <= named
    missing = sorted(e for e in named if f'"{e}"' not in source)
    assert not missing, f"the runbook names events the code never logs: {missing}"
