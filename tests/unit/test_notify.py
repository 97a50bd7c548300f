"""Alert delivery without a network: Slack payload shape and the bounded, drop-oldest queue."""

from __future__ import annotations

from aupus_ha.config import Secret, Settings
from aupus_ha.operations.notify import QUEUE_MAX, Notifier, slack_payload

ALERT = {
    "kind": "no_recent_data",
    "level": "CRITICAL",
    "service": "DataIngestion",
    "message": "no recent data",
    "metadata": {},
}


def _settings(webhook: str) -> Settings:
    return Settings(
        database_url=Secret("postgresql://u@h/db"),
        mqtt=None,
        instance_id="node-a",
        alert_webhook_url=Secret(webhook),
    )


def test_slack_payload_has_text_and_a_coloured_attachment() -> None:
    """`text` names level, service and cluster; the attachment carries the fields."""
    body = slack_payload(ALERT, "aupus")
    assert body["text"].startswith("[CRITICAL] DataIngestion: no recent data")
    attachment = body["attachments"][0]
    assert attachment["color"] == "#d00000" and attachment["text"] == "no recent data"
    assert {"level", "service", "cluster", "kind"} == {f["title"] for f in attachment["fields"]}
    resolved = slack_payload({**ALERT, "resolved": True}, "aupus")
    assert resolved["text"].startswith("[RESOLVED]")


def test_full_queue_drops_the_oldest_and_counts_it() -> None:
    """enqueue never blocks: past QUEUE_MAX the oldest notification goes, counted."""
    notifier = Notifier(_settings("http://127.0.0.1:9/hook"))
    for i in range(QUEUE_MAX + 3):
        notifier.enqueue({**ALERT, "message": f"m{i}"})
    assert notifier.stats.dropped == 3 and notifier.stats.queued == QUEUE_MAX + 3
    assert notifier._queue[0]["message"] == "m3"


def test_nothing_is_queued_without_a_destination() -> None:
    """No webhook and no SMTP: alerts are stored but not queued for delivery."""
    notifier = Notifier(_settings(""))
    notifier.enqueue(ALERT)
    assert notifier.stats.queued == 0 and not notifier._queue
