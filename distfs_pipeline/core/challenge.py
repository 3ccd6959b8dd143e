"""Storage challenges (SPEC 2.3-2.9): issue, answer, verify, classify, and one check.

Messages, error classes and check order are upstream's (`oasis7_distfs/src/challenge.rs`),
because round logs, classifications and the quirks built on them ("sample window out of bounds"
classifies as TIMEOUT) must match. What is ours:

- issue and answer read through a `SampleReader` (see `chunks`), so the upstream whole-blob mode
  and our sample-proportional mode share this one code path;
- `run_check` never raises: every error becomes a classified, counted failure with its text;
- the stateless probe audits `store.candidates()` (our index when the store has one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from distfs_pipeline.core.errors import (
    BlobHashInvalid,
    BlobHashMismatch,
    BlobNotFound,
    DistributedValidationFailed,
    Io,
    SignatureKeyInvalid,
    WorldError,
)
from distfs_pipeline.core.models import (
    I64_MAX,
    I64_MIN,
    PROOF_KIND_CHUNK_HASH_V1,
    STORAGE_CHALLENGE_VERSION,
    CheckFailure,
    FailureReason,
    NodeStorageChallengeStats,
    ProbeConfig,
    RoundReport,
    SampleSource,
    StorageChallenge,
    StorageChallengeProofSemantics,
    StorageChallengeReceipt,
    StorageChallengeRequest,
    direct_init,
    is_blank,
)
from distfs_pipeline.core.scheduler import (
    validate_probe_config,  # SPEC 2.9's config checks are 2.10's: one serves both
)
from distfs_pipeline.core.store import validate_hash
from distfs_pipeline.core.window import _SAMPLE_HASHES, SampleReader, _u64_le_prefix

# The window rules are part of this module's API (SPEC 2.4 sits between 2.3 and 2.5): re-exported.
from distfs_pipeline.core.window import USIZE_MAX as USIZE_MAX
from distfs_pipeline.core.window import check_window as check_window
from distfs_pipeline.core.window import deterministic_offset as deterministic_offset
from distfs_pipeline.core.window import extract_sample_slice as extract_sample_slice
from distfs_pipeline.core.window import note_sample_hash as note_sample_hash
from distfs_pipeline.core.window import sample_window as sample_window

if TYPE_CHECKING:
    from distfs_pipeline.core.store import LocalCasStore

# ---------------------------------------------------------------------- validation


def _empty_field(name: str) -> DistributedValidationFailed:
    return DistributedValidationFailed(f"storage challenge field {name} cannot be empty")


def _non_empty(value: str, name: str) -> None:
    """Upstream `validate_non_empty_field`: empty after Rust's `trim()` (see `is_blank`)."""
    if is_blank(value):
        raise _empty_field(name)


def _require_fields(value: object, *names: str) -> None:
    """`_non_empty` for each named field of `value`, in order."""
    for name in names:
        if is_blank(getattr(value, name)):
            raise _empty_field(name)


def _require_version(kind: str, version: int) -> None:
    if version != STORAGE_CHALLENGE_VERSION:
        raise DistributedValidationFailed(
            f"unsupported {kind} version: expected={STORAGE_CHALLENGE_VERSION} actual={version}"
        )


def validate_request(request: StorageChallengeRequest) -> None:
    """SPEC 2.3 step 1, in upstream order."""
    _require_fields(request, "challenge_id", "world_id", "node_id", "vrf_seed")
    validate_hash(request.content_hash)
    if request.max_sample_bytes < 1:
        raise DistributedValidationFailed("max_sample_bytes must be >= 1")
    if request.challenge_ttl_ms <= 0:
        raise DistributedValidationFailed("challenge_ttl_ms must be > 0")


