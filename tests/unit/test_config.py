"""Configuration: defaults, legacy names, validation with clear messages, masked secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from aupus_ha.config import ConfigError, Secret, load_settings, mask_url

BASE = {"DATABASE_URL": "postgresql://app:s3cretpw@db:5432/aupus", "MQTT_URL": "mqtt://broker:1883"}


def test_defaults_follow_the_contract() -> None:
    """Defaults: HTTP 3000, lease 5 s, heartbeat 1 s, flush 1 s, production, cluster aupus."""
    s = load_settings({**BASE, "INSTANCE_ID": "a"})
    assert (s.http_port, s.lease_ttl_s, s.heartbeat_s, s.flush_interval_s) == (3000, 5.0, 1.0, 1.0)
    assert s.mqtt_mode == "production" and s.cluster_name == "aupus" and s.may_lead
    assert s.heartbeat_s < s.renew_deadline_s < s.lease_ttl_s


def test_instance_id_defaults_to_host_name() -> None:
    """INSTANCE_ID is optional: every host can share one configuration."""
    import socket

    assert load_settings(dict(BASE)).instance_id == socket.gethostname()


def test_legacy_mqtt_variables() -> None:
    """MQTT_HOST/PORT/USERNAME/PASSWORD (the legacy names) build the same endpoint."""
    env = {
        "DATABASE_URL": BASE["DATABASE_URL"],
        "MQTT_HOST": "b",
        "MQTT_PORT": "8883",
        "MQTT_USERNAME": "u",
        "MQTT_PASSWORD": "pw-secret",
        "MQTT_TLS": "true",
    }
    mqtt = load_settings(env).mqtt
    assert mqtt is not None
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.username) == ("b", 8883, True, "u")
    assert mqtt.password.reveal() == "pw-secret"
    assert "pw-secret" not in mqtt.display()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("HTTP_PORT", "abc"),
        ("HTTP_PORT", "70000"),
        ("LEASE_TTL_S", "-1"),
        ("HEARTBEAT_S", "4"),
        ("RENEW_DEADLINE_S", "9"),
        ("MQTT_MODE", "staging"),
        ("LOG_FORMAT", "xml"),
        ("BATCH_MAX", "0"),
        ("MQTT_TLS", "maybe"),
        ("INSTANCE_ID", "has space"),
        ("DATABASE_URL", "mysql://x"),
        ("MQTT_URL", "http://broker"),
        ("FLUSH_INTERVAL_S", "soon"),
    ],
)
def test_bad_values_name_the_variable(name: str, value: str) -> None:
    """Every bad value raises ConfigError whose message names the variable."""
    with pytest.raises(ConfigError) as err:
        load_settings({**BASE, name: value})
    assert name in str(err.value)


def test_mqtt_required_unless_disabled() -> None:
    """Without a broker only MQTT_MODE=disabled is allowed."""
    with pytest.raises(ConfigError, match="MQTT_URL"):
        load_settings({"DATABASE_URL": BASE["DATABASE_URL"]})
    s = load_settings({"DATABASE_URL": BASE["DATABASE_URL"], "MQTT_MODE": "disabled"})
    assert not s.mqtt_enabled


def test_secrets_never_in_repr_or_summary() -> None:
    """repr(settings) and the start-up summary mask every secret."""
    env = {
        **BASE,
        "MQTT_URL": "mqtt://user:mqttpass123@broker",
        "ADMIN_TOKEN": "tok-abcdef",
        "SMTP_PASS": "smtp-pass-1",
    }
    s = load_settings(env)
    text = repr(s) + repr(s.safe_summary())
    for secret in ("s3cretpw", "mqttpass123", "tok-abcdef", "smtp-pass-1"):
        assert secret not in text
    assert repr(Secret("x")) == "Secret('***')"


def test_mask_url() -> None:
    """A DSN keeps its user and host but not its password."""
    assert mask_url("postgresql://u:p4ss@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_url("postgresql://h/d") == "postgresql://h/d"


def test_url_without_credentials_takes_the_legacy_ones() -> None:
    """MQTT_URL without user info uses MQTT_USERNAME/MQTT_PASSWORD (legacy .env files)."""
    s = load_settings({**BASE, "MQTT_USERNAME": "dev", "MQTT_PASSWORD": "pw-123456"})
    assert s.mqtt is not None and s.mqtt.username == "dev"
    assert s.mqtt.password.reveal() == "pw-123456"


def test_empty_port_means_default() -> None:
    """An empty MQTT_PORT is the default port, like every other empty variable."""
    env = {"DATABASE_URL": BASE["DATABASE_URL"], "MQTT_HOST": "b", "MQTT_PORT": ""}
    mqtt = load_settings(env).mqtt
    assert mqtt is not None and mqtt.port == 1883


def test_missing_tls_ca_file_is_a_configuration_error() -> None:
    """MQTT_TLS_CA naming a missing file fails at start, not as endless reconnects."""
    with pytest.raises(ConfigError, match="MQTT_TLS_CA"):
        load_settings({**BASE, "MQTT_TLS_CA": "/no/such/ca.pem"})


def test_overrides_are_validated_like_the_environment() -> None:
    """Command-line overrides go through the same validation (and name the variable)."""
    with pytest.raises(ConfigError, match="HTTP_PORT"):
        load_settings(dict(BASE), overrides={"HTTP_PORT": "70000"})
    assert load_settings(dict(BASE), overrides={"INSTANCE_ID": "x1"}).instance_id == "x1"


# --- TLS settings: valid spellings, and every invalid value is one exit-2 line ------------


def test_tls_spellings(tmp_path: Path) -> None:
    """mqtts:// and ssl:// mean TLS on 8883; MQTT_TLS switches mqtt:// (or the legacy
    host) to TLS but cannot switch mqtts:// off; MQTT_TLS_CA keeps an existing file."""
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    for url in ("mqtts://u:p@b", "ssl://u:p@b"):
        mqtt = load_settings({**BASE, "MQTT_URL": url}).mqtt
        assert mqtt is not None and (mqtt.tls, mqtt.port) == (True, 8883)
    mqtt = load_settings({**BASE, "MQTT_URL": "mqtt://b", "MQTT_TLS": "yes"}).mqtt
    assert mqtt is not None and (mqtt.tls, mqtt.port) == (True, 8883)
    mqtt = load_settings({**BASE, "MQTT_URL": "mqtts://b:9000", "MQTT_TLS": "false"}).mqtt
    assert mqtt is not None and (mqtt.tls, mqtt.port) == (True, 9000)
    s = load_settings({**BASE, "MQTT_TLS_CA": str(ca), "MQTT_TLS_INSECURE": "off"})
    assert s.mqtt_tls_ca == str(ca) and not s.mqtt_tls_insecure


