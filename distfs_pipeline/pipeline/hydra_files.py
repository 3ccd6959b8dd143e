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

import os
import sys
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError

JOB_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into `.hydra/`
SWEEP_FILE = "multirun.yaml"


def install() -> None:
    """Replace Hydra's writer of a job's `.hydra/` files (idempotent)."""
    import hydra.core.utils as hydra_utils

    hydra_utils._save_config = save_config  # type: ignore[assignment]


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
    job_dir = _job_dir(output_dir)
    safefile.check_real_dir(job_dir)
    make_real_dirs(job_dir, output_dir)
    safefile.write_atomic(output_dir / filename, OmegaConf.to_yaml(cfg).encode(), durable=False)


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
        path = Path(f)
        safefile.check_real_dir(path.parent)
        safefile.write_atomic(path, OmegaConf.to_yaml(config, resolve=resolve).encode(), durable=False)


def _job_dir(output_dir: Path) -> Path:
    """The job's dir (`hydra.runtime.output_dir`) when `output_dir` is inside it, else its parent."""
    from hydra.core.hydra_config import HydraConfig

    try:
        job_dir = Path(str(HydraConfig.get().runtime.output_dir))
    except Exception:
        return output_dir.parent
    return job_dir if output_dir.is_relative_to(job_dir) else output_dir.parent


def make_real_dirs(base: Path, target: Path) -> None:
    """Create each directory from `base` (a real dir) down to `target`; one that exists must be a
    real directory, not a link."""
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            safefile.check_real_dir(current)


def check_before_run(job_dir: Path, base: Path | None, output_subdir: str | None, key: str) -> None:
    """Before any job runs: refuse what is already planted where Hydra will write a job's files (a
    link or file in place of the job's dir, or of a dir between `base` (the sweep dir) and it, or
    of its `.hydra/`; a link, FIFO or directory at one of its files), as one line naming `key`.
    The writes themselves check again (see `save_config`)."""
    dirs = [job_dir]
    if base is not None and job_dir.is_relative_to(base):
        dirs = [
            base.joinpath(*job_dir.relative_to(base).parts[:n])
            for n in range(1, len(job_dir.parts) - len(base.parts) + 1)
        ]
    if output_subdir:
        dirs.append(job_dir / output_subdir)
    try:
        for directory in dirs:
            if os.path.lexists(directory):
                safefile.check_real_dir(directory)
        for name in JOB_FILES if output_subdir else ():
            safefile.check_replaceable(job_dir / str(output_subdir) / name)
    except OSError as err:
        raise UsageError(f"{key}: {safefile.describe(err)}") from None


def check_sweep_file(sweep_dir: Path, key: str) -> None:
    """Before any job runs: a link, FIFO or directory at `<sweep dir>/multirun.yaml` is refused."""
    try:
        safefile.check_replaceable(sweep_dir / SWEEP_FILE)
    except OSError as err:
        raise UsageError(f"{key}: {safefile.describe(err)}") from None
