"""Alert delivery: a bounded queue and one background sender (webhook, then e-mail).

Slack-compatible JSON (`text` plus one coloured attachment) is POSTed to
`ALERT_WEBHOOK_URL` with aiohttp, a timeout and retries (tenacity); when `SMTP_HOST` and
`ALERT_EMAIL_TO` are set the same alert is also e-mailed (stdlib smtplib in a thread).
Each channel is tried and retried on its own: a dead webhook never holds back the mail.
`enqueue` never blocks: when the queue is full (the webhook has been down for long) the
oldest waiting notification is dropped and counted.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

import aiohttp
import orjson
from tenacity import AsyncRetrying, stop_after_attempt, wait_exponential

from aupus_ha.config import Settings
from aupus_ha.logs import get_logger

log = get_logger(__name__)

Body = dict[str, Any]
COLORS = {"INFO": "#439fe0", "WARNING": "#daa038", "CRITICAL": "#d00000", "RESOLVED": "#2eb886"}
QUEUE_MAX = 200
SEND_TIMEOUT_S = 10.0
# About a minute of retries (0.5, 1, 2, 4, 8, 16, 30 s apart): a webhook or mail relay
# restarting does not cost the notification. Later ones wait in the bounded queue.
SEND_ATTEMPTS = 8
SMTPS_PORT = 465

REDIRECT_STATUS = 300
SMTP_PLAIN_PORT = 25

Send = Callable[[dict[str, Any]], Awaitable[None]]


class WebhookRedirected(Exception):
    """The webhook answered with a redirect, which is not followed (a failed attempt)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"webhook answered {status}: redirects are not followed")
        self.status = status


@dataclass(slots=True)
class DeliveryStats:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0


class Notifier:
    """Bounded queue + one background sender (webhook, then e-mail when configured)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._queue: deque[Body] = deque(maxlen=QUEUE_MAX)
        self._ready = asyncio.Event()
        self.stats = DeliveryStats()

    @property
    def enabled(self) -> bool:
        s = self._settings
        return bool(s.alert_webhook_url) or bool(s.smtp_host and s.alert_email_to)

    def enqueue(self, alert: Body, *, resolved: bool = False) -> None:
        """Never blocks: when full, the oldest waiting notification is dropped."""
        if not self.enabled:
            return
        if len(self._queue) == QUEUE_MAX:
            self.stats.dropped += 1
            log.warning("alerts.dropped", dropped=self.stats.dropped)
        self._queue.append({**alert, "resolved": resolved})
        self.stats.queued += 1
        self._ready.set()

    async def run(self) -> None:
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                item = self._queue.popleft()
                # Concurrently: a webhook retrying for a minute never delays the mail.
                delivered = await asyncio.gather(
                    *(self._deliver(name, send, item) for name, send in self._channels())
                )
                if all(delivered):
                    self.stats.sent += 1
                else:
                    self.stats.failed += 1

    def _channels(self) -> list[tuple[str, Send]]:
        """The configured channels, each delivered (and retried) on its own."""
        s = self._settings
        channels: list[tuple[str, Send]] = []
        if s.alert_webhook_url:
            channels.append(
                ("webhook", lambda item: self._post(slack_payload(item, s.cluster_name)))
            )
        if s.smtp_host and s.alert_email_to:
            channels.append(("email", lambda item: asyncio.to_thread(self._send_mail, item)))
        return channels

    async def _deliver(self, channel: str, send: Send, item: Body) -> bool:
        """Up to SEND_ATTEMPTS tries with backoff; False (logged) when all failed.

        A dead webhook must not stop the e-mail (nor the other way round).
        """
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(SEND_ATTEMPTS),
                wait=wait_exponential(multiplier=0.5, max=30),
                reraise=True,
            ):
                with attempt:
                    await send(item)
        except Exception as exc:  # a dead channel must not stop us
            # Never the exception's text: it may carry the (secret) webhook URL.
            log.warning(
                "alerts.delivery_failed",
                channel=channel,
                kind=item["kind"],
                error=type(exc).__name__,
                status=getattr(exc, "status", None),
                failed=self.stats.failed + 1,
            )
            return False
        return True

    async def _post(self, payload: Body) -> None:
        timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT_S)
        url = self._settings.alert_webhook_url.reveal()
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            # A redirect is not followed: it would resend the alert (and whatever the
            # URL carries) to a place nobody configured.
            session.post(
                url, data=orjson.dumps(payload), headers=_JSON, allow_redirects=False
            ) as resp,
        ):
            resp.raise_for_status()
            if resp.status >= REDIRECT_STATUS:
                raise WebhookRedirected(resp.status)

    def _send_mail(self, item: Body) -> None:
        s = self._settings
        assert s.smtp_host and s.alert_email_to
        msg = EmailMessage()
        msg["Subject"] = _headline(item, s.cluster_name)
        msg["From"] = s.smtp_user or f"aupus-ha@{s.smtp_host}"
        msg["To"] = s.alert_email_to
        msg.set_content(_text(item))
        # The server's certificate is verified (system CAs, or SMTP_TLS_CA): SMTP_PASS
        # must not be sent to whoever sits in the middle.
        context = ssl.create_default_context(cafile=s.smtp_tls_ca)
        smtp: smtplib.SMTP
        if s.smtp_port == SMTPS_PORT:
            smtp = smtplib.SMTP_SSL(
                s.smtp_host, s.smtp_port, timeout=SEND_TIMEOUT_S, context=context
            )
        else:
            smtp = smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=SEND_TIMEOUT_S)
        with smtp:
            if s.smtp_port != SMTPS_PORT and (
                s.smtp_port != SMTP_PLAIN_PORT or _offers_starttls(smtp)
            ):
                # Port 25 too when the server offers it: SMTP_PASS never goes in clear
                # to a server that can do better (a start-up warning covers the rest).
                smtp.starttls(context=context)
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_pass.reveal())
            smtp.send_message(msg)


_JSON = {"Content-Type": "application/json"}


def _offers_starttls(smtp: smtplib.SMTP) -> bool:
    smtp.ehlo()
    return smtp.has_extn("starttls")


def _headline(item: Body, cluster: str) -> str:
    state = "RESOLVED" if item.get("resolved") else item["level"]
    return f"[{state}] {item['service']}: {item['message']} (cluster {cluster})"


def _text(item: Body) -> str:
    meta = orjson.dumps(item.get("metadata") or {}, option=orjson.OPT_INDENT_2).decode()
    return f"{item['message']}\nkind: {item['kind']}\nmetadata: {meta}\n"


def slack_payload(item: Body, cluster: str) -> Body:
    """Slack-compatible incoming-webhook JSON: `text` plus one coloured attachment."""
    state = "RESOLVED" if item.get("resolved") else item["level"]
    fields = [
        {"title": "level", "value": item["level"], "short": True},
        {"title": "service", "value": item["service"], "short": True},
        {"title": "cluster", "value": cluster, "short": True},
        {"title": "kind", "value": item["kind"], "short": True},
    ]
    return {
        "text": _headline(item, cluster),
        "attachments": [
            {
                "color": COLORS.get(state, COLORS["INFO"]),
                "title": f"{item['service']} — {state}",
                "text": item["message"],
                "fields": fields,
                "ts": int(time.time()),
            }
        ],
    }
