"""Alert e-mail against a real SMTP server: content, STARTTLS + AUTH, retries, channels.

The server is aiosmtpd on a free port of 127.0.0.1, with STARTTLS (a throwaway trustme
certificate: notify.py upgrades every port but 25) and AUTH LOGIN/PLAIN checked against
SMTP_USER/SMTP_PASS. An alert is opened through POST /health/alerts/check: the only
reading is three hours old, so `no_recent_data` (CRITICAL) is the one condition that
holds (coverage and quality are fine).
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any

import aiohttp
import asyncpg
import pytest
import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as SMTPServer
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from aupus_ha.lab.embedded import free_port
from aupus_ha.lab.localcluster import (
    InstanceProcess,
    seed_equipment,
    wait_single_leader,
    wait_until,
)
from tests.acceptance.conftest import ClusterFactory
from tests.helpers import INSERT_AGED_READING

TOKEN = "mail-token-4321"
USER = "alerts@aupus.example"
PASSWORD = "smtp-secret-77"
TO = "ops@aupus.example"
STALE_S = 3 * 3600.0  # older than RECENT_DATA_CRITICAL (2 h): no_recent_data is CRITICAL
DELIVERY_TIMEOUT_S = 20.0


@dataclass
class Mailbox:
    """What the SMTP server received, and who logged in."""

    port: int = field(default_factory=free_port)
    ca_file: str = ""  # the CA the instance verifies this server's certificate with
    messages: list[EmailMessage] = field(default_factory=list)
    logins: list[tuple[str, str]] = field(default_factory=list)
    recipients: list[list[str]] = field(default_factory=list)

    async def handle_DATA(self, server: SMTPServer, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        self.recipients.append(list(envelope.rcpt_tos))
        return "250 OK"

    def authenticate(
        self, server: SMTPServer, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert isinstance(data, LoginPassword)
        login, password = data.login.decode(), data.password.decode()
        self.logins.append((login, password))
        return AuthResult(success=(login, password) == (USER, PASSWORD))

    def about(self, kind: str, *, resolved: bool = False) -> list[EmailMessage]:
        """Messages whose body names `kind` (the resolved ones or the others)."""
        return [
            m
            for m in self.messages
            if f"kind: {kind}" in _body(m)
            and str(m["Subject"]).startswith("[RESOLVED]") == resolved
        ]


def _body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    return part.get_content() if part is not None else ""


@pytest.fixture(scope="module")
def smtp_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def smtp_ca_file(smtp_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The CA the instance must verify the SMTP server's certificate with."""
    path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    smtp_ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls_context(smtp_ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    smtp_ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


def _controller(box: Mailbox, tls: ssl.SSLContext) -> Controller:
    return Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        tls_context=tls,
        require_starttls=True,
        authenticator=box.authenticate,
        auth_require_tls=True,
    )


@pytest.fixture
def mailbox(tls_context: ssl.SSLContext, smtp_ca_file: str) -> Iterator[Mailbox]:
    box = Mailbox(ca_file=smtp_ca_file)
    controller = _controller(box, tls_context)
    controller.start()
    yield box
    controller.stop()


def _mail_env(box: Mailbox, **extra: str) -> dict[str, str]:
    return {
        "SMTP_TLS_CA": box.ca_file,
        "ADMIN_TOKEN": TOKEN,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(box.port),
        "SMTP_USER": USER,
        "SMTP_PASS": PASSWORD,
        "ALERT_EMAIL_TO": TO,
        **extra,
    }


async def _insert_reading(dsn: str, equipamento_id: str, age_s: float) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(INSERT_AGED_READING, equipamento_id, age_s)
    finally:
        await conn.close()


async def _check(inst: InstanceProcess) -> dict[str, Any]:
    url = f"http://127.0.0.1:{inst.http_port}/health/alerts/check"
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as s,
        s.post(url, headers={"Authorization": f"Bearer {TOKEN}"}) as resp,
    ):
        assert resp.status == 200, await resp.text()
        body: dict[str, Any] = await resp.json()
        return body


async def _stale_cluster(
    spawn: ClusterFactory, database_url: str, box: Mailbox, **extra: str
) -> tuple[InstanceProcess, str]:
    """A leader whose only reading is STALE_S old; returns it and the equipment id."""
    equipment = await seed_equipment(database_url, 1)
    await _insert_reading(database_url, equipment[0][0], STALE_S)
    leader = spawn("node-a", **_mail_env(box, **extra))
    await wait_single_leader([leader])
    return leader, equipment[0][0]


