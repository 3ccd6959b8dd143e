"""Per-blob history: what each blob's checks said, folded purely from round reports.

Why: upstream keeps only node-wide state (14 keys), so an operator cannot ask "which blobs are
failing, since when, how often" and a policy cannot treat one bad blob differently from a bad
node. This module is the pure part: a `BlobRecord` per content hash and `apply_report`, which
returns the records a round changed. Persisting the records (beside the state file, never in it
and never in the store) is the runner's job; `status` reads them; the precise policy adds its
scheduling fields here.

Records are plain values with a dict round trip; unknown keys from a newer writer are ignored and a
malformed record is refused by `from_dict` (the caller names the file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import precision
from .models import AdaptivePolicy, FailureReason, RoundReport

PASS = "pass"
FAIL = "fail"


@dataclass(frozen=True)
class BlobRecord:
    """One blob's check history. Times are the round's observed time (unix ms)."""

    checks: int = 0
    failures: int = 0
    last_result: str | None = None  # PASS | FAIL | None (never checked)
    last_reason: str | None = None  # the FailureReason of the last failed check
    last_checked_ms: int | None = None
    last_pass_ms: int | None = None
    first_failure_ms: int | None = None  # first failure of the current failing streak
    last_failure_ms: int | None = None
    consecutive_failures: int = 0
    size_bytes: int | None = None  # size of the blob file at its last passing check (rewardable bytes)
    # Scheduling (the precise policy, `precision`): None/0 under upstream's node-scope policy.
    next_due_ms: int | None = None  # out of the rotation: checked ahead of it once this time comes
    contained: int = 0  # re-asks spent on the current environment failure (Storj's containment)
    contained_since_ms: int | None = None  # when the contained sample was first asked (its seed)

    @property
    def failing(self) -> bool:
        return self.last_result == FAIL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BlobRecord:
        """A record from its dict; `ValueError` when a known field has the wrong type."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if not _type_ok(f.type, value):
                raise ValueError(f"blob record field `{f.name}` has a bad value: {value!r}")
            values[f.name] = value
        record = cls(**values)
        if record.last_result not in (None, PASS, FAIL):
            raise ValueError(f"blob record field `last_result` has a bad value: {record.last_result!r}")
        return record


def _type_ok(annotation: Any, value: Any) -> bool:
    text = str(annotation)
    if value is None:
        return "None" in text
    if "int" in text:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    if "str" in text:
        return isinstance(value, str)
    return False


def record_check(record: BlobRecord, observed_ms: int, reason: FailureReason | str | None) -> BlobRecord:
    """The record after one check at `observed_ms`: a pass when `reason` is None."""
    if reason is None:
        return dataclasses.replace(
            record,
            checks=record.checks + 1,
            last_result=PASS,
            last_reason=None,
            last_checked_ms=observed_ms,
            last_pass_ms=observed_ms,
            first_failure_ms=None,
            consecutive_failures=0,
        )
    return dataclasses.replace(
        record,
        checks=record.checks + 1,
        failures=record.failures + 1,
        last_result=FAIL,
        last_reason=str(reason),
        last_checked_ms=observed_ms,
        first_failure_ms=record.first_failure_ms if record.failing else observed_ms,
        last_failure_ms=observed_ms,
        consecutive_failures=record.consecutive_failures + 1,
    )


def apply_report(
    book: Mapping[str, BlobRecord], report: RoundReport, policy: AdaptivePolicy | None = None
) -> dict[str, BlobRecord]:
    """The records this round changed (hash -> new record), in check order.

    A blob checked twice in one round (a small store, several checks per tick) is folded twice.
    A skipped round, or a round that failed before any check, changes no record. With a
    `backoff_scope=blob` policy each checked record also gets its schedule (`precision.reschedule`),
    and `release_on_pass` may make other records due (they are among the changes too).
    """
    scheduling = policy is not None and precision.per_blob(policy)
    blamed = precision.systemic_round(report, policy) if scheduling and policy is not None else None
    failed: dict[str, list[FailureReason]] = {}
    for failure in report.failures:
        failed.setdefault(failure.content_hash, []).append(failure.reason)
    changed: dict[str, BlobRecord] = {}
    now = report.observed_at_unix_ms
    for content_hash in report.checked_hashes:
        record = changed.get(content_hash) or book.get(content_hash) or BlobRecord()
        reasons = failed.get(content_hash)
        reason = reasons.pop(0) if reasons else None
        new = record_check(record, now, reason)
        if scheduling and policy is not None:
            new = precision.reschedule(
                record,
                new,
                reason,
                now,
                policy,
                blamed_on_environment=blamed is not None and reason == blamed,
                group_due_ms=(
                    precision.group_due({**book, **changed}, content_hash, reason)
                    if policy.group_backoff_ms > 0 and reason is not None
                    else None
                ),
            )
            if reason is None and record.failing and policy.release_on_pass:
                changed.update(precision.released({**book, **changed}, content_hash, record.last_reason, now))
        changed[content_hash] = new
    return changed
