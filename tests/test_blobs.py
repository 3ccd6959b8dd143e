"""Per-blob history folded from round reports (pure), with exact values."""

from __future__ import annotations

import pytest

from distfs_pipeline.core.blobs import FAIL, PASS, BlobRecord, apply_report
from distfs_pipeline.core.models import CheckFailure, FailureReason, RoundReport


def _report(ms: int, checked: list[str], failed: dict[str, FailureReason]) -> RoundReport:
    return RoundReport(
        node_id="n",
        world_id="w",
        observed_at_unix_ms=ms,
        checked_hashes=checked,
        failures=[CheckFailure(h, r, "e") for h, r in failed.items()],
    )


def test_fail_streak_then_pass() -> None:
    book: dict[str, BlobRecord] = {}
    for ms in (100, 200):
        book.update(apply_report(book, _report(ms, ["a", "b"], {"a": FailureReason.HASH_MISMATCH})))
    a, b = book["a"], book["b"]
    assert (a.checks, a.failures, a.last_result, a.last_reason) == (2, 2, FAIL, "HASH_MISMATCH")
    assert (a.first_failure_ms, a.last_failure_ms, a.consecutive_failures) == (100, 200, 2)
    assert (b.checks, b.failures, b.last_result, b.last_pass_ms) == (2, 0, PASS, 200)
    book.update(apply_report(book, _report(300, ["a"], {})))
    a = book["a"]
    assert (a.checks, a.failures, a.last_result, a.first_failure_ms, a.consecutive_failures) == (
        3,
        2,
        PASS,
        None,
        0,
    )
    assert a.last_failure_ms == 200


def test_same_blob_twice_in_a_round_folds_twice() -> None:
    changed = apply_report({}, _report(5, ["a", "a"], {"a": FailureReason.TIMEOUT}))
    assert changed["a"].checks == 2
    assert changed["a"].failures == 1
    assert changed["a"].last_result == PASS


def test_round_trip_and_refusal() -> None:
    record = apply_report({}, _report(7, ["a"], {"a": FailureReason.MISSING_SAMPLE}))["a"]
    assert BlobRecord.from_dict(record.to_dict()) == record
    assert BlobRecord.from_dict({**record.to_dict(), "future_key": 1}) == record
    with pytest.raises(ValueError, match="checks"):
        BlobRecord.from_dict({"checks": "many"})
    with pytest.raises(ValueError, match="last_result"):
        BlobRecord.from_dict({"last_result": "maybe"})
