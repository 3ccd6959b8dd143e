"""The command ends without the interpreter's teardown (`__main__._exit_now`), but only after what
that teardown would still do for us: non-daemon threads joined, `atexit` handlers run, stdout and
stderr flushed, the exit status kept. Real processes; each check fails if `os._exit` came first."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

DRIVER = """
import atexit, sys, threading, time
marks = sys.argv[1]
def late_thread():
    time.sleep(0.3)
    open(marks + ".thread", "w").write("joined")
threading.Thread(target=late_thread).start()  # not a daemon: exit waits for it
atexit.register(lambda: open(marks + ".atexit", "w").write("ran"))
sys.stdout.write("x" * 200_000)  # buffered: lost if the stream is not flushed before the exit
sys.argv = ["distfs-pipeline", *sys.argv[2:]]
from distfs_pipeline.__main__ import main
main()
raise SystemExit("main() returned: the command must end the process itself")
"""


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    marks = str(tmp_path / "mark")
    command = [sys.executable, "-c", DRIVER, marks, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


def test_a_command_joins_threads_runs_atexit_and_flushes(tmp_path: Path) -> None:
    done = run(tmp_path, "--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("x" * 200_000) and "distfs_pipeline " in done.stdout
    assert (tmp_path / "mark.thread").read_text() == "joined"
    assert (tmp_path / "mark.atexit").read_text() == "ran"


def test_the_exit_status_is_kept(tmp_path: Path) -> None:
    done = run(tmp_path, "runtime.rounds=-1")  # a usage error the app returns (not a SystemExit)
    assert done.returncode == 2
    assert done.stderr.strip() == "distfs_pipeline: error: runtime.rounds: must be >= 0 (got -1)"
    assert (tmp_path / "mark.atexit").read_text() == "ran"


SIGNAL_DRIVER = """
import atexit, sys, threading, time
marks = sys.argv[1]
threading.Thread(target=time.sleep, args=(30,)).start()  # not a daemon: the exit waits for it
atexit.register(lambda: open(marks + ".atexit", "w").write("ran"))
open(marks + ".ready", "w").write("")
sys.argv = ["distfs-pipeline", "--version"]
from distfs_pipeline.__main__ import main
main()
"""


def test_a_signal_while_threads_are_joined_still_runs_atexit(tmp_path: Path) -> None:
    """A stop request during the exit's wait for threads ends the wait with status 130; it used to
    skip every atexit handler (logging, the sweep summary's fallback) and keep the old status."""
    import signal
    import time

    marks = str(tmp_path / "mark")
    run = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_DRIVER, marks],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not (tmp_path / "mark.ready").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.5)  # the version is printed and the exit waits for the sleeping thread
    run.send_signal(signal.SIGTERM)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, err
    assert "distfs_pipeline " in out and err.strip() == "distfs_pipeline: interrupted while exiting"
    assert (tmp_path / "mark.atexit").read_text() == "ran"
