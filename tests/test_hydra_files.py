"""Hydra's own files are written without following links (see `pipeline/hydra_files.py`).

Hydra writes `.hydra/*.yaml` and a sweep's `multirun.yaml` with `open(path, "w")`: run as root in
a shared run or sweep dir, a link planted there made it truncate any file (measured before the
fix: the victim held Hydra's YAML afterwards). These tests plant real links, FIFOs and directories
and check that the victim is untouched, the run is refused with one line before any job, and the
write itself refuses what is planted after the pre-flight.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from distfs_pipeline.core import safefile
from distfs_pipeline.pipeline import hydra_files
from tests.test_app import run_cli as app_cli

ROOT = Path(__file__).resolve().parent.parent
VICTIM_TEXT = "root's precious file\n"


def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim"
    path.write_text(VICTIM_TEXT)
    return path


def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return app_cli(cwd, cwd / "cache", *args, "runtime.progress=never")


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[HYDRA]")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


# --- the writes themselves (what a link planted after the pre-flight meets) ---------------------


def test_save_config_writes_hydras_yaml(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"a": 1, "b": {"c": "x"}})
    (tmp_path / "job").mkdir()
    hydra_files.save_config(cfg, "config.yaml", tmp_path / "job" / ".hydra")
    assert (tmp_path / "job" / ".hydra" / "config.yaml").read_text() == OmegaConf.to_yaml(cfg)


@pytest.mark.parametrize("planted", ["file link", "hydra dir link", "job dir link", "fifo"])
def test_save_config_refuses_what_is_planted(tmp_path: Path, planted: str) -> None:
    target = victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    job = tmp_path / "sweep" / "0"
    if planted == "job dir link":
        job.parent.mkdir()
        job.symlink_to(elsewhere)
    else:
        (job / ".hydra").parent.mkdir(parents=True)
    if planted == "hydra dir link":
        (job / ".hydra").symlink_to(elsewhere)
    elif planted in ("file link", "fifo"):
        (job / ".hydra").mkdir()
        if planted == "fifo":
            os.mkfifo(job / ".hydra" / "config.yaml")
        else:
            (job / ".hydra" / "config.yaml").symlink_to(target)
    with pytest.raises(safefile.UnsafeFileError, match="refusing to use it"):
        hydra_files.save_config(OmegaConf.create({"a": 1}), "config.yaml", job / ".hydra")
    assert target.read_text() == VICTIM_TEXT and list(elsewhere.iterdir()) == []


def test_the_sweeper_save_refuses_a_link_and_writes_the_same_yaml(tmp_path: Path) -> None:
    safe = hydra_files._SweeperOmegaConf()
    cfg = OmegaConf.create({"hydra": {"x": 1}, "y": [1, 2]})
    safe.save(cfg, tmp_path / "multirun.yaml")
    OmegaConf.save(cfg, tmp_path / "plain.yaml")
    assert (tmp_path / "multirun.yaml").read_bytes() == (tmp_path / "plain.yaml").read_bytes()
    target = victim(tmp_path)
    (tmp_path / "linked.yaml").symlink_to(target)
    with pytest.raises(safefile.UnsafeFileError):
        safe.save(cfg, str(tmp_path / "linked.yaml"))
    assert target.read_text() == VICTIM_TEXT
    assert safe.to_yaml(cfg) == OmegaConf.to_yaml(cfg)  # everything else is OmegaConf's


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, on importing Optuna
def test_the_guards_are_in_place_where_jobs_run() -> None:
    """`launching` (imported by the app and by every worker before a job) installs the writer;
    `guard_sweeper` replaces the global the basic and Optuna sweepers write through."""
    import hydra.core.utils as hydra_utils
    from hydra._internal.core_plugins import basic_sweeper
    from hydra_plugins.hydra_optuna_sweeper import _impl as optuna_impl

    import distfs_pipeline.pipeline.launching  # noqa: F401

    assert hydra_utils._save_config is hydra_files.save_config

    class Wrapper:  # shaped like Optuna's sweeper: the writing code lives in the wrapped impl
        sweeper = object.__new__(optuna_impl.OptunaSweeperImpl)

    hydra_files.guard_sweeper(object.__new__(basic_sweeper.BasicSweeper))
    hydra_files.guard_sweeper(Wrapper())
    assert isinstance(basic_sweeper.OmegaConf, hydra_files._SweeperOmegaConf)
    assert isinstance(optuna_impl.OmegaConf, hydra_files._SweeperOmegaConf)


# --- the app: refused before any job, one line, exit 2 -------------------------------------------


def test_a_run_refuses_a_link_at_its_hydra_config(tmp_path: Path) -> None:
    target = victim(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").symlink_to(target)
    result = run_cli(tmp_path, "runtime.rounds=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert one_error(result) == (
        f"distfs_pipeline: error: hydra.run.dir: {run_dir / '.hydra' / 'config.yaml'}: "
        "refusing to use it: it is a symbolic link"
    )
    assert target.read_text() == VICTIM_TEXT and not (run_dir / "probe-state.json").exists()


def test_a_run_dir_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "run").symlink_to(elsewhere)
    result = run_cli(tmp_path, "runtime.rounds=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "it is a symbolic link" in one_error(result)
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("planted", ["multirun.yaml", "1", "1/.hydra", "1/.hydra/overrides.yaml"])
def test_a_sweep_refuses_what_is_planted_before_any_job(tmp_path: Path, planted: str) -> None:
    """Planted for the second job too: nothing runs, not even the first job."""
    target = victim(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep_dir = tmp_path / "m"
    path = sweep_dir / planted
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target if planted.endswith(".yaml") else elsewhere)
    result = run_cli(tmp_path, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 2
    assert one_error(result).startswith(f"distfs_pipeline: error: hydra.sweep.dir: {path}: refusing")
    assert target.read_text() == VICTIM_TEXT and list(elsewhere.iterdir()) == []
    assert not (sweep_dir / "0").exists()  # refused before the first job


# --- links someone else planted on the way, log files, the sweeper's database -------------------

NOBODY = 65534
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's link needs root")


def foreign_link(link: Path, target: Path) -> Path:
    """A link as another user would plant it (root can give it away with lchown)."""
    link.symlink_to(target)
    os.lchown(link, NOBODY, NOBODY)
    return link


@as_root
def test_a_link_owned_by_someone_else_on_the_run_dirs_path_is_refused(tmp_path: Path) -> None:
    """`outputs/<date>` planted as a link in a shared cwd would send the whole run elsewhere; a
    link of root's own (a user's alias for a data disk) is followed as before."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    foreign_link(tmp_path / "shared", elsewhere)
    result = run_cli(tmp_path, "runtime.rounds=2", f"hydra.run.dir={tmp_path / 'shared' / 'run'}")
    assert result.returncode == 2
    assert one_error(result) == (
        f"distfs_pipeline: error: hydra.run.dir: {tmp_path / 'shared'}: refusing to use it: "
        f"it is a symbolic link owned by uid {NOBODY}"
    )
    assert list(elsewhere.iterdir()) == []
    (tmp_path / "alias").symlink_to(elsewhere)  # root's own link
    result = run_cli(tmp_path, "runtime.rounds=2", f"hydra.run.dir={tmp_path / 'alias' / 'run'}")
    assert result.returncode == 0, result.stderr
    assert (elsewhere / "run" / "summary.json").is_file()


