"""Scheduler and auditor: upstream `challenge_scheduler.rs` test vectors, then our own edge cases.

The store-backed vectors run through `Auditor` against a real `LocalCasStore` in `tmp_path`, in both
verify modes: for blobs no larger than one chunk the outcome must be identical to upstream's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from distfs_pipeline.core import scheduler
from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.errors import DistributedValidationFailed, Io
from distfs_pipeline.core.models import (
    I64_MAX,
    U64_MAX,
    AdaptivePolicy,
    CursorState,
    FailureReason,
    ProbeConfig,
    RoundReport,
    SampleSource,
    VerifyOptions,
)
from distfs_pipeline.core.store import LocalCasStore


def blob(size: int) -> bytes:
    """Upstream scheduler test helper: `blob(n)[i] = (i % 251) + 11` as a wrapping u8 add."""
    return bytes(((i % 251) + 11) % 256 for i in range(size))


def report(
    observed: int, passed: int = 0, failed: int = 0, reasons: dict[str, int] | None = None
) -> RoundReport:
    """A finished round as the auditor would hand it to `advance`."""
    return RoundReport(
        node_id="node-a",
        world_id="w1",
        observed_at_unix_ms=observed,
        total_checks=passed + failed,
        passed_checks=passed,
        failed_checks=failed,
        failure_reasons=dict(reasons or {}),
    )


@pytest.fixture(params=["chunked", "full"])
def verify(request: pytest.FixtureRequest, tmp_path: Path) -> VerifyOptions:
    return VerifyOptions(mode=request.param, cache_dir=str(tmp_path / "chunk-cache"))


@pytest.fixture
def store(tmp_path: Path) -> LocalCasStore:
    return LocalCasStore(tmp_path / "store")


@pytest.fixture
def auditor(store: LocalCasStore, verify: VerifyOptions) -> Callable[..., Auditor]:
    """Build an auditor for world "w1" on the test store, like upstream's probe call sites."""

    def build(
        node_id: str, probe: ProbeConfig, policy: AdaptivePolicy | None = None, **kw: object
    ) -> Auditor:
        return Auditor(
            store,
            world_id="w1",
            node_id=node_id,
            probe=probe,
            policy=policy or AdaptivePolicy(),
            verify=verify,
            **kw,  # type: ignore[arg-type]
        )

    return build


def tamper(store: LocalCasStore, content_hash: str, data: bytes = b"tampered") -> None:
    store.blob_path(content_hash).write_bytes(data)


# --- upstream challenge_scheduler.rs vectors -------------------------------------------------------


def test_probe_with_cursor_advances_and_accumulates_state(store, auditor) -> None:
    hashes = sorted(store.put_bytes(blob(n)) for n in (80, 96, 112))
    audit = auditor("node-a", ProbeConfig(16, 2, 200, 10))
    state = CursorState()

    first, state = audit.run_round(state, 1_000)
    assert (first.total_checks, first.passed_checks, first.failed_checks) == (2, 2, 0)
    assert state.rounds_executed == 1
    assert state.next_blob_cursor == 2
    assert (state.cumulative_total_checks, state.cumulative_passed_checks) == (2, 2)
    assert state.cumulative_failed_checks == 0
    assert first.checked_hashes == hashes[:2]

    second, state = audit.run_round(state, 2_000)
    assert (second.total_checks, second.passed_checks, second.failed_checks) == (2, 2, 0)
    assert state.rounds_executed == 2
    assert state.next_blob_cursor == 1
    assert (state.cumulative_total_checks, state.cumulative_passed_checks) == (4, 4)
    assert state.cumulative_failed_checks == 0
    assert second.checked_hashes == [hashes[2], hashes[0]]


def test_probe_with_cursor_records_hash_mismatch_failure(store, auditor) -> None:
    tamper(store, store.put_bytes(blob(64)))
    report_, state = auditor("node-b", ProbeConfig(16, 1, 200, 0)).run_round(CursorState(), 3_000)
    assert (report_.total_checks, report_.passed_checks, report_.failed_checks) == (1, 0, 1)
    assert report_.failure_reasons == {"HASH_MISMATCH": 1}
    assert state.cumulative_failure_reasons == {"HASH_MISMATCH": 1}
    assert report_.latest_proof_semantics is None
    assert [f.reason for f in report_.failures] == [FailureReason.HASH_MISMATCH]


