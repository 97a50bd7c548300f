"""The `aupus-ha` command: run, migrate, status (and the demo/simulate/bench tools)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from aupus_ha import __version__, constants
from aupus_ha.config import ConfigError, Settings, load_settings
from aupus_ha.election import IdentityClash, IdentityLost, PoolerDetected
from aupus_ha.logs import configure_logging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aupus-ha", description=__doc__)
    parser.add_argument("--version", action="version", version=f"aupus-ha {__version__}")
    parser.add_argument(
        "--env-file",
        type=Path,
        default=Path(".env"),
        help="optional .env file (the environment wins over it)",
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

    status = sub.add_parser("status", help="the cluster: instances and recent handovers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--handovers", type=int, default=10)
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = load_settings(dotenv=args.env_file)
    overrides: dict[str, Any] = {}
    if getattr(args, "instance_id", None):
        overrides["instance_id"] = args.instance_id
    if getattr(args, "http_port", None) is not None:
        overrides["http_port"] = args.http_port
    if getattr(args, "mode", None):
        overrides["mqtt_mode"] = args.mode
    return settings.with_overrides(**overrides) if overrides else settings


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from aupus_ha.demo import DemoOptions
        from aupus_ha.demo import main as demo_main

        configure_logging(instance_id="demo", log_format="console", level="warning")
        return demo_main(DemoOptions(args.duration, args.fleet, args.rate))
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"aupus-ha: configuration error: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    secrets = [
        settings.database_url.reveal(),
        settings.admin_token.reveal(),
        settings.smtp_pass.reveal(),
        settings.alert_webhook_url.reveal(),
    ]
    if settings.mqtt is not None:
        secrets.append(settings.mqtt.password.reveal())
    configure_logging(
        instance_id=settings.instance_id,
        log_format=settings.log_format,
        level=settings.log_level,
        secrets=secrets,
    )
    command = {"run": _run, "migrate": _migrate, "status": _status}[args.command]
    try:
        return asyncio.run(command(settings, args))
    except (IdentityClash, IdentityLost, PoolerDetected) as exc:
        print(f"aupus-ha: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG
    except KeyboardInterrupt:
        return constants.EXIT_OK


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.app import Instance
    from aupus_ha.logs import get_logger

    get_logger("aupus_ha.cli").info("config.loaded", **settings.safe_summary())
    instance = Instance(settings, migrate=not args.no_migrate)
    instance.install_signal_handlers()
    return await instance.run()


async def _migrate(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.db import connect
    from aupus_ha.migrate import apply_migrations

    conn = await connect(settings, f"aupus-ha/{settings.instance_id}/migrate", tune=False)
    try:
        applied = await apply_migrations(conn)
    finally:
        await conn.close()
    print(f"applied {len(applied)} migration(s): {', '.join(applied) or 'none pending'}")
    return constants.EXIT_OK


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.db import create_pool
    from aupus_ha.queries import Queries
    from aupus_ha.status import render_status
    from aupus_ha.store import Store

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
