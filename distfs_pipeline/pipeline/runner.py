"""The run loop: resolves the settings, owns the clock, signals, persistence and the round/epoch logs.

Why a separate layer: the auditor runs one round and knows nothing about time or files; this module
decides when rounds happen, makes each one durable through `state.RoundJournal` (write-ahead round
log, then the state file), and writes the files an operator reads. What goes into the summary, the
end-of-run table and the progress line is `summary.py`'s job.

Clocks:
- `virtual`: round `i` (0-based over the state's whole history, i.e. `rounds_executed` before it)
  is observed at `start_unix_ms + i * tick_ms`, as fast as the machine allows. Counting from the
  state, not from this run, makes a resumed run continue the same timeline.
- `wall`: a round every `tick_ms` of real time, observed at the real time; a late round does not
  cause a burst of catch-up rounds.

SIGINT/SIGTERM (either clock) let the current round finish and be persisted, then the run ends
normally (exit 0). A second signal interrupts at once, which the write-ahead protocol also
tolerates.

Outputs in `run_dir`: `rounds.jsonl` (one record per round), `epochs.jsonl` (one reward-input
report per closed epoch), `summary.json` (written atomically at the end).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from distfs_pipeline.core import blobs, reward, safefile
from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.errors import DistributedValidationFailed, UsageError, WorldError
from distfs_pipeline.core.models import I64_MAX, U64_MAX, CursorState, RoundReport
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops.pacing import Pacing
from distfs_pipeline.persist import journal
from distfs_pipeline.persist.identity import Identity, ensure_identity
from distfs_pipeline.persist.state import (
    ROUND_LOG_NAME,
    Book,
    Recovered,
    RoundJournal,
    StateLock,
    canonical_state_path,
    recover,
    repair_tail,
    save_book,
    write_atomic,
)
from distfs_pipeline.pipeline import demo, logs, stopping
from distfs_pipeline.pipeline.summary import Progress, RunTotals, build_summary, format_summary
from distfs_pipeline.pipeline.validation import Settings

ROUNDS_LOG = ROUND_LOG_NAME
EPOCHS_LOG = "epochs.jsonl"
SUMMARY_FILE = "summary.json"
DEFAULT_STATE_FILE = "probe-state.json"
_WALL_SLEEP_SLICE_S = 0.05


@dataclass
class RunHooks:
    """Seams for studies that build fault scenarios on top of a normal run.

    - `before_round(n, observed_ms)`: called before round `n` (1-based within this run), e.g. to
      damage the scratch store on schedule.
    - `response_delay_ms(content_hash)`: how late the node answers (virtual time), passed to the
      Auditor; beyond TTL + skew a check fails as TIMEOUT.
    - `on_round(report)`: called after each round is durable.
    - `store_root`: audit this root instead of `runtime.storage_root` (e.g. a scratch copy).
    """

    before_round: Callable[[int, int], None] | None = None
    response_delay_ms: Callable[[str], int] | None = None
    on_round: Callable[[RoundReport], None] | None = None
    store_root: Path | None = None


# --- resolving defaults --------------------------------------------------------------------------


def resolve_settings(settings: Settings, run_dir: Path, hooks: RunHooks | None = None) -> Settings:
    """Fill the null paths: store (hook, else the demo store), state file, chunk cache; absolute.

    The resolved settings are what the summary reports, so a run can be repeated exactly.
    """
    rt, probe = settings.runtime, settings.probe
    if hooks is not None and hooks.store_root is not None:
        store_root = Path(hooks.store_root)
    elif rt.storage_root is not None:
        store_root = Path(rt.storage_root)
    else:
        store_root = demo.ensure_demo_store()
    state_path = Path(rt.state_path) if rt.state_path is not None else run_dir / DEFAULT_STATE_FILE
    state_path = state_path.absolute()
    cache_dir = probe.chunk_cache_dir
    if cache_dir is None:
        from distfs_pipeline.core.chunks import (
            default_cache_dir,  # the per-store cache that outlives the run (issue 11)
        )

        cache_dir = str(default_cache_dir(store_root))
    runtime = rt.model_copy(
        update={"storage_root": str(store_root.absolute()), "state_path": str(state_path)}
    )
    return settings.model_copy(
        update={"runtime": runtime, "probe": probe.model_copy(update={"chunk_cache_dir": cache_dir})}
    )


def check_store_root(root: Path, allow_empty: bool = False) -> None:
    """A store root that is not a DistFS store is the user's key (fail closed), not an empty store.

    Upstream reads a missing `blobs/` as an empty store, so a typo in the path would audit nothing
    and report it quietly. Ours: no `blobs/` is exit 2 unless `runtime.allow_empty_store` says the
    store is meant to be empty; a `blobs` that is not a directory is always an error.
    """
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"runtime.storage_root: {root} {problem}")
    blobs_dir = root / "blobs"
    if blobs_dir.is_dir():
        return
    if blobs_dir.exists() or blobs_dir.is_symlink():
        raise UsageError(f"runtime.storage_root: {blobs_dir} is not a directory: this is not a DistFS store")
    if not allow_empty:
        raise UsageError(
            f"runtime.storage_root: {root} has no blobs/ directory, so it is not a DistFS store; "
            "check the path, or set runtime.allow_empty_store=true if the store is meant to be empty"
        )


def _open_store(root: Path, listing_cache_dir: str | None = None, allow_empty: bool = False) -> LocalCasStore:
    """The store to audit; a missing root is the user's key, not an empty store.

    `listing_cache_dir` (the resolved `probe.chunk_cache_dir`, in both verify modes) keeps a plain
    store's listing for the next run. In `chunked` mode `_check_cache_dir` has created it; in `full`
    mode, which never needed the dir before, the store creates it on its first listing write, and
    a path that cannot be used there is only a logged warning (the run goes on without the cache).
    """
    check_store_root(root, allow_empty)
    return LocalCasStore(root, listing_cache_dir=listing_cache_dir)


def _check_cache_dir(settings: Settings) -> None:
    """A chunk cache that cannot be created is the user's key, said once up front.

    The cache only saves reads (a failed cache write never changes an outcome), so without this
    check a bad `probe.chunk_cache_dir` would only show as a warning per blob in the job log.
    """
    cache_dir = settings.probe.chunk_cache_dir
    if settings.probe.verify_mode != "chunked" or cache_dir is None:
        return
    path = Path(cache_dir)
    from distfs_pipeline.core.chunks import (
        refuse_cache_inside_store,  # before the mkdir below: never write into the store
    )

    refuse_cache_inside_store(path, Path(settings.runtime.storage_root or "."))
    if path.exists() and not path.is_dir():
        raise UsageError(f"probe.chunk_cache_dir: {cache_dir} exists but is not a directory")
    try:
        safefile.make_trusted_dirs(path)
    except safefile.UnsafeFileError as err:
        raise UsageError(f"probe.chunk_cache_dir: {safefile.describe(err)}") from None
    except OSError as err:
        raise UsageError(f"probe.chunk_cache_dir: {cache_dir} cannot be created ({err.strerror})") from None


def _make_auditor(settings: Settings, store: LocalCasStore, hooks: RunHooks) -> Auditor:
    rt = settings.runtime
    try:
        return Auditor(
            store,
            world_id=rt.world_id,
            node_id=rt.node_id,
            probe=settings.probe_config(),
            policy=settings.adaptive_policy(),
            verify=settings.verify_options(),
            response_delay_ms=hooks.response_delay_ms,
            measure_response_time=rt.clock == "wall",
        )
    except DistributedValidationFailed as err:  # validation refuses these first; belt and braces
        raise UsageError(f"config: {err}") from None


def blob_size(store: LocalCasStore, content_hash: str) -> int | None:
    """The decoded size of a blob whose check just passed (the check verified its content hash)."""
    try:
        return store.held_size(content_hash)
    except (OSError, WorldError):
        return None


def with_sizes(store: LocalCasStore, changes: dict[str, blobs.BlobRecord]) -> dict[str, blobs.BlobRecord]:
    """Record the size of each blob that passed this round (O(checks), never O(store)).

    Read (one header) only while the book does not know it: a blob is named by its content hash, so
    the size of the content that passed is the size its first verified pass recorded.
    """
    out = {}
    for content_hash, record in changes.items():
        if record.last_result == blobs.PASS and record.size_bytes is None:
            size = blob_size(store, content_hash)
            if size != record.size_bytes:
                record = dataclasses.replace(record, size_bytes=size)
        out[content_hash] = record
    return out


def blob_changes_json(changes: dict[str, blobs.BlobRecord]) -> dict[str, dict[str, Any]]:
    """The round record's `blob_changes` (flat records: a shallow copy is the whole dict)."""
    return {content_hash: dict(vars(record)) for content_hash, record in changes.items()}


