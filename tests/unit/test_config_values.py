"""Settings: the text parsers (booleans, choices, names, URLs, files) and what the loaded
settings show of themselves (masked secrets, the start-up summary, where values come from).

Every refusal is compared with its whole message: the variable, the value (unless it is
a secret) and what the variable accepts.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aupus_ha.config import (
    ConfigError,
    MqttEndpoint,
    Secret,
    Settings,
    default_value,
    load_dotenv_file,
    load_settings,
    mask_url,
)
from tests.unit.test_compose_and_docs import documented_variables

DB = "postgresql://u@db/aupus"
BASE = {"DATABASE_URL": DB, "MQTT_URL": "mqtt://broker:1883"}


def load(env: dict[str, str]) -> Settings:
    return load_settings(env, dotenv=None)


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as caught:
        load(env)
    return str(caught.value)


def endpoint(env: dict[str, str]) -> MqttEndpoint:
    mqtt = load(env).mqtt
    assert mqtt is not None
    return mqtt


# --- booleans -------------------------------------------------------------------------------

TRUE_SPELLINGS = ["1", "true", "yes", "on", "TRUE", "Yes", " on "]
FALSE_SPELLINGS = ["0", "false", "no", "off", "FALSE", "No", " off "]


@pytest.mark.parametrize("name", ["MQTT_TLS_INSECURE", "SPOOL_FSYNC"])
def test_boolean_spellings(name: str) -> None:
    """true/false, 1/0, yes/no, on/off in any case and with spaces around."""
    attr = name.lower()
    for raw in TRUE_SPELLINGS:
        assert getattr(load({**BASE, name: raw}), attr) is True, raw
    for raw in FALSE_SPELLINGS:
        assert getattr(load({**BASE, name: raw}), attr) is False, raw


def test_mqtt_tls_spellings_and_empty() -> None:
    """MQTT_TLS is read outside the common defaults path: empty is off, too."""
    legacy = {"DATABASE_URL": DB, "MQTT_HOST": "b"}
    for raw in TRUE_SPELLINGS:
        assert endpoint({**legacy, "MQTT_TLS": raw}).tls is True, raw
    for raw in [*FALSE_SPELLINGS, ""]:
        assert endpoint({**legacy, "MQTT_TLS": raw}).tls is False, raw


@pytest.mark.parametrize("name", ["MQTT_TLS", "MQTT_TLS_INSECURE", "SPOOL_FSYNC"])
@pytest.mark.parametrize("raw", ["maybe", "2", "y", "enabled"])
def test_anything_else_is_not_a_boolean(name: str, raw: str) -> None:
    assert refusal({**BASE, name: raw}) == (
        f"{name}={raw!r} is not a boolean (accepts true/false, 1/0, yes/no)"
    )


# --- choices ---------------------------------------------------------------------------------

CHOICES = {
    "MQTT_MODE": ("mqtt_mode", ("production", "development", "disabled")),
    "LOG_FORMAT": ("log_format", ("json", "console")),
    "LOG_LEVEL": ("log_level", ("debug", "info", "warning", "error")),
    "HEALTH_DETAILS": ("health_details", ("token", "public")),
}


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_every_choice_is_accepted_in_any_case(name: str) -> None:
    attr, choices = CHOICES[name]
    for choice in choices:
        for raw in (choice, choice.upper(), f" {choice.title()} "):
            assert getattr(load({**BASE, name: raw}), attr) == choice, raw


@pytest.mark.parametrize("name", sorted(CHOICES))
def test_a_value_outside_the_choices_is_refused(name: str) -> None:
    """The message lists the choices in their documented order."""
    _, choices = CHOICES[name]
    for raw in ("xml", "Productions", "info,debug"):
        assert refusal({**BASE, name: raw}) == (
            f"{name}={raw!r} is invalid (accepts {' | '.join(choices)})"
        )


def test_mode_decides_leading_and_mqtt() -> None:
    """Only production may lead; disabled turns MQTT off even with a broker set."""
    production, development = (
        load({**BASE, "MQTT_MODE": m}) for m in ("production", "development")
    )
    assert production.may_lead and production.mqtt_enabled
    assert not development.may_lead and development.mqtt_enabled
    disabled = load({**BASE, "MQTT_MODE": "disabled"})
    assert disabled.mqtt is not None and not disabled.mqtt_enabled and not disabled.may_lead
    alone = load({"DATABASE_URL": DB, "MQTT_MODE": "disabled"})
    assert alone.mqtt is None and not alone.mqtt_enabled


@pytest.mark.parametrize("mode", ["production", "development", ""])
def test_a_broker_is_required_unless_disabled(mode: str) -> None:
    env = {"DATABASE_URL": DB, "MQTT_MODE": mode, "MQTT_URL": " ", "MQTT_HOST": " "}
    assert refusal(env) == "MQTT_URL (or MQTT_HOST) is required unless MQTT_MODE=disabled"


# --- names -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["INSTANCE_ID", "CLUSTER_NAME"])
def test_identifier_length_and_characters(name: str) -> None:
    """1-128 characters of letters, digits and - _ . : @; spaces around are dropped."""
    attr = name.lower()
    every_allowed = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@"
    for raw in ("a" * 128, every_allowed, " x1 ", "7"):
        assert getattr(load({**BASE, name: raw}), attr) == raw.strip(), raw
    for raw in ("a" * 129, "has space", "a/b", "é", "a;b", "a\x00b"):
        assert refusal({**BASE, name: raw}) == (
            f"{name}={raw!r} is invalid (accepts 1-128 characters: letters, digits, - _ . : @)"
        )


@pytest.mark.parametrize(
    ("raw", "zone"),
    [
        ("Etc/GMT+3", "Etc/GMT+3"),
        ("EST5EDT", "EST5EDT"),
        (" America/Sao_Paulo ", "America/Sao_Paulo"),
        ("America/Port-au-Prince", "America/Port-au-Prince"),
        ("uTc", "UTC"),
    ],
)
def test_zone_names_with_every_allowed_character(raw: str, zone: str) -> None:
    assert load({**BASE, "LEGACY_TIMESTAMP_ZONE": raw}).legacy_timestamp_zone == zone


@pytest.mark.parametrize("raw", ["Etc/GMT+99", "America", "America/", "America/Sao Paulo"])
def test_zone_names_python_does_not_know_are_refused(raw: str) -> None:
    assert refusal({**BASE, "LEGACY_TIMESTAMP_ZONE": raw}) == (
        f"LEGACY_TIMESTAMP_ZONE={raw!r} is invalid (accepts an IANA time zone name, e.g. UTC)"
    )


# --- the database URL ---------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", "   "])
def test_database_url_is_required(raw: str | None) -> None:
    env = {"MQTT_URL": "mqtt://b"} if raw is None else {"MQTT_URL": "mqtt://b", "DATABASE_URL": raw}
    assert refusal(env) == (
        "DATABASE_URL is required (accepts postgresql://user:password@host:port/db)"
    )


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://u:p@db:5432/aupus",
        "postgres://db/aupus",
        "postgresql:///aupus?host=/var/run/postgresql",
        " postgresql://db/aupus ",
    ],
)
def test_database_url_forms(url: str) -> None:
    """Both schemes, a host or a host= parameter; kept as given (spaces trimmed)."""
    assert load({**BASE, "DATABASE_URL": url}).database_url == Secret(url.strip())


@pytest.mark.parametrize(
    "url",
    [
        "mysql://db/aupus",
        "postgresql:///aupus",
        "db:5432/aupus",
        "postgresql://",
        # "host=" inside another parameter's name or value is not a host parameter,
        # and an empty host= names none (asyncpg would then pick a default host).
        "postgresql:///aupus?ghost=db",
        "postgresql:///aupus?application_name=host=db",
        "postgresql:///aupus?host=",
    ],
)
def test_database_url_without_scheme_or_host_is_refused(url: str) -> None:
    assert refusal({**BASE, "DATABASE_URL": url}) == (
        "DATABASE_URL is invalid (accepts postgresql://user:password@host:port/database)"
    )


@pytest.mark.parametrize(
    "mode", ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
)
def test_every_libpq_sslmode_is_accepted(mode: str) -> None:
    assert load({**BASE, "DATABASE_URL": f"{DB}?sslmode={mode}"}).database_url


def test_an_unknown_sslmode_is_refused_with_the_list() -> None:
    assert refusal({**BASE, "DATABASE_URL": f"{DB}?sslmode=Require"}) == (
        "DATABASE_URL sslmode='Require' is invalid (accepts disable, allow, prefer, require, "
        "verify-ca, verify-full)"
    )


@pytest.mark.parametrize("name", ["sslrootcert", "sslcert", "sslkey"])
def test_database_tls_files_must_exist(name: str, tmp_path: Path) -> None:
    """An existing file (or `system` for the CA) is accepted; a missing one is refused."""
    pem = tmp_path / "x.pem"
    pem.write_text("pem\n")
    assert load({**BASE, "DATABASE_URL": f"{DB}?{name}={pem}"}).database_url
    missing = tmp_path / "missing.pem"
    assert refusal({**BASE, "DATABASE_URL": f"{DB}?sslmode=require&{name}={missing}"}) == (
        f"DATABASE_URL {name}={str(missing)!r} is not a readable file"
    )
    assert refusal({**BASE, "DATABASE_URL": f"{DB}?{name}={tmp_path}"}).endswith(
        "is not a readable file"
    )


def test_system_root_certificates() -> None:
    """`sslrootcert=system` (libpq 16) means the system's CA store, not a file."""
    url = f"{DB}?sslmode=verify-full&sslrootcert=system"
    assert load({**BASE, "DATABASE_URL": url}).database_url == Secret(url)