@pytest.mark.parametrize("planted", ["link", "fifo", "hard link"])
def test_a_job_log_file_that_is_not_a_plain_file_is_refused(tmp_path: Path, planted: str) -> None:
    """Hydra's default job logging opens `<run dir>/app.log` with `logging.FileHandler`, which
    follows a link and blocks on a FIFO; a hard link would append to someone else's file."""
    target = victim(tmp_path)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    log = run_dir / "app.log"
    if planted == "link":
        log.symlink_to(target)
    elif planted == "fifo":
        os.mkfifo(log)
    else:
        os.link(target, log)
    result = run_cli(tmp_path, "hydra/job_logging=default", "runtime.rounds=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 2
    assert one_error(result).startswith(f"distfs_pipeline: error: hydra.job_logging: {log}: refusing")
    assert target.read_text() == VICTIM_TEXT


def test_a_plain_job_log_is_written(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(tmp_path, "hydra/job_logging=default", "runtime.rounds=2", f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr
    assert (run_dir / "app.log").is_file() and not (run_dir / "app.log").is_symlink()


def test_a_sweep_dir_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (tmp_path / "m").symlink_to(elsewhere)
    result = run_cli(tmp_path, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={tmp_path / 'm'}")
    assert result.returncode == 2 and "it is a symbolic link" in one_error(result)
    assert list(elsewhere.iterdir()) == []


def test_the_optuna_database_is_not_opened_through_a_link(tmp_path: Path) -> None:
    target = victim(tmp_path)
    (tmp_path / "study.db").symlink_to(target)
    result = run_cli(
        tmp_path,
        "-m",
        "hydra/sweeper=optuna",
        "hydra.sweeper.storage=sqlite:///study.db",
        "hydra.sweeper.n_trials=2",
        "runtime.rounds=2",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    assert result.returncode == 2
    assert one_error(result).startswith(
        f"distfs_pipeline: error: hydra.sweeper.storage: {tmp_path / 'study.db'}"
    )
    assert target.read_text() == VICTIM_TEXT


@pytest.mark.parametrize("launcher", ["basic", "joblib"])
def test_a_job_dir_planted_mid_sweep_is_refused_before_anything_is_made_in_it(
    tmp_path: Path, launcher: str
) -> None:
    """The pre-flight saw nothing; the link appears while the first jobs run. Hydra's `run_job`
    would `mkdir -p` the job's dir (here `<n>/x`) through it: it is checked before that."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    sweep_dir = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    command = [sys.executable, "-m", "distfs_pipeline", "-m", f"hydra/launcher={launcher}"]
    command += ["runtime.progress=never", "runtime=wall", "runtime.tick_ms=20", "runtime.rounds=40"]
    command += [
        "runtime.node_id=a,b,c,d,e",
        f"hydra.sweep.dir={sweep_dir}",
        "hydra.sweep.subdir=${hydra.job.num}/x",
    ]
    proc = subprocess.Popen(
        command,
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (sweep_dir / "0" / "x" / "rounds.jsonl").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.01)
    (sweep_dir / "4").symlink_to(elsewhere)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert f"distfs_pipeline: error: hydra.sweep.dir: {sweep_dir / '4'}: refusing to use it" in err
    assert "Traceback" not in err and list(elsewhere.iterdir()) == []


@as_root
def test_the_path_checks(tmp_path: Path) -> None:
    target = victim(tmp_path)
    safefile.check_trusted_path(tmp_path / "missing" / "deeper")  # nothing there yet: fine
    foreign_link(tmp_path / "theirs", tmp_path)
    with pytest.raises(safefile.UnsafeFileError, match=f"owned by uid {NOBODY}"):
        safefile.check_trusted_path(tmp_path / "theirs" / "x")
    os.link(target, tmp_path / "hard")
    with pytest.raises(safefile.UnsafeFileError, match="2 hard links"):
        safefile.check_single_file(tmp_path / "hard")
    safefile.check_single_file(tmp_path / "absent")
