"""The intake's socket writes: PUBACKs coalesced per loop step, other packets in order."""

from __future__ import annotations

import asyncio
import gc

import pytest

from aupus_ha.gctuning import GC_THRESHOLDS, tune_gc
from aupus_ha.pipeline.mqtt import PubackCoalescer

PUBACK_1 = b"\x40\x02\x00\x01"
PUBACK_2 = b"\x40\x02\x00\x02"
PINGREQ = b"\xc0\x00"


async def test_pubacks_of_one_step_leave_in_one_write() -> None:
    """PUBACKs released in the same event-loop step reach the socket as one write."""
    writes: list[bytes] = []
    coalescer = PubackCoalescer(writes.append)
    coalescer.write(PUBACK_1)
    coalescer.write(PUBACK_2)
    assert writes == []
    await asyncio.sleep(0)
    assert writes == [PUBACK_1 + PUBACK_2]


async def test_other_packets_keep_the_wire_order() -> None:
    """A non-PUBACK packet first writes the PUBACKs before it, then itself, at once."""
    writes: list[bytes] = []
    coalescer = PubackCoalescer(writes.append)
    coalescer.write(PUBACK_1)
    coalescer.write(PINGREQ)
    assert writes == [PUBACK_1, PINGREQ]
    await asyncio.sleep(0)
    assert writes == [PUBACK_1, PINGREQ]  # the scheduled flush finds nothing left


@pytest.fixture
def restore_gc() -> object:
    thresholds = gc.get_threshold()
    yield None
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_tune_gc_freezes_the_startup_heap(restore_gc: object) -> None:
    """The intake's GC settings: start-up objects frozen, a large young generation."""
    tune_gc()
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold() == GC_THRESHOLDS