# --- the broker --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "tls", "port"),
    [
        ("mqtt://b", False, 1883),
        ("tcp://b", False, 1883),
        ("mqtts://b", True, 8883),
        ("ssl://b", True, 8883),
        ("mqtt://b:1", False, 1),
        ("mqtts://b:65535", True, 65535),
    ],
)
def test_broker_url_schemes_and_ports(url: str, tls: bool, port: int) -> None:
    mqtt = endpoint({**BASE, "MQTT_URL": url})
    assert (mqtt.host, mqtt.tls, mqtt.port, mqtt.username) == ("b", tls, port, None)
    assert mqtt.password == Secret("")


@pytest.mark.parametrize("url", ["mqtt://b:65536", "mqtt://b:0", "mqtt://b:port", "mqtt://b:-1"])
def test_a_broker_port_outside_1_65535_is_refused(url: str) -> None:
    assert refusal({**BASE, "MQTT_URL": url}) == "MQTT_URL has an invalid port (accepts 1..65535)"


@pytest.mark.parametrize(
    "url", ["http://user:pw-secret-1@broker", "mqtt://", "broker:1883", "mqtts://:1883"]
)
def test_a_broker_url_of_another_scheme_or_without_host_is_refused(url: str) -> None:
    """The message quotes the URL with its password masked."""
    message = refusal({**BASE, "MQTT_URL": url})
    assert (
        message
        == f"MQTT_URL={mask_url(url)!r} is invalid (accepts mqtt://host:port or mqtts://...)"
    )
    assert "pw-secret-1" not in message


