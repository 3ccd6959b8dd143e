"""Pre-flight: compose and validate the configuration exactly as the run will, before any round.

The entry point calls `preflight(rewrite_argv(sys.argv[1:]), CONF_DIR)` before handing argv to
`@hydra.main`. Every problem, whether Hydra's (unknown key, wrong type, missing group option,
unparsable override, broken YAML found through `hydra.searchpath`) or ours (`validation`'s ranges
and cross-field rules), becomes one `UsageError` line naming the key, so the CLI exits 2 without a
traceback. With `-m`, every job of the sweep is validated up front (up to `MAX_SWEEP_JOBS`), so a
sweep does not fail at job 37 after hours of work.

Speed: one Hydra initialization, one compose per distinct set of config-group choices; the plain
`key=value` overrides of each job are then applied to a copy with Hydra's own override code.

The app (`app.main`) does not call `preflight` for a run: it composes once, in the Hydra session
the run then uses, and calls `prepare_job` (single run) or `check_sweep` (multirun) on that
config, so a job is composed once and Hydra's own interpolations (`${hydra:runtime.output_dir}`)
resolve as they will in the job. `preflight` remains the one-call check (tests, `--cfg`).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import math
import os
import re
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import yaml
from hydra import version
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.hydra import Hydra
from hydra._internal.utils import create_config_search_path, get_args_parser
from hydra.compose import compose
from hydra.core.config_search_path import SearchPathQuery
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import MissingConfigException, OverrideParseException
from hydra.initialize import get_gh_backup, restore_gh_from_backup
from hydra.plugins.config_source import ConfigSource
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.pipeline import (
    confguard,
    config,  # noqa: F401  (importing registers the structured-config schema)
    hydra_files,
    resolvers,  # noqa: F401  (importing registers ${distfs_run_id:}, which hydra.run.dir uses)
    stopping,
)
from distfs_pipeline.pipeline.launching import (
    JOBLIB_LAUNCHER,
    RAY_LAUNCHER,
    ReusingConfigLoader,
    launcher_target,
)
from distfs_pipeline.pipeline.validation import settings_from_cfg

MAX_SWEEP_JOBS = 256
PRIMARY_CONFIG = "config"
TASK_NAME = "app"  # hydra.job.name, as `@hydra.main` in app.py names it
# Flags that run no job: nothing to validate (and `--version` would exit inside argparse).
_LIST_INDEX = re.compile(r"\[(\d+)\]")
_VERSION_FLAGS = frozenset({"--version"})
_NO_JOB_FLAGS = frozenset(
    {"--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc"}
    | {"--experimental-rerun"}
)


def preflight(argv_after_rewrite: list[str], config_dir: Path) -> None:
    """Validate every job the command line would run; raise `UsageError` (one line) on the first problem.

    `argv_after_rewrite` is `flags.rewrite_argv(...)` output (no program name); `config_dir` is the
    app's primary config directory (`conf/`). `--config-path`, `--config-name` and `--config-dir`
    are honoured as Hydra honours them. Help, info and version requests are not validated.
    """
    if any(token in _VERSION_FLAGS for token in argv_after_rewrite):
        return  # argparse prints the version and exits: nothing else is looked at
    args = _parse_args(argv_after_rewrite)
    _check_commands(args)
    if any(token.split("=", 1)[0] in _NO_JOB_FLAGS for token in argv_after_rewrite):
        return
    config_name = args.config_name or PRIMARY_CONFIG
    main_dir = _main_config_dir(args.config_path, config_dir)
    multirun = args.multirun or "hydra.mode=MULTIRUN" in args.overrides
    with _hydra_session(main_dir, args.config_dir):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None
        mode = RunMode.MULTIRUN if multirun else RunMode.RUN
        cfg = compose_for_run(hydra, config_name, _with_mode(args.overrides, multirun), mode)
        if confguard.has_user_search_path(cfg, args.config_dir):
            confguard.check_user_presets(hydra.config_loader, config_name, args.overrides, mode)
        if multirun:
            check_sweep(cfg, config_name, args.overrides)
        elif args.cfg is None:
            prepare_job(cfg)
        else:
            settings_from_cfg(cfg)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Hydra's own argument parser, failing with a `UsageError`; Hydra's flag checks as one line."""
    args = _parse_args(argv)
    _check_commands(args)
    return args


