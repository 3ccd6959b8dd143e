"""Ranges and cross-field rules of the configuration, as pydantic v2 models.

Hydra's structured configs (`config`) already refuse unknown keys and wrong types at compose time;
these models add what a type cannot say: upstream's u32/i64 bounds and predicates (SPEC 2.9, 2.10,
3.1), `backoff_max_ms >= backoff_base_ms` (which upstream's newest CLI forgot, SPEC section 0), and
our own runtime rules. They are also the source of `schemas/*.json` (see `schemas`).

No Hydra import here: the engine side and the schema tool use this module without Hydra.
`settings_from_cfg` accepts an OmegaConf `DictConfig` (duck-typed) or any mapping and turns every
problem into one `UsageError` line naming the dotted key and the rule.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import Enum
from typing import Any, Literal, get_args

# WHY: pydantic loads every installed `pydantic` entry point into each model it builds (its plugin
# API), scanning the metadata of every distribution on `sys.path` first (about 11 ms of each start,
# measured here). These models check our own config and need no plugin; loading one would run a
# third-party module inside the validation of a root run. pydantic reads this when the first
# model below is built, in the driver and in every worker (each imports this module).
os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import (
    DEFAULT_ALLOWED_CLOCK_SKEW_MS,
    DEFAULT_CHALLENGE_TTL_MS,
    DEFAULT_CHALLENGES_PER_TICK,
    DEFAULT_MAX_SAMPLE_BYTES,
    I64_MAX,
    U32_MAX,
    AdaptivePolicy,
    ProbeConfig,
    VerifyOptions,
)
from distfs_pipeline.persist.state import LogOptions

# Cross-field rules raise PydanticCustomError with one of these types; `{sibling}` is rendered as
# the sibling's dotted key, so the message names both keys wherever the model is nested.
CROSS_FIELD_TEMPLATES: dict[str, str] = {
    "not_below_sibling": "must be >= {sibling} ({value} < {sibling_value})",
    "below_sibling": "must be < {sibling} ({value} >= {sibling_value})",
    "needs_wall_clock": "0 (run until stopped) needs {sibling}=wall (got {sibling_value})",
    "clock_overflow": "the virtual clock would pass i64 max: {sibling} + tick_ms * rounds > {limit}",
}
# Rules about one key that a validator of a parent model checks: the error's `ctx["at"]` holds the
# key's path below that parent, so the message names the key itself (see `describe_error_details`).
AT_KEY_TEMPLATES: dict[str, str] = {
    "scenario_needs_rounds": "a scenario needs a finite run (rounds > 0)",
    "fault_after_run": "{value} is after the last round (runtime.rounds={rounds})",
}


_BUILTIN_ERROR_TYPES = frozenset(get_args(ErrorType))


class _Settings(BaseModel):
    """Common model behaviour: frozen, unknown keys refused, no silent type coercion."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _u32(default: int, minimum: int, description: str) -> Any:
    return Field(default, ge=minimum, le=U32_MAX, description=description)


def _i64(default: int, description: str, *, positive: bool = False) -> Any:
    if positive:
        return Field(default, gt=0, le=I64_MAX, description=description)
    return Field(default, ge=0, le=I64_MAX, description=description)


def _multiplier(reason: str) -> Any:
    return _u32(1, 1, f"Backoff multiplier when {reason} dominates a failure round (u32 >= 1).")


