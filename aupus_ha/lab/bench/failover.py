"""Failover times of a two-instance cluster under load, measured over many runs.

    .venv/bin/python -m aupus_ha.lab.bench.failover --runs 10   # contract timings (TTL 5 s)
    .venv/bin/python -m aupus_ha.lab.bench.failover --runs 10 --fast   # test timings (TTL 2 s)

For each fault kind (kill -9, SIGTERM, SIGSTOP) it repeatedly faults the current leader
while readings flow, and measures the time from the fault until the other instance
answers 200 on /health/leader, plus the writer gap the new leader recorded in
ha_handovers (database clock). At the end it checks that every published reading was
stored exactly once. Prints a table; `--json` for machines.

A thin wrapper: the measurement is `aupus_ha.lab.bench.failover_report`, the same code as
the failover phase of `aupus-ha bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from aupus_ha.config import default_text
from aupus_ha.lab.bench import failover_report
from aupus_ha.lab.localcluster import FAST_TIMINGS
from aupus_ha.logs import configure_logging


def print_table(report: dict[str, Any], runs: int) -> None:
    print(f"\nfailover over {runs} runs each ({report['timings']})")
    print(
        f"{'fault':10s}{'median s':>10s}{'worst s':>10s}{'median gap ms':>15s}{'worst gap ms':>14s}"
    )
    for kind, s in report["faults"].items():
        print(
            f"{kind:10s}{s['median_s']:>10.3f}{s['worst_s']:>10.3f}"
            f"{s['median_gap_ms']:>15.0f}{s['worst_gap_ms']:>14.0f}"
        )
    print(
        f"published {report['published']}, stored {report['stored']}, "
        f"lost {report['lost']}, duplicates {report['duplicates']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="readings/s during the runs")
    parser.add_argument(
        "--fast",
        action="store_true",
        help=f"LEASE_TTL_S={FAST_TIMINGS['LEASE_TTL_S']} instead of {default_text('LEASE_TTL_S')}",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data")
    args = parser.parse_args()
    configure_logging(instance_id="bench", log_format="console", level="warning")
    report = asyncio.run(
        failover_report(runs=args.runs, rate=args.rate, fast=args.fast, keep=args.keep)
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_table(report, args.runs)


if __name__ == "__main__":
    main()
