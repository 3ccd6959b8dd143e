"""Upstream runtime vectors about the cursor-state and config JSON, and the runtime's probe call.

These pin byte-level interoperability with state files written by the Rust runtime: key names,
key order, legacy snapshots, and the `DistfsProbeRuntimeConfig` shape.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.errors import Serde
from distfs_pipeline.core.models import (
    AdaptivePolicy,
    CursorState,
    ProbeConfig,
    VerifyOptions,
    runtime_config_to_upstream_dict,
)
from distfs_pipeline.core.store import LocalCasStore

UPSTREAM_STATE_KEYS = [
    "next_blob_cursor",
    "rounds_executed",
    "cumulative_total_checks",
    "cumulative_passed_checks",
    "cumulative_failed_checks",
    "cumulative_failure_reasons",
    "consecutive_failure_rounds",
    "backoff_until_unix_ms",
    "last_probe_unix_ms",
    "cumulative_backoff_skipped_rounds",
    "cumulative_backoff_applied_ms",
    "last_backoff_duration_ms",
    "last_backoff_reason",
    "last_backoff_multiplier",
]


def full_state() -> CursorState:
    """`reward_runtime_distfs_probe_state_roundtrip`: all 14 fields set."""
    return CursorState(
        next_blob_cursor=3,
        rounds_executed=7,
        cumulative_total_checks=20,
        cumulative_passed_checks=16,
        cumulative_failed_checks=4,
        cumulative_failure_reasons={"HASH_MISMATCH": 4},
        consecutive_failure_rounds=4,
        backoff_until_unix_ms=9_999,
        last_probe_unix_ms=8_888,
        cumulative_backoff_skipped_rounds=5,
        cumulative_backoff_applied_ms=3_600,
        last_backoff_duration_ms=400,
        last_backoff_reason="HASH_MISMATCH",
        last_backoff_multiplier=4,
    )


def test_reward_runtime_distfs_probe_state_roundtrip() -> None:
    state = full_state()
    text = json.dumps(state.to_dict(), indent=2)
    assert CursorState.from_dict(json.loads(text)) == state
    assert list(json.loads(text)) == UPSTREAM_STATE_KEYS


def test_distfs_probe_cursor_state_is_report_serializable() -> None:
    state = CursorState(
        next_blob_cursor=9,
        cumulative_failed_checks=5,
        cumulative_failure_reasons={"HASH_MISMATCH": 5},
        cumulative_backoff_skipped_rounds=6,
        cumulative_backoff_applied_ms=9_000,
        last_backoff_duration_ms=1_600,
        last_backoff_reason="TIMEOUT",
        last_backoff_multiplier=3,
    )
    data = json.loads(json.dumps(state.to_dict()))
    assert data["next_blob_cursor"] == 9
    assert data["cumulative_failed_checks"] == 5
    assert data["cumulative_failure_reasons"] == {"HASH_MISMATCH": 5}
    assert data["cumulative_backoff_skipped_rounds"] == 6
    assert data["cumulative_backoff_applied_ms"] == 9_000
    assert data["last_backoff_duration_ms"] == 1_600
    assert data["last_backoff_reason"] == "TIMEOUT"
    assert data["last_backoff_multiplier"] == 3
    assert data["last_probe_unix_ms"] is None


LEGACY_SIX = {
    "next_blob_cursor": 2,
    "rounds_executed": 3,
    "cumulative_total_checks": 9,
    "cumulative_passed_checks": 8,
    "cumulative_failed_checks": 1,
    "cumulative_failure_reasons": {"HASH_MISMATCH": 1},
}
LEGACY_NINE = {
    **LEGACY_SIX,
    "consecutive_failure_rounds": 1,
    "backoff_until_unix_ms": 4_000,
    "last_probe_unix_ms": 3_990,
}


def _assert_phase9_defaults(state: CursorState) -> None:
    assert state.cumulative_backoff_skipped_rounds == 0
    assert state.cumulative_backoff_applied_ms == 0
    assert state.last_backoff_duration_ms == 0
    assert state.last_backoff_reason is None
    assert state.last_backoff_multiplier == 0


def test_legacy_snapshot_with_six_keys_defaults_the_rest() -> None:
    state = CursorState.from_dict(json.loads(json.dumps(LEGACY_SIX)))
    assert state == CursorState(**LEGACY_SIX)
    assert (state.consecutive_failure_rounds, state.backoff_until_unix_ms) == (0, 0)
    assert state.last_probe_unix_ms is None
    _assert_phase9_defaults(state)


def test_reward_runtime_distfs_probe_state_loads_legacy_snapshot_with_defaults() -> None:
    state = CursorState.from_dict(json.loads(json.dumps(LEGACY_NINE)))
    assert (state.next_blob_cursor, state.rounds_executed) == (2, 3)
    assert state.consecutive_failure_rounds == 1
    assert state.backoff_until_unix_ms == 4_000
    assert state.last_probe_unix_ms == 3_990
    _assert_phase9_defaults(state)


@pytest.mark.parametrize("missing", list(LEGACY_SIX))
def test_snapshot_missing_a_required_key_fails_to_parse(missing: str) -> None:
    data = {k: v for k, v in LEGACY_NINE.items() if k != missing}
    with pytest.raises(Serde, match=missing):
        CursorState.from_dict(data)


def test_unknown_keys_are_ignored() -> None:
    assert CursorState.from_dict({**LEGACY_SIX, "future_field": [1, 2]}) == CursorState(**LEGACY_SIX)


def test_distfs_probe_runtime_config_is_report_serializable() -> None:
    probe = ProbeConfig(
        max_sample_bytes=4096, challenges_per_tick=4, challenge_ttl_ms=60_000, allowed_clock_skew_ms=1234
    )
    policy = AdaptivePolicy(
        max_checks_per_round=8,
        backoff_base_ms=100,
        backoff_max_ms=1_600,
        backoff_multiplier_hash_mismatch=5,
        backoff_multiplier_timeout=3,
    )
    data = json.loads(json.dumps(runtime_config_to_upstream_dict(probe, policy)))
    assert data["max_sample_bytes"] == 4096
    assert data["challenges_per_tick"] == 4
    assert data["challenge_ttl_ms"] == 60_000
    assert data["allowed_clock_skew_ms"] == 1234
    nested = data["adaptive_policy"]
    assert nested["max_checks_per_round"] == 8
    assert nested["failure_backoff_base_ms"] == 100
    assert nested["failure_backoff_max_ms"] == 1_600
    assert nested["backoff_multiplier_hash_mismatch"] == 5
    assert nested["backoff_multiplier_timeout"] == 3
    assert nested["backoff_multiplier_unknown"] == 1
    assert list(data) == [
        "max_sample_bytes",
        "challenges_per_tick",
        "challenge_ttl_ms",
        "allowed_clock_skew_ms",
        "adaptive_policy",
    ]


def _auditor(store: LocalCasStore, tmp_path: Path, node_id: str) -> Auditor:
    verify = VerifyOptions(cache_dir=str(tmp_path / "chunk-cache"))
    return Auditor(
        store,
        world_id="world-1",
        node_id=node_id,
        probe=ProbeConfig(),
        policy=AdaptivePolicy(),
        verify=verify,
    )


def test_collect_distfs_challenge_report_returns_zero_for_empty_store(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path / "store")
    report, state = _auditor(store, tmp_path, "node-a").run_round(CursorState(), 1_000)
    assert (report.total_checks, report.passed_checks, report.failed_checks) == (0, 0, 0)
    assert report.failure_reasons == {}
    assert report.latest_proof_semantics is None
    assert state.rounds_executed == 1
    assert store.list_blob_hashes() == [], "the audited store is read-only to us: no seed blob"


def test_collect_distfs_challenge_report_detects_hash_mismatch(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path / "store")
    content_hash = store.put_bytes(b"storage-proof-data")
    store.blob_path(content_hash).write_bytes(b"tampered")
    report, state = _auditor(store, tmp_path, "node-b").run_round(CursorState(), 2_000)
    assert (report.total_checks, report.passed_checks, report.failed_checks) == (1, 0, 1)
    assert report.failure_reasons == {"HASH_MISMATCH": 1}
    assert (state.cumulative_total_checks, state.cumulative_failed_checks) == (1, 1)
    assert state.cumulative_failure_reasons == {"HASH_MISMATCH": 1}
