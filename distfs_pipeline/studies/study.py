"""One study job: a scenario's faults on a scratch store, a normal audit run, and what it cost.

Why: an operator must pick `policy.*` by evidence. Backoff saves checks on a broken store but delays
noticing a repair; a multiplier that backs off harder on HASH_MISMATCH checks less exactly when data
is proven bad. A study job makes those trade-offs numbers:

- detection latency: from a fault appearing to the first failing check of a faulted blob (rounds
  and ms; an episode never detected counts its whole duration, and `undetected_episodes` says so);
- recovery latency: from a repair to the round by which every repaired blob has passed a check
  again (backoff lengthens it; censored the same way);
- checks spent, checks spent on data already known bad (a blob whose last check failed), and
  rounds skipped by backoff;
- the objective a sweeper minimizes: `detection_latency_ms + objective_weight_recovery *
  recovery_latency_ms + objective_weight_checks * checks_spent` (weights from the scenario).

The audit itself is `runner.run_audit`, unchanged, driven through its hooks; the metrics come only
from its round reports (`checked_hashes`, `failures`) and the injector's fault events. The job
writes `result.json` in its run directory, also when it fails (status `failed` and the error), so a
sweep summary never loses a job (see `sweep`).
"""

from __future__ import annotations

import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distfs_pipeline.core.errors import UsageError, WorldError
from distfs_pipeline.core.models import RoundReport
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.pipeline import demo
from distfs_pipeline.pipeline.runner import DEFAULT_STATE_FILE, RunHooks, run_audit
from distfs_pipeline.pipeline.validation import Settings
from distfs_pipeline.studies.results import RESULT_FILE, job_identity, write_json_atomic
from distfs_pipeline.studies.scenarios import (
    FaultEvent,
    FaultInjector,
    FaultSpec,
    copy_store,
    healthy_copy,
    specs_from_settings,
)

SCRATCH_STORE = "scenario-store"
CHUNK_CACHE = "chunk-cache"


class StudyJobFailed(RuntimeError):
    """A study job failed inside a multirun: a plain exception, so Hydra records the job as failed
    and runs the others (a `UsageError` would exit the whole sweep with status 2)."""


# ---------------------------------------------------------------------- metrics (pure)


@dataclass
class Episode:
    """One stretch of rounds during which a fault was present (flapping faults have several)."""

    fault: int
    kind: str
    hashes: tuple[str, ...]
    start: int  # 0-based position of the first faulty round in the run's reports
    start_ms: int
    end: int | None = None  # position of the repair round (exclusive end), None: to the end
    end_ms: int | None = None
    detected_at: int | None = None
    detection_rounds: int = 0
    detection_ms: int = 0
    recovered_at: int | None = None
    recovery_rounds: int | None = None
    recovery_ms: int | None = None


@dataclass
class StudyMetrics:
    """What one scenario run under one policy cost and how fast it noticed (see module docstring)."""

    rounds: int = 0
    rounds_skipped_by_backoff: int = 0
    checks_spent: int = 0
    failed_checks: int = 0
    checks_known_bad: int = 0
    checks_on_faulty_data: int = 0
    fault_episodes: int = 0
    undetected_episodes: int = 0
    detection_latency_rounds: float | None = None
    detection_latency_ms: float | None = None
    detection_latency_max_ms: int | None = None
    repairs: int = 0
    unrecovered_repairs: int = 0
    recovery_latency_rounds: float | None = None
    recovery_latency_ms: float | None = None
    episodes: list[Episode] = field(default_factory=list)

    def scalars(self) -> dict[str, Any]:
        """Every metric but the per-episode detail (one CSV row)."""
        return {k: v for k, v in asdict(self).items() if k != "episodes"}


def episodes_from_events(events: Sequence[FaultEvent]) -> list[Episode]:
    """Pair each fault's `inject` with its next `repair` (round numbers are 1-based positions)."""
    open_by_fault: dict[int, Episode] = {}
    episodes: list[Episode] = []
    for event in events:
        position = event.round_number - 1
        if event.action == "inject":
            episode = Episode(event.fault, event.kind.value, event.hashes, position, event.observed_ms)
            open_by_fault[event.fault] = episode
            episodes.append(episode)
        elif event.fault in open_by_fault:
            episode = open_by_fault.pop(event.fault)
            episode.end, episode.end_ms = position, event.observed_ms
    return episodes


