"""Fault injection on real files, and the study metrics, on small real stores (no Hydra here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.chunks import ChunkedReader
from distfs_pipeline.core.errors import BlobHashMismatch, UsageError
from distfs_pipeline.core.models import (
    AdaptivePolicy,
    CheckFailure,
    CursorState,
    FailureReason,
    ProbeConfig,
    RoundReport,
    VerifyOptions,
)
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.pipeline.validation import Settings, settings_from_cfg
from distfs_pipeline.studies import study
from distfs_pipeline.studies.scenarios import (
    FaultEvent,
    FaultInjector,
    FaultKind,
    FaultSpec,
    TargetOrder,
    healthy_copy,
    resolve_targets,
)

START, TICK = 1_767_225_600_000, 200
TTL, SKEW = 30_000, 5_000


def make_store(
    root: Path, sizes: tuple[int, ...] = (300, 5_000, 9_000, 20_000), blob_format: str = "o7cblob1"
) -> LocalCasStore:
    store = LocalCasStore(root, blob_format=blob_format)
    for i, size in enumerate(sizes):
        store.put_bytes(os.urandom(8) + bytes([i]) * size)
    return store


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime of every file under `root` (what "untouched" means)."""
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def audit_all(store: LocalCasStore, injector: FaultInjector, cache: Path) -> Auditor:
    """An auditor that checks every blob each round, answering through the injector's delay hook."""
    return Auditor(
        store,
        world_id="world-1",
        node_id="node-1",
        probe=ProbeConfig(challenges_per_tick=64, challenge_ttl_ms=TTL, allowed_clock_skew_ms=SKEW),
        policy=AdaptivePolicy(),
        verify=VerifyOptions(mode="chunked", chunk_size_bytes=4096, cache_dir=str(cache)),
        response_delay_ms=injector.response_delay_ms,
    )


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        (FaultKind.bit_rot, FailureReason.HASH_MISMATCH),
        (FaultKind.delete, FailureReason.MISSING_SAMPLE),
        (FaultKind.truncate, FailureReason.HASH_MISMATCH),
        (FaultKind.unreadable, FailureReason.READ_IO_ERROR),
        (FaultKind.slow, FailureReason.TIMEOUT),
    ],
)
def test_each_fault_fails_its_target_with_its_reason_and_repair_restores_it(
    tmp_path: Path, kind: FaultKind, reason: FailureReason
) -> None:
    store = make_store(tmp_path / "store")
    before = snapshot(store.blobs_dir)
    spec = FaultSpec(kind, at_round=2, repair_at_round=3, target_index=1, silent=False)
    injector = FaultInjector(
        store.root, [spec], default_delay_ms=TTL + SKEW + 1, chunk_cache_dir=tmp_path / "c"
    )
    auditor = audit_all(store, injector, tmp_path / "c")
    target = injector.targets[0].hashes[0]
    state = CursorState()
    outcomes = []
    for round_number in (1, 2, 3):
        observed = START + (round_number - 1) * TICK
        injector.before_round(round_number, observed)
        report, state = auditor.run_round(state, observed)
        outcomes.append(report)
    assert outcomes[0].failed_checks == 0
    assert [(f.content_hash, f.reason) for f in outcomes[1].failures] == [(target, reason)]
    assert outcomes[1].passed_checks == 3  # only the target fails
    assert outcomes[2].failed_checks == 0 and outcomes[2].passed_checks == 4
    assert {k: v[0] for k, v in snapshot(store.blobs_dir).items()} == {k: v[0] for k, v in before.items()}
    assert [(e.action, e.round_number) for e in injector.events] == [("inject", 2), ("repair", 3)]


