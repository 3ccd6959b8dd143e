"""The Hydra app: legacy flags, one compose per run, validation before anything is written, the job.

Why not plain `@hydra.main`: Hydra composes a run's config three times (mode detection, the run,
and our pre-flight on top), reports bad input with a traceback and exit status 1, configures
logging and instantiates callbacks before we could look at the config, and creates the run dir
before the task starts. So `main` drives Hydra's own pieces itself, in the order `Hydra.run` and
`Hydra.multirun` use them, with our checks in between:

1. rewrite upstream's `--reward-distfs-*` flags into overrides (`flags`);
2. compose once (`preflight.compose_for_run`);
3. validate with Hydra's config set (so `${hydra:runtime.output_dir}` resolves): settings, the
   callables and logging the config asks for, user presets, and every path the job will write,
   which must lie outside `runtime.storage_root` (`preflight.prepare_job`, `confguard`); a sweep
   checks each job that way (`preflight.check_sweep`);
4. only then configure logging, instantiate the callbacks and run the job (`run_job`) or the
   sweeper.

Bad input is one line on stderr and exit status 2, including an unwritable or full run dir.
Requests that run no job (`--help`, `--info`, `--cfg`, shell completion) go to Hydra's own path.
Problems only the run can see (a corrupt or locked state file) leave the job the same way; in a
multirun they fail that job only (`JobFailed`).
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus, run_job
from hydra.errors import CompactHydraException
from hydra.types import HydraContext, RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.persist.state import describe_os_error
from distfs_pipeline.pipeline import (
    confguard,
    config,  # noqa: F401  (importing registers the structured-config schema)
    hydra_files,
    launching,
    logs,
    preflight,
    resolvers,  # noqa: F401  (importing registers ${distfs_run_id:} for the run dir)
    stopping,
)
from distfs_pipeline.pipeline.flags import LEGACY_FLAGS, LEGACY_PREFIX, rewrite_argv
from distfs_pipeline.pipeline.resources import conf_dir
from distfs_pipeline.pipeline.validation import Settings, settings_from_cfg

CONF_DIR = conf_dir()  # inside the installed package, or the checkout's conf/ (see resources)
EXIT_USAGE = 2
EXIT_INTERRUPTED = stopping.EXIT_INTERRUPTED
RAY_LAUNCHER = launching.RAY_LAUNCHER
RAY_CONNECT_TIMEOUT_S = 5.0


class JobFailed(CompactHydraException):
    """A job of a multirun failed on bad input found at run time (a missing store root, a locked
    state file...). Hydra records the job as failed with this one-line message and runs the
    other jobs; exiting (as a single run does) would end the whole sweep at this job.
    """


class _Process:
    """Whether this process is the driver (ran `main`) or a launcher's worker (joblib, Ray)."""

    driver = False


def fail(err: UsageError) -> NoReturn:
    """One line on stderr, exit status 2, no traceback; in a multirun job, fail only this job."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        raise JobFailed(str(err)) from None
    sys.exit(_usage(err))


def _usage(err: UsageError) -> int:
    print(f"distfs_pipeline: error: {err}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def main(argv: list[str] | None = None) -> int:
    """`distfs-pipeline [overrides] [legacy flags] [Hydra flags]`; returns the exit status."""
    _Process.driver = True
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-sc" in argv or any(a.startswith("--shell-completion") for a in argv):
        return _shell_completion(argv)
    try:
        argv = rewrite_argv(argv)
        args = preflight.parse_args(argv)
        if preflight.runs_no_job(argv) or args.cfg is not None:
            if args.cfg is not None:
                preflight.preflight(argv, CONF_DIR)
            return _hydra_main(argv)
        main_dir = preflight._main_config_dir(args.config_path, CONF_DIR)
        with stopping.at_safe_points():  # Hydra's start builds configs, as composing does
            hydra_app = preflight.open_session(main_dir, args.config_dir)
    except UsageError as err:
        return _usage(err)
    try:
        multirun = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
        config_name = args.config_name or preflight.PRIMARY_CONFIG
        if multirun:
            return _multirun(hydra_app, config_name, args)
        return _run(hydra_app, config_name, args)
    finally:
        GlobalHydra.instance().clear()


def _validated(
    hydra_app: Any, config_name: str, args: Any, mode: RunMode, sweep: _SweepStart | None = None
) -> tuple[DictConfig, bool]:
    """The run's one compose, validated; and whether every job of a sweep was checked here.

    For a sweep (`sweep` given), the launcher's workers are started as soon as the base config
    names the launcher, so they start while each job is checked here (see `_SweepStart`)."""
    multirun = mode == RunMode.MULTIRUN
    overrides = preflight._with_mode(args.overrides, multirun)
    with stopping.at_safe_points():
        cfg = preflight.compose_for_run(hydra_app, config_name, overrides, mode)
        if confguard.has_user_search_path(cfg, args.config_dir):  # what a preset may set, first
            confguard.check_user_presets(hydra_app.config_loader, config_name, overrides, mode)
        every_job_checked = False
        stopping.check(stopping.BEFORE_RUN)
        if sweep is not None:
            sweep.begin(cfg, hydra_app.config_loader)
            every_job_checked = preflight.check_sweep(cfg, config_name, args.overrides, sweep.reuse)
        else:
            preflight.prepare_job(cfg)
    logs.set_format(str(OmegaConf.select(cfg, "runtime.log_format", default="text")))
    return cfg, every_job_checked


def _run(hydra_app: Any, config_name: str, args: Any) -> int:
    """`Hydra.run`, with the config composed once and validated before anything is written."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.utils import configure_log

    try:
        cfg, _ = _validated(hydra_app, config_name, args, RunMode.RUN)
    except UsageError as err:
        return _usage(err)
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    callbacks = Callbacks(_without_sweep_callbacks(cfg))
    callbacks.on_run_start(config=cfg, config_name=config_name)
    context = HydraContext(config_loader=hydra_app.config_loader, callbacks=callbacks)
    try:
        ret = hydra_files.checked_run_job(run_job)(
            hydra_context=context,
            task_function=_job,
            config=cfg,
            job_dir_key="hydra.run.dir",
            job_subdir_key=None,
        )
    except OSError as err:  # Hydra's own mkdir or .hydra/ files: the run dir is the input
        return _usage(UsageError(f"hydra.run.dir: {describe_os_error(err)}"))
    callbacks.on_run_end(config=cfg, config_name=config_name, job_return=ret)
    if ret.status == JobStatus.FAILED:
        from hydra._internal.utils import run_and_report

        run_and_report(lambda: ret.return_value)  # Hydra's report of an unexpected error, exit 1
    return 0