def test_probe_with_cursor_allows_empty_blob_set(auditor) -> None:
    report_, state = auditor("node-c", ProbeConfig()).run_round(CursorState(), 4_000)
    assert (report_.total_checks, report_.passed_checks, report_.failed_checks) == (0, 0, 0)
    assert report_.blob_count == 0
    assert state.rounds_executed == 1
    assert state.next_blob_cursor == 0
    assert state.cumulative_total_checks == 0


def test_probe_with_policy_limits_checks_per_round(store, auditor) -> None:
    for n in (32, 48, 64):
        store.put_bytes(blob(n))
    audit = auditor("node-limit", ProbeConfig(8, 3, 100, 0), AdaptivePolicy(max_checks_per_round=1))
    report_, state = audit.run_round(CursorState(), 5_000)
    assert report_.total_checks == 1
    assert state.cumulative_total_checks == 1
    assert state.next_blob_cursor == 1


def test_probe_with_policy_applies_backoff_after_failure_round(store, auditor) -> None:
    tamper(store, store.put_bytes(blob(64)))
    policy = AdaptivePolicy(max_checks_per_round=1, backoff_base_ms=100, backoff_max_ms=500)
    audit = auditor("node-backoff", ProbeConfig(8, 1, 100, 0), policy)

    first, state = audit.run_round(CursorState(), 1_000)
    assert (first.total_checks, first.failed_checks) == (1, 1)
    assert state.consecutive_failure_rounds == 1
    assert state.backoff_until_unix_ms == 1_100
    assert state.cumulative_backoff_skipped_rounds == 0
    assert state.cumulative_backoff_applied_ms == 100
    assert state.last_backoff_duration_ms == 100
    assert state.last_backoff_reason == "HASH_MISMATCH"
    assert state.last_backoff_multiplier == 1

    second, state = audit.run_round(state, 1_050)
    assert second.total_checks == 0
    assert second.skipped_by_backoff
    assert state.consecutive_failure_rounds == 1
    assert state.backoff_until_unix_ms == 1_100
    assert state.cumulative_backoff_skipped_rounds == 1
    assert state.cumulative_backoff_applied_ms == 100

    third, state = audit.run_round(state, 1_200)
    assert (third.total_checks, third.failed_checks) == (1, 1)
    assert state.consecutive_failure_rounds == 2
    assert state.backoff_until_unix_ms == 1_400
    assert state.cumulative_backoff_skipped_rounds == 1
    assert state.cumulative_backoff_applied_ms == 300
    assert state.last_backoff_duration_ms == 200
    assert state.last_backoff_reason == "HASH_MISMATCH"
    assert state.last_backoff_multiplier == 1
    assert [r.round_index for r in (first, second, third)] == [1, 2, 3]


def test_probe_cursor_state_deserializes_from_legacy_snapshot() -> None:
    legacy = {
        "next_blob_cursor": 2,
        "rounds_executed": 3,
        "cumulative_total_checks": 9,
        "cumulative_passed_checks": 8,
        "cumulative_failed_checks": 1,
        "cumulative_failure_reasons": {"HASH_MISMATCH": 1},
    }
    state = CursorState.from_dict(legacy)
    assert (state.next_blob_cursor, state.rounds_executed, state.cumulative_total_checks) == (2, 3, 9)
    assert state.consecutive_failure_rounds == 0
    assert state.backoff_until_unix_ms == 0
    assert state.last_probe_unix_ms is None
    assert state.cumulative_backoff_skipped_rounds == 0
    assert state.cumulative_backoff_applied_ms == 0
    assert state.last_backoff_duration_ms == 0
    assert state.last_backoff_reason is None
    assert state.last_backoff_multiplier == 0


def test_probe_with_policy_rejects_zero_reason_multiplier(store, auditor) -> None:
    store.put_bytes(blob(32))
    with pytest.raises(DistributedValidationFailed) as err:
        auditor("node-invalid", ProbeConfig(), AdaptivePolicy(backoff_multiplier_unknown=0))
    assert "backoff_multiplier_unknown" in err.value.reason


