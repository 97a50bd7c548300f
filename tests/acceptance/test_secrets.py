"""Secrets never reach a log line, an HTTP body, a command's output or an alert.

Real processes with distinctive secrets (the broker password, the database password in
`DATABASE_URL`, `ADMIN_TOKEN`, `SMTP_PASS`, the token in `ALERT_WEBHOOK_URL`, and the
wrong passwords of misconfigured instances, which are secrets too) are driven through the
paths that print connection details: the configuration dump at start, broker and
database connection failures (wrong password, untrusted certificate), admin routes with
wrong and right tokens, every health route and its `/api/v1` mirror, `/metrics`, alert
checks whose webhook and e-mail deliveries fail, `aupus-ha status`, `migrate` and
`step-down`, configuration errors, and the final shutdown. Everything any of them wrote
or answered is collected and searched for every secret (as given and percent-encoded).
"""

from __future__ import annotations

import asyncio
import functools
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web

from aupus_ha.lab.embedded import free_port
from aupus_ha.lab.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.acceptance.test_tls import TlsServers, fresh_database, running_tls_servers

MQTT_SECRET = "mqttSECRET4b1f9x"
MQTT_WRONG = "mqttWRONG77ac2q"
DB_SECRET = "dbSECRETc3d8e1z"
DB_WRONG = "dbWRONG19f0ak"
ADMIN_SECRET = "adminSECRET5e6a7w"
SMTP_SECRET = "smtpSECRET0b2c4v"
HOOK_SECRET = "hookSECRET8d9e1u"
SECRETS = (MQTT_SECRET, MQTT_WRONG, DB_SECRET, DB_WRONG, ADMIN_SECRET, SMTP_SECRET, HOOK_SECRET)

ROUTES = (
    "/health",
    "/health/leader",
    "/health/standby",
    "/health/cluster",
    "/health/mqtt",
    "/health/database",
    "/health/dados-recentes",
    "/health/metrics",
    "/health/metrics/simple",
    "/health/alerts",
)


@pytest.fixture(scope="module")
def tls_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServers]:
    directory = tmp_path_factory.mktemp("tls-secrets")
    with running_tls_servers(
        directory, mqtt_password=MQTT_SECRET, db_password=DB_SECRET
    ) as servers:
        yield servers


@pytest.fixture
def tls_db(tls_servers: TlsServers) -> Iterator[str]:
    with fresh_database(tls_servers) as name:
        yield name


class Webhook:
    """A webhook receiver that records every request and always answers 500."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bodies: list[str] = []
        self.paths: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/services/T000/{HOOK_SECRET}"

    async def handle(self, request: web.Request) -> web.Response:
        # The path is the secret URL itself; what must not carry secrets is the body.
        self.paths.append(request.path)
        self.bodies.append(await request.text())
        return web.Response(status=500, text="no")


@pytest.fixture
async def webhook() -> AsyncIterator[Webhook]:
    hook = Webhook()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hook.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", hook.port).start()
    try:
        yield hook
    finally:
        await runner.cleanup()


@pytest.fixture
def base_env(tls_servers: TlsServers, tls_db: str, webhook: Webhook) -> dict[str, str]:
    """Overrides the acceptance base_env: every secret set, every channel configured."""
    return {
        "DATABASE_URL": tls_servers.db_url(tls_db, "verify-full"),
        "MQTT_URL": tls_servers.mqtt_url(),
        "MQTT_TLS_CA": str(tls_servers.ca),
        "CLUSTER_NAME": f"sec-{uuid.uuid4().hex[:8]}",
        "LOG_FORMAT": "json",
        "LOG_LEVEL": "debug",
        "ADMIN_TOKEN": ADMIN_SECRET,
        "ALERT_WEBHOOK_URL": webhook.url,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(free_port()),  # nothing listens: every e-mail fails
        "SMTP_USER": "alerts@aupus.example",
        "SMTP_PASS": SMTP_SECRET,
        "ALERT_EMAIL_TO": "ops@aupus.example",
        "ALERT_INTERVAL_S": "1",
        "ALERT_COOLDOWN_S": "0",
        **FAST_TIMINGS,
    }


class Collected:
    """Every text some process or route produced, labelled by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def leaks(self) -> list[str]:
        forms = {form for s in SECRETS for form in (s, quote(s, safe=""))}
        found = []
        for where, text in self.texts:
            for line in text.splitlines():
                hits = sorted(form for form in forms if form in line)
                if hits:
                    found.append(f"{where}: {hits}: {line[:400]}")
        return found


