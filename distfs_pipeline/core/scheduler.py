"""The scheduler core: validation, backoff arithmetic and the state transition of one round.

Pure by design (upstream `challenge_scheduler.rs` style, see ANCHORS): plain data in, plain data out,
no I/O, no clock, no store. The auditor does the I/O and hands a finished `RoundReport` to `advance`,
so every rule about counts, streaks, backoff and the cursor is testable without a file system.

Arithmetic mirrors upstream's integer types: u64 counters and i64 times saturate instead of
overflowing, so a state file written by the Rust runtime evolves identically here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from distfs_pipeline.core import precision
from distfs_pipeline.core.backoff import MAX_BACKOFF_EXPONENT as MAX_BACKOFF_EXPONENT
from distfs_pipeline.core.backoff import compute_backoff as compute_backoff
from distfs_pipeline.core.errors import DistributedValidationFailed
from distfs_pipeline.core.models import (
    I64_MAX,
    I64_MIN,
    POLICY_UPSTREAM_NAMES,
    U32_MAX,
    U64_MAX,
    AdaptivePolicy,
    BackoffDecision,
    CursorState,
    FailureReason,
    ProbeConfig,
    RoundReport,
    add_counts,
)

# Upstream caps the doubling at 2^16 so the exponent never overflows a shift.

# Our multiplier field names in upstream's validation order (hash_mismatch ... unknown).
_MULTIPLIER_FIELDS = tuple(name for name in POLICY_UPSTREAM_NAMES if name.startswith("backoff_multiplier_"))


# The decision for a round that is not a failure round: streak ended, no deadline, no reason.
_NO_BACKOFF = BackoffDecision(
    failure_round=False,
    consecutive_failure_rounds=0,
    backoff_ms=0,
    backoff_until_unix_ms=0,
    reason=None,
    multiplier=0,
)


def _sat_u64(value: int) -> int:
    """Clamp to u64, as Rust's `saturating_add` on u64 counters does."""
    return min(max(value, 0), U64_MAX)


def _sat_i64(value: int) -> int:
    """Clamp to i64, as Rust's `saturating_add`/`saturating_mul` on i64 times does."""
    return min(max(value, I64_MIN), I64_MAX)


def _fail(reason: str) -> None:
    raise DistributedValidationFailed(reason)


def validate_probe_config(config: ProbeConfig) -> None:
    """Reject a probe config upstream would reject, with upstream's messages, first failure wins.

    Raises DistributedValidationFailed. Run before any round (and even during backoff) so a bad
    setting is refused loudly instead of turning every round into an error.
    """
    if config.max_sample_bytes < 1:
        _fail("probe max_sample_bytes must be >= 1")
    if config.challenges_per_tick < 1:
        _fail("probe challenges_per_tick must be >= 1")
    if config.challenge_ttl_ms <= 0:
        _fail("probe challenge_ttl_ms must be > 0")
    if config.allowed_clock_skew_ms < 0:
        _fail("probe allowed_clock_skew_ms must be >= 0")


def validate_policy(policy: AdaptivePolicy) -> None:
    """Reject an adaptive policy in upstream's order, naming fields by their upstream serde names.

    Unlike the upstream HEAD CLI, `max < base` is always refused here (SPEC section 0: fail closed),
    because upstream would otherwise error on every probe and credit the node for free.
    """
    if policy.max_checks_per_round < 1:
        _fail("adaptive policy max_checks_per_round must be >= 1")
    if policy.backoff_base_ms < 0:
        _fail("adaptive policy failure_backoff_base_ms must be >= 0")
    if policy.backoff_max_ms < 0:
        _fail("adaptive policy failure_backoff_max_ms must be >= 0")
    if policy.backoff_max_ms < policy.backoff_base_ms:
        _fail("adaptive policy failure_backoff_max_ms must be >= failure_backoff_base_ms")
    for name in _MULTIPLIER_FIELDS:
        if getattr(policy, name) < 1:
            _fail(f"adaptive policy {POLICY_UPSTREAM_NAMES[name]} must be >= 1")
    _validate_precise(policy)


def _validate_precise(policy: AdaptivePolicy) -> None:
    """Our keys (issue 10), after upstream's; named by their config keys."""
    if policy.backoff_scope not in precision.SCOPES:
        _fail(f"adaptive policy backoff_scope must be one of {', '.join(precision.SCOPES)}")
    if policy.order not in precision.ORDERS:
        _fail(f"adaptive policy order must be one of {', '.join(precision.ORDERS)}")
    for name in ("loss_recheck_ms", "containment_attempts", "systemic_min_checks"):
        if getattr(policy, name) < 0:
            _fail(f"adaptive policy {name} must be >= 0")
    if not 0 <= policy.systemic_percent <= 100:
        _fail("adaptive policy systemic_percent must be within 0..=100")
    if not 0 <= policy.priority_share_percent <= 99:
        _fail("adaptive policy priority_share_percent must be within 0..=99")


def _parse_reason_key(key: str) -> FailureReason:
    """Map a count-map key to its reason; anything unrecognised is UNKNOWN (upstream's `_` arm)."""
    try:
        return FailureReason(key)
    except ValueError:
        return FailureReason.UNKNOWN


def dominant_reason(reasons: Mapping[str, int]) -> FailureReason:
    """The reason with the highest count; ties go to the alphabetically first key.

    Mirrors upstream exactly: walk keys in sorted order and replace the choice only on a strictly
    greater count, *then* map the chosen key. So an unrecognised key holding the top count yields
    UNKNOWN even if a recognised key has fewer; an empty map (or all-zero counts) yields UNKNOWN.
    """
    chosen: str | None = None
    best = 0
    for key in sorted(reasons):
        if reasons[key] > best:
            chosen, best = key, reasons[key]
    return FailureReason.UNKNOWN if chosen is None else _parse_reason_key(chosen)


