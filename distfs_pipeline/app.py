"""The Hydra entry point: legacy flags, pre-flight validation, exit codes, then the run.

Why the wrapper around `@hydra.main`: Hydra reports bad input with a multi-line message (and
sometimes a traceback) and exit status 1. Users get one line naming the flag, key or file and exit
status 2 instead, so `main` rewrites upstream's `--reward-distfs-*` flags into overrides, composes
and validates every job up front (`preflight`), and only then lets Hydra run the task with the
rewritten argv. Problems only the run can see (a missing store root, a corrupt or locked state
file) leave the task function the same way: one line, `sys.exit(2)` (SystemExit passes through
Hydra's error reporting).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

from . import (
    config,  # noqa: F401  (importing registers the structured-config schema)
    resolvers,  # noqa: F401  (importing registers ${distfs_run_id:} for the run dir)
)
from .errors import UsageError
from .flags import rewrite_argv
from .preflight import preflight
from .runner import run_audit
from .state import describe_os_error
from .validation import Settings, settings_from_cfg

# `conf/` sits at the repository top (editable install); absolute, because Hydra resolves a relative
# config_path against the package when the app runs as `python -m`.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class JobFailed(CompactHydraException):
    """A job of a multirun failed on bad input found at run time (a missing store root, a locked
    state file...). Hydra records the job as failed with this one-line message and runs the
    other jobs; exiting (as a single run does) would end the whole sweep at this job.
    """


def fail(err: UsageError) -> NoReturn:
    """One line on stderr, exit status 2, no traceback; in a multirun job, fail only this job."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(str(err)) from None
    print(f"distfs_pipeline: error: {err}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


def main() -> None:
    """`python -m distfs_pipeline [overrides] [legacy flags]`."""
    try:
        argv = rewrite_argv(sys.argv[1:])
        preflight(argv, CONF_DIR)
    except UsageError as err:
        fail(err)
    sys.argv = [sys.argv[0], *argv]
    try:
        _task()
    except KeyboardInterrupt:  # a second SIGINT/SIGTERM during a round: the journal tolerates it
        print("distfs_pipeline: interrupted", file=sys.stderr, flush=True)
        sys.exit(EXIT_INTERRUPTED)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _task(cfg: DictConfig) -> float | None:
    """One job: validate, run the audit (or the scenario study), return the objective if any."""
    try:
        settings = settings_from_cfg(cfg)
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        if settings.scenario.name != "none":
            return _objective(_run_scenario(settings, cfg, run_dir))
        return _objective(run_audit(settings, run_dir))
    except UsageError as err:
        fail(err)
    except OSError as err:  # our own files (run dir, state, chunk cache): the path is the input
        fail(UsageError(describe_os_error(err)))


def _run_scenario(settings: Settings, cfg: DictConfig, run_dir: Path) -> Any:
    """The studies seam: scenario jobs belong to `study` (imported only for them: it is heavier)."""
    from .study import StudyJobFailed, run_scenario_job

    try:
        return run_scenario_job(settings, cfg, run_dir)
    except StudyJobFailed as err:  # already in result.json with its traceback: one line here
        raise JobFailed(str(err)) from None


def _objective(result: Any) -> float | None:
    """What a sweeper optimizes: a number, or a summary's `objective` key (None: nothing to optimize)."""
    if isinstance(result, dict):
        result = result.get("objective")
    return float(result) if isinstance(result, int | float) else None