class PolicySettings(_Settings):
    """Adaptive policy (upstream StorageChallengeAdaptivePolicy); upstream defaults."""

    max_checks_per_round: int = _u32(U32_MAX, 1, "Cap on checks per round (u32 >= 1).")
    backoff_base_ms: int = _i64(0, "Backoff after the first failure round, doubling after each (i64 >= 0).")
    backoff_max_ms: int = _i64(0, "Longest backoff (i64 >= 0 and >= backoff_base_ms; 0: no backoff).")
    backoff_multiplier_hash_mismatch: int = _multiplier("HASH_MISMATCH")
    backoff_multiplier_missing_sample: int = _multiplier("MISSING_SAMPLE")
    backoff_multiplier_timeout: int = _multiplier("TIMEOUT")
    backoff_multiplier_read_io_error: int = _multiplier("READ_IO_ERROR")
    backoff_multiplier_signature_invalid: int = _multiplier("SIGNATURE_INVALID")
    backoff_multiplier_unknown: int = _multiplier("UNKNOWN")
    # Ours (issue 10, `precision`); every default is upstream's behaviour.
    backoff_scope: Literal["node", "blob"] = Field(
        "node",
        description="node: a failure round pauses all checks (upstream); blob: a failing blob backs off.",
    )
    backoff_on_loss: bool = Field(
        True, description="false: HASH_MISMATCH, MISSING_SAMPLE and SIGNATURE_INVALID never start a backoff."
    )
    loss_recheck_ms: int = _i64(
        0, "Blob scope: re-check a blob that proved loss after this, ahead of the rotation (0: at its slot)."
    )
    containment_attempts: int = _u32(
        0, 0, "Blob scope: re-ask an environment failure's sample this many times before it counts (0: off)."
    )
    confirm_loss: bool = Field(
        False,
        description="Blob scope: re-read a blob's first loss failure at the next round before condemning it.",
    )
    release_on_pass: bool = Field(
        False,
        description="Blob scope: a pass makes every blob backed off for the same environment reason due.",
    )
    systemic_min_checks: int = _u32(
        0, 0, "Blob scope: a round of at least this many checks may be blamed on the environment (0: off)."
    )
    systemic_percent: int = Field(
        50,
        ge=0,
        le=100,
        description="... when more than this % of its checks fail with one environment reason.",
    )
    priority_share_percent: int = Field(
        50,
        ge=0,
        le=99,
        description="Blob scope: the share of check slots due blobs may take from the rotation (%).",
    )
    order: Literal["rotate", "shuffle", "jitter"] = Field(
        "rotate",
        description="rotate: upstream's cursor; shuffle: a seeded, reproducible new permutation every pass.",
    )
    order_seed: str = Field("", description="Mixed with the world and node ids into the shuffle's seed.")
    environment_recheck: Literal["slot", "due"] = Field(
        "slot",
        description="Blob scope: when an environment backoff ran out, wait for the blob's rotation slot "
        "(slot) or re-check it then as due work (due; its rotation slots stay idle while it fails).",
    )
    group_backoff_ms: int = _i64(
        0,
        "Blob scope: an environment failure backs off this long when another blob failing for the same "
        "reason is due sooner, whose pass releases it (with release_on_pass; 0: off).",
    )

    @field_validator("backoff_max_ms")
    @classmethod
    def _max_not_below_base(cls, value: int, info: ValidationInfo) -> int:
        """Upstream rejects max < base only at probe time, so every probe would error: fail early."""
        base = info.data.get("backoff_base_ms")
        if base is not None and value < base:
            raise PydanticCustomError(
                "not_below_sibling",
                "must be >= backoff_base_ms ({value} < {sibling_value})",
                {"sibling": "backoff_base_ms", "value": value, "sibling_value": base},
            )
        return value


