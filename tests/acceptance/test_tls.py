"""TLS and authentication end to end: real `aupus-ha run` processes against a Mosquitto
broker that only speaks TLS and wants a password, and a PostgreSQL server that refuses
plain TCP and wants a password (scram-sha-256), both with throwaway certificates from
`trustme`.

Positive: every documented spelling of a TLS broker (`mqtts://user:pass@...`, the legacy
`MQTT_HOST`/`MQTT_PORT`/`MQTT_USERNAME`/`MQTT_PASSWORD` with `MQTT_TLS=true`, and an
`mqtt://` URL switched to TLS by `MQTT_TLS`) with `MQTT_TLS_CA`, and a `DATABASE_URL`
with `sslmode=verify-full&sslrootcert=...` or `sslmode=require`: the instance leads,
ingests readings published over TLS and stores them over TLS.

Negative: a wrong broker password or a wrong broker CA, and a database whose certificate
does not verify against the given CA, are reported by the health routes and retried; the
process keeps running until it is told to stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import pytest
import trustme

from aupus_ha.lab.embedded import (
    EmbeddedMosquitto,
    EmbeddedPostgres,
    TlsFiles,
    postgres_bin_dir_with_ssl,
)
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    fetch,
    generic_messages,
    seed_equipment,
    wait_all_stored,
    wait_until,
)
from aupus_ha.lab.publisher import Publisher
from tests.acceptance.conftest import ClusterFactory
from tests.conftest import run_async

MQTT_USER = "aupus-ingest"
MQTT_PASSWORD = "mqtt-tls-pw-5521"
DB_PASSWORD = "db-tls-pw-9913"


# --- shared with test_secrets.py: the servers ---------------------------------------------


@dataclass
class TlsServers:
    """A TLS-only, password-protected broker and database, signed by one throwaway CA."""

    ca: Path
    other_ca: trustme.CA
    postgres: EmbeddedPostgres
    mosquitto: EmbeddedMosquitto
    mqtt_user: str
    mqtt_password: str

    def mqtt_url(self, password: str | None = None) -> str:
        secret = quote(self.mqtt_password if password is None else password, safe="")
        host, port = self.mosquitto.host, self.mosquitto.port
        return f"mqtts://{quote(self.mqtt_user, safe='')}:{secret}@{host}:{port}"

    def db_url(self, database: str, sslmode: str, *, ca: Path | None = None) -> str:
        params = {"sslmode": sslmode}
        if sslmode.startswith("verify"):
            params["sslrootcert"] = str(ca or self.ca)
        return f"{self.postgres.dsn(database)}?{urlencode(params)}"

    def write_other_ca(self, path: Path) -> Path:
        """A CA file that did not sign the servers' certificate."""
        self.other_ca.cert_pem.write_to_path(str(path))
        return path

    def cleanup(self) -> None:
        try:
            self.mosquitto.cleanup()
        finally:
            self.postgres.cleanup()


@contextlib.contextmanager
def running_tls_servers(
    directory: Path, *, mqtt_password: str = MQTT_PASSWORD, db_password: str = DB_PASSWORD
) -> Iterator[TlsServers]:
    """Both servers, running for the block (skips when no PostgreSQL build with SSL is
    installed); stopped and removed after it."""
    bin_dir = postgres_bin_dir_with_ssl()
    if bin_dir is None:
        pytest.skip("needs a PostgreSQL built with SSL (Debian package `postgresql`)")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    ca.cert_pem.write_to_path(str(files.cafile))
    cert.private_key_pem.write_to_path(str(files.keyfile))
    for index, blob in enumerate(cert.cert_chain_pems):
        blob.write_to_path(str(files.certfile), append=index > 0)
    files.keyfile.chmod(0o600)
    postgres = EmbeddedPostgres(tls=files, password=db_password, bin_dir=bin_dir)
    mosquitto = EmbeddedMosquitto(tls=files, users={MQTT_USER: mqtt_password})
    servers = TlsServers(files.cafile, trustme.CA(), postgres, mosquitto, MQTT_USER, mqtt_password)
    try:
        postgres.start()
        mosquitto.start()
        yield servers
    finally:
        servers.cleanup()