def rewardable_bytes(store: LocalCasStore, book: Book, warned: set[str] | None = None) -> int:
    """Bytes that exist and verify: see `reward.verified_bytes` (the book, not the index's claims).

    A store whose index or listing cannot be read holds nothing rewardable (fail closed): the
    run goes on, says so once (per `warned`), and every round reports the failure as its error.
    """
    try:
        candidates = store.candidates()
    except (WorldError, OSError) as err:
        message = f"store {store.root}: cannot tell what the node must hold ({err}); rewardable_bytes is 0"
        if warned is None or message not in warned:
            warn(message)
            if warned is not None:
                warned.add(message)
        return 0
    return reward.verified_bytes(book, candidates)


# --- clocks and stopping -------------------------------------------------------------------------


class StopFlag:
    """Set by SIGINT/SIGTERM: the current round finishes and is persisted, then the run ends."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    def __bool__(self) -> bool:
        return self.signal_name is not None

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is not None:
            raise KeyboardInterrupt  # second signal: stop now (the journal tolerates it)
        self.signal_name = signal.Signals(signum).name
        stopping.note(self.signal_name)  # a multirun stops as a whole, not just this job


@contextlib.contextmanager
def _signals_handled(stop: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. a launcher's worker)
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in stopping.HANDLED}
    stop.signal_name = stop.signal_name or stopping.requested()  # one that came during start-up
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class VirtualClock:
    """Deterministic time: round i at start + i * tick, no waiting."""

    def __init__(self, start_unix_ms: int, tick_ms: int) -> None:
        self.start, self.tick = start_unix_ms, tick_ms

    def next_round(self, history_index: int, stop: StopFlag) -> int | None:
        if stop:
            return None
        observed = self.start + history_index * self.tick
        if observed > I64_MAX or history_index >= U64_MAX:  # refused before anything is written
            raise UsageError(
                f"runtime.start_unix_ms/tick_ms: round {history_index + 1} of this state would be observed "
                "past i64 max on the virtual clock; use another runtime.state_path or an earlier start"
            )
        return observed


class WallClock:
    """Real time: the first round now, then one every tick (no burst after a slow round).

    `pacing` (see `pacing.py`) jitters each interval and holds the next round back until the
    previous one's bytes fit `probe.max_bytes_per_s`; without it, a plain `tick_ms` grid.
    """

    def __init__(self, tick_ms: int, pacing: Pacing | None = None) -> None:
        self.tick_s = tick_ms / 1000
        self.pacing = pacing or Pacing(tick_ms)
        self.due: float | None = None

    def next_round(self, _history_index: int, stop: StopFlag) -> int | None:
        now = time.monotonic()
        if self.due is None or now - self.due > self.tick_s:
            self.due = now  # the first round, or a whole tick behind: restart the grid from now
        paced = self.pacing.earliest_next_start()
        if paced is not None and paced > self.due:
            self.due = paced  # the last round read more than the byte rate allows in one tick
        while not stop and (left := self.due - time.monotonic()) > 0:
            time.sleep(min(left, _WALL_SLEEP_SLICE_S))
        if stop:
            return None
        self.pacing.round_started(time.monotonic())
        self.due += self.pacing.interval_s()
        return time.time_ns() // 1_000_000


# --- messages ------------------------------------------------------------------------------------


def warn(message: str) -> None:
    logs.warn(message)


# --- epochs --------------------------------------------------------------------------------------


class EpochLog:
    """epochs.jsonl of this run; the closing round's log record holds the authoritative copy.

    Lines are self-checking records of this state (`journal.encode_record`): an existing file of
    another state (a shared run dir) is refused, never appended to.
    """

    def __init__(self, path: Path, identity: Identity) -> None:
        self.path = path
        self.identity = identity
        if os.path.lexists(path):
            repair_tail(path, identity.state_id)

    def append(self, report: dict[str, Any]) -> None:
        append_record(self.path, self.identity, report)


def append_record(path: Path, identity: Identity, record: dict[str, Any]) -> None:
    """Append one record line durably (epoch reports are rare, so fsync costs nothing)."""
    try:
        fd = safefile.open_append(path)
        try:
            safefile.write_all(fd, journal.encode_record(identity.state_id, record))
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as err:
        raise UsageError(f"epoch log {path}: cannot append: {safefile.describe(err)}") from None


def _complete_previous_epoch_log(recovered: Recovered, identity: Identity) -> None:
    """A kill between a round's commit and its epochs.jsonl line: write the line now, once."""
    record, log = recovered.last_record, recovered.log_path
    report = (record or {}).get("epoch_report")
    if report is None or log is None:
        return
    epochs = log.parent / EPOCHS_LOG
    last = repair_tail(epochs, identity.state_id) if os.path.lexists(epochs) else None
    if last is None or last.get("epoch") != report.get("epoch"):
        append_record(epochs, identity, report)