class ProbeSettings(_Settings):
    """Probe config (upstream StorageChallengeProbeConfig) plus how sampled bytes are verified."""

    max_sample_bytes: int = _u32(DEFAULT_MAX_SAMPLE_BYTES, 1, "Largest sample window (u32 >= 1).")
    challenges_per_tick: int = _u32(DEFAULT_CHALLENGES_PER_TICK, 1, "Checks per round (u32 >= 1).")
    challenge_ttl_ms: int = _i64(
        DEFAULT_CHALLENGE_TTL_MS,
        "Challenge lifetime: answers after it fail as TIMEOUT (i64 > 0).",
        positive=True,
    )
    allowed_clock_skew_ms: int = _i64(DEFAULT_ALLOWED_CLOCK_SKEW_MS, "Tolerated clock skew (i64 >= 0).")
    verify_mode: Literal["chunked", "full"] = Field(
        "chunked", description="chunked: verify only the sampled chunks; full: upstream's whole-blob reads."
    )
    chunk_size_bytes: int = _u32(
        16 * 1024,
        1,
        "Files up to this size are read and verified whole on every check; larger ones by cached "
        "xxh3-64 checksums of pieces of min(this, 16 KiB) (u32 >= 1).",
    )
    chunk_cache_dir: str | None = Field(
        None,
        description="Chunk and listing cache directory, outside the store (null: a per-store directory "
        "under $XDG_CACHE_HOME/distfs_pipeline, else ~/.cache/distfs_pipeline).",
    )
    full_verify_every: int = _u32(0, 0, "Every n-th check of a blob is a full verify (0: never).")
    full_verify_interval_ms: int = _i64(
        7 * 24 * 3600 * 1000,
        "Cached chunk digests (and a persisted listing) are trusted for at most this long after the "
        "full verify that built them (i64 >= 0, ms of wall time; 0: no bound).",
    )
    max_bytes_per_s: int = _i64(
        0, "Wall clock: bytes a round may read per second, paced between rounds (i64 >= 0; 0: no limit)."
    )


class RuntimeSettings(_Settings):
    """Identity, store, state file, clock and run length."""

    world_id: str = Field("world-1", min_length=1, description="World id stamped on challenges (non-empty).")
    node_id: str = Field("node-storage-1", min_length=1, description="Audited node id (non-empty).")
    storage_root: str | None = Field(
        None, min_length=1, description="Store to audit (null: the embedded demo store)."
    )
    state_path: str | None = Field(
        None, min_length=1, description="Cursor-state file (null: probe-state.json in the run dir)."
    )
    clock: Literal["virtual", "wall"] = Field(
        "virtual", description="virtual: simulated time; wall: real time."
    )
    start_unix_ms: int = _i64(1_767_225_600_000, "Virtual clock start (i64 >= 0; unused on the wall clock).")
    tick_ms: int = _i64(200, "Time between rounds (i64 > 0).", positive=True)
    rounds: int = _i64(300, "Rounds to run (0: until stopped, wall clock only).")
    epoch_rounds: int = _i64(100, "Rounds per reward epoch report (i64 > 0).", positive=True)
    progress: Literal["auto", "always", "never"] = Field(
        "auto", description="Progress display: auto (on a terminal), always or never."
    )
    allow_empty_store: bool = Field(
        False,
        description="A storage_root without blobs/ is refused (not a store) unless this says the store "
        "is meant to be empty.",
    )
    tick_jitter_ms: int = _i64(
        0, "Wall clock: each tick is tick_ms plus a uniform offset within +-tick_jitter_ms (< tick_ms)."
    )
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve Prometheus metrics on 127.0.0.1:PORT (0: any free port)."
    )
    metrics_textfile: str | None = Field(
        None, min_length=1, description="Write metrics in node_exporter's textfile format here (atomically)."
    )
    durability: Literal["round", "pipelined", "interval"] = Field(
        "round",
        description="round: each round's log line is fdatasync'ed before the next round; pipelined: that "
        "fdatasync overlaps the next round's checks (a power loss may cost the last round); interval: group "
        "commit every durability_interval_ms (a power loss may cost that window). kill -9 loses nothing.",
    )
    durability_interval_ms: int = _i64(
        1000, "Group-commit interval, and how often the state file is checkpointed (i64 > 0).", positive=True
    )
    log_max_bytes: int = _i64(
        64 * 1024 * 1024, "Rotate the round log into a numbered segment at this size (0: never)."
    )
    log_keep: int = Field(
        8, ge=0, le=1_000_000, description="Rotated round-log segments kept (older are removed)."
    )
    log_compress: bool = Field(False, description="gzip rotated round-log segments.")
    log_format: Literal["text", "json"] = Field(
        "text", description="Warnings and logs on stderr: text, or json (one object per line)."
    )

    @field_validator("world_id", "node_id", "storage_root", "state_path", "metrics_textfile")
    @classmethod
    def _not_blank(cls, value: str | None) -> str | None:
        """Upstream refuses an empty world/node id; an empty path is a mistake, not 'the default'."""
        if value is not None and not value.strip():
            raise PydanticCustomError("blank", "must not be empty")
        return value

    @field_validator("tick_jitter_ms")
    @classmethod
    def _jitter_below_tick(cls, value: int, info: ValidationInfo) -> int:
        """A jitter of a whole tick could make an interval zero or negative."""
        tick = info.data.get("tick_ms")
        if tick is not None and value >= tick:
            raise PydanticCustomError(
                "below_sibling",
                "must be < tick_ms ({value} >= {sibling_value})",
                {"sibling": "tick_ms", "value": value, "sibling_value": tick},
            )
        return value

    @field_validator("rounds")
    @classmethod
    def _until_stopped_needs_wall(cls, value: int, info: ValidationInfo) -> int:
        """A virtual clock never waits, so 'until stopped' would spin forever."""
        clock = info.data.get("clock")
        if value == 0 and clock is not None and clock != "wall":
            raise PydanticCustomError(
                "needs_wall_clock",
                "0 (run until stopped) needs clock=wall (got {sibling_value})",
                {"sibling": "clock", "sibling_value": clock},
            )
        start, tick = info.data.get("start_unix_ms"), info.data.get("tick_ms")
        if clock == "virtual" and start is not None and tick is not None and start + tick * value > I64_MAX:
            raise PydanticCustomError(
                "clock_overflow",
                "the virtual clock would pass i64 max",
                {"sibling": "start_unix_ms", "limit": I64_MAX},
            )
        return value


