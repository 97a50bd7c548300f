"""What a chaos run does: its length, load, timings, and how long each fault lasts."""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from aupus_ha.config import default_text, default_value
from aupus_ha.lab.localcluster import FAST_TIMINGS

FAULT_KINDS: Final = (
    "kill9",  # SIGKILL of an instance, restarted after RESTART_PAUSE_S (like systemd)
    "sigstop",  # SIGSTOP of an instance, SIGCONT after a few lease TTLs
    "sigterm",  # graceful stop of an instance, restarted after RESTART_PAUSE_S
    "pg_restart",  # PostgreSQL fast shutdown and start
    "pg_down",  # PostgreSQL crash (SIGKILL of every process), down for a while, start
    "broker_restart",  # Mosquitto graceful stop and start
    "broker_down",  # Mosquitto stopped for a while, then started
    "slow_db",  # every PostgreSQL process SIGSTOPped for a little under the TTL
    "partition_db",  # one instance's database traffic blackholed, then restored
    "partition_mqtt",  # one instance's broker traffic blackholed, then restored
    "hostile_payloads",  # hostile but valid (and some invalid) payloads mixed into the load
    "db_read_only",  # default_transaction_read_only on + sessions terminated, then off
    "db_conn_slots",  # no connection slot left for the instances' role, then released
    "spool_full",  # one instance's spool file system full (a ballast file), then freed
    "spool_ro",  # one instance's spool file system read-only, then writable again
    "clockless",  # readings of devices without a clock mixed into the load
)
PROCESS_KINDS: Final = ("kill9", "sigstop", "sigterm")
# Faults with an instance as target (the leader half of the time).
INSTANCE_KINDS: Final = (*PROCESS_KINDS, "partition_db", "partition_mqtt")
SPOOL_KINDS: Final = ("spool_full", "spool_ro")  # need a tmpfs per spool (mount as root)
# Every fault aimed at one instance; only INSTANCE_KINDS measure a failover.
TARGETED_KINDS: Final = (*INSTANCE_KINDS, *SPOOL_KINDS, "db_conn_slots")
LOAD_KINDS: Final = ("hostile_payloads", "clockless")  # extra traffic, not a breakage
# The contract's defaults (the settings table's: LEASE_TTL_S 5 etc.) when a run asks for them.
DEFAULT_TIMINGS: Final = {
    name: default_text(name) for name in ("LEASE_TTL_S", "HEARTBEAT_S", "FLUSH_INTERVAL_S")
}
RESTART_PAUSE_S: Final = 1.0  # systemd's RestartSec
MAX_PAYLOAD_BYTES: Final[int] = default_value("MAX_PAYLOAD_BYTES")  # the instances' default
SPOOL_SEGMENT_MAX_AGE_S: Final = 10.0  # aupus_ha.pipeline.spool.Spool's default segment_max_age_s


