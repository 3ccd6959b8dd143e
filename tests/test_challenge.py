"""Challenges: upstream `challenge/tests.rs` vectors (in both verify modes), exact messages and
classifications, ids and seeds, and fault tests on real files."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import blake3
import pytest

from distfs_pipeline.core.challenge import (
    CheckOutcome,
    _error_outcome,
    answer_storage_challenge,
    classify_receipt_reason,
    classify_world_error_reason,
    deterministic_offset,
    issue_storage_challenge,
    probe_ids,
    probe_start_index,
    probe_storage_challenges,
    receipt_to_proof_semantics,
    run_check,
    sample_window,
    scheduled_probe_ids,
    summarize_node_storage_challenge_stats,
    verify_storage_challenge_receipt,
)
from distfs_pipeline.core.chunks import make_reader
from distfs_pipeline.core.errors import (
    BlobHashInvalid,
    BlobHashMismatch,
    BlobNotFound,
    DistributedValidationFailed,
    Io,
    NetworkProtocolUnavailable,
    NetworkRequestFailed,
    Serde,
    SignatureKeyInvalid,
    WorldError,
)
from distfs_pipeline.core.models import (
    I64_MAX,
    I64_MIN,
    U64_MAX,
    CheckFailure,
    FailureReason,
    ProbeConfig,
    SampleSource,
    StorageChallenge,
    StorageChallengeReceipt,
    StorageChallengeRequest,
    VerifyOptions,
)
from distfs_pipeline.core.store import LocalCasStore, blake3_hex

MODES = ["full", "chunked"]


def make_blob(n: int) -> bytes:
    return bytes((i % 251) + 3 for i in range(n))


@pytest.fixture
def store(tmp_path: Path) -> LocalCasStore:
    return LocalCasStore(tmp_path / "store")


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def reader(store: LocalCasStore, mode: str, tmp_path: Path):
    return make_reader(store, VerifyOptions(mode=mode, cache_dir=str(tmp_path / "cache")))


def request_for(content_hash: str, **fields) -> StorageChallengeRequest:
    base = dict(
        challenge_id="challenge-x",
        world_id="world-1",
        node_id="node-storage-1",
        content_hash=content_hash,
        max_sample_bytes=32,
        issued_at_unix_ms=100,
        challenge_ttl_ms=2_000,
        vrf_seed="seed-1",
    )
    return StorageChallengeRequest(**{**base, **fields})


def issued(reader, store: LocalCasStore, size: int, **fields) -> StorageChallenge:
    return issue_storage_challenge(reader, request_for(store.put_bytes(make_blob(size)), **fields))


# --- upstream challenge/tests.rs --------------------------------------------------------------------


def test_issue_storage_challenge_is_deterministic_and_within_bounds(store, reader) -> None:
    content_hash = store.put_bytes(make_blob(96))
    request = request_for(
        content_hash,
        challenge_id="challenge-a",
        node_id="node-storage-1",
        max_sample_bytes=32,
        issued_at_unix_ms=100,
        challenge_ttl_ms=2_000,
        vrf_seed="seed-1",
    )
    a = issue_storage_challenge(reader, request)
    b = issue_storage_challenge(reader, request)
    assert a == b
    assert a.version == 1
    assert a.sample_size_bytes <= 32
    assert a.sample_offset + a.sample_size_bytes <= 96
    assert a.expires_at_unix_ms == 2_100
    # The formula of SPEC 2.4, spelled out independently.
    digest = blake3.blake3(f"{content_hash}:seed-1".encode()).digest()
    assert a.sample_size_bytes == 32
    assert a.sample_offset == int.from_bytes(digest[:8], "little") % (96 - 32 + 1)
    window = make_blob(96)[a.sample_offset : a.sample_offset + 32]
    assert a.expected_sample_hash == blake3_hex(window)


def test_answer_storage_challenge_returns_matching_receipt(store, reader) -> None:
    challenge = issued(
        reader,
        store,
        128,
        challenge_id="challenge-b",
        node_id="node-storage-2",
        max_sample_bytes=24,
        issued_at_unix_ms=200,
        challenge_ttl_ms=1_000,
        vrf_seed="seed-2",
    )
    receipt = answer_storage_challenge(reader, challenge, 250)
    assert receipt.version == 1
    assert receipt.challenge_id == challenge.challenge_id
    assert receipt.node_id == challenge.node_id
    assert receipt.content_hash == challenge.content_hash
    assert receipt.sample_offset == challenge.sample_offset
    assert receipt.sample_size_bytes == challenge.sample_size_bytes
    assert receipt.sample_hash == challenge.expected_sample_hash
    assert receipt.responded_at_unix_ms == 250
    assert receipt.sample_source == SampleSource.LOCAL_STORE_INDEX
    assert receipt.failure_reason is None
    assert receipt.proof_kind == "chunk_hash:v1"


def test_verify_storage_challenge_receipt_accepts_valid_receipt(store, reader) -> None:
    challenge = issued(reader, store, 160, max_sample_bytes=40, issued_at_unix_ms=500, challenge_ttl_ms=1_000)
    verify_storage_challenge_receipt(challenge, answer_storage_challenge(reader, challenge, 900), 50)


def test_verify_storage_challenge_receipt_rejects_hash_mismatch(store, reader) -> None:
    challenge = issued(reader, store, 80, max_sample_bytes=16, issued_at_unix_ms=1_000, challenge_ttl_ms=500)
    receipt = answer_storage_challenge(reader, challenge, 1_100)
    receipt = dataclasses.replace(receipt, sample_hash=blake3_hex(b"tampered"))
    with pytest.raises(DistributedValidationFailed, match=r"^sample_hash mismatch: expected="):
        verify_storage_challenge_receipt(challenge, receipt, 10)
    assert classify_receipt_reason(challenge, receipt, 10) == FailureReason.HASH_MISMATCH


def test_verify_storage_challenge_receipt_rejects_expired_response(store, reader) -> None:
    challenge = issued(reader, store, 64, max_sample_bytes=16, issued_at_unix_ms=2_000, challenge_ttl_ms=100)
    receipt = answer_storage_challenge(reader, challenge, challenge.expires_at_unix_ms + 200)
    assert receipt.responded_at_unix_ms == 2_300
    with pytest.raises(
        DistributedValidationFailed,
        match=r"^response timestamp out of challenge window: responded_at=2300 allowed=\[1950, 2150\]$",
    ):
        verify_storage_challenge_receipt(challenge, receipt, 50)
    assert classify_receipt_reason(challenge, receipt, 50) == FailureReason.TIMEOUT


def test_receipt_to_proof_semantics_projects_expected_fields(store, reader) -> None:
    challenge = issued(
        reader,
        store,
        88,
        challenge_id="challenge-semantics",
        node_id="node-storage-6",
        max_sample_bytes=20,
        issued_at_unix_ms=3_000,
        challenge_ttl_ms=100,
        vrf_seed="seed-semantics",
    )
    receipt = answer_storage_challenge(reader, challenge, 3_050)
    semantics = receipt_to_proof_semantics(challenge, receipt)
    assert semantics.node_id == "node-storage-6"
    assert semantics.sample_source == SampleSource.LOCAL_STORE_INDEX
    assert semantics.sample_reference == (
        f"distfs://node-storage-6/challenge/challenge-semantics/blob/{challenge.content_hash}"
        f"?offset={challenge.sample_offset}&size=20"
    )
    assert semantics.failure_reason is None
    assert semantics.proof_kind_hint == "chunk_hash:v1"
    assert semantics.vrf_seed_hint == "seed-semantics"
    assert semantics.post_commitment_hint == challenge.expected_sample_hash


def test_summarize_node_storage_challenge_stats_counts_pass_and_failure_reasons(store, reader) -> None:
    hash_a = store.put_bytes(make_blob(120))
    hash_b = store.put_bytes(make_blob(96))

    def pair(content_hash, node, cid, seed, max_bytes, issued_at, ttl, answered):
        request = request_for(
            content_hash,
            challenge_id=cid,
            node_id=node,
            vrf_seed=seed,
            max_sample_bytes=max_bytes,
            issued_at_unix_ms=issued_at,
            challenge_ttl_ms=ttl,
        )
        challenge = issue_storage_challenge(reader, request)
        return challenge, answer_storage_challenge(reader, challenge, answered)

    a_pass = pair(hash_a, "node-a", "challenge-a-pass", "seed-a1", 24, 10, 100, 50)
    a_fail_challenge, a_fail_receipt = pair(hash_a, "node-a", "challenge-a-fail", "seed-a2", 24, 20, 100, 60)
    a_fail = (a_fail_challenge, dataclasses.replace(a_fail_receipt, sample_hash=blake3_hex(b"mismatch")))
    b_timeout = pair(hash_b, "node-b", "challenge-b-timeout", "seed-b1", 16, 100, 10, 200)

    stats = summarize_node_storage_challenge_stats([b_timeout, a_pass, a_fail], 0)
    assert [s.node_id for s in stats] == ["node-a", "node-b"]
    node_a, node_b = stats
    assert (node_a.total_checks, node_a.passed_checks, node_a.failed_checks) == (2, 1, 1)
    assert node_a.failures_by_reason == {"HASH_MISMATCH": 1}
    assert (node_b.total_checks, node_b.passed_checks, node_b.failed_checks) == (1, 0, 1)
    assert node_b.failures_by_reason == {"TIMEOUT": 1}


def test_summarize_counts_an_invalid_receipt_hash_as_a_failure(store, reader) -> None:
    """Upstream counts any `Err(_)` of verify; an invalid hash is `BlobHashInvalid`, not a crash."""
    challenge = issued(reader, store, 80, node_id="node-a", max_sample_bytes=16)
    receipt = answer_storage_challenge(reader, challenge, 200)
    for bad in ("", "../x"):
        broken = dataclasses.replace(receipt, sample_hash=bad)
        with pytest.raises(BlobHashInvalid):
            verify_storage_challenge_receipt(challenge, broken, 0)
        [stats] = summarize_node_storage_challenge_stats([(challenge, broken), (challenge, receipt)], 0)
        assert (stats.node_id, stats.total_checks, stats.passed_checks, stats.failed_checks) == (
            "node-a",
            2,
            1,
            1,
        )
        assert stats.failures_by_reason == {"HASH_MISMATCH": 1}
    bad_content = dataclasses.replace(receipt, content_hash="a/b")
    [stats] = summarize_node_storage_challenge_stats([(challenge, bad_content)], 0)
    assert stats.failures_by_reason == {"HASH_MISMATCH": 1}
    bad_expected = dataclasses.replace(challenge, expected_sample_hash="a\\b")
    [stats] = summarize_node_storage_challenge_stats([(bad_expected, receipt)], 0)
    assert stats.failures_by_reason == {"HASH_MISMATCH": 1}


def test_summarize_node_storage_challenge_stats_accepts_empty_entries() -> None:
    assert summarize_node_storage_challenge_stats([], 0) == []


def test_summarize_rejects_negative_skew() -> None:
    with pytest.raises(DistributedValidationFailed, match=r"^allowed_clock_skew_ms must be >= 0, got -1$"):
        summarize_node_storage_challenge_stats([], -1)


def test_probe_storage_challenges_reports_passed_checks_for_valid_blobs(store, reader) -> None:
    store.put_bytes(make_blob(90))
    store.put_bytes(make_blob(110))
    report = probe_storage_challenges(
        store, "world-1", "node-storage-7", 7_000, ProbeConfig(24, 2, 100, 10), reader=reader
    )
    assert (report.total_checks, report.passed_checks, report.failed_checks) == (2, 2, 0)
    assert report.failure_reasons == {}
    assert report.latest_proof_semantics is not None
    assert report.latest_proof_semantics.node_id == "node-storage-7"
    assert report.latest_proof_semantics.sample_source == SampleSource.LOCAL_STORE_INDEX


def test_probe_storage_challenges_records_failure_reason_on_blob_hash_mismatch(store, reader) -> None:
    content_hash = store.put_bytes(make_blob(64))
    store.blob_path(content_hash).write_bytes(b"tampered-blob")
    report = probe_storage_challenges(
        store, "world-1", "node-storage-8", 8_000, ProbeConfig(16, 1, 100, 0), reader=reader
    )
    assert (report.total_checks, report.passed_checks, report.failed_checks) == (1, 0, 1)
    assert report.failure_reasons == {"HASH_MISMATCH": 1}
    assert report.latest_proof_semantics is None
    (failure,) = report.failures
    assert failure.content_hash == content_hash
    assert failure.error.startswith("issue: blob hash mismatch: expected=")


def test_issue_storage_challenge_rejects_invalid_request(store, reader) -> None:
    request = request_for(
        store.put_bytes(b"ok"),
        challenge_id=" ",
        node_id="node-1",
        max_sample_bytes=0,
        issued_at_unix_ms=0,
        challenge_ttl_ms=0,
        vrf_seed="seed",
    )
    with pytest.raises(
        DistributedValidationFailed, match=r"^storage challenge field challenge_id cannot be empty$"
    ):
        issue_storage_challenge(reader, request)


def test_default_probe_reader_is_upstream_full_mode(store) -> None:
    store.put_bytes(make_blob(90))
    report = probe_storage_challenges(store, "world-1", "node-storage-7", 7_000, ProbeConfig(24, 2, 100, 10))
    assert (report.total_checks, report.passed_checks, report.blob_count) == (1, 1, 1)


# --- request and challenge validation order ------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"challenge_id": ""}, "storage challenge field challenge_id cannot be empty"),
        ({"world_id": "\t"}, "storage challenge field world_id cannot be empty"),
        ({"node_id": " ", "vrf_seed": ""}, "storage challenge field node_id cannot be empty"),
        ({"vrf_seed": "  ", "max_sample_bytes": 0}, "storage challenge field vrf_seed cannot be empty"),
        ({"max_sample_bytes": 0, "challenge_ttl_ms": 0}, "max_sample_bytes must be >= 1"),
        ({"challenge_ttl_ms": 0}, "challenge_ttl_ms must be > 0"),
        ({"challenge_ttl_ms": -1}, "challenge_ttl_ms must be > 0"),
    ],
)
def test_request_validation_messages_in_order(store, reader, fields, message) -> None:
    request = request_for(store.put_bytes(b"ok"), **fields)
    with pytest.raises(DistributedValidationFailed) as info:
        issue_storage_challenge(reader, request)
    assert info.value.reason == message


@pytest.mark.parametrize("blank", ["\x1c", "\x1d", "\x1e", "\x1f", "\x1f \x1c"])
def test_ids_empty_only_under_rust_trim(store, reader, blank) -> None:
    """Rust's `trim()` keeps U+001C..U+001F (not White_Space); Python's `strip()` would drop them."""
    content_hash = store.put_bytes(make_blob(40))
    request = request_for(content_hash, challenge_id=blank, world_id=blank, node_id=blank, vrf_seed=blank)
    challenge = issue_storage_challenge(reader, request)
    receipt = answer_storage_challenge(reader, challenge, 150)
    verify_storage_challenge_receipt(challenge, receipt, 0)
    report = probe_storage_challenges(store, blank, blank, 1, ProbeConfig(), reader=reader)
    assert (report.total_checks, report.passed_checks) == (1, 1)


@pytest.mark.parametrize("blank", ["\x85", "\xa0", "\u1680", "\u2000", "\u200a", "\u2028", "\u3000"])
def test_unicode_white_space_ids_are_empty_as_upstream(store, reader, blank) -> None:
    content_hash = store.put_bytes(make_blob(40))
    with pytest.raises(DistributedValidationFailed) as info:
        issue_storage_challenge(reader, request_for(content_hash, challenge_id=f" {blank}\t"))
    assert info.value.reason == "storage challenge field challenge_id cannot be empty"
    with pytest.raises(DistributedValidationFailed) as info:
        probe_storage_challenges(store, blank, "node", 1, ProbeConfig(), reader=reader)
    assert info.value.reason == "storage challenge field world_id cannot be empty"


def test_request_hash_is_validated_before_sizes(reader) -> None:
    with pytest.raises(BlobHashInvalid):
        issue_storage_challenge(reader, request_for("../x", max_sample_bytes=0))


def test_missing_blob_is_read_before_the_ttl_overflow(store, reader) -> None:
    request = request_for(blake3_hex(b"absent"), issued_at_unix_ms=I64_MAX, challenge_ttl_ms=1)
    with pytest.raises(BlobNotFound):
        issue_storage_challenge(reader, request)


def test_ttl_overflow(store, reader) -> None:
    request = request_for(store.put_bytes(b"ok"), issued_at_unix_ms=I64_MAX - 5, challenge_ttl_ms=6)
    with pytest.raises(DistributedValidationFailed) as info:
        issue_storage_challenge(reader, request)
    assert info.value.reason == f"storage challenge ttl overflow: issued_at={I64_MAX - 5} ttl=6"
    assert classify_world_error_reason(info.value) == FailureReason.UNKNOWN
    ok = issue_storage_challenge(reader, dataclasses.replace(request, challenge_ttl_ms=5))
    assert ok.expires_at_unix_ms == I64_MAX


def good_pair(reader, store) -> tuple[StorageChallenge, StorageChallengeReceipt]:
    challenge = issued(reader, store, 100, max_sample_bytes=16, issued_at_unix_ms=1_000, challenge_ttl_ms=100)
    return challenge, answer_storage_challenge(reader, challenge, 1_050)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "unsupported storage challenge version: expected=1 actual=2"),
        ({"challenge_id": " "}, "storage challenge field challenge_id cannot be empty"),
        ({"world_id": ""}, "storage challenge field world_id cannot be empty"),
        ({"node_id": ""}, "storage challenge field node_id cannot be empty"),
        ({"vrf_seed": ""}, "storage challenge field vrf_seed cannot be empty"),
        (
            {"expires_at_unix_ms": 999},
            "storage challenge expires_at is earlier than issued_at: issued_at=1000 expires_at=999",
        ),
    ],
)
def test_answer_validates_the_challenge(store, reader, change, message) -> None:
    challenge, _ = good_pair(reader, store)
    with pytest.raises(DistributedValidationFailed) as info:
        answer_storage_challenge(reader, dataclasses.replace(challenge, **change), 1_050)
    assert info.value.reason == message


def test_answer_validates_both_hashes(store, reader) -> None:
    challenge, _ = good_pair(reader, store)
    for field in ("content_hash", "expected_sample_hash"):
        with pytest.raises(BlobHashInvalid):
            answer_storage_challenge(reader, dataclasses.replace(challenge, **{field: "a/b"}), 1_050)


def test_answer_reports_a_changed_expectation_as_hash_mismatch(store, reader) -> None:
    challenge, _ = good_pair(reader, store)
    receipt = answer_storage_challenge(
        reader, dataclasses.replace(challenge, expected_sample_hash=blake3_hex(b"x")), 1_050
    )
    assert receipt.failure_reason == FailureReason.HASH_MISMATCH
    assert receipt.sample_hash == challenge.expected_sample_hash


def test_answer_reads_the_challenge_window_not_a_derived_one(store, reader) -> None:
    challenge, _ = good_pair(reader, store)
    moved = dataclasses.replace(challenge, sample_offset=(challenge.sample_offset + 1) % 85)
    receipt = answer_storage_challenge(reader, moved, 1_050)
    window = make_blob(100)[moved.sample_offset : moved.sample_offset + 16]
    assert receipt.sample_hash == blake3_hex(window)
    assert receipt.failure_reason == FailureReason.HASH_MISMATCH


# --- verify: order and messages --------------------------------------------------------------------


def test_verify_negative_skew_comes_first(store, reader) -> None:
    challenge, receipt = good_pair(reader, store)
    with pytest.raises(DistributedValidationFailed) as info:
        verify_storage_challenge_receipt(dataclasses.replace(challenge, version=9), receipt, -3)
    assert info.value.reason == "allowed_clock_skew_ms must be >= 0, got -3"


@pytest.mark.parametrize(
    ("change", "message", "reason"),
    [
        ({"version": 0}, "unsupported storage challenge receipt version: expected=1 actual=0", "UNKNOWN"),
        ({"challenge_id": ""}, "storage challenge field challenge_id cannot be empty", "UNKNOWN"),
        ({"proof_kind": " "}, "storage challenge field proof_kind cannot be empty", "SIGNATURE_INVALID"),
        ({"challenge_id": "other"}, "challenge_id mismatch: expected={cid} actual=other", "UNKNOWN"),
        ({"node_id": "node-x"}, "node_id mismatch: expected=node-storage-1 actual=node-x", "UNKNOWN"),
        ({"content_hash": "abc"}, "content_hash mismatch: expected={hash} actual=abc", "HASH_MISMATCH"),
        ({"sample_offset": 99}, "sample_offset mismatch: expected={off} actual=99", "MISSING_SAMPLE"),
        ({"sample_size_bytes": 3}, "sample_size_bytes mismatch: expected=16 actual=3", "MISSING_SAMPLE"),
        ({"sample_hash": "ff"}, "sample_hash mismatch: expected={exp} actual=ff", "HASH_MISMATCH"),
        ({"proof_kind": "sig:v2"}, "unsupported proof kind: expected=chunk_hash:v1 actual=sig:v2",
         "SIGNATURE_INVALID"),
        ({"sample_source": SampleSource.UNKNOWN}, "sample_source cannot be Unknown", "UNKNOWN"),
        ({"failure_reason": FailureReason.READ_IO_ERROR}, "receipt indicates failure: ReadIoError",
         "READ_IO_ERROR"),
        ({"failure_reason": FailureReason.HASH_MISMATCH}, "receipt indicates failure: HashMismatch",
         "HASH_MISMATCH"),
        ({"responded_at_unix_ms": 899}, "response timestamp out of challenge window: responded_at=899 "
         "allowed=[900, 1200]", "TIMEOUT"),
        ({"responded_at_unix_ms": 1_201}, "response timestamp out of challenge window: responded_at=1201 "
         "allowed=[900, 1200]", "TIMEOUT"),
    ],
)  # fmt: skip
def test_verify_messages_and_classification(store, reader, change, message, reason) -> None:
    challenge, receipt = good_pair(reader, store)
    bad = dataclasses.replace(receipt, **change)
    expected = message.format(
        cid=challenge.challenge_id,
        hash=challenge.content_hash,
        off=challenge.sample_offset,
        exp=challenge.expected_sample_hash,
    )
    with pytest.raises(DistributedValidationFailed) as info:
        verify_storage_challenge_receipt(challenge, bad, 100)
    assert info.value.reason == expected
    assert classify_receipt_reason(challenge, bad, 100) == FailureReason(reason)


def test_verify_window_edges_are_inclusive(store, reader) -> None:
    challenge, receipt = good_pair(reader, store)
    for at in (900, 1_200):
        verify_storage_challenge_receipt(
            challenge, dataclasses.replace(receipt, responded_at_unix_ms=at), 100
        )


def test_verify_window_saturates_at_i64_bounds(store, reader) -> None:
    challenge, receipt = good_pair(reader, store)
    challenge = dataclasses.replace(challenge, issued_at_unix_ms=I64_MIN + 1, expires_at_unix_ms=I64_MAX - 1)
    for at in (I64_MIN, I64_MAX):
        verify_storage_challenge_receipt(challenge, dataclasses.replace(receipt, responded_at_unix_ms=at), 10)


def test_classify_receipt_order_and_negative_skew(store, reader) -> None:
    challenge, receipt = good_pair(reader, store)
    both = dataclasses.replace(receipt, proof_kind="x", sample_offset=1, failure_reason=None)
    assert classify_receipt_reason(challenge, both, 0) == FailureReason.SIGNATURE_INVALID
    assert classify_receipt_reason(challenge, receipt, -1) == FailureReason.UNKNOWN
    # As upstream, a negative skew is not validated here: it narrows the window.
    assert classify_receipt_reason(challenge, receipt, -60) == FailureReason.TIMEOUT


# --- world error classification -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (BlobNotFound("h"), "MISSING_SAMPLE"),
        (BlobHashMismatch("a", "b"), "HASH_MISMATCH"),
        (BlobHashInvalid("a/b"), "HASH_MISMATCH"),
        (Io("boom"), "READ_IO_ERROR"),
        (SignatureKeyInvalid(), "SIGNATURE_INVALID"),
        (NetworkProtocolUnavailable("p"), "UNKNOWN"),
        (NetworkRequestFailed("500", "hash sample missing", True), "UNKNOWN"),
        (Serde("bad json with hash"), "UNKNOWN"),
        (DistributedValidationFailed("request TIMEOUT hash"), "TIMEOUT"),
        (DistributedValidationFailed("sample window out of bounds: offset=1 size=2 blob_len=2"), "TIMEOUT"),
        (DistributedValidationFailed("sample window overflow: offset=1 size=2"), "TIMEOUT"),
        (DistributedValidationFailed("sample_offset overflow: 18446744073709551616"), "MISSING_SAMPLE"),
        (DistributedValidationFailed("storage challenge ttl overflow: issued_at=1 ttl=2"), "UNKNOWN"),
        (DistributedValidationFailed("storage challenge field node_id cannot be empty"), "UNKNOWN"),
        (DistributedValidationFailed("Hash of sample"), "HASH_MISMATCH"),
        (DistributedValidationFailed("blob Missing"), "MISSING_SAMPLE"),
        (DistributedValidationFailed("bad Signature on sample"), "MISSING_SAMPLE"),
        (DistributedValidationFailed("unsupported PROOF"), "SIGNATURE_INVALID"),
        (DistributedValidationFailed("max_sample_bytes must be >= 1"), "MISSING_SAMPLE"),
        (DistributedValidationFailed("challenge_ttl_ms must be > 0"), "UNKNOWN"),
    ],
)
def test_classify_world_error_reason(error, reason) -> None:
    assert classify_world_error_reason(error) == FailureReason(reason)


# --- sample window --------------------------------------------------------------------------------


def test_sample_window_covers_small_blobs_whole() -> None:
    assert sample_window("h", "s", 10, 64) == (0, 10)
    assert sample_window("h", "s", 64, 64) == (0, 64)
    assert sample_window("h", "s", 0, 64) == (0, 0)
    assert deterministic_offset("h", "s", 10, 10) == 0


def test_sample_window_rejects_zero_max() -> None:
    with pytest.raises(DistributedValidationFailed, match=r"^max_sample_bytes must be >= 1$"):
        sample_window("h", "s", 10, 0)


def test_empty_blob_samples_the_empty_string(store, reader) -> None:
    challenge = issue_storage_challenge(reader, request_for(store.put_bytes(b"")))
    assert (challenge.sample_offset, challenge.sample_size_bytes) == (0, 0)
    assert challenge.expected_sample_hash == blake3_hex(b"")
    verify_storage_challenge_receipt(challenge, answer_storage_challenge(reader, challenge, 100), 0)


@pytest.mark.parametrize(
    ("offset", "size", "message", "reason"),
    [
        (2**64, 4, "sample_offset overflow: 18446744073709551616", "MISSING_SAMPLE"),
        (U64_MAX, 2, f"sample window overflow: offset={U64_MAX} size=2", "TIMEOUT"),
        (97, 4, "sample window out of bounds: offset=97 size=4 blob_len=100", "TIMEOUT"),
        (0, 101, "sample window out of bounds: offset=0 size=101 blob_len=100", "TIMEOUT"),
    ],
)
def test_answer_window_errors(store, reader, offset, size, message, reason) -> None:
    challenge, _ = good_pair(reader, store)
    bad = dataclasses.replace(challenge, sample_offset=offset, sample_size_bytes=size)
    with pytest.raises(DistributedValidationFailed) as info:
        answer_storage_challenge(reader, bad, 1_050)
    assert info.value.reason == message
    assert classify_world_error_reason(info.value) == FailureReason(reason)


def test_offsets_are_spread_over_the_blob(store, reader) -> None:
    content_hash = store.put_bytes(make_blob(1_000))
    offsets = {sample_window(content_hash, f"seed-{i}", 1_000, 10)[0] for i in range(200)}
    assert len(offsets) > 150 and max(offsets) <= 990


# --- ids, seeds, start index ------------------------------------------------------------------------


def test_probe_ids_and_seeds() -> None:
    h = "0123456789abcdef"
    assert probe_ids("w", "n", 7000, 3, h) == ("probe:n:7000:3:0123456789ab", "w:n:7000:3")
    assert probe_ids("w", "n", -5, 0, "abc") == ("probe:n:-5:0:abc", "w:n:-5:0")
    assert scheduled_probe_ids("w", "n", 1000, 7, 1, h) == (
        "sched-probe:n:1000:7:1:0123456789ab",
        "w:n:1000:7:1",
    )


def test_probe_start_index() -> None:
    assert probe_start_index("world-1", "node", 1, 0) == 0
    assert probe_start_index("world-1", "node", 1, 1) == 0
    digest = blake3.blake3(b"world-1:node-storage-7:7000").digest()
    assert probe_start_index("world-1", "node-storage-7", 7000, 5) == int.from_bytes(digest[:8], "little") % 5


def test_probe_checks_from_the_start_index_and_wraps(store, reader) -> None:
    hashes = sorted(store.put_bytes(make_blob(n)) for n in (10, 20, 30, 40, 50))
    start = probe_start_index("world-1", "node-9", 4_242, 5)
    report = probe_storage_challenges(
        store, "world-1", "node-9", 4_242, ProbeConfig(8, 4, 100, 0), reader=reader
    )
    assert report.checked_hashes == [hashes[(start + i) % 5] for i in range(4)]
    assert report.blob_count == 5
    last = hashes[(start + 3) % 5]
    assert report.latest_proof_semantics is not None
    assert (
        f"/challenge/probe:node-9:4242:3:{last[:12]}/blob/{last}?"
        in report.latest_proof_semantics.sample_reference
    )


# --- stateless probe validation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "world", "node", "message"),
    [
        (ProbeConfig(0, 0, 0, -1), "", "", "probe max_sample_bytes must be >= 1"),
        (ProbeConfig(1, 0, 0, -1), "", "", "probe challenges_per_tick must be >= 1"),
        (ProbeConfig(1, 1, 0, -1), "", "", "probe challenge_ttl_ms must be > 0"),
        (ProbeConfig(1, 1, 1, -1), "", "", "probe allowed_clock_skew_ms must be >= 0"),
        (ProbeConfig(1, 1, 1, 0), " ", "", "storage challenge field world_id cannot be empty"),
        (ProbeConfig(1, 1, 1, 0), "w", "", "storage challenge field node_id cannot be empty"),
    ],
)
def test_probe_validation_order(store, config, world, node, message) -> None:
    with pytest.raises(DistributedValidationFailed) as info:
        probe_storage_challenges(store, world, node, 1, config)
    assert info.value.reason == message


def test_probe_of_an_empty_store_is_all_zero(store) -> None:
    report = probe_storage_challenges(store, "world-1", "node-a", 1_000, ProbeConfig())
    assert (report.total_checks, report.passed_checks, report.failed_checks, report.blob_count) == (
        0,
        0,
        0,
        0,
    )
    assert report.failure_reasons == {} and report.latest_proof_semantics is None


def test_probe_listing_error_fails_the_call(store) -> None:
    store.put_bytes(b"x")
    (store.root / "must_hold.idx").unlink()
    (store.blobs_dir / "bad..name.blob").write_bytes(b"")
    with pytest.raises(BlobHashInvalid):
        probe_storage_challenges(store, "world-1", "node-a", 1_000, ProbeConfig())


# --- run_check never raises ----------------------------------------------------------------------


class ExplodingReader:
    def __init__(self, exc: Exception, at: str = "issue") -> None:
        self.exc, self.at, self.inner = exc, at, None

    def blob_len(self, content_hash: str) -> int:
        raise self.exc

    def read_sample(self, content_hash, max_sample_bytes, vrf_seed):
        if self.at == "issue":
            raise self.exc
        return 0, 1, b"x"

    def read_window(self, content_hash, offset, size):
        raise self.exc


@pytest.mark.parametrize(
    ("exc", "at", "reason", "error"),
    [
        (RuntimeError("bug"), "issue", "UNKNOWN", "issue: RuntimeError: bug"),
        (
            PermissionError(13, "denied"),
            "issue",
            "READ_IO_ERROR",
            "issue: PermissionError: [Errno 13] denied",
        ),
        (BlobNotFound("h"), "answer", "MISSING_SAMPLE", "answer: blob not found: h"),
        (Io("disk on fire"), "answer", "READ_IO_ERROR", "answer: disk on fire"),
    ],
)
def test_run_check_turns_every_error_into_a_counted_failure(exc, at, reason, error) -> None:
    outcome = run_check(ExplodingReader(exc, at), request_for("h"), 100, 0)
    assert outcome == CheckOutcome("h", False, None, outcome.failure)
    assert outcome.failure is not None
    assert (outcome.failure.content_hash, outcome.failure.reason.value, outcome.failure.error) == (
        "h",
        reason,
        error,
    )


def test_run_check_late_answer_is_a_timeout(store, reader) -> None:
    request = request_for(store.put_bytes(make_blob(50)), issued_at_unix_ms=1_000, challenge_ttl_ms=100)
    assert run_check(reader, request, 1_105, 5).passed
    late = run_check(reader, request, 1_106, 5)
    assert not late.passed and late.failure is not None
    assert late.failure.reason == FailureReason.TIMEOUT
    assert (
        late.failure.error
        == "verify: response timestamp out of challenge window: responded_at=1106 allowed=[995, 1105]"
    )


# --- faults on real files -------------------------------------------------------------------------


def fault(store: LocalCasStore, content_hash: str, kind: str) -> None:
    path = store.blob_path(content_hash)
    data = path.read_bytes()
    if kind == "tampered":
        path.write_bytes(bytes([data[0] ^ 0x01]) + data[1:])
    elif kind == "truncated":
        os.truncate(path, len(data) // 2)
    elif kind == "deleted":
        path.unlink()
    elif kind == "unreadable":
        path.unlink()
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("healthy", None),
        ("tampered", "HASH_MISMATCH"),
        ("truncated", "HASH_MISMATCH"),
        ("deleted", "MISSING_SAMPLE"),
        ("unreadable", "READ_IO_ERROR"),
    ],
)
@pytest.mark.parametrize("size", [40, 200_000])
def test_faults_on_real_files(store, reader, kind, reason, size) -> None:
    good = store.put_bytes(make_blob(7))
    victim = store.put_bytes(make_blob(size))
    request = request_for(victim, max_sample_bytes=16)
    assert run_check(reader, request, 100, 0).passed  # warm any cache first
    fault(store, victim, kind) if kind != "healthy" else None
    outcome = run_check(reader, dataclasses.replace(request, vrf_seed="seed-after"), 100, 0)
    assert outcome.passed is (reason is None)
    if reason is not None:
        assert outcome.failure is not None and outcome.failure.reason == FailureReason(reason)
    report = probe_storage_challenges(
        store, "world-1", "node-a", 5, ProbeConfig(16, 2, 100, 0), reader=reader
    )
    assert report.blob_count == 2  # the index keeps a lost blob a candidate
    assert report.total_checks == 2
    assert report.failure_reasons == ({} if reason is None else {reason: 1})
    assert report.passed_checks == (2 if reason is None else 1)
    assert good in report.checked_hashes


def tree(root: Path) -> dict[str, tuple[int, bytes | None, int]]:
    """Every path under `root` with its mode, content and mtime, for before/after comparison."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            content = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            out[str(path.relative_to(root))] = (st.st_mode, content, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("with_index", [True, False])