def _without_sweep_callbacks(cfg: DictConfig) -> DictConfig | None:
    """What `Callbacks` instantiates for a single run: every callback but our multirun summary
    (it does nothing outside a multirun), so a start does not import the sweep and study modules.
    `Callbacks` reads only `hydra.callbacks`, so a small config carrying the others is enough."""
    callbacks = OmegaConf.select(cfg, "hydra.callbacks") or {}
    others = {k: callbacks[k] for k in callbacks if k != "sweep_summary"}
    return OmegaConf.create({"hydra": {"callbacks": others}}) if others else None


def _multirun(hydra_app: Any, config_name: str, args: Any) -> int:
    """`Hydra.multirun`, every job validated first; a signal stops the whole sweep."""
    from hydra._internal.callbacks import Callbacks
    from hydra.core.plugins import Plugins
    from hydra.core.utils import configure_log

    start = _SweepStart()
    try:
        cfg, every_job_checked = _validated(hydra_app, config_name, args, RunMode.MULTIRUN, start)
        check_ray_reachable(cfg)
    except UsageError as err:
        start.abandon()
        return _usage(err)
    except stopping.Interrupted:  # stopped before any job: the workers are not left to exit hooks
        start.abandon()
        raise
    start.ready()
    configure_log(cfg.hydra.hydra_logging, cfg.hydra.verbose)
    _ray_cluster_init(cfg)
    with stopping.deferred():  # from here the jobs decide; the driver checks between them
        callbacks = Callbacks(cfg)
        if every_job_checked:  # the summary lists these jobs, not whatever else lies in the dir
            for callback in callbacks.callbacks:
                if hasattr(callback, "expect_jobs"):
                    callback.expect_jobs(preflight.checked_job_dirs())
        callbacks.on_multirun_start(config=cfg, config_name=config_name)
        loader = start.reuse or hydra_app.config_loader
        context = HydraContext(config_loader=loader, callbacks=callbacks)
        sweeper = Plugins.instance().instantiate_sweeper(
            config=cfg, hydra_context=context, task_function=_job
        )
        hydra_files.guard_sweeper(sweeper)
        for part in (sweeper, getattr(sweeper, "sweeper", None)):  # Optuna's holds its launcher inside
            hydra_files.guard_launcher(getattr(part, "launcher", None))
        start.adopt(sweeper, every_job_checked)
        task_overrides = OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)
        assert isinstance(task_overrides, list)
        try:
            sweeper.sweep(arguments=task_overrides)
        except stopping.Interrupted:
            callbacks.on_multirun_end(config=cfg, config_name=config_name)
            raise
        except Exception as exc:
            unreachable = _ray_unreachable(cfg, exc)
            if unreachable is not None:
                return _usage(unreachable)
            if isinstance(exc, OSError):  # the launcher's mkdir or .hydra/ files
                return _usage(UsageError(f"hydra.sweep.dir: {describe_os_error(exc)}"))
            from hydra._internal.utils import run_and_report

            failure = exc

            def reraise() -> None:
                raise failure

            run_and_report(reraise)  # a failed job: Hydra's one-line report, exit 1 (summary at exit)
        start.finish()
        callbacks.on_multirun_end(config=cfg, config_name=config_name)
    stopping.check("during the sweep; any job it cut short is listed as interrupted")
    return EXIT_USAGE if _summary_not_written(callbacks) else 0


