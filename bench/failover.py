"""Failover times of a two-instance cluster under load, measured over many runs.

    .venv/bin/python bench/failover.py --runs 10            # contract timings (TTL 5 s)
    .venv/bin/python bench/failover.py --runs 10 --fast     # test timings (TTL 2 s)

For each fault kind (kill -9, SIGTERM, SIGSTOP) it repeatedly faults the current leader
while readings flow, and measures the time from the fault until the other instance
answers 200 on /health/leader, plus the writer gap the new leader recorded in
ha_handovers (database clock). At the end it checks that every published reading was
stored exactly once. Prints a table; `--json` for machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from aupus_ha.embedded import EmbeddedMosquitto, EmbeddedPostgres
from aupus_ha.localcluster import (
    FAST_TIMINGS,
    InstanceProcess,
    fetch,
    generic_messages,
    leaders,
    publish,
    seed_equipment,
    stored_keys,
    wait_single_leader,
    wait_until,
)

FAULTS = {"kill-9": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigstop": signal.SIGSTOP}


async def _healthy_standby(node: InstanceProcess) -> bool:
    status, _ = await node.get("/health/standby")
    return status == 200


async def one_fault(kind: str, nodes: list[InstanceProcess], dsn: str) -> dict[str, float]:
    leader = (await leaders(nodes))[0]
    other = next(n for n in nodes if n is not leader)
    await wait_until(lambda: _healthy_standby(other), 60, "standby not ready")
    before = (await fetch(dsn, "SELECT epoch FROM ha_leadership"))[0]["epoch"]
    started = time.monotonic()
    leader.signal(FAULTS[kind])
    await wait_until(other.is_leader, 60, f"{kind}: no takeover", interval=0.005)
    seconds = time.monotonic() - started
    gap = await fetch(dsn, "SELECT gap_ms FROM ha_handovers WHERE epoch = $1", before + 1)
    if kind == "sigstop":
        leader.signal(signal.SIGCONT)
    else:
        await leader.wait_exit(30)
        leader.start()
    await wait_until(lambda: _healthy_standby(leader), 60, f"{leader.name} did not rejoin")
    return {"failover_s": seconds, "gap_ms": float(gap[0]["gap_ms"] or 0) if gap else -1.0}


async def run(args: argparse.Namespace) -> dict[str, object]:
    workdir = Path(tempfile.mkdtemp(prefix="aupus-failover-"))
    pg, broker = EmbeddedPostgres(workdir / "pg"), EmbeddedMosquitto()
    nodes: list[InstanceProcess] = []
    try:
        pg.start()
        broker.start()
        dsn = pg.dsn()
        equipment = await seed_equipment(dsn, 50)
        timings = FAST_TIMINGS if args.fast else {}
        env = {"DATABASE_URL": dsn, "MQTT_URL": broker.url, "LOG_FORMAT": "json", **timings}
        nodes = [InstanceProcess(n, env, workdir).start() for n in ("node-a", "node-b")]
        await wait_single_leader(nodes, timeout=60)
        # Far more than the runs need; publishing stops when the faults are done.
        messages = generic_messages(equipment, int(args.runs * 120 * args.rate / len(equipment)))
        stop = asyncio.Event()
        load = asyncio.create_task(publish(broker.url, messages, rate=args.rate, stop=stop))
        results: dict[str, list[dict[str, float]]] = {k: [] for k in FAULTS}
        for _ in range(args.runs):
            for kind in FAULTS:
                results[kind].append(await one_fault(kind, nodes, dsn))
                print(f"{kind:8s} {results[kind][-1]}", file=sys.stderr, flush=True)
        stop.set()
        published = await load
        expected = {(e, ts) for _, _, e, ts in messages[:published]}

        async def all_stored() -> bool:
            return expected <= set(await stored_keys(dsn))

        await wait_until(all_stored, 60, "readings missing", interval=0.5)
        keys = await stored_keys(dsn)
        return {
            "runs": args.runs,
            "timings": "fast" if args.fast else "contract defaults",
            "faults": {kind: _stats(rows) for kind, rows in results.items()},
            "published": published,
            "stored": len(set(keys)),
            "lost": len(expected - set(keys)),
            "duplicates": len(keys) - len(set(keys)),
        }
    finally:
        for node in nodes:
            node.stop_now()
        broker.cleanup()
        pg.cleanup()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _stats(rows: list[dict[str, float]]) -> dict[str, float]:
    failover = [r["failover_s"] for r in rows]
    gaps = [r["gap_ms"] for r in rows]
    return {
        "median_s": round(statistics.median(failover), 3),
        "worst_s": round(max(failover), 3),
        "median_gap_ms": statistics.median(gaps),
        "worst_gap_ms": max(gaps),
        "n": len(rows),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=200.0, help="readings/s during the runs")
    parser.add_argument("--fast", action="store_true", help="LEASE_TTL_S=2 instead of 5")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"\nfailover over {args.runs} runs each ({report['timings']})")
    print(
        f"{'fault':10s}{'median s':>10s}{'worst s':>10s}{'median gap ms':>15s}{'worst gap ms':>14s}"
    )
    for kind, s in report["faults"].items():  # type: ignore[attr-defined]
        print(
            f"{kind:10s}{s['median_s']:>10.3f}{s['worst_s']:>10.3f}"
            f"{s['median_gap_ms']:>15.0f}{s['worst_gap_ms']:>14.0f}"
        )
    print(
        f"published {report['published']}, stored {report['stored']}, "
        f"lost {report['lost']}, duplicates {report['duplicates']}"
    )


if __name__ == "__main__":
    main()