def test_probing_leaves_the_store_byte_for_byte_unchanged(tmp_path, mode, with_index) -> None:
    root = tmp_path / "store"
    store = LocalCasStore(root)
    hashes = [store.put_bytes(make_blob(n)) for n in (0, 10, 300_000, 70_000)]
    store.pin(hashes[1])
    if not with_index:
        (root / "must_hold.idx").unlink()
    fault(store, hashes[1], "tampered")
    fault(store, hashes[2], "unreadable")
    fault(store, hashes[3], "deleted") if with_index else None
    before = tree(root)
    reader = make_reader(LocalCasStore(root), VerifyOptions(mode=mode, cache_dir=str(tmp_path / "cache")))
    auditor_store = LocalCasStore(root)
    for t in range(12):
        probe_storage_challenges(auditor_store, "w", "n", t, ProbeConfig(64, 4, 100, 0), reader=reader)
    assert tree(root) == before


def test_probing_a_missing_store_creates_nothing(tmp_path, mode) -> None:
    root = tmp_path / "absent"
    store = LocalCasStore(root)
    reader = make_reader(store, VerifyOptions(mode=mode, cache_dir=str(tmp_path / "cache")))
    report = probe_storage_challenges(store, "w", "n", 1, ProbeConfig(), reader=reader)
    assert report.total_checks == 0
    assert not root.exists()


