"""What a configuration may make the app do, checked before Hydra acts on it.

We run as root, and a Hydra configuration is more than values: `_target_` names a callable that
Hydra calls (callbacks, launchers, sweepers, samplers), Python's logging config instantiates
handler classes and opens files, and a preset found through `hydra.searchpath` may carry a
`# @package _global_` header that reaches any key, Hydra's included. So, before anything is
instantiated, configured or written (this runs right after the one compose of a run, and for
every job of a sweep):

- `check_hydra_node`: callbacks are ours only; every `_target_` is a launcher, sweeper or sampler
  of a plugin we support; logging uses our handler and formatters (or Hydra's own file log), no
  other class or file.
- `check_user_presets`: a config that comes from the user's search path (`hydra.searchpath`,
  `--config-dir`) sets our keys only (`policy`, `probe`, `runtime`, `scenario`), never `hydra`.
- `check_paths`: the run dir, state file, chunk cache (with the listing cache in it) and a study's
  scratch copy all lie outside `runtime.storage_root` (symlinks resolved), and no file stands
  where one of their directories must be. Each error names the key the user set.

Each problem is one `UsageError` line naming the key or the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError

OUR_KEYS = frozenset({"policy", "probe", "runtime", "scenario"})
CALLBACKS = {"sweep_summary": "distfs_pipeline.studies.sweep.SweepSummary"}
CALLBACK_ARGS = frozenset({"_target_", "plot", "print_table"})
# Hydra's basic launcher/sweeper and the plugins README.md documents, with Optuna's samplers.
ALLOWED_TARGETS = frozenset(
    {
        "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
        "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
        "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
        "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",
        "hydra_plugins.hydra_submitit_launcher.submitit_launcher.LocalLauncher",
        "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    }
    | {
        f"optuna.samplers.{name}"
        for name in ("GridSampler", "TPESampler", "RandomSampler", "CmaEsSampler", "NSGAIISampler")
    }
    | {"optuna.samplers.MOTPESampler"}
)
LOG_HANDLER_CLASSES = frozenset(
    {"distfs_pipeline.pipeline.logs.StderrHandler", "logging.StreamHandler", "logging.NullHandler"}
)
LOG_FORMATTER_FACTORIES = frozenset(
    {"distfs_pipeline.pipeline.logs.TextFormatter", "distfs_pipeline.pipeline.logs.JsonFormatter"}
)
LOG_STREAMS = frozenset({"ext://sys.stderr", "ext://sys.stdout"})
HYDRA_JOB_LOG = "${hydra.runtime.output_dir}/${hydra.job.name}.log"  # Hydra's own default file log


def _is_user_provider(provider: str | None) -> bool:
    """`hydra.searchpath` entries ("hydra.searchpath in command-line", "... in main") and
    `--config-dir` ("command-line"): the user's directories, not ours, Hydra's or a plugin's."""
    return provider is not None and (provider.startswith("hydra.searchpath") or provider == "command-line")


# --- the hydra node ------------------------------------------------------------------------------


def check_hydra_node(cfg: DictConfig) -> None:
    """Refuse callables and logging set-ups our schema does not allow (see the module docstring)."""
    hydra = OmegaConf.to_container(cfg.hydra, resolve=False)
    assert isinstance(hydra, dict)
    _check_callbacks(hydra.get("callbacks") or {})
    for key, target in _targets(hydra, "hydra"):
        if key.startswith("hydra.callbacks."):
            continue
        if target not in ALLOWED_TARGETS:
            raise UsageError(f"{key}: {target!r} is not a launcher, sweeper or sampler this app supports")
    for node in ("job_logging", "hydra_logging"):
        _check_logging(hydra.get(node), f"hydra.{node}")


def _check_callbacks(callbacks: Any) -> None:
    if not isinstance(callbacks, Mapping):
        raise UsageError("hydra.callbacks: must be a mapping")
    for name, spec in callbacks.items():
        key = f"hydra.callbacks.{name}"
        target = spec.get("_target_") if isinstance(spec, Mapping) else None
        if CALLBACKS.get(str(name)) != target:
            raise UsageError(
                f"{key}: only the app's own callback may run ({', '.join(CALLBACKS.values())}); "
                f"got {target!r}"
            )
        extra = sorted(set(spec) - CALLBACK_ARGS)
        if extra:
            raise UsageError(f"{key}.{extra[0]}: unknown key")
        for arg in ("plot", "print_table"):
            if arg in spec and not isinstance(spec[arg], bool):
                raise UsageError(f"{key}.{arg}: must be true or false (got {spec[arg]!r})")


