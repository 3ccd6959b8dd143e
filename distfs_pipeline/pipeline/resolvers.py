"""OmegaConf resolvers of ours, registered on import (`app` imports this before Hydra composes).

Why: Hydra's default run dir has one-second resolution, so two runs started in the same second
shared one dir and appended to each other's logs. `${distfs_run_id:}` is unique per process (pid
plus random bits) and the same for every use within it, so `conf/config.yaml` can make each run's
default dir its own.

Registered with `use_cache=True`, as Hydra registers `${now:}`: the value is then kept in the
config that resolved it, and Hydra copies that cache from a sweep's master config into each job's
config (`load_sweep_config`), so a joblib or Ray worker, a process of its own, resolves the sweep's
`hydra.sweep.dir` to the driver's id, not to its own (which scattered a sweep over one dir per
worker).
"""

from __future__ import annotations

import os
import secrets

from omegaconf import OmegaConf

RUN_ID_RESOLVER = "distfs_run_id"
_RUN_ID = f"{os.getpid()}-{secrets.token_hex(3)}"


def run_id() -> str:
    """This process's run id: `<pid>-<6 hex digits>`."""
    return _RUN_ID


def register() -> None:
    """Register the resolvers (idempotent)."""
    if not OmegaConf.has_resolver(RUN_ID_RESOLVER):
        OmegaConf.register_new_resolver(RUN_ID_RESOLVER, run_id, use_cache=True)


register()
