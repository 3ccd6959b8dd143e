"""`run_audit` in-process on real stores: outputs, timeline, resume, hooks, empty store, errors."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.chunks import ChunkedReader, default_cache_dir
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import RoundReport
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.persist.state import StateLock, load_state
from distfs_pipeline.pipeline import demo
from distfs_pipeline.pipeline.runner import RunHooks, run_audit
from distfs_pipeline.pipeline.summary import Progress, RunTotals
from distfs_pipeline.pipeline.validation import Settings

START, TICK = 1_767_225_600_000, 200


def make_settings(**runtime: Any) -> Settings:
    probe = runtime.pop("probe", {})
    base = {"progress": "never", "rounds": 6, "epoch_rounds": 5}
    return Settings.model_validate({"runtime": base | runtime, "probe": probe})


def small_store(root: Path, blobs: int = 5) -> Path:
    store = LocalCasStore(root)
    for i in range(blobs):
        store.put_bytes(f"blob {i} ".encode() * (i * 100 + 1))
    return root


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def tree(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under root with its size and mtime: a store must come out exactly as it went in."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            st = path.stat()
            out[str(path.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return demo.ensure_demo_store(tmp_path_factory.mktemp("cache") / demo.DEMO_DIRNAME)


def test_demo_store_gives_the_documented_reasons(demo_root: Path, tmp_path: Path) -> None:
    """Checking every blob each round, each damaged blob fails with its documented reason."""
    manifest = demo.load_manifest(demo_root)
    assert len(manifest) == demo.DEMO_BLOB_COUNT
    settings = make_settings(
        storage_root=str(demo_root), rounds=2, probe={"challenges_per_tick": demo.DEMO_BLOB_COUNT}
    )
    before = tree(demo_root)
    summary = run_audit(settings, tmp_path / "run")
    expected = {h: demo.DEMO_MIX[c][1] for h, c in manifest.items() if demo.DEMO_MIX[c][1] is not None}
    for record in read_jsonl(tmp_path / "run" / "rounds.jsonl"):
        assert {f["content_hash"]: f["reason"] for f in record["failures"]} == expected
        assert record["passed_checks"] == demo.DEMO_MIX["healthy"][0]
    assert summary["failure_reasons"] == {"HASH_MISMATCH": 6, "MISSING_SAMPLE": 2, "READ_IO_ERROR": 2}
    assert tree(demo_root) == before  # audited, never written
    assert demo.ensure_demo_store(demo_root) == demo_root  # idempotent


def test_outputs_timeline_and_summary(tmp_path: Path) -> None:
    settings = make_settings(storage_root=str(small_store(tmp_path / "store")), rounds=12)
    summary = run_audit(settings, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "rounds.jsonl")
    assert [r["round_index"] for r in records] == list(range(1, 13))
    assert [r["observed_at_unix_ms"] for r in records] == [START + i * TICK for i in range(12)]
    assert all("latest_proof_semantics" in r for r in records)
    state = load_state(tmp_path / "run" / "probe-state.json")
    assert records[-1]["state_after"] == state.to_dict() == summary["final_state"]
    epochs = read_jsonl(tmp_path / "run" / "epochs.jsonl")
    assert [(e["epoch"], e["first_round"], e["last_round"]) for e in epochs] == [(1, 1, 5), (2, 6, 10)]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
    assert summary["checks_spent"] == 12 and summary["pass_ratio"] == 1.0 and not summary["no_data"]
    assert summary["config"]["runtime"]["state_path"] == str(tmp_path / "run" / "probe-state.json")


def test_a_resumed_run_continues_the_same_timeline_and_epochs(tmp_path: Path) -> None:
    store = str(small_store(tmp_path / "store"))
    split_state = str(tmp_path / "split.json")
    for run in ("a1", "a2"):
        run_audit(make_settings(storage_root=store, state_path=split_state, rounds=6), tmp_path / run)
    whole = make_settings(storage_root=store, state_path=str(tmp_path / "whole.json"), rounds=12)
    run_audit(whole, tmp_path / "b")
    assert load_state(split_state) == load_state(tmp_path / "whole.json")
    split_epochs = read_jsonl(tmp_path / "a1" / "epochs.jsonl") + read_jsonl(tmp_path / "a2" / "epochs.jsonl")
    assert [anonymous(e) for e in split_epochs] == [
        anonymous(e) for e in read_jsonl(tmp_path / "b" / "epochs.jsonl")
    ]  # epoch 2 spans both runs


def anonymous(record: dict[str, Any]) -> dict[str, Any]:
    """A record without what names its state (two states of equal history log equal records)."""
    return {k: v for k, v in record.items() if k not in ("state_id", "crc32")}


def test_empty_store_warns_reports_no_data_and_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = tmp_path / "empty"
    store.mkdir()
    before = tree(store)
    settings = make_settings(storage_root=str(store), rounds=3, allow_empty_store=True)
    summary = run_audit(settings, tmp_path / "run")
    assert "warning:" in capsys.readouterr().err
    assert summary["no_data"] and summary["no_data_reason"] == "empty store"
    assert tree(store) == before


def test_a_root_that_is_not_a_store_is_refused_unless_meant_to_be_empty(tmp_path: Path) -> None:
    """Issue 8: no `blobs/` is a usage error (a typo would audit nothing), unless the user says so;
    a `blobs` that is not a directory is refused always. Nothing is written to the state."""
    root = tmp_path / "not-a-store"
    root.mkdir()
    state = tmp_path / "state.json"
    with pytest.raises(UsageError, match=r"runtime\.storage_root: .* has no blobs/ .*allow_empty_store=true"):
        run_audit(make_settings(storage_root=str(root), state_path=str(state)), tmp_path / "run")
    (root / "blobs").write_text("a file\n")
    for allow in (False, True):
        settings = make_settings(storage_root=str(root), state_path=str(state), allow_empty_store=allow)
        with pytest.raises(UsageError, match=r"blobs is not a directory: this is not a DistFS store"):
            run_audit(settings, tmp_path / "run")
    assert not state.exists() and sorted(p.name for p in root.iterdir()) == ["blobs"]


def test_missing_store_root_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"runtime\.storage_root"):
        run_audit(make_settings(storage_root=str(tmp_path / "nope")), tmp_path / "run")


def test_hooks_see_every_round_and_can_redirect_the_store(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    reports: list[RoundReport] = []
    hooks = RunHooks(
        before_round=lambda n, observed: calls.append((n, observed)),
        response_delay_ms=lambda _hash: 10**9,  # far beyond TTL + skew
        on_round=reports.append,
        store_root=small_store(tmp_path / "scratch"),
    )
    settings = make_settings(storage_root=str(tmp_path / "not-used"), rounds=3)
    summary = run_audit(settings, tmp_path / "run", hooks)
    assert calls == [(n, START + (n - 1) * TICK) for n in (1, 2, 3)]
    assert [r.round_index for r in reports] == [1, 2, 3]
    assert summary["failure_reasons"] == {"TIMEOUT": 3}
    assert summary["store_root"] == str(tmp_path / "scratch")


def test_a_state_in_use_is_refused_and_untouched(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    settings = make_settings(storage_root=str(small_store(tmp_path / "store")), state_path=str(state))
    with StateLock(state), pytest.raises(UsageError, match="in use"):
        run_audit(settings, tmp_path / "run")
    assert not state.exists() and not (tmp_path / "run" / "rounds.jsonl").exists()


def test_corrupt_state_is_refused_before_any_round(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text('{"rounds_executed": "many"}')
    settings = make_settings(storage_root=str(small_store(tmp_path / "store")), state_path=str(state))
    with pytest.raises(UsageError, match=str(state)):
        run_audit(settings, tmp_path / "run")
    assert state.read_text() == '{"rounds_executed": "many"}'
    assert not (tmp_path / "run" / "rounds.jsonl").exists()


@pytest.mark.parametrize(("mode", "shown"), [("always", True), ("never", False), ("auto", False)])
def test_progress_draws_only_when_wanted(mode: str, shown: bool) -> None:
    stream = io.StringIO()  # not a terminal: `auto` stays quiet
    progress = Progress(mode, 10, stream)
    totals = RunTotals(rounds=3, checks=3, passed=2, failed=1)
    progress.update(totals, load_state("/nonexistent"), force=True)
    progress.close()
    assert ("\rround 3/10" in stream.getvalue()) is shown


# --- broken stores: the run goes on, fails closed, and never writes to the store -----------------


def _index_is_a_directory(root: Path) -> None:
    small_store(root)
    index = LocalCasStore(root).index_path
    index.unlink()
    index.mkdir()


@pytest.mark.parametrize("breakage", [_index_is_a_directory])
def test_a_store_that_cannot_be_listed_fails_every_round_and_is_not_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], breakage: Any
) -> None:
    store = tmp_path / "store"
    breakage(store)
    before = tree(store)
    summary = run_audit(make_settings(storage_root=str(store), rounds=3), tmp_path / "run")
    err = capsys.readouterr().err
    assert "warning:" in err and "rewardable_bytes is 0" in err and len(err.splitlines()) == 1
    assert summary["rounds_with_error"] == 3 and summary["failed_checks"] == 3
    assert summary["rewardable_bytes"] == 0
    assert tree(store) == before


def test_an_index_listing_no_blobs_is_not_called_an_empty_store(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = small_store(tmp_path / "store")
    LocalCasStore(store).index_path.write_bytes(b"\x00\xff garbage without a newline")
    summary = run_audit(make_settings(storage_root=str(store), rounds=2), tmp_path / "run")
    err = capsys.readouterr().err
    assert "lists no blobs (5 blob files are not in it)" in err
    assert summary["no_data"]


def test_a_state_write_that_fails_is_one_usage_error_and_the_rounds_are_recovered(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    settings = make_settings(storage_root=str(small_store(tmp_path / "store")), state_path=str(state))

    def plant(n: int, _ms: int) -> None:
        if n == 3:
            state.mkdir()  # the state file's checkpoint cannot replace a directory

    with pytest.raises(UsageError, match=r"state file .*state\.json: cannot write: .*state\.json: refusing"):
        run_audit(settings, tmp_path / "run1", RunHooks(before_round=plant))
    assert state.is_dir() and not list(tmp_path.glob(".state.json.tmp-*"))
    state.rmdir()
    summary = run_audit(settings, tmp_path / "run2")  # the logged rounds are rolled forward
    assert summary["recovered_round"] == 6 and summary["cumulative"]["rounds_executed"] == 12


@pytest.mark.parametrize("mode", ["chunked", "full"])
def test_a_plain_store_listing_persists_in_the_chunk_cache_dir(tmp_path: Path, mode: str) -> None:
    root = tmp_path / "store"
    (root / "blobs").mkdir(parents=True)
    for i in range(3):
        data = f"plain {i}".encode()
        (root / "blobs" / f"{LocalCasStore(root).hash_hex(data)}.blob").write_bytes(data)
    past = 1_600_000_000_000_000_000
    os.utime(root / "blobs", ns=(past, past))  # out of the racy window
    before = tree(root)
    settings = make_settings(storage_root=str(root), rounds=2, probe={"verify_mode": mode})
    summary = run_audit(settings, tmp_path / "run")
    assert (summary["blob_count"], summary["cumulative"]["passed_checks"]) == (3, 2)
    assert tree(root) == before  # nothing written into the audited store
    cache = default_cache_dir(root)  # the resolved per-store cache dir, also in full mode
    expected = LocalCasStore(root, listing_cache_dir=cache).listing_cache_path
    assert expected is not None and [p.name for p in cache.glob("listing-*.bin")] == [expected.name]
    assert not cache.is_relative_to(tmp_path / "run")  # outlives the run dir


def test_the_chunk_cache_outlives_the_run_by_default(tmp_path: Path) -> None:
    """Issue 11: a new run (new run dir, default settings) reuses the digests of the last one, so
    its first check of a multi-chunk blob needs no full verify."""
    store = LocalCasStore(tmp_path / "store")
    hashes = [store.put_bytes(os.urandom(100_000)) for _ in range(2)]
    settings = make_settings(storage_root=str(store.root), rounds=4, probe={"challenges_per_tick": 2})
    run_audit(settings, tmp_path / "run1")
    cache = default_cache_dir(store.root)
    assert len(list(cache.rglob("*.chk"))) == len(hashes)
    reader = ChunkedReader(store, settings.probe.chunk_size_bytes, cache)
    for content_hash in hashes:
        reader.read_sample(content_hash, 65_536, "new-run")
    assert (reader.stats.full_verifies, reader.stats.cache_file_hits) == (0, 2)


def test_a_default_cache_inside_the_store_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalCasStore(tmp_path / "store")
    store.put_bytes(os.urandom(100))
    monkeypatch.setenv("XDG_CACHE_HOME", str(store.root / "cache"))
    settings = make_settings(storage_root=str(store.root), rounds=1)
    with pytest.raises(UsageError, match=r"probe\.chunk_cache_dir .* is inside the audited store"):
        run_audit(settings, tmp_path / "run")
    assert not (store.root / "cache").exists()


# --- the per-blob book ------------------------------------------------------------------------------


def without_sizes(book: dict[str, Any]) -> dict[str, Any]:
    import dataclasses

    return {h: dataclasses.replace(r, size_bytes=None) for h, r in book.items()}


def report_of(record: dict[str, Any]) -> RoundReport:
    """The parts of a logged round that the book folds (what was checked, what failed)."""
    from distfs_pipeline.core.models import CheckFailure, FailureReason

    failures = [
        CheckFailure(f["content_hash"], FailureReason(f["reason"]), f.get("error", ""))
        for f in record["failures"]
    ]
    return RoundReport(
        node_id=record["node_id"],
        world_id=record["world_id"],
        observed_at_unix_ms=record["observed_at_unix_ms"],
        checked_hashes=record["checked_hashes"],
        failures=failures,
    )


def test_the_blob_book_is_durable_beside_the_state_and_survives_a_lost_snapshot(tmp_path: Path) -> None:
    """The book folds every round's checks; recovery = snapshot + the logged changes after it."""
    from distfs_pipeline.core import blobs
    from distfs_pipeline.persist.state import book_path, load_book

    store = small_store(tmp_path / "store")
    state = tmp_path / "state.json"
    settings = make_settings(storage_root=str(store), state_path=str(state), rounds=4)
    before = tree(store)
    run_audit(settings, tmp_path / "run1")
    expected: dict[str, blobs.BlobRecord] = {}
    for record in read_jsonl(tmp_path / "run1" / "rounds.jsonl"):
        expected.update(blobs.apply_report(expected, report_of(record)))
    sizes = {h: r.size_bytes for h, r in load_book(state).items()}
    assert expected and without_sizes(load_book(state)) == expected
    store_files = LocalCasStore(store)
    assert sizes == {h: len(store_files.get_verified(h)) for h in expected}  # passed: decoded sizes
    assert book_path(state).exists() and tree(store) == before  # beside the state, never in the store
    assert set(json.loads(state.read_text())) == set(load_state(state).to_dict())  # 14 keys only
    book_path(state).unlink()  # as if killed before the end-of-run snapshot
    run_audit(settings, tmp_path / "run2")
    for record in read_jsonl(tmp_path / "run2" / "rounds.jsonl"):
        expected.update(blobs.apply_report(expected, report_of(record)))
    assert without_sizes(load_book(state)) == expected
    assert sum(r.checks for r in expected.values()) == load_state(state).cumulative_total_checks


