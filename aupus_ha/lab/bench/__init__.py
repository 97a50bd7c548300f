"""`aupus-ha bench`: an end-to-end benchmark on embedded servers, with same-run baselines.

It starts an embedded PostgreSQL and Mosquitto and first measures the raw limits of this
machine: asyncpg binary COPY into `equipamentos_dados` (a scratch database, same
migrations), the store's own flush (fence check, COPY into the staging table, INSERT …
ON CONFLICT DO NOTHING — exactly `Store.flush`), one INSERT per reading (the legacy
service's way), and broker fan-out to one gmqtt subscriber (the instances' client
settings, an empty callback) at QoS 1 and QoS 0. Then it runs a leader and a standby
(`python -m aupus_ha run`) and measures, in phases:

* ``max``: publishing as fast as the broker accepts (a bounded PUBACK window, and a
  bounded backlog so the leader always has full batches but memory stays sane): the
  sustained ingest rate, published → committed;
* ``paced``: publishing at a fixed rate (default half the measured max): latency
  publish → committed (p50/p99);
* ``failover``: the paced load while the leader is killed (kill -9), stopped (SIGTERM)
  and frozen (SIGSTOP): time until the standby answers /health/leader, writer gap.

CPU and peak RSS of every process (instances, their PostgreSQL backends, the broker,
this publisher) are sampled with psutil in every phase. Latency needs no clock sync:
each payload carries its publish wall time (`sent_at`) and PostgreSQL stamps
`created_at` = now(), the flush transaction's start, on the same machine clock.
Figures are reported as numbers and as ratios to the baselines; nothing is asserted.
Everything started is stopped and the temporary directory removed on exit, Ctrl-C
included.

Modules: `options` (what a run measures), `servers` (embedded PostgreSQL and Mosquitto),
`source` (the readings), `baselines` and `fanout` (the raw limits), `cluster` (the two
instances, the run's context and its resource sampling, see `sampling`), `publishing`,
`phases` and `faults` (the measured phases), `timeline`, `report`, `table` and `plot`
(the results), `run` (a whole run, the entry points); `__main__` is the fan-out
subscriber process.
"""

from __future__ import annotations

from aupus_ha.lab.bench.options import BenchOptions, options_from_args, parse_rate
from aupus_ha.lab.bench.report import BenchReport, compute_ratios
from aupus_ha.lab.bench.run import failover_report, main, run_bench
from aupus_ha.lab.bench.table import render_table

__all__ = [
    "BenchOptions",
    "BenchReport",
    "compute_ratios",
    "failover_report",
    "main",
    "options_from_args",
    "parse_rate",
    "render_table",
    "run_bench",
]
