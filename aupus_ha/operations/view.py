"""What the operations surface may see of an instance, and the few things it may ask.

`health`, `metrics` and `alerts` read an `InstanceView`; `http` takes an `HttpView`,
which adds the alert list, the Prometheus scrape and the operator's actions. Both are
`Protocol`s listing exactly the members those modules use, so they never depend on
`app.Instance` (which builds them: importing it back would be a cycle) and cannot
reach into a part to drive it. The parts are seen through small read-only protocols
too (`LeaseView` has no `request_step_down`, `StoreReads` no `flush`): an action the
HTTP layer triggers is a method of the view (`step_down`, `check_alerts`,
`request_flush`, `reload_topics`), implemented where the parts live.

Plain data (settings, counters, the leader as last seen) is typed by its own class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

import asyncpg

from aupus_ha.config import Settings
from aupus_ha.database.connection import QueryStats
from aupus_ha.database.legacytime import LegacyTimeCheck
from aupus_ha.leadership.election import Identity
from aupus_ha.leadership.ha import LeaderInfo
from aupus_ha.pipeline.flusher import FlushStats
from aupus_ha.pipeline.mqtt import MqttStats
from aupus_ha.pipeline.readings import Equipment
from aupus_ha.pipeline.spool import SpoolStats
from aupus_ha.pipeline.topics import InvalidTopic

Body = dict[str, Any]


class LeaseView(Protocol):
    """The HA loop as health reads it."""

    @property
    def role(self) -> str: ...
    @property
    def db_ok(self) -> bool: ...
    @property
    def last_tick(self) -> float: ...
    @property
    def leader_info(self) -> LeaderInfo: ...
    def is_leader(self) -> bool: ...


class BrokerView(Protocol):
    """The MQTT client's state."""

    @property
    def connected(self) -> bool: ...
    @property
    def reconnect_loop(self) -> bool: ...
    @property
    def stats(self) -> MqttStats: ...


class BufferView(Protocol):
    @property
    def max_items(self) -> int: ...
    def __len__(self) -> int: ...


class SpoolView(Protocol):
    @property
    def total_bytes(self) -> int: ...
    @property
    def segment_count(self) -> int: ...
    @property
    def max_bytes(self) -> int: ...
    @property
    def usage(self) -> float: ...
    @property
    def stats(self) -> SpoolStats: ...


class DurableView(Protocol):
    """The intake in front of the spool: is anything waiting on disk only?"""

    @property
    def backlog(self) -> bool: ...
    @property
    def replayed(self) -> int: ...


class FlusherView(Protocol):
    @property
    def stats(self) -> FlushStats: ...
    @property
    def last_flush_at(self) -> datetime | None: ...


class IntakeCounters(Protocol):
    """What the intake counted since start (app.IntakeStats)."""

    @property
    def messages(self) -> int: ...
    @property
    def readings(self) -> int: ...
    @property
    def rejects(self) -> int: ...
    @property
    def last_message_at(self) -> datetime | None: ...
    @property
    def by_reason(self) -> dict[str, int]: ...
    @property
    def time_fallbacks(self) -> dict[str, int]: ...


class CatalogView(Protocol):
    @property
    def topics(self) -> list[str]: ...
    @property
    def invalid(self) -> Iterable[InvalidTopic]: ...
    def equipment_for(self, topic: str) -> Sequence[Equipment]: ...


class StoreReads(Protocol):
    """The cluster-wide reads of `pipeline.store.Store` (never a write)."""

    async def ping(self, timeout: float = ...) -> float: ...
    async def last_data(self, timeout: float = ...) -> tuple[datetime | None, float | None]: ...
    async def ingestion_window(
        self, window_s: float, short_s: float, timeout: float = ...
    ) -> dict[str, int]: ...
    async def rejects_window(self, window_s: float, timeout: float = ...) -> int: ...
    async def handovers_summary(
        self, window_s: float, timeout: float = ...
    ) -> dict[str, object]: ...
    async def leadership(self, timeout: float = ...) -> dict[str, object]: ...
    async def cluster_view(self, handovers: int = ...) -> dict[str, object]: ...


@runtime_checkable
class InstanceView(Protocol):
    """Everything health, metrics and alerts read of one instance (nothing else)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def identity(self) -> Identity: ...
    @property
    def started_monotonic(self) -> float: ...
    @property
    def keeps_readings(self) -> bool: ...
    @property
    def ha(self) -> LeaseView | None: ...
    @property
    def mqtt(self) -> BrokerView | None: ...
    @property
    def buffer(self) -> BufferView: ...
    @property
    def spool(self) -> SpoolView: ...
    @property
    def durable(self) -> DurableView: ...
    @property
    def flusher(self) -> FlusherView | None: ...
    @property
    def intake(self) -> IntakeCounters: ...
    @property
    def catalog(self) -> CatalogView: ...
    @property
    def store(self) -> StoreReads | None: ...
    @property
    def pool(self) -> asyncpg.Pool | None: ...  # alerts keep `ha_alerts` with it
    @property
    def legacy_time(self) -> LegacyTimeCheck: ...
    @property
    def query_stats(self) -> QueryStats: ...
    @property
    def rejects_rate_limited(self) -> int: ...


class AlertList(Protocol):
    """`alerts.AlertManager` as the HTTP layer lists it."""

    async def recent(self, details: bool = ...) -> tuple[Body, int]: ...
    def local_view(self) -> Body: ...


class Scrape(Protocol):
    """`metrics.Metrics` as `GET /metrics` uses it."""

    async def refresh(self) -> None: ...
    def forget_database(self) -> None: ...
    def render(self) -> bytes: ...


@runtime_checkable
class HttpView(InstanceView, Protocol):
    """The HTTP layer's view: the facts, the alert list, the scrape, and the actions."""

    @property
    def alerts(self) -> AlertList: ...
    @property
    def metrics(self) -> Scrape: ...

    async def step_down(self, timeout_s: float) -> bool:
        """Hand the leadership over (served by the HA loop); False: not leading now.
        Raises DatabaseUnavailable or TimeoutError when it could not be done."""
        ...

    async def check_alerts(self) -> Body:
        """Evaluate every alert condition now (what is open, opened, resolved)."""
        ...

    async def request_flush(self) -> bool:
        """Wake the flusher now; False when this instance does not lead (nothing to do)."""
        ...

    async def reload_topics(self) -> int:
        """Reload the topic catalogue from the database now and resubscribe; returns
        the number of topics. Raises DatabaseUnavailable when it cannot be read."""
        ...