def _failed_hashes(report: RoundReport) -> set[str]:
    return {f.content_hash for f in report.failures}


def _passed_hashes(report: RoundReport) -> set[str]:
    return set(report.checked_hashes) - _failed_hashes(report)


def _detect(episode: Episode, reports: Sequence[RoundReport], run_end_ms: int) -> None:
    """First failing check of a faulted blob while the fault is present; else censored."""
    stop = episode.end if episode.end is not None else len(reports)
    targets = set(episode.hashes)
    for position in range(episode.start, stop):
        if _failed_hashes(reports[position]) & targets:
            episode.detected_at = position
            episode.detection_rounds = position - episode.start
            episode.detection_ms = reports[position].observed_at_unix_ms - episode.start_ms
            return
    end_ms = episode.end_ms if episode.end_ms is not None else run_end_ms
    episode.detection_rounds = stop - episode.start
    episode.detection_ms = end_ms - episode.start_ms


def _recover(
    episode: Episode, next_start: int | None, reports: Sequence[RoundReport], run_end_ms: int
) -> None:
    """Round by which every repaired blob passed a check again; censored at the next onset or run end."""
    if episode.end is None or episode.end_ms is None:
        return
    stop = next_start if next_start is not None else len(reports)
    pending = set(episode.hashes)
    for position in range(episode.end, stop):
        pending -= _passed_hashes(reports[position])
        if not pending:
            episode.recovered_at = position
            episode.recovery_rounds = position - episode.end
            episode.recovery_ms = reports[position].observed_at_unix_ms - episode.end_ms
            return
    stop_ms = reports[stop].observed_at_unix_ms if stop < len(reports) else run_end_ms
    episode.recovery_rounds = stop - episode.end
    episode.recovery_ms = stop_ms - episode.end_ms


def _check_costs(reports: Sequence[RoundReport], episodes: Sequence[Episode]) -> tuple[int, int]:
    """(checks of blobs whose last check had failed, checks of blobs while actually faulty)."""
    known_bad: set[str] = set()
    on_known_bad = on_faulty = 0
    for position, report in enumerate(reports):
        faulty = {
            h
            for e in episodes
            if e.start <= position < (e.end if e.end is not None else len(reports))
            for h in e.hashes
        }
        on_known_bad += sum(1 for h in report.checked_hashes if h in known_bad)
        on_faulty += sum(1 for h in report.checked_hashes if h in faulty)
        known_bad = (known_bad - _passed_hashes(report)) | _failed_hashes(report)
    return on_known_bad, on_faulty


def _mean(values: Sequence[int]) -> float | None:
    return sum(values) / len(values) if values else None


def compute_metrics(
    reports: Sequence[RoundReport], events: Sequence[FaultEvent], tick_ms: int
) -> StudyMetrics:
    """All study metrics from the run's round reports (in order) and the injector's events."""
    run_end_ms = reports[-1].observed_at_unix_ms + tick_ms if reports else 0
    episodes = episodes_from_events(events)
    for number, episode in enumerate(episodes):
        _detect(episode, reports, run_end_ms)
        later = [e.start for e in episodes[number + 1 :] if e.fault == episode.fault]
        _recover(episode, later[0] if later else None, reports, run_end_ms)
    known_bad, on_faulty = _check_costs(reports, episodes)
    repaired = [e for e in episodes if e.end is not None]
    return StudyMetrics(
        rounds=len(reports),
        rounds_skipped_by_backoff=sum(1 for r in reports if r.skipped_by_backoff),
        checks_spent=sum(r.total_checks for r in reports),
        failed_checks=sum(r.failed_checks for r in reports),
        checks_known_bad=known_bad,
        checks_on_faulty_data=on_faulty,
        fault_episodes=len(episodes),
        undetected_episodes=sum(1 for e in episodes if e.detected_at is None),
        detection_latency_rounds=_mean([e.detection_rounds for e in episodes]),
        detection_latency_ms=_mean([e.detection_ms for e in episodes]),
        detection_latency_max_ms=max((e.detection_ms for e in episodes), default=None),
        repairs=len(repaired),
        unrecovered_repairs=sum(1 for e in repaired if e.recovered_at is None),
        recovery_latency_rounds=_mean([e.recovery_rounds or 0 for e in repaired]),
        recovery_latency_ms=_mean([e.recovery_ms or 0 for e in repaired]),
        episodes=episodes,
    )