def runs_no_job(argv: list[str]) -> bool:
    """Help, info, version, completion, rerun: Hydra's own path, nothing to validate or run."""
    return any(token.split("=", 1)[0] in _NO_JOB_FLAGS for token in argv)


def _with_mode(overrides: Sequence[str], multirun: bool) -> list[str]:
    """What Hydra's `_run_app` appends: the mode, unless the command line sets it."""
    if any(o.startswith("hydra.mode=") for o in overrides):
        return list(overrides)
    return [*overrides, "hydra.mode=MULTIRUN" if multirun else "hydra.mode=RUN"]


def open_session(main_dir: str, extra_dir: str | None) -> Hydra:
    """The Hydra session a run uses (left initialized: the caller clears `GlobalHydra`)."""
    search_path = _search_path(main_dir, extra_dir)
    version.setbase("1.3")
    return Hydra.create_main_hydra2(task_name=TASK_NAME, config_search_path=search_path)


def compose_for_run(hydra: Hydra, config_name: str, overrides: Sequence[str], mode: RunMode) -> DictConfig:
    """The one compose of a run (or of a sweep's base), as `Hydra.run`/`multirun` compose it."""
    try:
        return hydra.compose_config(
            config_name=config_name, overrides=list(overrides), run_mode=mode, with_log_configuration=False
        )
    except Exception as exc:
        raise UsageError(describe_compose_error(exc)) from None


def prepare_job(
    cfg: DictConfig, job_dir_key: str = "hydra.run.dir", job_subdir_key: str | None = None
) -> Any:
    """Fix the job's output dir as `run_job` will compute it, then validate: settings, the hydra
    node's callables, and where the job's files go. Returns the `Settings`.

    The dir is resolved once and written back as a literal (`${now:...}` could otherwise tick
    between this check and Hydra's `mkdir`), and Hydra's config is set, so `${hydra:...}`
    interpolations in our keys resolve exactly as in the job.
    """
    confguard.check_hydra_node(cfg)
    HydraConfig.instance().set_config(cfg)
    try:
        run_dir = str(OmegaConf.select(cfg, job_dir_key))
        if job_subdir_key is not None:
            run_dir = os.path.join(run_dir, str(OmegaConf.select(cfg, job_subdir_key)))
    except Exception as exc:
        raise UsageError(f"{job_dir_key}: {_first_line(exc)}") from None
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        if job_subdir_key is None:
            cfg.hydra.run.dir = run_dir
        cfg.hydra.runtime.output_dir = os.path.abspath(run_dir)
    HydraConfig.instance().set_config(cfg)
    settings = settings_from_cfg(cfg)
    check_job_files(settings, Path(os.path.abspath(run_dir)), job_dir_key)
    hydra_files.check_before_run(Path(os.path.abspath(run_dir)), None, cfg.hydra.output_subdir, job_dir_key)
    hydra_files.check_log_files(cfg.hydra.job_logging, "hydra.job_logging")
    return settings


def check_job_files(settings: Any, run_dir: Path, dir_key: str) -> Path:
    """The job's run dir, state file and chunk/listing cache: outside the store, not under a file.
    Returns the state path the job will use."""
    from distfs_pipeline.pipeline import demo
    from distfs_pipeline.pipeline.runner import RunHooks, resolve_settings

    rt, probe = settings.runtime, settings.probe
    store_root = Path(rt.storage_root) if rt.storage_root is not None else demo.default_demo_root()
    resolved = resolve_settings(settings, run_dir, RunHooks(store_root=store_root))
    state_key = "runtime.state_path" if rt.state_path is not None else dir_key
    cache_key = "probe.chunk_cache_dir" if probe.chunk_cache_dir is not None else state_key
    cache_dir = resolved.probe.chunk_cache_dir
    state_path = Path(resolved.runtime.state_path)
    confguard.check_paths(
        store_root,
        run_dir,
        dir_key,
        state_path,
        state_key,
        Path(cache_dir) if cache_dir is not None else None,
        cache_key,
    )
    textfile = rt.metrics_textfile
    default_cache = "probe.chunk_cache_dir (its default is under XDG_CACHE_HOME, else ~/.cache)"
    trusted_cache_key = "probe.chunk_cache_dir" if probe.chunk_cache_dir is not None else default_cache
    written = (
        (state_key, state_path),
        (trusted_cache_key, cache_dir),
        ("runtime.metrics_textfile", textfile),
    )
    for key, path in written:
        if path is not None:
            with safefile.refused_as(key):
                safefile.check_trusted_path(path)  # a dir someone else can change: refused now
    return state_path