def test_broker_credentials_are_percent_decoded_and_win_over_the_legacy_ones() -> None:
    env = {
        **BASE,
        "MQTT_URL": "mqtts://us%40er:p%3Aw%2F1@broker:8884",
        "MQTT_USERNAME": "legacy",
        "MQTT_PASSWORD": "legacy-pw",
        "MQTT_HOST": "other",
        "MQTT_PORT": "1",
    }
    mqtt = endpoint(env)
    assert (mqtt.host, mqtt.port, mqtt.username) == ("broker", 8884, "us@er")
    assert mqtt.password == Secret("p:w/1")
    assert mqtt.display() == "mqtts://us@er:***@broker:8884"


def test_a_legacy_password_without_a_user_is_not_used() -> None:
    mqtt = endpoint({**BASE, "MQTT_URL": "mqtt://b", "MQTT_PASSWORD": "pw-1"})
    assert (mqtt.username, mqtt.password) == (None, Secret(""))


def test_legacy_broker_variables() -> None:
    """MQTT_HOST with TLS defaults to 8883; blank MQTT_URL falls back to MQTT_HOST."""
    mqtt = endpoint({"DATABASE_URL": DB, "MQTT_URL": "  ", "MQTT_HOST": " b ", "MQTT_TLS": "1"})
    assert (mqtt.host, mqtt.port, mqtt.tls, mqtt.username) == ("b", 8883, True, None)
    assert mqtt.display() == "mqtts://b:8883"
    mqtt = endpoint({"DATABASE_URL": DB, "MQTT_HOST": "b", "MQTT_USERNAME": "", "MQTT_PORT": " "})
    assert (mqtt.port, mqtt.username) == (1883, None)
    assert mqtt.display() == "mqtt://b:1883"


