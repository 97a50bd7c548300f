"""`GET /metrics`: Prometheus text format, from a registry of this instance's own.

Counters and gauges are read from the stats the instance already keeps (intake, buffer,
flusher, HA loop) at scrape time, so the intake path pays nothing for them. The flush
latency histogram is fed by the flusher, which reports each committed flush to
`Metrics.observe_flush` (an observer callback: the store is not wrapped).
Two values come from the database at scrape time, with a short timeout: its round-trip
latency and the cluster's handover count.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from aupus_ha import __version__
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.decoding.timestamps import MOTIVOS
from aupus_ha.operations.device_alerts import count_offline
from aupus_ha.operations.httpguard import GuardStats
from aupus_ha.operations.view import InstanceView
from aupus_ha.pipeline.store import FlushResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "aupus_ha"
SCRAPE_QUERY_TIMEOUT_S = 1.0
FLUSH_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def flush_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        f"{PREFIX}_flush_duration_seconds",
        "Duration of each committed flush transaction (leader only).",
        buckets=FLUSH_BUCKETS_S,
        registry=registry,
    )


class Metrics:
    """The per-instance registry and what is read from the database at scrape time."""

    def __init__(self, instance: InstanceView) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.flush_seconds = flush_histogram(self.registry)
        self.db_latency_s: float | None = None
        self.handovers_total: int | None = None
        self.equipment_offline: int | None = None  # device_alerts: open offline alerts
        self.last_data_age_s: float | None = None
        self.http: GuardStats | None = None  # set by the instance once HTTP listens
        self.registry.register(_InstanceCollector(instance, self))
        self._instance = instance

    async def refresh(self) -> None:
        """Database latency and handover count; left unknown when the database is away."""
        store = self._instance.store
        self.db_latency_s = None
        self.last_data_age_s = None  # a frozen age would look fresh while the database is away
        if store is None:
            return
        try:
            self.db_latency_s = await store.ping(SCRAPE_QUERY_TIMEOUT_S) / 1000
            summary = await store.handovers_summary(86_400, SCRAPE_QUERY_TIMEOUT_S)
            total = summary.get("total")
            self.handovers_total = total if isinstance(total, int) else None
            inst = self._instance
            self.equipment_offline = await count_offline(
                inst.pool, inst.settings.cluster_name, SCRAPE_QUERY_TIMEOUT_S
            )
            self.last_data_age_s = (await store.last_data(SCRAPE_QUERY_TIMEOUT_S))[1]
        except DatabaseUnavailable:
            return  # aupus_ha_db_up 0; the handover count keeps its last known value

    def observe_flush(self, result: FlushResult) -> None:
        """The flusher's observer: one committed flush transaction, timed."""
        self.flush_seconds.observe(result.ms / 1000)

    def forget_database(self) -> None:
        """The database could not be asked this scrape: `aupus_ha_db_up` 0."""
        self.db_latency_s = None

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _gauge(name: str, doc: str, value: float, **labels: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", doc, labels=list(labels))
    family.add_metric(list(labels.values()), value)
    return family


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(f"{PREFIX}_{name}", doc, value=value)


class _InstanceCollector(Collector):
    def __init__(self, instance: InstanceView, metrics: Metrics) -> None:
        self._instance = instance
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        inst = self._instance
        intake = inst.intake
        flush = inst.flusher.stats if inst.flusher else None
        ha = inst.ha
        settings = inst.settings
        yield _gauge(
            "info",
            "Constant 1, labelled with what this process is.",
            1,
            instance_id=settings.instance_id,
            cluster=settings.cluster_name,
            mode=settings.mqtt_mode,
            version=__version__,
        )
        yield _counter("messages_received", "MQTT messages received.", intake.messages)
        yield _counter("readings_received", "Readings decoded from MQTT messages.", intake.readings)
        rejected = CounterMetricFamily(
            f"{PREFIX}_readings_rejected",
            "Messages (or parts) rejected into ingest_rejects, by reason.",
            labels=["reason"],
        )
        for reason, count in sorted(intake.by_reason.items()):
            rejected.add_metric([reason], count)
        yield rejected
        fallback = CounterMetricFamily(
            f"{PREFIX}_readings_time_fallback",
            "Readings stored with the arrival time because the device time was unusable, "
            "by reason (_timestamp_motivo: sem_ntp, zero, malformado, antes_de_2020, "
            "futuro, ausente).",
            labels=["reason"],
        )
        for reason in MOTIVOS:
            fallback.add_metric([reason], intake.time_fallbacks.get(reason, 0))
        yield fallback
        yield _counter(
            "readings_stored",
            "Rows newly stored by this instance's flushes.",
            flush.rows if flush else 0,
        )
        yield _counter(
            "readings_duplicates",
            "Readings skipped by ON CONFLICT DO NOTHING (already stored).",
            flush.duplicates if flush else 0,
        )
        yield _counter("flushes", "Committed flush transactions.", flush.flushes if flush else 0)
        yield _counter(
            "flush_failures", "Flushes that failed (database away).", flush.failures if flush else 0
        )
        yield _counter(
            "flush_fenced", "Flushes aborted by the epoch fence.", flush.fenced if flush else 0
        )
        yield _gauge("buffer_pending", "Entries held in the pending buffer.", len(inst.buffer))
        yield _gauge("buffer_capacity", "BUFFER_MAX_MESSAGES.", inst.buffer.max_items)
        yield from self._spool_metrics()
        yield _gauge(
            "is_leader",
            "1 while this instance holds a valid lease.",
            int(bool(ha and ha.is_leader())),
        )
        epoch = ha.leader_info.epoch if ha else None
        yield _gauge(
            "epoch",
            "The cluster's leadership epoch as last seen here.",
            epoch if epoch is not None else float("nan"),
        )
        handovers = self._metrics.handovers_total
        if handovers is not None:
            yield _counter("handovers", "Leadership changes recorded for the cluster.", handovers)
        yield from self._device_metrics()
        connected = bool(inst.mqtt and inst.mqtt.connected)
        yield _gauge("mqtt_connected", "1 while connected to the broker.", int(connected))
        subscribed = len(inst.mqtt.stats.subscribed) if inst.mqtt else 0
        yield _gauge("mqtt_subscribed_topics", "Topics subscribed.", subscribed)
        looping = bool(inst.mqtt and inst.mqtt.reconnect_loop)
        yield _gauge(
            "mqtt_reconnect_loop", "1 while the broker connection keeps being dropped.", looping
        )
        yield from self._http_metrics()
        latency = self._metrics.db_latency_s
        yield _gauge("db_up", "1 when the database answered this scrape.", int(latency is not None))
        yield _gauge(
            "db_latency_seconds",
            "Round trip of SELECT 1 at scrape time.",
            latency if latency is not None else float("nan"),
        )
        yield _gauge(
            "uptime_seconds",
            "Seconds since this process started.",
            time.monotonic() - inst.started_monotonic,
        )

    def _device_metrics(self) -> Iterator[Metric]:
        """Cluster-wide, from the database at scrape time (the Prometheus rules use them)."""
        offline = self._metrics.equipment_offline
        if offline is not None:
            yield _gauge(
                "equipment_offline",
                "Enabled equipment with an open equipment_offline alert (silent longer "
                "than EQUIPMENT_OFFLINE_AFTER_S).",
                offline,
            )
        age = self._metrics.last_data_age_s
        if age is not None:
            yield _gauge(
                "last_data_age_seconds", "Age of the newest stored reading (arrival).", age
            )

    def _http_metrics(self) -> Iterator[Metric]:
        http = self._metrics.http
        if http is None:
            return
        yield _gauge("http_connections", "HTTP connections open.", http.open)
        yield _counter(
            "http_connections_timed_out",
            "HTTP connections closed for not sending a request within HTTP_HEADER_TIMEOUT_S.",
            http.timed_out,
        )
        yield _counter(
            "http_connections_evicted",
            "HTTP connections waiting for a request, closed to make room (at the limit).",
            http.evicted,
        )
        yield _counter(
            "http_connections_refused",
            "HTTP connections refused at the limit (every kept one busy).",
            http.refused,
        )

    def _spool_metrics(self) -> Iterator[Metric]:
        spool = self._instance.spool
        yield _gauge("spool_bytes", "Bytes in this instance's spool segments.", spool.total_bytes)
        yield _gauge("spool_capacity_bytes", "SPOOL_MAX_BYTES.", spool.max_bytes)
        yield _gauge("spool_segments", "Spool segment files on disk.", spool.segment_count)
        yield _gauge(
            "spool_backlog",
            "1 while acknowledged entries wait on disk only (the buffer was full).",
            int(self._instance.durable.backlog),
        )
        yield _counter("spool_records", "Messages made durable in the spool.", spool.stats.records)
        yield _counter("spool_fsyncs", "Group-commit fsyncs of the spool.", spool.stats.fsyncs)
        yield _counter(
            "spool_fsync_seconds", "Time spent in spool fsyncs.", spool.stats.fsync_seconds
        )
        yield _counter(
            "spool_write_failures",
            "Spool group commits that failed (not acknowledged).",
            spool.stats.write_failures,
        )
        yield _counter(
            "spool_segment_create_failures",
            "Spool segments that could not be created.",
            spool.stats.rotation_failures,
        )
        yield _counter(
            "spool_bad_records",
            "Spool records skipped at replay (unreadable, wrong types, unknown format).",
            spool.stats.bad_records,
        )
        yield _counter(
            "rejects_rate_limited",
            "Rejects counted but not kept (beyond REJECT_RATE_PER_MIN for their topic).",
            self._instance.rejects_rate_limited,
        )
