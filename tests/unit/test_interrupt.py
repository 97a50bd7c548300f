"""SIGTERM ends a tool's run through its teardown and says which signal it was."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from aupus_ha.lab.interrupt import Interrupted, until_interrupted


async def test_a_signal_cancels_the_run_and_its_teardown_runs() -> None:
    torn_down = asyncio.Event()
    started = asyncio.Event()

    async def run() -> int:
        try:
            started.set()
            await asyncio.Event().wait()  # runs until cancelled
            return 0
        finally:
            torn_down.set()

    async def send_sigterm() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    sender = asyncio.create_task(send_sigterm())
    with pytest.raises(Interrupted) as stop:
        await asyncio.wait_for(until_interrupted(run()), timeout=10)
    await sender
    assert stop.value.signum == signal.SIGTERM and torn_down.is_set()


async def test_without_a_signal_the_result_comes_back() -> None:
    async def run() -> str:
        return "done"

    assert await until_interrupted(run()) == "done"
