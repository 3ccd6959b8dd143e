"""The multirun summary: every job's result in one table, one CSV, one JSON and one plot.

Registered in `conf/config.yaml` under `hydra.callbacks`, so every `-m` sweep gets it, whatever the
launcher (basic, joblib, Ray, SLURM via submitit) or sweeper (basic, Optuna):

- `on_job_start` / `on_job_end` run where the job runs (a joblib or Ray worker too) and keep the
  job's `result.json` current: `running` first, then `completed` or `failed` with the error. A
  study job writes its metrics there itself (`study`); a plain audit job gets the numbers of its
  run summary. A job whose worker died stays `running` and is listed as failed.
- `on_multirun_end` runs in the driver and writes, into the sweep directory, `sweep_summary.csv`,
  `sweep_summary.json` and `sweep_summary.png` (checks spent against detection and against
  recovery latency, the Pareto front of each scenario marked), then prints the table.

Why also at interpreter exit: Hydra's sweepers re-raise the first failed job's error after its
batch, and then `on_multirun_end` never runs. The summary is what tells which job failed and why,
so the driver writes it from an `atexit` hook in that case (exactly once either way).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.ops.args import OneLineArgumentParser
from distfs_pipeline.studies.results import READ_CAP, RESULT_FILE, job_identity, read_json, write_json_atomic

SUMMARY_CSV = "sweep_summary.csv"
SUMMARY_JSON = "sweep_summary.json"
SUMMARY_PNG = "sweep_summary.png"
INTERRUPTED = "interrupted"
MAX_JOB_DEPTH = 8  # job dirs are `<sweep dir>/<subdir>`; deeper trees are not searched for jobs
DIED = (
    "job did not finish: no end was recorded (its worker died or was killed, e.g. when the sweep "
    "ended on another job's failure)"
)

# Columns of the CSV and the printed table, in order; metric columns follow study.StudyMetrics.
ID_COLUMNS = ("job", "status", "scenario", "overrides", "objective")
METRIC_COLUMNS = (
    "checks_spent",
    "detection_latency_ms",
    "detection_latency_rounds",
    "undetected_episodes",
    "recovery_latency_ms",
    "recovery_latency_rounds",
    "unrecovered_repairs",
    "checks_known_bad",
    "checks_on_faulty_data",
    "rounds_skipped_by_backoff",
    "failed_checks",
    "fault_episodes",
    "repairs",
    "rounds",
    "pass_ratio",
)
FRONT_COLUMNS = ("pareto_detection", "pareto_recovery")
# Plain audit jobs (scenario none): summary.json key -> metric column.
_AUDIT_METRICS = {
    "checks_spent": "checks_spent",
    "failed_checks": "failed_checks",
    "rounds_skipped_by_backoff": "rounds_skipped_by_backoff",
    "rounds": "rounds",
    "pass_ratio": "pass_ratio",
}


# ---------------------------------------------------------------------- job records


def end_record(previous: Mapping[str, Any] | None, job_return: JobReturn) -> dict[str, Any]:
    """The job's final record: what the job wrote itself, plus Hydra's verdict on it."""
    record = dict(previous or {})
    if job_return.status == JobStatus.COMPLETED:
        value = job_return._return_value
        record.setdefault("metrics", {})
        if record.get("status") not in ("failed", INTERRUPTED):  # a stop request cut it short
            record["status"] = "completed"
        if record.get("objective") is None and isinstance(value, int | float):
            record["objective"] = float(value)
        return record
    error = job_return._return_value
    record["status"] = "failed"
    # A compact error (the app's JobFailed) is already the one line a user should read.
    text = str(error) if isinstance(error, CompactHydraException) else f"{type(error).__name__}: {error}"
    record.setdefault("error", text)
    return record


def mark_interrupted(job_dir: Path, signal_name: str) -> None:
    """A job cut short (or never started) by a stop request: `interrupted`, never `completed`,
    with what it did (a study's metrics, or an audit's run totals)."""
    record = read_json(job_dir / RESULT_FILE) or {}
    record["status"] = INTERRUPTED
    record["error"] = f"interrupted by {signal_name}"
    if not record.get("metrics"):
        record["metrics"] = _audit_metrics(job_dir)
    write_json_atomic(job_dir / RESULT_FILE, record)


def _audit_metrics(job_dir: Path) -> dict[str, Any]:
    """For a plain audit job: the run's totals from its summary.json (if it got that far)."""
    summary = read_json(job_dir / "summary.json") or {}
    return {column: summary[key] for key, column in _AUDIT_METRICS.items() if key in summary}


class ResultNotWritten(CompactHydraException):
    """A job's `result.json` could not be written: the job counts as failed (Hydra reports a
    callback's exception only as a warning, so the job's return says it instead)."""


