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

from . import demo, logs, reward, stopping
from .auditor import Auditor
from .errors import DistributedValidationFailed, UsageError, WorldError
from .models import CursorState, RoundReport
from .state import ROUND_LOG_NAME, Recovered, RoundJournal, StateLock, recover, repair_tail, write_atomic
from .store import LocalCasStore
from .summary import Progress, RunTotals, build_summary, format_summary
from .validation import Settings

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
        cache_dir = str(state_path.with_name(state_path.name + ".chunks"))
    runtime = rt.model_copy(
        update={"storage_root": str(store_root.absolute()), "state_path": str(state_path)}
    )
    return settings.model_copy(
        update={"runtime": runtime, "probe": probe.model_copy(update={"chunk_cache_dir": cache_dir})}
    )


def _open_store(root: Path, listing_cache_dir: str | None = None) -> LocalCasStore:
    """The store to audit; a missing root is the user's key, not an empty store.

    `listing_cache_dir` (the resolved `probe.chunk_cache_dir`, in both verify modes) keeps a plain
    store's listing for the next run. In `chunked` mode `_check_cache_dir` has created it; in `full`
    mode, which never needed the dir before, the store creates it on its first listing write, and
    a path that cannot be used there is only a logged warning (the run goes on without the cache).
    """
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"runtime.storage_root: {root} {problem}")
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
    if path.exists() and not path.is_dir():
        raise UsageError(f"probe.chunk_cache_dir: {cache_dir} exists but is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
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
        )
    except DistributedValidationFailed as err:  # validation refuses these first; belt and braces
        raise UsageError(f"config: {err}") from None


def rewardable_bytes(store: LocalCasStore) -> int:
    """Bytes the node must hold: recorded sizes from the index, else sizes of the listed blobs.

    A store whose index or listing cannot be read holds nothing rewardable (fail closed): the
    run goes on, says so once here, and every round reports the failure as its error.
    """
    try:
        if store.has_index():
            return sum(store.index_sizes().values())
        hashes = store.candidates()
    except (WorldError, OSError) as err:
        warn(f"store {store.root}: cannot tell what the node must hold ({err}); rewardable_bytes is 0")
        return 0
    total = 0
    for content_hash in hashes:
        with contextlib.suppress(OSError, WorldError):
            total += store.blob_path(content_hash).stat().st_size
    return total


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
        return None if stop else self.start + history_index * self.tick


class WallClock:
    """Real time: the first round now, then one every tick (no burst after a slow round)."""

    def __init__(self, tick_ms: int) -> None:
        self.tick_s = tick_ms / 1000
        self.due: float | None = None

    def next_round(self, _history_index: int, stop: StopFlag) -> int | None:
        now = time.monotonic()
        if self.due is None or now - self.due > self.tick_s:
            self.due = now  # the first round, or a whole tick behind: restart the grid from now
        while not stop and (left := self.due - time.monotonic()) > 0:
            time.sleep(min(left, _WALL_SLEEP_SLICE_S))
        if stop:
            return None
        self.due += self.tick_s
        return time.time_ns() // 1_000_000


# --- messages ------------------------------------------------------------------------------------


def warn(message: str) -> None:
    logs.warn(message)


# --- epochs --------------------------------------------------------------------------------------


class EpochLog:
    """epochs.jsonl of this run; the closing round's log record holds the authoritative copy."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if path.exists():
            repair_tail(path)

    def append(self, report: dict[str, Any]) -> None:
        append_jsonl(self.path, report)


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one JSON line durably (epoch reports are rare, so fsync costs nothing)."""
    with open(path, "ab") as handle:
        handle.write(json.dumps(record, separators=(",", ":")).encode("utf-8") + b"\n")
        handle.flush()
        os.fsync(handle.fileno())


def _complete_previous_epoch_log(recovered: Recovered) -> None:
    """A kill between a round's commit and its epochs.jsonl line: write the line now, once."""
    record, log = recovered.last_record, recovered.log_path
    report = (record or {}).get("epoch_report")
    if report is None or log is None:
        return
    epochs = log.parent / EPOCHS_LOG
    last = repair_tail(epochs) if epochs.exists() else None
    if last is None or last.get("epoch") != report.get("epoch"):
        append_jsonl(epochs, report)


