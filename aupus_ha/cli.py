"""The `aupus-ha` command: run, migrate, status (and the demo/simulate/bench tools)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from aupus_ha import __version__, constants
from aupus_ha.config import ConfigError, Settings, load_settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.leadership.election import IdentityClash, IdentityLost, PoolerDetected
from aupus_ha.logs import configure_logging
from aupus_ha.pipeline.spool import SpoolRefused


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aupus-ha", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aupus-ha {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="a .env file (default: ./.env when present); the environment wins over it",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one instance (migrates first)")
    run.add_argument("--no-migrate", action="store_true", help="do not apply migrations")
    run.add_argument("--instance-id", help="overrides INSTANCE_ID")
    run.add_argument("--http-port", type=int, help="overrides HTTP_PORT")
    run.add_argument("--mode", choices=constants.MQTT_MODES, help="overrides MQTT_MODE")

    sub.add_parser("migrate", help="apply database migrations and exit")

    demo = sub.add_parser("demo", help="embedded PostgreSQL + broker + 2 instances + failover")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds of traffic")
    demo.add_argument("--fleet", type=int, default=20, help="number of simulated devices")
    demo.add_argument("--rate", type=float, default=100.0, help="readings per second")
    demo.add_argument(
        "--bad-ratio",
        type=float,
        default=0.0,
        help="fraction of messages replaced by bad inputs (they end in ingest_rejects)",
    )

    sim = sub.add_parser("simulate", help="publish a simulated fleet (meters, inverters, gateways)")
    _add_simulate_arguments(sim)

    bench = sub.add_parser(
        "bench", help="end-to-end benchmark on embedded servers, with same-run baselines"
    )
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

    chaos = sub.add_parser(
        "chaos", help="random faults against a 3-instance embedded cluster under load"
    )
    _add_chaos_arguments(chaos)

    status = sub.add_parser("status", help="the cluster: instances and recent handovers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--handovers", type=int, default=10)

    step = sub.add_parser(
        "step-down", help="ask the local instance to hand its leadership over (ADMIN_TOKEN)"
    )
    step.add_argument(
        "--url", help="the instance's HTTP address (default: http://127.0.0.1:$HTTP_PORT)"
    )
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    """Environment (over an optional .env), then flags; all validated the same way."""
    if args.env_file is not None and not args.env_file.is_file():
        raise ConfigError(f"--env-file {str(args.env_file)!r} does not exist")
    dotenv = args.env_file if args.env_file is not None else Path(".env")
    flags = {
        "INSTANCE_ID": getattr(args, "instance_id", None),
        "HTTP_PORT": getattr(args, "http_port", None),
        "MQTT_MODE": getattr(args, "mode", None),
    }
    overrides = {name: str(value) for name, value in flags.items() if value is not None}
    return load_settings(dotenv=dotenv, overrides=overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tool = _TOOLS.get(args.command)
    if tool is not None:
        # Tools start their own servers and instances: no instance configuration needed.
        configure_logging(instance_id=args.command, log_format="console", level="warning")
        return tool(args)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"aupus-ha: configuration error: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    configure_logging(
        instance_id=settings.instance_id,
        log_format=settings.log_format,
        level=settings.log_level,
        secrets=_secrets(settings),
    )
    command = {"run": _run, "migrate": _migrate, "status": _status, "step-down": _step_down}[
        args.command
    ]
    return _exit_code(lambda: asyncio.run(command(settings, args)))


def _secrets(settings: Settings) -> list[str]:
    found = [
        settings.database_url,
        settings.admin_token,
        settings.smtp_pass,
        settings.alert_webhook_url,
    ]
    if settings.mqtt is not None:
        found.append(settings.mqtt.password)
    # The password inside DATABASE_URL too: an error text may quote it without the URL.
    db = urlsplit(settings.database_url.reveal())
    embedded = [unquote(db.password or ""), *parse_qs(db.query).get("password", [])]
    return [s.reveal() for s in found] + [p for p in embedded if p]


def _exit_code(run: Callable[[], int]) -> int:
    """The documented exit codes: 2 for configuration/identity, 1 for an unreachable DB."""
    try:
        return run()
    except (IdentityClash, IdentityLost, PoolerDetected, ConfigError, SpoolRefused) as exc:
        print(f"aupus-ha: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    except DatabaseUnavailable as exc:
        print(f"aupus-ha: database unavailable: {exc}", file=sys.stderr)
        return constants.EXIT_FAILURE
    except KeyboardInterrupt:
        return constants.EXIT_OK


def _demo(args: argparse.Namespace) -> int:
    from aupus_ha.lab.demo import DemoOptions
    from aupus_ha.lab.demo import main as demo_main

    return demo_main(DemoOptions(args.duration, args.fleet, args.rate, args.bad_ratio))


def _bench(args: argparse.Namespace) -> int:
    from aupus_ha.lab.bench import main as bench_main

    return bench_main(args)


def _add_chaos_arguments(parser: argparse.ArgumentParser) -> None:
    from aupus_ha.lab.chaos.options import add_arguments

    add_arguments(parser)


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


def _chaos(args: argparse.Namespace) -> int:
    from aupus_ha.lab.chaos import main as chaos_main

    return chaos_main(args)


def _simulate(args: argparse.Namespace) -> int:
    from aupus_ha.lab.simulate import main as simulate_main

    return simulate_main(args)


_TOOLS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": _demo,
    "bench": _bench,
    "simulate": _simulate,
    "chaos": _chaos,
}


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.app import Instance
    from aupus_ha.logs import get_logger

    get_logger("aupus_ha.cli").info("config.loaded", **settings.safe_summary())
    instance = Instance(settings, migrate=not args.no_migrate)
    instance.install_signal_handlers()
    return await instance.run()


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.database.connection import connect
    from aupus_ha.database.migrate import apply_migrations

    conn = await connect(settings, f"aupus-ha/{settings.instance_id}/migrate", tune=False)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return constants.EXIT_OK


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.database.connection import create_pool
    from aupus_ha.database.queries import Queries
    from aupus_ha.operations.status import render_status
    from aupus_ha.pipeline.store import Store

    pool = await create_pool(settings, f"aupus-ha/{settings.instance_id}/status", max_size=1)
    try:
        store = Store(
            pool, Queries(), cluster_name=settings.cluster_name, instance_id=settings.instance_id
        )
        view = await store.cluster_view(handovers=args.handovers)
    finally:
        await pool.close()
    if args.json:
        sys.stdout.write(orjson.dumps(view, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_status(view, settings.lease_ttl_s))
    return constants.EXIT_OK


async def _step_down(settings: Settings, args: argparse.Namespace) -> int:
    """POST /admin/step-down on the local instance; 0 when it handed over."""
    import aiohttp

    from aupus_ha.operations.admin import post_admin

    base = (args.url or f"http://127.0.0.1:{settings.http_port}").rstrip("/")
    try:
        status, body = await post_admin(f"{base}/admin/step-down", settings.admin_token.reveal())
    except (aiohttp.ClientError, TimeoutError) as exc:
        print(f"aupus-ha: cannot reach {base}: {exc or type(exc).__name__}", file=sys.stderr)
        return constants.EXIT_FAILURE
    if status == 200:
        print(f"{body.get('instance_id')} stepped down from epoch {body.get('epoch')}")
        return constants.EXIT_OK
    print(f"aupus-ha: step-down refused ({status}): {body.get('error', body)}", file=sys.stderr)
    return constants.EXIT_FAILURE
