"""The bench's fixed names and sizes: databases, cluster, fault kinds, windows, periods."""

from __future__ import annotations

import signal

from aupus_ha.config import default_value

CLUSTER = "bench"
NODE_NAMES = ("node-a", "node-b")
BENCH_DB = "aupus_bench"
SCRATCH_DB = "aupus_scratch"
TOPIC_FILTER = "aupus/test/#"  # seed_equipment's topics
FAULTS: dict[str, signal.Signals] = {
    "kill-9": signal.SIGKILL,
    "sigterm": signal.SIGTERM,
    "sigstop": signal.SIGSTOP,
}
BATCH: int = default_value("BATCH_MAX")  # the instances' default: baselines' batch size
BACKLOG_CAP = 4 * BATCH  # max mode: published but not yet committed, at most
RECEIVE_MAXIMUM: int = default_value("MQTT_RECEIVE_MAXIMUM")  # the instances' default
CHUNK = 100  # messages published between two looks at the windows
SAMPLE_S = 0.5  # psutil sampling period
STALL_S = 60.0  # no progress for this long: give up instead of hanging
FANOUT_WINDOW = 20_000  # fan-out baseline: published but not yet received, at most