class SweepSummary(Callback):
    """Hydra callback: per-job `result.json`, and the sweep summary files and plot at the end."""

    def __init__(self, plot: bool = True, print_table: bool = True) -> None:
        self.plot = plot
        self.print_table = print_table
        self._pending: Path | None = None
        self.not_written: str | None = None  # what the last `write` could not write (one line)
        self._expected: list[Path] | None = None

    def expect_jobs(self, job_dirs: Sequence[Path]) -> None:
        """The driver's list of this sweep's job dirs (from its pre-flight): the summary lists
        exactly these, so a `result.json` planted in another dir of a shared sweep dir is not
        taken for a job, and a job dir without a record is a failed row. Without it (a sweep the
        pre-flight could not enumerate, or the `sweep` command), every record under the dir."""
        self._expected = list(job_dirs) or None

    # -- in the job's process (local, joblib worker, Ray worker, SLURM node)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Mark the job `running`, so a job whose worker dies still shows up."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        with contextlib.suppress(OSError):  # refused again at the end, which fails the job (below)
            write_json_atomic(job_dir / RESULT_FILE, {**job_identity(config.hydra), "status": "running"})

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """Record the outcome next to whatever the job itself wrote (a study's metrics)."""
        if config.hydra.mode != RunMode.MULTIRUN:
            return
        job_dir = Path(config.hydra.runtime.output_dir)
        record = end_record(read_json(job_dir / RESULT_FILE), job_return)
        record.update(job_identity(config.hydra))
        if not record.get("metrics") and record["status"] == "completed":
            record["metrics"] = _audit_metrics(job_dir)
        try:
            write_json_atomic(job_dir / RESULT_FILE, record)
        except OSError as err:  # a link planted in a shared sweep dir, a full disk
            if job_return.status == JobStatus.COMPLETED:  # the launcher and the driver see it failed
                job_return.status = JobStatus.FAILED
                job_return._return_value = ResultNotWritten(
                    f"hydra.sweep.dir: job result not written: {safefile.describe(err)}"
                )

    # -- in the driver

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        """Arm the exit-time fallback (see the module docstring)."""
        self._pending = Path(str(config.hydra.sweep.dir)).absolute()
        atexit.register(self._write_if_pending)

    def prepare_for_end(self) -> None:
        """The launcher's word that a core is idle until the last job ends (joblib's last wave:
        see `launching.prepare_for_end`): import what the plot needs now, not after that job."""
        if self.plot:
            import_plotting()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = self._pending or Path(str(config.hydra.sweep.dir)).absolute()
        self._pending = None
        self.write(sweep_dir)

    def _write_if_pending(self) -> None:
        if self._pending is not None:
            sweep_dir, self._pending = self._pending, None
            print(f"sweep stopped by a failed job; summary of what ran: {sweep_dir / SUMMARY_CSV}")
            self.write(sweep_dir)

    def write(self, sweep_dir: Path) -> list[dict[str, Any]]:
        """Write the summary files (and plot) for `sweep_dir`, print the table; returns the rows.

        Never raises (Hydra would turn it into a warning and exit 0): a file that could not be
        written is one line on stderr and kept in `not_written`, which the driver turns into its
        exit status (see `app._multirun`)."""
        rows, missing = summarize(sweep_dir, self._expected, plot=self.plot)
        if self.print_table and rows:
            print(format_table(rows), flush=True)
        if missing:
            self.not_written = not_written_message(missing)
            print(f"distfs_pipeline: error: {self.not_written}", file=sys.stderr, flush=True)
        return rows


# ---------------------------------------------------------------------- aggregation


