"""Structured-config schemas for Hydra: the shape of every configuration the app accepts.

The dataclasses mirror the configuration keys of docs/architecture.md. `PipelineConf` is stored in
Hydra's ConfigStore as the root config `pipeline_schema`, and `conf/config.yaml` lists it first in
its defaults list. Everything composed after it (group presets, a user's YAML found through
`hydra.searchpath`, command-line overrides) is merged into typed, struct-mode nodes, so an unknown
key or a value of the wrong type is refused at compose time, before any round runs.

Types and key names are checked here; ranges and cross-field rules (u32/i64 bounds,
`backoff_max_ms >= backoff_base_ms`) are checked by `validation`, which needs no Hydra.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from enum import StrEnum
from typing import get_type_hints

from hydra.core.config_store import ConfigStore

from distfs_pipeline.core.models import (
    DEFAULT_ALLOWED_CLOCK_SKEW_MS,
    DEFAULT_CHALLENGE_TTL_MS,
    DEFAULT_CHALLENGES_PER_TICK,
    DEFAULT_MAX_SAMPLE_BYTES,
    AdaptivePolicy,
    FaultKind,
    TargetOrder,
)

SCHEMA_NAME = "pipeline_schema"


# OmegaConf matches enum values by member *name*, so every name equals its value: YAML and
# overrides then read `clock: wall`, and `cfg.runtime.clock.value` is the same string.
class VerifyMode(StrEnum):
    """How a check verifies the bytes it samples (see models.VerifyOptions)."""

    chunked = "chunked"
    full = "full"


class Clock(StrEnum):
    """`virtual`: deterministic simulated time; `wall`: real time, real sleeps."""

    virtual = "virtual"
    wall = "wall"


class Durability(StrEnum):
    """When the round log is fdatasync'ed: every round, or by group commit every interval."""

    round = "round"
    pipelined = "pipelined"
    interval = "interval"


class Progress(StrEnum):
    """Whether the runner draws a progress display (`auto`: only on a terminal)."""

    auto = "auto"
    always = "always"
    never = "never"


class LogFormat(StrEnum):
    """How warnings and logs are written on stderr: `text` for people, `json` for log shippers."""

    text = "text"
    json = "json"


# `models` uses `from __future__ import annotations`, so its field types are strings until resolved.
_POLICY_HINTS = get_type_hints(AdaptivePolicy)

PolicyConf = make_dataclass(
    "PolicyConf",
    [(f.name, _POLICY_HINTS[f.name], field(default=f.default)) for f in fields(AdaptivePolicy)],
)
PolicyConf.__module__ = __name__  # Python 3.11's make_dataclass has no `module=` (3.12 does)
PolicyConf.__doc__ = """`policy` group: upstream's StorageChallengeAdaptivePolicy, upstream defaults.

Derived field for field (names, types, defaults) from `models.AdaptivePolicy`, the record the
scheduler runs on, so the Hydra schema cannot drift from it. It is a separate, mutable dataclass
because OmegaConf needs a plain structured-config class, not the frozen record with its methods.
"""


@dataclass
class ProbeConf:
    """`probe` group: upstream's StorageChallengeProbeConfig plus how samples are verified."""

    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    challenges_per_tick: int = DEFAULT_CHALLENGES_PER_TICK
    challenge_ttl_ms: int = DEFAULT_CHALLENGE_TTL_MS
    allowed_clock_skew_ms: int = DEFAULT_ALLOWED_CLOCK_SKEW_MS
    verify_mode: VerifyMode = VerifyMode.chunked
    chunk_size_bytes: int = 16 * 1024
    chunk_cache_dir: str | None = None
    full_verify_every: int = 0
    full_verify_interval_ms: int = 7 * 24 * 3600 * 1000
    max_bytes_per_s: int = 0


@dataclass
class RuntimeConf:
    """`runtime` group: identity, store, state file, clock and run length."""

    world_id: str = "world-1"
    node_id: str = "node-storage-1"
    storage_root: str | None = None
    state_path: str | None = None
    clock: Clock = Clock.virtual
    start_unix_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z: virtual runs are reproducible
    tick_ms: int = 200  # upstream --node-tick-ms default
    rounds: int = 300
    epoch_rounds: int = 100
    progress: Progress = Progress.auto
    allow_empty_store: bool = False
    tick_jitter_ms: int = 0
    metrics_port: int | None = None
    metrics_textfile: str | None = None
    durability: Durability = Durability.round
    durability_interval_ms: int = 1000
    log_max_bytes: int = 64 * 1024 * 1024
    log_keep: int = 8
    log_compress: bool = False
    log_format: LogFormat = LogFormat.text


class Baseline(StrEnum):
    """What the scratch copy starts from: only blobs that verify (`healthy`), or everything."""

    healthy = "healthy"
    as_is = "as_is"


@dataclass
class FaultConf:
    """One entry of `scenario.faults`: a fault kind, its targets and its schedule in rounds."""

    kind: FaultKind = FaultKind.bit_rot
    at_round: int = 1
    repair_at_round: int | None = None
    flap_every: int = 0
    target_index: int = 0
    target_order: TargetOrder = TargetOrder.by_hash
    blobs: int = 1
    flip_bytes: int = 1
    offset: int | None = None
    silent: bool = True
    truncate_to: int | None = None
    delay_ms: int | None = None


@dataclass
class ScenarioConf:
    """`scenario` group: a fault schedule for studies, applied to a scratch copy of the store."""

    name: str = "none"
    description: str = ""
    baseline: Baseline = Baseline.healthy
    faults: list[FaultConf] = field(default_factory=list)
    objective_weight_checks: float = 0.0
    objective_weight_recovery: float = 0.0


@dataclass
class PipelineConf:
    """The whole composed configuration (Hydra's own `hydra` node is added beside it)."""

    policy: PolicyConf = field(default_factory=PolicyConf)
    probe: ProbeConf = field(default_factory=ProbeConf)
    runtime: RuntimeConf = field(default_factory=RuntimeConf)
    scenario: ScenarioConf = field(default_factory=ScenarioConf)


def register_configs() -> None:
    """Store the root schema in Hydra's ConfigStore (idempotent: storing again replaces it).

    Called at import, so importing this module before composing is enough.
    """
    ConfigStore.instance().store(name=SCHEMA_NAME, node=PipelineConf)


register_configs()