def test_bit_rot_keeps_size_and_mtime_like_real_rot(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    injector = FaultInjector(store.root, [FaultSpec(FaultKind.bit_rot, offset=100)], default_delay_ms=0)
    path = store.blob_path(injector.targets[0].hashes[0])
    original, st = path.read_bytes(), path.stat()
    injector.before_round(1, START)
    damaged, after = path.read_bytes(), path.stat()
    assert (after.st_size, after.st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    assert [i for i, (a, b) in enumerate(zip(original, damaged, strict=True)) if a != b] == [100]
    assert original[100] ^ damaged[100] == 0x01


def test_silent_bit_rot_is_seen_only_by_a_window_over_the_damaged_chunk(tmp_path: Path) -> None:
    """What the chunk cache is trusted for, and what full verification is for, on real files.

    A user-space write always moves ctime, so a non-silent rot makes the next read re-verify the
    whole blob; silent rot (as below the file system) is caught only by the damaged chunk.
    """
    store = make_store(tmp_path / "store", sizes=(64 * 1024,), blob_format="raw")  # chunk offsets are raw
    cache = tmp_path / "cache"
    reader = ChunkedReader(store, 1024, cache)
    content_hash = store.candidates()[0]
    reader.read_window(content_hash, 0, 1024)  # verified once: the cache now holds 65 digests
    spec = FaultSpec(FaultKind.bit_rot, offset=40 * 1024 + 7, silent=True)
    FaultInjector(store.root, [spec], default_delay_ms=0, chunk_cache_dir=cache).before_round(1, START)
    assert reader.read_window(content_hash, 0, 1024)  # chunk 0 is intact: the rot goes unseen
    assert reader.stats.full_verifies == 1
    with pytest.raises(BlobHashMismatch, match="blob hash mismatch"):  # chunk 40, confirmed in full
        reader.read_window(content_hash, 40 * 1024, 16)
    assert reader.stats.confirmations == 1
    with pytest.raises(BlobHashMismatch):  # known bad now: every later check re-verifies in full
        reader.read_window(content_hash, 0, 1024)


def test_rot_that_moves_ctime_is_caught_by_the_next_check_anywhere(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store", sizes=(64 * 1024,))
    reader = ChunkedReader(store, 1024, tmp_path / "cache")
    content_hash = store.candidates()[0]
    reader.read_window(content_hash, 0, 1024)
    spec = FaultSpec(FaultKind.bit_rot, offset=40 * 1024, silent=False)
    FaultInjector(store.root, [spec], default_delay_ms=0, chunk_cache_dir=tmp_path / "cache").before_round(
        1, 0
    )
    with pytest.raises(BlobHashMismatch):
        reader.read_window(content_hash, 0, 1024)


def test_flapping_and_repair_schedule() -> None:
    spec = FaultSpec(FaultKind.slow, at_round=3, repair_at_round=12, flap_every=2)
    assert [r for r in range(1, 15) if spec.active_at(r)] == [3, 4, 7, 8, 11]
    assert [r for r in range(1, 6) if FaultSpec(FaultKind.delete, at_round=4).active_at(r)] == [4, 5]


def test_targets_by_size_out_of_range_and_overlap(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    largest = resolve_targets(store, [FaultSpec(FaultKind.delete, target_order=TargetOrder.largest_first)])
    assert store.index_sizes()[largest[0][0]] == 20_008
    with pytest.raises(UsageError, match=r"faults\[0\]: target_index 3 \+ blobs 2 exceeds the 4"):
        resolve_targets(store, [FaultSpec(FaultKind.delete, target_index=3, blobs=2)])
    with pytest.raises(UsageError, match=r"already the target of scenario.faults\[0\]"):
        resolve_targets(store, [FaultSpec(FaultKind.delete), FaultSpec(FaultKind.truncate)])
    assert resolve_targets(store, [FaultSpec(FaultKind.delete), FaultSpec(FaultKind.slow)])  # slow: no files


def test_healthy_copy_keeps_only_blobs_that_verify(tmp_path: Path) -> None:
    store = make_store(tmp_path / "src")
    bad = store.candidates()[2]
    with open(store.blob_path(bad), "r+b") as handle:
        handle.write(b"X")
    before = snapshot(store.root)
    kept, dropped = healthy_copy(store.root, tmp_path / "copy")
    assert (kept, dropped) == (3, [bad])
    copy = LocalCasStore(tmp_path / "copy")
    assert copy.has_index() and bad not in copy.candidates() and len(copy.candidates()) == 3
    assert snapshot(store.root) == before


# ---------------------------------------------------------------------- metrics on synthetic reports


def report(
    position: int, checked: list[str], failed: tuple[str, ...] = (), skipped: bool = False
) -> RoundReport:
    failures = [CheckFailure(h, FailureReason.HASH_MISMATCH, "bad") for h in failed]
    return RoundReport(
        node_id="n",
        world_id="w",
        observed_at_unix_ms=START + position * TICK,
        total_checks=len(checked),
        passed_checks=len(checked) - len(failures),
        failed_checks=len(failures),
        round_index=position + 1,
        skipped_by_backoff=skipped,
        checked_hashes=list(checked),
        failures=failures,
    )


def event(action: str, round_number: int, fault: int = 0, hashes: tuple[str, ...] = ("a",)) -> FaultEvent:
    return FaultEvent(
        fault, FaultKind.bit_rot, action, round_number, START + (round_number - 1) * TICK, hashes
    )


def test_metrics_detection_recovery_known_bad_and_skips() -> None:
    reports = [
        report(0, ["b"]),
        report(1, ["c"]),  # fault on "a" from here (round 2)
        report(2, ["a"], failed=("a",)),  # detected: 1 round, 200 ms
        report(3, [], skipped=True),
        report(4, ["a"], failed=("a",)),  # known bad, still faulty
        report(5, ["a"]),  # repaired at round 6: passes at once
        report(6, ["a"]),
    ]
    metrics = study.compute_metrics(reports, [event("inject", 2), event("repair", 6)], TICK)
    assert metrics.detection_latency_rounds == 1 and metrics.detection_latency_ms == 200
    assert metrics.recovery_latency_rounds == 0 and metrics.recovery_latency_ms == 0
    assert (metrics.checks_known_bad, metrics.checks_on_faulty_data) == (2, 2)
    assert (metrics.checks_spent, metrics.rounds_skipped_by_backoff, metrics.rounds) == (6, 1, 7)
    assert (metrics.undetected_episodes, metrics.unrecovered_repairs) == (0, 0)


def test_metrics_censor_what_never_happens() -> None:
    """An undetected fault counts its whole duration; an unseen recovery counts to the next onset."""
    reports = [report(p, ["z"]) for p in range(10)]
    events = [event("inject", 2), event("repair", 4), event("inject", 7)]
    metrics = study.compute_metrics(reports, events, TICK)
    first, second = metrics.episodes
    assert (first.detected_at, first.detection_rounds, first.detection_ms) == (None, 2, 400)
    assert (first.recovered_at, first.recovery_rounds) == (None, 3)  # round 4 .. next onset at 7
    assert (second.detection_rounds, second.detection_ms) == (4, 800)  # to the end of the run
    assert metrics.undetected_episodes == 2 and metrics.unrecovered_repairs == 1
    assert metrics.detection_latency_max_ms == 800


def test_objective_combines_the_weights() -> None:
    metrics = study.StudyMetrics(checks_spent=100, detection_latency_ms=2000.0, recovery_latency_ms=500.0)
    assert study.objective(metrics, weight_checks=10.0, weight_recovery=2.0) == 2000 + 1000 + 1000
    assert study.objective(study.StudyMetrics(checks_spent=7), 1.0, 1.0) == 7


# ---------------------------------------------------------------------- whole jobs (runner included)


def settings(
    source: Path | None, faults: list[dict[str, Any]], rounds: int = 24, **scenario: Any
) -> Settings:
    return Settings.model_validate(
        {
            "runtime": {
                "rounds": rounds,
                "progress": "never",
                "storage_root": str(source) if source else None,
            },
            "scenario": {"name": "test", "faults": faults, "objective_weight_checks": 10.0, **scenario},
        }
    )


def test_study_job_measures_a_lost_blob_and_never_touches_the_source(tmp_path: Path) -> None:
    store = make_store(tmp_path / "src")
    before = snapshot(store.root)
    faults = [{"kind": "delete", "at_round": 5, "repair_at_round": 10, "target_index": 2}]
    value = study.run_scenario_job(settings(store.root, faults), None, tmp_path / "job")
    record = json.loads((tmp_path / "job" / "result.json").read_text())
    metrics = record["metrics"]
    # one check per round over 4 blobs: blob 2 is checked in rounds 3, 7, 11, ...
    assert (metrics["detection_latency_rounds"], metrics["detection_latency_ms"]) == (2, 400)
    assert (metrics["recovery_latency_rounds"], metrics["recovery_latency_ms"]) == (1, 200)
    assert (metrics["checks_spent"], metrics["failed_checks"]) == (24, 1)
    assert record["status"] == "completed" and value == record["objective"] == 400 + 24 * 10.0
    assert snapshot(store.root) == before
    assert (tmp_path / "job" / "scenario-store" / "blobs").is_dir()


def test_in_place_is_no_longer_an_option_and_the_store_is_untouched(tmp_path: Path) -> None:
    """Issue 8: a study killed mid-fault must not leave a user's store damaged, so faults always hit
    a scratch copy; asking for the old in-place mode is one line, exit 2, before anything runs."""
    store = make_store(tmp_path / "src")
    before = snapshot(store.root)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "distfs_pipeline",
            "scenario=lost_blob",
            "scenario.in_place=true",
            f"runtime.storage_root={store.root}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "scenario.in_place" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr
    assert snapshot(store.root) == before and not (tmp_path / "run").exists()


def test_failed_job_still_writes_its_result(tmp_path: Path) -> None:
    store = make_store(tmp_path / "src")
    with pytest.raises(UsageError, match="exceeds the 4 audit candidates"):
        study.run_scenario_job(
            settings(store.root, [{"kind": "delete", "target_index": 9}]), None, tmp_path / "j"
        )
    record = json.loads((tmp_path / "j" / "result.json").read_text())
    assert record["status"] == "failed" and "exceeds the 4 audit candidates" in record["error"]
    assert "Traceback" in record["traceback"]


def test_schedule_past_the_run_is_refused(tmp_path: Path) -> None:
    # A rule of the configuration: refused when it is validated (before any job, with -m too).
    with pytest.raises(
        UsageError,
        match=r"^scenario\.faults\[0\]\.at_round: 30 is after the last round \(runtime.rounds=24\)$",
    ):
        settings_from_cfg(
            {
                "runtime": {"rounds": 24},
                "scenario": {"name": "test", "faults": [{"kind": "slow", "at_round": 30}]},
            }
        )
    ok = settings(None, [{"kind": "slow", "at_round": 24}])
    late = ok.model_copy(update={"runtime": ok.runtime.model_copy(update={"rounds": 23})})  # unvalidated
    with pytest.raises(UsageError, match="is after the last round"):
        study.run_study(late, tmp_path / "job")  # the study checks again
    assert not (tmp_path / "job" / "scenario-store").exists()


def test_a_scenario_copy_of_a_store_that_cannot_be_listed_names_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "blobs").write_text("not a directory")
    with pytest.raises(UsageError, match=r"^runtime\.storage_root: cannot copy the store: "):
        study.run_study(settings(broken, [{"kind": "delete"}]), tmp_path / "job")
    with pytest.raises(UsageError, match=r"^runtime\.storage_root: .*missing is not a directory"):
        study.run_study(settings(tmp_path / "missing", [{"kind": "delete"}]), tmp_path / "job2")


def test_a_study_job_uses_group_commit(tmp_path: Path) -> None:
    """Issue 11: a scratch store and a job-dir state need no per-round fsync."""
    store = make_store(tmp_path / "src")
    prepared = study.prepare_store(settings(store.root, []), tmp_path / "job")
    resolved = study.study_settings(settings(store.root, []), tmp_path / "job", prepared)
    assert resolved.runtime.durability == "interval"
    assert Path(resolved.runtime.state_path).parent == tmp_path / "job"
