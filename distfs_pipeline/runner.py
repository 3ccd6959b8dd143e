"""The run loop: owns the clock, persistence, the round and epoch logs, the summary and progress.

Why a separate layer: the auditor runs one round and knows nothing about time or files; this module
decides when rounds happen, makes each one durable through `state.RoundJournal` (write-ahead round
log, then the state file), and turns the run into the files an operator reads.

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
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, Any, TextIO

from . import demo, reward
from .auditor import Auditor
from .errors import DistributedValidationFailed, UsageError, WorldError
from .models import CursorState, RoundReport
from .state import ROUND_LOG_NAME, Recovered, RoundJournal, StateLock, recover, repair_tail, write_atomic
from .store import LocalCasStore
from .validation import Settings

ROUNDS_LOG = ROUND_LOG_NAME
EPOCHS_LOG = "epochs.jsonl"
SUMMARY_FILE = "summary.json"
DEFAULT_STATE_FILE = "probe-state.json"
_PROGRESS_INTERVAL_S = 0.1
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


def _open_store(root: Path) -> LocalCasStore:
    """The store to audit; a missing root is the user's key, not an empty store."""
    if not root.is_dir():
        problem = "is not a directory" if root.exists() else "does not exist"
        raise UsageError(f"runtime.storage_root: {root} {problem}")
    return LocalCasStore(root)


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


@contextlib.contextmanager
def _signals_handled(stop: StopFlag) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be set from the main thread (e.g. a launcher's worker)
        return
    previous = {sig: signal.signal(sig, stop.handle) for sig in (signal.SIGINT, signal.SIGTERM)}
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


# --- this run's totals and progress --------------------------------------------------------------


@dataclass
class RunTotals:
    """What this run did (the state file holds the cumulative history)."""

    rounds: int = 0
    first_round: int | None = None
    last_round: int | None = None
    checks: int = 0
    passed: int = 0
    failed: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    skipped_by_backoff: int = 0
    error_rounds: int = 0
    max_blob_count: int = 0
    epochs_closed: int = 0

    def add(self, report: RoundReport) -> None:
        self.rounds += 1
        self.first_round = self.first_round or report.round_index
        self.last_round = report.round_index
        self.checks += report.total_checks
        self.passed += report.passed_checks
        self.failed += report.failed_checks
        for key, count in report.failure_reasons.items():
            self.failure_reasons[key] = self.failure_reasons.get(key, 0) + count
        self.skipped_by_backoff += int(report.skipped_by_backoff)
        self.error_rounds += int(report.error is not None)
        self.max_blob_count = max(self.max_blob_count, report.blob_count)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rounds": self.rounds,
            "first_round": self.first_round,
            "last_round": self.last_round,
            "checks_spent": self.checks,
            "passed_checks": self.passed,
            "failed_checks": self.failed,
            "failure_reasons": dict(sorted(self.failure_reasons.items())),
            "pass_ratio": reward.pass_ratio(self.passed, self.checks),
            "rounds_skipped_by_backoff": self.skipped_by_backoff,
            "rounds_with_error": self.error_rounds,
            "epochs_closed": self.epochs_closed,
        }


