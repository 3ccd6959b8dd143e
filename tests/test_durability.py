"""Durability modes on real files: the asynchronous fdatasync, the pipelined journal's ordering, the
cheap guards of a round's commit (each proven equal to the full check it stands in for)."""

from __future__ import annotations

import errno
import json
import os
import platform
import sys
import zlib
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core import blobs
from distfs_pipeline.core.errors import Serde, UsageError
from distfs_pipeline.core.models import I64_MAX, I64_MIN, U32_MAX, U64_MAX, CursorState
from distfs_pipeline.persist.aiosync import AsyncDatasync
from distfs_pipeline.persist.journal import DURABILITY_MODES, decode_line, encode_record
from distfs_pipeline.persist.state import (
    LogOptions,
    RoundJournal,
    check_loadable_dict,
    load_state,
    loadable_fast,
    recover,
    save_state,
)
from tests.test_state import journal_run, make_identity, round_record, sample_state

KERNEL_AIO = sys.platform.startswith("linux") and platform.machine() in ("x86_64", "aarch64")

# --- the asynchronous fdatasync -------------------------------------------------------------------


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel-aio", "thread"])
def test_an_async_fdatasync_completes_one_at_a_time_and_says_so(tmp_path: Path, kernel: bool) -> None:
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    syncer = AsyncDatasync(prefer_kernel=kernel)
    try:
        if kernel and KERNEL_AIO:
            assert syncer.backend == "kernel-aio"  # the point of the module: no thread, no GIL handoff
        for n in range(5):
            os.write(fd, b"line %d\n" % n)
            syncer.start(fd)
            with pytest.raises(RuntimeError, match="in flight"):
                syncer.start(fd)  # never two: the journal could not say which rounds are durable
            syncer.wait()
        assert syncer.completed == 5 and not syncer.in_flight
        with pytest.raises(RuntimeError, match="no fdatasync in flight"):
            syncer.wait()
    finally:
        syncer.close()
        syncer.close()  # once: a second close does nothing (an idle context is never pooled twice)
        os.close(fd)
    with pytest.raises(RuntimeError, match="after close"):
        syncer.start(fd)
    assert (tmp_path / "log").read_bytes() == b"".join(b"line %d\n" % n for n in range(5))


def test_an_idle_kernel_context_is_kept_for_the_next_journal_not_destroyed() -> None:
    """`io_destroy` waits for an RCU grace period (tens of ms, more than a short run's rounds)."""
    from distfs_pipeline.persist import aiosync

    first = AsyncDatasync()
    if first.backend != "kernel-aio":
        first.close()
        pytest.skip("no Linux AIO here")
    impl = first._impl
    first.close()
    second, third = AsyncDatasync(), AsyncDatasync()
    assert second._impl is impl and third._impl is not impl  # reused once, never shared
    second.close()
    third.close()
    assert aiosync._IDLE.count(impl) == 1


@pytest.mark.parametrize("kernel", [True, False], ids=["kernel-aio", "thread"])
def test_an_async_fdatasync_that_fails_raises_the_errors_of_fdatasync(tmp_path: Path, kernel: bool) -> None:
    """A pipe has no fsync: the kernel refuses the AIO request, the thread fallback takes over and
    reports fdatasync's own EINVAL at `wait`; a closed fd is EBADF at `start` or `wait`."""
    read_end, write_end = os.pipe()
    syncer = AsyncDatasync(prefer_kernel=kernel)
    try:
        with pytest.raises(OSError) as err:
            syncer.start(write_end)
            syncer.wait()
        assert err.value.errno == errno.EINVAL and syncer.backend == "thread" and not syncer.in_flight
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
        os.close(fd)
        with pytest.raises(OSError) as err:
            syncer.start(fd)
            syncer.wait()
        assert err.value.errno == errno.EBADF
    finally:
        syncer.close()
        os.close(read_end)
        os.close(write_end)


# --- the pipelined journal ------------------------------------------------------------------------