def collect_records(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, record) of every job under `sweep_dir`, in job order."""
    found = []
    pending = [(sweep_dir, 0)]
    while pending:  # links to dirs are not entered; hidden dirs (.hydra/) are not jobs
        top, depth = pending.pop()
        if os.path.lexists(top / RESULT_FILE):
            found.append((top, _read_record(top / RESULT_FILE)))
        if depth == MAX_JOB_DEPTH:
            continue
        with contextlib.suppress(OSError), os.scandir(top) as entries:
            for entry in entries:
                skip = entry.name.startswith(".") or entry.name == RESULT_FILE
                if not skip and entry.is_dir(follow_symlinks=False):
                    pending.append((Path(entry.path), depth + 1))
    return sorted(found, key=lambda item: (_job_number(item[1]), str(item[0])))


def _read_record(path: Path) -> dict[str, Any]:
    """A job's record; one that cannot be read (refused, damaged) is a failed job saying why,
    never a job left out of the summary."""
    try:
        record = safefile.loads_strict(safefile.read_capped(path, READ_CAP))
    except OSError as err:
        return {"status": "failed", "error": f"{RESULT_FILE} not readable: {safefile.describe(err)}"}
    except ValueError as err:
        return {"status": "failed", "error": f"{RESULT_FILE} is not JSON: {err}"}
    if not isinstance(record, dict):
        return {"status": "failed", "error": f"{RESULT_FILE} is not a JSON object"}
    wrong = next((key for key, ok in _RECORD_TYPES.items() if key in record and not ok(record[key])), None)
    if wrong is not None:
        return {"status": "failed", "error": f"{RESULT_FILE}: {wrong!r} has the wrong type"}
    return record


def _number(value: Any) -> bool:
    return value is None or (
        isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    )


# What a record's fields must be for a row to be built from it (anything else is a failed row).
_RECORD_TYPES: dict[str, Callable[[Any], bool]] = {
    "job": lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool)),
    "status": lambda v: isinstance(v, str),
    "error": lambda v: v is None or isinstance(v, str),
    "scenario": lambda v: v is None or isinstance(v, str),
    "objective": _number,
    "overrides": lambda v: v is None or (isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "choices": lambda v: (
        v is None or (isinstance(v, dict) and all(isinstance(i, str | None) for i in v.values()))
    ),
    "metrics": lambda v: v is None or (isinstance(v, dict) and all(_number(i) for i in v.values())),
}


def _job_number(record: Mapping[str, Any]) -> float:
    job = record.get("job")
    return float(job) if isinstance(job, int) else math.inf


def to_row(job_dir: Path, record: Mapping[str, Any]) -> dict[str, Any]:
    """One flat row: identity, status, objective, metrics, Pareto marks, error, job dir (relative)."""
    status = record.get("status", "failed")
    error = record.get("error")
    if status == "running":
        status, error = "failed", DIED
    metrics = record.get("metrics") or {}
    choices = record.get("choices") or {}
    row: dict[str, Any] = {
        "job": record.get("job"),
        "status": status,
        "scenario": record.get("scenario") or choices.get("scenario"),
        "overrides": " ".join(record.get("overrides") or []),
        "objective": record.get("objective"),
    }
    row.update({column: metrics.get(column) for column in METRIC_COLUMNS})
    row.update({column: False for column in FRONT_COLUMNS})
    row["error"] = error
    row["job_dir"] = str(job_dir)
    return row


def pareto_front(points: Sequence[tuple[float, float]]) -> set[int]:
    """Indices of the points no other point beats on both axes (both minimized)."""
    front = set()
    for i, (x, y) in enumerate(points):
        dominated = any(
            (ox <= x and oy <= y) and (ox < x or oy < y) for j, (ox, oy) in enumerate(points) if j != i
        )
        if not dominated:
            front.add(i)
    return front


def mark_fronts(rows: list[dict[str, Any]]) -> None:
    """Set `pareto_detection` / `pareto_recovery` within each scenario (fronts across scenarios mean
    nothing: the faults differ)."""
    for column, latency in zip(FRONT_COLUMNS, ("detection_latency_ms", "recovery_latency_ms"), strict=True):
        for group in _by_scenario(rows, latency).values():
            points = [(float(r["checks_spent"]), float(r[latency])) for r in group]
            for index in pareto_front(points):
                group[index][column] = True


def _by_scenario(rows: Iterable[dict[str, Any]], latency: str) -> dict[str, list[dict[str, Any]]]:
    """Completed rows that have both coordinates, grouped by scenario."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        if row["status"] == "completed" and row["checks_spent"] is not None and row[latency] is not None:
            groups.setdefault(str(row["scenario"]), []).append(row)
    return groups