# --- issue 8: identity, shared run dirs, epochs, rewardable bytes, values refused before writing --


def test_a_state_of_another_node_is_refused_with_one_line(tmp_path: Path) -> None:
    from distfs_pipeline.persist.state import load_identity

    store = str(small_store(tmp_path / "store"))
    state = tmp_path / "state.json"
    run_audit(make_settings(storage_root=store, state_path=str(state), rounds=2), tmp_path / "run1")
    identity = load_identity(state)
    assert identity is not None and identity.node_id == "node-storage-1" and len(identity.state_id) == 32
    before = state.read_bytes()
    other = make_settings(storage_root=store, state_path=str(state), rounds=2, node_id="node-storage-2")
    with pytest.raises(UsageError, match=r"belongs to node_id 'node-storage-1'.*not runtime\.node_id") as err:
        run_audit(other, tmp_path / "run2")
    assert "\n" not in str(err.value) and state.read_bytes() == before
    elsewhere = make_settings(storage_root=str(small_store(tmp_path / "other")), state_path=str(state))
    with pytest.raises(UsageError, match=r"runtime\.storage_root"):
        run_audit(elsewhere, tmp_path / "run3")


def test_a_run_dir_shared_with_another_state_is_refused_and_its_files_kept(tmp_path: Path) -> None:
    store = str(small_store(tmp_path / "store"))
    shared = tmp_path / "shared"
    run_audit(make_settings(storage_root=store, state_path=str(tmp_path / "a.json")), shared)
    before = {name: (shared / name).read_bytes() for name in ("rounds.jsonl", "epochs.jsonl")}
    with pytest.raises(UsageError, match="holds records of state id"):
        run_audit(make_settings(storage_root=store, state_path=str(tmp_path / "b.json")), shared)
    assert {name: (shared / name).read_bytes() for name in before} == before


