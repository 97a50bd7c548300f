"""`aupus-ha bench` figures derived from the instances' /metrics and the RSS samples."""

from __future__ import annotations

from aupus_ha.lab.bench.sampling import _trend
from aupus_ha.lab.bench.spoolstats import group_commit, parse_counters

METRICS = """# HELP aupus_ha_spool_records_total Messages made durable in the spool.
# TYPE aupus_ha_spool_records_total counter
aupus_ha_spool_records_total 1200.0
aupus_ha_spool_fsyncs_total 30.0
aupus_ha_spool_fsync_seconds_total 0.06
aupus_ha_spool_bytes 4096.0
"""


def test_spool_counters_are_parsed() -> None:
    """Only the three group-commit counters are read from the Prometheus page."""
    assert parse_counters(METRICS) == {"records": 1200.0, "fsyncs": 30.0, "fsync_s": 0.06}


def test_group_commit_over_a_phase() -> None:
    """Rates, records per fsync and time in fsync come from counter differences."""
    before = {"node-a": {"records": 200.0, "fsyncs": 10.0, "fsync_s": 0.02}}
    before["node-c"] = {"records": 900.0, "fsyncs": 90.0, "fsync_s": 1.0}
    after = {"node-a": parse_counters(METRICS), "node-b": {}, "node-c": {"records": 5.0}}
    stats = group_commit(before, after, seconds=2.0)  # node-c restarted: left out
    assert stats == {
        "node-a": {
            "records_per_s": 500.0,
            "fsyncs_per_s": 10.0,
            "records_per_fsync": 50.0,
            "ms_per_fsync": 2.0,
            "fsync_busy_pct": 2.0,
        }
    }


def test_rss_trend_picks_start_quarters_and_end() -> None:
    """Five evenly spaced samples (fewer when the phase had fewer), in MB."""
    mb = 2**20
    assert _trend([i * mb for i in range(9)]) == [0.0, 2.0, 4.0, 6.0, 8.0]
    assert _trend([mb, 3 * mb]) == [1.0, 3.0]
    assert _trend([]) == []