# --- files and URLs checked at start ------------------------------------------------------------


@pytest.mark.parametrize("name", ["MQTT_TLS_CA", "SMTP_TLS_CA"])
def test_ca_bundles_must_be_files(name: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("pem\n")
    assert getattr(load({**BASE, name: f" {ca} "}), name.lower()) == str(ca)
    for path in (tmp_path / "missing.pem", tmp_path):
        assert refusal({**BASE, name: str(path)}) == (
            f"{name}={str(path)!r} is not a readable file (accepts a PEM CA bundle)"
        )


def test_webhook_url_needs_http_and_a_host() -> None:
    for url in ("http://hooks.example/x", " https://hooks.example:8443/T/B "):
        assert load({**BASE, "ALERT_WEBHOOK_URL": url}).alert_webhook_url == Secret(url.strip())
    for url in ("https://", "https:///path", "mailto:ops@example"):
        assert refusal({**BASE, "ALERT_WEBHOOK_URL": url}) == (
            "ALERT_WEBHOOK_URL is invalid (accepts an http:// or https:// URL with a host)"
        )


def test_spool_dir_refusals_say_why(tmp_path: Path) -> None:
    """A file is not a directory; an existing directory others may write is refused;
    a directory still to be created under such a parent is created private later."""
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert (
        refusal({**BASE, "SPOOL_DIR": str(a_file)}) == f"SPOOL_DIR={str(a_file)!r}: not a directory"
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    assert refusal({**BASE, "SPOOL_DIR": str(shared)}) == (
        f"SPOOL_DIR={str(shared)!r} is refused: writable by group or others (mode 777; chmod go-w)"
    )
    assert load({**BASE, "SPOOL_DIR": str(shared / "spool")}).spool_dir == shared / "spool"
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    assert load({**BASE, "SPOOL_DIR": str(private)}).spool_dir == private


# --- secrets and the start-up summary -----------------------------------------------------------


def test_secret_behaves_as_a_value_but_never_prints() -> None:
    secret = Secret("pw-123456")
    assert secret.reveal() == "pw-123456" and secret and not Secret("")
    assert secret == Secret("pw-123456") and secret != Secret("other") and secret != "pw-123456"
    assert hash(secret) == hash(Secret("pw-123456"))
    assert len({secret, Secret("pw-123456"), Secret("")}) == 2
    assert repr(secret) == str(secret) == "Secret('***')"
    assert repr(Secret("")) == str(Secret("")) == "Secret('')"


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("postgresql://u:p4ss@h:5/d", "postgresql://u:***@h:5/d"),
        ("postgresql://u:p@ss@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u:pa:ss@h/d", "postgresql://u:***@h/d"),
        ("postgresql://u@h/d", "postgresql://u@h/d"),
        ("postgresql://h/d", "postgresql://h/d"),
        ("postgresql://u:[x@h/d", "***"),
        # The same user:password@host again later in the URL is masked there too.
        (
            "postgresql://u:pw-1@h/d?application_name=u:pw-1@h&x=u:pw-1@h",
            "postgresql://u:***@h/d?application_name=u:***@h&x=u:***@h",
        ),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    """The user and host stay; the password, even holding @ or :, does not."""
    assert mask_url(url) == masked


def test_the_summary_shows_every_setting_and_no_secret(tmp_path: Path) -> None:
    env = {
        "DATABASE_URL": "postgresql://app:db-pw-1@db/aupus",
        "MQTT_URL": "mqtts://ingest:mq-pw-1@broker",
        "ADMIN_TOKEN": "admin-token-0123",
        "SMTP_PASS": "smtp-pw-1",
        "SPOOL_DIR": str(tmp_path),
    }
    settings = load(env)
    summary = settings.safe_summary()
    assert list(summary) == [f.name for f in settings.__dataclass_fields__.values()]
    assert summary["database_url"] == "postgresql://app:***@db/aupus"
    assert summary["mqtt"] == "mqtts://ingest:***@broker:8883"
    assert summary["spool_dir"] == str(tmp_path)
    assert (summary["admin_token"], summary["smtp_pass"], summary["alert_webhook_url"]) == (
        "***",
        "***",
        "",
    )
    assert summary["http_port"] == 3000 and summary["spool_fsync"] is True
    for secret in ("db-pw-1", "mq-pw-1", "admin-token-0123", "smtp-pw-1"):
        assert secret not in repr(summary) + repr(settings)
    assert load({"DATABASE_URL": DB, "MQTT_MODE": "disabled"}).safe_summary()["mqtt"] is None


def test_with_overrides_changes_only_what_it_names() -> None:
    settings = load(BASE)
    changed = settings.with_overrides(http_port=0, batch_max=7)
    assert (changed.http_port, changed.batch_max) == (0, 7)
    defaults = {"http_port": default_value("HTTP_PORT"), "batch_max": default_value("BATCH_MAX")}
    assert changed.with_overrides(**defaults) == settings


# --- where values come from ---------------------------------------------------------------------


@pytest.fixture
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    """No aupus variable from the test runner's environment."""
    for name in documented_variables():
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("clean_environ")
def test_env_file_then_environment_then_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dotenv = tmp_path / "aupus.env"
    dotenv.write_text(
        f"DATABASE_URL={DB}\nMQTT_URL=mqtt://from-file\nBATCH_MAX=11\nHTTP_PORT=3011\nFLAG\n"
    )
    assert load_dotenv_file(dotenv) == {
        "DATABASE_URL": DB,
        "MQTT_URL": "mqtt://from-file",
        "BATCH_MAX": "11",
        "HTTP_PORT": "3011",
    }
    assert load_dotenv_file(tmp_path / "missing.env") == {}
    monkeypatch.setenv("BATCH_MAX", "12")
    settings = load_settings(dotenv=dotenv, overrides={"HTTP_PORT": "3013"})
    assert (settings.batch_max, settings.http_port) == (12, 3013)
    assert settings.mqtt is not None and settings.mqtt.host == "from-file"
    with pytest.raises(ConfigError) as caught:
        load_settings(dotenv=None)  # the environment alone has no DATABASE_URL
    assert str(caught.value).startswith("DATABASE_URL is required")
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"DATABASE_URL={DB}\nMQTT_MODE=disabled\n")
    assert load_settings().mqtt_mode == "disabled"  # ./.env by default
    assert os.environ.get("MQTT_MODE") is None
