"""`status` on files written by real runs: health, failing blobs, backoff, coverage, epochs, bad files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops import status
from distfs_pipeline.persist.state import book_path, wal_path
from distfs_pipeline.pipeline.runner import run_audit
from distfs_pipeline.pipeline.validation import Settings

ROOT = Path(__file__).resolve().parent.parent
START = 1_767_225_600_000


def make_store(root: Path, blobs: int = 6) -> list[str]:
    store = LocalCasStore(root)
    return sorted(store.put_bytes(f"status blob {i} ".encode() * (i * 40 + 1)) for i in range(blobs))


def audit(root: Path, run_dir: Path, state: Path, **extra: Any) -> dict[str, Any]:
    runtime = {"storage_root": str(root), "state_path": str(state), "rounds": 4, "progress": "never"}
    runtime |= extra.pop("runtime", {})
    data = {"runtime": runtime, "probe": extra.pop("probe", {"challenges_per_tick": 2}), **extra}
    return run_audit(Settings.model_validate(data), run_dir)


def report_of(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()  # what the audit printed
    code = status.main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_a_healthy_node_is_exit_0_with_full_coverage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, state = tmp_path / "store", tmp_path / "var" / "state.json"
    make_store(root)
    audit(root, tmp_path / "run", state, runtime={"epoch_rounds": 2})
    code, report = report_of(capsys, "--state", str(state))
    assert code == 0 and report["health"] == "HEALTHY" and report["problems"] == []
    assert report["identity"]["node_id"] == "node-storage-1"
    assert report["store"] == {"root": str(root.absolute()), "indexed": True}
    cov = report["coverage"]
    assert (cov["blobs"], cov["never_checked"], cov["ratio"]) == (6, 0, 1.0)
    assert cov["every_blob_checked_since_unix_ms"] == START + 200  # round 4 rechecked round 1's two
    assert cov["pass_position"] == 2 and cov["checks_per_s"] == pytest.approx(10.0)  # 2 checks / 200 ms
    assert cov["next_full_pass_eta_s"] == pytest.approx(0.4)
    epoch = report["last_epoch"]
    assert (epoch["epoch"], epoch["storage_total_checks"], epoch["eligible"]) == (2, 4, True)
    assert report["timeline"] == "virtual" and report["evaluated_at_unix_ms"] == START + 3 * 200
    capsys.readouterr()
    assert status.main(["--state", str(state)]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].strip() == "health: HEALTHY"
    assert "no blob failed its last check" in text and "100.00% of 6 blobs" in text


def test_failing_blobs_with_reason_times_and_counts_make_it_degraded(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, state = tmp_path / "store", tmp_path / "state.json"
    hashes = make_store(root)
    os.unlink(LocalCasStore(root).blob_path(hashes[0]))  # indexed: MISSING_SAMPLE at each check
    audit(root, tmp_path / "run1", state, probe={"challenges_per_tick": 6})
    audit(root, tmp_path / "run2", state, probe={"challenges_per_tick": 6})  # a resumed run: history kept
    code, report = report_of(capsys, "--state", str(state))
    assert code == 1 and report["health"] == "DEGRADED"
    assert report["problems"][0] == "1 blob(s) failed their last check"
    [failing] = report["failing"]
    assert failing["content_hash"] == hashes[0] and failing["reason"] == "MISSING_SAMPLE"
    assert (failing["first_failure_unix_ms"], failing["last_failure_unix_ms"]) == (START, START + 7 * 200)
    assert (failing["consecutive_failures"], failing["failures"], failing["held"]) == (8, 8, True)
    capsys.readouterr()
    assert status.main(["--state", str(state)]) == 1
    text = capsys.readouterr().out
    assert "failing blobs (1):" in text and f"{hashes[0]}  MISSING_SAMPLE" in text


def test_a_plain_store_shows_a_lost_blob_that_left_the_listing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, state = tmp_path / "store", tmp_path / "state.json"
    (root / "blobs").mkdir(parents=True)
    data = [f"plain {i}".encode() for i in range(3)]
    from distfs_pipeline.core.store import blake3_hex

    for blob in data:
        (root / "blobs" / f"{blake3_hex(blob)}.blob").write_bytes(blob)
    victim = sorted(root.joinpath("blobs").iterdir())[0]
    victim.write_bytes(b"rotten")  # fails as HASH_MISMATCH, then is deleted by someone
    audit(root, tmp_path / "run", state, probe={"challenges_per_tick": 3}, runtime={"rounds": 1})
    victim.unlink()
    code, report = report_of(capsys, "--state", str(state))
    assert code == 0  # nothing held fails now ...
    assert [(f["reason"], f["held"]) for f in report["failing"]] == [
        ("HASH_MISMATCH", False)
    ]  # ... but it shows
    assert report["store"]["indexed"] is False and report["coverage"]["blobs"] == 2
    capsys.readouterr()
    status.main(["--state", str(state)])
    text = capsys.readouterr().out
    assert "no longer in the store's listing" in text and "see `index adopt`" in text


def test_backoff_in_force_says_until_when_and_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root, state = tmp_path / "store", tmp_path / "state.json"
    hashes = make_store(root)
    blob = LocalCasStore(root).blob_path(hashes[0])
    blob.unlink()
    blob.mkdir()  # reads fail: READ_IO_ERROR
    policy = {"backoff_base_ms": 1000, "backoff_max_ms": 60000, "backoff_multiplier_read_io_error": 2}
    audit(
        root, tmp_path / "run", state, policy=policy, runtime={"rounds": 1}, probe={"challenges_per_tick": 1}
    )
    code, report = report_of(capsys, "--state", str(state))
    off = report["backoff"]
    assert code == 1 and off["active"] and off["until_unix_ms"] == START + 2000
    assert (off["reason"], off["multiplier"], off["remaining_ms"]) == ("READ_IO_ERROR", 2, 2000)
    assert "backoff in force (READ_IO_ERROR)" in report["problems"]
    capsys.readouterr()
    status.main(["--state", str(state), "--at", str(START + 1000)])
    text = capsys.readouterr().out
    assert "IN FORCE until 2026-01-01 00:00:02.000Z (in 1.0 s): READ_IO_ERROR x2" in text
    code, later = report_of(capsys, "--state", str(state), "--at", str(START + 5000))
    assert not later["backoff"]["active"] and "backoff in force" not in " ".join(later["problems"])


def test_a_wall_run_is_reported_on_real_time_and_counts_a_rewritten_blob_as_unchecked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, state = tmp_path / "store", tmp_path / "state.json"
    hashes = make_store(root, blobs=3)
    runtime = {"clock": "wall", "tick_ms": 10, "rounds": 3}
    audit(root, tmp_path / "run", state, runtime=runtime, probe={"challenges_per_tick": 3})
    code, report = report_of(capsys, "--state", str(state))
    assert code == 0 and report["timeline"] == "wall"
    assert abs(report["evaluated_at_unix_ms"] - time.time() * 1000) < 60_000
    assert report["coverage"]["ratio"] == 1.0
    blob = LocalCasStore(root).blob_path(hashes[1])
    later = time.time() + 5
    os.utime(blob, (later, later))  # restored from a backup after its last check
    _, report = report_of(capsys, "--state", str(state))
    cov = report["coverage"]
    assert (cov["checked_since_change"], cov["changed_since_check"], cov["never_checked"]) == (2, 1, 0)


def test_blobs_never_checked_and_an_unreadable_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root, state = tmp_path / "store", tmp_path / "state.json"
    make_store(root, blobs=10)
    audit(root, tmp_path / "run", state, runtime={"rounds": 2}, probe={"challenges_per_tick": 2})
    _, report = report_of(capsys, "--state", str(state))
    cov = report["coverage"]
    assert (cov["blobs"], cov["never_checked"], cov["every_blob_checked_since_unix_ms"]) == (10, 6, None)
    assert cov["ratio"] == pytest.approx(0.4)
    code, report = report_of(capsys, "--state", str(state), "--store", str(tmp_path / "nowhere"))
    assert code == 1 and report["coverage"] == {"blobs": None}
    assert report["problems"][-1].startswith("the store cannot be read")


def run_status(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distfs_pipeline.ops.status", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )


@pytest.fixture
def audited(tmp_path: Path) -> Path:
    root, state = tmp_path / "store", tmp_path / "state.json"
    make_store(root)
    audit(root, tmp_path / "run", state)
    return state


def _fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def _link_elsewhere(path: Path) -> None:
    target = path.with_name("elsewhere.json")
    target.write_bytes(path.read_bytes())
    path.unlink()
    path.symlink_to(target)


@pytest.mark.parametrize(
    ("spoil", "names"),
    [
        (lambda s: s.unlink(), "does not exist"),
        (lambda s: s.write_text("{not json"), "state file"),
        (lambda s: s.write_text('{"next_blob_cursor": 1, "next_blob_cursor": 2}'), "state file"),
        (_fifo, "FIFO"),
        (_link_elsewhere, "symbolic link"),
        (lambda s: _fifo(wal_path(s)), "WAL file"),
        (lambda s: book_path(s).write_text('{"version": 1, "round_index": 0, "blobs": []}'), "blob history"),
        (lambda s: _fifo(book_path(s)), "blob history"),
    ],
    ids=["missing", "corrupt", "duplicate-key", "fifo", "symlink", "wal-fifo", "bad-book", "book-fifo"],
)
def test_a_missing_corrupt_or_hostile_file_is_exit_2_in_one_line(
    audited: Path, spoil: Any, names: str
) -> None:
    spoil(audited)
    done = run_status("--state", str(audited))
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("distfs-pipeline status: error: ") and names in done.stderr


def test_usage_mistakes_are_one_line() -> None:
    done = run_status()
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1 and "--state" in done.stderr


def test_the_json_is_stable_for_scripts(audited: Path) -> None:
    done = run_status("--state", str(audited), "--json")
    report = json.loads(done.stdout)
    assert done.returncode == 0
    assert set(report) >= {"health", "problems", "backoff", "coverage", "failing", "last_epoch", "checks"}


def test_records_of_another_state_in_the_log_are_not_mixed_in() -> None:
    mine = {"state_id": "a", "round_index": 1}
    theirs = {"state_id": "b", "round_index": 9}
    legacy = {"round_index": 2}
    assert status._own([mine, theirs, legacy], {"state_id": "a"}) == [mine, legacy]
    assert status._own([mine, theirs], {}) == [mine, theirs]