async def _request(
    collected: Collected,
    inst: InstanceProcess,
    method: str,
    path: str,
    token: str | None = None,
) -> int:
    url = f"http://127.0.0.1:{inst.http_port}{path}"
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(method, url, headers=headers) as resp,
        ):
            text = await resp.text()
            head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items())
            collected.add(f"{inst.name} {method} {path} -> {resp.status}", f"{head}\n{text}")
            return resp.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        collected.add(f"{inst.name} {method} {path}", repr(exc))
        return 0


async def _every_route(collected: Collected, inst: InstanceProcess) -> None:
    for route in ROUTES:
        await _request(collected, inst, "GET", route)
        await _request(collected, inst, "GET", "/api/v1" + route)
        await _request(collected, inst, "HEAD", route)
    await _request(collected, inst, "GET", "/metrics")
    await _request(collected, inst, "GET", "/no/such/route")
    await _request(collected, inst, "GET", "/admin/step-down")
    for token in (None, "wrong-token", ADMIN_SECRET + "x", ADMIN_SECRET):
        await _request(collected, inst, "POST", "/health/alerts/check", token)
        await _request(collected, inst, "POST", "/api/v1/health/alerts/check", token)
    for token in (None, "wrong-token", ADMIN_SECRET[:-1]):
        await _request(collected, inst, "POST", "/admin/step-down", token)


async def _cli(
    collected: Collected, cwd: Path, env: dict[str, str], *args: str, label: str = ""
) -> int:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aupus_ha",
        *args,
        env={**os.environ, **env},
        cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    code = proc.returncode
    assert code is not None
    where = f"aupus-ha {' '.join(args)} {label} (exit {code})"
    collected.add(where + " stdout", out.decode(errors="replace"))
    collected.add(where + " stderr", err.decode(errors="replace"))
    return code


def _count(inst: InstanceProcess, event: str) -> int:
    return len(inst.find(event))


