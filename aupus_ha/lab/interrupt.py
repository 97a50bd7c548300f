"""Ctrl-C and SIGTERM for the tools (demo, chaos): end the run through its teardown.

The signal cancels the running task, so every `finally` and `async with` of the run
stops its servers and processes; the caller then learns which signal it was.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")
SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


async def until_interrupted(work: Awaitable[T]) -> T:
    """Await `work`; SIGINT or SIGTERM cancels it and raises `Interrupted`."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    received: list[int] = []

    def interrupt(sig: signal.Signals) -> None:
        received.append(sig)
        task.cancel()

    for sig in SIGNALS:
        loop.add_signal_handler(sig, interrupt, sig)
    try:
        return await work
    except asyncio.CancelledError:
        if not received:
            raise
        raise Interrupted(received[0]) from None
    finally:
        for sig in SIGNALS:
            loop.remove_signal_handler(sig)
