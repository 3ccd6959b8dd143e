"""The CLI's guard rails, through real subprocesses: nothing written inside the store, no callable a
preset did not earn, Hydra's interpolations, signals from start to end, a closed stdout, a full or
read-only run dir, one log stream (text or JSON)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.store import LocalCasStore
from tests.test_app import (
    ROOT,
    TIMEOUT_S,
    cli_env,
    read_jsonl,
    run_cli,
    start_cli,
    summary_of,
    wait_for_rounds,
)


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("xdg-cache")


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {
        str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def store(tmp_path: Path) -> LocalCasStore:
    made = LocalCasStore(tmp_path / "store")
    for i in range(3):
        made.put_bytes(f"blob {i}".encode() * 100)
    return made


# --- nothing inside the audited store -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["hydra.run.dir={store}/run"], "hydra.run.dir"),
        (["runtime.state_path={store}/blobs/state.json"], "runtime.state_path"),
        (["runtime.state_path={tmp}/s.json", "probe.chunk_cache_dir={store}/cache"], "probe.chunk_cache_dir"),
        (["runtime.state_path={tmp}/link/s.json"], "runtime.state_path"),  # a symlink into the store
        (["probe.verify_mode=full", "probe.chunk_cache_dir={store}"], "probe.chunk_cache_dir"),
    ],
)
def test_no_path_of_ours_may_lie_inside_the_store(
    tmp_path: Path, cache_home: Path, store: LocalCasStore, args: list[str], key: str
) -> None:
    (tmp_path / "link").symlink_to(store.root / "blobs")
    before = snapshot(store.root)
    args = [a.replace("{store}", str(store.root)).replace("{tmp}", str(tmp_path)) for a in args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append(f"hydra.run.dir={tmp_path / 'run'}")
    line = one_error_line(run_cli(tmp_path, cache_home, f"runtime.storage_root={store.root}", *args))
    assert line.startswith(f"distfs_pipeline: error: {key}: ") and "inside runtime.storage_root" in line
    assert snapshot(store.root) == before
    assert not (tmp_path / "run").exists()


def test_a_sweep_job_dir_inside_the_store_is_refused_before_any_job(
    tmp_path: Path, cache_home: Path, store: LocalCasStore
) -> None:
    before = snapshot(store.root)
    result = run_cli(
        tmp_path,
        cache_home,
        "-m",
        f"runtime.storage_root={store.root}",
        f"hydra.sweep.dir={store.root}/m",
        "runtime.rounds=1,2",
    )
    assert "hydra.sweep.dir" in one_error_line(result)
    assert snapshot(store.root) == before


def test_an_error_names_the_key_the_user_set(tmp_path: Path, cache_home: Path) -> None:
    line = one_error_line(
        run_cli(
            tmp_path, cache_home, "runtime.state_path=/etc/passwd/x.json", f"hydra.run.dir={tmp_path / 'r'}"
        )
    )
    assert line == (
        "distfs_pipeline: error: runtime.state_path: /etc/passwd/x.json is inside /etc/passwd, "
        "which is not a directory"
    )


# --- presets cannot make us call anything ---------------------------------------------------------


def plant(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / "planted" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(body)
    return f"hydra.searchpath=[file://{tmp_path / 'planted'}]"


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (
            "# @package _global_\nhydra:\n  callbacks:\n    evil:\n"
            "      _target_: os.mkdir\n      path: {sentinel}\n",
            "policy/evil.yaml: a preset may only set policy, probe, runtime, scenario; it sets 'hydra'",
        ),
        (
            "# @package _global_\npolicy:\n  backoff_base_ms: 5\nhydra:\n  run:\n    dir: {sentinel}\n",
            "sets 'hydra'",
        ),
        ("# @package hydra\njob:\n  env_set:\n    X: '1'\n", "policy/evil.yaml"),
    ],
)
def test_a_planted_preset_cannot_reach_hydra(tmp_path: Path, cache_home: Path, body: str, named: str) -> None:
    sentinel = tmp_path / "sentinel"
    search = plant(tmp_path, "policy/evil.yaml", body.replace("{sentinel}", str(sentinel)))
    line = one_error_line(
        run_cli(tmp_path, cache_home, search, "policy=evil", f"hydra.run.dir={tmp_path / 'r'}")
    )
    assert named in line
    assert not sentinel.exists() and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["+hydra.callbacks.x._target_=os.mkdir", "+hydra.callbacks.x.path={sentinel}"], "hydra.callbacks.x"),
        (["hydra.launcher._target_=os.mkdir"], "hydra.launcher._target_"),
        (
            [
                "hydra.job_logging.handlers.stderr.class=logging.FileHandler",
                "+hydra.job_logging.handlers.stderr.filename={sentinel}",
            ],
            "hydra.job_logging.handlers.stderr",
        ),
        (["+hydra.job_logging.formatters.text.x=1", "hydra.job_logging.formatters.text.()=os.mkdir"], "()"),
    ],
)
def test_no_callable_or_log_file_outside_our_schema(
    tmp_path: Path, cache_home: Path, args: list[str], named: str
) -> None:
    sentinel = tmp_path / "sentinel"
    args = [a.replace("{sentinel}", str(sentinel)) for a in args]
    line = one_error_line(run_cli(tmp_path, cache_home, *args, f"hydra.run.dir={tmp_path / 'r'}"))
    assert named in line
    assert not sentinel.exists()


# --- Hydra's own interpolations -------------------------------------------------------------------


def test_hydra_interpolations_work_in_overrides(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(
        tmp_path,
        cache_home,
        "runtime.rounds=2",
        "runtime.state_path=${hydra:runtime.output_dir}/keep/state.json",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "keep" / "state.json").read_text())["rounds_executed"] == 2


def test_hydra_interpolations_work_in_users_yaml(tmp_path: Path, cache_home: Path) -> None:
    body = "defaults: [default]\nstate_path: ${hydra:runtime.output_dir}/${hydra:job.name}-state.json\n"
    body += "rounds: 3\n"
    search = plant(tmp_path, "runtime/mine.yaml", body)
    result = run_cli(tmp_path, cache_home, search, "runtime=mine", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "r" / "app-state.json").read_text())["rounds_executed"] == 3


# --- a fixed state path in a sweep ----------------------------------------------------------------


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]])
def test_a_state_path_shared_by_sweep_jobs_is_refused_on_every_launcher(
    tmp_path: Path, cache_home: Path, launcher: list[str]
) -> None:
    state = tmp_path / "shared.json"
    result = run_cli(
        tmp_path,
        cache_home,
        "-m",
        *launcher,
        f"runtime.state_path={state}",
        "policy=default,steady",
        "runtime.rounds=2",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    assert "would be shared by sweep jobs 0 and 1" in one_error_line(result)
    assert not state.exists() and not (tmp_path / "m").exists()


def test_a_per_job_state_path_in_a_sweep_runs(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(
        tmp_path,
        cache_home,
        "-m",
        "runtime.state_path=${hydra:runtime.output_dir}/s.json",
        "policy=default,steady",
        "runtime.rounds=2",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.parent.name for p in (tmp_path / "m").glob("*/s.json")) == ["0", "1"]


# --- logs: one place ------------------------------------------------------------------------------


def test_json_logs_are_one_object_per_line_on_stderr(tmp_path: Path, cache_home: Path) -> None:
    empty = tmp_path / "store"
    (empty / "blobs").mkdir(parents=True)
    result = run_cli(
        tmp_path,
        cache_home,
        "-m",
        f"runtime.storage_root={empty}",
        "runtime.log_format=json",
        "runtime.rounds=1,2",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    assert result.returncode == 0, result.stderr
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert any(e["level"] == "warning" and "holds no blobs" in e["message"] for e in entries)
    assert any(e["logger"].startswith("hydra") and "Launching 2 jobs" in e["message"] for e in entries)
    assert "Launching" not in result.stdout and "warning" not in result.stdout


def test_text_logs_and_hydras_messages_go_to_stderr(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(tmp_path, cache_home, "-m", "runtime.rounds=1,2", f"hydra.sweep.dir={tmp_path / 'm'}")
    assert result.returncode == 0, result.stderr
    assert "[HYDRA] Launching 2 jobs locally" in result.stderr and "Launching" not in result.stdout
    assert "2 jobs: 2 completed, 0 failed" in result.stdout


# --- signals, from the first instruction to the last ---------------------------------------------


def handles(pid: int, sig: signal.Signals) -> bool:
    """Whether the process has installed a handler for `sig` (Linux /proc SigCgt mask)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (sig - 1)))
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_during_start_up_is_one_line_and_writes_nothing(
    tmp_path: Path, cache_home: Path, sig: signal.Signals
) -> None:
    proc = start_cli(tmp_path, cache_home, "runtime.rounds=1", f"hydra.run.dir={tmp_path / 'r'}")
    deadline = time.monotonic() + 30
    # our handlers are installed together; SIGTERM's is only ever ours (Python sets SIGINT's itself)
    while not handles(proc.pid, signal.SIGTERM) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.001)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert (
        err.strip() == f"distfs_pipeline: interrupted by {sig.name} before the run started; nothing was run"
    )
    assert not (tmp_path / "r").exists()


