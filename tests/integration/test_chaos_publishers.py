"""The chaos run's two publishers (steady load, side load) share one connection loop:
every message acknowledged once the broker answers, the unacknowledged ones published
again after a broker restart, each on its own reconnect. Real Mosquitto, real gmqtt.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

from aupus_ha.lab.chaos.load import Load
from aupus_ha.lab.chaos.sideload import SideLoad
from aupus_ha.lab.chaos.sidemessages import SideMessage
from tests.helpers import BrokerFactory, async_wait_for

EQUIPMENT = [("e1", "pub/t1"), ("e2", "pub/t2")]


def side_batch(first: int, count: int) -> list[SideMessage]:
    return [
        SideMessage(ident=i, label="plain", topic="pub/side", payload=b'{"n": %d}' % i)
        for i in range(first, first + count)
    ]


async def test_load_and_side_load_publish_through_a_broker_restart(
    make_broker: BrokerFactory,
) -> None:
    broker = make_broker()
    load = Load(broker.url, EQUIPMENT, rate=200.0, origin=datetime(2026, 1, 1, tzinfo=UTC))
    side = SideLoad(broker.url, "side")
    stop = asyncio.Event()
    drain_until = 0.0
    tasks = [
        asyncio.create_task(load.run(stop, lambda: drain_until)),
        asyncio.create_task(side.run(stop, lambda: drain_until)),
    ]
    try:
        side.enqueue(side_batch(0, 20), over_s=0.5)
        await async_wait_for(lambda: len(load.acked) >= 50 and len(side.acked) == 20, 20)
        await asyncio.to_thread(broker.restart)
        side.enqueue(side_batch(20, 20), over_s=0.5)
        await async_wait_for(lambda: load.connects >= 2 and side.connects >= 2, 30)
        stop.set()
        drain_until = time.monotonic() + 20
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
    finally:
        stop.set()
        for task in tasks:
            task.cancel()
    assert load.published > 50
    assert load.acked == set(range(load.published))
    assert load.unacknowledged == 0
    assert set(side.published) == set(range(40))
    assert side.acked == set(range(40))
    assert side.unacknowledged == 0 and side.queued == 0
