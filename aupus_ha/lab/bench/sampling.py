"""CPU time and memory of groups of processes, sampled with psutil."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from aupus_ha.lab.bench.report import Usage


@dataclass(slots=True)
class _Window:
    started: float
    cpu_at_start: dict[str, float]
    peak_rss: dict[str, int] = field(default_factory=dict)
    rss_series: dict[str, list[int]] = field(default_factory=dict)


MACHINE = "whole machine"
OTHERS = "other processes (not the bench's)"


class ResourceSampler:
    """CPU seconds and RSS of named groups of processes, sampled with psutil.

    Every method reads /proc: call them through `asyncio.to_thread`. A pid first seen
    after the first sample is a new process, so its whole CPU time counts. The machine's
    busy time is sampled too, so a report shows how much CPU went to processes the bench
    did not start (another test-suite on a shared machine skews every figure).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cpu: dict[str, float] = {MACHINE: 0.0}
        self._last: dict[int, float] = {}
        self._machine_last: float | None = None
        self._windows: dict[str, _Window] = {}

    def sample(self, groups: Mapping[str, Sequence[int]]) -> None:
        with self._lock:
            self._sample(groups)

    def start_window(self, name: str, groups: Mapping[str, Sequence[int]]) -> None:
        with self._lock:
            self._sample(groups)
            self._windows[name] = _Window(time.monotonic(), dict(self._cpu))

    def end_window(self, name: str, groups: Mapping[str, Sequence[int]]) -> dict[str, Usage]:
        """CPU % of one core and peak RSS per group since `start_window(name)`."""
        with self._lock:
            self._sample(groups)
            window = self._windows.pop(name)
            seconds = max(1e-9, time.monotonic() - window.started)
            used = {g: cpu - window.cpu_at_start.get(g, 0.0) for g, cpu in self._cpu.items()}
        used[OTHERS] = max(0.0, used[MACHINE] - sum(v for g, v in used.items() if g != MACHINE))
        return {
            group: Usage(
                cpu_pct=round(100 * cpu / seconds, 1),
                peak_rss_mb=round(window.peak_rss.get(group, 0) / 2**20, 1),
                cpu_s=round(cpu, 3),
                rss_trend_mb=_trend(window.rss_series.get(group, [])),
            )
            for group, cpu in used.items()
        }

    def _sample(self, groups: Mapping[str, Sequence[int]]) -> None:
        primed = self._machine_last is not None
        for name, pids in groups.items():
            rss = sum(self._account(name, pid, primed) for pid in pids)
            for window in self._windows.values():
                window.peak_rss[name] = max(window.peak_rss.get(name, 0), rss)
                window.rss_series.setdefault(name, []).append(rss)
        busy = _machine_busy_s()
        if self._machine_last is not None:
            self._cpu[MACHINE] += max(0.0, busy - self._machine_last)
        self._machine_last = busy

    def _account(self, group: str, pid: int, primed: bool) -> int:
        """Add the pid's CPU since the last sample to its group; returns its memory: RSS,
        or for PostgreSQL RSS minus shared pages (every backend maps the shared buffers,
        so summing RSS would count them once per backend)."""
        import psutil

        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                mem = proc.memory_info()
        except psutil.Error:
            return 0
        rss: int = mem.rss - mem.shared if group.startswith("postgres") else mem.rss
        cpu = float(times.user + times.system)
        previous = self._last.get(pid)
        delta = cpu - previous if previous is not None else (cpu if primed else 0.0)
        self._cpu[group] = self._cpu.get(group, 0.0) + max(0.0, delta)
        self._last[pid] = cpu
        return rss


def _trend(series: Sequence[int], points: int = 5) -> list[float]:
    """Evenly spaced samples of a series (first and last included), in MB."""
    if not series:
        return []
    last = len(series) - 1
    picks = sorted({round(i * last / (points - 1)) for i in range(points)})
    return [round(series[i] / 2**20, 1) for i in picks]


def _machine_busy_s() -> float:
    """CPU seconds all cores spent busy since boot (Linux: guest time is already in user,
    and steal is time the hypervisor gave to somebody else)."""
    import psutil

    t = psutil.cpu_times()
    return float(t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)
