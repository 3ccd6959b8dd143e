"""How a sweep's jobs reach its launcher: each job composed once, parallel workers started early.

Why: a policy study's job is short (300 rounds is about a tenth of a second), so what Hydra does
around a job dominates a sweep. Measured here (`benchmarks/bench_sweep.py`), Hydra composes every
job twice (our pre-flight validates each job by composing it; then the launcher composes it
again, about 80 ms a job), and the joblib launcher's workers are fresh processes that import the
app (about half a second) only once the driver has finished validating. So:

- `check_sweep` composes each job exactly as the launcher will, through `ReusingConfigLoader`
  (`load_sweep_config` with the same master config and the same overrides), and the launcher is
  handed those configs: the basic launcher through the loader; the joblib launcher through
  `launch_precomposed`, which is the joblib launcher's own `launch` with two changes: each task
  carries its job's config (about 23 KB pickled) instead of composing it again in the worker, and
  the results are taken as jobs finish, so that in the last wave the driver prepares the sweep's
  end (the summary's imports) on the core that wave leaves idle (`prepare_for_end`).
- `WorkerWarmup` starts the joblib launcher's workers, in a thread, as soon as the base config
  names the launcher, so they import while the driver validates the jobs; joblib's `Parallel`
  reuses a running executor with the same settings, so the jobs land on these workers.

Nothing here changes what a job runs: the configs are Hydra's own composes, validated before any
job starts, each handed out once.
"""

from __future__ import annotations

import copy
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, run_job, setup_globals
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.pipeline import hydra_files, stopping

# Hydra's own files are written without following links, in the driver and in every worker (which
# imports this module, or the app that imports it, before its first job): see `hydra_files`.
hydra_files.install()

BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
JOBLIB_LAUNCHER = "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
RAY_LAUNCHER = "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher"
REUSING_LAUNCHERS = (BASIC_LAUNCHER, JOBLIB_LAUNCHER)


class ReusingConfigLoader:
    """Hydra's config loader, except that a job's config composed by `check_sweep` is handed out
    instead of being composed a second time.

    Each kept config is given out once (then dropped, so memory does not grow with the sweep); a
    call the check did not make (another sweeper, a job past the check's cap) composes as Hydra
    does. Everything else is delegated to Hydra's loader. Never pickled into a worker: the
    workers get Hydra's loader (`launch_precomposed`).
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._composed: dict[tuple[str, ...], DictConfig] = {}

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("inner", "_composed"):  # not set yet (unpickling, copy)
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        """Pickled (a launcher sending its context to workers), it is Hydra's loader: the kept
        configs stay in this process, and a worker composes as Hydra's own would."""
        return _same, (self.inner,)

    def compose_job(
        self, master: DictConfig, overrides: Sequence[str], describe: Callable[[Exception], str]
    ) -> DictConfig:
        """The job's config for validation (the caller may change it); a pristine copy is kept."""
        try:
            cfg = self.inner.load_sweep_config(master, list(overrides))
        except Exception as exc:
            raise UsageError(describe(exc)) from None
        self._composed[tuple(overrides)] = copy.deepcopy(cfg)
        return cfg

    def load_sweep_config(self, master_config: DictConfig, sweep_overrides: Sequence[str]) -> DictConfig:
        kept = self._composed.pop(tuple(sweep_overrides), None)
        if kept is not None:
            return kept
        return self.inner.load_sweep_config(master_config, list(sweep_overrides))


def _same(value: Any) -> Any:
    return value


def launcher_target(cfg: DictConfig) -> str | None:
    target = OmegaConf.select(cfg, "hydra.launcher._target_")
    return None if target is None else str(target)


# --- joblib ----------------------------------------------------------------------------------


def joblib_options(cfg: DictConfig) -> dict[str, Any]:
    """`Parallel`'s arguments exactly as the joblib launcher builds them from its node."""
    from hydra_plugins.hydra_joblib_launcher._core import process_joblib_cfg

    options = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert isinstance(options, dict)
    options = {str(k): v for k, v in options.items() if k != "_target_"}
    options["backend"] = "loky"  # as the launcher: its threading backend is incompatible with Hydra
    process_joblib_cfg(options)
    return options


class WorkerWarmup:
    """The joblib launcher's workers, started in a thread while the driver validates the sweep.

    `warm` runs once in each worker (a module-level function, pickled by reference, so unpickling
    it imports its module there). A failure only loses the head start: the launcher starts its
    workers itself and reports what is wrong.
    """

    def __init__(self, options: dict[str, Any], warm: Callable[[], Any]) -> None:
        self._thread = threading.Thread(target=self._run, args=(options, warm), daemon=True)
        self._thread.start()

    @staticmethod
    def _run(options: dict[str, Any], warm: Callable[[], Any]) -> None:
        try:
            from joblib import Parallel, delayed

            _start_resource_trackers()  # starting one unblocks SIGINT and SIGTERM in this thread
            stopping.block_for_workers()  # so workers (and loky's threads) start with them blocked

            Parallel(**options)(delayed(warm)() for _ in range(worker_count(options)))
        except Exception:
            return

    def ready(self) -> None:
        """Wait for the warm-up (it shares the executor the launcher is about to use)."""
        self._thread.join()

    def abandon(self) -> None:
        """Validation failed and no job will run: stop the workers before the error is reported."""
        self._thread.join()
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True, kill_workers=True)


