"""`python -m aupus_ha.lab.bench subscribe URL FILTER QOS`: the fan-out baseline's subscriber
process (started by `fanout.CountingSubscriber`)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import Sequence

from aupus_ha.lab.bench.fanout import count_messages


def _subscriber_main(argv: Sequence[str]) -> int:
    url, topic_filter, qos = argv
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(count_messages(url, topic_filter, int(qos)))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["subscribe"]:
        raise SystemExit(_subscriber_main(sys.argv[2:]))
    raise SystemExit("usage: aupus-ha bench (this module's own entry is for its subscriber)")