def test_advance_applies_reason_multiplier_from_dominant_reason() -> None:
    policy = AdaptivePolicy(
        backoff_base_ms=100,
        backoff_max_ms=10_000,
        backoff_multiplier_hash_mismatch=4,
        backoff_multiplier_timeout=2,
    )
    state, _ = scheduler.advance(
        CursorState(), report(1_000, failed=3, reasons={"HASH_MISMATCH": 2, "TIMEOUT": 1}), policy, 0
    )
    assert state.consecutive_failure_rounds == 1
    assert state.backoff_until_unix_ms == 1_400
    assert state.last_backoff_duration_ms == 400
    assert state.last_backoff_reason == "HASH_MISMATCH"
    assert state.last_backoff_multiplier == 4

    state = dataclasses.replace(state, consecutive_failure_rounds=0, backoff_until_unix_ms=0)
    state, _ = scheduler.advance(
        state, report(2_000, failed=3, reasons={"HASH_MISMATCH": 1, "TIMEOUT": 2}), policy, 0
    )
    assert state.backoff_until_unix_ms == 2_200
    assert state.last_backoff_duration_ms == 200
    assert state.last_backoff_reason == "TIMEOUT"
    assert state.last_backoff_multiplier == 2


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (ProbeConfig(max_sample_bytes=0, challenges_per_tick=0), "probe max_sample_bytes must be >= 1"),
        (ProbeConfig(challenges_per_tick=0, challenge_ttl_ms=0), "probe challenges_per_tick must be >= 1"),
        (ProbeConfig(challenge_ttl_ms=0, allowed_clock_skew_ms=-1), "probe challenge_ttl_ms must be > 0"),
        (ProbeConfig(challenge_ttl_ms=-5), "probe challenge_ttl_ms must be > 0"),
        (ProbeConfig(allowed_clock_skew_ms=-1), "probe allowed_clock_skew_ms must be >= 0"),
    ],
)
def test_validate_probe_config_first_failure_wins(config: ProbeConfig, message: str) -> None:
    with pytest.raises(DistributedValidationFailed) as err:
        scheduler.validate_probe_config(config)
    assert err.value.reason == message


def test_validate_probe_config_accepts_boundaries() -> None:
    scheduler.validate_probe_config(ProbeConfig(1, 1, 1, 0))


_P = "adaptive policy "


@pytest.mark.parametrize(
    ("policy", "message"),
    [
        (
            AdaptivePolicy(max_checks_per_round=0, backoff_base_ms=-1),
            _P + "max_checks_per_round must be >= 1",
        ),
        (AdaptivePolicy(backoff_base_ms=-1, backoff_max_ms=-1), _P + "failure_backoff_base_ms must be >= 0"),
        (AdaptivePolicy(backoff_max_ms=-1), _P + "failure_backoff_max_ms must be >= 0"),
        (
            AdaptivePolicy(backoff_base_ms=200, backoff_max_ms=100, backoff_multiplier_hash_mismatch=0),
            _P + "failure_backoff_max_ms must be >= failure_backoff_base_ms",
        ),
        (
            AdaptivePolicy(backoff_multiplier_hash_mismatch=0, backoff_multiplier_unknown=0),
            _P + "backoff_multiplier_hash_mismatch must be >= 1",
        ),
        (
            AdaptivePolicy(backoff_multiplier_missing_sample=0, backoff_multiplier_timeout=0),
            _P + "backoff_multiplier_missing_sample must be >= 1",
        ),
        (
            AdaptivePolicy(backoff_multiplier_timeout=0, backoff_multiplier_read_io_error=0),
            _P + "backoff_multiplier_timeout must be >= 1",
        ),
        (
            AdaptivePolicy(backoff_multiplier_read_io_error=0, backoff_multiplier_signature_invalid=0),
            _P + "backoff_multiplier_read_io_error must be >= 1",
        ),
        (
            AdaptivePolicy(backoff_multiplier_signature_invalid=0, backoff_multiplier_unknown=0),
            _P + "backoff_multiplier_signature_invalid must be >= 1",
        ),
        (AdaptivePolicy(backoff_multiplier_unknown=0), _P + "backoff_multiplier_unknown must be >= 1"),
    ],
)
def test_validate_policy_order_and_messages(policy: AdaptivePolicy, message: str) -> None:
    with pytest.raises(DistributedValidationFailed) as err:
        scheduler.validate_policy(policy)
    assert err.value.reason == message


