"""Smoke test of `aupus-ha bench`: the quick path runs end to end and cleans up after itself.

No timing thresholds: the numbers depend on the machine; only their presence is checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(150)
def test_quick_bench_reports_every_figure_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """`bench --quick --skip-failover --json` reports positive baselines, phase rates,
    latencies and ratios, writes the plot, and stops every process it started and
    removes its temporary directory."""
    plot = tmp_path / "bench.html"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "aupus_ha",
            "bench",
            "--quick",
            "--skip-failover",
            "--duration",
            "3",
            "--equipment",
            "100",
            "--json",
            "--plot",
            str(plot),
        ],
        capture_output=True,
        text=True,
        timeout=140,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)

    for key in (
        "copy_rows_s",
        "store_flush_rows_s",
        "naive_insert_rows_s",
        "broker_qos1_msgs_s",
        "broker_qos0_msgs_s",
    ):
        assert report["baselines"][key] > 0, key
    assert report["costs"]["subscriber_qos1_cpu_us_per_msg"] > 0
    phases = {p["name"]: p for p in report["phases"]}
    assert set(phases) == {"max", "paced"}
    for phase in phases.values():
        assert phase["published"] > 0
        assert phase["committed"] == phase["published"]
        assert phase["ingest_rate"] > 0
        assert phase["latency_ms"]["p50"] > 0
        assert phase["latency_ms"]["p99"] >= phase["latency_ms"]["p50"]
        assert phase["resources"]["node-a"]["peak_rss_mb"] > 0
        assert phase["resources"]["node-b"]["peak_rss_mb"] > 0
        assert phase["cpu_us_per_reading"]["node-a"] > 0
    assert report["failover"] == {}
    assert report["ratios"]["e2e_max_vs_store_flush"] > 0
    assert report["ratios"]["e2e_max_vs_naive_insert"] > 0
    assert report["integrity"]["lost"] == 0
    assert report["timeline"]["committed"]
    assert "<svg" in plot.read_text()

    pids = report["processes"]["pids"]
    assert len(pids) >= 4  # postgres, mosquitto, two instances (+ the fan-out subscribers)
    assert all(_gone(pid) for pid in pids), [p for p in pids if not _gone(p)]
    workdir = report["processes"]["workdir"]
    assert not Path(workdir).exists()
    leftovers = [
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if any(workdir in arg for arg in (p.info["cmdline"] or []))
    ]
    assert leftovers == []