def objective(metrics: StudyMetrics, weight_checks: float, weight_recovery: float) -> float:
    """What a sweeper minimizes; a missing latency (no fault, no repair) contributes 0."""
    return (
        (metrics.detection_latency_ms or 0.0)
        + weight_recovery * (metrics.recovery_latency_ms or 0.0)
        + weight_checks * metrics.checks_spent
    )


# ---------------------------------------------------------------------- the job (I/O)


@dataclass
class PreparedStore:
    """The store a study audits, and where it came from."""

    root: Path
    source: Path
    blobs: int
    dropped_unhealthy: list[str] = field(default_factory=list)


def check_horizon(settings: Settings) -> None:
    """Refuse a schedule the run cannot show: every fault must start within `runtime.rounds`."""
    rounds = settings.runtime.rounds
    if rounds == 0:
        raise UsageError("runtime.rounds: a scenario needs a finite run (rounds > 0)")
    for number, fault in enumerate(settings.scenario.faults):
        if fault.at_round > rounds:
            raise UsageError(
                f"scenario.faults[{number}].at_round: {fault.at_round} is after the last round "
                f"(runtime.rounds={rounds})"
            )


def prepare_store(settings: Settings, run_dir: Path) -> PreparedStore:
    """The scratch copy the faults will hit: a study never writes the audited store itself.

    (Faulting the store in place was an option once; a kill -9 mid-study would have left a user's
    store damaged, so it is gone: a fault always lands on a copy in the job dir.)
    """
    scenario, root = settings.scenario, settings.runtime.storage_root
    source = Path(root).absolute() if root is not None else demo.ensure_demo_store()
    scratch = run_dir / SCRATCH_STORE
    if scratch.exists():
        raise UsageError(f"{scratch} exists: a study starts fresh, use a new hydra.run.dir")
    if scenario.baseline == "as_is":
        copy_store(source, scratch)
        return PreparedStore(scratch, source, len(_candidates(scratch)))
    kept, dropped = healthy_copy(source, scratch)
    return PreparedStore(scratch, source, kept, dropped)


def _candidates(root: Path) -> Sequence[str]:
    try:
        return LocalCasStore(root).candidates()
    except WorldError as err:
        raise UsageError(f"runtime.storage_root: cannot list the store: {err}") from None


def study_settings(settings: Settings, run_dir: Path, store: PreparedStore) -> Settings:
    """The run's settings: the prepared store, a fresh state file and chunk cache in the job dir, and
    group commit (`runtime.durability=interval`) since nothing of a study must survive a power loss.

    A study never resumes, or writes to, the user's own state file or chunk cache.
    """
    runtime = settings.runtime.model_copy(
        update={
            "storage_root": str(store.root),
            "state_path": str(run_dir / DEFAULT_STATE_FILE),
            # A scratch store and a state in the job dir need no power-loss durability (issue 11):
            # group commit; a killed job still loses nothing it wrote.
            "durability": "interval",
        }
    )
    probe = settings.probe.model_copy(update={"chunk_cache_dir": str(run_dir / CHUNK_CACHE)})
    return settings.model_copy(update={"runtime": runtime, "probe": probe})


def _injector(settings: Settings, store: PreparedStore, faults: list[FaultSpec]) -> FaultInjector:
    probe = settings.probe
    return FaultInjector(
        store.root,
        faults,
        default_delay_ms=probe.challenge_ttl_ms + probe.allowed_clock_skew_ms + 1,
        chunk_cache_dir=Path(probe.chunk_cache_dir) if probe.chunk_cache_dir else None,
    )


def run_study(settings: Settings, run_dir: Path) -> dict[str, Any]:
    """Prepare the store, run the audit with the fault hooks, and return the result record."""
    run_dir = Path(run_dir).absolute()
    run_dir.mkdir(parents=True, exist_ok=True)
    check_horizon(settings)
    store = prepare_store(settings, run_dir)
    settings = study_settings(settings, run_dir, store)
    injector = _injector(
        settings, store, specs_from_settings(f.model_dump() for f in settings.scenario.faults)
    )
    reports: list[RoundReport] = []
    hooks = RunHooks(
        before_round=injector.before_round,
        response_delay_ms=injector.response_delay_ms,
        on_round=reports.append,
        store_root=store.root,
    )
    summary = run_audit(settings, run_dir, hooks)
    metrics = compute_metrics(reports, injector.events, settings.runtime.tick_ms)
    return _completed_record(settings, store, metrics, summary)