def test_pipelined_keeps_at_most_the_last_round_in_flight_and_syncs_before_the_state_file(
    tmp_path: Path,
) -> None:
    """Round n's line is written only after round n-1's fdatasync returned; the state file is written
    only after the log holding its round is synced (`close` then leaves nothing in flight)."""
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal = RoundJournal(state_path, log, make_identity(state_path), LogOptions(durability="pipelined"))
    journal.open(sample_state(0))
    for n in range(1, 6):
        journal.commit(round_record(n), sample_state(n))
        syncer = journal._async
        assert syncer is not None and syncer.in_flight and syncer.completed == n - 1
        assert len(log.read_bytes().splitlines()) == n
    journal.checkpoint(sample_state(5))
    assert syncer.completed == 5 and not syncer.in_flight and load_state(state_path) == sample_state(5)
    journal.commit(round_record(6), sample_state(6))
    journal.close(sample_state(6))
    assert syncer.completed == 6 and not syncer.in_flight and journal._async is None
    assert load_state(state_path) == sample_state(6)
    assert [json.loads(line)["round_index"] for line in log.read_bytes().splitlines()] == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_a_kill_at_any_byte_of_the_last_line_loses_and_repeats_nothing_in_every_mode(
    tmp_path: Path, mode: str
) -> None:
    """The files a kill -9 leaves in each mode: the last line cut at every byte, the state file at its
    last checkpoint; recovery gives rounds 1..n once each, n = the complete lines."""
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    lines = journal_run(state_path, log, 3, durability=mode, durability_interval_ms=1)
    whole = log.read_bytes()
    for written in range(0, len(lines[2]) + 1, 7):
        with open(log, "r+b") as handle:  # cut in place: the inode is the one the WAL names
            handle.truncate(0)
            handle.write(whole[: len(lines[0]) + len(lines[1]) + written])
        complete = written == len(lines[2])
        save_state(state_path, sample_state(3 if complete else 2))
        recovered = recover(state_path)
        assert recovered.state == sample_state(3 if complete else 2)
        indexes = [json.loads(line)["round_index"] for line in log.read_bytes().splitlines()]
        assert indexes == list(range(1, recovered.state.rounds_executed + 1))


# --- the cheap guards -----------------------------------------------------------------------------

_EDGES: dict[str, list[Any]] = {
    "unsigned": [0, 1, U64_MAX, U64_MAX + 1, -1, True, False, None, 1.0, "1"],
    "u32": [0, U32_MAX, U32_MAX + 1, -1, True],
    "signed": [0, I64_MIN, I64_MAX, I64_MIN - 1, I64_MAX + 1, True, None, 1.5],
    "reasons": [{}, {"TIMEOUT": 1}, {"TIMEOUT": U64_MAX + 1}, {"TIMEOUT": -1}, {"TIMEOUT": True}, {1: 1}, []],
    "text": [None, "TIMEOUT", 1, True],
}


def _kind(key: str) -> str:
    if key == "last_backoff_multiplier":
        return "u32"
    if key == "cumulative_failure_reasons":
        return "reasons"
    if key == "last_backoff_reason":
        return "text"
    if key in ("backoff_until_unix_ms", "last_probe_unix_ms", "cumulative_backoff_applied_ms"):
        return "signed"
    return "signed" if key == "last_backoff_duration_ms" else "unsigned"


def _full_accepts(data: dict[str, Any]) -> bool:
    try:
        CursorState.from_dict(data)
    except Serde:
        return False
    return True


@pytest.mark.parametrize("key", list(sample_state(3).to_dict()))
def test_the_fast_state_guard_never_passes_what_from_dict_refuses(key: str) -> None:
    """`loadable_fast` stands in for `CursorState.from_dict` on every round: at and beyond each
    field's bounds, and for every wrong type, it may only say yes where from_dict does."""
    base = sample_state(3).to_dict()
    assert loadable_fast(base)
    for value in _EDGES[_kind(key)]:
        data = {**base, key: value}
        if loadable_fast(data):
            assert _full_accepts(data), (key, value)
        if not _full_accepts(data):
            with pytest.raises(UsageError, match=rf"could not be loaded back: .*{key}"):
                check_loadable_dict(data, "round 3")
        else:
            check_loadable_dict(data, "round 3")
    assert not loadable_fast({k: v for k, v in base.items() if k != key})  # a missing key: ask from_dict


def test_a_round_whose_state_could_not_be_loaded_back_is_never_logged(tmp_path: Path) -> None:
    state_path, log = tmp_path / "state.json", tmp_path / "run" / "rounds.jsonl"
    journal = RoundJournal(state_path, log, make_identity(state_path))
    journal.open(sample_state(0))
    bad = sample_state(1)
    bad.last_backoff_multiplier = U32_MAX + 1
    with pytest.raises(UsageError, match=r"round 1: .*last_backoff_multiplier"):
        journal.commit(round_record(1), bad)
    journal.close()
    assert log.read_bytes() == b""


@pytest.mark.parametrize(
    "body",
    [{}, {"round_index": 1, "x": "é\u2028", "n": [1, None, {"a": True}]}, {"state_id": "other", "k": 1}],
    ids=["empty", "typical", "names-state-id"],
)
def test_a_log_line_is_the_same_bytes_as_the_merged_encoding(body: dict[str, Any]) -> None:
    head = json.dumps({"state_id": "sid", **body}, separators=(",", ":")).encode("utf-8")[:-1]
    line = encode_record("sid", body)
    assert line == head + b',"crc32":"%08x"}\n' % zlib.crc32(head)
    assert decode_line(line.rstrip(b"\n")) == {"state_id": "sid", **body}