async def test_an_open_and_a_resolved_alert_are_mailed(
    spawn: ClusterFactory, database_url: str, mailbox: Mailbox
) -> None:
    """Subject `[CRITICAL] DataIngestion: ...`, body with kind and metadata; then RESOLVED."""
    leader, equipamento_id = await _stale_cluster(spawn, database_url, mailbox)
    body = await _check(leader)
    assert body["opened"] == ["no_recent_data"], body

    await wait_until(lambda: mailbox.about("no_recent_data"), DELIVERY_TIMEOUT_S, "no mail")
    mail = mailbox.about("no_recent_data")[0]
    subject = str(mail["Subject"])
    assert subject.startswith("[CRITICAL] DataIngestion: no recent data"), subject
    assert f"(cluster {_cluster_of(leader)})" in subject
    assert mail["To"] == TO and mail["From"] == USER
    text = _body(mail)
    assert "kind: no_recent_data" in text and '"hoursSinceLastData": 3.' in text, text
    assert mailbox.recipients[0] == [TO]
    assert (USER, PASSWORD) in mailbox.logins  # AUTH after STARTTLS, with SMTP_USER/PASS

    await _insert_reading(database_url, equipamento_id, 1.0)
    body = await _check(leader)
    assert body["resolved"] == ["no_recent_data"], body
    await wait_until(
        lambda: mailbox.about("no_recent_data", resolved=True), DELIVERY_TIMEOUT_S, "no resolved"
    )
    resolved = mailbox.about("no_recent_data", resolved=True)[0]
    assert str(resolved["Subject"]).startswith("[RESOLVED] DataIngestion: resolved: no recent")
    assert PASSWORD not in leader.log_path.read_text()


def _cluster_of(inst: InstanceProcess) -> str:
    return inst.env["CLUSTER_NAME"]


class RefusingServer:
    """An SMTP server that is up but refuses service (421) and counts the attempts."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.attempts = 0
        self._server: asyncio.Server | None = None

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.attempts += 1
        writer.write(b"421 4.3.2 Service not available, try again later\r\n")
        await writer.drain()
        writer.close()

    async def __aenter__(self) -> RefusingServer:
        self._server = await asyncio.start_server(self._greet, "127.0.0.1", self.port)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


@pytest.fixture
async def refusing_then_up(
    tls_context: ssl.SSLContext, smtp_ca_file: str
) -> AsyncIterator[tuple[RefusingServer, Mailbox]]:
    box = Mailbox(ca_file=smtp_ca_file)
    async with RefusingServer(box.port) as refusing:
        yield refusing, box


async def test_delivery_retries_until_the_smtp_server_comes_up(
    spawn: ClusterFactory,
    database_url: str,
    tls_context: ssl.SSLContext,
    refusing_then_up: tuple[RefusingServer, Mailbox],
) -> None:
    """The first attempt meets a 421; the real server comes up and the retry delivers.

    `no_recent_data` is the first notification queued; without retries its one attempt
    would fail and only the later handover notification would arrive.
    """
    refusing, box = refusing_then_up
    leader, _ = await _stale_cluster(spawn, database_url, box)
    body = await _check(leader)
    assert body["opened"] == ["no_recent_data"], body
    await wait_until(lambda: refusing.attempts >= 1, DELIVERY_TIMEOUT_S, "no SMTP attempt")
    await refusing.close()
    controller = _controller(box, tls_context)
    await asyncio.to_thread(controller.start)
    try:
        await wait_until(lambda: box.about("no_recent_data"), DELIVERY_TIMEOUT_S, "not retried")
        assert refusing.attempts == 1  # the refused attempt was the same notification's
        assert not leader.find("alerts.delivery_failed")
    finally:
        await asyncio.to_thread(controller.stop)


async def test_a_dead_webhook_does_not_stop_the_email(
    spawn: ClusterFactory, database_url: str, mailbox: Mailbox
) -> None:
    """Webhook and e-mail are separate channels: a failing webhook does not hold the mail."""
    dead = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    leader, _ = await _stale_cluster(spawn, database_url, mailbox, ALERT_WEBHOOK_URL=dead)
    await _check(leader)
    await wait_until(lambda: mailbox.about("no_recent_data"), DELIVERY_TIMEOUT_S, "no mail")
    # Delivered while the webhook is still being retried (about a minute of backoff):
    # the channels run side by side, the mail never waits for the webhook to give up.
    assert not leader.find("alerts.delivery_failed", channel="webhook")
