"""Hydra's own files (`.hydra/config.yaml`, `hydra.yaml`, `overrides.yaml`, `multirun.yaml`),
written the way the tool writes its own.

Why: Hydra writes them with a plain `open(path, "w")`, which follows a link planted at the path
and truncates whatever it names. Run as root in a run or sweep dir that someone else can write to,
that overwrites any file on the machine (measured: a link planted at `.hydra/config.yaml`, or at a
sweep's `multirun.yaml`, had its target replaced by Hydra's YAML). `install()` and
`guard_sweeper()` route these writes through `safefile.write_atomic`: the same YAML, but a link,
FIFO or directory at the path is refused, and the job's dir and `.hydra/` must be real
directories, not links to elsewhere. The check is made where the write happens, so nothing
planted between the pre-flight (`check_before_run`) and a job's start gets through. `install()`
runs on import of the launch helpers (which the app imports), so it holds in joblib and Ray
workers too.
"""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distfs_pipeline.core import safefile

JOB_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into `.hydra/`
SWEEP_FILE = "multirun.yaml"


def install() -> None:
    """Replace Hydra's writer of a job's `.hydra/` files and the set-up of its log files
    (idempotent)."""
    import hydra.core.utils as hydra_utils

    hydra_utils._save_config = save_config  # type: ignore[assignment]
    if not getattr(hydra_utils.configure_log, "_distfs_guarded", False):
        hydra_utils.configure_log = _guarded_configure_log(hydra_utils.configure_log)  # type: ignore[assignment]


def _guarded_configure_log(configure_log: Any) -> Any:
    """Hydra's `configure_log`, after checking the files its handlers will open (a
    `logging.FileHandler` opens its file with a plain `open(path, "a")`: a link planted there is
    followed, a FIFO blocks the run)."""

    def guarded(log_config: Any, *args: Any, **kwargs: Any) -> Any:
        for path in log_files(log_config):
            safefile.check_writable_file(path)
        return configure_log(log_config, *args, **kwargs)

    guarded._distfs_guarded = True  # type: ignore[attr-defined]
    return guarded


def log_files(log_config: Any) -> list[Path]:
    """The files a logging config's handlers write (`filename` of a file handler)."""
    if log_config is None or not OmegaConf.is_config(log_config):
        return []
    handlers = OmegaConf.select(log_config, "handlers") or {}
    files = []
    for handler in handlers.values():
        name = OmegaConf.select(handler, "filename") if OmegaConf.is_config(handler) else None
        if name is not None:
            files.append(Path(os.path.abspath(str(name))))
    return files


def checked_run_job(run_job: Any) -> Any:
    """Hydra's `run_job`, after checking the job's dir: `run_job` creates it with `mkdir -p`
    before anything of ours runs, so a link planted in its place since the pre-flight would get
    the job's first dir created through it (the writes after are refused by `save_config`)."""
    if getattr(run_job, "_distfs_checked", False):
        return run_job

    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = inspect.signature(run_job).bind(*args, **kwargs)
        config, dir_key = bound.arguments["config"], bound.arguments["job_dir_key"]
        subdir_key = bound.arguments.get("job_subdir_key")
        job_dir, base = _planned_job_dir(config, dir_key, subdir_key)
        check_job_dirs(job_dir, base, None)
        safefile.make_trusted_dirs(job_dir)  # ours, 0755 whatever the umask (Hydra's mkdir: 0777 & ~umask)
        return run_job(*args, **kwargs)

    checked._distfs_checked = True  # type: ignore[attr-defined]
    return checked


def _planned_job_dir(config: Any, dir_key: str, subdir_key: str | None) -> tuple[Path, Path | None]:
    """The job dir `run_job` will create for `config` (as it computes it), and the sweep dir."""
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(config)  # what run_job does first: `${hydra:...}` resolves
    base = str(OmegaConf.select(config, dir_key))
    if subdir_key is None:
        return Path(os.path.abspath(base)), None
    job_dir = os.path.join(base, str(OmegaConf.select(config, subdir_key)))
    return Path(os.path.abspath(job_dir)), Path(os.path.abspath(base))


def guard_launcher(launcher: Any) -> None:
    """The launcher's `run_job` (a global of its module, like the sweeper's `OmegaConf`) checked
    as `checked_run_job` does."""
    if launcher is None:
        return
    namespace = vars(sys.modules[type(launcher).__module__])
    if "run_job" in namespace:
        namespace["run_job"] = checked_run_job(namespace["run_job"])


