"""Polling helpers for tests: wait for a condition with a deadline, never a blind sleep."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from aupus_ha.localcluster import wait_until

if TYPE_CHECKING:
    from aupus_ha.embedded import EmbeddedMosquitto

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T], timeout: float, interval: float = 0.05, message: str = ""
) -> T:
    """Call `predicate` every `interval` s until it returns something truthy, and return it.

    Raises AssertionError(message) when `timeout` seconds pass first. The predicate is
    always evaluated at least once, and once more at the deadline.
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(message or f"condition not met within {timeout}s")
        time.sleep(min(interval, remaining))


async def async_wait_for(
    predicate: Callable[[], Awaitable[T] | T],
    timeout: float,
    interval: float = 0.05,
    message: str = "",
) -> T:
    """Async wait_for: `predicate` may be a coroutine function or a plain callable."""
    result: T = await wait_until(
        predicate, timeout, message or f"condition not met within {timeout}s", interval
    )
    return result


class BrokerFactory(Protocol):
    """Type of the make_broker fixture."""

    def __call__(
        self,
        *,
        port: int | None = None,
        persistence_dir: Path | None = None,
        extra_config: str = "",
        start: bool = True,
    ) -> EmbeddedMosquitto: ...


class Inbox:
    """Collects (topic, payload) pairs from a gmqtt client's on_message callback."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []

    def on_message(
        self, client: object, topic: str, payload: bytes, qos: int, properties: object
    ) -> int:
        self.messages.append((topic, payload))
        return 0
