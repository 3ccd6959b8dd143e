"""SIGINT, SIGTERM and SIGHUP, from the first instruction to the last, in one place.

Why one module: a stop request must be honoured wherever it lands. Before a job has started
(imports, composing, validation) there is nothing to save, so the process stops at once with one
line (`Interrupted`, exit status 130). While a job runs, the runner's own handler lets the round
in flight finish and be saved; the request is remembered here (`note`), so that a multirun stops
as a whole: the driver starts no further job, a joblib worker is told too (`_forward`), and every
job the request cut short is recorded as interrupted, not completed. A second signal always stops
at once (`KeyboardInterrupt`), which the round journal tolerates like a kill.

Handlers can only be set from the main thread; in a thread (a launcher's worker thread) they are
not, and the request is whatever the main thread saw.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_INTERRUPTED = 130
BEFORE_RUN = "before the run started; nothing was run"
ORPHAN_POLL_S = 0.5  # how soon a joblib worker whose driver died ends itself


class Interrupted(BaseException):
    """A stop request honoured at a point where nothing is left half-done (not an `Exception`,
    so Hydra's job runner and launchers let it through instead of recording a failed job)."""


class StdoutClosed(BaseException):
    """stdout's reader went away (`| head`) after the job's files were saved: end quietly (a
    `BaseException`, so Hydra's job runner does not record it as a failed job)."""


class _State:
    requested: str | None = None
    installed = False
    deferred = 0  # > 0: record only (a job is running, or this is a launcher's worker process)
    worker = False  # a launcher's worker process: between jobs there is nothing to stop at once


_state = _State()


def install(*, record_only: bool = False) -> None:
    """Handle the three signals in this process (idempotent). `record_only`: never raise on the
    first signal (a worker process of a launcher, where only the job may decide to stop)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if record_only and not _state.installed:
        _state.deferred += 1
        _state.worker = True
    if not _state.installed:
        for sig in HANDLED:
            signal.signal(sig, _handle)
        _state.installed = True
    if record_only:  # a launcher's worker starts with them blocked (`block_for_workers`)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED)


def detach_worker() -> None:
    """In a joblib (loky) worker process (idempotent): leave the driver's process group, so that a
    terminal's Ctrl-C reaches the driver alone, which passes it on exactly once (`_forward`). In
    the driver's group a worker got it twice, the terminal's copy and the forwarded one, and took
    the second for a request to stop at once."""
    with contextlib.suppress(OSError):
        if os.getpgid(0) != os.getpid():
            os.setpgid(0, 0)
            _exit_with_driver(os.getppid())


def _exit_with_driver(driver: int) -> None:
    """Out of the driver's group, a worker no longer dies with it (a `kill -9` of the driver, or
    of its group, used to reach it too): a daemon thread ends the worker at once when it is
    orphaned, like the kill it would have had (the round journal takes a kill at any point)."""

    def watch() -> None:
        while os.getppid() == driver:
            time.sleep(ORPHAN_POLL_S)
        os._exit(EXIT_INTERRUPTED)

    threading.Thread(target=watch, name="distfs-orphan-watch", daemon=True).start()


def block_for_workers() -> None:
    """Block the three signals in the calling thread, so that the worker processes it starts (and
    the threads it starts) begin with them blocked: a Ctrl-C while a worker is still importing
    is then held until its job's record-only handler is in place (`install_in_job`), instead of
    a `KeyboardInterrupt` traceback from the middle of an import. The driver's main thread keeps
    them unblocked, so the process still receives them there."""
    signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)


def install_in_job() -> None:
    """In a job's process: the driver installed the handlers already; a worker gets record-only ones."""
    install(record_only=True)


def requested() -> str | None:
    """The name of the signal that asked us to stop (None: no request)."""
    return _state.requested


def note(signal_name: str) -> None:
    """A handler of the runner saw `signal_name`: remember it for the rest of the process."""
    if _state.requested is None:
        _state.requested = signal_name


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """While a job runs: a first signal is only recorded (the runner stops after its round)."""
    _state.deferred += 1
    try:
        yield
    finally:
        _state.deferred -= 1


@contextlib.contextmanager
def at_safe_points() -> Iterator[None]:
    """Composing and validating (Hydra's and OmegaConf's code): a first signal is recorded, and
    honoured at the next `check` (each job of a sweep, and the end). Raised in the middle of that
    code, it could land in a `finally` that then fails on the half-built config, and the user
    would see that error (a bogus config error, exit 2) instead of being stopped."""
    with deferred():
        yield
    check(BEFORE_RUN)


def check(where: str) -> None:
    """Raise `Interrupted` if a stop was requested (called where stopping loses nothing)."""
    if _state.requested is not None:
        raise Interrupted(f"interrupted by {_state.requested} {where}")


def reset_for_tests() -> None:
    """Forget any request (tests that run several apps in one process)."""
    _state.requested = None


def _handle(signum: int, _frame: FrameType | None) -> None:
    name = signal.Signals(signum).name
    _forward(signum)  # the second one too: the workers then stop at once as well
    if _state.requested is not None:
        if _state.worker and _state.deferred <= 1:
            return  # an idle worker: no job to cut short (raising would only kill the worker)
        raise KeyboardInterrupt  # second signal: stop now
    _state.requested = name
    if _state.deferred == 0:
        raise Interrupted(f"interrupted by {name} {BEFORE_RUN}")


def _forward(signum: int) -> None:
    """Pass the request on to this process's joblib (loky) workers, so their running job stops
    after its round and their next jobs are recorded as interrupted. Other children (Ray's
    runtime, loky's resource tracker) are left alone. Linux: children come from /proc."""
    for pid in _children():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"popen_loky" in cmdline:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)


def _children() -> list[int]:
    pids: list[int] = []
    try:
        tasks = list(Path("/proc/self/task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        with contextlib.suppress(OSError, ValueError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids
