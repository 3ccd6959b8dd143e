"""The systemd unit in docs/: `systemd-analyze verify`, and its exact ExecStart run and stopped by SIGTERM."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from distfs_pipeline.core.store import LocalCasStore

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "docs" / "distfs-pipeline.service"
BINARY = "/usr/local/bin/distfs-pipeline"
STORE = "/srv/distfs/store"
STATE_DIR = "/var/lib/distfs-pipeline"
PORT = "9477"


def unit_value(key: str) -> str:
    """The value of `key=` in the unit (continuation lines joined)."""
    text = UNIT.read_text().replace("\\\n", " ")
    values = [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(f"{key}=")]
    assert len(values) == 1, f"{key} appears {len(values)} times"
    return values[0].strip()


def installed_binary() -> list[str]:
    """The console script installed beside this interpreter (the unit's ExecStart), else `-m`."""
    script = Path(sys.executable).parent / "distfs-pipeline"
    return [str(script)] if script.exists() else [sys.executable, "-m", "distfs_pipeline"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    script = installed_binary()
    if len(script) != 1:
        pytest.skip("no distfs-pipeline console script installed beside this Python")
    unit = tmp_path / UNIT.name  # verify needs the ExecStart binary to exist: point it at ours
    unit.write_text(UNIT.read_text().replace(BINARY, script[0]))
    done = subprocess.run(
        [analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60, check=False
    )
    about_us = [line for line in (done.stdout + done.stderr).splitlines() if UNIT.name in line]
    assert done.returncode == 0 and not about_us, done.stdout + done.stderr


def test_unit_keeps_the_store_read_only_and_stops_by_sigterm() -> None:
    assert unit_value("KillSignal") == "SIGTERM"
    assert STORE in unit_value("ReadOnlyPaths").split()
    assert unit_value("RestartPreventExitStatus") == "2"
    assert unit_value("WorkingDirectory") == STATE_DIR


def test_the_exact_execstart_line_audits_serves_metrics_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    store_root, state_dir = tmp_path / "store", tmp_path / "state"
    state_dir.mkdir()
    store = LocalCasStore(store_root)
    for i in range(4):
        store.put_bytes(f"service blob {i}".encode() * 100)
    port = str(free_port())
    line = unit_value("ExecStart")
    for old, new in ((STORE, str(store_root)), (STATE_DIR, str(state_dir)), (f"={PORT}", f"={port}")):
        assert old in line
        line = line.replace(old, new)
    argv = shlex.split(line)
    assert argv[0] == BINARY
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "XDG_CACHE_HOME": str(tmp_path / "cache"),
        unit_value("Environment").split("=", 1)[0]: unit_value("Environment").split("=", 1)[1],
    }
    proc = subprocess.Popen(
        [*installed_binary(), *argv[1:]],
        cwd=state_dir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    state_file = state_dir / "probe-state.json"
    try:
        deadline = time.monotonic() + 90
        rounds = 0
        while rounds < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
            try:
                rounds = json.loads(state_file.read_text())["rounds_executed"]
            except (OSError, ValueError, KeyError):
                continue
        assert rounds >= 3, proc.stderr.read() if proc.poll() is not None and proc.stderr else "no rounds"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            scraped = answer.read().decode()
        assert 'distfs_pipeline_checks_total{result="passed"}' in scraped
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    summary = json.loads((state_dir / "run" / "summary.json").read_text())
    assert summary["stopped_by"] == "signal SIGTERM"
    assert summary["cumulative"]["rounds_executed"] == json.loads(state_file.read_text())["rounds_executed"]
    assert "distfs_pipeline_rounds_total" in (state_dir / "distfs_pipeline.prom").read_text()
    assert "Traceback" not in err and "audit summary" in out
