"""Per-blob history: what each blob's checks said, folded purely from round reports.

Why: upstream keeps only node-wide state (14 keys), so an operator cannot ask "which blobs are
failing, since when, how often" and a policy cannot treat one bad blob differently from a bad
node. This module is the pure part: a `BlobRecord` per content hash (the plain value, defined in
`models` with the other values the layers pass around, re-exported here) and `apply_report`, which
returns the records a round changed. Persisting the records (beside the state file, never in it
and never in the store) is the runner's job; `status` reads them; the precise policy adds its
scheduling fields here.

Records are plain values with a dict round trip; unknown keys from a newer writer are ignored and a
malformed record is refused by `from_dict` (the caller names the file).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from distfs_pipeline.core import precision
from distfs_pipeline.core.models import FAIL as FAIL
from distfs_pipeline.core.models import PASS as PASS
from distfs_pipeline.core.models import AdaptivePolicy, BlobRecord, FailureReason, RoundReport


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