def test_validate_policy_accepts_defaults_and_equal_base_max() -> None:
    scheduler.validate_policy(AdaptivePolicy())
    scheduler.validate_policy(AdaptivePolicy(backoff_base_ms=100, backoff_max_ms=100))


# --- compute_backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(("rounds", "expected"), [(1, 100), (2, 200), (3, 400), (4, 500), (40, 500)])
def test_compute_backoff_doubles_then_caps(rounds: int, expected: int) -> None:
    assert scheduler.compute_backoff(100, 500, rounds, 1) == expected


@pytest.mark.parametrize(("base", "max_", "rounds"), [(0, 500, 1), (100, 0, 1), (-1, 500, 1), (100, 500, 0)])
def test_compute_backoff_disabled_is_zero(base: int, max_: int, rounds: int) -> None:
    assert scheduler.compute_backoff(base, max_, rounds, 7) == 0


def test_compute_backoff_exponent_caps_at_16_and_multiplier_scales() -> None:
    assert scheduler.compute_backoff(1, I64_MAX, 17, 1) == 2**16
    assert scheduler.compute_backoff(1, I64_MAX, 1_000, 3) == 3 * 2**16
    assert scheduler.compute_backoff(100, 10_000, 2, 4) == 800


def test_compute_backoff_saturates_at_i64_max() -> None:
    assert scheduler.compute_backoff(I64_MAX, I64_MAX, 5, 2**32 - 1) == I64_MAX


# --- dominant_reason ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reasons", "expected"),
    [
        ({}, FailureReason.UNKNOWN),
        ({"TIMEOUT": 0}, FailureReason.UNKNOWN),
        ({"TIMEOUT": 2, "HASH_MISMATCH": 2}, FailureReason.HASH_MISMATCH),
        ({"UNKNOWN": 1, "READ_IO_ERROR": 1, "TIMEOUT": 1}, FailureReason.READ_IO_ERROR),
        ({"SIGNATURE_INVALID": 3, "MISSING_SAMPLE": 1}, FailureReason.SIGNATURE_INVALID),
        # the walk picks the key first; an unrecognised winner maps to UNKNOWN
        ({"BOGUS": 5, "TIMEOUT": 3}, FailureReason.UNKNOWN),
        ({"zzz": 5, "TIMEOUT": 3}, FailureReason.UNKNOWN),
        # an unrecognised key that ties loses only if it sorts after the recognised one
        ({"zzz": 3, "TIMEOUT": 3}, FailureReason.TIMEOUT),
        ({"BOGUS": 3, "TIMEOUT": 3}, FailureReason.UNKNOWN),
        ({"BOGUS": 1, "TIMEOUT": 3}, FailureReason.TIMEOUT),
    ],
)
def test_dominant_reason(reasons: dict[str, int], expected: FailureReason) -> None:
    assert scheduler.dominant_reason(reasons) is expected


def test_unrecognised_dominant_key_uses_unknown_multiplier() -> None:
    policy = AdaptivePolicy(backoff_base_ms=10, backoff_max_ms=10_000, backoff_multiplier_unknown=7)
    state, decision = scheduler.advance(CursorState(), report(50, failed=2, reasons={"BOGUS": 2}), policy, 1)
    assert (state.last_backoff_reason, state.last_backoff_multiplier) == ("UNKNOWN", 7)
    assert decision.backoff_ms == 70


# --- skip_for_backoff -----------------------------------------------------------------------------


def test_skip_for_backoff_is_strict() -> None:
    state = CursorState(backoff_until_unix_ms=1_100)
    assert scheduler.skip_for_backoff(state, 1_100) is None
    assert scheduler.skip_for_backoff(state, 1_200) is None
    assert scheduler.skip_for_backoff(CursorState(), 0) is None