# --- the size of a blob the book knows is not read again ------------------------------------------


def test_a_passing_blob_is_sized_once_then_its_size_comes_from_the_book(tmp_path: Path) -> None:
    from distfs_pipeline.core.store import LocalCasStore
    from distfs_pipeline.pipeline.runner import with_sizes

    store = LocalCasStore(tmp_path / "store")
    content_hash = store.put_bytes(b"some content " * 40)
    passed = blobs.BlobRecord(checks=1, last_result=blobs.PASS)
    first = with_sizes(store, {content_hash: passed})[content_hash]
    assert first.size_bytes == len(b"some content " * 40)
    os.unlink(store.blob_file(content_hash))  # a header read now would fail: the book's size is used
    again = with_sizes(store, {content_hash: first})[content_hash]
    assert again.size_bytes == first.size_bytes
    failed = blobs.BlobRecord(checks=1, last_result=blobs.FAIL)
    assert with_sizes(store, {content_hash: failed})[content_hash].size_bytes is None


# --- an epoch's report is never durable before its rounds -----------------------------------------


@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_an_epoch_report_is_written_only_after_the_rounds_it_covers_are_synced(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A power loss must not keep `epochs.jsonl`'s report of an epoch whose last round the round log
    loses (it would run again and close the epoch a second time). Observed on the real journal:
    when each report is appended, nothing of the round log is unsynced or in flight."""
    from distfs_pipeline.pipeline import runner
    from tests.test_runner import make_settings, small_store

    seen: list[tuple[bool, bool]] = []
    journals: list[RoundJournal] = []
    real_open, real_append = RoundJournal.open, runner.EpochLog.append

    def open_spy(self: RoundJournal, *args: Any, **kwargs: Any) -> None:
        journals.append(self)
        real_open(self, *args, **kwargs)

    def append_spy(self: runner.EpochLog, report: dict[str, Any]) -> None:
        journal = journals[-1]
        seen.append((journal._unsynced, journal._async is not None and journal._async.in_flight))
        real_append(self, report)

    monkeypatch.setattr(RoundJournal, "open", open_spy)
    monkeypatch.setattr(runner.EpochLog, "append", append_spy)
    settings = make_settings(
        storage_root=str(small_store(tmp_path / "store")),
        rounds=6,
        epoch_rounds=2,
        durability=mode,
        durability_interval_ms=3_600_000,
    )
    runner.run_audit(settings, tmp_path / "run")
    assert seen == [(False, False)] * 3


@pytest.mark.parametrize("mode", DURABILITY_MODES)
def test_a_book_snapshot_is_written_only_after_the_rounds_it_holds_are_synced(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At a log rotation (and the end) `<state>.blobs` is saved as of a round: never a round that a
    power loss could still take from the log (the book would count checks of a round run again)."""
    from distfs_pipeline.pipeline import runner
    from tests.test_runner import make_settings, small_store

    seen: list[tuple[bool, bool]] = []
    journals: list[RoundJournal] = []
    real_open, real_save = RoundJournal.open, runner.save_book

    def open_spy(self: RoundJournal, *args: Any, **kwargs: Any) -> None:
        journals.append(self)
        real_open(self, *args, **kwargs)

    def save_spy(state_path: Path, book: Any, round_index: int) -> None:
        journal = journals[-1]
        seen.append((journal._unsynced, journal._async is not None and journal._async.in_flight))
        real_save(state_path, book, round_index)

    monkeypatch.setattr(RoundJournal, "open", open_spy)
    monkeypatch.setattr(runner, "save_book", save_spy)
    settings = make_settings(
        storage_root=str(small_store(tmp_path / "store")),
        rounds=6,
        durability=mode,
        durability_interval_ms=3_600_000,
        log_max_bytes=4000,
    )
    runner.run_audit(settings, tmp_path / "run")
    assert len(seen) >= 3 and set(seen) == {(False, False)}


def test_a_kernel_context_whose_request_was_never_reaped_is_not_reused(tmp_path: Path) -> None:
    """A wait cut short (a second Ctrl-C raises KeyboardInterrupt inside it) leaves an event behind:
    the next journal must not take it for its own fdatasync's."""
    syncer = AsyncDatasync()
    if syncer.backend != "kernel-aio":
        syncer.close()
        pytest.skip("no Linux AIO here")
    fd = os.open(tmp_path / "log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        impl = syncer._impl
        os.write(fd, b"line\n")
        syncer.start(fd)
        syncer.in_flight = False  # as a wait interrupted before it reaped the event leaves it
        syncer.close()
        fresh = AsyncDatasync()
        assert fresh._impl is not impl
        fresh.close()
    finally:
        os.close(fd)