def skip_for_backoff(state: CursorState, observed_ms: int) -> CursorState | None:
    """The state after a round skipped for backoff, or None when the round must run.

    Strict `observed < backoff_until`: a round exactly at the deadline runs. A skip counts as an
    executed round (so round numbers stay continuous) but touches nothing else: the cursor, the
    cumulative checks, the failure streak and the deadline are kept as they are.
    """
    if observed_ms >= state.backoff_until_unix_ms:
        return None
    new = state.copy()
    new.rounds_executed = _sat_u64(state.rounds_executed + 1)
    new.last_probe_unix_ms = observed_ms
    new.cumulative_backoff_skipped_rounds = _sat_u64(state.cumulative_backoff_skipped_rounds + 1)
    return new


def _accumulate(state: CursorState, report: RoundReport) -> CursorState:
    """A copy of `state` with this round's counts added (saturating) and the round recorded."""
    reasons = add_counts(state.cumulative_failure_reasons, report.failure_reasons, cap=U64_MAX)
    return dataclasses.replace(
        state,
        rounds_executed=_sat_u64(state.rounds_executed + 1),
        last_probe_unix_ms=report.observed_at_unix_ms,
        cumulative_total_checks=_sat_u64(state.cumulative_total_checks + report.total_checks),
        cumulative_passed_checks=_sat_u64(state.cumulative_passed_checks + report.passed_checks),
        cumulative_failed_checks=_sat_u64(state.cumulative_failed_checks + report.failed_checks),
        cumulative_failure_reasons=reasons,
    )


def _decide(
    state: CursorState, report: RoundReport, policy: AdaptivePolicy
) -> tuple[CursorState, BackoffDecision]:
    """Apply the failure-streak and backoff rule to an already accumulated state (mutates it).

    A failure round (something failed, nothing passed) extends the streak and fills every
    `last_backoff_*` field, even when the policy disables backoff (duration 0, deadline = now).
    Any other round (a pass, or no checks at all) ends the streak and clears the deadline but keeps
    `last_backoff_*`, which describe the last backoff that was decided.
    """
    observed = report.observed_at_unix_ms
    if not (report.failed_checks > 0 and report.passed_checks == 0):
        state.consecutive_failure_rounds = 0
        state.backoff_until_unix_ms = 0
        return state, _NO_BACKOFF
    streak = _sat_u64(state.consecutive_failure_rounds + 1)
    reason = dominant_reason(report.failure_reasons)
    multiplier = min(policy.multiplier_for(reason), U32_MAX)  # a u32 upstream; keeps the state loadable
    backoff_ms = compute_backoff(policy.backoff_base_ms, policy.backoff_max_ms, streak, multiplier)
    if precision.per_blob(policy) or (not policy.backoff_on_loss and reason in precision.LOSS):
        backoff_ms = 0  # blob scope: the blobs back off, never the node; proven loss: never
    state.consecutive_failure_rounds = streak
    state.backoff_until_unix_ms = _sat_i64(observed + backoff_ms)
    state.cumulative_backoff_applied_ms = _sat_i64(state.cumulative_backoff_applied_ms + backoff_ms)
    state.last_backoff_duration_ms = backoff_ms
    state.last_backoff_reason = reason.value
    state.last_backoff_multiplier = multiplier
    decision = BackoffDecision(
        failure_round=True,
        consecutive_failure_rounds=streak,
        backoff_ms=backoff_ms,
        backoff_until_unix_ms=state.backoff_until_unix_ms,
        reason=reason.value,
        multiplier=multiplier,
    )
    return state, decision


def next_cursor(cursor: int, total_checks: int, blob_count: int) -> int:
    """Where the next round starts: step past the blobs just checked, wrapping; 0 for no blobs.

    When a round checks every blob the cursor stays put, which is fine: all are checked anyway.

    Upstream adds with a plain usize `+` (not saturating), which wraps at 2^64 in its release
    build; so does this, so a state file holding a cursor near u64::MAX moves as it would there.
    """
    if blob_count <= 0:
        return 0
    return ((cursor + total_checks % blob_count) & U64_MAX) % blob_count


def advance(
    state: CursorState,
    report: RoundReport,
    policy: AdaptivePolicy,
    blob_count: int,
    cursor_steps: int | None = None,
) -> tuple[CursorState, BackoffDecision]:
    """The state after a round that ran (SPEC 2.10 step 6), and the backoff decision taken.

    Returns a new state; `state` is never mutated, so a caller can persist or compare both. The
    round's time is `report.observed_at_unix_ms`; `blob_count` is the candidate count of the round.
    A round planned by `precision` passes the rotation slots it walked as `cursor_steps` (its
    priority checks do not move the cursor, its idle slots do); the cursor then wraps at
    `precision.cursor_modulus` (n, or n passes times n with `order=shuffle`).
    """
    new, decision = _decide(_accumulate(state, report), report, policy)
    if cursor_steps is None:
        new.next_blob_cursor = next_cursor(state.next_blob_cursor, report.total_checks, blob_count)
    else:
        modulus = precision.cursor_modulus(policy, blob_count)
        new.next_blob_cursor = (state.next_blob_cursor + cursor_steps) % modulus if modulus else 0
    return new, decision