def _resume_epoch(recovered: Recovered, epoch_rounds: int) -> reward.EpochAccumulator:
    """Continue the open epoch from the last durable record, so restarts do not split epochs."""
    next_round = recovered.state.rounds_executed + 1
    saved = (recovered.last_record or {}).get("epoch")  # a round record, or the WAL's carried one
    if isinstance(saved, dict) and not reward.is_epoch_end(recovered.state.rounds_executed, epoch_rounds):
        with contextlib.suppress(TypeError, ValueError):
            acc = reward.EpochAccumulator.from_dict(saved)
            if acc.epoch == reward.epoch_of(next_round, epoch_rounds) and acc.last_round == next_round - 1:
                return acc
    return reward.start_epoch(next_round, epoch_rounds)


# --- the run -------------------------------------------------------------------------------------


@dataclass
class _Run:
    """Everything one run carries between rounds."""

    settings: Settings
    run_dir: Path
    auditor: Auditor
    journal: RoundJournal
    epochs: EpochLog
    state: CursorState
    epoch: reward.EpochAccumulator
    rewardable: int
    hooks: RunHooks
    stop: StopFlag
    progress: Progress
    store: LocalCasStore
    totals: RunTotals = field(default_factory=RunTotals)
    warned: set[str] = field(default_factory=set)
    book: Book = field(default_factory=dict)  # per-blob history, durable beside the state file
    observer: Any = None  # metrics.Metrics: told after each durable round and at the end


