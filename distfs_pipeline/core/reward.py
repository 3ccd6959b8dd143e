"""Epoch reward inputs: what upstream's settlement reads from a storage node's audit (SPEC 3.5).

Why: the audit matters because settlement turns its counts into points. Each epoch report shows
the exact inputs (valid and total checks, error samples) and the storage-pool score they yield, so
an operator can see, per epoch, whether the node clears the 0.85 pass-ratio threshold.

Pure functions over plain values; the runner feeds one `EpochAccumulator` per epoch.

Honest inputs only: `availability` is 1.0 because nothing in a storage audit measures a node's
availability (upstream takes it from elsewhere). Upstream's main-pool effect of `error_samples`
(availability capped at 0.8 and a 2.0-per-sample penalty) is reported as the count, not applied
to the storage score, which does not use it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from distfs_pipeline.core.models import RoundReport, add_counts

STORAGE_RATIO_THRESHOLD = 0.85
STORAGE_RATIO_SPAN = 1.0 - STORAGE_RATIO_THRESHOLD  # the ratio range that earns points: 0.85..1.0
DEFAULT_MIN_STORAGE_CHALLENGE_CHECKS = 1
GIB = 1 << 30


@dataclass(frozen=True)
class EpochAccumulator:
    """Running sums of one epoch, as upstream's per-node accumulator keeps them."""

    epoch: int  # 1-based: epoch k holds rounds (k-1)*E+1 .. k*E
    first_round: int
    last_round: int = 0
    rounds: int = 0
    storage_valid_checks: int = 0
    storage_total_checks: int = 0
    error_samples: int = 0
    skipped_by_backoff: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)

    def add(self, report: RoundReport) -> EpochAccumulator:
        """The sums after one more round (a new value; the accumulator is immutable)."""
        reasons = add_counts(self.failure_reasons, report.failure_reasons)
        return replace(
            self,
            last_round=report.round_index,
            rounds=self.rounds + 1,
            storage_valid_checks=self.storage_valid_checks + report.passed_checks,
            storage_total_checks=self.storage_total_checks + report.total_checks,
            error_samples=self.error_samples + (1 if report.error is not None else 0),
            skipped_by_backoff=self.skipped_by_backoff + (1 if report.skipped_by_backoff else 0),
            failure_reasons=dict(sorted(reasons.items())),
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields in order (a shallow copy: `asdict`'s deep copy costs more than the round's I/O)."""
        return {**vars(self), "failure_reasons": dict(self.failure_reasons)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EpochAccumulator:
        """Rebuild from `to_dict` output (a round-log record carries it across restarts)."""
        return cls(**{**data, "failure_reasons": dict(data.get("failure_reasons", {}))})


class _Verified(Protocol):
    last_result: str | None
    size_bytes: int | None


def verified_bytes(book: Mapping[str, _Verified], candidates: Sequence[str]) -> int:
    """`rewardable_bytes`: the sizes of the blobs the node must hold whose last check passed.

    Only bytes that exist and verify count: a blob never checked, failing at its last check or no
    longer held counts nothing, and a size is the one of the file whose check passed (never an
    index line's claim). `candidates` is the store's sorted must-hold list (index or listing);
    cost O(book x log n), no file is touched.
    """
    total = 0
    n = len(candidates)
    for content_hash, record in book.items():
        if record.last_result != "pass" or not record.size_bytes:
            continue
        at = bisect.bisect_left(candidates, content_hash)
        if at < n and candidates[at] == content_hash:
            total += record.size_bytes
    return total


def epoch_of(round_index: int, epoch_rounds: int) -> int:
    """The 1-based epoch holding a 1-based round: epochs align to round_index, not to runs."""
    return (round_index - 1) // epoch_rounds + 1


def start_epoch(round_index: int, epoch_rounds: int) -> EpochAccumulator:
    """An empty accumulator for the epoch that `round_index` opens or continues."""
    return EpochAccumulator(epoch=epoch_of(round_index, epoch_rounds), first_round=round_index)


def is_epoch_end(round_index: int, epoch_rounds: int) -> bool:
    return round_index % epoch_rounds == 0


def pass_ratio(valid: int, total: int) -> float | None:
    """valid / total, or None when nothing was checked (0/0 is no evidence, not a score)."""
    return valid / total if total > 0 else None


def failure_ratio(valid: int, total: int) -> float | None:
    return (total - valid) / total if total > 0 else None


def ratio_norm(ratio: float) -> float:
    """`(ratio - 0.85) / 0.15`, floored at 0: only pass ratios above the threshold earn points."""
    if ratio <= STORAGE_RATIO_THRESHOLD:
        return 0.0
    return (ratio - STORAGE_RATIO_THRESHOLD) / STORAGE_RATIO_SPAN


def storage_score(
    valid: int,
    total: int,
    rewardable_bytes: int,
    *,
    availability: float = 1.0,
    min_checks: int = DEFAULT_MIN_STORAGE_CHALLENGE_CHECKS,
) -> float:
    """Upstream's storage-pool score: 0 below `min_checks`, else sqrt(GiB) x norm x availability."""
    if total < min_checks or total <= 0:
        return 0.0
    return math.sqrt(rewardable_bytes / GIB) * ratio_norm(valid / total) * availability


def epoch_report(
    acc: EpochAccumulator,
    rewardable_bytes: int,
    epoch_rounds: int,
    *,
    availability: float = 1.0,
    min_checks: int = DEFAULT_MIN_STORAGE_CHALLENGE_CHECKS,
) -> dict[str, Any]:
    """One epochs.jsonl record: the accumulator, the settlement inputs and the score they give.

    `complete` is False for an epoch this run joined midway (a state file from elsewhere, or a
    change of `epoch_rounds`): its sums then cover only the rounds listed.
    """
    valid, total = acc.storage_valid_checks, acc.storage_total_checks
    ratio = pass_ratio(valid, total)
    return {
        **acc.to_dict(),
        "complete": acc.rounds == epoch_rounds,
        "failure_ratio": failure_ratio(valid, total),
        "pass_ratio": ratio,
        "ratio_threshold": STORAGE_RATIO_THRESHOLD,
        "ratio_norm": ratio_norm(ratio) if ratio is not None else 0.0,
        "min_storage_challenge_checks": min_checks,
        "eligible": total >= min_checks and total > 0,
        "rewardable_bytes": rewardable_bytes,
        "rewardable_gib": rewardable_bytes / GIB,
        "availability": availability,
        "storage_score": storage_score(
            valid, total, rewardable_bytes, availability=availability, min_checks=min_checks
        ),
    }