class Progress:
    """A throttled one-line display on stderr for long runs; silent when not wanted."""

    def __init__(self, mode: str, planned: int, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = mode == "always" or (mode == "auto" and _isatty(self.stream))
        self.planned = planned
        self.started = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False

    def update(self, totals: RunTotals, state: CursorState, force: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not force and now - self._last_draw < _PROGRESS_INTERVAL_S):
            return
        self._last_draw = now
        of = f"/{self.planned}" if self.planned else ""
        ratio = reward.pass_ratio(totals.passed, totals.checks)
        shown = f"{ratio:.1%}" if ratio is not None else "-"
        self.stream.write(
            f"\rround {totals.rounds}{of} (#{state.rounds_executed})  checks {totals.checks}  "
            f"pass {shown}  failed {totals.failed}  skipped {totals.skipped_by_backoff}  "
            f"{now - self.started:.1f}s "
        )
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


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
    store = _open_store(Path(rt.storage_root or ""))
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
    summary = build_summary(run, recovered, time.monotonic() - started)
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


# --- summary -------------------------------------------------------------------------------------


def build_summary(run: _Run, recovered: Recovered, elapsed_s: float) -> dict[str, Any]:
    """summary.json: resolved config, what this run did, and the cumulative state."""
    rt, state, totals = run.settings.runtime, run.state, run.totals
    no_data = totals.checks == 0
    return {
        "config": run.settings.model_dump(mode="json"),
        "store_root": rt.storage_root,
        "state_path": rt.state_path,
        "run_dir": str(run.run_dir),
        "blob_count": totals.max_blob_count,
        "rewardable_bytes": run.rewardable,
        "no_data": no_data,
        "no_data_reason": _no_data_reason(totals) if no_data else None,
        "stopped_by": f"signal {run.stop.signal_name}" if run.stop else "rounds",
        "recovered_round": recovered.state.rounds_executed if recovered.rolled_forward else None,
        "elapsed_s": round(elapsed_s, 3),
        **totals.to_dict(),
        "cumulative": {
            "rounds_executed": state.rounds_executed,
            "checks": state.cumulative_total_checks,
            "passed_checks": state.cumulative_passed_checks,
            "failed_checks": state.cumulative_failed_checks,
            "failure_reasons": dict(sorted(state.cumulative_failure_reasons.items())),
            "pass_ratio": reward.pass_ratio(state.cumulative_passed_checks, state.cumulative_total_checks),
            "rounds_skipped_by_backoff": state.cumulative_backoff_skipped_rounds,
        },
        "final_state": state.to_dict(),
        "outputs": {name: str(run.run_dir / name) for name in (ROUNDS_LOG, EPOCHS_LOG, SUMMARY_FILE)},
    }


def _no_data_reason(totals: RunTotals) -> str:
    if totals.rounds == 0:
        return "no round ran"
    if totals.max_blob_count == 0 and totals.skipped_by_backoff < totals.rounds:
        return "empty store"
    return "every round was skipped by backoff"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_summary(summary: dict[str, Any]) -> str:
    """The table printed at the end of a run (stdout), for people; summary.json is for programs."""
    reasons = summary["failure_reasons"] or {}
    cumulative = summary["cumulative"]
    rows = [
        ("store", f"{summary['store_root']} ({summary['blob_count']} blobs to hold)"),
        ("state", f"{summary['state_path']} (rounds_executed {cumulative['rounds_executed']})"),
        ("run dir", summary["run_dir"]),
        ("rounds", _rounds_text(summary)),
        ("checks", _checks_text(summary["checks_spent"], summary["passed_checks"], summary["pass_ratio"])),
    ]
    rows += [(f"  {key}", str(count)) for key, count in sorted(reasons.items())]
    rows += [
        (
            "cumulative",
            _checks_text(cumulative["checks"], cumulative["passed_checks"], cumulative["pass_ratio"]),
        ),
        ("epochs closed", str(summary["epochs_closed"])),
        ("stopped by", summary["stopped_by"]),
    ]
    if summary["no_data"]:
        rows.append(("NO DATA", summary["no_data_reason"]))
    width = max(len(name) for name, _ in rows)
    lines = ["distfs_pipeline audit summary", *(f"  {name:<{width}}  {value}" for name, value in rows)]
    return "\n".join(lines)


def _rounds_text(summary: dict[str, Any]) -> str:
    span = f" (#{summary['first_round']}..#{summary['last_round']})" if summary["rounds"] else ""
    return (
        f"{summary['rounds']}{span}, {summary['rounds_skipped_by_backoff']} skipped by backoff, "
        f"{summary['rounds_with_error']} with a round-level error"
    )


def _checks_text(total: int, passed: int, ratio: float | None) -> str:
    return f"{total} ({passed} passed, {total - passed} failed, pass ratio {_pct(ratio)})"