def _check_commands(args: argparse.Namespace) -> None:
    """Hydra's own checks of its flags (it raises them with a traceback), as one-line errors."""
    if args.help or args.hydra_help:
        return  # Hydra prints the help and exits before looking at anything else
    if args.experimental_rerun is not None:  # it unpickles the file: code execution, as root
        raise UsageError(
            "--experimental-rerun: not supported: it loads a pickle (which runs whatever code the "
            "file holds), and this app writes none; rerun a job with its .hydra/overrides.yaml"
        )
    if args.resolve and args.cfg is None:
        raise UsageError("command line: --resolve needs --cfg (or --help)")
    commands = {
        "--run": args.run,
        "--multirun": args.multirun,
        "--cfg": args.cfg is not None,
        "--info": args.info is not None,
        "--shell-completion": args.shell_completion,
    }
    given = [name for name, on in commands.items() if on]
    if len(given) > 1:
        raise UsageError(f"command line: {' and '.join(given)} cannot be combined: give only one of them")


def _check_output_dir(cfg: DictConfig, key: str) -> None:
    """Hydra creates the run (or sweep) dir before the task starts, with a traceback if it cannot:
    refuse a path with a file where a directory must be. Best effort: skipped when the path only
    resolves inside a job (`${hydra.job.num}` and the like).
    """
    try:
        value = OmegaConf.select(cfg, key)
    except Exception:
        return
    if not isinstance(value, str) or not value:
        return
    path = Path(value).absolute()
    with safefile.refused_as(key):
        safefile.check_trusted_path(path)  # e.g. outputs/<date> planted as a link in a shared cwd
    blocker = next((p for p in (path, *path.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        where = "is" if blocker == path else f"is inside {blocker}, which is"
        raise UsageError(f"{key}: {path} {where} not a directory")


def _check_sweep_file(cfg: DictConfig) -> None:
    """The sweeper's `multirun.yaml`: nothing planted at it (skipped when the dir resolves only in
    a job; the write checks again)."""
    try:
        value = OmegaConf.select(cfg, "hydra.sweep.dir")
    except Exception:
        return
    if isinstance(value, str) and value:
        hydra_files.check_sweep_file(Path(value).absolute(), "hydra.sweep.dir")


def _check_sweeper_storage(cfg: DictConfig) -> None:
    """Optuna's `hydra.sweeper.storage=sqlite:///<file>`: SQLite opens (and creates) the file
    itself, following a link; refuse a link someone else planted on its path, and anything but a
    plain file at it."""
    try:
        storage = OmegaConf.select(cfg, "hydra.sweeper.storage")
    except Exception:
        return
    if not isinstance(storage, str) or not storage.startswith("sqlite:///"):
        return
    path = Path(storage.removeprefix("sqlite:///")).absolute()  # as SQLite opens it: `..` kept
    with safefile.refused_as("hydra.sweeper.storage"):
        safefile.check_writable_file(path)


def _parse_args(argv: list[str]) -> argparse.Namespace:
    """Hydra's own argument parser, failing with a `UsageError` instead of exiting."""
    parser = get_args_parser()

    def fail(message: str) -> Any:
        raise UsageError(f"command line: {message}")

    parser.error = fail  # type: ignore[method-assign]
    return parser.parse_args(argv)


def _main_config_dir(config_path: str | None, default: Path) -> str:
    """Where the primary config lives: `--config-path` as Hydra resolves it, else `default`."""
    if config_path is None:
        return str(default.resolve())
    if config_path.startswith("pkg://"):
        return config_path
    plain = config_path.removeprefix("file://")
    # Hydra resolves a relative path against the app module's directory: the package, above this one.
    path = Path(plain) if os.path.isabs(plain) else Path(__file__).resolve().parent.parent / plain
    if not path.is_dir():
        raise UsageError(f"--config-path: directory not found: {path}")
    return str(path.resolve())


def _search_path(main_dir: str, extra_dir: str | None) -> Any:
    """Hydra's search path for `main_dir`, with `--config-dir` as Hydra adds it."""
    search_path = create_config_search_path(main_dir)
    if extra_dir is not None:
        abs_dir = os.path.abspath(extra_dir)
        if not os.path.isdir(abs_dir):
            raise UsageError(f"--config-dir: directory not found: {abs_dir}")
        search_path.prepend("command-line", f"file://{abs_dir}", anchor=SearchPathQuery(provider="schema"))
    return search_path


@contextmanager
def _hydra_session(main_dir: str, extra_dir: str | None) -> Iterator[None]:
    """What `initialize_config_dir(version_base="1.3")` does, plus Hydra's `--config-dir` handling.

    The global Hydra state is restored on exit, so `@hydra.main` starts clean afterwards.
    """
    search_path = _search_path(main_dir, extra_dir)
    backup = get_gh_backup()
    try:
        version.setbase("1.3")
        Hydra.create_main_hydra2(task_name=TASK_NAME, config_search_path=search_path)
        yield
    finally:
        restore_gh_from_backup(backup)


def _compose(config_name: str, overrides: Sequence[str]) -> DictConfig:
    """Hydra's compose with Hydra's node kept (it is validated too), errors as `UsageError`."""
    try:
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    except Exception as exc:
        raise UsageError(describe_compose_error(exc)) from None


# ---------------------------------------------------------------------------------------------
# Multirun: expand the sweep as Hydra's BasicSweeper does, validate each job.


def check_sweep(
    cfg: DictConfig, config_name: str, overrides: list[str], reuse: ReusingConfigLoader | None = None
) -> bool:
    """A multirun's base config (`cfg`, composed by the caller) and every job it will launch.

    Returns whether every job was composed and validated here (no interval sweep, at most
    `MAX_SWEEP_JOBS` jobs): then Hydra's basic sweeper need not compose each batch again. With
    `reuse` (the basic launcher, which composes every job serially in this process), each job is
    composed exactly as the launcher will compose it and kept there, so it is composed once.
    """
    confguard.check_hydra_node(cfg)
    _check_output_dir(cfg, "hydra.sweep.dir")
    _check_sweep_file(cfg)
    _check_sweeper_storage(cfg)
    _validate_sweep(cfg, config_name, overrides, reuse)
    return _SweepCoverage.complete


def _validate_sweep(
    master: DictConfig, config_name: str, overrides: list[str], reuse: ReusingConfigLoader | None
) -> None:
    """Validate every job of the sweep whose base config is `master` (up to `MAX_SWEEP_JOBS`).

    Each job is checked as it will run: its number set (`${hydra:job.num}` resolves), its dir,
    state file and caches outside the store, and no state file shared by two jobs: jobs of a
    parallel launcher would fight over its lock, and sequential ones would silently continue each
    other's history, so it is refused the same way on every launcher.
    """
    parser = OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
    command_line = _parse_overrides(parser, overrides)
    params = OmegaConf.select(master, "hydra.sweeper.params") or {}
    from_config = [f"{k}={v}" for k, v in params.items()]
    every = _parse_overrides(parser, from_config) + command_line
    dimensions = _sweep_dimensions(every)
    enumerable = all(o.is_discrete_sweep() for o in every if o.is_sweep_override())
    _SweepCoverage.complete = enumerable and math.prod(len(d) for d in dimensions) <= MAX_SWEEP_JOBS
    _SweepCoverage.job_dirs = []
    swept_keys = {dim[0].split("=", 1)[0] for dim in dimensions if len(dim) > 1}
    if reuse is not None and _SweepCoverage.complete:
        task = [str(o) for o in OmegaConf.to_container(master.hydra.overrides.task, resolve=False)]  # type: ignore[union-attr]
        jobs: Iterator[Sequence[str]] = iter(_launch_order(parser, from_config + task))

        def compose_job(job: Sequence[str]) -> DictConfig:
            return reuse.compose_job(master, job, describe_compose_error)
    else:
        jobs = _capped_jobs(dimensions, MAX_SWEEP_JOBS)
        cache: dict[tuple[str, ...], DictConfig] = {}

        def compose_job(job: Sequence[str]) -> DictConfig:
            return _compose_job(config_name, tuple(job), parser, cache)

    states: dict[Path, int] = {}
    saved = HydraConfig.instance().cfg
    try:
        for number, job in enumerate(jobs):
            stopping.check(stopping.BEFORE_RUN)  # a signal while composing is honoured here
            swept = " ".join(choice for choice in job if choice.split("=", 1)[0] in swept_keys)
            try:
                job_cfg = compose_job(job)
                with read_write(job_cfg.hydra), open_dict(job_cfg.hydra):
                    job_cfg.hydra.job.num = number
                    job_cfg.hydra.job.id = _launcher_job_id(master, job_cfg, number)
                    job_cfg.hydra.mode = RunMode.MULTIRUN
                state = _job_state_path(job_cfg)
            except UsageError as exc:
                raise UsageError(f"{exc} [sweep job: {swept}]" if swept else str(exc)) from None
            if state in states:
                raise UsageError(
                    f"runtime.state_path: {state} would be shared by sweep jobs {states[state]} and "
                    f"{number}; "
                    "leave it null (each job keeps its state in its own dir) or make it per job, e.g. "
                    "runtime.state_path='${hydra:runtime.output_dir}/probe-state.json'"
                )
            states[state] = number
    finally:
        HydraConfig.instance().cfg = saved  # type: ignore[assignment]


def _launcher_job_id(master: DictConfig, job_cfg: DictConfig, number: int) -> str:
    """`hydra.job.id` as the sweep's launcher will set it, so `${hydra:job.id}` in a path is checked
    where the job will write (the basic launcher: the number; joblib: `<job name>_<number>`; Ray:
    `job_id_for_<number>`)."""
    target = launcher_target(master)
    if target == JOBLIB_LAUNCHER:
        return f"{job_cfg.hydra.job.name}_{number}"
    if target == RAY_LAUNCHER:
        return f"job_id_for_{number}"
    return str(number)


def _launch_order(parser: OverridesParser, arguments: list[str]) -> list[list[str]]:
    """The jobs' override lists exactly as Hydra's basic sweeper hands them to the launcher."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    try:
        return BasicSweeper.split_arguments(_parse_overrides(parser, arguments), None)[0]
    except Exception as exc:
        raise UsageError(describe_compose_error(exc)) from None


class _SweepCoverage:
    """Whether the last `_validate_sweep` covered every job of the sweep, and their dirs."""

    complete = False
    job_dirs: ClassVar[list[Path]] = []


def _job_state_path(job_cfg: DictConfig) -> Path:
    """The job's state file, after checking everything the job will write (and noting its dir)."""
    HydraConfig.instance().set_config(job_cfg)
    try:
        job_dir = os.path.join(str(job_cfg.hydra.sweep.dir), str(job_cfg.hydra.sweep.subdir))
    except Exception as exc:
        raise UsageError(f"hydra.sweep.subdir: {_first_line(exc)}") from None
    with read_write(job_cfg.hydra), open_dict(job_cfg.hydra):
        job_cfg.hydra.runtime.output_dir = os.path.abspath(job_dir)
    HydraConfig.instance().set_config(job_cfg)
    settings = settings_from_cfg(job_cfg)
    state = check_job_files(settings, Path(os.path.abspath(job_dir)), "hydra.sweep.dir")
    sweep_dir = Path(os.path.abspath(str(job_cfg.hydra.sweep.dir)))
    subdir = job_cfg.hydra.output_subdir
    hydra_files.check_before_run(Path(os.path.abspath(job_dir)), sweep_dir, subdir, "hydra.sweep.dir")
    hydra_files.check_log_files(job_cfg.hydra.job_logging, "hydra.job_logging")
    _SweepCoverage.job_dirs.append(Path(os.path.abspath(job_dir)))
    return state


def checked_job_dirs() -> list[Path]:
    """The job dirs of the sweep the last `check_sweep` covered whole (else empty): what the sweep
    summary lists, so that a record planted elsewhere in a shared sweep dir is no job of it."""
    return list(_SweepCoverage.job_dirs) if _SweepCoverage.complete else []


def _as_text(override: Override) -> str:
    """The override as the sweeper writes it for a job (so equal choices give equal cache keys)."""
    return f"{override.get_key_element()}={override.get_value_element_as_str()}"


def _parse_overrides(parser: OverridesParser, overrides: list[str]) -> list[Override]:
    try:
        return parser.parse_overrides(overrides)
    except Exception as exc:
        raise UsageError(describe_compose_error(exc)) from None


def _sweep_dimensions(overrides: list[Override]) -> list[list[str]]:
    """One list of `key=value` choices per key, in first-seen order, a later value replacing an
    earlier one (BasicSweeper.split_arguments). Sweeps that cannot be enumerated (intervals) are
    left out: the job is validated with the key at its composed value.
    """
    by_key: dict[str, list[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            by_key[key] = [_as_text(override)]
        elif override.is_discrete_sweep():  # one more than the cap: a longer sweep is not complete
            values = itertools.islice(override.sweep_string_iterator(), MAX_SWEEP_JOBS + 1)
            by_key[key] = [f"{key}={value}" for value in values]
        else:
            by_key.pop(key, None)
    return list(by_key.values())


def _capped_jobs(dimensions: list[list[str]], cap: int) -> Iterator[tuple[str, ...]]:
    """The jobs in Hydra's launch order when there are at most `cap`; otherwise `cap` distinct jobs:
    first a diagonal that uses every swept value at least once, then the product in Hydra's order.
    """
    if any(not dim for dim in dimensions):
        return
    if math.prod(len(dim) for dim in dimensions) <= cap:
        yield from itertools.product(*dimensions)
        return
    longest = max(len(dim) for dim in dimensions)
    diagonal = (tuple(dim[i % len(dim)] for dim in dimensions) for i in range(longest))
    seen: set[tuple[str, ...]] = set()
    for job in itertools.chain(diagonal, itertools.product(*dimensions)):
        if job not in seen:
            seen.add(job)
            yield job
            if len(seen) >= cap:
                return


def _compose_job(
    config_name: str, job: tuple[str, ...], parser: OverridesParser, cache: dict[tuple[str, ...], DictConfig]
) -> DictConfig:
    """The job's config: a cached compose of its structural overrides, then its `a.b=v` overrides."""
    parsed = _parse_overrides(parser, list(job))
    structural = [o.input_line for o in parsed if not _is_plain_value(o)]
    key = tuple(sorted(structural))  # distinct keys: their order does not change the result
    if key not in cache:
        cache[key] = _compose(config_name, structural)
    values = [o for o in parsed if _is_plain_value(o)]
    cfg = copy.deepcopy(cache[key])
    try:
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
    except Exception as exc:
        raise UsageError(describe_compose_error(exc)) from None
    return cfg


def _is_plain_value(override: Override) -> bool:
    """A dotted app key (`policy.backoff_base_ms=5`): cannot change the defaults list, so it can
    be applied after composing. Group choices, `hydra.*` and top-level keys are composed.
    """
    key = override.key_or_group
    return override.package is None and "." in key and "/" not in key and not override.is_hydra_override()


# ---------------------------------------------------------------------------------------------
# Hydra/OmegaConf errors -> one line naming the key.


def describe_compose_error(exc: BaseException) -> str:
    """One line `<key or file>: <rule>` for any error raised while composing."""
    chain = _exception_chain(exc)
    handlers = (
        _missing_config_line,
        _omegaconf_line,
        _yaml_line,
        _override_parse_line,
        _ambiguous_line,
        _composing_line,
    )
    for handler in handlers:
        line = handler(chain)
        if line:
            return line
    return f"config: {_first_line(exc)}"


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


def _missing_config_line(chain: list[BaseException]) -> str | None:
    found = next((e for e in chain if isinstance(e, MissingConfigException)), None)
    if found is None:
        return None
    missing = found.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = ", ".join(found.options or [])
    if group:
        return f"{group}: no option '{option}' (available: {options or 'none'})"
    return f"{missing or 'config'}: {_first_line(found)}"


def _omegaconf_line(chain: list[BaseException]) -> str | None:
    """OmegaConf's own errors carry `full_key`; plain errors it re-raises only say it in their text."""
    with_attr = [(e, e.full_key) for e in chain if getattr(e, "full_key", None)]  # type: ignore[attr-defined]
    in_text = [(e, key) for e in chain if (key := _text_full_key(str(e)))]
    for exc, key in with_attr + in_text:
        message = str(getattr(exc, "msg", None) or exc)
        if isinstance(exc, ConfigKeyError | ConfigAttributeError) and "not in" in message:
            rule = f"unknown key (not in {getattr(exc, 'object_type_str', None) or 'the schema'})"
        else:
            rule = message.splitlines()[0].strip()
        return f"{key}: {rule}{_origin(chain)}"
    return None


def _text_full_key(message: str) -> str | None:
    match = re.search(r"^\s*full_key: (\S+)\s*$", message, re.MULTILINE)
    return match.group(1) if match else None


def _origin(chain: list[BaseException]) -> str:
    """Where the bad value came from: `(in 'policy/mine')` or `(override 'a.b=x')`, if Hydra said."""
    for exc in chain:
        text = str(exc)
        if text.startswith("In '") and "':" in text:
            return f" (in {text[3 : text.index(':')]})"
        if text.startswith("Error merging override "):
            return f" (override '{text.removeprefix('Error merging override ').strip()}')"
    return ""


def _composing_line(chain: list[BaseException]) -> str | None:
    """Hydra's "In 'group/option': X raised while composing config:" with the detail on the next
    line (e.g. a YAML file that is a list, not a mapping): the config's name and the detail."""
    for index, exc in enumerate(chain):
        match = re.match(r"In '([^']+)': .*raised while composing config:", str(exc))
        if match:
            detail = next((_first_line(e) for e in chain[index + 1 :]), None)
            detail = detail or " ".join(str(exc).splitlines()[1:2]).strip() or "cannot be composed"
            return f"config '{match.group(1)}': {detail}"
    return None


def _yaml_line(chain: list[BaseException]) -> str | None:
    undecodable = next((e for e in chain if isinstance(e, UnicodeDecodeError)), None)
    if undecodable is not None:
        return f"{_yaml_file(undecodable) or 'a config file'}: not UTF-8 text ({undecodable.reason})"
    found = next((e for e in chain if isinstance(e, yaml.YAMLError)), None)
    if found is None:
        return None
    where = _yaml_file(found) or "a config file"
    mark = getattr(found, "problem_mark", None)
    at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(found, "problem", None) or _first_line(found)
    return f"{where}: not valid YAML: {problem}{at}"


def _yaml_file(exc: BaseException) -> str | None:
    """The file Hydra was loading (its frames know; the YAML error does not), best effort."""
    try:
        for frame, _ in traceback.walk_tb(exc.__traceback__):
            source, config_path = frame.f_locals.get("self"), frame.f_locals.get("config_path")
            if isinstance(source, ConfigSource) and isinstance(config_path, str):
                name = config_path if config_path.endswith(".yaml") else f"{config_path}.yaml"
                return f"{source.path}/{name}"
    except Exception:  # pragma: no cover - purely cosmetic
        return None
    return None


def _ambiguous_line(chain: list[BaseException]) -> str | None:
    text = _first_line(chain[0])
    if not text.startswith("Ambiguous value for argument "):
        return None
    override = text.removeprefix("Ambiguous value for argument ")
    return (
        f"override {override}: ambiguous value (to sweep add --multirun; a list is key=[a,b]; "
        "a string is key='a,b')"
    )


def _override_parse_line(chain: list[BaseException]) -> str | None:
    found = next((e for e in chain if isinstance(e, OverrideParseException)), None)
    if found is None:
        return None
    detail = _first_line(found).removeprefix("LexerNoViableAltException: ")
    if detail == found.override:
        detail = "unexpected character"
    key = found.override.partition("=")[0]
    dotted = _LIST_INDEX.sub(r".\1", key)
    if dotted != key:  # `a.faults[0].b`: Hydra indexes lists with a dot
        hint = f"to set a list entry, index with a dot: {dotted}=..."
    elif not found.override.isascii():
        hint = "quote a value with other characters: key='value'"
    else:
        hint = "see Hydra's override grammar"
    return f"override '{found.override}': cannot parse ({detail}); {hint}"