def run_audit(settings: Settings, run_dir: Path, hooks: RunHooks | None = None) -> dict[str, Any]:
    """Run the configured rounds against the store and return the summary (also in summary.json).

    Raises `UsageError` for bad input found at run time (missing store root, corrupt or locked
    state file, history of another identity); nothing has been written to the state file then.
    """
    hooks = hooks or RunHooks()
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = resolve_settings(settings, run_dir, hooks)
    rt = settings.runtime
    store = _open_store(Path(rt.storage_root or ""), settings.probe.chunk_cache_dir, rt.allow_empty_store)
    _check_cache_dir(settings)
    auditor = _make_auditor(settings, store, hooks)
    state_path = Path(rt.state_path or "")
    started = time.monotonic()
    with _run_dir_lock(run_dir), StateLock(state_path):
        state_path = canonical_state_path(state_path)
        identity, _created = ensure_identity(
            state_path, rt.world_id, rt.node_id, os.path.realpath(rt.storage_root or "")
        )
        recovered = recover(state_path, identity)
        for note in recovered.notes:
            warn(note)
        _complete_previous_epoch_log(recovered, identity)
        run = _start(settings, run_dir, auditor, store, recovered, hooks, identity)
        try:
            with _signals_handled(run.stop):
                _loop(run)
            run.journal.close(run.state)  # the state file's checkpoint, after the log's last sync
            save_book(state_path, run.book, run.state.rounds_executed)  # replay starts here next time
        finally:
            run.journal.close()
            run.progress.close()
            if run.observer is not None:
                run.observer.close(run.state)
        run.rewardable = rewardable_bytes(store, run.book, run.warned)
    summary = build_summary(
        run.settings,
        run.run_dir,
        run.state,
        run.totals,
        rewardable=run.rewardable,
        stop_signal=run.stop.signal_name,
        recovered=recovered,
        elapsed_s=time.monotonic() - started,
        outputs=(ROUNDS_LOG, EPOCHS_LOG, SUMMARY_FILE),
    )
    write_atomic(
        run_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode("utf-8") + b"\n", what="summary"
    )
    print(format_summary(summary), flush=True)  # a closed stdout: `__main__` ends quietly, all is saved
    return summary