def validate_challenge(challenge: StorageChallenge) -> None:
    """`validate_storage_challenge` (SPEC 2.5 step 1)."""
    _require_version("storage challenge", challenge.version)
    _require_fields(challenge, "challenge_id", "world_id", "node_id", "vrf_seed")
    validate_hash(challenge.content_hash)
    validate_hash(challenge.expected_sample_hash)
    if challenge.expires_at_unix_ms < challenge.issued_at_unix_ms:
        raise DistributedValidationFailed(
            "storage challenge expires_at is earlier than issued_at: "
            f"issued_at={challenge.issued_at_unix_ms} expires_at={challenge.expires_at_unix_ms}"
        )


def validate_receipt(receipt: StorageChallengeReceipt) -> None:
    """`validate_storage_challenge_receipt` (SPEC 2.6 step 3)."""
    _require_version("storage challenge receipt", receipt.version)
    _require_fields(receipt, "challenge_id", "node_id", "proof_kind")
    validate_hash(receipt.content_hash)
    validate_hash(receipt.sample_hash)


# ---------------------------------------------------------------------- issue / answer / verify


def issue_storage_challenge(reader: SampleReader, request: StorageChallengeRequest) -> StorageChallenge:
    """SPEC 2.3: validate, read the verified sample, hash it, compute the expiry."""
    validate_request(request)
    offset, size, sample = reader.read_sample(
        request.content_hash, request.max_sample_bytes, request.vrf_seed
    )
    expires_at = request.issued_at_unix_ms + request.challenge_ttl_ms
    if not I64_MIN <= expires_at <= I64_MAX:
        raise DistributedValidationFailed(
            "storage challenge ttl overflow: "
            f"issued_at={request.issued_at_unix_ms} ttl={request.challenge_ttl_ms}"
        )
    return StorageChallenge(
        version=STORAGE_CHALLENGE_VERSION,
        challenge_id=request.challenge_id,
        world_id=request.world_id,
        node_id=request.node_id,
        content_hash=request.content_hash,
        sample_offset=offset,
        sample_size_bytes=size,
        expected_sample_hash=_SAMPLE_HASHES.hex(sample),
        issued_at_unix_ms=request.issued_at_unix_ms,
        expires_at_unix_ms=expires_at,
        vrf_seed=request.vrf_seed,
    )


def answer_storage_challenge(
    reader: SampleReader, challenge: StorageChallenge, responded_at_unix_ms: int
) -> StorageChallengeReceipt:
    """SPEC 2.5: re-read the challenge's window (verified) and report its hash. No time check."""
    validate_challenge(challenge)
    return _answer_valid_challenge(reader, challenge, responded_at_unix_ms)


def _answer_valid_challenge(
    reader: SampleReader, challenge: StorageChallenge, responded_at_unix_ms: int
) -> StorageChallengeReceipt:
    """`answer_storage_challenge` after `validate_challenge` passed (or cannot fail, see `run_check`)."""
    sample = reader.read_window(challenge.content_hash, challenge.sample_offset, challenge.sample_size_bytes)
    sample_hash = _SAMPLE_HASHES.hex(sample)
    matched = sample_hash == challenge.expected_sample_hash
    return StorageChallengeReceipt(
        version=STORAGE_CHALLENGE_VERSION,
        challenge_id=challenge.challenge_id,
        node_id=challenge.node_id,
        content_hash=challenge.content_hash,
        sample_offset=challenge.sample_offset,
        sample_size_bytes=challenge.sample_size_bytes,
        sample_hash=sample_hash,
        responded_at_unix_ms=responded_at_unix_ms,
        sample_source=SampleSource.LOCAL_STORE_INDEX,
        failure_reason=None if matched else FailureReason.HASH_MISMATCH,
        proof_kind=PROOF_KIND_CHUNK_HASH_V1,
    )


def response_window(challenge: StorageChallenge, allowed_clock_skew_ms: int) -> tuple[int, int]:
    """Inclusive `[issued - skew, expires + skew]` with i64 saturating arithmetic."""
    low = max(challenge.issued_at_unix_ms - allowed_clock_skew_ms, I64_MIN)
    high = min(challenge.expires_at_unix_ms + allowed_clock_skew_ms, I64_MAX)
    return low, high


def _rust_debug(reason: FailureReason) -> str:
    """`{:?}` of the Rust enum variant: HASH_MISMATCH -> HashMismatch."""
    return "".join(part.capitalize() for part in reason.value.split("_"))