async def test_no_secret_in_any_log_body_or_output(
    spawn: ClusterFactory,
    base_env: dict[str, str],
    tls_servers: TlsServers,
    webhook: Webhook,
    tmp_path: Path,
) -> None:
    """Run a healthy pair and three misconfigured instances, drive every path that talks
    about connections or secrets, and find no secret anywhere in what came out."""
    collected = Collected()
    good_dsn = base_env["DATABASE_URL"]
    tls_db = urlsplit(good_dsn).path.lstrip("/")
    await seed_equipment(good_dsn, 2, prefix="sec")
    wrong_ca = tls_servers.write_other_ca(tmp_path / "other-ca.pem")

    a = spawn("sec-a")
    b = spawn("sec-b")
    bad_mqtt = spawn("sec-bad-mqtt", MQTT_URL=tls_servers.mqtt_url(password=MQTT_WRONG))
    bad_legacy = spawn(
        "sec-bad-legacy",
        MQTT_URL="",
        MQTT_HOST=tls_servers.mosquitto.host,
        MQTT_PORT=str(tls_servers.mosquitto.port),
        MQTT_USERNAME=tls_servers.mqtt_user,
        MQTT_PASSWORD=MQTT_WRONG,
        MQTT_TLS="true",
    )
    bad_db_password = spawn("sec-bad-dbpw", DATABASE_URL=good_dsn.replace(DB_SECRET, DB_WRONG, 1))
    bad_db_ca = spawn(
        "sec-bad-dbca", DATABASE_URL=tls_servers.db_url(tls_db, "verify-full", ca=wrong_ca)
    )
    everyone = [a, b, bad_mqtt, bad_legacy, bad_db_password, bad_db_ca]

    leader = await wait_single_leader([a, b, bad_mqtt, bad_legacy], timeout=30)
    for inst in (bad_mqtt, bad_legacy):
        await wait_until(
            functools.partial(lambda i: _count(i, "mqtt.connect_failed") >= 2, inst),
            40,
            f"{inst.name} never retried the broker: {inst.tail()}",
        )
    for inst in (bad_db_password, bad_db_ca):
        await wait_until(
            functools.partial(lambda i: _count(i, "db.unavailable") >= 2, inst),
            40,
            f"{inst.name} never retried the database: {inst.tail()}",
        )
    # Alerts (no recent data on the leader, the broker on the misconfigured ones) go to
    # the webhook, which answers 500, and to an SMTP port where nothing listens: both are
    # retried (the retries outlast this test, so their final `alerts.delivery_failed`
    # line is not waited for).
    await wait_until(
        lambda: len(webhook.bodies) >= 3, 60, f"webhook never retried: {leader.tail()}"
    )
    assert webhook.bodies, "the webhook never received an alert"
    assert set(webhook.paths) == {f"/services/T000/{HOOK_SECRET}"}, webhook.paths

    for inst in everyone:
        await _every_route(collected, inst)

    cli_env = {**base_env, "INSTANCE_ID": "sec-cli", "HTTP_PORT": str(leader.http_port)}
    assert await _cli(collected, tmp_path, cli_env, "status") == 0
    assert await _cli(collected, tmp_path, cli_env, "status", "--json") == 0
    assert await _cli(collected, tmp_path, cli_env, "migrate") == 0
    wrong_pw_env = {**cli_env, "DATABASE_URL": good_dsn.replace(DB_SECRET, DB_WRONG, 1)}
    assert await _cli(collected, tmp_path, wrong_pw_env, "status", label="wrong pw") != 0
    assert await _cli(collected, tmp_path, wrong_pw_env, "migrate", label="wrong pw") != 0
    wrong_ca_env = {
        **cli_env,
        "DATABASE_URL": tls_servers.db_url(tls_db, "verify-full", ca=wrong_ca),
    }
    assert await _cli(collected, tmp_path, wrong_ca_env, "status", label="wrong ca") != 0
    wrong_token = {**cli_env, "ADMIN_TOKEN": "not-the-token"}
    assert await _cli(collected, tmp_path, wrong_token, "step-down", label="wrong token") != 0
    for name, value in (
        ("MQTT_URL", f"http://{tls_servers.mqtt_user}:{MQTT_SECRET}@broker"),
        ("MQTT_URL", f"mqtts://{tls_servers.mqtt_user}:{MQTT_SECRET}@broker:99999"),
        ("DATABASE_URL", f"mysql://app:{DB_SECRET}@db/aupus"),
        ("MQTT_TLS", "maybe"),
        ("MQTT_TLS_CA", "/nonexistent/ca.pem"),
        ("HTTP_PORT", "70000"),
    ):
        code = await _cli(collected, tmp_path, {**cli_env, name: value}, "run", label=name)
        assert code == 2, collected.texts[-1]

    # A real handover with the right token, on the command line: logs on both sides. An
    # instance without a broker hands its leadership to one with a broker, so the leader
    # may have moved since: ask the one that leads now, among those with a broker.
    async def healthy_leader() -> InstanceProcess | None:
        found = [i for i in (a, b) if await i.is_leader()]
        return found[0] if found else None

    current = await wait_until(healthy_leader, 30, f"no leader with a broker: {a.tail()}")
    step_env = {**cli_env, "HTTP_PORT": str(current.http_port)}
    code = await _cli(collected, tmp_path, step_env, "step-down", label="right token")
    assert code == 0, collected.texts[-2:]
    await wait_until(lambda: current.find("leader.released"), 30, f"no handover: {current.tail()}")
    await wait_until(healthy_leader, 30, f"no leader after the handover: {a.tail()}")

    for inst in everyone:
        assert inst.alive(), f"{inst.name} died: {inst.tail()}"
        inst.signal(signal.SIGTERM)
    codes = await asyncio.gather(*(i.wait_exit(30) for i in everyone))
    assert codes == [0] * len(everyone), [(i.name, i.tail(5)) for i in everyone]

    for inst in everyone:
        collected.add(f"log of {inst.name}", inst.log_path.read_text(errors="replace"))
    for index, body in enumerate(webhook.bodies):
        collected.add(f"webhook request {index}", body)
    lines = sum(len(text.splitlines()) for _, text in collected.texts)
    assert lines > 200, f"suspiciously little output collected: {lines} lines"
    assert any("***" in text for _, text in collected.texts), "no masked value at all"
    leaks = collected.leaks()
    assert not leaks, "secrets leaked:\n" + "\n".join(leaks[:30])
