"""One scheduled audit round: backoff skip, candidates, checks, then `scheduler.advance`.

The auditor is the thin I/O shell around the pure scheduler (SPEC 2.10,
`probe_storage_challenges_with_policy`). It owns no clock and no persistence: the runner passes the
observed time and the current state in, and gets a report and a *new* state back.

Deliberate difference from upstream (SPEC section 0, fail closed): when listing the candidates
fails, upstream returns an error and leaves the state untouched, and its runtime then credits the
node 1/1. Here the round still happens and is counted as one failed check with the classified
reason (`report.error` keeps the message), so the failure streak and backoff apply, cumulative
counts show it, and the round log records it. Only the cursor is kept, because without a listing
there is no candidate count to advance it against; the next good round resumes where this one
would have started.

Two more fail-closed rules (issue 8): a store whose `blobs/` directory existed when the auditor was
made and is gone at a round (unmounted, deleted) fails that round the same way, with a clear error,
instead of auditing an empty listing and resetting the cursor; and with `measure_response_time`
(the wall clock) a check is stamped with the time its answer's read really finished, so a read
slower than TTL + skew fails as TIMEOUT. The virtual clock keeps the study's stamped time.

With a precise policy (`precision.enabled`), the round is planned by `precision.plan_round` from
the per-blob book the runner passes in; the I/O stays here.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from distfs_pipeline.core import precision, scheduler
from distfs_pipeline.core.challenge import (
    classify_world_error_reason,
    probe_request,
    record_outcome,
    run_check,
)
from distfs_pipeline.core.chunks import make_reader
from distfs_pipeline.core.errors import DistributedValidationFailed, Io, WorldError
from distfs_pipeline.core.models import (
    AdaptivePolicy,
    CursorState,
    ProbeConfig,
    RoundReport,
    StorageChallengeRequest,
    VerifyOptions,
    is_blank,
)
from distfs_pipeline.core.store import LocalCasStore

if TYPE_CHECKING:
    from distfs_pipeline.core.blobs import BlobRecord


def _no_delay(_content_hash: str) -> int:
    return 0


def _require_non_empty(value: str, field: str) -> None:
    """Upstream `validate_non_empty`: empty after Rust's `trim()` (see `models.is_blank`)."""
    if is_blank(value):
        raise DistributedValidationFailed(f"probe field {field} cannot be empty")