def test_skip_for_backoff_changes_only_three_fields() -> None:
    state = CursorState(
        next_blob_cursor=5,
        rounds_executed=3,
        cumulative_total_checks=9,
        cumulative_failed_checks=9,
        cumulative_failure_reasons={"TIMEOUT": 9},
        consecutive_failure_rounds=2,
        backoff_until_unix_ms=1_100,
        last_probe_unix_ms=1_000,
        cumulative_backoff_skipped_rounds=4,
        cumulative_backoff_applied_ms=700,
        last_backoff_duration_ms=200,
        last_backoff_reason="TIMEOUT",
        last_backoff_multiplier=2,
    )
    before = state.copy()
    skipped = scheduler.skip_for_backoff(state, 1_099)
    assert state == before, "input must not be mutated"
    expected = dataclasses.replace(
        before, rounds_executed=4, last_probe_unix_ms=1_099, cumulative_backoff_skipped_rounds=5
    )
    assert skipped == expected


# --- advance --------------------------------------------------------------------------------------


def test_advance_never_mutates_input() -> None:
    state = CursorState(cumulative_failure_reasons={"TIMEOUT": 1})
    before = state.copy()
    new, _ = scheduler.advance(state, report(10, failed=1, reasons={"TIMEOUT": 1}), AdaptivePolicy(), 3)
    assert state == before
    assert new.cumulative_failure_reasons == {"TIMEOUT": 2}
    assert new.cumulative_failure_reasons is not state.cumulative_failure_reasons


def test_failure_round_fills_last_backoff_even_when_backoff_is_zero() -> None:
    new, decision = scheduler.advance(
        CursorState(), report(700, failed=1, reasons={"MISSING_SAMPLE": 1}), AdaptivePolicy(), 2
    )
    assert new.consecutive_failure_rounds == 1
    assert new.backoff_until_unix_ms == 700
    assert new.last_backoff_duration_ms == 0
    assert new.last_backoff_reason == "MISSING_SAMPLE"
    assert new.last_backoff_multiplier == 1
    assert decision.failure_round
    assert (decision.backoff_ms, decision.backoff_until_unix_ms, decision.multiplier) == (0, 700, 1)


@pytest.mark.parametrize("passed_failed", [(1, 2), (1, 0), (0, 0)])
def test_non_failure_round_clears_streak_keeps_last_backoff(passed_failed: tuple[int, int]) -> None:
    passed, failed = passed_failed
    state = CursorState(
        consecutive_failure_rounds=3,
        backoff_until_unix_ms=900,
        cumulative_backoff_applied_ms=700,
        last_backoff_duration_ms=400,
        last_backoff_reason="TIMEOUT",
        last_backoff_multiplier=2,
    )
    policy = AdaptivePolicy(backoff_base_ms=100, backoff_max_ms=1_000)
    reasons = {"TIMEOUT": failed} if failed else {}
    new, decision = scheduler.advance(state, report(1_000, passed, failed, reasons), policy, 4)
    assert (new.consecutive_failure_rounds, new.backoff_until_unix_ms) == (0, 0)
    assert (new.last_backoff_duration_ms, new.last_backoff_reason, new.last_backoff_multiplier) == (
        400,
        "TIMEOUT",
        2,
    )
    assert new.cumulative_backoff_applied_ms == 700
    assert not decision.failure_round
    assert decision.backoff_ms == 0


@pytest.mark.parametrize(
    ("cursor", "total", "count", "expected"),
    [
        (0, 2, 3, 2),
        (2, 2, 3, 1),
        (7, 2, 3, 0),
        (1, 3, 3, 1),
        (5, 1, 0, 0),
        (2, 7, 5, 4),
        # Upstream's usize `+` wraps at 2^64 (release build): (2^64-1 + 1) -> 0, (2^64-1 + 4) -> 3.
        (U64_MAX, 1, 3, 0),
        (U64_MAX, 4, 5, 3),
        (U64_MAX - 1, 1, 3, 0),
    ],
)
def test_cursor_rule(cursor: int, total: int, count: int, expected: int) -> None:
    new, _ = scheduler.advance(
        CursorState(next_blob_cursor=cursor), report(1, passed=total), AdaptivePolicy(), count
    )
    assert new.next_blob_cursor == expected