def _summary_not_written(callbacks: Any) -> bool:
    """Whether a callback could not write what it owns (the sweep summary: it printed why, one
    line). Hydra turns a callback's exception into a warning, so it is asked here instead."""
    return any(getattr(callback, "not_written", None) for callback in callbacks.callbacks)


class _SweepStart:
    """What a sweep does before its first job so that the jobs start sooner (see `launching`):
    the basic and joblib launchers get the configs `check_sweep` composed; joblib's workers are
    started while the jobs are validated, and stopped again if validation fails."""

    def __init__(self) -> None:
        self.reuse: launching.ReusingConfigLoader | None = None
        self._warmup: launching.WorkerWarmup | None = None
        self._target: str | None = None

    def begin(self, cfg: DictConfig, config_loader: Any) -> None:
        self._target = launching.launcher_target(cfg)
        if self._target in launching.REUSING_LAUNCHERS:
            self.reuse = launching.ReusingConfigLoader(config_loader)
        if self._target == launching.JOBLIB_LAUNCHER:
            self._warmup = launching.WorkerWarmup(launching.joblib_options(cfg), warm_worker)

    def ready(self) -> None:
        if self._warmup is not None:
            self._warmup.ready()

    def abandon(self) -> None:
        if self._warmup is not None:
            self._warmup.abandon()

    def finish(self) -> None:
        """Every job is done: joblib's workers may exit while the summary is written."""
        if self._target == launching.JOBLIB_LAUNCHER:
            launching.release_workers()

    def adopt(self, sweeper: Any, every_job_checked: bool) -> None:
        """Hand the checked configs to the sweeper's launcher (only when every job was checked)."""
        if not every_job_checked or type(sweeper).__name__ != "BasicSweeper":
            return
        # every job was composed and validated above: Hydra's batch check would compose each
        # again, serially in this process, before any job starts (9 composes for a 3x3 sweep)
        sweeper.validate_batch_is_legal = lambda batch: None
        launcher = getattr(sweeper, "launcher", None)
        if self._target == launching.JOBLIB_LAUNCHER and type(launcher).__name__ == "JoblibLauncher":
            launcher.launch = functools.partial(launching.launch_precomposed, launcher)


def warm_worker() -> int:
    """Run once in each joblib worker before the sweep: import what a job imports (this module is
    imported by unpickling the function)."""
    import hydra_plugins.hydra_joblib_launcher._core  # noqa: F401

    stopping.detach_worker()
    import distfs_pipeline.pipeline.runner
    import distfs_pipeline.studies.study
    import distfs_pipeline.studies.sweep  # noqa: F401

    return os.getpid()


def _ray_address(cfg: DictConfig) -> str | None:
    """The Ray address the sweep connects to (None: not Ray, or a new local Ray runtime)."""
    if OmegaConf.select(cfg, "hydra.launcher._target_") != RAY_LAUNCHER:
        return None
    address = OmegaConf.select(cfg, "hydra.launcher.ray.init.address")
    return None if address is None else str(address)


def _ray_cluster_init(cfg: DictConfig) -> None:
    """hydra-ray-launcher adds `object_store_memory` to `ray.init`, which Ray refuses when it
    connects to an existing cluster (the cluster's own setting holds): leave it out then."""
    if _ray_address(cfg) is None:
        return
    init = cfg.hydra.launcher.ray.init
    with read_write(init), open_dict(init):
        if init.get("object_store_memory") is None:
            init.object_store_memory = None  # present, so the launcher's default is not added


