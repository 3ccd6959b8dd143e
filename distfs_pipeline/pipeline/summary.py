"""A run's reporting: its totals, the live progress line, summary.json's content and the end table.

Why a separate module: the runner decides when rounds happen and makes them durable; what an
operator reads about the run is a separate concern. This module turns plain values (the settings,
the state, this run's `RunTotals`) into the summary dict (for programs) and the table printed at
the end (for people), and draws the throttled progress line on stderr while the run goes. It
writes no files: the runner writes summary.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TextIO

from distfs_pipeline.core import reward
from distfs_pipeline.core.models import CursorState, RoundReport, add_counts
from distfs_pipeline.persist.state import Recovered
from distfs_pipeline.pipeline import logs
from distfs_pipeline.pipeline.validation import Settings

_PROGRESS_INTERVAL_S = 0.1


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
        self.failure_reasons = add_counts(self.failure_reasons, report.failure_reasons)
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
        self.enabled = logs.progress_enabled(mode, self.stream)
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
        self._drawn = logs.TERMINAL.progress_shown = True

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            logs.TERMINAL.progress_shown = False


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# --- summary -------------------------------------------------------------------------------------


def build_summary(
    settings: Settings,
    run_dir: Path,
    state: CursorState,
    totals: RunTotals,
    *,
    rewardable: int,
    stop_signal: str | None,
    recovered: Recovered,
    elapsed_s: float,
    outputs: Sequence[str],
) -> dict[str, Any]:
    """summary.json: resolved config, what this run did, and the cumulative state.

    `state` is the state after the run's last round, `stop_signal` the signal that ended the run
    (None: it ran its rounds), `outputs` the names of the run's files in `run_dir`.
    """
    rt = settings.runtime
    no_data = totals.checks == 0
    return {
        "config": settings.model_dump(mode="json"),
        "store_root": rt.storage_root,
        "state_path": rt.state_path,
        "run_dir": str(run_dir),
        "blob_count": totals.max_blob_count,
        "rewardable_bytes": rewardable,
        "no_data": no_data,
        "no_data_reason": _no_data_reason(totals) if no_data else None,
        "stopped_by": f"signal {stop_signal}" if stop_signal is not None else "rounds",
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
        "outputs": {name: str(run_dir / name) for name in outputs},
    }


def _no_data_reason(totals: RunTotals) -> str:
    if totals.rounds == 0:
        return "no round ran"
    if totals.max_blob_count == 0 and totals.skipped_by_backoff < totals.rounds:
        return "empty store"
    return "every round was skipped by backoff"


# --- the table -----------------------------------------------------------------------------------


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


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"
