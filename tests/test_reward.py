"""Epoch reward inputs (SPEC 3.5): the threshold, the gate, the score, the accumulator."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from distfs_pipeline.core import reward
from distfs_pipeline.core.models import RoundReport


def report(index: int, passed: int, failed: int, **extra: object) -> RoundReport:
    reasons = {"HASH_MISMATCH": failed} if failed else {}
    return RoundReport(
        node_id="n",
        world_id="w",
        observed_at_unix_ms=index,
        total_checks=passed + failed,
        passed_checks=passed,
        failed_checks=failed,
        failure_reasons=reasons,
        round_index=index,
        **extra,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("ratio", "norm"),
    [(1.0, 1.0), (0.85, 0.0), (0.5, 0.0), (0.0, 0.0), (0.925, 0.5), (0.88, 0.2)],
)
def test_ratio_norm_is_zero_up_to_the_threshold_then_linear(ratio: float, norm: float) -> None:
    assert reward.ratio_norm(ratio) == pytest.approx(norm)


@given(valid=st.integers(0, 10_000), extra=st.integers(0, 10_000))
def test_norm_stays_in_0_1(valid: int, extra: int) -> None:
    total = valid + extra
    if total:
        assert 0.0 <= reward.ratio_norm(valid / total) <= 1.0


def test_storage_score_is_sqrt_gib_times_norm_times_availability() -> None:
    four_gib = 4 * reward.GIB
    assert reward.storage_score(100, 100, four_gib) == pytest.approx(2.0)
    assert reward.storage_score(95, 100, four_gib, availability=0.5) == pytest.approx(
        math.sqrt(4) * (0.95 - 0.85) / 0.15 * 0.5
    )
    assert reward.storage_score(85, 100, four_gib) == 0.0


def test_min_checks_gate() -> None:
    assert reward.storage_score(0, 0, reward.GIB) == 0.0  # default gate 1: nothing checked, no score
    assert reward.storage_score(4, 4, reward.GIB, min_checks=5) == 0.0
    assert reward.storage_score(5, 5, reward.GIB, min_checks=5) == pytest.approx(1.0)


def test_accumulator_sums_a_round_at_a_time_without_mutating() -> None:
    start = reward.start_epoch(11, 10)
    assert start.epoch == 2 and start.first_round == 11
    acc = start.add(report(11, 3, 1)).add(report(12, 0, 0, skipped_by_backoff=True))
    acc = acc.add(report(13, 0, 1, error="list audit candidates failed"))
    assert start.rounds == 0
    assert (acc.rounds, acc.last_round, acc.storage_valid_checks, acc.storage_total_checks) == (3, 13, 3, 5)
    assert acc.error_samples == 1 and acc.skipped_by_backoff == 1
    assert acc.failure_reasons == {"HASH_MISMATCH": 2}
    assert reward.EpochAccumulator.from_dict(acc.to_dict()) == acc


def test_epochs_align_to_round_index() -> None:
    assert [reward.epoch_of(i, 5) for i in (1, 5, 6, 10, 11)] == [1, 1, 2, 2, 3]
    assert reward.is_epoch_end(10, 5) and not reward.is_epoch_end(11, 5)


def test_epoch_report_carries_the_settlement_inputs() -> None:
    acc = reward.start_epoch(1, 4)
    for i, (p, f) in enumerate([(1, 0), (1, 0), (1, 0), (0, 1)], start=1):
        acc = acc.add(report(i, p, f))
    out = reward.epoch_report(acc, reward.GIB, 4)
    assert out["storage_valid_checks"] == 3 and out["storage_total_checks"] == 4
    assert out["failure_ratio"] == 0.25 and out["pass_ratio"] == 0.75
    assert out["ratio_threshold"] == 0.85 and out["ratio_norm"] == 0.0 and out["storage_score"] == 0.0
    assert out["eligible"] and out["complete"] and out["rewardable_gib"] == 1.0
    partial = reward.epoch_report(reward.start_epoch(3, 4).add(report(3, 1, 0)), reward.GIB, 4)
    assert not partial["complete"] and partial["storage_score"] == pytest.approx(1.0)


def test_nothing_checked_is_no_evidence() -> None:
    out = reward.epoch_report(reward.start_epoch(1, 1).add(report(1, 0, 0)), reward.GIB, 1)
    assert out["pass_ratio"] is None and out["failure_ratio"] is None
    assert not out["eligible"] and out["storage_score"] == 0.0