class FaultSettings(_Settings):
    """One fault of a scenario: what happens to which blobs, and in which rounds (see `scenarios`)."""

    kind: Literal["bit_rot", "delete", "truncate", "unreadable", "slow"] = Field(
        "bit_rot",
        description="bit_rot: bytes flipped in place; delete: blob removed; truncate: file cut short; "
        "unreadable: reads fail; slow: answers later than TTL + skew.",
    )
    at_round: int = Field(1, ge=1, le=I64_MAX, description="First round (1-based) the fault is present.")
    repair_at_round: int | None = Field(
        None, ge=2, le=I64_MAX, description="Round from which the original bytes are back (null: never)."
    )
    flap_every: int = Field(
        0, ge=0, le=I64_MAX, description="Flapping: on for this many rounds, then off as long (0: steady)."
    )
    target_index: int = Field(0, ge=0, le=I64_MAX, description="First target in target_order.")
    target_order: Literal["by_hash", "largest_first"] = Field(
        "by_hash", description="Order of the audit candidates target_index picks from."
    )
    blobs: int = Field(1, ge=1, le=I64_MAX, description="Number of consecutive targets hit.")
    flip_bytes: int = Field(1, ge=1, le=I64_MAX, description="bit_rot: bytes whose low bit flips.")
    offset: int | None = Field(
        None,
        ge=0,
        le=I64_MAX,
        description="bit_rot: first flipped byte (null: a reproducible position derived from the hash).",
    )
    silent: bool = Field(
        True,
        description="bit_rot: unseen by file metadata and the chunk cache (rot below the file system).",
    )
    truncate_to: int | None = Field(
        None, ge=0, le=I64_MAX, description="truncate: new size in bytes (null: half)."
    )
    delay_ms: int | None = Field(
        None,
        ge=0,
        le=I64_MAX,
        description="slow: answer delay (null: TTL + skew + 1 ms).",
    )

    @field_validator("repair_at_round")
    @classmethod
    def _repair_after_fault(cls, value: int | None, info: ValidationInfo) -> int | None:
        """A repair at or before the fault would leave nothing to measure."""
        start = info.data.get("at_round")
        if value is not None and start is not None and value <= start:
            raise PydanticCustomError(
                "repair_not_after_fault",
                "must be > at_round ({value} <= {at_round})",
                {"value": value, "at_round": start},
            )
        return value


