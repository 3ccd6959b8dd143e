"""Where a root run writes, nobody else can redirect it (`safefile.check_trusted_path`).

A directory on the way that another user owns, or that a group or everyone can write without the
sticky bit, lets them rename our dir away and put a link in its place mid-run (shown by an attack
review: state, summary and caches of a root run landed in a root-only dir). Such paths are refused
with one line naming the key, before anything is written; root's own dirs, the caller's own, and
sticky world-writable ones like /tmp are fine.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distfs_pipeline.core import safefile
from tests.test_app import cli_env, run_cli, start_cli

NOBODY = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="another user's dirs need root to make")


def theirs(path: Path, mode: int = 0o755) -> Path:
    """A dir another user owns (made by root, then given away)."""
    path.mkdir(parents=True, exist_ok=True)
    os.chown(path, NOBODY, NOBODY)
    path.chmod(mode)
    return path


def one_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if not line.startswith("[HYDRA]")]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_the_rule(tmp_path: Path) -> None:
    safefile.check_trusted_path(tmp_path / "mine" / "new")  # root's, missing below: fine
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    safefile.check_trusted_path(sticky / "x")  # like /tmp
    with pytest.raises(safefile.UnsafeFileError, match=f"owned by uid {NOBODY}"):
        safefile.check_trusted_path(theirs(tmp_path / "theirs") / "run")
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o2775)
    safefile.check_trusted_path(shared / "run")  # our own group may write (umask 002): fine
    os.chown(shared, 0, NOBODY)
    with pytest.raises(safefile.UnsafeFileError, match=rf"group {NOBODY} can write to this directory"):
        safefile.check_trusted_path(shared / "run")
    alias = tmp_path / "alias"
    alias.symlink_to(tmp_path / "theirs")  # root's link to their dir: the dir still counts
    with pytest.raises(safefile.UnsafeFileError, match=f"owned by uid {NOBODY}"):
        safefile.check_trusted_path(alias / "run")
    inner = tmp_path / "theirs" / "data"  # root's dir inside theirs: they can swap it for a link
    inner.mkdir()
    os.chown(inner, 0, 0)
    (tmp_path / "to-inner").symlink_to(inner)
    with pytest.raises(safefile.UnsafeFileError, match=f"owned by uid {NOBODY}"):
        safefile.check_trusted_path(tmp_path / "to-inner" / "run")  # where the link leads counts
    with pytest.raises(safefile.UnsafeFileError, match=r"climbs with '\.\.'"):
        safefile.check_trusted_path(tmp_path / "to-inner" / ".." / "run")


def test_make_trusted_dirs_makes_our_own_dirs_and_refuses_theirs(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "c"
    safefile.make_trusted_dirs(target)
    assert target.is_dir() and os.stat(target).st_uid == os.geteuid()
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o755
    with pytest.raises(safefile.UnsafeFileError):
        safefile.make_trusted_dirs(theirs(tmp_path / "t") / "cache")
    assert not (tmp_path / "t" / "cache").exists()


@pytest.mark.parametrize(
    "key", ["hydra.run.dir", "runtime.state_path", "runtime.metrics_textfile", "probe.chunk_cache_dir"]
)
def test_a_run_writing_under_someone_elses_dir_is_refused(tmp_path: Path, key: str) -> None:
    """Before anything is written: the key named, nothing made in their dir."""
    other = theirs(tmp_path / "theirs")
    values = {
        "hydra.run.dir": other / "run",
        "runtime.state_path": other / "state.json",
        "runtime.metrics_textfile": other / "m.prom",
        "probe.chunk_cache_dir": other / "cache",
    }
    run_dir = tmp_path / "run"
    args = ["runtime.rounds=2", "runtime.progress=never", f"{key}={values[key]}"]
    if key != "hydra.run.dir":
        args.append(f"hydra.run.dir={run_dir}")
    result = run_cli(tmp_path, tmp_path / "cache-home", *args)
    assert result.returncode == 2
    assert one_error(result).startswith(f"distfs_pipeline: error: {key}: {other}: refusing")
    assert list(other.iterdir()) == [] and not run_dir.exists()


def test_a_configured_path_that_climbs_through_a_link_is_refused(tmp_path: Path) -> None:
    """`<their link>/../m.prom` reads as `<dir>/m.prom` but the kernel follows the link first."""
    root_only = tmp_path / "root-only"
    root_only.mkdir(mode=0o700)
    (root_only / "inside").mkdir()
    evil = tmp_path / "evil"
    evil.symlink_to(root_only / "inside")
    os.lchown(evil, NOBODY, NOBODY)
    textfile = f"{evil}/../m.prom"
    args = ["runtime.rounds=2", "runtime.progress=never", f"runtime.metrics_textfile={textfile}"]
    result = run_cli(tmp_path, tmp_path / "cache-home", *args, f"hydra.run.dir={tmp_path / 'r'}")
    assert result.returncode == 2 and "climbs with '..'" in one_error(result)
    assert not (root_only / "m.prom").exists()


def test_the_demo_store_is_not_built_in_someone_elses_cache_dir(tmp_path: Path) -> None:
    cache = theirs(tmp_path / "cache")
    result = run_cli(
        tmp_path, cache, "runtime.rounds=2", "runtime.progress=never", f"hydra.run.dir={tmp_path / 'r'}"
    )
    assert result.returncode == 2 and f"{cache}: refusing to use it" in one_error(result)
    assert list(cache.iterdir()) == []


def test_joblib_workers_end_when_their_driver_is_killed(tmp_path: Path) -> None:
    """Out of the driver's process group (so a Ctrl-C reaches them once), the workers no longer
    die with it: they watch for being orphaned and end themselves."""
    joblib = ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={tmp_path / 'm'}")
    wall = ("runtime=wall", "runtime.rounds=0", "runtime.node_id=a,b", "runtime.progress=never")
    proc = start_cli(tmp_path, tmp_path / "cache-home", "-m", *joblib, *wall)
    deadline = time.monotonic() + 120
    while not (
        (tmp_path / "m" / "0" / "rounds.jsonl").exists() and (tmp_path / "m" / "1" / "rounds.jsonl").exists()
    ):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    workers = [w for w in workers if b"popen_loky" in Path(f"/proc/{w}/cmdline").read_bytes()]
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 20
    while any(Path(f"/proc/{w}").exists() and b"popen_loky" in _cmdline(w) for w in workers):
        assert time.monotonic() < deadline, "orphaned workers still running"
        time.sleep(0.1)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def test_a_first_run_under_umask_002_is_not_refused(tmp_path: Path) -> None:
    """Ubuntu's and Fedora's default umask for users makes group-writable dirs (Hydra's own
    `mkdir -p` of outputs/<date>/...): of our own group, they are fine."""
    result = subprocess.run(
        [
            "sh",
            "-c",
            f"umask 002 && exec {sys.executable} -m distfs_pipeline runtime.rounds=2 runtime.progress=never",
        ],
        cwd=tmp_path,
        env=cli_env(tmp_path / "cache-home"),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "outputs").glob("*/*/summary.json"))) == 1


def test_a_schema_check_of_a_deeply_nested_file_is_one_line(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("policy:\n  x: " + "[" * 50000 + "]" * 50000 + "\n")
    result = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", "schemas", "validate", "--schema", "policy", str(deep)],
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr + result.stdout
    assert f"{deep}: not valid YAML: nested too deeply to read" in result.stdout + result.stderr
