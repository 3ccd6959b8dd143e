"""Real multiruns through the CLI: basic, joblib and Ray launchers, the Optuna sweeper, a failed job.

Each test starts `python -m distfs_pipeline -m ...` as a user would and reads the files the sweep
leaves. They are kept few and small: every Hydra start costs about a second, Ray about ten. Ray and
Optuna come with the `test` extra; a machine without them skips those tests, CI (CI set) fails them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from distfs_pipeline.studies import sweep

# lost_blob, moved early so a 30-round run shows the fault (round 5) and the repair (round 15).
EARLY_LOST_BLOB = (
    "scenario=lost_blob",
    "scenario.faults.0.at_round=5",
    "scenario.faults.0.repair_at_round=15",
    "runtime.rounds=30",
)
POLICIES = "policy=default,steady,thrifty"


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo store for the whole module (built by the first job, shared by the rest)."""
    return tmp_path_factory.mktemp("xdg-cache")


def multirun(
    cwd: Path, cache_home: Path, *overrides: str, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "distfs_pipeline", "-m", f"hydra.sweep.dir={cwd / 'sweep'}"]
    command += ["runtime.progress=never", *overrides]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def summary(cwd: Path) -> dict[str, Any]:
    sweep_dir = cwd / "sweep"
    assert (sweep_dir / sweep.SUMMARY_CSV).is_file()
    assert (sweep_dir / sweep.SUMMARY_PNG).read_bytes().startswith(b"\x89PNG")
    data: dict[str, Any] = json.loads((sweep_dir / sweep.SUMMARY_JSON).read_text())
    return data


def require(module: str) -> None:
    """Skip without an optional launcher/sweeper, except in CI, where its absence is a failure."""
    if importlib.util.find_spec(module) is None:
        message = f"{module} is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def assert_policy_study(data: dict[str, Any]) -> None:
    rows = data["rows"]
    assert (data["jobs"], data["completed"], data["failed"]) == (3, 3, 0)
    policies = [next(o for o in r["overrides"].split() if o.startswith("policy=")) for r in rows]
    assert policies == ["policy=default", "policy=steady", "policy=thrifty"]
    for row in rows:
        assert row["scenario"] == "lost_blob" and row["detection_latency_ms"] is not None
        result = json.loads((Path(data["sweep_dir"]) / row["job_dir"] / "result.json").read_text())
        assert result["objective"] == row["objective"] and result["status"] == "completed"
    assert any(r["pareto_detection"] for r in rows) and any(r["pareto_recovery"] for r in rows)


def test_basic_launcher_three_jobs_leave_the_summary_files_and_plot(tmp_path: Path, cache_home: Path) -> None:
    done = multirun(tmp_path, cache_home, *EARLY_LOST_BLOB, POLICIES)
    assert done.returncode == 0, done.stderr
    assert_policy_study(summary(tmp_path))
    assert "3 jobs: 3 completed, 0 failed" in done.stdout


def test_joblib_launcher_runs_the_jobs_in_parallel_workers(tmp_path: Path, cache_home: Path) -> None:
    done = multirun(
        tmp_path, cache_home, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", *EARLY_LOST_BLOB, POLICIES
    )
    assert done.returncode == 0, done.stderr
    assert "Joblib.Parallel" in done.stdout + done.stderr
    assert_policy_study(summary(tmp_path))