class ScenarioSettings(_Settings):
    """A fault schedule for studies (`none`: a plain audit, no faults, no scratch copy)."""

    name: str = Field("none", min_length=1, description="Scenario name (none: no study).")
    description: str = Field("", description="The real situation the scenario models.")
    baseline: Literal["healthy", "as_is"] = Field(
        "healthy",
        description="healthy: the scratch copy keeps only blobs that verify, so the scenario's faults "
        "are the only ones; as_is: copy every blob.",
    )
    faults: list[FaultSettings] = Field(default_factory=list, description="Fault schedule entries.")
    objective_weight_checks: float = Field(
        0.0, ge=0.0, description="Objective: ms of detection latency one check is worth."
    )
    objective_weight_recovery: float = Field(
        0.0, ge=0.0, description="Objective: weight of the recovery latency (ms)."
    )

    @field_validator("faults")
    @classmethod
    def _faults_need_a_study(cls, value: list[FaultSettings], info: ValidationInfo) -> list[FaultSettings]:
        """Scenario `none` is a plain audit that injects nothing: faults there would be ignored
        silently (e.g. a user's scenario YAML that forgot its `name`)."""
        if value and info.data.get("name") == "none":
            raise PydanticCustomError(
                "faults_need_a_scenario",
                "faults are only injected by a scenario: set scenario.name (it is none, a plain audit)",
            )
        return value


