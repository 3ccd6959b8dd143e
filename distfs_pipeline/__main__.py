"""`distfs-pipeline` and `python -m distfs_pipeline`: subcommands, `--version`, then the Hydra app.

Why this thin layer: it runs before anything heavy is imported, so the signal handlers are in
place from the first instruction (`stopping.install`) and `--version` or a subcommand's `--help`
never pays for Hydra. A first word naming a subcommand (`status`, `index`, `schemas`, `sweep`)
runs that tool's `main(argv) -> int`; Hydra overrides always hold `=` (or start with `-`, `+`,
`~`), so no command line of the app can be taken for a subcommand. Everything else is the audit
app (`app.main`).

Closing stdout (`distfs-pipeline ... | head`) is not an error: the run's files are already saved
when the end table is printed, so a broken pipe ends the process quietly (see `_stdout_closed`).

As a command (no `argv` given), the process ends without the interpreter's final teardown, which
frees every module and object one by one: 0.07 to 0.15 s after a run, 0.2 s after a sweep that drew
its plot (measured here), for nothing, since the process is gone a moment later. Everything that
teardown still does for us is done first, in the interpreter's own order (`_exit_now`).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from distfs_pipeline.pipeline import stopping

# subcommand -> module whose `main(argv: list[str]) -> int` it runs (imported only when used)
SUBCOMMANDS: dict[str, str] = {
    "status": "distfs_pipeline.ops.status",
    "index": "distfs_pipeline.ops.adopt",
    "schemas": "distfs_pipeline.pipeline.schemas",
    "sweep": "distfs_pipeline.studies.sweep",
}
VERSION_FLAGS = frozenset({"--version", "-V"})


def main(argv: Sequence[str] | None = None) -> int:
    """The console script: as a command (`argv` None) it exits with the status; called with `argv`,
    it returns it."""
    status = _main(argv)
    if argv is None:
        _exit_now(status)
    return status


def _main(argv: Sequence[str] | None) -> int:
    stopping.install()
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        status = _dispatch(args)
    except (BrokenPipeError, stopping.StdoutClosed):
        status = _stdout_closed()
    except stopping.Interrupted as stop:
        print(f"distfs_pipeline: {stop}", file=sys.stderr, flush=True)
        status = stopping.EXIT_INTERRUPTED
    except KeyboardInterrupt:  # a second signal: stop at once (the round journal tolerates it)
        print("distfs_pipeline: interrupted", file=sys.stderr, flush=True)
        status = stopping.EXIT_INTERRUPTED
    return status


def _dispatch(args: list[str]) -> int:
    if args and args[0] in SUBCOMMANDS:
        return run_subcommand(args[0], args[1:])
    if any(token in VERSION_FLAGS for token in args):
        print(version_text(), flush=True)
        return 0
    with stopping.deferred():  # Hydra's import builds configs: a signal is honoured just after
        from distfs_pipeline.app import main as app_main
    stopping.check(stopping.BEFORE_RUN)
    return app_main(args)


def run_subcommand(name: str, rest: list[str]) -> int:
    """`distfs-pipeline NAME ...` -> `<module>.main(rest)`; a missing module is one line, exit 2."""
    module_name = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        print(f"distfs-pipeline: error: '{name}' is not available in this build", file=sys.stderr)
        return 2
    result = module.main(rest)
    return int(result or 0)


def version_text() -> str:
    """`distfs_pipeline X (Hydra Y, Python Z)`: what a bug report needs, without importing Hydra."""
    from importlib.metadata import PackageNotFoundError, version

    from distfs_pipeline import __version__

    try:
        hydra_version = version("hydra-core")
    except PackageNotFoundError:  # pragma: no cover - hydra-core is a dependency
        hydra_version = "not installed"
    python = ".".join(str(part) for part in sys.version_info[:3])
    return f"distfs_pipeline {__version__} (Hydra {hydra_version}, Python {python})"


def _stdout_closed() -> int:
    """The reader went away (`| head`): say nothing more on stdout, exit 0.

    Pointing fd 1 at /dev/null keeps the interpreter's final flush from printing "Exception
    ignored ... BrokenPipeError". The run's state and files were saved before the table was printed.
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return 0


def _interrupted_status(status: int) -> int:
    """A stop request that arrived while the process was ending: said once, status 130."""
    if status != stopping.EXIT_INTERRUPTED:
        with contextlib.suppress(OSError, ValueError):
            print("distfs_pipeline: interrupted while exiting", file=sys.stderr, flush=True)
    return stopping.EXIT_INTERRUPTED


def _exit_now(status: int) -> NoReturn:
    """End the process as `sys.exit(status)` would, without freeing every object first.

    What the interpreter does at exit before that teardown is done here, in its order: non-daemon
    threads are joined, with the threads' exit hooks (`concurrent.futures`, joblib's executor), then
    the `atexit` handlers (logging flushes and closes its files, Hydra's, Ray's, weakref finalizers
    such as temporary directories), then stdout and stderr are flushed. A signal that arrives while
    threads are joined ends that wait (status 130), never the rest: the handlers still run. Our own
    files are written through file descriptors and closed (or fsynced) before this point, never left
    to a destructor.
    """
    import atexit
    import threading

    try:
        for step in (threading._shutdown, atexit._run_exitfuncs):  # type: ignore[attr-defined]
            try:
                step()
            except BaseException:  # a signal while threads are joined: stop waiting, not the exit
                status = _interrupted_status(status)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):  # a closed pipe or stream: nothing to say
                stream.flush()
        os._exit(status)


if __name__ == "__main__":
    main()
