"""The chaos suite: random faults against a real three-instance cluster under load.

The short run is part of the default suite: one round of every fault kind (seeded, in
random order) with the fast test timings, about two minutes. The long run is marked
`slow` (`pytest -m slow tests/chaos`); its length comes from AUPUS_CHAOS_DURATION_S
(seconds, default 1800).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from aupus_ha.chaos import PROCESS_KINDS, ChaosOptions, render, run_chaos, write_json
from aupus_ha.chaos.report import ChaosReport

SHORT_SEED = 20260601


async def _run(options: ChaosOptions, tmp_path: Path) -> ChaosReport:
    report = await run_chaos(options)
    print(render(report))  # shown with -s, and on failure
    write_json(report, tmp_path / "chaos.json")
    return report


def _assert_sound(report: ChaosReport) -> None:
    r = report.readings
    assert r.acknowledged > 0
    assert r.lost == 0, f"acknowledged but not stored, e.g. seq {r.lost_examples}"
    assert r.duplicated == 0, f"{r.duplicated} readings stored twice"
    assert report.two_leader_moments == [], report.two_leader_moments
    assert report.settle_complete, "not every published reading was stored by the deadline"


@pytest.mark.timeout(600)
async def test_short_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """One seeded round of every fault kind: nothing acknowledged is lost, nothing stored
    twice, never two leaders; every process fault kind happened."""
    options = ChaosOptions(duration_s=0, seed=SHORT_SEED, rate=150, equipment=300, min_rounds=1)
    report = await _run(options, tmp_path)
    _assert_sound(report)
    happened = {f.kind for f in report.faults}
    assert set(options.kinds) <= happened
    assert set(PROCESS_KINDS) <= happened
    assert all(f.recovered for f in report.faults), [f for f in report.faults if not f.recovered]


@pytest.mark.slow
@pytest.mark.timeout(0)
async def test_long_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """A long random run (AUPUS_CHAOS_DURATION_S, default 30 min) with the same promises."""
    duration = float(os.environ.get("AUPUS_CHAOS_DURATION_S", "1800"))
    report = await _run(ChaosOptions(duration_s=duration, min_rounds=1), tmp_path)
    _assert_sound(report)