class Settings(_Settings):
    """The validated configuration handed to the runner."""

    policy: PolicySettings = Field(default_factory=PolicySettings)
    probe: ProbeSettings = Field(default_factory=ProbeSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    scenario: ScenarioSettings = Field(default_factory=ScenarioSettings)

    @field_validator("scenario")
    @classmethod
    def _faults_within_the_run(cls, value: ScenarioSettings, info: ValidationInfo) -> ScenarioSettings:
        """A study measures faults in `runtime.rounds` rounds: each must start inside the run."""
        runtime = info.data.get("runtime")
        if value.name == "none" or not isinstance(runtime, RuntimeSettings):
            return value
        if runtime.rounds == 0:
            raise PydanticCustomError(
                "scenario_needs_rounds",
                AT_KEY_TEMPLATES["scenario_needs_rounds"],
                {"at": ("..", "runtime", "rounds")},
            )
        for number, fault in enumerate(value.faults):
            if fault.at_round > runtime.rounds:
                raise PydanticCustomError(
                    "fault_after_run",
                    AT_KEY_TEMPLATES["fault_after_run"],
                    {"at": ("faults", number, "at_round"), "value": fault.at_round, "rounds": runtime.rounds},
                )
        return value

    def adaptive_policy(self) -> AdaptivePolicy:
        """The policy as the scheduler's plain value."""
        return AdaptivePolicy(**self.policy.model_dump())

    def probe_config(self) -> ProbeConfig:
        """The four upstream probe fields as the scheduler's plain value."""
        p = self.probe
        return ProbeConfig(
            max_sample_bytes=p.max_sample_bytes,
            challenges_per_tick=p.challenges_per_tick,
            challenge_ttl_ms=p.challenge_ttl_ms,
            allowed_clock_skew_ms=p.allowed_clock_skew_ms,
        )

    def log_options(self) -> LogOptions:
        """How the round journal syncs and rotates (`runtime.durability`, `runtime.log_*`)."""
        rt = self.runtime
        return LogOptions(
            durability=rt.durability,
            durability_interval_ms=rt.durability_interval_ms,
            log_max_bytes=rt.log_max_bytes,
            log_keep=rt.log_keep,
            log_compress=rt.log_compress,
        )

    def verify_options(self) -> VerifyOptions:
        """How checks verify sampled bytes (`cache_dir` None: the runner resolves the per-store
        cache dir under $XDG_CACHE_HOME)."""
        p = self.probe
        return VerifyOptions(
            mode=p.verify_mode,
            chunk_size_bytes=p.chunk_size_bytes,
            cache_dir=p.chunk_cache_dir,
            full_verify_every=p.full_verify_every,
            full_verify_interval_ms=p.full_verify_interval_ms,
        )


def settings_from_cfg(cfg: Any) -> Settings:
    """Validate a composed config (DictConfig or mapping) into `Settings`.

    Hydra's own `hydra` node, if present, is ignored. Raises `UsageError` with one line
    `<dotted.key>: <rule>` for the first problem found (interpolation errors included).
    """
    data = _plain_data(cfg)
    if not isinstance(data, Mapping):
        raise UsageError(f"config: must be a mapping of groups, got {type(data).__name__}")
    data = {k: v for k, v in data.items() if k != "hydra"}
    try:
        return Settings.model_validate(_enums_to_values(data))
    except ValidationError as exc:
        raise UsageError(describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError, prefix: str = "") -> str:
    """The first error of `exc` as one line `<prefix><dotted.key>: <rule>`."""
    return describe_error_details(exc.errors(include_url=False)[0], prefix)


def describe_error_details(err: ErrorDetails, prefix: str = "") -> str:
    """One pydantic error as `<prefix><dotted.key>: <rule>`; shared with the schema validator."""
    loc = tuple(err["loc"])
    at = (err.get("ctx") or {}).get("at")
    if err["type"] in AT_KEY_TEMPLATES and isinstance(at, tuple):  # a parent's rule about one key
        loc = loc[:-1] if at[:1] == ("..",) else loc
        loc = (*loc, *(part for part in at if part != ".."))
    key = prefix + _dotted(loc) if loc else (prefix.rstrip(".") or "config")
    parent = prefix + "".join(f"{_dotted(loc[:-1])}." if len(loc) > 1 else "")
    return f"{key}: {_rule_text(err, parent)}"


def _dotted(loc: tuple[int | str, ...]) -> str:
    """`("scenario", "faults", 0, "at")` -> `scenario.faults[0].at`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _rule_text(err: ErrorDetails, parent: str) -> str:
    """Say the rule in our words: the bound and the offending value, no pydantic boilerplate."""
    kind, ctx, value = err["type"], err.get("ctx", {}), err.get("input")
    if kind in CROSS_FIELD_TEMPLATES:
        return CROSS_FIELD_TEMPLATES[kind].format(**{**ctx, "sibling": parent + str(ctx["sibling"])})
    simple = {
        "missing": "is required",
        "extra_forbidden": "unknown key",
        "blank": "must not be empty",
        "string_too_short": "must not be empty",
    }
    if kind in simple:
        return simple[kind]
    bounds = {
        "greater_than_equal": (">=", "ge"),
        "greater_than": (">", "gt"),
        "less_than_equal": ("<=", "le"),
    }
    if kind in bounds:
        op, name = bounds[kind]
        return f"must be {op} {ctx[name]} (got {value!r})"
    if kind in ("model_type", "dict_type", "model_attributes_type"):
        return f"must be a mapping (got {value!r})"
    if kind == "list_type":
        return f"must be a list (got {value!r})"
    if kind.startswith("int_"):
        return f"must be an integer (got {value!r})"
    if kind.startswith("float_"):
        return f"must be a number (got {value!r})"
    if kind.startswith("string_"):
        return f"must be a string (got {value!r})"
    if kind == "literal_error":
        return f"must be one of {ctx['expected']} (got {value!r})"
    if kind in AT_KEY_TEMPLATES:
        return AT_KEY_TEMPLATES[kind].format(**ctx)
    if kind not in _BUILTIN_ERROR_TYPES:  # a rule of ours: its message already says it all
        return err["msg"]
    return f"{err['msg']} (got {value!r})"


def _plain_data(cfg: Any) -> Any:
    """Plain containers from a DictConfig (resolved, enums as names) without importing OmegaConf here."""
    if not type(cfg).__module__.startswith("omegaconf"):
        return cfg
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if "hydra" in cfg:  # resolving Hydra's node needs Hydra's resolvers; it is not ours anyway
        cfg = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or "config"
        rule = str(getattr(exc, "msg", None) or exc).splitlines()[0]
        raise UsageError(f"{key}: {rule}") from None


def _enums_to_values(value: Any) -> Any:
    """Enum members (from a dataclass or a typed mapping) become their string values."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Mapping):
        return {k: _enums_to_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_enums_to_values(v) for v in value]
    return value
