"""The gmqtt internals aupus_ha/pipeline/mqtt.py relies on, checked on the installed gmqtt.

The acknowledgement path reaches past gmqtt's public API: direct QoS 1 delivery and the
PUBACK it sends (`install_direct_qos1`, `send_puback`), PUBACK coalescing
(`coalesce_pubacks`), byte-level keepalive (`count_bytes_as_liveness`) and the disarmed
reconnect loop (`_disarm_reconnect`). Those helpers fall back quietly when an attribute is
missing (the intake keeps working, slower or with gmqtt's own reconnects), so a gmqtt
release that renamed one would pass every other test. pyproject.toml bounds gmqtt below
the next minor release; raising that bound means running this file first: each failure
names the internal that changed.
"""

from __future__ import annotations

import inspect
import struct
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import gmqtt
import pytest
from gmqtt.mqtt.connection import MQTTConnection
from gmqtt.mqtt.handler import MqttPackageHandler
from gmqtt.mqtt.protocol import BaseMQTTProtocol, MQTTProtocol
from packaging.requirements import Requirement

from aupus_ha.pipeline import mqtt

ROOT = Path(__file__).resolve().parents[2]
GMQTT = f"gmqtt {version('gmqtt')}"


def _parameters(function: Any) -> list[str]:
    return list(inspect.signature(function).parameters)


def _require(owner: type, name: str, user: str) -> Any:
    if not hasattr(owner, name):
        pytest.fail(f"{GMQTT}: {owner.__name__}.{name} is gone; {user} relies on it")
    return getattr(owner, name)


def test_the_installed_gmqtt_is_within_the_bound_in_pyproject() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    spec = next(Requirement(d) for d in project["dependencies"] if d.startswith("gmqtt"))
    assert any(s.operator == "<" for s in spec.specifier), f"no upper bound: {spec}"
    assert spec.specifier.contains(version("gmqtt")), f"{GMQTT} outside {spec}"


def test_the_handler_methods_the_direct_qos1_path_replaces_and_calls() -> None:
    qos1 = _require(MqttPackageHandler, "_handle_qos_1_publish_packet", "install_direct_qos1")
    assert _parameters(qos1) == ["self", "mid", "packet", "print_topic", "properties"], (
        f"{GMQTT}: MqttPackageHandler._handle_qos_1_publish_packet{inspect.signature(qos1)} "
        "changed: install_direct_qos1 replaces it with deliver(client, mid, payload, topic, "
        "properties)"
    )
    puback = _require(MqttPackageHandler, "_send_puback", "send_puback")
    assert _parameters(puback)[:3] == ["self", "mid", "reason_code"], (
        f"{GMQTT}: MqttPackageHandler._send_puback{inspect.signature(puback)} changed: "
        "send_puback calls it as (mid, PUBACK_SUCCESS)"
    )


def test_a_qos1_publish_reaches_the_direct_path_with_its_mid_payload_and_topic() -> None:
    """The behaviour behind the names: gmqtt's PUBLISH parser hands a QoS 1 message to the
    replaced method, on this client's handler, with the arguments `deliver` expects."""
    client = gmqtt.Client("layout-internals")
    delivered: list[tuple[object, ...]] = []

    def deliver(*args: object) -> None:
        delivered.append(args)

    if not hasattr(client, "_package_handler"):
        pytest.fail(f"{GMQTT}: Client._package_handler is gone; install_direct_qos1 uses it")
    assert mqtt.install_direct_qos1(client, deliver), (
        f"{GMQTT}: install_direct_qos1 found no Client._package_handler."
        "_handle_qos_1_publish_packet/_send_puback: the intake would fall back to a Task "
        "per message"
    )
    topic, mid, payload = b"aupus/t", 7, b'{"power": 1}'
    raw = struct.pack("!H", len(topic)) + topic + struct.pack("!H", mid) + b"\x00" + payload
    handle = _require(MqttPackageHandler, "_handle_publish_packet", "install_direct_qos1")
    handle(client._package_handler, 0x32, raw)  # PUBLISH, QoS 1
    assert len(delivered) == 1, f"{GMQTT}: a QoS 1 PUBLISH did not reach the direct path"
    got_client, got_mid, got_payload, got_topic, properties = delivered[0]
    assert (got_client, got_mid, got_payload, got_topic) == (client, mid, payload, "aupus/t")
    assert isinstance(properties, dict)


def test_the_connection_and_protocol_attributes_coalescing_and_liveness_patch() -> None:
    source = inspect.getsource(MQTTConnection)
    for attribute in ("_protocol", "_last_data_in"):
        assert f"self.{attribute} =" in source, (
            f"{GMQTT}: MQTTConnection.{attribute} is gone; coalesce_pubacks and "
            "count_bytes_as_liveness reach the socket and the keepalive clock through it"
        )
    assert "self._last_data_in" in inspect.getsource(MQTTConnection._keep_connection), (
        f"{GMQTT}: the keepalive no longer reads MQTTConnection._last_data_in: "
        "count_bytes_as_liveness would not keep a large packet's connection alive"
    )
    write = _require(BaseMQTTProtocol, "write_data", "coalesce_pubacks")
    assert _parameters(write) == ["self", "data"], f"{GMQTT}: write_data changed"
    received = _require(BaseMQTTProtocol, "data_received", "count_bytes_as_liveness")
    assert _parameters(received) == ["self", "data"], f"{GMQTT}: data_received changed"
    send = _require(MQTTProtocol, "send_command_with_mid", "coalesce_pubacks")
    assert "self.write_data(" in inspect.getsource(send), (
        f"{GMQTT}: MQTTProtocol.send_command_with_mid (the PUBACK) no longer writes "
        "through write_data: coalesce_pubacks would see no PUBACK"
    )


def test_an_inactive_client_does_not_reconnect_on_its_own() -> None:
    """`_disarm_reconnect` sets `Client._is_active = False`; gmqtt's `_allow_reconnect`
    must read it, or gmqtt's unowned reconnect tasks race our supervisor's."""
    client = gmqtt.Client("layout-internals")
    _require(gmqtt.Client, "_allow_reconnect", "_disarm_reconnect")
    assert hasattr(client, "_is_active"), f"{GMQTT}: Client._is_active is gone"
    mqtt._disarm_reconnect(client)
    assert client._allow_reconnect() is False, (
        f"{GMQTT}: Client._allow_reconnect ignores _is_active: _disarm_reconnect no "
        "longer stops gmqtt's own reconnect loop"
    )
    assert isinstance(client._client_id, str), f"{GMQTT}: Client._client_id (logged) is gone"
