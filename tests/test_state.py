"""The state file on real files: load (legacy, corrupt), atomic save, the lock, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distfs_pipeline.errors import UsageError
from distfs_pipeline.models import CURSOR_STATE_REQUIRED, CursorState
from distfs_pipeline.state import (
    RoundJournal,
    StateLock,
    load_state,
    lock_path,
    recover,
    repair_tail,
    save_state,
    state_json,
    temp_path,
    wal_path,
)

ROOT = Path(__file__).resolve().parent.parent


def sample_state(rounds: int = 3) -> CursorState:
    return CursorState(
        next_blob_cursor=rounds % 5,
        rounds_executed=rounds,
        cumulative_total_checks=rounds,
        cumulative_passed_checks=rounds - 1,
        cumulative_failed_checks=1,
        cumulative_failure_reasons={"TIMEOUT": 1},
        last_probe_unix_ms=1000 + rounds,
        last_backoff_reason="TIMEOUT",
        last_backoff_multiplier=1,
    )


# --- load -----------------------------------------------------------------------------------------


def test_missing_file_gives_the_default_state(tmp_path: Path) -> None:
    assert load_state(tmp_path / "absent.json") == CursorState()


def test_legacy_file_with_only_the_required_keys_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "legacy.json"
    legacy = {key: 0 for key in CURSOR_STATE_REQUIRED} | {"cumulative_failure_reasons": {"TIMEOUT": 2}}
    legacy["rounds_executed"] = 7
    path.write_text(json.dumps(legacy))
    state = load_state(path)
    assert state.rounds_executed == 7
    assert state.cumulative_failure_reasons == {"TIMEOUT": 2}
    assert state.last_backoff_multiplier == 0 and state.last_probe_unix_ms is None


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"next_blob_cursor": 0}', "missing field"),
        (json.dumps(CursorState().to_dict() | {"rounds_executed": -1}).encode(), "rounds_executed"),
        (json.dumps(CursorState().to_dict() | {"last_backoff_reason": 5}).encode(), "last_backoff_reason"),
    ],
)
def test_corrupt_state_is_a_usage_error_and_the_file_is_untouched(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "state.json"
    path.write_bytes(content)
    before = os.stat(path)
    with pytest.raises(UsageError) as err:
        load_state(path)
    assert str(path) in str(err.value) and problem in str(err.value)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == content and os.stat(path).st_mtime_ns == before.st_mtime_ns


def test_unreadable_state_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    path.mkdir()  # reads fail for root too
    with pytest.raises(UsageError, match="cannot read"):
        load_state(path)


# --- save -----------------------------------------------------------------------------------------


def test_save_writes_upstream_pretty_json_in_field_order(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "state.json"
    state = sample_state()
    save_state(path, state)
    raw = path.read_text()
    assert raw == json.dumps(state.to_dict(), indent=2)
    assert not raw.endswith("\n")  # serde_json::to_vec_pretty adds none
    assert list(json.loads(raw)) == [f for f in CursorState.__dataclass_fields__]
    assert load_state(path) == state
    assert not temp_path(path).exists()


def test_save_replaces_the_file_whole(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    save_state(path, sample_state(3))
    inode = os.stat(path).st_ino
    save_state(path, sample_state(4))
    assert load_state(path).rounds_executed == 4
    assert os.stat(path).st_ino != inode  # a rename, never an in-place rewrite


# --- the lock -------------------------------------------------------------------------------------


def test_a_second_lock_is_refused_naming_the_state_and_the_holder(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    with StateLock(path):
        with pytest.raises(UsageError) as err:
            StateLock(path).acquire()
        assert str(path) in str(err.value) and f"pid {os.getpid()}" in str(err.value)
    with StateLock(path):  # released: free again
        pass
    assert lock_path(path).exists()


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from distfs_pipeline.state import StateLock; "
            "StateLock(sys.argv[1]).acquire(); print('locked', flush=True); time.sleep(60)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=f"pid {holder.pid}"):
            StateLock(path).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with StateLock(path):
        pass


# --- the write-ahead protocol ---------------------------------------------------------------------


def journal_run(state_path: Path, log: Path, rounds: int) -> list[bytes]:
    """Commit `rounds` rounds through a real journal; returns the log lines."""
    journal = RoundJournal(state_path, log)
    journal.open()
    for n in range(1, rounds + 1):
        journal.commit({"round_index": n, "total_checks": 1}, sample_state(n))
    journal.close()
    return log.read_bytes().splitlines(keepends=True)


def test_commit_writes_the_log_line_then_the_state(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3)
    assert [json.loads(line)["round_index"] for line in lines] == [1, 2, 3]
    assert json.loads(lines[-1])["state_after"] == sample_state(3).to_dict()
    assert load_state(state_path) == sample_state(3)
    assert json.loads(wal_path(state_path).read_text())["log_path"] == str(log.resolve())


def test_recover_rolls_forward_a_logged_but_unsaved_round(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 3)
    save_state(state_path, sample_state(2))  # as if killed between the log append and the save
    recovered = recover(state_path)
    assert recovered.rolled_forward and recovered.state == sample_state(3)
    assert load_state(state_path) == sample_state(3)
    assert recovered.last_record is not None and recovered.last_record["round_index"] == 3


def test_recover_works_across_run_dirs(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    journal_run(state_path, tmp_path / "run1" / "rounds.jsonl", 2)
    journal = RoundJournal(state_path, tmp_path / "run2" / "rounds.jsonl")
    assert recover(state_path).state == sample_state(2)
    journal.open()
    journal.commit({"round_index": 3}, sample_state(3))
    journal.close()
    save_state(state_path, sample_state(2))
    assert recover(state_path).state == sample_state(3)  # found through the WAL, in run2


def test_recover_with_a_gone_log_keeps_the_state_and_says_so(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 2)
    log.unlink()
    recovered = recover(state_path)
    assert recovered.state == sample_state(2) and "gone" in recovered.notes[0]


def test_corrupt_wal_is_a_usage_error(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    wal_path(state_path).write_text("{")
    with pytest.raises(UsageError, match="WAL file"):
        recover(state_path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cut=st.integers(min_value=0, max_value=10_000), saved=st.sampled_from([2, 3]))
def test_a_kill_at_any_byte_of_the_protocol_loses_and_repeats_nothing(
    tmp_path_factory: pytest.TempPathFactory, cut: int, saved: int
) -> None:
    """Files as a kill leaves them: round 3's log line cut at any byte, the state at 2 or 3.

    Recovery must give a state whose rounds_executed equals the number of complete log records,
    with the log holding rounds 1..n once each and no torn tail.
    """
    tmp = tmp_path_factory.mktemp("kill")
    state_path, log = tmp / "state.json", tmp / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3)
    written = cut % (len(lines[2]) + 1)
    log.write_bytes(b"".join(lines[:2]) + lines[2][:written])
    complete = written == len(lines[2])
    save_state(state_path, sample_state(saved if complete else 2))  # never ahead of the log
    if saved == 2:
        temp_path(state_path).write_bytes(state_json(sample_state(3))[:17])  # a torn temp file
    recovered = recover(state_path)
    records = [json.loads(line) for line in log.read_bytes().splitlines()]
    assert [r["round_index"] for r in records] == list(range(1, recovered.state.rounds_executed + 1))
    assert recovered.state == sample_state(recovered.state.rounds_executed)
    assert log.read_bytes().endswith(b"\n")


def test_a_garbage_complete_last_line_is_dropped_but_worse_is_refused(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 2)
    with open(log, "ab") as handle:
        handle.write(b"\x00\x00\x00\n")  # what a power loss can leave
    assert recover(state_path).state == sample_state(2)
    assert len(log.read_bytes().splitlines()) == 2
    log.write_bytes(b"junk\nmore junk\n")
    with pytest.raises(UsageError, match="round log"):
        recover(state_path)


# --- hostile neighbourhoods: one UsageError, nothing cut or overwritten --------------------------


def test_a_wal_pointing_at_a_file_that_is_not_a_round_log_is_refused_and_the_file_kept(
    tmp_path: Path,
) -> None:
    state_path = tmp_path / "state.json"
    save_state(state_path, sample_state())
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\nnot json at all\n")
    wal_path(state_path).write_text(json.dumps({"version": 1, "log_path": str(victim)}))
    with pytest.raises(UsageError, match="is not a round log"):
        recover(state_path)
    assert victim.read_text() == "my notes\nnot json at all\n"


def test_a_wal_pointing_at_a_directory_is_refused(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    (tmp_path / "run" / "rounds.jsonl").mkdir(parents=True)
    wal_path(state_path).write_text(
        json.dumps({"version": 1, "log_path": str(tmp_path / "run" / "rounds.jsonl")})
    )
    with pytest.raises(UsageError, match="is not a round log"):
        recover(state_path)


def test_an_unreadable_round_log_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="round log"):
        repair_tail(tmp_path)  # a directory: cannot be opened for repair


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    save_state(state_path, sample_state(1))
    old = state_path.read_bytes()
    temp_path(state_path).mkdir()
    with pytest.raises(UsageError, match=r"state file .*: cannot write: .*\.tmp: Is a directory"):
        save_state(state_path, sample_state(2))
    assert state_path.read_bytes() == old


def test_a_state_path_that_is_a_directory_is_refused_without_a_lock_file(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        StateLock(tmp_path / "state").acquire()
    assert not (tmp_path / "state.lock").exists()


def test_a_file_where_the_state_dir_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match=r"afile: exists but is not a directory"):
        StateLock(tmp_path / "afile" / "sub" / "state.json").acquire()