def varying_overrides(rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Override keys whose value differs between jobs (what the sweep is about)."""
    values: dict[str, set[str]] = {}
    for row in rows:
        for item in str(row["overrides"]).split():
            key, _, value = item.partition("=")
            values.setdefault(key, set()).add(value)
    for row in rows:  # a key missing from some jobs varies too
        keys = {item.partition("=")[0] for item in str(row["overrides"]).split()}
        for key in values:
            if key not in keys:
                values[key].add("")
    return {key for key, seen in values.items() if len(seen) > 1}


def label(row: Mapping[str, Any], varying: set[str]) -> str:
    """The job's distinguishing overrides, scenario left out (the plot colors by scenario)."""
    items = [
        item
        for item in str(row["overrides"]).split()
        if item.partition("=")[0] in varying and item.partition("=")[0] != "scenario"
    ]
    return " ".join(items) or f"job {row['job'] if row['job'] is not None else row['job_dir']}"


class SummaryNotWritten(UsageError):
    """Some of a sweep's summary files could not be written (the others were)."""


def write_summary(sweep_dir: Path, *, plot: bool = True) -> list[dict[str, Any]]:
    """Aggregate every job's `result.json` under `sweep_dir` into the CSV, JSON and PNG.

    Every file is attempted; if any could not be written (a link or FIFO planted in a shared sweep
    dir is refused, a full disk), `SummaryNotWritten` names each one after the others are written.
    """
    rows, missing = summarize(sweep_dir, None, plot=plot)
    if missing:
        raise SummaryNotWritten(not_written_message(missing))
    return rows


def summarize(
    sweep_dir: Path, job_dirs: Sequence[Path] | None, *, plot: bool
) -> tuple[list[dict[str, Any]], list[str]]:
    """The rows (`summary_rows`) and why each summary file not written was not; never raises:
    whatever a job dir holds is a row or a reason, never a warning and exit 0 (Hydra's callbacks)
    nor a traceback (the `sweep` command)."""
    try:
        rows = summary_rows(sweep_dir, job_dirs)
        return rows, write_summary_files(sweep_dir, rows, plot=plot)
    except Exception as exc:
        return [], [f"{sweep_dir}: {type(exc).__name__}: {exc}"]


def summary_rows(sweep_dir: Path, job_dirs: Sequence[Path] | None = None) -> list[dict[str, Any]]:
    """One row per job (job order), each scenario's Pareto fronts marked: the jobs in `job_dirs`
    that started (their dir exists), or every record under `sweep_dir`."""
    found = collect_records(sweep_dir) if job_dirs is None else expected_records(job_dirs)
    rows = [to_row(_relative(job_dir, sweep_dir), record) for job_dir, record in found]
    mark_fronts(rows)
    return rows


def expected_records(job_dirs: Sequence[Path]) -> list[tuple[Path, dict[str, Any]]]:
    """(job dir, record) of each of `job_dirs` that exists; one without a record is failed."""
    found = []
    for job_dir in job_dirs:
        if not os.path.lexists(job_dir):
            continue  # never started (a failed batch or a stop ended the sweep first)
        if os.path.lexists(job_dir / RESULT_FILE):
            found.append((job_dir, _read_record(job_dir / RESULT_FILE)))
        else:
            found.append((job_dir, {"status": "failed", "error": f"no {RESULT_FILE}: {DIED}"}))
    return sorted(found, key=lambda item: (_job_number(item[1]), str(item[0])))


def _relative(job_dir: Path, sweep_dir: Path) -> Path:
    return job_dir.relative_to(sweep_dir) if job_dir.is_relative_to(sweep_dir) else job_dir


def write_summary_files(sweep_dir: Path, rows: list[dict[str, Any]], *, plot: bool) -> list[str]:
    """Write the CSV, the JSON and (with `plot`) the PNG; returns why each one not written was not."""
    try:  # a sweep dir swapped for a link mid-sweep: nothing is written through it
        safefile.check_own_dir(sweep_dir)
    except OSError as err:
        return [f"{safefile.describe(err)} (no summary file written)"]
    columns = [*ID_COLUMNS, *METRIC_COLUMNS, *FRONT_COLUMNS, "error", "job_dir"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if row[k] is None else row[k]) for k in columns} for row in rows)
    failed = [r for r in rows if r["status"] != "completed"]
    interrupted = sum(1 for r in rows if r["status"] == INTERRUPTED)
    document = {
        "sweep_dir": str(sweep_dir),
        "jobs": len(rows),
        "completed": len(rows) - len(failed),
        "failed": len(failed) - interrupted,
        "interrupted": interrupted,
        "rows": rows,
    }
    writes: list[tuple[str, Callable[[], Any]]] = [
        (SUMMARY_CSV, lambda: _write_text_atomic(sweep_dir / SUMMARY_CSV, buffer.getvalue())),
        (SUMMARY_JSON, lambda: write_json_atomic(sweep_dir / SUMMARY_JSON, document)),
    ]
    if plot:
        writes.append((SUMMARY_PNG, lambda: plot_summary(rows, sweep_dir / SUMMARY_PNG)))
    missing = []
    for name, write in writes:
        try:
            write()
        except OSError as err:  # refused (a planted link or FIFO) or failed (a full disk)
            missing.append(safefile.describe(err) if err.filename else f"{sweep_dir / name}: {err}")
        except Exception as exc:  # the plot of values matplotlib cannot draw
            missing.append(f"{sweep_dir / name}: {type(exc).__name__}: {exc}")
    return missing


def not_written_message(missing: Sequence[str], source: str = "hydra.sweep.dir") -> str:
    """One line naming the setting that chose the dir and each file not written, with why."""
    return f"{source}: sweep summary not written: " + "; ".join(missing)


def _write_text_atomic(path: Path, text: str) -> None:
    safefile.write_atomic(path, text.encode(), durable=False)


# ---------------------------------------------------------------------- the plot

