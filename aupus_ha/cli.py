"""The `aupus-ha` command: run, migrate, status, step-down, gaps (the daemon and its operators);
the lab's commands (demo, simulate, bench, chaos) load from aupus_ha/lab/cli.py on demand."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from aupus_ha import __version__, constants
from aupus_ha.config import ConfigError, Settings, load_settings
from aupus_ha.database.connection import DatabaseUnavailable
from aupus_ha.leadership.election import IdentityClash, IdentityLost, PoolerDetected
from aupus_ha.logs import configure_logging
from aupus_ha.pipeline.spool import SpoolRefused

# The lab's commands (aupus_ha/lab/cli.py): named here so that `aupus-ha --help` lists
# them, built and imported only when one of them is asked for (the daemon never loads
# the lab, and runs without the lab's extras).
LAB_COMMANDS: Final = {
    "demo": "embedded PostgreSQL + broker + 2 instances + failover",
    "simulate": "publish a simulated fleet (meters, inverters, gateways)",
    "bench": "end-to-end benchmark on embedded servers, with same-run baselines",
    "chaos": "random faults against a 3-instance embedded cluster under load",
}


def _parser(lab_command: str | None = None) -> argparse.ArgumentParser:
    """The runtime's commands, plus `lab_command`'s parser when one was asked for."""
    lab_help = "\n".join(f"  {name:<10} {summary}" for name, summary in LAB_COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog="aupus-ha",
        description=__doc__,
        epilog=f"lab commands (`aupus-ha COMMAND --help`; demo, bench and chaos start embedded\n"
        f"servers: the [embedded] extra):\n{lab_help}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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

    status = sub.add_parser("status", help="the cluster: instances and recent handovers")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.add_argument("--handovers", type=int, default=10)

    step = sub.add_parser(
        "step-down", help="ask the local instance to hand its leadership over (ADMIN_TOKEN)"
    )
    step.add_argument(
        "--url", help="the instance's HTTP address (default: http://127.0.0.1:$HTTP_PORT)"
    )

    gaps = sub.add_parser("gaps", help="data-loss report of a period: gaps, coverage, kWh")
    gaps.add_argument("--from", dest="start", required=True, help="ISO 8601 (no offset: UTC)")
    gaps.add_argument("--to", dest="end", required=True, help="ISO 8601 (no offset: UTC)")
    gaps.add_argument("--equipment", help="one equipment id (default: every enabled one)")
    gaps.add_argument("--json", action="store_true", help="the JSON of GET /health/gaps")

    if lab_command is not None:
        from aupus_ha.lab.cli import add_command

        add_command(sub, lab_command, LAB_COMMANDS[lab_command])
    return parser


def _command_word(argv: Sequence[str]) -> str | None:
    """The subcommand in `argv`: the first word that is neither an option nor the value
    of `--env-file` (the only top-level option taking one)."""
    words = iter(argv)
    for word in words:
        if word == "--env-file":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


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
    argv = sys.argv[1:] if argv is None else list(argv)
    word = _command_word(argv)
    lab_command = word if word in LAB_COMMANDS else None
    args = _parser(lab_command).parse_args(argv)
    if lab_command is not None:
        from aupus_ha.lab.cli import run as run_lab

        return run_lab(args)
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
    command = {
        "run": _run,
        "migrate": _migrate,
        "status": _status,
        "step-down": _step_down,
        "gaps": _gaps,
    }[args.command]
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
    from aupus_ha.operations.status import annotate_states, render_status
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
        judged = annotate_states(view, settings.lease_ttl_s)  # each instance's `state`
        sys.stdout.write(orjson.dumps(judged, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        sys.stdout.write(render_status(view, settings.lease_ttl_s))
    return constants.EXIT_OK


async def _gaps(settings: Settings, args: argparse.Namespace) -> int:
    from aupus_ha.operations.gaps import run_cli

    return await run_cli(settings, args.start, args.end, args.equipment, as_json=args.json)


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