def guard_sweeper(sweeper: Any) -> None:
    """Make the sweeper's own writes (`multirun.yaml`; Optuna's `optimization_results.yaml`) safe.

    Done on the instance the driver is about to run, not at import: Hydra's plugin scan executes
    plugin modules afresh (`load_module`), which would undo a patch of the module made earlier.
    Each sweeper writes through its module's global `OmegaConf`, so that global is replaced."""
    for part in (sweeper, getattr(sweeper, "sweeper", None)):  # Optuna's sweeper wraps its impl
        if part is None:
            continue
        namespace = vars(sys.modules[type(part).__module__])
        if namespace.get("OmegaConf") is OmegaConf:
            namespace["OmegaConf"] = _SweeperOmegaConf()


def save_config(cfg: Any, filename: str, output_dir: Path) -> None:
    """`hydra.core.utils._save_config`: `OmegaConf.to_yaml(cfg)` into `output_dir/filename`, with
    `output_dir` (`<job dir>/.hydra`) made of real directories and no link followed."""
    job_dir, base = _job_dir(output_dir)
    check_job_dirs(job_dir, base, None)
    safefile.make_real_dirs(job_dir, output_dir)
    safefile.write_atomic(output_dir / filename, OmegaConf.to_yaml(cfg).encode(), durable=False)


def check_job_dirs(job_dir: Path, base: Path | None, output_subdir: str | None) -> None:
    """The dirs a job writes into, as `OSError`s: no component of the job dir's path is a link
    someone else planted (`check_trusted_path`); the job dir, each dir between `base` (the
    sweep dir) and it, and its `.hydra/` (`output_subdir`), where they exist, are real dirs."""
    safefile.check_trusted_path(job_dir)
    for directory in _own_dirs(job_dir, base, output_subdir):
        if os.path.lexists(directory):
            safefile.check_real_dir(directory)


def _own_dirs(job_dir: Path, base: Path | None, output_subdir: str | None) -> list[Path]:
    dirs = [job_dir]
    if base is not None and job_dir.is_relative_to(base):
        depth = len(job_dir.parts) - len(base.parts)
        dirs = [base.joinpath(*job_dir.relative_to(base).parts[:n]) for n in range(1, depth + 1)]
    if output_subdir:
        dirs.append(job_dir / output_subdir)
    return dirs


class _SweeperOmegaConf:
    """`OmegaConf` as a sweeper module sees it: its writes, `OmegaConf.save(config, <sweep
    dir>/<name>.yaml)`, made safe; everything else is OmegaConf itself."""

    def __getattr__(self, name: str) -> Any:
        return getattr(OmegaConf, name)

    @staticmethod
    def save(config: Any, f: Any, resolve: bool = False) -> None:
        if not isinstance(f, str | os.PathLike):
            OmegaConf.save(config, f, resolve=resolve)  # a stream the caller opened: not a path
            return
        path = Path(os.path.abspath(f))
        check_sweep_dir(path.parent)
        safefile.write_atomic(path, OmegaConf.to_yaml(config, resolve=resolve).encode(), durable=False)


def _job_dir(output_dir: Path) -> tuple[Path, Path | None]:
    """The job's dir (`hydra.runtime.output_dir`) when `output_dir` is inside it, else its parent;
    and the sweep dir when the job is one of a sweep's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        hydra = HydraConfig.get()
        job_dir = Path(str(hydra.runtime.output_dir))
        base = Path(os.path.abspath(str(hydra.sweep.dir))) if hydra.mode == RunMode.MULTIRUN else None
    except Exception:
        return output_dir.parent, None
    return (job_dir if output_dir.is_relative_to(job_dir) else output_dir.parent), base


def check_before_run(job_dir: Path, base: Path | None, output_subdir: str | None, key: str) -> None:
    """Before any job runs: refuse what is already planted where Hydra will write a job's files
    (see `check_job_dirs`; and a link, FIFO or directory at one of its `.hydra/` files), as one
    line naming `key`. The writes themselves check again (see `save_config`)."""
    with safefile.refused_as(key):
        check_job_dirs(job_dir, base, output_subdir)
        for name in JOB_FILES if output_subdir else ():
            safefile.check_replaceable(job_dir / str(output_subdir) / name)


def check_log_files(log_config: Any, key: str) -> None:
    """Before any job runs: the files the job's log handlers will append to (see
    `_guarded_configure_log`), as one line naming `key`."""
    with safefile.refused_as(key):
        for path in log_files(log_config):
            safefile.check_writable_file(path)


def check_sweep_file(sweep_dir: Path, key: str) -> None:
    """Before any job runs: the sweep dir is a real directory (where it exists) reached by no link
    someone else planted, and nothing is planted at its `multirun.yaml`."""
    with safefile.refused_as(key):
        check_sweep_dir(sweep_dir)
        safefile.check_replaceable(sweep_dir / SWEEP_FILE)


def check_sweep_dir(sweep_dir: Path) -> None:
    """As an `OSError`: the sweep dir, where it exists, is a real directory, and no component of
    its path is a link someone else planted."""
    safefile.check_own_dir(sweep_dir)
