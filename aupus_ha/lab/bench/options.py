"""What one `aupus-ha bench` run measures: the options and their parsing from the CLI flags."""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

RateSpec = float | Literal["auto", "max"]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    duration_s: float = 30.0  # per measured phase
    rate: RateSpec = "auto"  # auto: max phase, then paced at half of it
    equipment: int = 1000
    payload_bytes: int = 300
    window: int = 1000  # unacknowledged QoS 1 publishes, at most
    baseline_s: float = 4.0  # time budget of each raw baseline
    warmup_s: float = 1.0
    failover_runs: int = 1
    skip_failover: bool = False
    fast_timings: bool = False
    durable: bool = False  # PostgreSQL with fsync on
    keep: bool = False
    plot: Path | None = None


def parse_rate(text: str) -> RateSpec:
    """`auto`, `max` or a positive number of readings per second."""
    if text in ("auto", "max"):
        return text  # type: ignore[return-value]
    rate = float(text)
    if not rate > 0 or math.isinf(rate):
        raise ValueError(text)
    return rate


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    """BenchOptions from the `aupus-ha bench` flags; ValueError names a bad one."""
    try:
        rate = parse_rate(args.rate)
    except ValueError:
        raise ValueError("--rate must be auto, max or a positive number") from None
    if args.plot is not None and args.plot.suffix.lower() not in (".html", ".htm", ".svg"):
        raise ValueError(
            "--plot must end in .html or .svg (a .png needs matplotlib, which is not a "
            "dependency of aupus-ha)"
        )
    if args.equipment < 1 or args.payload_bytes < 1 or args.window < 1:
        raise ValueError("--equipment, --payload-bytes and --window must be positive")
    duration = args.duration if args.duration is not None else (8.0 if args.quick else 30.0)
    if duration <= 0:
        raise ValueError("--duration must be positive")
    return BenchOptions(
        duration_s=duration,
        rate=rate,
        equipment=args.equipment,
        payload_bytes=args.payload_bytes,
        window=args.window,
        baseline_s=1.0 if args.quick else 4.0,
        warmup_s=0.5 if args.quick else 1.0,
        failover_runs=max(1, args.failover_runs),
        skip_failover=args.skip_failover,
        fast_timings=args.fast_timings,
        durable=args.durable,
        keep=args.keep,
        plot=args.plot,
    )