def check_ray_reachable(cfg: DictConfig) -> None:
    """Before the launcher's `ray.init`, which retries an unreachable cluster for minutes: resolve
    the address as Ray does (`auto`, `localhost` -> this node's address), then one TCP connect with
    a timeout; refused or silent -> one line naming the key."""
    address = _ray_address(cfg)
    if address is None or address.startswith("ray://"):
        return  # Ray Client addresses: Ray's own errors apply
    key = "hydra.launcher.ray.init.address"
    from ray._private.services import canonicalize_bootstrap_address

    try:
        target = canonicalize_bootstrap_address(address)
    except Exception as exc:
        raise UsageError(f"{key}: {address}: {' '.join(str(exc).split())[:200]}") from None
    if target is None:
        raise UsageError(f"{key}: {address}: no running Ray cluster found on this machine")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        return  # a form we do not parse: Ray's own errors apply
    import socket

    try:
        socket.create_connection((host, int(port)), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UsageError(f"{key}: cannot reach a Ray cluster at {address} ({reason})") from None


def _ray_unreachable(cfg: DictConfig, exc: Exception) -> UsageError | None:
    """A Ray cluster that cannot be reached: one line naming the key, not Ray's traceback."""
    address = _ray_address(cfg)
    if address is None or not isinstance(exc, ConnectionError | TimeoutError):
        return None
    reason = " ".join(str(exc).split())[:200] or type(exc).__name__
    return UsageError(f"hydra.launcher.ray.init.address: cannot reach a Ray cluster at {address} ({reason})")


def _job(cfg: DictConfig) -> float | None:
    """One job: validate, run the audit (or the scenario study), return the objective if any."""
    stopping.install_in_job()
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    if multirun and stopping.requested():
        return _interrupted(run_dir)
    try:
        settings = settings_from_cfg(cfg)
        logs.set_format(settings.runtime.log_format)
        with stopping.deferred():
            if settings.scenario.name != "none":
                result = _run_scenario(settings, cfg, run_dir)
            else:
                from distfs_pipeline.pipeline.runner import run_audit

                result = run_audit(settings, run_dir)
    except UsageError as err:
        fail(err)
    except BrokenPipeError:  # stdout closed after the run was saved (`| head`): not a failure
        if _Process.driver:
            raise stopping.StdoutClosed from None
        return None
    except OSError as err:  # our own files (run dir, state, chunk cache): the path is the input
        fail(UsageError(describe_os_error(err)))
    if multirun and stopping.requested():
        return _interrupted(run_dir)
    return _objective(result)


def _interrupted(run_dir: Path) -> None:
    """This job was cut short (or never started) by a stop request: record it, stop the sweep."""
    from distfs_pipeline.studies.sweep import mark_interrupted

    signal_name = stopping.requested() or "a signal"
    mark_interrupted(run_dir, signal_name)
    if _Process.driver:  # the basic launcher: no further job starts
        raise stopping.Interrupted(f"interrupted by {signal_name}; the sweep stops after job {run_dir.name}")
    return None  # a launcher's worker: its driver stops the sweep


def _run_scenario(settings: Settings, cfg: DictConfig, run_dir: Path) -> Any:
    """The studies seam: scenario jobs belong to `study` (imported only for them: it is heavier)."""
    from distfs_pipeline.studies.study import StudyJobFailed, run_scenario_job

    try:
        return run_scenario_job(settings, cfg, run_dir)
    except StudyJobFailed as err:  # already in result.json with its traceback: one line here
        raise JobFailed(str(err)) from None


def _objective(result: Any) -> float | None:
    """What a sweeper optimizes: a number, or a summary's `objective` key (None: nothing to optimize)."""
    if isinstance(result, dict):
        result = result.get("objective")
    return float(result) if isinstance(result, int | float) else None


# --- Hydra's own paths (no job) ------------------------------------------------------------------


def _hydra_main(argv: list[str]) -> int:
    """Help, info, `--cfg`, completion: exactly what `@hydra.main` does with this argv."""
    saved = sys.argv
    sys.argv = [saved[0], *argv]
    try:
        _hydra_entry()
    finally:
        sys.argv = saved
    return 0


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_entry(cfg: DictConfig) -> None:  # pragma: no cover - only help/info/cfg use this path
    """Never runs a job: `main` sends runs through `_run`/`_multirun`."""
    raise AssertionError("a run must go through app.main")


def _shell_completion(argv: list[str]) -> int:
    """Hydra's completion, with upstream's legacy flags understood.

    `-sc query=bash` reads the line being typed from `COMP_LINE`: a legacy flag (and its value)
    is taken out before Hydra parses it, and a word being typed that starts a legacy flag is
    completed here from the 13 names. Installing (`-sc install=bash`) is Hydra's script.
    """
    line = os.environ.get("COMP_LINE")
    if line is not None and any(a.startswith("query") for a in argv):
        words = line.split()
        typing = "" if line.endswith(" ") or len(words) < 2 else words[-1]
        if typing.startswith("--"):
            print(" ".join(sorted(f for f in LEGACY_FLAGS if f.startswith(typing))), flush=True)
            return 0
        os.environ["COMP_LINE"] = _without_legacy_flags(line)
    return _hydra_main(argv)


def _without_legacy_flags(line: str) -> str:
    words = line.split()
    kept: list[str] = []
    skip_value = False
    for word in words:
        if skip_value:
            skip_value = False
            continue
        if word.startswith(LEGACY_PREFIX):
            skip_value = "=" not in word
            continue
        kept.append(word)
    return " ".join(kept) + (" " if line.endswith(" ") else "")