@dataclass(slots=True)
class ChaosOptions:
    duration_s: float = 300.0  # faults are injected for this long
    seed: int = field(default_factory=lambda: random.randrange(1 << 31))
    rate: float = 200.0  # readings per second, QoS 1
    equipment: int = 500  # devices, one topic each
    fast: bool = True  # FAST_TIMINGS (LEASE_TTL_S 2) instead of the contract's defaults
    fault_scale: float = 1.0  # multiplies every fault's duration
    kinds: tuple[str, ...] = FAULT_KINDS
    min_rounds: int = 0  # keep going past the duration until every kind ran this often
    settle_timeout_s: float = 90.0
    json_path: Path | None = None
    keep: bool = False  # keep the logs and data directory
    spool_fs_bytes: int = 64 * 1024 * 1024  # each instance's spool tmpfs (4 segments)

    @property
    def timings(self) -> dict[str, str]:
        return dict(FAST_TIMINGS if self.fast else DEFAULT_TIMINGS)

    @property
    def lease_ttl_s(self) -> float:
        return float(self.timings["LEASE_TTL_S"])

    # -- fault durations, all proportional to the lease TTL ------------------------------

    @property
    def sigstop_s(self) -> float:
        return 2.0 * self.lease_ttl_s * self.fault_scale

    @property
    def outage_s(self) -> float:
        """How long PostgreSQL or the broker stays down."""
        return 2.0 * self.lease_ttl_s * self.fault_scale

    @property
    def partition_s(self) -> float:
        return 3.0 * self.lease_ttl_s * self.fault_scale

    @property
    def slow_db_s(self) -> float:
        """A little under the TTL, whatever the scale: a slow database, not a dead one."""
        return 0.8 * self.lease_ttl_s

    @property
    def db_fault_s(self) -> float:
        """How long the database stays read-only or without free connection slots."""
        return 2.0 * self.lease_ttl_s * self.fault_scale

    @property
    def spool_fault_s(self) -> float:
        """How long a spool file system stays full or read-only."""
        return 2.0 * self.lease_ttl_s * self.fault_scale

    @property
    def spool_ro_s(self) -> float:
        """Read-only at least past one segment rotation (the spool seals a segment every
        SPOOL_SEGMENT_MAX_AGE_S): the open segment keeps working, the next one is refused."""
        return max(self.spool_fault_s, SPOOL_SEGMENT_MAX_AGE_S + 2.0)

    @property
    def side_load_s(self) -> float:
        """How long hostile or clockless payloads are mixed into the load."""
        return 2.0 * self.lease_ttl_s * self.fault_scale

    @property
    def gap_s(self) -> float:
        """Quiet time between a recovered cluster and the next fault."""
        return self.lease_ttl_s * self.fault_scale

    @property
    def recover_timeout_s(self) -> float:
        return 30.0 + 10.0 * self.lease_ttl_s

    def problems(self) -> list[str]:
        out = []
        if not self.duration_s >= 0:
            out.append("--duration must be >= 0")
        if not self.rate > 0:
            out.append("--rate must be positive")
        if not 1 <= self.equipment <= 10_000:
            out.append("--equipment must be between 1 and 10000")
        if not self.fault_scale > 0:
            out.append("--fault-scale must be positive")
        unknown = sorted(set(self.kinds) - set(FAULT_KINDS))
        if unknown or not self.kinds:
            out.append(f"--faults takes a comma list of: {', '.join(FAULT_KINDS)}")
        return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of faults")
    parser.add_argument("--seed", type=int, help="same seed, same fault schedule (random)")
    parser.add_argument("--rate", type=float, default=200.0, help="readings per second")
    parser.add_argument("--equipment", type=int, default=500, help="devices (one topic each)")
    parser.add_argument(
        "--contract-timings",
        action="store_true",
        help=f"LEASE_TTL_S={DEFAULT_TIMINGS['LEASE_TTL_S']} etc. "
        f"(default: TTL {FAST_TIMINGS['LEASE_TTL_S']})",
    )
    parser.add_argument("--fault-scale", type=float, default=1.0, help="fault durations x")
    parser.add_argument(
        "--faults", help=f"comma list of kinds (default all: {','.join(FAULT_KINDS)})"
    )
    parser.add_argument("--min-rounds", type=int, default=0, help="run every kind at least N times")
    parser.add_argument("--json", type=Path, dest="json_path", help="write the report as JSON")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data")


def options_from_args(args: argparse.Namespace) -> ChaosOptions:
    options = ChaosOptions(
        duration_s=args.duration,
        rate=args.rate,
        equipment=args.equipment,
        fast=not args.contract_timings,
        fault_scale=args.fault_scale,
        min_rounds=args.min_rounds,
        json_path=args.json_path,
        keep=args.keep,
    )
    if args.seed is not None:
        options.seed = args.seed
    if args.faults:
        options.kinds = tuple(k.strip() for k in args.faults.split(",") if k.strip())
    return options