@contextlib.contextmanager
def _run_dir_lock(run_dir: Path) -> Iterator[None]:
    """An exclusive `flock` on the run dir itself for the run: two runs never share its files.

    Taken on the directory (no file of ours to plant or leave behind); dropped by the kernel when
    the run dies. A link planted in place of the run dir is refused, not followed: the run's files
    would land wherever it points.
    """
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UsageError(f"run dir {run_dir}: refusing to use it: it is a symbolic link") from None
        raise UsageError(f"run dir {run_dir}: cannot open: {err.strerror}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"run dir {run_dir} is in use by another run; give this run its own hydra.run.dir"
            ) from None
        yield
    finally:
        os.close(fd)


def _start(
    settings: Settings,
    run_dir: Path,
    auditor: Auditor,
    store: LocalCasStore,
    recovered: Recovered,
    hooks: RunHooks,
    identity: Identity,
) -> _Run:
    rt = settings.runtime
    state_path = canonical_state_path(Path(rt.state_path or ""))
    if recovered.book_round != recovered.state.rounds_executed:
        # Replay from the previous log has been applied: checkpoint it before the WAL moves on.
        save_book(state_path, recovered.book, recovered.state.rounds_executed)
    observer = _metrics(settings, store)
    if observer is not None:
        observer.start(recovered.state, recovered.book)  # every series at its value before round 1
    journal = RoundJournal(state_path, run_dir / ROUNDS_LOG, identity, settings.log_options())
    try:
        epochs = EpochLog(run_dir / EPOCHS_LOG, identity)  # refuses another state's epochs.jsonl first
        # The previous dir's epochs.jsonl is complete by now: carry only the open epoch's sums.
        journal.open(recovered.state, {"epoch": (recovered.last_record or {}).get("epoch")})
    except BaseException:
        if observer is not None:
            observer.close(recovered.state)
        raise
    _warn_if_empty(store)
    return _Run(
        settings=settings,
        run_dir=run_dir,
        auditor=auditor,
        journal=journal,
        epochs=epochs,
        state=recovered.state,
        epoch=_resume_epoch(recovered, rt.epoch_rounds),
        rewardable=0,  # computed when an epoch closes and at the end: O(book), from verified checks
        hooks=hooks,
        stop=StopFlag(),
        progress=Progress(rt.progress, rt.rounds),
        book=recovered.book,
        observer=observer,
        store=store,
    )


def _metrics(settings: Settings, store: LocalCasStore) -> Any:
    """The metrics observer (`metrics.py`, imported only when `runtime.metrics_*` asks for it).

    A textfile inside the audited store is refused: the store is read-only to an audit.
    """
    rt = settings.runtime
    if rt.metrics_port is None and rt.metrics_textfile is None:
        return None
    from distfs_pipeline import __version__
    from distfs_pipeline.ops.metrics import Metrics

    textfile = Path(rt.metrics_textfile).absolute() if rt.metrics_textfile is not None else None
    if textfile is not None and rt.storage_root is not None:
        root = Path(rt.storage_root).resolve()
        if safefile.is_inside(textfile.parent, root):
            raise UsageError(f"runtime.metrics_textfile: {textfile} is inside the audited store {root}")
    identity = {
        "world_id": rt.world_id,
        "node_id": rt.node_id,
        "store_root": str(rt.storage_root),
        "version": __version__,
    }
    return Metrics(identity, store, port=rt.metrics_port, textfile=textfile)


