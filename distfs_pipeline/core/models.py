"""Plain data shared by every part: the upstream wire types and our round report.

Field names and their order are upstream's serde names (SPEC 2.2, 2.10), so `to_dict()` output is
byte-compatible JSON with the Rust runtime's files when dumped with `json.dumps(..., indent=2)`.
Nothing here does I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self, TypeVar

from distfs_pipeline.core.errors import Serde

_T = TypeVar("_T")
STORAGE_CHALLENGE_VERSION = 1
PROOF_KIND_CHUNK_HASH_V1 = "chunk_hash:v1"
DEFAULT_MAX_SAMPLE_BYTES = 64 * 1024
DEFAULT_CHALLENGES_PER_TICK = 1
DEFAULT_CHALLENGE_TTL_MS = 30_000
DEFAULT_ALLOWED_CLOCK_SKEW_MS = 5_000
U32_MAX = 2**32 - 1
U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1
I64_MIN = -(2**63)
# What Rust's `str::trim` strips (`char::is_whitespace`, the Unicode White_Space property). Python's
# `str.strip()` also strips U+001C..U+001F, which Rust keeps: an id of "\x1f" is not empty upstream.
RUST_WHITESPACE = (
    "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)


def is_blank(value: str) -> bool:
    """Rust's `value.trim().is_empty()`: upstream's test for an empty id or field."""
    return not value.strip(RUST_WHITESPACE)


class FailureReason(StrEnum):
    """`StorageChallengeFailureReason`; the value is the upstream count-map key."""

    MISSING_SAMPLE = "MISSING_SAMPLE"
    HASH_MISMATCH = "HASH_MISMATCH"
    TIMEOUT = "TIMEOUT"
    READ_IO_ERROR = "READ_IO_ERROR"
    SIGNATURE_INVALID = "SIGNATURE_INVALID"
    UNKNOWN = "UNKNOWN"


class SampleSource(StrEnum):
    LOCAL_STORE_INDEX = "LOCAL_STORE_INDEX"
    REPLICATION_COMMIT = "REPLICATION_COMMIT"
    GOSSIP_REPLICA_HINT = "GOSSIP_REPLICA_HINT"
    UNKNOWN = "UNKNOWN"


class _Record:
    """Dict round-trip in declaration order (serde's struct order)."""

    def to_dict(self) -> dict[str, Any]:
        # WHY the cached names and the scalar fast path (issue 11): the round record and the state
        # are built every round; `dataclasses.fields` per call was most of their cost.
        names = _FIELD_NAMES.get(type(self))
        if names is None:
            names = _FIELD_NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
        out: dict[str, Any] = {}
        for name in names:
            value = getattr(self, name)
            out[name] = value if value is None or type(value) in _SCALARS else _plain(value)
        return out


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
_SCALARS = frozenset({int, str, bool, float})  # exact types only: a StrEnum goes through `_plain`


def direct_init(cls: type[_T]) -> type[_T]:
    """Give a frozen dataclass an `__init__` that fills the instance `__dict__` directly.

    WHY (issue 11): a frozen dataclass's generated `__init__` sets every field through
    `object.__setattr__`, about 0.1 us a field; the wire types are built several times per check
    (request, challenge, receipt, proof semantics, outcome), which was a measurable part of a steady
    check. Same parameters in the same order, same plain defaults, same TypeError for a missing or
    unknown argument; equality, hashing, `repr`, `replace` and immutability (`FrozenInstanceError`
    on assignment) are the dataclass's own and unchanged. Only for fields without a default factory,
    `init=False`, keyword-only or `__post_init__` (refused at import, so it cannot silently differ)."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if hasattr(cls, "__post_init__") or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
        raise TypeError(f"direct_init needs a frozen dataclass without __post_init__: {cls.__name__}")
    params, defaults = [], {}
    for f in fields:
        if not f.init or f.kw_only or f.default_factory is not dataclasses.MISSING:
            raise TypeError(f"direct_init cannot build field {cls.__name__}.{f.name}")
        if f.default is dataclasses.MISSING:
            params.append(f.name)
        else:
            defaults[f"_default_{f.name}"] = f.default
            params.append(f"{f.name}=_default_{f.name}")
    body = "".join(f"    d[{f.name!r}] = {f.name}\n" for f in fields)
    namespace: dict[str, Any] = dict(defaults)
    exec(f"def __init__(self, {', '.join(params)}):\n    d = self.__dict__\n{body}", namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls


def _plain(value: Any) -> Any:
    if isinstance(value, _Record):
        return value.to_dict()
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


@direct_init
@dataclass(frozen=True)
class StorageChallengeRequest(_Record):
    challenge_id: str
    world_id: str
    node_id: str
    content_hash: str
    max_sample_bytes: int
    issued_at_unix_ms: int
    challenge_ttl_ms: int
    vrf_seed: str


@direct_init
@dataclass(frozen=True)
class StorageChallenge(_Record):
    version: int
    challenge_id: str
    world_id: str
    node_id: str
    content_hash: str
    sample_offset: int
    sample_size_bytes: int
    expected_sample_hash: str
    issued_at_unix_ms: int
    expires_at_unix_ms: int
    vrf_seed: str


@direct_init
@dataclass(frozen=True)
class StorageChallengeReceipt(_Record):
    version: int
    challenge_id: str
    node_id: str
    content_hash: str
    sample_offset: int
    sample_size_bytes: int
    sample_hash: str
    responded_at_unix_ms: int
    sample_source: SampleSource
    failure_reason: FailureReason | None
    proof_kind: str


@direct_init
@dataclass(frozen=True)
class StorageChallengeProofSemantics(_Record):
    node_id: str
    sample_source: SampleSource
    sample_reference: str
    failure_reason: FailureReason | None = None
    proof_kind_hint: str = ""
    vrf_seed_hint: str | None = None
    post_commitment_hint: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        reason = data.get("failure_reason")
        return cls(
            node_id=data["node_id"],
            sample_source=SampleSource(data["sample_source"]),
            sample_reference=data["sample_reference"],
            failure_reason=FailureReason(reason) if reason is not None else None,
            proof_kind_hint=data.get("proof_kind_hint", ""),
            vrf_seed_hint=data.get("vrf_seed_hint"),
            post_commitment_hint=data.get("post_commitment_hint"),
        )


@dataclass(frozen=True)
class ProbeConfig(_Record):
    """`StorageChallengeProbeConfig`."""

    max_sample_bytes: int = DEFAULT_MAX_SAMPLE_BYTES
    challenges_per_tick: int = DEFAULT_CHALLENGES_PER_TICK
    challenge_ttl_ms: int = DEFAULT_CHALLENGE_TTL_MS
    allowed_clock_skew_ms: int = DEFAULT_ALLOWED_CLOCK_SKEW_MS


# Policy field (our config name) -> upstream serde name, in upstream declaration order.
POLICY_UPSTREAM_NAMES: dict[str, str] = {
    "max_checks_per_round": "max_checks_per_round",
    "backoff_base_ms": "failure_backoff_base_ms",
    "backoff_max_ms": "failure_backoff_max_ms",
    "backoff_multiplier_hash_mismatch": "backoff_multiplier_hash_mismatch",
    "backoff_multiplier_missing_sample": "backoff_multiplier_missing_sample",
    "backoff_multiplier_timeout": "backoff_multiplier_timeout",
    "backoff_multiplier_read_io_error": "backoff_multiplier_read_io_error",
    "backoff_multiplier_signature_invalid": "backoff_multiplier_signature_invalid",
    "backoff_multiplier_unknown": "backoff_multiplier_unknown",
}


@dataclass(frozen=True)
class AdaptivePolicy(_Record):
    """`StorageChallengeAdaptivePolicy`, with our config key names (see POLICY_UPSTREAM_NAMES)."""

    max_checks_per_round: int = U32_MAX
    backoff_base_ms: int = 0
    backoff_max_ms: int = 0
    backoff_multiplier_hash_mismatch: int = 1
    backoff_multiplier_missing_sample: int = 1
    backoff_multiplier_timeout: int = 1
    backoff_multiplier_read_io_error: int = 1
    backoff_multiplier_signature_invalid: int = 1
    backoff_multiplier_unknown: int = 1
    # Ours (issue 10, see `precision`): each default is upstream's behaviour, i.e. off.
    backoff_scope: str = "node"  # node: upstream's node-wide pause; blob: each blob backs off alone
    backoff_on_loss: bool = True  # False: HASH_MISMATCH/MISSING_SAMPLE/SIGNATURE_INVALID never back off
    loss_recheck_ms: int = 0  # blob scope: re-check a blob that proved loss after this (0: at its slot)
    containment_attempts: int = 0  # blob scope: re-ask an environment failure's sample N times first
    confirm_loss: bool = False  # blob scope: re-read a first loss failure at once before condemning
    release_on_pass: bool = False  # blob scope: a pass releases the blobs backed off for its reason
    systemic_min_checks: int = 0  # blob scope: rounds of >= N checks may be blamed on the environment
    systemic_percent: int = 50  # ... when more than this % of their checks fail one environment way
    priority_share_percent: int = 50  # blob scope: most of a round's slots due blobs may take (< 100)
    order: str = "rotate"  # rotate: upstream's cursor; shuffle: a seeded new permutation every pass
    order_seed: str = ""  # mixed with world and node ids into the shuffle's seed
    environment_recheck: str = "slot"  # blob scope: slot: a run-out environment backoff waits for
    # the blob's rotation slot; due: it is re-checked then, as due work (its slot stays idle)
    group_backoff_ms: int = 0  # blob scope: an environment failure backs off this long when another
    # blob failing for the same reason is due sooner (its pass releases this one); 0: off

    def multiplier_for(self, reason: FailureReason) -> int:
        return int(getattr(self, f"backoff_multiplier_{reason.value.lower()}"))

    def to_upstream_dict(self) -> dict[str, int]:
        return {up: getattr(self, ours) for ours, up in POLICY_UPSTREAM_NAMES.items()}


def runtime_config_to_upstream_dict(probe: ProbeConfig, policy: AdaptivePolicy) -> dict[str, Any]:
    """`DistfsProbeRuntimeConfig` as upstream serializes it (SPEC 3.1)."""
    return {**probe.to_dict(), "adaptive_policy": policy.to_upstream_dict()}


# (name, default) of the 14 cursor-state keys, in upstream order. The first six are required.
CURSOR_STATE_REQUIRED = (
    "next_blob_cursor",
    "rounds_executed",
    "cumulative_total_checks",
    "cumulative_passed_checks",
    "cumulative_failed_checks",
    "cumulative_failure_reasons",
)


@dataclass
class CursorState(_Record):
    """`StorageChallengeProbeCursorState`: the persisted scheduler state (SPEC 2.10)."""

    next_blob_cursor: int = 0
    rounds_executed: int = 0
    cumulative_total_checks: int = 0
    cumulative_passed_checks: int = 0
    cumulative_failed_checks: int = 0
    cumulative_failure_reasons: dict[str, int] = field(default_factory=dict)
    consecutive_failure_rounds: int = 0
    backoff_until_unix_ms: int = 0
    last_probe_unix_ms: int | None = None
    cumulative_backoff_skipped_rounds: int = 0
    cumulative_backoff_applied_ms: int = 0
    last_backoff_duration_ms: int = 0
    last_backoff_reason: str | None = None
    last_backoff_multiplier: int = 0

    def copy(self) -> CursorState:
        return dataclasses.replace(self, cumulative_failure_reasons=dict(self.cumulative_failure_reasons))

    @classmethod
    def from_dict(cls, data: Any) -> CursorState:
        """Parse as serde would: the first six keys required, the rest defaulted, unknown keys ignored.

        Raises `Serde` naming the key on a missing required key or a value of the wrong type.
        """
        if not isinstance(data, dict):
            raise Serde("cursor state must be a JSON object")
        missing = [k for k in CURSOR_STATE_REQUIRED if k not in data]
        if missing:
            raise Serde(f"missing field `{missing[0]}`")
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            values[f.name] = _check_state_value(f.name, data[f.name])
        return cls(**values)


_STATE_UNSIGNED = {
    "next_blob_cursor": U64_MAX,
    "rounds_executed": U64_MAX,
    "cumulative_total_checks": U64_MAX,
    "cumulative_passed_checks": U64_MAX,
    "cumulative_failed_checks": U64_MAX,
    "consecutive_failure_rounds": U64_MAX,
    "cumulative_backoff_skipped_rounds": U64_MAX,
    "last_backoff_multiplier": U32_MAX,
}
_STATE_SIGNED = {
    "backoff_until_unix_ms",
    "last_probe_unix_ms",
    "cumulative_backoff_applied_ms",
    "last_backoff_duration_ms",
}


def _check_state_value(name: str, value: Any) -> Any:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if name in _STATE_UNSIGNED:
        if not is_int(value) or not 0 <= value <= _STATE_UNSIGNED[name]:
            raise Serde(f"field `{name}`: expected an unsigned integer, got {value!r}")
        return value
    if name in _STATE_SIGNED:
        if value is None and name == "last_probe_unix_ms":
            return None
        if not is_int(value) or not I64_MIN <= value <= I64_MAX:
            raise Serde(f"field `{name}`: expected a 64-bit integer, got {value!r}")
        return value
    if name == "cumulative_failure_reasons":
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and is_int(v) and 0 <= v <= U64_MAX for k, v in value.items()
        ):
            raise Serde("field `cumulative_failure_reasons`: expected a map of string to unsigned integer")
        return dict(value)
    if name == "last_backoff_reason":
        if value is not None and not isinstance(value, str):
            raise Serde(f"field `last_backoff_reason`: expected a string or null, got {value!r}")
        return value
    raise Serde(f"unexpected field `{name}`")  # pragma: no cover - fields are enumerated above


def add_counts(base: Mapping[str, int], more: Mapping[str, int], cap: int | None = None) -> dict[str, int]:
    """Per-reason counts summed key by key, as a new dict (`base`'s keys first, then new ones).

    One merge for every place that sums reason maps: the scheduler's cumulative state (saturating at
    `cap`, as upstream's u64 `saturating_add`), the epoch accumulator and the run's totals.
    """
    merged = dict(base)
    for key, count in more.items():
        total = merged.get(key, 0) + count
        merged[key] = total if cap is None else min(total, cap)
    return merged


@direct_init
@dataclass(frozen=True)
class CheckFailure(_Record):
    """One failed check of a round: which blob, why, and the error text (errors stay visible)."""

    content_hash: str
    reason: FailureReason
    error: str


@dataclass(frozen=True)
class BackoffDecision(_Record):
    """What the scheduler decided after a round (SPEC 2.10 advance)."""

    failure_round: bool
    consecutive_failure_rounds: int
    backoff_ms: int
    backoff_until_unix_ms: int
    reason: str | None
    multiplier: int


@dataclass
class RoundReport(_Record):
    """`StorageChallengeProbeReport` (first eight fields, upstream order) plus what we add.

    `round_index` is `rounds_executed` after this round (1-based), so round logs and the state file
    can be checked against each other. `checked_hashes` lists the blobs checked, in order;
    `failures` gives each failed check with its error; `error` is a round-level error (for example
    a failed listing), counted as a failure, never a silent pass.
    """

    node_id: str
    world_id: str
    observed_at_unix_ms: int
    total_checks: int = 0
    passed_checks: int = 0
    failed_checks: int = 0
    failure_reasons: dict[str, int] = field(default_factory=dict)
    latest_proof_semantics: StorageChallengeProofSemantics | None = None
    round_index: int = 0
    skipped_by_backoff: bool = False
    blob_count: int = 0
    checked_hashes: list[str] = field(default_factory=list)
    failures: list[CheckFailure] = field(default_factory=list)
    backoff: BackoffDecision | None = None
    error: str | None = None

    def upstream_dict(self) -> dict[str, Any]:
        """Only the upstream `StorageChallengeProbeReport` keys."""
        full = self.to_dict()
        keys = (
            "node_id",
            "world_id",
            "observed_at_unix_ms",
            "total_checks",
            "passed_checks",
            "failed_checks",
            "failure_reasons",
            "latest_proof_semantics",
        )
        return {k: full[k] for k in keys}


@dataclass(frozen=True)
class NodeStorageChallengeStats(_Record):
    node_id: str
    total_checks: int = 0
    passed_checks: int = 0
    failed_checks: int = 0
    failures_by_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class VerifyOptions(_Record):
    """How a check verifies the bytes it samples (ours; SPEC section 0, "I/O follows the sample").

    `mode="full"` reads and hashes the whole blob at issue and at answer, as upstream does.
    `mode="chunked"` verifies only the chunks the sample window covers, against per-chunk xxh3-64
    checksums cached under `cache_dir` (never inside the audited store). `full_verify_every` > 0 makes
    every n-th check of a blob a full verify (0 = never); cached digests older than
    `full_verify_interval_ms` (wall time since their full verify; 0 = no bound) are not trusted.
    """

    mode: str = "chunked"
    chunk_size_bytes: int = 16 * 1024
    cache_dir: str | None = None
    full_verify_every: int = 0
    full_verify_interval_ms: int = 7 * 24 * 3600 * 1000


# --- study vocabulary (plain enums, shared by the scenario schema and the fault injector) ---------


class FaultKind(StrEnum):
    """What happens to the target blobs (see the module docstring)."""

    bit_rot = "bit_rot"
    delete = "delete"
    truncate = "truncate"
    unreadable = "unreadable"
    slow = "slow"


class TargetOrder(StrEnum):
    """How candidates are ordered before `target_index` picks from them."""

    by_hash = "by_hash"
    largest_first = "largest_first"


# --- per-blob history (folded by `blobs`, scheduled by `precision`, kept by `persist`) ----------

PASS = "pass"
FAIL = "fail"


@dataclass(frozen=True)
class BlobRecord:
    """One blob's check history. Times are the round's observed time (unix ms)."""

    checks: int = 0
    failures: int = 0
    last_result: str | None = None  # PASS | FAIL | None (never checked)
    last_reason: str | None = None  # the FailureReason of the last failed check
    last_checked_ms: int | None = None
    last_pass_ms: int | None = None
    first_failure_ms: int | None = None  # first failure of the current failing streak
    last_failure_ms: int | None = None
    consecutive_failures: int = 0
    size_bytes: int | None = None  # size of the blob file at its last passing check (rewardable bytes)
    # Scheduling (the precise policy, `precision`): None/0 under upstream's node-scope policy.
    next_due_ms: int | None = None  # out of the rotation: checked ahead of it once this time comes
    contained: int = 0  # re-asks spent on the current environment failure (Storj's containment)
    contained_since_ms: int | None = None  # when the contained sample was first asked (its seed)

    @property
    def failing(self) -> bool:
        return self.last_result == FAIL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> BlobRecord:
        """A record from its dict; `ValueError` when a known field has the wrong type."""
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw:
                continue
            value = raw[f.name]
            if not _type_ok(f.type, value):
                raise ValueError(f"blob record field `{f.name}` has a bad value: {value!r}")
            values[f.name] = value
        record = cls(**values)
        if record.last_result not in (None, PASS, FAIL):
            raise ValueError(f"blob record field `last_result` has a bad value: {record.last_result!r}")
        return record


def _type_ok(annotation: Any, value: Any) -> bool:
    text = str(annotation)
    if value is None:
        return "None" in text
    if "int" in text:
        return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63
    if "str" in text:
        return isinstance(value, str)
    return False