_AXES = (
    ("detection_latency_ms", "pareto_detection", "undetected_episodes"),
    ("recovery_latency_ms", "pareto_recovery", "unrecovered_repairs"),
)
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "h", "<")
# Where a job number may go around its point (offset points), tried in turn until one is free.
_LABEL_OFFSETS = ((5, 4), (5, -11), (-14, 4), (-14, -11), (0, 10), (0, -16), (10, -3), (-20, -3))
CENSORED_GID = "censored"
# The legend's arrow up, as a polygon marker: a mathtext marker ("$\\uparrow$") would cost the
# first parse of matplotlib's math grammar, about 90 ms of a sweep's serial end (measured here).
_UP_ARROW = [(-0.1, -1.0), (0.1, -1.0), (0.1, 0.25), (0.45, 0.25), (0.0, 1.0), (-0.45, 0.25), (-0.1, 0.25)]
_HEATMAP_MAX_COLUMNS = 10
HEATMAP_GID = "objective-heatmap"
CENSORED_LABEL = "not noticed within the window (a lower bound)"


def plot_summary(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write the sweep's figure (see `build_figure`) as a PNG; always writes one.

    matplotlib is imported here, with the file-only Agg backend, so loading the callback (every
    Hydra start) stays cheap. The PNG is rendered in memory and written through `safefile` (a
    link or FIFO planted at `path` in a shared sweep dir is refused, not followed).
    """
    plt = import_plotting()
    fig = build_figure(rows)
    png = io.BytesIO()  # matplotlib would open `path` itself: following a planted link, truncating
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    safefile.write_atomic(path, png.getvalue(), durable=False)
    return path


def build_figure(rows: Sequence[dict[str, Any]]) -> Any:
    """The figure for a sweep's rows: it always shows what the sweep has, never an empty frame.

    - Study jobs (scenario metrics): checks spent against detection and recovery latency, one color
      per scenario, one marker shape per swept setting, each scenario's Pareto front marked;
      censored values (a fault or repair not noticed within the run) are drawn hollow with an arrow
      up, since they are lower bounds, not measurements; and the objective as a scenario x setting
      heatmap, each scenario's best cell framed.
    - Plain audit jobs (no scenario): pass ratio, checks spent and failed checks per job.
    - No completed job: the failed jobs and their errors.
    Job numbers, when drawn, are placed where they overlap no other text (else left to the CSV).
    """
    plt = import_plotting()
    done = [r for r in rows if r["status"] == "completed"]
    if any(_by_scenario(done, latency) for latency, _, _ in _AXES):
        fig = _study_figure(plt, rows)
    elif done:
        fig = _audit_figure(plt, rows)
    else:
        fig = _failed_figure(plt, rows)
    return fig


def import_plotting() -> Any:
    """matplotlib's pyplot on the file-only Agg backend (about half a second to import, so only
    when a plot is drawn or about to be)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _study_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    from matplotlib.lines import Line2D

    varying = varying_overrides(rows)
    done = [r for r in rows if r["status"] == "completed"]
    scenarios = sorted({str(r["scenario"]) for r in done})
    colors = {name: plt.get_cmap("tab10")(i % 10) for i, name in enumerate(scenarios)}
    labels = sorted({label(r, varying) for r in done}, key=_natural)
    markers = dict(zip(labels, _MARKERS, strict=False)) if len(labels) <= len(_MARKERS) else {}
    transpose = len(labels) > _HEATMAP_MAX_COLUMNS  # many settings: one row each, scenarios across
    # Fixed inches for every band (title, scatter, their labels, heatmap title, heatmap, its labels),
    # so that nothing overlaps whatever the number of scenarios or settings.
    heat_h = 0.5 + 0.4 * (len(labels) if transpose else len(scenarios))
    below_heat = 0.35 if transpose else 0.25 + 0.14 * max(_wrap(t, 22).count("\n") + 1 for t in labels)
    width, height = 14.5, 0.8 + 5.0 + 1.0 + heat_h + 0.45 + below_heat
    fig = plt.figure(figsize=(width, height))
    heat_top = below_heat + heat_h
    top = fig.add_gridspec(
        1, 2, left=0.07, right=0.83, top=1 - 0.8 / height, bottom=(heat_top + 1.45) / height
    )
    top.update(wspace=0.25)
    names = labels if transpose else scenarios
    left = max(0.07, (0.35 + 0.062 * max(len(n) for n in names)) / width)
    heat = fig.add_gridspec(1, 1, left=left, right=0.83, top=heat_top / height, bottom=below_heat / height)
    scatter_axes = [fig.add_subplot(top[0, 0]), fig.add_subplot(top[0, 1])]
    numbered: list[tuple[Any, float, float, str]] = []
    for ax, (latency, front_column, censor_column) in zip(scatter_axes, _AXES, strict=True):
        groups = _by_scenario(rows, latency)
        for name, group in sorted(groups.items()):
            _plot_group(ax, group, (latency, front_column, censor_column), colors[name], markers, varying)
            if not markers:
                numbered += [(ax, float(r["checks_spent"]), float(r[latency]), str(r["job"])) for r in group]
        ax.set_xlabel("checks spent (cost)")
        ax.set_ylabel(latency.replace("_", " "))
        ax.set_title(f"cost vs {latency.split('_')[0]} latency (lower left is better)")
        ax.grid(True, alpha=0.3)
        if not groups:
            ax.text(
                0.5, 0.5, "no jobs measured this latency", ha="center", va="center", transform=ax.transAxes
            )
    _objective_heatmap(fig.add_subplot(heat[0, 0]), done, (scenarios, labels), varying, transpose)
    handles = [Line2D([], [], color=colors[n], marker="o", linestyle="", label=n) for n in scenarios]
    handles += [Line2D([], [], color="gray", marker=m, linestyle="", label=t) for t, m in markers.items()]
    handles.append(Line2D([], [], color="gray", marker="o", mfc="none", ms=11, ls="--", label="Pareto front"))
    handles.append(
        Line2D([], [], color="gray", marker=_UP_ARROW, ms=10, ls="", label=_wrap(CENSORED_LABEL, 22))
    )
    fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=(0.845, 1 - 0.8 / height), fontsize=8, frameon=False
    )
    failed = len(rows) - len(done)
    fig.suptitle(f"{len(rows)} jobs ({failed} failed): cost against latency, and the objective")
    _place_numbers(fig, numbered)
    return fig