# --- run_check's fast verify is the full verify ---------------------------------------------------


def reference_check(reader, request, responded_at: int, skew: int) -> CheckOutcome:
    """Issue, answer and verify through the public functions, as `run_check` did before issue 11."""
    content_hash = request.content_hash
    try:
        challenge = issue_storage_challenge(reader, request)
    except Exception as exc:
        return _error_outcome(content_hash, "issue", exc)
    try:
        receipt = answer_storage_challenge(reader, challenge, responded_at)
    except Exception as exc:
        return _error_outcome(content_hash, "answer", exc)
    try:
        verify_storage_challenge_receipt(challenge, receipt, skew)
    except WorldError as exc:
        reason = classify_receipt_reason(challenge, receipt, skew)
        return CheckOutcome(content_hash, False, None, CheckFailure(content_hash, reason, f"verify: {exc}"))
    return CheckOutcome(content_hash, True, receipt_to_proof_semantics(challenge, receipt), None)


class LyingReader:
    """Answers with other bytes than it issued: the receipt's hash mismatches."""

    def __init__(self, inner) -> None:
        self.inner = inner

    def blob_len(self, content_hash: str) -> int:
        return self.inner.blob_len(content_hash)

    def read_sample(self, content_hash, max_sample_bytes, vrf_seed):
        return self.inner.read_sample(content_hash, max_sample_bytes, vrf_seed)

    def read_window(self, content_hash, offset, size):
        return bytes(b ^ 1 for b in self.inner.read_window(content_hash, offset, size))


