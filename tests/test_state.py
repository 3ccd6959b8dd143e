"""The state file on real files: load (legacy, corrupt), atomic save, the lock, crash recovery."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import CURSOR_STATE_REQUIRED, CursorState
from distfs_pipeline.persist.identity import Identity, ensure_identity, identity_path
from distfs_pipeline.persist.journal import decode_line, encode_record, line_prefix
from distfs_pipeline.persist.state import (
    LogOptions,
    RoundJournal,
    StateLock,
    load_identity,
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
    if rounds == 0:
        return CursorState()
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
            "import sys, time; from distfs_pipeline.persist.state import StateLock; "
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


def make_identity(state_path: Path) -> Identity:
    return ensure_identity(state_path, "world-1", "node-1", "/store")[0]


def round_record(n: int) -> dict[str, Any]:
    """The counts that take `sample_state(n - 1)` to `sample_state(n)` (round 1 failed)."""
    return {
        "round_index": n,
        "total_checks": 1,
        "passed_checks": int(n > 1),
        "failed_checks": int(n == 1),
        "failure_reasons": {"TIMEOUT": 1} if n == 1 else {},
        "epoch": {"epoch": 1, "rounds": n},
    }


def journal_run(
    state_path: Path, log: Path, rounds: int, first: int = 1, *, checkpoint: bool = True, **options: Any
) -> list[bytes]:
    """Commit rounds `first..rounds` through a real journal; returns the log lines.

    Without `checkpoint` the run ends as a kill leaves it: log written, state file not updated.
    """
    identity = load_identity(state_path) or make_identity(state_path)
    journal = RoundJournal(state_path, log, identity, LogOptions(**options))
    journal.open(load_state(state_path) if state_path.exists() else sample_state(first - 1))
    for n in range(first, rounds + 1):
        journal.commit(round_record(n), sample_state(n))
    journal.close(sample_state(rounds) if checkpoint else None)
    return log.read_bytes().splitlines(keepends=True)


def records(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_bytes().splitlines()]


def test_commit_writes_self_checking_lines_then_the_state_at_its_checkpoint(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3)
    assert [json.loads(line)["round_index"] for line in lines] == [1, 2, 3]
    identity = load_identity(state_path)
    assert identity is not None and all(line.startswith(line_prefix(identity.state_id)) for line in lines)
    assert all(decode_line(line.rstrip(b"\n")) is not None for line in lines)
    assert json.loads(lines[-1])["state_after"] == sample_state(3).to_dict()
    assert load_state(state_path) == sample_state(3)
    pointer = json.loads(wal_path(state_path).read_text())
    assert pointer["log_path"] == str(log.resolve()) and pointer["ino"] == log.stat().st_ino
    assert pointer["state_id"] == identity.state_id


def test_a_flipped_byte_fails_the_checksum(tmp_path: Path) -> None:
    line = encode_record("id", {"round_index": 1, "total_checks": 1}).rstrip(b"\n")
    assert decode_line(line) == {"state_id": "id", "round_index": 1, "total_checks": 1}
    assert decode_line(line.replace(b'"total_checks":1', b'"total_checks":2')) is None


def test_recover_rolls_forward_every_logged_round_after_the_checkpoint(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 5, checkpoint=False)
    assert not state_path.exists()  # never checkpointed: the log holds the rounds
    save_state(state_path, sample_state(2))  # as if checkpointed at round 2
    recovered = recover(state_path)
    assert recovered.rolled_forward and recovered.state == sample_state(5) and recovered.rolled_rounds == 3
    assert load_state(state_path) == sample_state(5)
    assert recovered.last_record is not None and recovered.last_record["round_index"] == 5


def test_recover_works_across_run_dirs(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    journal_run(state_path, tmp_path / "run1" / "rounds.jsonl", 2)
    assert recover(state_path).state == sample_state(2)
    journal_run(state_path, tmp_path / "run2" / "rounds.jsonl", 3, first=3, checkpoint=False)
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
@given(cut=st.integers(min_value=0, max_value=10_000), saved=st.integers(min_value=0, max_value=3))
def test_a_kill_at_any_byte_of_the_protocol_loses_and_repeats_nothing(
    tmp_path_factory: pytest.TempPathFactory, cut: int, saved: int
) -> None:
    """Files as a kill leaves them: round 3's log line cut at any byte, the state at any checkpoint.

    Recovery must give a state whose rounds_executed equals the number of complete log records,
    with the log holding rounds 1..n once each and no torn tail.
    """
    tmp = tmp_path_factory.mktemp("kill")
    state_path, log = tmp / "state.json", tmp / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3)
    written = cut % (len(lines[2]) + 1)
    with open(log, "r+b") as handle:  # cut in place: the inode is the one the WAL names
        handle.truncate(len(lines[0]) + len(lines[1]) + written)
    complete = written == len(lines[2])
    save_state(state_path, sample_state(min(saved, 3 if complete else 2)))  # never ahead of the log
    (tmp / ".state.json.tmp-1-abc").write_bytes(state_json(sample_state(3))[:17])  # a torn temp file
    recovered = recover(state_path)
    assert [r["round_index"] for r in records(log)] == list(range(1, recovered.state.rounds_executed + 1))
    assert recovered.state == sample_state(3 if complete else 2)
    assert log.read_bytes().endswith(b"\n")


def test_a_garbage_complete_last_line_is_dropped_but_worse_is_refused(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 2)
    with open(log, "ab") as handle:
        handle.write(b"\x00\x00\x00\n")  # what a power loss can leave
    assert recover(state_path).state == sample_state(2)
    assert len(log.read_bytes().splitlines()) == 2
    with open(log, "ab") as handle:
        handle.write(b"junk\nmore junk\n")
    before = log.read_bytes()
    with pytest.raises(UsageError, match="round log"):
        recover(state_path)
    assert log.read_bytes() == before  # nothing cut


# --- hostile neighbourhoods: one UsageError, nothing cut or overwritten --------------------------


def test_a_wal_pointing_at_a_file_that_is_not_a_round_log_is_refused_and_the_file_kept(
    tmp_path: Path,
) -> None:
    state_path = tmp_path / "state.json"
    journal_run(state_path, tmp_path / "run" / "rounds.jsonl", 1)
    victim = tmp_path / "notes.txt"
    victim.write_text("my notes\nnot json at all\n")
    pointer = json.loads(wal_path(state_path).read_text())
    wal_path(state_path).write_text(json.dumps(pointer | {"log_path": str(victim)}))
    with pytest.raises(UsageError, match="is not a round log"):
        recover(state_path)
    assert victim.read_text() == "my notes\nnot json at all\n"


def test_a_wal_pointing_at_a_directory_is_refused(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    journal_run(state_path, tmp_path / "run" / "rounds.jsonl", 1)
    (tmp_path / "other" / "rounds.jsonl").mkdir(parents=True)
    pointer = json.loads(wal_path(state_path).read_text())
    wal_path(state_path).write_text(
        json.dumps(pointer | {"log_path": str(tmp_path / "other" / "rounds.jsonl")})
    )
    with pytest.raises(UsageError, match="is not a round log"):
        recover(state_path)


def test_an_unreadable_round_log_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="log"):
        repair_tail(tmp_path, "id")  # a directory: cannot be opened for repair


def test_a_planted_temp_name_is_never_followed(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    save_state(state_path, sample_state(1))
    victim = tmp_path / "victim"
    victim.write_text("precious")
    temp_path(state_path).symlink_to(victim)  # upstream's fixed temp name, planted
    save_state(state_path, sample_state(2))
    assert load_state(state_path) == sample_state(2) and victim.read_text() == "precious"


def test_a_state_path_that_is_a_directory_is_refused_without_a_lock_file(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    with pytest.raises(UsageError, match="is a directory"):
        StateLock(tmp_path / "state").acquire()
    assert not (tmp_path / "state.lock").exists()


def test_a_file_where_the_state_dir_should_be_is_named(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(UsageError, match=r"afile: exists but is not a directory"):
        StateLock(tmp_path / "afile" / "sub" / "state.json").acquire()


# --- issue 8: files we write are never a way to damage other files -------------------------------


@pytest.mark.parametrize("plant", ["symlink", "hardlink", "fifo"])
def test_a_planted_lock_file_is_refused_and_its_target_untouched(tmp_path: Path, plant: str) -> None:
    state_path = tmp_path / "state.json"
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    lock = lock_path(state_path)
    if plant == "symlink":
        lock.symlink_to(victim)
    elif plant == "hardlink":
        os.link(victim, lock)
    else:
        os.mkfifo(lock)
    with pytest.raises(UsageError, match=r"cannot create its lock .*refusing to use it"):
        StateLock(state_path).acquire()  # a FIFO would block the old code's open; here it is refused
    assert victim.read_text() == "precious\n"


def test_two_names_of_one_state_take_the_same_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    monkeypatch.chdir(real)
    with StateLock(real / "state.json"):
        for other in (tmp_path / "alias" / "state.json", Path("state.json")):
            with pytest.raises(UsageError, match="in use by another run"):
                StateLock(other).acquire()
        # a third spelling, with '..', is refused outright: the kernel applies '..' after following
        # links, so the path need not lead where it reads (safefile.check_trusted_path)
        with pytest.raises(UsageError, match=r"climbs with '\.\.'"):
            StateLock(real / "x" / ".." / "state.json").acquire()


@pytest.mark.parametrize("plant", ["symlink", "hardlink"])
def test_a_state_file_with_a_second_name_is_refused_never_replaced(tmp_path: Path, plant: str) -> None:
    target = tmp_path / "elsewhere.json"
    save_state(target, sample_state(2))
    state_path = tmp_path / "state.json"
    if plant == "symlink":
        state_path.symlink_to(target)
    else:
        os.link(target, state_path)
    with pytest.raises(UsageError, match=r"symbolic link|hard links"):
        StateLock(state_path).acquire()
    assert (state_path.is_symlink() or plant == "hardlink") and load_state(target) == sample_state(2)


def test_a_wal_naming_another_states_log_is_refused_and_that_log_untouched(tmp_path: Path) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    journal_run(a, tmp_path / "ra" / "rounds.jsonl", 2, checkpoint=False)
    journal_run(b, tmp_path / "rb" / "rounds.jsonl", 1)
    with open(tmp_path / "ra" / "rounds.jsonl", "ab") as handle:
        handle.write(b'{"state_id":')  # a torn tail the old code would have cut
    before = (tmp_path / "ra" / "rounds.jsonl").read_bytes()
    wal_path(b).write_bytes(wal_path(a).read_bytes())
    with pytest.raises(UsageError, match="belongs to state id"):
        recover(b)
    assert (tmp_path / "ra" / "rounds.jsonl").read_bytes() == before and load_state(b) == sample_state(1)


def test_a_log_replaced_under_the_wal_is_not_cut(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal_run(state_path, log, 2)
    log.rename(tmp_path / "kept")  # (kept open by name, so its inode cannot be reused)
    log.write_bytes(b"someone else's file\nwithout a newline at the end")
    recovered = recover(state_path)
    assert "not the file the WAL named" in recovered.notes[0] and recovered.state == sample_state(2)
    assert log.read_bytes().endswith(b"at the end")


def test_a_tampered_record_with_a_valid_checksum_is_not_rolled_forward(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3)
    save_state(state_path, sample_state(2))
    identity = load_identity(state_path)
    assert identity is not None
    forged = json.loads(lines[2])
    del forged["crc32"], forged["state_id"]
    forged["state_after"]["cumulative_passed_checks"] += 100  # not the state plus its counts
    with open(log, "r+b") as handle:
        handle.truncate(len(lines[0]) + len(lines[1]))
        handle.seek(0, os.SEEK_END)
        handle.write(encode_record(identity.state_id, forged))
    with pytest.raises(UsageError, match="not the state plus its counts"):
        recover(state_path)
    assert load_state(state_path) == sample_state(2)


def test_a_damaged_line_before_the_last_is_refused_not_cut(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3, checkpoint=False)
    save_state(state_path, sample_state(1))
    damaged = lines[1].replace(b'"total_checks":1', b'"total_checks":7')
    with open(log, "r+b") as handle:
        handle.seek(len(lines[0]))
        handle.write(damaged)
    before = log.read_bytes()
    with pytest.raises(UsageError, match="fails its checksum"):
        recover(state_path)
    assert log.read_bytes() == before


def test_the_tail_scan_reads_only_back_to_the_checkpoint(tmp_path: Path) -> None:
    """However long the log, a start reads the bytes after the state's round, not the whole file."""
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    identity = make_identity(state_path)
    with open(log.parent.mkdir(parents=True) or log, "wb") as handle:  # 200k rounds of filler before
        for n in range(1, 3):
            handle.write(encode_record(identity.state_id, {**round_record(n), "pad": "x" * 600_000}))
    journal = RoundJournal(state_path, log, identity)
    journal.open(sample_state(2))
    journal.commit(round_record(3), sample_state(3))
    journal.close(sample_state(3))
    fd = os.open(log, os.O_RDONLY)
    try:
        from distfs_pipeline.persist import journal as journal_mod

        tail = journal_mod.scan_tail(fd, str(log), identity.state_id, 3, cap=1 << 20)  # well under 1.2 MB
        assert [r["round_index"] for r in tail.records] == [3]
        with pytest.raises(UsageError, match="more than"):
            journal_mod.scan_tail(fd, str(log), identity.state_id, 0, cap=1 << 20)
    finally:
        os.close(fd)