def _targets(node: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every `_target_` below `node` (dotted key, value), values unresolved (an interpolated target
    is refused: what it names must be visible in the config)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            where = f"{path}.{key}"
            if key == "_target_":
                yield where, value if isinstance(value, str) else repr(value)
            else:
                yield from _targets(value, where)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _targets(value, f"{path}[{index}]")


def _check_logging(log_config: Any, key: str) -> None:
    """Python's dictConfig calls `class` and `()` and opens `filename`: ours only."""
    if log_config is None:
        return
    if not isinstance(log_config, Mapping):
        raise UsageError(f"{key}: must be a mapping")
    for section in ("formatters", "filters", "handlers", "loggers"):
        entries = log_config.get(section) or {}
        if not isinstance(entries, Mapping):
            raise UsageError(f"{key}.{section}: must be a mapping")
        for name, entry in entries.items():
            if isinstance(entry, Mapping):
                _check_log_entry(section, entry, f"{key}.{section}.{name}")
    if "incremental" in log_config and log_config["incremental"] not in (False, None):
        raise UsageError(f"{key}.incremental: must be false")


def _check_log_entry(section: str, entry: Mapping[str, Any], key: str) -> None:
    factory = entry.get("()")
    if factory is not None and (section != "formatters" or factory not in LOG_FORMATTER_FACTORIES):
        raise UsageError(f"{key}.(): {factory!r} may not be instantiated by the logging config")
    if section == "filters" and entry:
        raise UsageError(f"{key}: logging filters are not supported")
    cls = entry.get("class")
    if section == "formatters" and cls not in (None, "logging.Formatter"):
        raise UsageError(f"{key}.class: {cls!r} may not be instantiated by the logging config")
    if section != "handlers":
        return
    if cls == "logging.FileHandler" and entry.get("filename") == HYDRA_JOB_LOG:
        pass  # Hydra's own job log, in the run dir
    elif cls not in LOG_HANDLER_CLASSES:
        raise UsageError(f"{key}.class: {cls!r} is not a log handler this app allows (stderr only)")
    elif "filename" in entry:
        raise UsageError(f"{key}.filename: the logging config may not open files")
    stream = entry.get("stream")
    if stream is not None and stream not in LOG_STREAMS:
        raise UsageError(f"{key}.stream: must be ext://sys.stderr or ext://sys.stdout (got {stream!r})")
    for other in set(entry) - {"class", "formatter", "stream", "level", "filename", "filters", "mode"}:
        raise UsageError(f"{key}.{other}: not allowed in a log handler here")


# --- presets from the user's search path ---------------------------------------------------------


def has_user_search_path(cfg: DictConfig, config_dir: str | None) -> bool:
    """Only then is a preset scan needed (it costs one more defaults-list pass)."""
    return config_dir is not None or bool(OmegaConf.select(cfg, "hydra.searchpath"))


def check_user_presets(config_loader: Any, config_name: str, overrides: list[str], run_mode: Any) -> None:
    """Every config Hydra merges from the user's search path sets only our keys.

    The defaults list says which configs compose and under which package; the repository says
    where each was found. A user's config may fill one of our groups, or (with a `_global_`
    header) several; anything reaching `hydra` (callbacks, launchers, logging, setup commands) or
    any other key is refused, naming the file.
    """
    from hydra._internal.defaults_list import create_defaults_list
    from hydra.types import RunMode

    # the repository with `hydra.searchpath` applied, as the compose itself builds it
    parsed, repo = config_loader._parse_overrides_and_create_caching_repo(config_name, overrides)
    defaults = create_defaults_list(
        repo=repo,
        config_name=config_name,
        overrides_list=parsed,
        prepend_hydra=True,
        skip_missing=run_mode == RunMode.MULTIRUN,
    )
    for default in defaults.defaults:
        if default.config_path is None or default.primary:
            continue  # the primary config is the one the user named (-cn): it is the command line
        loaded = repo.load_config(default.config_path)
        if loaded is None or not _is_user_provider(loaded.provider):
            continue
        where = f"{loaded.path}/{default.config_path}.yaml"
        package = default.package or ""
        content = loaded.config
        keys = [str(k) for k in content if str(k) != "defaults"] if isinstance(content, DictConfig) else []
        top = package.split(".", 1)[0]
        if top:
            if top not in OUR_KEYS:
                raise UsageError(
                    f"{where}: a preset may only set {', '.join(sorted(OUR_KEYS))} (package {package})"
                )
            continue
        outside = sorted(k for k in keys if k not in OUR_KEYS)
        if outside:
            raise UsageError(
                f"{where}: a preset may only set {', '.join(sorted(OUR_KEYS))}; it sets '{outside[0]}'"
            )


# --- paths ---------------------------------------------------------------------------------------


def check_paths(
    store_root: Path,
    run_dir: Path,
    run_dir_key: str,
    state_path: Path,
    state_key: str,
    cache_dir: Path | None,
    cache_key: str,
) -> None:
    """Refuse a run whose files would land inside the audited store, or under a file.

    `*_key` is the key the user set that decides each path (a derived path names its origin):
    the run dir holds a study's scratch copy and, by default, the state; the chunk cache holds
    the listing cache.
    """
    _check_directory_path(run_dir_key, run_dir)
    _check_directory_path(state_key, state_path, is_file=True)
    if cache_dir is not None:
        _check_directory_path(cache_key, cache_dir)
    root = Path(os.path.realpath(store_root))
    for key, path in ((run_dir_key, run_dir), (state_key, state_path), (cache_key, cache_dir)):
        if path is not None and safefile.is_inside(path, root):
            raise UsageError(
                f"{key}: {path} is inside runtime.storage_root ({store_root}); the audited store is "
                "never written: choose a path outside it"
            )


def _check_directory_path(key: str, path: Path, *, is_file: bool = False) -> None:
    """A file (or anything not a directory) where `path` (unless `is_file`) or one of its parents
    must be a directory."""
    path = Path(os.path.abspath(path))
    candidates = path.parents if is_file else (path, *path.parents)
    blocker = next((p for p in candidates if os.path.lexists(p)), None)
    if blocker is not None and not blocker.is_dir():
        where = "is" if blocker == path else f"is inside {blocker}, which is"
        raise UsageError(f"{key}: {path} {where} not a directory")
