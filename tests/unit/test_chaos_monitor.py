"""The chaos runner's verdicts, from hand-made /health/leader samples."""

from __future__ import annotations

from aupus_ha.lab.chaos.monitor import Sample, leaderless, two_leader_moments


def leads(name: str, at: float, epoch: int, since: float) -> Sample:
    return Sample(name, at, at + 0.01, 200, "leader", epoch, since)


def standby(name: str, at: float) -> Sample:
    return Sample(name, at, at + 0.01, 503, "standby")


def test_a_clean_handover_is_not_two_leaders() -> None:
    samples = [
        leads("a", 1.0, 1, 0.0),
        leads("a", 2.0, 1, 0.0),  # sent before epoch 2 began
        leads("b", 2.5, 2, 2.2),
        standby("a", 2.6),
    ]
    assert two_leader_moments(samples) == []


def test_an_old_leader_still_answering_after_a_newer_epoch_is_caught() -> None:
    samples = [leads("a", 1.0, 1, 0.0), leads("b", 2.5, 2, 2.2), leads("a", 3.0, 1, 0.0)]
    found = two_leader_moments(samples)
    assert [(f["instance"], f["epoch"]) for f in found] == [("a", 1)]


def test_one_epoch_claimed_by_two_instances_is_caught() -> None:
    samples = [leads("a", 1.0, 3, 0.5), leads("b", 1.0, 3, 0.5)]
    assert {f["instance"] for f in two_leader_moments(samples)} == {"a", "b"}


def test_leaderless_intervals_are_the_gaps_between_leader_spans() -> None:
    samples = [
        leads("a", 0.0, 1, 0.0),
        standby("a", 1.0),  # a stops leading at 1.0 ...
        standby("b", 1.0),
        leads("b", 3.0, 2, 2.9),  # ... b leads from 3.0
        leads("b", 4.0, 2, 2.9),
    ]
    assert leaderless(samples, 0.0, 4.0) == [(1.0, 3.0)]