def worker_count(options: dict[str, Any]) -> int:
    """How many workers `Parallel(**options)` runs (`n_jobs`; a negative one counts from the CPUs)."""
    n_jobs = int(options.get("n_jobs") or 1)
    return max(1, (os.cpu_count() or 1) + 1 + n_jobs if n_jobs < 0 else n_jobs)


def release_workers() -> None:
    """The sweep's jobs are done: tell the joblib workers to exit now, so that they wind down while
    the driver writes the summary, not after it (a worker's exit takes about 0.25 s of a sweep's
    end, measured here, and loky's exit hook would wait for it). Only an optimization: any error
    leaves the workers to that hook."""
    try:
        from joblib.externals.loky import reusable_executor

        executor = reusable_executor._executor
        if executor is not None:
            executor.shutdown(wait=False)
    except Exception:
        return


def _start_resource_trackers() -> None:
    """Start the resource trackers loky and multiprocessing use, if not yet running. Each one's
    `ensure_running` blocks SIGINT and SIGTERM around its spawn and then unblocks them in the
    calling thread, which would undo `stopping.block_for_workers` for the workers started after."""
    from multiprocessing import resource_tracker as mp_tracker

    from joblib.externals.loky.backend import resource_tracker as loky_tracker

    loky_tracker.ensure_running()
    mp_tracker.ensure_running()


def launch_precomposed(
    launcher: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int
) -> Sequence[JobReturn]:
    """The joblib launcher's `launch` (`hydra_joblib_launcher._core.launch`), except that each
    job's config is taken from the launcher's `ReusingConfigLoader` here and sent with the task,
    so the workers do not compose it again."""
    from hydra.core.utils import configure_log, filter_overrides
    from hydra_plugins.hydra_joblib_launcher._core import log, process_joblib_cfg
    from joblib import Parallel, delayed

    setup_globals()
    context = launcher.hydra_context
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    safefile.make_trusted_dirs(str(launcher.config.hydra.sweep.dir))
    options = dict(launcher.joblib)
    options["backend"] = "loky"
    process_joblib_cfg(options)
    log.info(
        "Joblib.Parallel({}) is launching {} jobs".format(
            ",".join(f"{k}={v}" for k, v in options.items()), len(job_overrides)
        )
    )
    log.info(f"Launching jobs, sweep output dir : {launcher.config.hydra.sweep.dir}")
    configs = []
    for idx, overrides in enumerate(job_overrides):
        log.info("\t#{} : {}".format(idx, " ".join(filter_overrides(overrides))))
        configs.append(context.config_loader.load_sweep_config(launcher.config, list(overrides)))
    worker_context = HydraContext(config_loader=context.config_loader.inner, callbacks=context.callbacks)
    singleton_state = Singleton.get_state()
    tasks = (
        delayed(_numbered)(
            idx, initial_job_idx + idx, job_cfg, worker_context, launcher.task_function, singleton_state
        )
        for idx, job_cfg in enumerate(configs)
    )
    finished = Parallel(**options, return_as="generator_unordered")(tasks)
    return in_job_order(
        finished, len(configs), worker_count(options), lambda: prepare_for_end(context.callbacks)
    )


def in_job_order(
    finished: Iterable[tuple[int, JobReturn]], count: int, workers: int, on_idle: Callable[[], None]
) -> list[JobReturn]:
    """The jobs' returns in job order, from (place, return) pairs in the order the jobs finish;
    `on_idle` is called once, as soon as fewer jobs are left than there are workers."""
    runs: list[JobReturn | None] = [None] * count
    left = count
    if left < workers:
        on_idle()
    for idx, ret in finished:
        runs[idx] = ret
        left -= 1
        if left == workers - 1:
            on_idle()
    if left or any(ret is None for ret in runs):
        raise RuntimeError(f"joblib returned {count - left} results for {count} jobs")
    return runs  # type: ignore[return-value]


def prepare_for_end(callbacks: Any) -> None:
    """Every job left is running and a worker has none: callbacks with a `prepare_for_end()` get
    to do their end-of-sweep set-up now, on the idle core, instead of after the last job (the
    summary imports matplotlib, about half a second of a 9-job sweep's serial end, measured
    here). Only an optimization: an error is left for the end, which does the same work again."""
    for callback in getattr(callbacks, "callbacks", None) or ():
        prepare = getattr(callback, "prepare_for_end", None)
        if prepare is not None:
            try:
                prepare()
            except Exception:
                continue


def _numbered(idx: int, *args: Any) -> tuple[int, JobReturn]:
    """`execute_precomposed` tagged with the job's place, since results arrive as jobs finish."""
    return idx, execute_precomposed(*args)


def execute_precomposed(
    idx: int,
    sweep_config: DictConfig,
    hydra_context: HydraContext,
    task_function: TaskFunction,
    singleton_state: dict[Any, Any],
) -> JobReturn:
    """In the worker: the joblib launcher's `execute_job` with the job's config already composed."""
    stopping.detach_worker()  # if the warm-up did not run in this worker
    setup_globals()
    Singleton.set_state(singleton_state)
    with open_dict(sweep_config):
        sweep_config.hydra.job.id = f"{sweep_config.hydra.job.name}_{idx}"
        sweep_config.hydra.job.num = idx
    HydraConfig.instance().set_config(sweep_config)
    return hydra_files.checked_run_job(run_job)(
        hydra_context=hydra_context,
        config=sweep_config,
        task_function=task_function,
        job_dir_key="hydra.sweep.dir",
        job_subdir_key="hydra.sweep.subdir",
    )