def _require_equal(name: str, expected: object, actual: object) -> None:
    if expected != actual:
        raise DistributedValidationFailed(f"{name} mismatch: expected={expected} actual={actual}")


def verify_storage_challenge_receipt(
    challenge: StorageChallenge, receipt: StorageChallengeReceipt, allowed_clock_skew_ms: int
) -> None:
    """SPEC 2.6: the first failing check wins.

    Every failure is `DistributedValidationFailed`, except an invalid hash field (`validate_hash`
    on content_hash, expected_sample_hash or sample_hash), which is `BlobHashInvalid` as upstream.
    """
    if allowed_clock_skew_ms < 0:
        raise DistributedValidationFailed(f"allowed_clock_skew_ms must be >= 0, got {allowed_clock_skew_ms}")
    validate_challenge(challenge)
    validate_receipt(receipt)
    _require_equal("challenge_id", challenge.challenge_id, receipt.challenge_id)
    _require_equal("node_id", challenge.node_id, receipt.node_id)
    _require_equal("content_hash", challenge.content_hash, receipt.content_hash)
    _require_equal("sample_offset", challenge.sample_offset, receipt.sample_offset)
    _require_equal("sample_size_bytes", challenge.sample_size_bytes, receipt.sample_size_bytes)
    _require_equal("sample_hash", challenge.expected_sample_hash, receipt.sample_hash)
    if receipt.proof_kind != PROOF_KIND_CHUNK_HASH_V1:
        raise DistributedValidationFailed(
            f"unsupported proof kind: expected={PROOF_KIND_CHUNK_HASH_V1} actual={receipt.proof_kind}"
        )
    if receipt.sample_source == SampleSource.UNKNOWN:
        raise DistributedValidationFailed("sample_source cannot be Unknown")
    if receipt.failure_reason is not None:
        raise DistributedValidationFailed(f"receipt indicates failure: {_rust_debug(receipt.failure_reason)}")
    low, high = response_window(challenge, allowed_clock_skew_ms)
    if not low <= receipt.responded_at_unix_ms <= high:
        raise DistributedValidationFailed(
            "response timestamp out of challenge window: "
            f"responded_at={receipt.responded_at_unix_ms} allowed=[{low}, {high}]"
        )


# ---------------------------------------------------------------------- classification (2.7)


def classify_receipt_reason(
    challenge: StorageChallenge, receipt: StorageChallengeReceipt, allowed_clock_skew_ms: int
) -> FailureReason:
    """Why a receipt failed verification (upstream `classify_receipt_failure_reason`).

    Like upstream, the skew is not validated here: a negative skew narrows the window.
    """
    if receipt.failure_reason is not None:
        return receipt.failure_reason
    if receipt.proof_kind != PROOF_KIND_CHUNK_HASH_V1:
        return FailureReason.SIGNATURE_INVALID
    if (challenge.sample_offset, challenge.sample_size_bytes) != (
        receipt.sample_offset,
        receipt.sample_size_bytes,
    ):
        return FailureReason.MISSING_SAMPLE
    if (
        challenge.content_hash != receipt.content_hash
        or challenge.expected_sample_hash != receipt.sample_hash
    ):
        return FailureReason.HASH_MISMATCH
    low, high = response_window(challenge, allowed_clock_skew_ms)
    if not low <= receipt.responded_at_unix_ms <= high:
        return FailureReason.TIMEOUT
    return FailureReason.UNKNOWN


def _classify_validation_text(reason: str) -> FailureReason:
    """Upstream's substring rules, first match wins ("window" before "sample": the quirks)."""
    lower = reason.lower()
    if "timeout" in lower or "window" in lower:
        return FailureReason.TIMEOUT
    if "hash" in lower:
        return FailureReason.HASH_MISMATCH
    if "sample" in lower or "missing" in lower:
        return FailureReason.MISSING_SAMPLE
    if "signature" in lower or "proof" in lower:
        return FailureReason.SIGNATURE_INVALID
    return FailureReason.UNKNOWN