def test_ray_launcher_on_a_local_ray_runtime(tmp_path: Path, cache_home: Path) -> None:
    require("hydra_plugins.hydra_ray_launcher")
    ray = ("hydra/launcher=ray", "+hydra.launcher.ray.init.num_cpus=2")
    ray += ("+hydra.launcher.ray.init.include_dashboard=false",)
    done = multirun(tmp_path, cache_home, *ray, *EARLY_LOST_BLOB, POLICIES, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "Ray Launcher is launching 3 jobs" in done.stdout + done.stderr
    assert_policy_study(summary(tmp_path))


def test_optuna_sweeper_minimizes_the_study_objective(tmp_path: Path, cache_home: Path) -> None:
    require("hydra_plugins.hydra_optuna_sweeper")
    optuna = ("hydra/sweeper=optuna", "hydra.sweeper.n_trials=4", "hydra.sweeper.n_jobs=2")
    optuna += (
        "hydra.sweeper.sampler.seed=7",
        "policy=steady",
        "policy.backoff_base_ms=range(0,3000,step=500)",
    )
    slow = ("scenario=slow_disk", "scenario.faults.0.at_round=5", "scenario.faults.0.repair_at_round=20")
    done = multirun(tmp_path, cache_home, *optuna, *slow, "runtime.rounds=40")
    assert done.returncode == 0, done.stderr[-4000:]
    data = summary(tmp_path)
    assert (data["jobs"], data["completed"]) == (4, 4)
    best = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(r["objective"] for r in data["rows"])


def test_a_failed_job_is_listed_with_its_error_and_the_others_are_kept(
    tmp_path: Path, cache_home: Path
) -> None:
    done = multirun(tmp_path, cache_home, *EARLY_LOST_BLOB, "scenario.faults.0.target_index=99,10")
    assert done.returncode == 1  # Hydra re-raises the failed job after the batch
    rows = summary(tmp_path)["rows"]
    assert [r["status"] for r in rows] == ["failed", "completed"]
    assert "target_index 99 + blobs 1 exceeds the 40 audit candidates" in rows[0]["error"]
    assert rows[1]["detection_latency_ms"] is not None
    assert "error: UsageError: scenario.faults[0]: target_index 99" in done.stdout


def test_plain_audit_sweep_gets_a_summary_from_the_run_summaries(tmp_path: Path, cache_home: Path) -> None:
    done = multirun(tmp_path, cache_home, "policy=default,steady", "runtime.rounds=5")
    assert done.returncode == 0, done.stderr
    rows = summary(tmp_path)["rows"]
    assert [(r["status"], r["scenario"], r["checks_spent"], r["rounds"]) for r in rows] == [
        ("completed", "none", 5, 5),
        ("completed", "none", 5, 5),
    ]


# --- each job composed once; joblib's workers started early, stopped on a refused sweep ---------

COUNTING_DRIVER = """
import atexit, sys
from hydra._internal.config_loader_impl import ConfigLoaderImpl
calls = []
real = ConfigLoaderImpl.load_configuration
def counting(self, *args, **kwargs):
    calls.append(1)
    return real(self, *args, **kwargs)
ConfigLoaderImpl.load_configuration = counting
atexit.register(lambda: print(f"composes in the driver: {len(calls)}", flush=True))
from distfs_pipeline.app import main
sys.exit(main(sys.argv[1:]))
"""


def counted_multirun(cwd: Path, cache_home: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-c", COUNTING_DRIVER, "-m", "runtime.progress=never", *overrides]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)


def test_basic_launcher_composes_each_job_once(tmp_path: Path, cache_home: Path) -> None:
    """The pre-flight composes every job to validate it; the launcher gets those configs instead of
    composing each again (it did: 1 + 3 + 3 composes for this sweep)."""
    done = counted_multirun(
        tmp_path, cache_home, f"hydra.sweep.dir={tmp_path / 'sweep'}", POLICIES, "runtime.rounds=2"
    )
    assert done.returncode == 0, done.stderr
    assert "composes in the driver: 4" in done.stdout  # the sweep's base, then one per job
    data = json.loads((tmp_path / "sweep" / sweep.SUMMARY_JSON).read_text())
    assert (data["jobs"], data["completed"]) == (3, 3)


def test_joblib_jobs_get_the_driver_configs_and_one_sweep_dir(tmp_path: Path, cache_home: Path) -> None:
    """Workers run the configs the driver composed and checked (named as the joblib launcher names
    them), and `${distfs_run_id:}` in the sweep dir is the driver's in every worker (each worker
    used to resolve its own id and scatter the sweep over one dir per worker)."""
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    sweep_dir = "hydra.sweep.dir=" + str(tmp_path / "sweeps") + "/${distfs_run_id:}"
    done = counted_multirun(tmp_path, cache_home, *joblib, sweep_dir, POLICIES, "runtime.rounds=2")
    assert done.returncode == 0, done.stderr
    assert "composes in the driver: 4" in done.stdout
    (only,) = (tmp_path / "sweeps").iterdir()
    data = json.loads((only / sweep.SUMMARY_JSON).read_text())
    assert (data["jobs"], data["completed"]) == (3, 3)
    for number in range(3):
        job = yaml.safe_load((only / str(number) / ".hydra" / "config.yaml").read_text())
        hydra_cfg = yaml.safe_load((only / str(number) / ".hydra" / "hydra.yaml").read_text())["hydra"]
        assert hydra_cfg["job"]["id"] == f"app_{number}" and hydra_cfg["job"]["num"] == number
        assert job["policy"] is not None


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() in (entry / "environ").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def test_a_joblib_sweep_refused_in_pre_flight_leaves_no_worker_behind(
    tmp_path: Path, cache_home: Path
) -> None:
    """The workers are started while the jobs are validated (before anything is refused): a refused
    sweep is still one line and exit 2, no sweep dir, and no worker process outlives the command."""
    marker = f"DISTFS_TEST_MARKER={os.getpid()}-{tmp_path.name}"
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), marker.split("=")[0]: marker.split("=")[1]}
    command = [
        sys.executable,
        "-m",
        "distfs_pipeline",
        "-m",
        "hydra/launcher=joblib",
        "hydra.launcher.n_jobs=2",
    ]
    command += [
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        POLICIES,
        f"runtime.state_path={tmp_path / 'one.json'}",
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "would be shared by sweep jobs 0 and 1" in done.stderr
    assert _processes_with(marker) == []
    assert not (tmp_path / "sweep").exists()


def test_two_sweeps_started_together_get_their_own_default_dirs(tmp_path: Path, cache_home: Path) -> None:
    """Hydra's default sweep dir has one-second resolution: two sweeps started in the same second
    shared it (their job dirs 0, 1 collided). Ours ends in the driver's `${distfs_run_id:}`."""
    env = {**os.environ, "XDG_CACHE_HOME": str(cache_home), "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "distfs_pipeline", "-m", "policy=default,steady", "runtime.rounds=2"]
    command += ["runtime.progress=never"]
    runs = [subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL) for _ in range(2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0]
    dirs = sorted((tmp_path / "multirun").glob("*/*"))
    assert len(dirs) == 2
    for sweep_dir in dirs:
        data = json.loads((sweep_dir / sweep.SUMMARY_JSON).read_text())
        assert (data["jobs"], data["completed"]) == (2, 2)


def test_optuna_trials_on_the_joblib_launcher(tmp_path: Path, cache_home: Path) -> None:
    """A sweeper other than the basic one hands its jobs to the joblib launcher's own `launch`,
    which pickles the launcher's context (our reusing loader) into the workers: unpickling it
    recursed without end before the loader pickled as Hydra's own."""
    require("hydra_plugins.hydra_optuna_sweeper")
    optuna = ("hydra/sweeper=optuna", "hydra.sweeper.n_trials=2", "hydra.sweeper.n_jobs=2")
    optuna += (
        "hydra.sweeper.sampler.seed=7",
        "policy=steady",
        "policy.backoff_base_ms=range(0,3000,step=500)",
    )
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    slow = ("scenario=slow_disk", "scenario.faults.0.at_round=5", "scenario.faults.0.repair_at_round=20")
    done = multirun(tmp_path, cache_home, *optuna, *joblib, *slow, "runtime.rounds=40")
    assert done.returncode == 0, done.stderr[-4000:]
    data = summary(tmp_path)
    assert (data["jobs"], data["completed"]) == (2, 2)


# --- joblib's last wave: the returns in job order, the idle core used for the summary's imports ------


def test_joblib_returns_come_back_in_job_order_and_the_idle_hook_fires_once() -> None:
    from distfs_pipeline.pipeline.launching import in_job_order

    seen: list[int] = []
    arrived: list[int] = []

    def finished() -> Any:
        for idx in (3, 0, 4, 1, 2):  # the order the jobs happen to end in
            arrived.append(idx)
            yield idx, f"return {idx}"

    runs = in_job_order(finished(), 5, 2, lambda: seen.append(len(arrived)))
    assert runs == [f"return {i}" for i in range(5)]
    assert seen == [4]  # one job left on 2 workers: one worker idle until the end


def test_the_idle_hook_fires_at_once_when_there_are_fewer_jobs_than_workers() -> None:
    from distfs_pipeline.pipeline.launching import in_job_order

    seen: list[str] = []
    assert in_job_order(iter([(0, "only")]), 1, 2, lambda: seen.append("idle")) == ["only"]
    assert seen == ["idle"]


def test_a_missing_joblib_return_is_an_error_not_a_hole() -> None:
    from distfs_pipeline.pipeline.launching import in_job_order

    with pytest.raises(RuntimeError, match="1 results for 2 jobs"):
        in_job_order(iter([(1, "second")]), 2, 2, lambda: None)


def test_a_failing_prepare_hook_does_not_stop_the_others() -> None:
    from distfs_pipeline.pipeline.launching import prepare_for_end

    calls: list[str] = []

    class Broken:
        def prepare_for_end(self) -> None:
            calls.append("broken")
            raise OSError("no font cache")

    class Fine:
        def prepare_for_end(self) -> None:
            calls.append("fine")

    class Callbacks:  # Hydra's holds its callbacks in `.callbacks`
        def __init__(self) -> None:
            self.callbacks = [Broken(), object(), Fine()]

    prepare_for_end(Callbacks())
    assert calls == ["broken", "fine"]


@pytest.mark.parametrize(("plot", "imported"), [(True, True), (False, False)])
def test_the_summary_prepares_its_plot_only_when_it_draws_one(plot: bool, imported: bool) -> None:
    probe = (
        "import sys\n"
        "from distfs_pipeline.studies.sweep import SweepSummary\n"
        f"SweepSummary(plot={plot}).prepare_for_end()\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == str(imported)