def _completed_record(
    settings: Settings, store: PreparedStore, metrics: StudyMetrics, summary: dict[str, Any]
) -> dict[str, Any]:
    scenario = settings.scenario
    value = objective(metrics, scenario.objective_weight_checks, scenario.objective_weight_recovery)
    return {
        "status": "completed",
        "scenario": scenario.name,
        "metrics": metrics.scalars(),
        "objective": value,
        "objective_formula": (
            f"detection_latency_ms + {scenario.objective_weight_recovery} * recovery_latency_ms"
            f" + {scenario.objective_weight_checks} * checks_spent"
        ),
        "episodes": [asdict(e) for e in metrics.episodes],
        "store": {
            "audited": str(store.root),
            "source": str(store.source),
            "blobs": store.blobs,
            "dropped_unhealthy": store.dropped_unhealthy,
        },
        "summary": {k: summary.get(k) for k in ("checks_spent", "failure_reasons", "pass_ratio")},
    }


def hydra_context() -> dict[str, Any]:
    """Overrides, group choices and multirun mode of the current Hydra job (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return {"overrides": [], "choices": {}, "multirun": False}
    hydra = HydraConfig.get()
    identity = job_identity(hydra)
    return {**identity, "multirun": hydra.mode == RunMode.MULTIRUN}


def write_result(run_dir: Path, record: dict[str, Any]) -> Path:
    """`result.json` in the job dir (a sweep summary may read it at any moment)."""
    path = Path(run_dir) / RESULT_FILE
    write_json_atomic(path, record)
    return path


def run_scenario_job(settings: Settings, cfg: Any, run_dir: Path) -> float:
    """The app's scenario seam: run the study, write `result.json`, return the objective.

    On any error `result.json` still gets status `failed` with the error and its traceback. In a
    multirun the error is re-raised as `StudyJobFailed`, so Hydra records this job as failed and
    runs the others; in a single run it propagates as it is (a `UsageError` exits 2).
    """
    del cfg  # the validated settings carry everything; Hydra's node is read via HydraConfig
    context = hydra_context()
    base = {"scenario": settings.scenario.name, "job": context.get("job")}
    base |= {"overrides": context["overrides"], "choices": context["choices"]}
    try:
        record = {**base, **run_study(settings, run_dir)}
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
        write_result(
            run_dir, {**base, "status": "failed", "error": error, "traceback": traceback.format_exc()}
        )
        if context["multirun"]:
            raise StudyJobFailed(error) from exc
        raise
    write_result(run_dir, record)
    if not context["multirun"]:  # a sweep prints its own table of every job at the end
        print(format_study(record), flush=True)
    return float(record["objective"])


def format_study(record: dict[str, Any]) -> str:
    """A study job's answer for people: detection, recovery, cost and the objective, after the
    audit summary. A latency whose episode never ended within the run is a lower bound: `>=`."""
    m = record["metrics"]
    rows = [
        ("detection", _latency(m["detection_latency_ms"], m["detection_latency_rounds"],
                               m["undetected_episodes"], m["fault_episodes"], "fault(s) not noticed")),
        ("recovery", _latency(m["recovery_latency_ms"], m["recovery_latency_rounds"],
                              m["unrecovered_repairs"], m["repairs"], "repair(s) not seen passing")),
        ("checks", f"{m['checks_spent']} spent, {m['checks_known_bad']} on blobs known bad, "
                   f"{m['checks_on_faulty_data']} on faulty data"),
        ("skipped", f"{m['rounds_skipped_by_backoff']} rounds, by backoff"),
        ("objective", f"{record['objective']:.0f} = {record['objective_formula']}"),
    ]  # fmt: skip
    width = max(len(name) for name, _ in rows)
    lines = [f"distfs_pipeline study: scenario {record['scenario']}"]
    lines += [f"  {name:<{width}}  {value}" for name, value in rows]
    return "\n".join(lines)


def _latency(ms: float | None, rounds: float | None, censored: int, of: int, what: str) -> str:
    if ms is None:
        return "- (nothing to measure)"
    bound = ">= " if censored else ""
    note = f"; {censored} of {of} {what} within the run (counted to its end)" if censored else ""
    return f"{bound}{ms:.0f} ms ({bound}{rounds:.1f} rounds), mean of {of}{note}"
