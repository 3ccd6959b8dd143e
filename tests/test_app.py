"""The entry point as users run it: `python -m distfs_pipeline` in a real subprocess.

Each start costs about a second (Hydra), so runs are short: few rounds, small ticks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.store import LocalCasStore

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


@pytest.fixture(scope="module")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One demo store for the module (the first run builds it), outside the repository."""
    return tmp_path_factory.mktemp("xdg-cache")


def cli_env(cache_home: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache_home)}


def run_cli(cwd: Path, cache_home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", *args],
        cwd=cwd,
        env=cli_env(cache_home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def start_cli(cwd: Path, cache_home: Path, *args: str, session: bool = False) -> subprocess.Popen[str]:
    """`session`: the CLI leads its own process group, so `os.killpg` is a terminal's Ctrl-C."""
    return subprocess.Popen(
        [sys.executable, "-m", "distfs_pipeline", *args],
        cwd=cwd,
        env=cli_env(cache_home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_rounds(log: Path, count: int, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_bytes().count(b"\n") >= count:
            return
        time.sleep(0.02)
    raise AssertionError(f"{log} never reached {count} rounds (exit {proc.poll()})")


def summary_of(run_dir: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((run_dir / "summary.json").read_text())
    return data


def test_no_arguments_audits_the_demo_store(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(tmp_path, cache_home)
    assert result.returncode == 0, result.stderr
    assert "distfs_pipeline audit summary" in result.stdout
    (run_dir,) = (p.parent for p in tmp_path.glob("outputs/*/*/summary.json"))
    summary = summary_of(run_dir)
    assert summary["rounds"] == summary["config"]["runtime"]["rounds"] > 0
    assert summary["store_root"].startswith(str(cache_home))
    for name in ("rounds.jsonl", "epochs.jsonl", "probe-state.json", ".hydra/config.yaml"):
        assert (run_dir / name).exists(), name


def test_overrides_presets_and_a_legacy_flag(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(
        tmp_path,
        cache_home,
        "policy=steady",
        "--reward-distfs-probe-per-tick",
        "3",
        "runtime.rounds=4",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert result.returncode == 0, result.stderr
    summary = summary_of(tmp_path / "run")
    assert summary["config"]["policy"]["backoff_base_ms"] == 1000
    assert summary["config"]["probe"]["challenges_per_tick"] == 3
    assert summary["rounds"] == 4
    assert summary["checks_spent"] + 3 * summary["rounds_skipped_by_backoff"] == 12


def test_cfg_job_prints_the_config_with_overrides_on_both_sides(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(
        tmp_path, cache_home, "runtime.rounds=3", "--cfg", "job", "--reward-distfs-probe-ttl-ms", "9"
    )
    assert result.returncode == 0, result.stderr
    assert "rounds: 3" in result.stdout and "challenge_ttl_ms: 9" in result.stdout
    assert not list(tmp_path.rglob("rounds.jsonl"))


def test_help_is_ours(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(tmp_path, cache_home, "--help")
    assert result.returncode == 0
    assert "distfs_pipeline: audit" in result.stdout and "--reward-distfs-probe-per-tick" in result.stdout


def test_multirun_runs_every_job(tmp_path: Path, cache_home: Path) -> None:
    result = run_cli(tmp_path, cache_home, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={tmp_path / 'm'}")
    assert result.returncode == 0, result.stderr
    assert sorted(summary_of(p.parent)["rounds"] for p in (tmp_path / "m").glob("*/summary.json")) == [2, 3]


def test_a_multirun_job_failing_at_run_time_fails_alone(tmp_path: Path, cache_home: Path) -> None:
    """A job whose input is bad only at run time (its store root is missing) is recorded as failed
    with its one-line error, and the other jobs still run and are summarized."""
    store = LocalCasStore(tmp_path / "store")
    store.put_bytes(b"one blob")
    sweep_dir = tmp_path / "m"
    roots = f"runtime.storage_root={tmp_path / 'missing'},{store.root}"
    result = run_cli(tmp_path, cache_home, "-m", roots, "runtime.rounds=2", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 1, result.stderr  # Hydra ends a sweep with a failed job so
    assert "Traceback" not in result.stderr and "does not exist" in result.stderr
    rows = json.loads((sweep_dir / "sweep_summary.json").read_text())["rows"]
    by_status = {row["status"]: row for row in rows}
    assert sorted(by_status) == ["completed", "failed"]
    assert by_status["failed"]["error"] == f"runtime.storage_root: {tmp_path / 'missing'} does not exist"
    assert summary_of(sweep_dir / str(by_status["completed"]["job"]))["rounds"] == 2


@pytest.mark.parametrize("planted", ["sweep_summary.csv", "sweep_summary.png"])
def test_a_summary_file_that_cannot_be_written_fails_the_sweep(
    tmp_path: Path, cache_home: Path, planted: str
) -> None:
    """A link planted at a summary file of a shared sweep dir is refused (never followed), the
    other files and the table still come out, and the sweep says so and exits 2: a summary that
    silently went missing (Hydra only warns about a failing callback, then exits 0) would let a
    script take an old file for this sweep's result."""
    sweep_dir = tmp_path / "m"
    sweep_dir.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    (sweep_dir / planted).symlink_to(victim)
    result = run_cli(tmp_path, cache_home, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 2, result.stderr
    assert victim.read_text() == "not yours" and (sweep_dir / planted).is_symlink()
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert errors == [
        f"distfs_pipeline: error: hydra.sweep.dir: sweep summary not written: {sweep_dir / planted}: "
        "refusing to use it: it is a symbolic link"
    ]
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    assert "2 jobs: 2 completed, 0 failed" in result.stdout
    written = {"sweep_summary.csv", "sweep_summary.json", "sweep_summary.png"} - {planted}
    assert all((sweep_dir / name).is_file() and not (sweep_dir / name).is_symlink() for name in written)

    again = subprocess.run(  # the summary command: the same refusal, one line, exit 2
        [sys.executable, "-m", "distfs_pipeline", "sweep", str(sweep_dir)],
        env=cli_env(cache_home),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr
    assert again.stderr.splitlines() == [
        f"distfs_pipeline: error: SWEEP_DIR: sweep summary not written: {sweep_dir / planted}: "
        "refusing to use it: it is a symbolic link"
    ]
    assert victim.read_text() == "not yours" and "2 jobs: 2 completed" in again.stdout


def test_a_job_result_that_cannot_be_written_fails_that_job(tmp_path: Path, cache_home: Path) -> None:
    """A link planted at a job's `result.json` is refused; the job then counts as failed (exit 1,
    one line) instead of vanishing from the summary, and the other job is summarized."""
    sweep_dir = tmp_path / "m"
    (sweep_dir / "0").mkdir(parents=True)
    victim = tmp_path / "victim"
    victim.write_text("not yours")
    (sweep_dir / "0" / "result.json").symlink_to(victim)
    result = run_cli(tmp_path, cache_home, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 1, result.stderr
    assert victim.read_text() == "not yours"
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr, result.stderr
    assert f"job result not written: {sweep_dir / '0' / 'result.json'}: refusing" in result.stderr
    rows = json.loads((sweep_dir / "sweep_summary.json").read_text())["rows"]
    assert sorted((row["job_dir"], row["status"]) for row in rows) == [("0", "failed"), ("1", "completed")]
    failed = next(row for row in rows if row["job_dir"] == "0")
    assert failed["error"].startswith("result.json not readable: ") and "symbolic link" in failed["error"]


def test_a_record_planted_in_a_shared_sweep_dir_is_no_job_of_the_sweep(
    tmp_path: Path, cache_home: Path
) -> None:
    """Anyone who can write to a shared sweep dir could add `x/result.json` claiming a completed
    job with great numbers; the summary lists the jobs the driver checked and launched, only."""
    sweep_dir = tmp_path / "m"
    (sweep_dir / "x").mkdir(parents=True)
    fake = {"status": "completed", "job": 0, "metrics": {"checks_spent": 1}, "objective": 0.0}
    (sweep_dir / "x" / "result.json").write_text(json.dumps(fake))
    result = run_cli(tmp_path, cache_home, "-m", "runtime.rounds=2,3", f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    rows = json.loads((sweep_dir / "sweep_summary.json").read_text())["rows"]
    assert sorted(row["job_dir"] for row in rows) == ["0", "1"]
    assert "2 jobs: 2 completed, 0 failed" in result.stdout


def test_an_os_error_on_our_own_files_is_one_line_exit_2(tmp_path: Path, cache_home: Path) -> None:
    state = tmp_path / "state.json"
    (tmp_path / "r" / "rounds.jsonl").mkdir(parents=True)  # the round log cannot be opened
    result = run_cli(
        tmp_path,
        cache_home,
        f"runtime.state_path={state}",
        "runtime.rounds=2",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "rounds.jsonl: cannot open" in lines[0] and "Traceback" not in result.stderr
    assert not state.exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--cfg", "job", "-m", "policy=default,steady"],
        ["--resolve"],
        ["hydra.run.dir={tmp}/afile"],
        ["-m", "hydra.sweep.dir={tmp}/afile", "runtime.rounds=1"],
    ],
)
def test_hydra_level_mistakes_are_one_line_exit_2(tmp_path: Path, cache_home: Path, args: list[str]) -> None:
    (tmp_path / "afile").write_text("x")
    result = run_cli(tmp_path, cache_home, *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert (tmp_path / "afile").read_text() == "x"


BAD_STATE = '{"next_blob_cursor": 0, "rounds_executed": "many"}'


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["runtime.rounds=-1"], "runtime.rounds"),
        (["policy.no_such_key=1"], "no_such_key"),
        (["probe.verify_mode=fast"], "probe.verify_mode"),
        (["policy=no_such_preset"], "no_such_preset"),
        (["--reward-distfs-probe-per-tick", "0"], "--reward-distfs-probe-per-tick"),
        (["--reward-distfs-probe-bogus", "1"], "--reward-distfs-probe-bogus"),
        (
            [
                "--reward-distfs-adaptive-backoff-base-ms",
                "200",
                "--reward-distfs-adaptive-backoff-max-ms",
                "100",
            ],
            "--reward-distfs-adaptive-backoff-max-ms",
        ),
        (["runtime.storage_root={tmp}/missing"], "runtime.storage_root"),
        (["runtime.state_path={tmp}/state.json"], "{tmp}/state.json"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_is_written(
    tmp_path: Path, cache_home: Path, args: list[str], named: str
) -> None:
    state = tmp_path / "state.json"
    state.write_text(BAD_STATE)
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = run_cli(tmp_path, cache_home, *args, f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named.replace("{tmp}", str(tmp_path)) in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert state.read_text() == BAD_STATE
    assert not (tmp_path / "run" / "rounds.jsonl").exists()


def test_empty_store_warns_and_reports_no_data(tmp_path: Path, cache_home: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    result = run_cli(
        tmp_path,
        cache_home,
        f"runtime.storage_root={store}",
        "runtime.rounds=2",
        "runtime.allow_empty_store=true",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert result.returncode == 0, result.stderr
    assert "warning:" in result.stderr and "no blobs" in result.stderr
    assert summary_of(tmp_path / "r")["no_data"] is True
    assert list(store.iterdir()) == []


def test_a_root_without_blobs_is_one_line_exit_2(tmp_path: Path, cache_home: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    result = run_cli(tmp_path, cache_home, f"runtime.storage_root={store}", f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "runtime.allow_empty_store=true" in result.stderr
    assert list(store.iterdir()) == []


def test_wall_clock_sigterm_finishes_the_round_and_exits_0(tmp_path: Path, cache_home: Path) -> None:
    state = tmp_path / "state.json"
    run_dir = tmp_path / "run"
    proc = start_cli(
        tmp_path,
        cache_home,
        "runtime=wall",
        "runtime.tick_ms=20",
        f"runtime.state_path={state}",
        f"hydra.run.dir={run_dir}",
    )
    wait_for_rounds(run_dir / "rounds.jsonl", 3, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, err
    records = read_jsonl(run_dir / "rounds.jsonl")
    saved = json.loads(state.read_text())
    assert saved["rounds_executed"] == len(records) == records[-1]["round_index"]
    assert summary_of(run_dir)["stopped_by"] == "signal SIGTERM"


def test_sigkill_mid_run_then_resume_loses_and_repeats_no_round(tmp_path: Path, cache_home: Path) -> None:
    """Kill -9 a real wall-clock run three times at arbitrary moments, then finish a run.

    The union of all round logs must hold rounds 1..N exactly once, N being the state's count, and
    their checks must sum to the state's cumulative counts. A second run meanwhile is refused.
    """
    state = tmp_path / "state.json"
    store = LocalCasStore(tmp_path / "store")
    for i in range(7):
        store.put_bytes(bytes([i]) * (1000 * i + 1))
    common = [
        "runtime=wall",
        "runtime.tick_ms=1",
        "runtime.epoch_rounds=4",
        f"runtime.storage_root={store.root}",
        f"runtime.state_path={state}",
    ]
    for attempt in range(3):
        run_dir = tmp_path / f"killed{attempt}"
        proc = start_cli(tmp_path, cache_home, *common, f"hydra.run.dir={run_dir}")
        wait_for_rounds(run_dir / "rounds.jsonl", 5 + 3 * attempt, proc)
        if attempt == 0:
            refused = run_cli(tmp_path, cache_home, *common, f"hydra.run.dir={tmp_path / 'second'}")
            assert refused.returncode == 2 and "in use" in refused.stderr, refused.stderr
            assert str(state) in refused.stderr
        proc.kill()
        proc.wait()
    final = run_cli(tmp_path, cache_home, *common, "runtime.rounds=5", f"hydra.run.dir={tmp_path / 'final'}")
    assert final.returncode == 0, final.stderr
    records = [r for log in sorted(tmp_path.glob("*/rounds.jsonl")) for r in read_jsonl(log)]
    saved = json.loads(state.read_text())
    assert sorted(r["round_index"] for r in records) == list(range(1, saved["rounds_executed"] + 1))
    assert sum(r["total_checks"] for r in records) == saved["cumulative_total_checks"]
    assert sum(r["passed_checks"] for r in records) == saved["cumulative_passed_checks"]
    epochs = [e for log in sorted(tmp_path.glob("*/epochs.jsonl")) for e in read_jsonl(log)]
    assert sorted(e["epoch"] for e in epochs) == list(range(1, saved["rounds_executed"] // 4 + 1))


@pytest.mark.parametrize(
    ("sub", "problem"), [("", "afile is not a directory"), ("/sub", "which is not a directory")]
)
def test_an_unusable_chunk_cache_dir_is_one_line_exit_2(
    tmp_path: Path, cache_home: Path, sub: str, problem: str
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    state = tmp_path / "state.json"
    result = run_cli(
        tmp_path,
        cache_home,
        f"probe.chunk_cache_dir={blocker}{sub}",
        f"runtime.state_path={state}",
        "runtime.rounds=2",
        f"hydra.run.dir={tmp_path / 'r'}",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distfs_pipeline: error: probe.chunk_cache_dir:")
    assert problem in lines[0]
    assert blocker.read_text() == "x" and not state.exists()