class Auditor:
    """Runs scheduled storage-challenge rounds against one store for one (world, node)."""

    def __init__(
        self,
        store: LocalCasStore,
        *,
        world_id: str,
        node_id: str,
        probe: ProbeConfig,
        policy: AdaptivePolicy,
        verify: VerifyOptions = VerifyOptions(),  # noqa: B008 - frozen dataclass, safe as a default
        response_delay_ms: Callable[[str], int] | None = None,
        measure_response_time: bool = False,
    ) -> None:
        """Validate everything up front (upstream's order), so no round can run with bad settings.

        Raises DistributedValidationFailed: the probe config, then the policy, then the ids.
        """
        scheduler.validate_probe_config(probe)
        scheduler.validate_policy(policy)
        _require_non_empty(world_id, "world_id")
        _require_non_empty(node_id, "node_id")
        self.store = store
        self.world_id = world_id
        self.node_id = node_id
        self.probe = probe
        self.policy = policy
        self.verify = verify
        self._delay = response_delay_ms or _no_delay
        self._reader = make_reader(store, verify)
        self.measure_response_time = measure_response_time
        # A store whose blobs dir exists now must not silently become an empty one later.
        self._had_blobs_dir = os.path.isdir(store.blobs_dir)
        self._order_seed = precision.order_seed(policy, world_id, node_id)

    def run_round(
        self, state: CursorState, observed_ms: int, book: Mapping[str, BlobRecord] | None = None
    ) -> tuple[RoundReport, CursorState]:
        """Run (or skip, during backoff) one round at `observed_ms`; `state` is never mutated.

        `book` (the per-blob records, read only) plans the round under a precise policy; without
        it a precise policy plans from empty records. The returned report's `round_index` equals
        the new state's `rounds_executed`.
        """
        skipped = scheduler.skip_for_backoff(state, observed_ms)
        if skipped is not None:
            report = self._empty_report(observed_ms)
            report.skipped_by_backoff = True
            report.round_index = skipped.rounds_executed
            return report, skipped
        try:
            self._require_store()
            hashes = self.store.candidates()
        except WorldError as err:
            return self._listing_failed(state, observed_ms, err)
        report = self._empty_report(observed_ms)
        if precision.enabled(self.policy):
            steps = self._run_planned(state, report, hashes, book or {})
            return self._finish(state, report, len(hashes), steps)
        self._run_checks(state, report, hashes)
        return self._finish(state, report, len(hashes))

    def _require_store(self) -> None:
        """Fail the round when the store's blobs dir vanished since start (see module doc)."""
        if self._had_blobs_dir and not os.path.isdir(self.store.blobs_dir):
            raise Io(f"store vanished: {self.store.blobs_dir} is no longer a directory")

    def _empty_report(self, observed_ms: int) -> RoundReport:
        return RoundReport(node_id=self.node_id, world_id=self.world_id, observed_at_unix_ms=observed_ms)

    def _check(self, report: RoundReport, request: StorageChallengeRequest, started: float) -> None:
        """One check, answered at the stamped time, or (wall clock) when its read really ended."""
        observed_ms = report.observed_at_unix_ms
        delay = self._delay(request.content_hash)
        skew = self.probe.allowed_clock_skew_ms
        if not self.measure_response_time:
            record_outcome(report, run_check(self._reader, request, observed_ms + delay, skew))
            return

        def answered_at() -> int:
            return observed_ms + delay + int((time.monotonic() - started) * 1000)

        outcome = run_check(self._reader, request, observed_ms + delay, skew, answered_at=answered_at)
        record_outcome(report, outcome)

    def _run_checks(self, state: CursorState, report: RoundReport, hashes: Sequence[str]) -> None:
        """Check `min(per_tick, max_checks, n)` candidates from the cursor on, wrapping around.

        O(checks): only the scheduled entries of `hashes` are touched.
        """
        started = time.monotonic()
        n = len(hashes)
        if n == 0:
            return
        checks = min(self.probe.challenges_per_tick, self.policy.max_checks_per_round, n)
        start = state.next_blob_cursor % n
        observed_ms = report.observed_at_unix_ms
        for index in range(checks):
            content_hash = hashes[(start + index) % n]
            # Ids use the raw (pre-modulo) cursor, as upstream does.
            request = probe_request(
                self.probe,
                self.world_id,
                self.node_id,
                observed_ms,
                index,
                content_hash,
                cursor=state.next_blob_cursor,
            )
            self._check(report, request, started)

    def _run_planned(
        self,
        state: CursorState,
        report: RoundReport,
        hashes: Sequence[str],
        book: Mapping[str, BlobRecord],
    ) -> int:
        """The checks `precision.plan_round` chose; returns the rotation slots it walked."""
        started = time.monotonic()
        observed_ms = report.observed_at_unix_ms
        plan = precision.plan_round(
            hashes,
            book,
            state.next_blob_cursor,
            min(self.probe.challenges_per_tick, self.policy.max_checks_per_round),
            observed_ms,
            state.rounds_executed + 1,
            self.policy,
            self._order_seed,
        )
        for index, planned in enumerate(plan.checks):
            content_hash = planned.content_hash
            request = StorageChallengeRequest(
                challenge_id=f"precise-probe:{self.node_id}:{observed_ms}:{index}:{content_hash[:12]}",
                world_id=self.world_id,
                node_id=self.node_id,
                content_hash=content_hash,
                max_sample_bytes=self.probe.max_sample_bytes,
                issued_at_unix_ms=observed_ms,
                challenge_ttl_ms=self.probe.challenge_ttl_ms,
                vrf_seed=precision.sample_seed(self.world_id, self.node_id, planned.asked_ms, content_hash),
            )
            self._check(report, request, started)
        return plan.cursor_steps

    def _listing_failed(
        self, state: CursorState, observed_ms: int, err: WorldError
    ) -> tuple[RoundReport, CursorState]:
        """Count a failed listing as one failed check (fail closed); keep the cursor (see module doc)."""
        reason = classify_world_error_reason(err).value
        report = self._empty_report(observed_ms)
        report.total_checks = report.failed_checks = 1
        report.failure_reasons = {reason: 1}
        report.error = f"list audit candidates failed: {err}"
        report, new_state = self._finish(state, report, 0)
        return report, dataclasses.replace(new_state, next_blob_cursor=state.next_blob_cursor)

    def _finish(
        self, state: CursorState, report: RoundReport, blob_count: int, cursor_steps: int | None = None
    ) -> tuple[RoundReport, CursorState]:
        new_state, decision = scheduler.advance(state, report, self.policy, blob_count, cursor_steps)
        report.blob_count = blob_count
        report.backoff = decision
        report.round_index = new_state.rounds_executed
        return report, new_state