def classify_world_error_reason(err: WorldError) -> FailureReason:
    """Why issue or answer failed (upstream `classify_world_error_failure_reason`)."""
    if isinstance(err, BlobNotFound):
        return FailureReason.MISSING_SAMPLE
    if isinstance(err, BlobHashMismatch | BlobHashInvalid):
        return FailureReason.HASH_MISMATCH
    if isinstance(err, Io):
        return FailureReason.READ_IO_ERROR
    if isinstance(err, DistributedValidationFailed):
        return _classify_validation_text(err.reason)
    if isinstance(err, SignatureKeyInvalid):
        return FailureReason.SIGNATURE_INVALID
    return FailureReason.UNKNOWN


# ---------------------------------------------------------------------- projection and stats (2.8)


def sample_reference(challenge: StorageChallenge) -> str:
    return (
        f"distfs://{challenge.node_id}/challenge/{challenge.challenge_id}/blob/{challenge.content_hash}"
        f"?offset={challenge.sample_offset}&size={challenge.sample_size_bytes}"
    )


def receipt_to_proof_semantics(
    challenge: StorageChallenge, receipt: StorageChallengeReceipt
) -> StorageChallengeProofSemantics:
    """`storage_challenge_receipt_to_proof_semantics`."""
    return StorageChallengeProofSemantics(
        node_id=receipt.node_id,
        sample_source=receipt.sample_source,
        sample_reference=sample_reference(challenge),
        failure_reason=receipt.failure_reason,
        proof_kind_hint=receipt.proof_kind,
        vrf_seed_hint=challenge.vrf_seed,
        post_commitment_hint=challenge.expected_sample_hash,
    )


def summarize_node_storage_challenge_stats(
    entries: Iterable[tuple[StorageChallenge, StorageChallengeReceipt]], allowed_clock_skew_ms: int
) -> list[NodeStorageChallengeStats]:
    """Verify each (challenge, receipt) and count per `challenge.node_id`, sorted by node id."""
    if allowed_clock_skew_ms < 0:
        raise DistributedValidationFailed(f"allowed_clock_skew_ms must be >= 0, got {allowed_clock_skew_ms}")
    counts: dict[str, tuple[int, int, dict[str, int]]] = {}
    for challenge, receipt in entries:
        total, passed, reasons = counts.get(challenge.node_id, (0, 0, {}))
        try:
            verify_storage_challenge_receipt(challenge, receipt, allowed_clock_skew_ms)
            passed += 1
        except WorldError:  # upstream's `Err(_)`: an invalid hash (BlobHashInvalid) is a failure too
            key = classify_receipt_reason(challenge, receipt, allowed_clock_skew_ms).value
            reasons[key] = reasons.get(key, 0) + 1
        counts[challenge.node_id] = (total + 1, passed, reasons)
    return [
        NodeStorageChallengeStats(
            node_id=node_id,
            total_checks=total,
            passed_checks=passed,
            failed_checks=total - passed,
            failures_by_reason=dict(sorted(reasons.items())),
        )
        for node_id, (total, passed, reasons) in sorted(counts.items(), key=lambda item: item[0].encode())
    ]


# ---------------------------------------------------------------------- one check


@direct_init
@dataclass(frozen=True)
class CheckOutcome:
    """The result of one issue/answer/verify: a pass with its semantics, or a classified failure."""

    content_hash: str
    passed: bool
    semantics: StorageChallengeProofSemantics | None
    failure: CheckFailure | None


def _failed(content_hash: str, reason: FailureReason, error: str) -> CheckOutcome:
    return CheckOutcome(content_hash, False, None, CheckFailure(content_hash, reason, error))


def _error_outcome(content_hash: str, phase: str, exc: Exception) -> CheckOutcome:
    """Fail closed: a world error is classified as upstream does; anything else is counted too."""
    if isinstance(exc, WorldError):
        return _failed(content_hash, classify_world_error_reason(exc), f"{phase}: {exc}")
    if isinstance(exc, OSError):
        return _failed(content_hash, FailureReason.READ_IO_ERROR, f"{phase}: {type(exc).__name__}: {exc}")
    return _failed(content_hash, FailureReason.UNKNOWN, f"{phase}: {type(exc).__name__}: {exc}")