def test_sighup_stops_a_wall_run_after_its_round(tmp_path: Path, cache_home: Path) -> None:
    run_dir = tmp_path / "run"
    proc = start_cli(tmp_path, cache_home, "runtime=wall", "runtime.tick_ms=20", f"hydra.run.dir={run_dir}")
    wait_for_rounds(run_dir / "rounds.jsonl", 2, proc)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    assert summary_of(run_dir)["stopped_by"] == "signal SIGHUP"


def sweep_rows(sweep_dir: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((sweep_dir / "sweep_summary.json").read_text())["rows"]
    return rows


WALL_JOBS = ("runtime=wall", "runtime.tick_ms=20", "runtime.rounds=500", "runtime.node_id=a,b,c")


def test_a_signal_stops_the_whole_basic_multirun(tmp_path: Path, cache_home: Path) -> None:
    sweep_dir = tmp_path / "m"
    proc = start_cli(tmp_path, cache_home, "-m", *WALL_JOBS, f"hydra.sweep.dir={sweep_dir}")
    wait_for_rounds(sweep_dir / "0" / "rounds.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted by SIGTERM" in err
    rows = sweep_rows(sweep_dir)
    assert [(r["job"], r["status"]) for r in rows] == [(0, "interrupted")]
    assert 0 < rows[0]["rounds"] < 500
    assert not (sweep_dir / "1").exists()


def test_a_signal_stops_the_whole_joblib_multirun(tmp_path: Path, cache_home: Path) -> None:
    sweep_dir = tmp_path / "m"
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")
    proc = start_cli(tmp_path, cache_home, "-m", *joblib, *WALL_JOBS, f"hydra.sweep.dir={sweep_dir}")
    wait_for_rounds(sweep_dir / "0" / "rounds.jsonl", 2, proc)
    wait_for_rounds(sweep_dir / "1" / "rounds.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    rows = sweep_rows(sweep_dir)
    assert rows and all(r["status"] == "interrupted" for r in rows), rows
    for row in rows:
        records = read_jsonl(sweep_dir / str(row["job"]) / "rounds.jsonl")
        assert len(records) < 500


def loky_workers(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            for child in (task / "children").read_text().split():
                with contextlib.suppress(OSError):
                    if b"popen_loky" in Path(f"/proc/{child}/cmdline").read_bytes():
                        found.append(int(child))
    return found


def wait_for_workers(proc: subprocess.Popen[str], count: int = 2) -> list[int]:
    deadline = time.monotonic() + TIMEOUT_S
    while len(workers := loky_workers(proc.pid)) < count:
        assert proc.poll() is None and time.monotonic() < deadline, "no joblib workers started"
        time.sleep(0.005)
    return workers


JOBLIB = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2")


def test_ctrl_c_while_the_joblib_workers_start_is_one_line(tmp_path: Path, cache_home: Path) -> None:
    """Ctrl-C lands in every process of the group, the workers too, while they still import: they
    start with the signals blocked, so there is no `KeyboardInterrupt` traceback from an import."""
    proc = start_cli(
        tmp_path, cache_home, "-m", *JOBLIB, *WALL_JOBS, f"hydra.sweep.dir={tmp_path / 'm'}", session=True
    )
    wait_for_workers(proc)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if not line.startswith("[HYDRA]")]
    assert len(lines) == 1 and lines[0].startswith("distfs_pipeline: interrupted by SIGINT"), err


@pytest.mark.parametrize("presses", [1, 2])
def test_ctrl_c_during_joblib_jobs_reaches_each_worker_once(
    tmp_path: Path, cache_home: Path, presses: int
) -> None:
    """The workers leave the driver's process group, so a terminal's Ctrl-C reaches them only as
    the driver's one forwarded copy: once, each running job finishes its round and saves its
    summary (stopped by SIGINT); twice, everything stops at once. Either way no traceback."""
    sweep_dir = tmp_path / "m"
    proc = start_cli(
        tmp_path, cache_home, "-m", *JOBLIB, *WALL_JOBS, f"hydra.sweep.dir={sweep_dir}", session=True
    )
    wait_for_rounds(sweep_dir / "0" / "rounds.jsonl", 2, proc)
    wait_for_rounds(sweep_dir / "1" / "rounds.jsonl", 2, proc)
    assert all(os.getpgid(worker) == worker for worker in wait_for_workers(proc))
    for _ in range(presses):
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.05)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 130 and "Traceback" not in err, err
    if presses == 1:
        rows = sweep_rows(sweep_dir)
        assert rows and all(r["status"] == "interrupted" for r in rows), rows
        for job in ("0", "1"):
            assert summary_of(sweep_dir / job)["stopped_by"] == "signal SIGINT"


# --- no third-party code in the validation ---------------------------------------------------------


def test_a_pydantic_plugin_on_the_path_is_never_imported(tmp_path: Path, cache_home: Path) -> None:
    """pydantic imports every `pydantic` entry point of every distribution on `sys.path` into the
    models it builds; a dist-info left in a dir on the path must not run code in a root run."""
    site = tmp_path / "site"
    info = site / "planted-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: planted\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[pydantic]\nplanted = planted_plugin:plugin\n")
    marker = tmp_path / "plugin-was-imported"
    (site / "planted_plugin.py").write_text(f"open({str(marker)!r}, 'w').close()\nplugin = None\n")
    env = {**cli_env(cache_home), "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    env.pop("PYDANTIC_DISABLE_PLUGINS", None)
    model = "from pydantic import BaseModel\nclass M(BaseModel):\n    x: int = 0\n"
    subprocess.run(
        [sys.executable, "-c", model], env=env, capture_output=True, timeout=TIMEOUT_S, check=False
    )
    assert marker.exists(), "the planted plugin is not seen by pydantic: this test proves nothing"
    marker.unlink()
    result = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", "runtime.rounds=1", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert not marker.exists()


def test_the_root_safe_starts_import_nothing_from_the_working_dir(tmp_path: Path, cache_home: Path) -> None:
    """README: as root in a dir others can write, `python -P -m` (or the console script) is safe,
    while plain `python -m` puts that dir first on the import path (the control)."""
    marker = tmp_path / "yaml-was-imported"
    (tmp_path / "yaml.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    run = ["runtime.rounds=1", "runtime.progress=never"]
    run_cli(tmp_path, cache_home, *run, f"hydra.run.dir={tmp_path / 'plain'}")  # plain python -m
    assert marker.exists(), "plain python -m no longer imports from the working dir: drop the README note"
    marker.unlink()
    safe = [sys.executable, "-P", "-m", "distfs_pipeline", *run, f"hydra.run.dir={tmp_path / 'safe'}"]
    done = subprocess.run(
        safe, cwd=tmp_path, env=cli_env(cache_home), capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stderr
    assert not marker.exists()


# --- stdout closed, run dir full or read-only -----------------------------------------------------


def test_closing_stdout_ends_the_run_cleanly_with_the_state_saved(tmp_path: Path, cache_home: Path) -> None:
    state = tmp_path / "state.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "distfs_pipeline",
            "runtime.rounds=5",
            f"runtime.state_path={state}",
            f"hydra.run.dir={tmp_path / 'r'}",
        ],
        cwd=tmp_path,
        env=cli_env(cache_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # `| head` that has read enough
    err = proc.stderr.read()
    proc.wait(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "Exception ignored" not in err and "Broken pipe" not in err
    assert json.loads(state.read_text())["rounds_executed"] == 5
    assert summary_of(tmp_path / "r")["rounds"] == 5


@contextlib.contextmanager
def mounted(target: Path, *args: str) -> Iterator[Path]:
    target.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", *args, str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"mount failed: {done.stderr}")
        pytest.skip(f"cannot mount here: {done.stderr.strip()}")
    try:
        yield target
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False)


def test_a_full_run_dir_is_one_line(tmp_path: Path, cache_home: Path) -> None:
    with mounted(tmp_path / "full", "-t", "tmpfs", "-o", "size=64k,nr_inodes=64", "tmpfs") as full:
        with contextlib.suppress(OSError), open(full / "filler", "wb") as filler:
            while True:
                filler.write(b"x" * 4096)
                filler.flush()
        line = one_error_line(
            run_cli(tmp_path, cache_home, "runtime.rounds=2", f"hydra.run.dir={full / 'run'}")
        )
        assert (
            line.startswith("distfs_pipeline: error: hydra.run.dir: ") and "No space left on device" in line
        )


def test_a_read_only_run_dir_is_one_line(tmp_path: Path, cache_home: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    with mounted(tmp_path / "ro", "--bind", "-o", "ro", str(source)) as read_only:
        line = one_error_line(
            run_cli(tmp_path, cache_home, "runtime.rounds=2", f"hydra.run.dir={read_only / 'run'}")
        )
        assert line.startswith("distfs_pipeline: error: hydra.run.dir: ") and "Read-only file system" in line
    assert list(source.iterdir()) == []


# --- Ray ------------------------------------------------------------------------------------------


def test_a_ray_cluster_that_cannot_be_reached_is_one_line(tmp_path: Path, cache_home: Path) -> None:
    import socket

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    result = run_cli(
        tmp_path,
        cache_home,
        "-m",
        "hydra/launcher=ray",
        f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
        "policy=default,steady",
        "runtime.rounds=1",
        f"hydra.sweep.dir={tmp_path / 'm'}",
    )
    line = one_error_line(result)
    assert line == (
        f"distfs_pipeline: error: hydra.launcher.ray.init.address: cannot reach a Ray cluster at "
        f"127.0.0.1:{port} (Connection refused)"
    )
    assert time.monotonic() - started < 60 and not (tmp_path / "m").exists()


def test_the_readme_command_for_an_existing_ray_cluster_works(
    tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real head node (`ray start --head`), then the README's command with its address: today's
    hydra-ray-launcher would pass `object_store_memory`, which Ray refuses for a running cluster."""
    import importlib.util
    import shutil
    import socket

    if (
        importlib.util.find_spec("ray") is None
        or shutil.which("ray", path=str(Path(sys.executable).parent)) is None
    ):
        if os.environ.get("CI"):
            pytest.fail("ray is not installed (pip install -e '.[test]')")
        pytest.skip("ray is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    from ray._private.services import canonicalize_bootstrap_address_or_die

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a throwaway cluster: no token to hand around
    ray = str(Path(sys.executable).parent / "ray")
    short_temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's unix sockets need a short path
    head = subprocess.Popen(
        [
            ray,
            "start",
            "--head",
            "--block",
            f"--port={port}",
            "--node-ip-address=127.0.0.1",  # the cluster stays on loopback
            "--num-cpus=2",
            "--include-dashboard=false",
            "--disable-usage-stats",
            f"--temp-dir={short_temp}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, ended below by its id
    )
    try:
        host, _, _ = canonicalize_bootstrap_address_or_die(f"127.0.0.1:{port}").rpartition(":")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and head.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
                break
            time.sleep(0.5)
        result = run_cli(
            tmp_path,
            cache_home,
            "-m",
            "hydra/launcher=ray",
            f"hydra.launcher.ray.init.address=127.0.0.1:{port}",
            "policy=default,steady",
            "runtime.rounds=2",
            f"hydra.sweep.dir={tmp_path / 'm'}",
        )
        assert result.returncode == 0, result.stderr[-3000:]
        rows = json.loads((tmp_path / "m" / "sweep_summary.json").read_text())["rows"]
        assert [r["status"] for r in rows] == ["completed", "completed"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGINT)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
        shutil.rmtree(short_temp, ignore_errors=True)