TLS_SECRET = "pw-tls-secret-31"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MQTT_TLS", "maybe"),
        ("MQTT_TLS_INSECURE", "perhaps"),
        ("MQTT_TLS_CA", "/nonexistent/ca.pem"),
        ("MQTT_TLS_CA", "<directory>"),
        ("MQTT_URL", f"https://user:{TLS_SECRET}@broker"),
        ("MQTT_URL", f"mqtts://user:{TLS_SECRET}@broker:99999"),
        ("DATABASE_URL", f"mysql://app:{TLS_SECRET}@db/aupus?sslmode=require"),
    ],
)
def test_invalid_tls_values_exit_2_with_one_line(
    name: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`aupus-ha` exits 2 before connecting anywhere, with one line on stderr that names
    the variable (and never shows a password that was part of the bad value)."""
    from aupus_ha import cli

    for var in ("MQTT_HOST", "MQTT_PORT", "MQTT_USERNAME", "MQTT_PASSWORD", "MQTT_MODE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("MQTT_TLS", "MQTT_TLS_CA", "MQTT_TLS_INSECURE"):
        monkeypatch.delenv(var, raising=False)
    env = {**BASE, "MQTT_URL": "mqtts://user:pw@broker:8883", "INSTANCE_ID": "cfg-test"}
    env[name] = str(tmp_path) if value == "<directory>" else value
    for var, val in env.items():
        monkeypatch.setenv(var, val)
    monkeypatch.chdir(tmp_path)  # no ./.env
    code = cli.main(["migrate"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("aupus-ha: configuration error: "), lines
    assert name in lines[0]
    assert TLS_SECRET not in err + out