def run_check(
    reader: SampleReader,
    request: StorageChallengeRequest,
    responded_at_unix_ms: int,
    allowed_clock_skew_ms: int,
    *,
    answered_at: Callable[[], int] | None = None,
) -> CheckOutcome:
    """Issue, answer at `responded_at`, verify. Never raises: errors are classified failures.

    With `answered_at` (the wall clock), the receipt is stamped with its value taken once the
    answer's read has finished, so a read slower than TTL + skew fails as TIMEOUT.
    Error texts are prefixed with the phase (`issue:`, `answer:`, `verify:`) for the round log.

    Speed without a different outcome (issue 11): the challenge here is the one `issue` just built
    from a validated request, and the receipt the one `_answer_valid_challenge` just built from that
    challenge, so every check of `validate_challenge` and `validate_receipt` and every equality of
    `verify_storage_challenge_receipt` except the sample hash holds by construction (version and
    proof kind are constants; ids come from the validated request; both hashes are BLAKE3 hex; the
    expiry is the issue time plus a positive TTL; offset, size, ids and content hash are copied;
    the source is `LOCAL_STORE_INDEX`; `failure_reason` is None exactly when the hashes match). So
    the full verify passes iff the skew is >= 0, the receipt reports no failure and the answer time
    is in the window: that is tested directly, and anything else goes through the full verify,
    which raises the very error (and classification) it always did. The answer still re-reads
    (or, in chunked mode, re-confirms) the window through the reader exactly as before.
    """
    content_hash = request.content_hash
    try:
        challenge = issue_storage_challenge(reader, request)
    except Exception as exc:
        return _error_outcome(content_hash, "issue", exc)
    try:
        receipt = _answer_valid_challenge(reader, challenge, responded_at_unix_ms)
    except Exception as exc:
        return _error_outcome(content_hash, "answer", exc)
    if answered_at is not None:
        receipt = dataclasses.replace(receipt, responded_at_unix_ms=answered_at())
    if not _passes_own_receipt(challenge, receipt, allowed_clock_skew_ms):
        try:
            verify_storage_challenge_receipt(challenge, receipt, allowed_clock_skew_ms)
        except WorldError as exc:  # upstream's `Err(_)`: validate_hash raises BlobHashInvalid
            reason = classify_receipt_reason(challenge, receipt, allowed_clock_skew_ms)
            return _failed(content_hash, reason, f"verify: {exc}")
    return CheckOutcome(content_hash, True, receipt_to_proof_semantics(challenge, receipt), None)


def _passes_own_receipt(
    challenge: StorageChallenge, receipt: StorageChallengeReceipt, allowed_clock_skew_ms: int
) -> bool:
    """True only when `verify_storage_challenge_receipt` would pass a receipt answered by
    `_answer_valid_challenge` from `challenge` (see `run_check`); False means "ask the full verify"."""
    if allowed_clock_skew_ms < 0 or receipt.failure_reason is not None:
        return False
    if receipt.sample_hash != challenge.expected_sample_hash:
        return False
    low, high = response_window(challenge, allowed_clock_skew_ms)
    return low <= receipt.responded_at_unix_ms <= high


# ---------------------------------------------------------------------- probe ids and seeds


def _hash_prefix(content_hash: str) -> str:
    return content_hash[:12]


def probe_ids(
    world_id: str, node_id: str, observed_ms: int, index: int, content_hash: str
) -> tuple[str, str]:
    """(challenge_id, vrf_seed) of the stateless probe (SPEC 2.4)."""
    challenge_id = f"probe:{node_id}:{observed_ms}:{index}:{_hash_prefix(content_hash)}"
    return challenge_id, f"{world_id}:{node_id}:{observed_ms}:{index}"