async def _admin(servers: TlsServers, *statements: str) -> None:
    conn = await asyncpg.connect(servers.db_url("postgres", "verify-full"), timeout=10)
    try:
        for statement in statements:
            await conn.execute(statement, timeout=30)
    finally:
        await conn.close(timeout=5)


@contextlib.contextmanager
def fresh_database(servers: TlsServers) -> Iterator[str]:
    """Name of a new database on the TLS-only server, dropped after the block."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    run_async(lambda: _admin(servers, f"CREATE DATABASE {name}"))
    try:
        yield name
    finally:
        if servers.postgres.is_running:
            run_async(lambda: _admin(servers, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def publish_tls(
    servers: TlsServers, messages: list[tuple[str, bytes]], timeout: float = 30
) -> None:
    """QoS 1 over TLS with the broker's password (the project's own Publisher, as
    `aupus-ha simulate` uses it); returns once every PUBACK arrived."""
    broker = servers.mosquitto
    user, password = quote(servers.mqtt_user), quote(servers.mqtt_password)
    url = f"mqtts://{user}:{password}@{broker.host}:{broker.port}"
    async with Publisher(url, ca_file=str(servers.ca)) as publisher:
        for topic, payload in messages:
            publisher.publish(topic, payload)
        await publisher.wait_acknowledged(timeout)


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    with running_tls_servers(tmp_path_factory.mktemp("tls")) as servers:
        yield servers


@pytest.fixture
def tls_db(tls_servers: TlsServers) -> Iterator[str]:
    with fresh_database(tls_servers) as name:
        yield name


@pytest.fixture
def base_env(tls_servers: TlsServers, tls_db: str) -> dict[str, str]:
    """Overrides the acceptance base_env: TLS broker and TLS database, with passwords."""
    return {
        "DATABASE_URL": tls_servers.db_url(tls_db, "verify-full"),
        "MQTT_URL": tls_servers.mqtt_url(),
        "MQTT_TLS_CA": str(tls_servers.ca),
        "CLUSTER_NAME": f"tls-{uuid.uuid4().hex[:8]}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "info",
        **FAST_TIMINGS,
    }


async def _health(inst: InstanceProcess, path: str) -> dict[str, Any]:
    _, body = await inst.get(path)
    return body or {}


def _spellings(servers: TlsServers) -> dict[str, dict[str, str]]:
    broker = servers.mosquitto
    return {
        "mqtts-url": {"MQTT_URL": servers.mqtt_url()},
        "legacy-variables": {
            "MQTT_URL": "",
            "MQTT_HOST": broker.host,
            "MQTT_PORT": str(broker.port),
            "MQTT_USERNAME": servers.mqtt_user,
            "MQTT_PASSWORD": servers.mqtt_password,
            "MQTT_TLS": "true",
        },
        "mqtt-url-with-tls-flag": {
            "MQTT_URL": f"mqtt://{broker.host}:{broker.port}",
            "MQTT_USERNAME": servers.mqtt_user,
            "MQTT_PASSWORD": servers.mqtt_password,
            "MQTT_TLS": "on",
        },
    }


@pytest.mark.parametrize(
    ("spelling", "sslmode"),
    [
        ("mqtts-url", "verify-full"),
        ("legacy-variables", "require"),
        ("mqtt-url-with-tls-flag", "verify-ca"),
    ],
)
async def test_leads_and_ingests_over_tls(
    spawn: ClusterFactory, tls_servers: TlsServers, tls_db: str, spelling: str, sslmode: str
) -> None:
    """Over a password-protected TLS broker and a TLS-only database the instance becomes
    leader, ingests what is published over TLS and stores every reading; every database
    session it opens is encrypted."""
    dsn = tls_servers.db_url(tls_db, sslmode)
    equipment = await seed_equipment(dsn, 3, prefix="tls")
    inst = spawn("tls-a", DATABASE_URL=dsn, **_spellings(tls_servers)[spelling])

    async def ready() -> bool:
        status, body = await inst.get("/health")
        return (
            status == 200
            and body is not None
            and body["role"] == "leader"
            and body["checks"]["mqtt"]["subscribedTopics"] == len(equipment)
        )

    await wait_until(ready, 30, f"never a subscribed leader over TLS: {inst.tail()}")
    messages = generic_messages(equipment, 20)
    await publish_tls(tls_servers, [(t, p) for t, p, _, _ in messages])
    await wait_all_stored(dsn, {(e, ts) for _, _, e, ts in messages}, timeout=30)

    sessions = await fetch(
        dsn,
        "SELECT a.application_name, s.ssl FROM pg_stat_activity a "
        "JOIN pg_stat_ssl s USING (pid) WHERE a.application_name LIKE 'aupus-ha/tls-a/%'",
    )
    assert sessions, "the instance has no database session"
    assert all(row["ssl"] for row in sessions), [dict(r) for r in sessions]
    mqtt = await _health(inst, "/health/mqtt")
    assert mqtt["status"] == "connected" and mqtt["counters"]["readings"] >= len(messages)
    assert inst.find("mqtt.connected"), inst.tail()

    inst.signal(signal.SIGTERM)
    assert await inst.wait_exit(30) == 0


async def test_wrong_broker_password_or_ca_is_reported_not_fatal(
    spawn: ClusterFactory, tls_servers: TlsServers, tmp_path: Path
) -> None:
    """A broker refusing the password, or a broker certificate that does not verify, is a
    disconnected broker: reported by /health/mqtt, retried, never a crash. The database
    side is fine, so the instance still leads (and stops cleanly when told)."""
    other_ca = tls_servers.write_other_ca(tmp_path / "other-ca.pem")
    bad_password = spawn("bad-pw", MQTT_URL=tls_servers.mqtt_url(password="not-the-password-7781"))
    bad_ca = spawn("bad-ca", MQTT_TLS_CA=str(other_ca))
    instances = [bad_password, bad_ca]

    async def all_led_or_stood_by() -> bool:
        roles = [(await _health(i, "/health/leader")).get("role") for i in instances]
        return sorted(str(r) for r in roles) == ["leader", "standby"]

    await wait_until(all_led_or_stood_by, 30, f"roles: {[i.tail() for i in instances]}")

    def failed_twice(inst: InstanceProcess) -> bool:
        return len(inst.find("mqtt.connect_failed")) >= 2

    for inst in instances:
        await wait_until(functools.partial(failed_twice, inst), 40, f"no retry: {inst.tail()}")
        status, body = await inst.get("/health/mqtt")
        assert status == 503 and body is not None, (status, body)
        assert body["status"] == "disconnected" and body["counters"]["connects"] == 0
        status, body = await inst.get("/health")
        assert body is not None and body["checks"]["mqtt"]["status"] == "disconnected"
        assert inst.alive(), inst.tail()
        assert not inst.find("mqtt.connected")
    for inst in instances:
        inst.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(i.wait_exit(30) for i in instances))
    assert codes == [0, 0], [i.tail() for i in instances]


async def test_database_certificate_not_trusted_is_reported_and_retried(
    spawn: ClusterFactory, tls_servers: TlsServers, tls_db: str, tmp_path: Path
) -> None:
    """sslmode=verify-full with a CA that did not sign the server certificate: the
    database is unreachable, not the program broken. /health and /health/database say
    disconnected, the connection is retried, and the process exits only when told."""
    other_ca = tls_servers.write_other_ca(tmp_path / "other-ca.pem")
    dsn = tls_servers.db_url(tls_db, "verify-full", ca=other_ca)
    inst = spawn("db-bad-ca", DATABASE_URL=dsn)

    async def retried() -> bool:
        return len(inst.find("db.unavailable")) >= 2

    await wait_until(retried, 40, f"database never retried: {inst.tail()}")
    errors = " ".join(str(e.get("error")) for e in inst.find("db.unavailable"))
    assert "certificate" in errors.lower() or "ssl" in errors.lower(), errors

    async def reported() -> bool:
        status, body = await inst.get("/health/database")
        return status == 503 and body is not None and body["status"] == "disconnected"

    await wait_until(reported, 20, f"/health/database never said disconnected: {inst.tail()}")
    status, body = await inst.get("/health")
    assert status == 503 and body is not None, (status, body)
    assert inst.alive(), inst.tail()
    inst.signal(signal.SIGTERM)
    code = await inst.wait_exit(30)
    assert code == 0, inst.tail()