def _plot_group(
    ax: Any,
    group: list[dict[str, Any]],
    columns: tuple[str, str, str],
    color: Any,
    markers: Mapping[str, str],
    varying: set[str],
) -> None:
    """One scenario's points (shape by swept setting; censored ones hollow with an arrow up) and its
    Pareto front as a dashed staircase."""
    latency, front, censor = columns
    xs = [float(r["checks_spent"]) for r in group]
    ys = [float(r[latency]) for r in group]
    for x, y, row in zip(xs, ys, group, strict=True):
        marker = markers.get(label(row, varying), "o")
        if row.get(censor):
            ax.scatter(
                [x],
                [y],
                marker=marker,
                s=40,
                facecolors="none",
                edgecolors=[color],
                zorder=3,
                gid=CENSORED_GID,
            )
            ax.annotate(
                "", xy=(x, y), xytext=(0, 16), textcoords="offset points",
                arrowprops={"arrowstyle": "<|-", "color": color, "lw": 1.0, "shrinkA": 0, "shrinkB": 5},
                annotation_clip=False, gid=CENSORED_GID,
            )  # fmt: skip
        else:
            ax.scatter([x], [y], color=color, marker=marker, s=34, zorder=3)
    on_front = sorted((x, y) for x, y, r in zip(xs, ys, group, strict=True) if r[front])
    if on_front:
        px, py = zip(*on_front, strict=True)
        ax.plot(
            px, py, color=color, linewidth=1.0, linestyle="--", alpha=0.7, drawstyle="steps-post", zorder=2
        )
        ax.scatter(px, py, s=150, facecolors="none", edgecolors=color, zorder=4)


def _objective_heatmap(
    ax: Any,
    done: Sequence[Mapping[str, Any]],
    axes: tuple[list[str], list[str]],
    varying: set[str],
    transpose: bool,
) -> None:
    """Objective per scenario and swept setting: color by the ratio to the scenario's best
    (objectives of different scenarios are not comparable), the value written in each cell, a
    `>=` where a latency in it is censored, each scenario's best framed. Scenarios are rows, or
    columns when `transpose` (many settings: one row each keeps every label readable)."""
    scenarios, labels = axes
    import numpy as np
    from matplotlib.patches import Rectangle

    cells: dict[tuple[int, int], list[float]] = {}
    censored: set[tuple[int, int]] = set()
    for row in done:
        if row.get("objective") is None or str(row["scenario"]) not in scenarios:
            continue
        key = (scenarios.index(str(row["scenario"])), labels.index(label(row, varying)))
        cells.setdefault(key, []).append(float(row["objective"]))
        if row.get("undetected_episodes") or row.get("unrecovered_repairs"):
            censored.add(key)
    ratio = np.full((len(scenarios), len(labels)), np.nan)
    for (i, j), values in cells.items():
        ratio[i, j] = sum(values) / len(values)
    values_grid = ratio.copy()
    for i in range(len(scenarios)):
        finite = [v for v in values_grid[i] if np.isfinite(v)]
        best = min(finite) if finite else None
        if best is not None:
            ratio[i] = values_grid[i] / best if best > 0 else np.where(values_grid[i] == best, 1.0, 2.0)
    shown = ratio.T if transpose else ratio
    image = ax.imshow(
        np.clip(shown, 1.0, 3.0), cmap="viridis_r", vmin=1.0, vmax=3.0, aspect="auto", gid=HEATMAP_GID
    )
    for i, j in cells:
        text = ("\u2265" if (i, j) in censored else "") + _short(values_grid[i, j])
        shade = "white" if ratio[i, j] >= 2.0 else "black"
        x, y = (i, j) if transpose else (j, i)
        ax.text(x, y, text, ha="center", va="center", fontsize=8, color=shade)
        if ratio[i, j] == 1.0:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor="red", lw=2))
    if transpose:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_xticks(range(len(scenarios)), scenarios, fontsize=8)
    else:
        ax.set_yticks(range(len(scenarios)), scenarios, fontsize=8)
        ax.set_xticks(range(len(labels)), [_wrap(t, 22) for t in labels], fontsize=8)
    ax.set_title("objective (lower is better; color: x the scenario's best, framed: best)", fontsize=10)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.03, pad=0.01, aspect=12)
    bar.set_label("x the best (3: 3x or worse)", fontsize=8)
    bar.ax.tick_params(labelsize=7)