def scheduled_probe_ids(
    world_id: str, node_id: str, observed_ms: int, cursor: int, index: int, content_hash: str
) -> tuple[str, str]:
    """(challenge_id, vrf_seed) of a scheduled round; `cursor` is the raw state cursor."""
    challenge_id = f"sched-probe:{node_id}:{observed_ms}:{cursor}:{index}:{_hash_prefix(content_hash)}"
    return challenge_id, f"{world_id}:{node_id}:{observed_ms}:{cursor}:{index}"


def probe_request(
    config: ProbeConfig,
    world_id: str,
    node_id: str,
    observed_ms: int,
    index: int,
    content_hash: str,
    *,
    cursor: int | None = None,
) -> StorageChallengeRequest:
    """The request of check `index` of a round at `observed_ms`, issued then and living the TTL.

    Ids and seed are the stateless probe's (`probe_ids`), or with the round's raw (pre-modulo)
    `cursor` a scheduled round's (`scheduled_probe_ids`), as upstream builds them.
    """
    if cursor is None:
        challenge_id, vrf_seed = probe_ids(world_id, node_id, observed_ms, index, content_hash)
    else:
        challenge_id, vrf_seed = scheduled_probe_ids(
            world_id, node_id, observed_ms, cursor, index, content_hash
        )
    return StorageChallengeRequest(
        challenge_id=challenge_id,
        world_id=world_id,
        node_id=node_id,
        content_hash=content_hash,
        max_sample_bytes=config.max_sample_bytes,
        issued_at_unix_ms=observed_ms,
        challenge_ttl_ms=config.challenge_ttl_ms,
        vrf_seed=vrf_seed,
    )


def probe_start_index(world_id: str, node_id: str, observed_ms: int, candidate_count: int) -> int:
    """0 for at most one candidate, else BLAKE3("{world}:{node}:{ms}")[0..8] LE mod count."""
    if candidate_count <= 1:
        return 0
    return _u64_le_prefix(f"{world_id}:{node_id}:{observed_ms}".encode()) % candidate_count


# ---------------------------------------------------------------------- stateless probe (2.9)


def record_outcome(report: RoundReport, outcome: CheckOutcome) -> None:
    """Count one check into a report (shared with the scheduled rounds)."""
    report.total_checks += 1
    report.checked_hashes.append(outcome.content_hash)
    if outcome.passed:
        report.passed_checks += 1
        report.latest_proof_semantics = outcome.semantics
        return
    report.failed_checks += 1
    if outcome.failure is not None:
        key = outcome.failure.reason.value
        report.failure_reasons[key] = report.failure_reasons.get(key, 0) + 1
        report.failures.append(outcome.failure)


def probe_storage_challenges(
    store: LocalCasStore,
    world_id: str,
    node_id: str,
    observed_ms: int,
    config: ProbeConfig,
    *,
    reader: SampleReader | None = None,
) -> RoundReport:
    """The stateless phase-3 probe: up to `challenges_per_tick` checks from a derived start.

    Raises only for invalid settings or a failed candidate listing. `reader` defaults to the
    upstream whole-blob reader; pass `chunks.make_reader(store, ...)` for chunked verification.
    """
    validate_probe_config(config)
    _non_empty(world_id, "world_id")
    _non_empty(node_id, "node_id")
    hashes = store.candidates()
    report = RoundReport(node_id=node_id, world_id=world_id, observed_at_unix_ms=observed_ms)
    report.blob_count = len(hashes)
    if not hashes:
        return report
    if reader is None:
        from distfs_pipeline.core.chunks import make_reader
        from distfs_pipeline.core.models import VerifyOptions

        reader = make_reader(store, VerifyOptions(mode="full"))
    start = probe_start_index(world_id, node_id, observed_ms, len(hashes))
    for index in range(min(config.challenges_per_tick, len(hashes))):
        content_hash = hashes[(start + index) % len(hashes)]
        request = probe_request(config, world_id, node_id, observed_ms, index, content_hash)
        record_outcome(report, run_check(reader, request, observed_ms, config.allowed_clock_skew_ms))
    return report