def test_advance_saturates_counters_and_times() -> None:
    state = CursorState(
        rounds_executed=U64_MAX,
        cumulative_total_checks=U64_MAX - 1,
        cumulative_failed_checks=U64_MAX,
        cumulative_failure_reasons={"TIMEOUT": U64_MAX},
        consecutive_failure_rounds=U64_MAX,
        cumulative_backoff_applied_ms=I64_MAX - 5,
    )
    policy = AdaptivePolicy(backoff_base_ms=I64_MAX, backoff_max_ms=I64_MAX)
    new, decision = scheduler.advance(
        state, report(I64_MAX - 10, failed=3, reasons={"TIMEOUT": 3}), policy, 1
    )
    assert new.rounds_executed == U64_MAX
    assert new.cumulative_total_checks == U64_MAX
    assert new.cumulative_failed_checks == U64_MAX
    assert new.cumulative_failure_reasons == {"TIMEOUT": U64_MAX}
    assert new.consecutive_failure_rounds == U64_MAX
    assert decision.backoff_ms == I64_MAX
    assert new.backoff_until_unix_ms == I64_MAX
    assert new.cumulative_backoff_applied_ms == I64_MAX
    CursorState.from_dict(new.to_dict())  # still a valid state file


# --- auditor --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("world_id", "node_id", "field"), [("", "n", "world_id"), (" ", "n", "world_id"), ("w", "\t", "node_id")]
)
def test_auditor_rejects_empty_ids(store, world_id: str, node_id: str, field: str) -> None:
    with pytest.raises(DistributedValidationFailed) as err:
        Auditor(store, world_id=world_id, node_id=node_id, probe=ProbeConfig(), policy=AdaptivePolicy())
    assert err.value.reason == f"probe field {field} cannot be empty"


@pytest.mark.parametrize("blank", ["\x1c", "\x1d", "\x1e", "\x1f", " \x1f "])
def test_auditor_ids_are_empty_only_under_rust_trim(store, blank: str) -> None:
    """U+001C..U+001F are not Rust whitespace: upstream accepts such ids, and so do we."""
    store.put_bytes(blob(40))
    auditor = Auditor(store, world_id=blank, node_id=blank, probe=ProbeConfig(), policy=AdaptivePolicy())
    report, state = auditor.run_round(CursorState(), 1_000)
    assert (report.total_checks, report.passed_checks, state.rounds_executed) == (1, 1, 1)
    with pytest.raises(DistributedValidationFailed) as err:
        Auditor(store, world_id="w", node_id="\u3000\x85", probe=ProbeConfig(), policy=AdaptivePolicy())
    assert err.value.reason == "probe field node_id cannot be empty"


def test_auditor_validates_config_then_policy_then_ids(store) -> None:
    bad_policy = AdaptivePolicy(max_checks_per_round=0)
    with pytest.raises(DistributedValidationFailed, match="probe challenges_per_tick"):
        Auditor(store, world_id="", node_id="", probe=ProbeConfig(challenges_per_tick=0), policy=bad_policy)
    with pytest.raises(DistributedValidationFailed, match="max_checks_per_round"):
        Auditor(store, world_id="", node_id="", probe=ProbeConfig(), policy=bad_policy)


def test_auditor_never_mutates_input_state(store, auditor) -> None:
    tamper(store, store.put_bytes(blob(40)))
    store.put_bytes(blob(50))
    state = CursorState(next_blob_cursor=1, cumulative_failure_reasons={"TIMEOUT": 1})
    before = state.copy()
    report_, new = auditor("node-a", ProbeConfig(8, 2, 100, 0)).run_round(state, 10)
    assert state == before
    assert report_.round_index == new.rounds_executed == 1
    assert new.cumulative_failure_reasons == {"TIMEOUT": 1, "HASH_MISMATCH": 1}


def test_auditor_mixed_round_passes_and_keeps_last_semantics(store, auditor) -> None:
    good = store.put_bytes(blob(70))
    bad = store.put_bytes(blob(90))
    tamper(store, bad)
    report_, state = auditor("node-m", ProbeConfig(16, 5, 100, 0)).run_round(CursorState(), 1_000)
    assert (report_.total_checks, report_.passed_checks, report_.failed_checks) == (2, 1, 1)
    assert report_.blob_count == 2
    assert sorted(report_.checked_hashes) == sorted([good, bad])
    assert [f.content_hash for f in report_.failures] == [bad]
    semantics = report_.latest_proof_semantics
    assert semantics is not None and semantics.node_id == "node-m"
    assert semantics.sample_source is SampleSource.LOCAL_STORE_INDEX
    assert good in semantics.sample_reference
    assert state.consecutive_failure_rounds == 0
    assert report_.backoff is not None and not report_.backoff.failure_round


