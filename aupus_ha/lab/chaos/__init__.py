"""`aupus-ha chaos`: random faults against a three-instance cluster under load, then a
count of what was lost, duplicated, or led twice.

It starts an embedded PostgreSQL and Mosquitto, three `aupus-ha run` instances whose
database and broker connections each go through their own `FaultProxy`, and a steady
QoS 1 load of generic readings carrying a sequence number. For `--duration` seconds it
injects one fault at a time (kill -9, SIGSTOP, SIGTERM of an instance, PostgreSQL
restart/crash/freeze, broker restart/outage, partitions of one instance from the
database or the broker), waiting for a healthy cluster between faults, while a monitor
polls every instance's /health/leader. Then it lets everything settle and reports.

Modules: `options` (what a run does), `cluster` (servers, proxies, instances), `load`
(the tracked publisher), `monitor` (leader polling and its analysis), `faults` (the
schedule and each fault), `report` (counts and the table), `run` (a whole run, `main`).
"""

from __future__ import annotations

from aupus_ha.lab.chaos.options import FAULT_KINDS, PROCESS_KINDS, ChaosOptions, add_arguments
from aupus_ha.lab.chaos.report import ChaosReport, render
from aupus_ha.lab.chaos.run import main, run_chaos, write_json

__all__ = [
    "FAULT_KINDS",
    "PROCESS_KINDS",
    "ChaosOptions",
    "ChaosReport",
    "add_arguments",
    "main",
    "render",
    "run_chaos",
    "write_json",
]