# --- issue 8: every bad file is one line ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"next_blob_cursor": 1' + b"0" * 5000 + b"}", "digits"),  # a huge integer
        (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
        (b'{"rounds_executed": 1, "rounds_executed": 2}', "duplicate field"),
        (b'{"next_blob_cursor": 0, "x": "\xc3\x28"}', "invalid UTF-8"),
    ],
)
def test_every_json_error_of_our_files_is_one_usage_error(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    state_path = tmp_path / "state.json"
    for path, loader in (
        (state_path, lambda: load_state(state_path)),
        (wal_path(state_path), lambda: recover(state_path)),
        (identity_path(state_path), lambda: load_identity(state_path)),
    ):
        path.write_bytes(content)
        with pytest.raises(UsageError) as err:
            loader()
        assert str(path) in str(err.value) and problem in str(err.value) and "\n" not in str(err.value)
        path.unlink()


def test_a_state_that_could_not_be_loaded_back_is_never_written(tmp_path: Path) -> None:
    state_path = tmp_path / "state.json"
    with pytest.raises(UsageError, match="could not be loaded back"):
        save_state(state_path, CursorState(rounds_executed=2**64))
    assert not state_path.exists()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"x")), max_size=30),
    block=st.integers(min_value=1, max_value=64),
)
def test_the_backward_scan_yields_every_line_once_across_block_boundaries(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes], block: int
) -> None:
    from distfs_pipeline.persist import journal as journal_mod

    path = tmp_path_factory.mktemp("scan") / "log"
    data = b"".join(line + b"\n" for line in lines)
    path.write_bytes(data)
    ends = [sum(len(x) + 1 for x in lines[: i + 1]) for i in range(len(lines))]
    old, journal_mod.SCAN_BLOCK = journal_mod.SCAN_BLOCK, block
    fd = os.open(path, os.O_RDONLY)
    try:
        got = list(journal_mod._complete_lines_backward(fd, len(data), 1 << 30, str(path)))
    finally:
        os.close(fd)
        journal_mod.SCAN_BLOCK = old
    assert got == list(zip(lines, ends, strict=True))[::-1]