def test_a_run_dir_in_use_is_refused(tmp_path: Path) -> None:
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path\n"
            "from distfs_pipeline.pipeline.runner import _run_dir_lock\n"
            "with _run_dir_lock(Path(sys.argv[1])):\n print('locked', flush=True); time.sleep(60)",
            str(run_dir),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(UsageError, match=r"in use by another run; give this run its own hydra\.run"):
            run_audit(make_settings(storage_root=str(small_store(tmp_path / "store"))), run_dir)
        assert not (run_dir / "rounds.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_run_killed_before_its_first_commit_splits_no_epoch(tmp_path: Path) -> None:
    """Open the log and die (the WAL now names an empty log): the epoch still closes whole."""
    from distfs_pipeline.persist.identity import load_identity
    from distfs_pipeline.persist.state import RoundJournal, StateLock, recover

    store = str(small_store(tmp_path / "store"))
    state = tmp_path / "state.json"
    run_audit(make_settings(storage_root=store, state_path=str(state), rounds=3), tmp_path / "run1")
    identity = load_identity(state)
    assert identity is not None
    with StateLock(state):  # a second run, killed right after opening its log
        recovered = recover(state, identity)
        RoundJournal(state, tmp_path / "run2" / "rounds.jsonl", identity).open(
            recovered.state, recovered.last_record
        )
    run_audit(make_settings(storage_root=store, state_path=str(state), rounds=2), tmp_path / "run3")
    (epoch,) = read_jsonl(tmp_path / "run3" / "epochs.jsonl")
    assert (epoch["epoch"], epoch["rounds"], epoch["first_round"], epoch["complete"]) == (1, 5, 1, True)


def test_rewardable_bytes_count_only_blobs_that_exist_and_verify(tmp_path: Path) -> None:
    """An index line's size claim and a sparse file of the claimed size earn nothing."""
    root = small_store(tmp_path / "store", blobs=4)
    store = LocalCasStore(root)
    hashes = sorted(store.candidates())
    lost, sparse = hashes[0], hashes[1]
    store.blob_path(lost).unlink()
    size = store.blob_path(sparse).stat().st_size
    with open(store.blob_path(sparse), "r+b") as handle:  # same size, the bytes gone (a hole)
        handle.truncate(0)
        handle.truncate(size)
    settings = make_settings(storage_root=str(root), rounds=8, epoch_rounds=4)
    summary = run_audit(settings, tmp_path / "run")
    good = sum(store.index_sizes()[h] for h in hashes[2:])
    assert summary["rewardable_bytes"] == good
    epochs = read_jsonl(tmp_path / "run" / "epochs.jsonl")
    assert epochs[-1]["rewardable_bytes"] == good and store.index_sizes()[lost] > 0


def test_a_virtual_timeline_past_i64_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    from distfs_pipeline.core.models import CursorState
    from distfs_pipeline.persist.state import save_state

    state = tmp_path / "state.json"
    save_state(state, CursorState(rounds_executed=(2**63 - START) // TICK + 1))
    before = state.read_bytes()
    with pytest.raises(UsageError, match="past i64 max"):
        run_audit(
            make_settings(storage_root=str(small_store(tmp_path / "store")), state_path=str(state)),
            tmp_path / "r",
        )
    assert state.read_bytes() == before and (tmp_path / "r" / "rounds.jsonl").read_bytes() == b""


@pytest.mark.parametrize("name", ["summary.json", "epochs.jsonl", "rounds.jsonl"])
@pytest.mark.parametrize("plant", ["symlink", "fifo"])
def test_planted_run_files_are_refused_never_followed_or_blocked_on(
    tmp_path: Path, name: str, plant: str
) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    if plant == "symlink":
        (run_dir / name).symlink_to(victim)
    else:
        os.mkfifo(run_dir / name)
    with pytest.raises(UsageError, match="refusing to use it"):
        run_audit(make_settings(storage_root=str(small_store(tmp_path / "store"))), run_dir)
    assert victim.read_text() == "precious\n"


# --- kill -9 in every durability mode, across rotated segments --------------------------------------


def all_records(run_dir: Path, live: bool = False) -> list[dict[str, Any]]:
    """Every round record of a run dir: the active log and its rotated (maybe gzipped) segments.

    `live`: the run is still writing, so a line being appended is skipped, not an error.
    """
    import gzip

    out = []
    paths = set(run_dir.glob("rounds.jsonl*"))
    for path in sorted(paths):
        if path.with_name(path.name + ".gz") in paths:
            continue  # killed between writing the .gz and removing the plain segment: one segment
        try:
            raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        except FileNotFoundError:  # compressed away while a live run is polled
            continue
        for line in raw.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                if not live:
                    raise
    return out


def cli(*args: str, cwd: Path) -> Any:
    import subprocess
    import sys

    return subprocess.Popen(
        [sys.executable, "-m", "distfs_pipeline", *args],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize(
    "mode",
    [
        ["runtime.durability=round"],
        ["runtime.durability=pipelined"],
        ["runtime.durability=interval", "runtime.durability_interval_ms=50"],
        ["runtime.durability=interval", "runtime.log_max_bytes=6000", "runtime.log_compress=true"],
    ],
    ids=["round", "pipelined", "interval", "interval-rotating"],
)
def test_sigkill_in_every_durability_mode_loses_and_repeats_no_round(tmp_path: Path, mode: list[str]) -> None:
    """kill -9 a wall-clock run twice at arbitrary moments, then finish: rounds 1..N exactly once."""
    import time

    store = small_store(tmp_path / "store", blobs=6)
    state = tmp_path / "state.json"
    common = [
        "runtime=wall",
        "runtime.tick_ms=1",
        "runtime.epoch_rounds=4",
        "runtime.log_keep=1000",
        f"runtime.storage_root={store}",
        f"runtime.state_path={state}",
        *mode,
    ]
    for attempt in range(2):
        run_dir = tmp_path / f"killed{attempt}"
        proc = cli(*common, f"hydra.run.dir={run_dir}", cwd=tmp_path)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if run_dir.exists() and len(all_records(run_dir, live=True)) >= 12 + 5 * attempt:
                break
            time.sleep(0.01)
        proc.kill()
        _, err = proc.communicate()
        assert proc.returncode == -9, err
    final = cli(*common, "runtime.rounds=5", f"hydra.run.dir={tmp_path / 'final'}", cwd=tmp_path)
    _, err = final.communicate(timeout=60)
    assert final.returncode == 0, err
    records = [r for run in [*sorted(tmp_path.glob("killed*")), tmp_path / "final"] for r in all_records(run)]
    saved = load_state(state)
    assert sorted(r["round_index"] for r in records) == list(range(1, saved.rounds_executed + 1))
    assert sum(r["total_checks"] for r in records) == saved.cumulative_total_checks
    epochs = [e for log in sorted(tmp_path.glob("*/epochs.jsonl")) for e in read_jsonl(log)]
    assert sorted(e["epoch"] for e in epochs) == list(range(1, saved.rounds_executed // 4 + 1))
    assert all(e["complete"] for e in epochs)
    if "runtime.log_compress=true" in mode:
        assert list(tmp_path.glob("killed0/rounds.jsonl.*.gz"))  # rotated and compressed


def test_the_round_log_rotates_keeps_its_segments_bounded_and_starts_without_them(tmp_path: Path) -> None:
    from distfs_pipeline.persist.state import load_book

    store = str(small_store(tmp_path / "store"))
    state = tmp_path / "state.json"
    rotating = {"log_max_bytes": 4000, "log_keep": 2, "log_compress": True}
    run_audit(
        make_settings(storage_root=store, state_path=str(state), rounds=60, **rotating), tmp_path / "run"
    )
    names = sorted(p.name for p in (tmp_path / "run").glob("rounds.jsonl*"))
    assert len(names) == 3 and all(n.endswith(".gz") for n in names if n != "rounds.jsonl"), names
    assert (tmp_path / "run" / "rounds.jsonl").stat().st_size < 4000 + 2000
    book = load_book(state)
    for old in (tmp_path / "run").glob("rounds.jsonl.*"):
        old.unlink()  # a normal start never needs an old segment
    summary = run_audit(make_settings(storage_root=store, state_path=str(state), rounds=5), tmp_path / "run")
    assert (
        summary["cumulative"]["rounds_executed"] == 65
        and sum(r.checks for r in load_book(state).values()) == 65
    )
    assert sum(r.checks for r in book.values()) == 60


def test_a_kill_right_after_a_rotation_strands_no_epoch_report(tmp_path: Path) -> None:
    """The closing round is committed, the log rotates, the run dies before epochs.jsonl: the next
    start still writes that epoch's report, once."""
    from distfs_pipeline.core.models import CursorState
    from distfs_pipeline.persist.identity import ensure_identity
    from distfs_pipeline.persist.state import LogOptions, RoundJournal, recover
    from distfs_pipeline.pipeline import runner

    state = tmp_path / "state.json"
    identity, _ = ensure_identity(state, "w", "n", "/store")
    run_dir = tmp_path / "run"
    journal = RoundJournal(state, run_dir / "rounds.jsonl", identity, LogOptions(log_max_bytes=1))
    journal.open(CursorState())
    report = {"epoch": 1, "rounds": 1, "complete": True}
    after = CursorState(rounds_executed=1, cumulative_total_checks=1, cumulative_passed_checks=1)
    journal.commit({"round_index": 1, "total_checks": 1, "passed_checks": 1, "epoch_report": report}, after)
    assert journal.rotation_due()
    journal.rotate(after)
    journal.close()  # dies here: no epochs.jsonl line yet
    recovered = recover(state, identity)
    runner._complete_previous_epoch_log(recovered, identity)
    runner._complete_previous_epoch_log(recover(state, identity), identity)  # a second start: no duplicate
    assert [anonymous(e) for e in read_jsonl(run_dir / "epochs.jsonl")] == [report]


def test_rewardable_bytes_of_compressed_blobs_are_their_decoded_size(tmp_path: Path) -> None:
    """An O7CBLOB1 blob holds its decoded bytes: it earns that size, as the index records it."""
    store = LocalCasStore(tmp_path / "store")
    data = {store.put_bytes(bytes([i]) * 50_000): 50_000 for i in range(3)}
    assert all(store.blob_path(h).stat().st_size < 50_000 for h in data)  # stored compressed
    summary = run_audit(make_settings(storage_root=str(store.root), rounds=3), tmp_path / "run")
    assert summary["rewardable_bytes"] == sum(data.values()) == sum(store.index_sizes().values())