def _warn_if_empty(store: LocalCasStore) -> None:
    """An empty store proves nothing: say so loudly (upstream would write a seed blob into it).

    Damaged lines of the must-hold index are said here too (each run, while they are there): a
    line that names no blob may hide one from the audit (issue 8). Costs nothing per blob: the
    candidates are loaded (or cached) for the rounds anyway, and the blob files are listed only
    when the index is empty.
    """
    try:
        empty = len(store.candidates()) == 0
        damage = store.index_damage()
        if damage:
            warn(f"store {store.root}: {damage.describe(store.index_path)}")
        what = "holds no blobs"
        if empty and store.has_index():
            listed = len(store.list_blob_hashes())
            what = f"has an index ({store.index_path.name}) that lists no blobs" + (
                f" ({listed} blob files are not in it)" if listed else ""
            )
    except (WorldError, OSError):
        return  # each round reports the listing failure itself
    if empty:
        warn(
            f"store {store.root} {what}: nothing to audit, every round is 0/0 "
            "(summary: no_data); the store is left as it is"
        )


def _loop(run: _Run) -> None:
    rt = run.settings.runtime
    clock: VirtualClock | WallClock
    clock = VirtualClock(rt.start_unix_ms, rt.tick_ms) if rt.clock == "virtual" else _wall_clock(run.settings)
    while rt.rounds == 0 or run.totals.rounds < rt.rounds:
        observed = clock.next_round(run.state.rounds_executed, run.stop)
        if observed is None:
            break
        _one_round(run, observed)
        run.progress.update(run.totals, run.state)
        if run.stop:
            break
    run.progress.update(run.totals, run.state, force=True)


def _wall_clock(settings: Settings) -> WallClock:
    """The wall clock with the configured jitter and byte-rate limit (see `pacing.py`)."""
    rt = settings.runtime
    pacing = Pacing(rt.tick_ms, rt.tick_jitter_ms, settings.probe.max_bytes_per_s)
    if not pacing.measurable:
        warn("probe.max_bytes_per_s: this system does not report bytes read (/proc/self/io); not paced")
    return WallClock(rt.tick_ms, pacing)


def _one_round(run: _Run, observed_ms: int) -> None:
    """Run, commit (write-ahead), then report a round; hooks see only durable rounds."""
    started = time.monotonic()
    if run.hooks.before_round is not None:
        run.hooks.before_round(run.totals.rounds + 1, observed_ms)
    report, new_state = run.auditor.run_round(run.state, observed_ms, run.book)
    changes = with_sizes(run.store, blobs.apply_report(run.book, report, run.auditor.policy))
    run.book.update(changes)
    epoch_rounds = run.settings.runtime.epoch_rounds
    run.epoch = run.epoch.add(report)
    record = {**report.to_dict(), "epoch": run.epoch.to_dict()}
    record["blob_changes"] = blob_changes_json(changes)
    closed = None
    if reward.is_epoch_end(report.round_index, epoch_rounds):
        run.rewardable = rewardable_bytes(run.store, run.book, run.warned)
        closed = reward.epoch_report(run.epoch, run.rewardable, epoch_rounds)
        record["epoch_report"] = closed
    run.journal.commit(record, new_state)
    run.state = new_state
    run.totals.add(report)
    if closed is not None:
        # The epoch's rounds reach stable storage before its report does: otherwise a power loss
        # (`pipelined`, `interval`) could keep a report whose closing round then runs again.
        run.journal.sync()
        run.epochs.append(closed)
        run.totals.epochs_closed += 1
        run.epoch = reward.start_epoch(report.round_index + 1, epoch_rounds)
    if run.observer is not None:
        run.observer.round(report, new_state, changes, run.book, time.monotonic() - started)
    if run.journal.rotation_due():  # after the epoch line: a rotation never strands an epoch report
        run.journal.sync()  # the book snapshot never runs ahead of the durable log (power loss)
        save_book(run.journal.state_path, run.book, new_state.rounds_executed)  # replay needs no old segment
        run.journal.rotate(new_state)
    if run.hooks.on_round is not None:
        run.hooks.on_round(report)