@pytest.mark.parametrize("lying", [False, True])
@pytest.mark.parametrize("skew", [-1, 0, 5])
def test_run_check_equals_issue_answer_full_verify(store, reader, lying, skew) -> None:
    content_hash = store.put_bytes(make_blob(300))
    subject = LyingReader(reader) if lying else reader
    for responded in (94, 95, 99, 100, 2_100, 2_105, 2_106):
        request = request_for(content_hash, issued_at_unix_ms=100, challenge_ttl_ms=2_000)
        expected = reference_check(subject, request, responded, skew)
        assert run_check(subject, request, responded, skew) == expected


def test_direct_init_builds_exactly_what_the_dataclass_init_built() -> None:
    """The wire types' faster `__init__` (issue 11): same arguments, defaults, errors, immutability."""
    from distfs_pipeline.core.models import StorageChallengeProofSemantics, direct_init

    semantics = StorageChallengeProofSemantics("n", SampleSource.UNKNOWN, "ref")
    assert (semantics.failure_reason, semantics.proof_kind_hint, semantics.vrf_seed_hint) == (None, "", None)
    assert semantics == StorageChallengeProofSemantics(
        node_id="n", sample_source=SampleSource.UNKNOWN, sample_reference="ref"
    )
    assert dataclasses.replace(semantics, node_id="m").node_id == "m"
    assert hash(semantics) == hash(StorageChallengeProofSemantics("n", SampleSource.UNKNOWN, "ref"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        semantics.node_id = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        StorageChallengeProofSemantics("n", SampleSource.UNKNOWN)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        StorageChallengeProofSemantics("n", SampleSource.UNKNOWN, "ref", bogus=1)  # type: ignore[call-arg]
    request = request_for("h")
    assert StorageChallengeRequest(*dataclasses.astuple(request)) == request

    @dataclasses.dataclass
    class Mutable:
        x: int

    with pytest.raises(TypeError):
        direct_init(Mutable)