def test_auditor_ids_use_raw_cursor(store, auditor, monkeypatch) -> None:
    from distfs_pipeline.core import auditor as auditor_module

    hashes = sorted(store.put_bytes(blob(n)) for n in (20, 30))
    seen: list[tuple[str, str]] = []
    real = auditor_module.run_check

    def spy(reader, request, responded_at, skew):  # type: ignore[no-untyped-def]
        seen.append((request.challenge_id, request.vrf_seed))
        return real(reader, request, responded_at, skew)

    monkeypatch.setattr(auditor_module, "run_check", spy)
    auditor("node-r", ProbeConfig(8, 1, 100, 0)).run_round(CursorState(next_blob_cursor=7), 900)
    assert seen == [(f"sched-probe:node-r:900:7:0:{hashes[1][:12]}", "w1:node-r:900:7:0")]


@pytest.mark.parametrize(("extra", "passed"), [(0, True), (1, False)])
def test_auditor_late_response_times_out(store, auditor, extra: int, passed: bool) -> None:
    store.put_bytes(blob(33))
    probe = ProbeConfig(8, 1, 100, 20)
    audit = auditor("node-t", probe, response_delay_ms=lambda _h: 120 + extra)
    report_, _ = audit.run_round(CursorState(), 1_000)
    assert report_.passed_checks == int(passed)
    assert report_.failure_reasons == ({} if passed else {"TIMEOUT": 1})


def test_auditor_lost_and_unreadable_blobs(store, auditor) -> None:
    lost, unreadable = sorted(store.put_bytes(blob(n)) for n in (41, 42))
    store.blob_path(lost).unlink()
    path = store.blob_path(unreadable)
    path.unlink()
    path.mkdir()
    report_, _ = auditor("node-x", ProbeConfig(8, 2, 100, 0)).run_round(CursorState(), 1)
    reasons = {f.content_hash: f.reason for f in report_.failures}
    assert reasons == {lost: FailureReason.MISSING_SAMPLE, unreadable: FailureReason.READ_IO_ERROR}
    assert all(f.error for f in report_.failures)


class _BrokenListingStore(LocalCasStore):
    def candidates(self):  # type: ignore[override]
        raise Io("blobs dir unreadable")


def _broken_auditor(tmp_path: Path, policy: AdaptivePolicy) -> Auditor:
    store = _BrokenListingStore(tmp_path / "s")
    verify = VerifyOptions(cache_dir=str(tmp_path / "cache"))
    return Auditor(store, world_id="w1", node_id="n", probe=ProbeConfig(), policy=policy, verify=verify)


def test_listing_error_fails_closed_and_keeps_cursor(tmp_path: Path) -> None:
    policy = AdaptivePolicy(backoff_base_ms=100, backoff_max_ms=1_000, backoff_multiplier_read_io_error=3)
    audit = _broken_auditor(tmp_path, policy)
    report_, state = audit.run_round(CursorState(next_blob_cursor=4), 2_000)
    assert report_.error is not None and "blobs dir unreadable" in report_.error
    assert (report_.total_checks, report_.passed_checks, report_.failed_checks) == (1, 0, 1)
    assert report_.failure_reasons == {"READ_IO_ERROR": 1}
    assert state.next_blob_cursor == 4
    assert state.cumulative_failed_checks == 1
    assert (state.consecutive_failure_rounds, state.backoff_until_unix_ms) == (1, 2_300)
    assert report_.round_index == state.rounds_executed == 1


def test_backoff_skip_does_not_list_candidates(tmp_path: Path) -> None:
    audit = _broken_auditor(tmp_path, AdaptivePolicy())
    state = CursorState(backoff_until_unix_ms=500, rounds_executed=2)
    report_, new = audit.run_round(state, 499)
    assert report_.skipped_by_backoff and report_.error is None
    assert (report_.total_checks, report_.round_index) == (0, 3)
    assert new.cumulative_backoff_skipped_rounds == 1