def _audit_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Plain audits: pass ratio, checks spent and failed checks per job, one horizontal bar each.

    Horizontal, so that each job's overrides are a readable label of their own line (wrapped),
    however many jobs there are; a failed job is named with `failed` instead of a bar.
    """
    varying = varying_overrides(rows)
    names = [_wrap(f"job {row['job']}: {label(row, varying)}", 34) for row in rows]
    lines = max(1, max(name.count("\n") + 1 for name in names))
    fig, axes = plt.subplots(
        1, 3, figsize=(14.0, 1.6 + 0.28 * lines * len(rows) + 0.2 * len(rows)), sharey=True
    )
    panels = (
        ("pass_ratio", "pass ratio (higher is better)"),
        ("checks_spent", "checks spent"),
        ("failed_checks", "failed checks"),
    )
    positions = list(range(len(rows)))
    for ax, (column, title) in zip(axes, panels, strict=True):
        measured = [r["status"] == "completed" and r.get(column) is not None for r in rows]
        values = [float(r[column]) if ok else 0.0 for r, ok in zip(rows, measured, strict=True)]
        ax.barh(positions, values, color="tab:blue", height=0.6)
        top = max(values, default=0.0) or 1.0
        for y, (row, ok, v) in enumerate(zip(rows, measured, values, strict=True)):
            note = f"{v:.2%}" if column == "pass_ratio" and ok else (_cell(row[column]) if ok else None)
            if note is None:
                note = "failed" if row["status"] != "completed" else "n/a"
            ax.text(v + top * 0.01, y, note, va="center", fontsize=7)
        ax.set_xlim(0, (1.0 if column == "pass_ratio" else top) * 1.18)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", alpha=0.3)
    axes[0].set_yticks(positions, names, fontsize=7)
    axes[0].invert_yaxis()  # job 0 on top, as in the table
    failed = sum(1 for r in rows if r["status"] != "completed")
    fig.suptitle(f"{len(rows)} audit jobs ({failed} failed): no scenario, so no latencies; per job")
    fig.tight_layout()
    return fig


def _failed_figure(plt: Any, rows: Sequence[dict[str, Any]]) -> Any:
    """Nothing completed: say which jobs failed and why, rather than draw empty axes."""
    fig = plt.figure(figsize=(10, 1.5 + 0.3 * max(1, len(rows))))
    lines = [f"job {r['job']}: {_wrap(str(r['error'] or 'no error recorded'), 110)}" for r in rows[:30]]
    body = "\n".join(lines) if lines else "no job records found in the sweep dir"
    fig.text(0.02, 0.95, f"{len(rows)} jobs, none completed:", fontsize=11, va="top")
    fig.text(0.02, 0.85, body, fontsize=8, va="top", family="monospace")
    return fig


def _place_numbers(fig: Any, points: Sequence[tuple[Any, float, float, str]]) -> None:
    """Annotate points with job numbers where they overlap no other text (greedy; else skipped)."""
    if not points:
        return
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    taken = [t.get_window_extent(renderer) for t in fig.findobj(_is_text) if t.get_text().strip()]
    for ax, x, y, text in points:
        for offset in _LABEL_OFFSETS:
            note = ax.annotate(text, (x, y), xytext=offset, textcoords="offset points", fontsize=7)
            box = note.get_window_extent(renderer).expanded(1.05, 1.1)
            inside = ax.get_window_extent(renderer).fully_overlaps(box)
            if inside and not any(box.overlaps(other) for other in taken):
                taken.append(box)
                break
            note.remove()


def _is_text(artist: Any) -> bool:
    from matplotlib.text import Text

    return isinstance(artist, Text) and artist.get_visible()


def _wrap(text: str, width: int) -> str:
    """Wrap at spaces; an override longer than a line is broken after its `=` (key, then value)."""
    import textwrap

    words = []
    for word in text.split():
        key, eq, value = word.partition("=")
        words += [key + eq, value] if eq and value and len(word) > width else [word]
    lines = textwrap.wrap(" ".join(words), width, break_long_words=True, break_on_hyphens=False)
    return "\n".join(lines) or text


def _natural(text: str) -> list[Any]:
    """Sort key that orders `x=200` before `x=1000`."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def _short(value: float) -> str:
    """A compact number for a heatmap cell: 950, 22.6k, 1.2M."""
    for unit, size in (("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}"
    return f"{value:.3g}"


# ---------------------------------------------------------------------- the printed table


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "*" if value else ""
    if isinstance(value, float):
        return f"{value:.0f}" if value.is_integer() or abs(value) >= 100 else f"{value:.2f}"
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """A fixed-width table for the terminal: one line per job, failed jobs with their error."""
    varying = varying_overrides(rows)
    headers = ("job", "status", "scenario", "sweep", "checks", "pass", "detect_ms", "undet", "recover_ms")
    headers += ("known_bad", "skipped", "objective", "front")
    lines = []
    for row in rows:
        front = ("D" if row["pareto_detection"] else "") + ("R" if row["pareto_recovery"] else "")
        cells = (row["job"], row["status"], row["scenario"], label(row, varying), row["checks_spent"])
        ratio = row.get("pass_ratio")
        cells += (
            f"{ratio:.1%}" if isinstance(ratio, int | float) else None,
            row["detection_latency_ms"],
            row["undetected_episodes"],
            row["recovery_latency_ms"],
        )
        cells += (row["checks_known_bad"], row["rounds_skipped_by_backoff"], row["objective"], front)
        lines.append([_cell(c) for c in cells])
    widths = [
        max(len(h), *(len(line[i]) for line in lines)) if lines else len(h) for i, h in enumerate(headers)
    ]
    out = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    for line, row in zip(lines, rows, strict=True):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())
        if row["error"]:
            out.append(f"    error: {row['error']}")
    completed = sum(1 for r in rows if r["status"] == "completed")
    interrupted = sum(1 for r in rows if r["status"] == INTERRUPTED)
    stopped = f", {interrupted} interrupted" if interrupted else ""
    out.append(
        f"{len(rows)} jobs: {completed} completed, {len(rows) - completed - interrupted} failed{stopped}"
    )
    out.append("front: D = on the checks/detection Pareto front of its scenario, R = checks/recovery")
    return "\n".join(out)


# ---------------------------------------------------------------------- grouped means (CLI)

GROUP_METRICS = (
    "checks_spent",
    "detection_latency_ms",
    "undetected_episodes",
    "recovery_latency_ms",
    "unrecovered_repairs",
    "checks_known_bad",
    "rounds_skipped_by_backoff",
    "objective",
)


def override_value(row: Mapping[str, Any], key: str) -> str:
    """The value `key` had in the job's overrides (`scenario` falls back to the row's scenario)."""
    for item in str(row["overrides"]).split():
        name, _, value = item.partition("=")
        if name.lstrip("+~") == key:
            return value
    return str(row["scenario"]) if key == "scenario" else "-"


def group_means(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> list[dict[str, Any]]:
    """Mean of each metric over the completed jobs sharing the values of `keys`.

    Why: one fault at one blob measures one cursor phase; sweeping the target (or any nuisance
    key) and averaging gives the expected latency instead of a lucky or unlucky draw.
    """
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(override_value(row, k) for k in keys), []).append(row)
    out = []
    for values, members in groups.items():
        done = [r for r in members if r["status"] == "completed"]
        entry: dict[str, Any] = dict(zip(keys, values, strict=True))
        entry.update(jobs=len(members), failed=len(members) - len(done))
        for metric in GROUP_METRICS:
            numbers = [float(r[metric]) for r in done if r.get(metric) is not None]
            entry[metric] = sum(numbers) / len(numbers) if numbers else None
        out.append(entry)
    return out


def format_groups(groups: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    """The grouped means as a fixed-width table."""
    headers = [*keys, "jobs", "failed", *GROUP_METRICS]
    lines = [[_cell(g[h]) for h in headers] for g in groups]
    widths = [max([len(h), *(len(line[i]) for line in lines)]) for i, h in enumerate(headers)]
    text = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))]
    text += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    return "\n".join(text)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m distfs_pipeline.sweep SWEEP_DIR [--by KEY ...]`: (re)write the summary of a sweep
    directory, print it, and with `--by` print the mean of each metric per group of override values."""
    parser = OneLineArgumentParser(prog="python -m distfs_pipeline.sweep", description=main.__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--by", nargs="+", default=[], metavar="KEY", help="override keys to group by")
    parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
    args = parser.parse_args(argv)
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir} is not a directory")
    rows, missing = summarize(args.sweep_dir, None, plot=not args.no_plot)
    print(format_table(rows))
    if missing:
        print(f"distfs_pipeline: error: {not_written_message(missing, 'SWEEP_DIR')}", file=sys.stderr)
        return 2
    if args.by:
        print()
        print(format_groups(group_means(rows, args.by), args.by))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