def _resume_epoch(recovered: Recovered, epoch_rounds: int) -> reward.EpochAccumulator:
    """Continue the open epoch from the last durable record, so restarts do not split epochs."""
    next_round = recovered.state.rounds_executed + 1
    saved = (recovered.last_record or {}).get("epoch")
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
    totals: RunTotals = field(default_factory=RunTotals)


def run_audit(settings: Settings, run_dir: Path, hooks: RunHooks | None = None) -> dict[str, Any]:
    """Run the configured rounds against the store and return the summary (also in summary.json).

    Raises `UsageError` for bad input found at run time (missing store root, corrupt or locked
    state file); nothing has been written to the state file then.
    """
    hooks = hooks or RunHooks()
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = resolve_settings(settings, run_dir, hooks)
    rt = settings.runtime
    store = _open_store(Path(rt.storage_root or ""), settings.probe.chunk_cache_dir)
    _check_cache_dir(settings)
    auditor = _make_auditor(settings, store, hooks)
    state_path = Path(rt.state_path or "")
    started = time.monotonic()
    with StateLock(state_path):
        recovered = recover(state_path)
        for note in recovered.notes:
            warn(note)
        _complete_previous_epoch_log(recovered)
        run = _start(settings, run_dir, auditor, store, recovered, hooks)
        try:
            with _signals_handled(run.stop):
                _loop(run)
        finally:
            run.journal.close()
            run.progress.close()
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
    write_atomic(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2).encode("utf-8") + b"\n")
    print(format_summary(summary), flush=True)
    return summary


def _start(
    settings: Settings,
    run_dir: Path,
    auditor: Auditor,
    store: LocalCasStore,
    recovered: Recovered,
    hooks: RunHooks,
) -> _Run:
    rt = settings.runtime
    journal = RoundJournal(Path(rt.state_path or ""), run_dir / ROUNDS_LOG)
    journal.open()
    _warn_if_empty(store)
    return _Run(
        settings=settings,
        run_dir=run_dir,
        auditor=auditor,
        journal=journal,
        epochs=EpochLog(run_dir / EPOCHS_LOG),
        state=recovered.state,
        epoch=_resume_epoch(recovered, rt.epoch_rounds),
        rewardable=rewardable_bytes(store),
        hooks=hooks,
        stop=StopFlag(),
        progress=Progress(rt.progress, rt.rounds),
    )


def _warn_if_empty(store: LocalCasStore) -> None:
    """An empty store proves nothing: say so loudly (upstream would write a seed blob into it)."""
    try:
        empty = len(store.candidates()) == 0
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
    clock = VirtualClock(rt.start_unix_ms, rt.tick_ms) if rt.clock == "virtual" else WallClock(rt.tick_ms)
    while rt.rounds == 0 or run.totals.rounds < rt.rounds:
        observed = clock.next_round(run.state.rounds_executed, run.stop)
        if observed is None:
            break
        _one_round(run, observed)
        run.progress.update(run.totals, run.state)
        if run.stop:
            break
    run.progress.update(run.totals, run.state, force=True)


def _one_round(run: _Run, observed_ms: int) -> None:
    """Run, commit (write-ahead), then report a round; hooks see only durable rounds."""
    if run.hooks.before_round is not None:
        run.hooks.before_round(run.totals.rounds + 1, observed_ms)
    report, new_state = run.auditor.run_round(run.state, observed_ms)
    epoch_rounds = run.settings.runtime.epoch_rounds
    run.epoch = run.epoch.add(report)
    record = {**report.to_dict(), "epoch": run.epoch.to_dict()}
    closed = None
    if reward.is_epoch_end(report.round_index, epoch_rounds):
        closed = reward.epoch_report(run.epoch, run.rewardable, epoch_rounds)
        record["epoch_report"] = closed
    run.journal.commit(record, new_state)
    run.state = new_state
    run.totals.add(report)
    if closed is not None:
        run.epochs.append(closed)
        run.totals.epochs_closed += 1
        run.epoch = reward.start_epoch(report.round_index + 1, epoch_rounds)
    if run.hooks.on_round is not None:
        run.hooks.on_round(report)
