"""Sample readers: chunked mode equals upstream on small blobs, reads only the sampled chunks of
large ones, and never trusts a stale or corrupt chunk cache."""

from __future__ import annotations

import dataclasses
import os
import signal
from pathlib import Path

import pytest

from distfs_pipeline.core import chunks
from distfs_pipeline.core import window as window_module
from distfs_pipeline.core.challenge import (
    answer_storage_challenge,
    issue_storage_challenge,
    run_check,
    sample_window,
)
from distfs_pipeline.core.chunks import ChunkedReader, FullReader, decode_cache_file, make_reader
from distfs_pipeline.core.errors import (
    BlobHashMismatch,
    BlobNotFound,
    DistributedValidationFailed,
    Io,
    UsageError,
)
from distfs_pipeline.core.models import StorageChallengeRequest, VerifyOptions
from distfs_pipeline.core.store import LocalCasStore, blake3_hex

CHUNK = 1024


def make_blob(n: int) -> bytes:
    return bytes((i % 251) + 3 for i in range(n))


@pytest.fixture
def store(tmp_path: Path) -> LocalCasStore:
    return LocalCasStore(tmp_path / "store", blob_format="raw")  # these tests are about the raw layout


def chunked(store: LocalCasStore, tmp_path: Path, **options) -> ChunkedReader:
    base = dict(mode="chunked", chunk_size_bytes=CHUNK, cache_dir=str(tmp_path / "cache"))
    reader = make_reader(store, VerifyOptions(**{**base, **options}))
    assert isinstance(reader, ChunkedReader)
    return reader


def request(content_hash: str, seed: str = "seed", max_bytes: int = 100) -> StorageChallengeRequest:
    return StorageChallengeRequest("cid", "w", "n", content_hash, max_bytes, 1_000, 100, seed)


def outcome_key(outcome) -> tuple:
    return (outcome.passed, outcome.failure.reason if outcome.failure else None, outcome.semantics)


def count_pread_bytes(monkeypatch) -> list[int]:
    sizes: list[int] = []
    real = os.pread

    def spy(fd: int, n: int, offset: int) -> bytes:
        data = real(fd, n, offset)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(chunks.os, "pread", spy)
    return sizes


def set_key(reader: ChunkedReader, store: LocalCasStore, content_hash: str) -> None:
    """Simulate corruption that keeps every file attribute (bit rot): re-key the cached entry."""
    entry = reader._entries[content_hash]
    st = os.stat(store.blob_path(content_hash))
    entry = dataclasses.replace(entry, key=chunks._file_key(st))
    reader._entries[content_hash] = entry
    reader._write_cache_file(entry)


# --- options ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "fast"}, "probe.verify_mode"),
        ({"chunk_size_bytes": 0}, "probe.chunk_size_bytes"),
        ({"full_verify_every": -1}, "probe.full_verify_every"),
    ],
)
def test_invalid_options_are_usage_errors(store, options, message) -> None:
    with pytest.raises(UsageError, match=message):
        make_reader(store, VerifyOptions(**options))


@pytest.mark.parametrize("inside", ["", "blobs", "cache/deeper"])
def test_cache_dir_inside_the_store_is_refused(store, inside) -> None:
    with pytest.raises(UsageError, match="inside the audited store"):
        make_reader(store, VerifyOptions(cache_dir=str(store.root / inside)))


def test_mode_selects_the_reader(store, tmp_path) -> None:
    assert isinstance(make_reader(store, VerifyOptions(mode="full")), FullReader)
    assert isinstance(make_reader(store, VerifyOptions(mode="chunked")), ChunkedReader)


# --- small blobs: identical to upstream ---------------------------------------------------------------


def damage(store: LocalCasStore, content_hash: str, kind: str) -> None:
    path = store.blob_path(content_hash)
    data = path.read_bytes()
    if kind == "flip-last":
        path.write_bytes(data[:-1] + bytes([data[-1] ^ 0x80]))
    elif kind == "rewrite":
        path.write_bytes(b"tampered")
    elif kind == "truncate":
        os.truncate(path, len(data) - 1)
    elif kind == "extend":
        path.write_bytes(data + b"\0")
    elif kind == "delete":
        path.unlink()
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")


KINDS = ["healthy", "flip-last", "rewrite", "truncate", "extend", "delete", "directory", "empty"]


@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
@pytest.mark.parametrize("kind", KINDS)
def test_small_blob_outcomes_equal_upstream(tmp_path, algorithm, kind) -> None:
    store = LocalCasStore(tmp_path / "store", algorithm, blob_format="raw")
    sizes = [1, 2, 17, 100, CHUNK - 1, CHUNK]
    hashes = [store.put_bytes(make_blob(n)) for n in sizes]
    full = make_reader(store, VerifyOptions(mode="full"))
    fast = chunked(store, tmp_path)
    for content_hash in hashes:  # warm the chunked reader first: its state must not matter
        assert run_check(fast, request(content_hash), 1_000, 0).passed
    for content_hash in hashes:
        if kind != "healthy":
            damage(store, content_hash, kind)
        for seed in ("a", "b", "c"):
            for max_bytes in (1, 16, 100, CHUNK):
                req = request(content_hash, seed, max_bytes)
                for at in (1_000, 1_101):
                    expected = run_check(full, req, at, 0)
                    assert outcome_key(run_check(fast, req, at, 0)) == outcome_key(expected)
                    if expected.failure is not None:
                        assert fast_failure_text(fast, req, at) == expected.failure.error


def fast_failure_text(reader, req, at) -> str:
    outcome = run_check(reader, req, at, 0)
    assert outcome.failure is not None
    return outcome.failure.error


def test_small_blob_challenges_are_identical_in_both_modes(store, tmp_path) -> None:
    full = make_reader(store, VerifyOptions(mode="full"))
    fast = chunked(store, tmp_path)
    for n in (0, 5, 64, 333, CHUNK):
        req = request(store.put_bytes(make_blob(n)), f"s{n}", 48)
        a, b = issue_storage_challenge(full, req), issue_storage_challenge(fast, req)
        assert a == b
        assert answer_storage_challenge(full, a, 1_050) == answer_storage_challenge(fast, b, 1_050)


def test_small_blobs_never_touch_the_cache(store, tmp_path) -> None:
    fast = chunked(store, tmp_path)
    for n in (10, CHUNK):
        assert run_check(fast, request(store.put_bytes(make_blob(n))), 1_000, 0).passed
    assert not (tmp_path / "cache").exists()
    assert fast.stats.full_verifies == 0 and fast.stats.small_reads == 2


# --- large blobs: I/O follows the sample ----------------------------------------------------------


def test_large_blob_is_verified_once_then_read_by_chunks(store, tmp_path, monkeypatch) -> None:
    size = 64 * CHUNK + 7
    content_hash = store.put_bytes(make_blob(size))
    fast = chunked(store, tmp_path)
    assert run_check(fast, request(content_hash, "warm"), 1_000, 0).passed
    assert fast.stats.full_verifies == 1
    sizes = count_pread_bytes(monkeypatch)
    for i in range(20):
        assert run_check(fast, request(content_hash, f"s{i}", 100), 1_000, 0).passed
    assert fast.stats.full_verifies == 1
    assert fast.stats.memo_hits == 21  # every answer reuses the bytes its issue verified
    assert len(sizes) == 20 and max(sizes) <= 2 * CHUNK  # one read per check, at most two chunks


def test_large_blob_windows_equal_the_full_reader(store, tmp_path) -> None:
    data = make_blob(5 * CHUNK + 300)
    content_hash = store.put_bytes(data)
    full = make_reader(store, VerifyOptions(mode="full"))
    fast = chunked(store, tmp_path)
    for seed in range(60):
        for max_bytes in (1, 7, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, len(data)):
            a = fast.read_sample(content_hash, max_bytes, f"{seed}")
            assert a == full.read_sample(content_hash, max_bytes, f"{seed}")
            offset, size, sample = a
            assert sample == data[offset : offset + size]
    assert fast.read_window(content_hash, len(data) - 3, 3) == data[-3:]
    assert fast.read_window(content_hash, 0, 0) == b""


def test_large_blob_window_errors_match_upstream(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(3 * CHUNK))
    for reader in (make_reader(store, VerifyOptions(mode="full")), chunked(store, tmp_path)):
        with pytest.raises(
            DistributedValidationFailed, match="out of bounds: offset=3072 size=1 blob_len=3072"
        ):
            reader.read_window(content_hash, 3 * CHUNK, 1)
        with pytest.raises(DistributedValidationFailed, match="max_sample_bytes must be >= 1"):
            reader.read_sample(content_hash, 0, "s")


def test_tampered_large_blob_fails_at_build_and_caches_nothing(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(8 * CHUNK))
    damage(store, content_hash, "flip-last")
    fast = chunked(store, tmp_path)
    with pytest.raises(BlobHashMismatch) as info:
        fast.read_sample(content_hash, 10, "s")
    assert info.value.actual == blake3_hex(store.blob_path(content_hash).read_bytes())
    assert content_hash not in fast._entries
    assert not list((tmp_path / "cache").rglob("*.chk"))


@pytest.mark.parametrize("kind", ["truncate", "extend", "rewrite", "flip-last", "empty"])
def test_any_metadata_change_forces_a_full_verify(store, tmp_path, kind) -> None:
    content_hash = store.put_bytes(make_blob(8 * CHUNK))
    fast = chunked(store, tmp_path)
    fast.read_sample(content_hash, 10, "s")
    damage(store, content_hash, kind)
    with pytest.raises(BlobHashMismatch):
        fast.read_sample(content_hash, 10, "s")
    # A blob cut to one chunk or less is verified whole by the small-blob path.
    assert fast.stats.full_verifies + fast.stats.small_reads == 2
    assert fast.stats.chunk_reads == 1


def test_tamper_restoring_size_and_mtime_is_still_caught(store, tmp_path) -> None:
    """An ordinary write changes ctime even when mtime is put back: the cache is not trusted."""
    content_hash = store.put_bytes(make_blob(8 * CHUNK))
    path = store.blob_path(content_hash)
    fast = chunked(store, tmp_path)
    fast.read_sample(content_hash, 10, "s")
    st = path.stat()
    damage(store, content_hash, "flip-last")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    with pytest.raises(BlobHashMismatch):
        fast.read_sample(content_hash, 10, "s")


def test_silent_corruption_is_caught_when_sampled(store, tmp_path) -> None:
    """The documented trade-off: bit rot that keeps all attributes is found by sampling it."""
    data = make_blob(8 * CHUNK)
    content_hash = store.put_bytes(data)
    fast = chunked(store, tmp_path)
    fast.read_sample(content_hash, 10, "s")
    damage(store, content_hash, "flip-last")
    set_key(fast, store, content_hash)
    seeds = [f"s{i}" for i in range(400)]
    in_last = [s for s in seeds if sample_window(content_hash, s, len(data), 10)[0] >= 7 * CHUNK]
    elsewhere = [s for s in seeds if sample_window(content_hash, s, len(data), 10)[0] + 10 <= 7 * CHUNK]
    assert in_last and elsewhere
    assert run_check(fast, request(content_hash, elsewhere[0], 10), 1_000, 0).passed
    outcome = run_check(fast, request(content_hash, in_last[0], 10), 1_000, 0)
    assert outcome.failure is not None and outcome.failure.reason.value == "HASH_MISMATCH"
    # Confirmed by a full verify before it is condemned: upstream's outcome and upstream's message.
    assert outcome.failure.error.endswith(f"actual={blake3_hex(store.blob_path(content_hash).read_bytes())}")
    assert fast.stats.confirmations == 1
    # Once seen bad, every later check is a full verify and fails, whatever it samples.
    for seed in elsewhere[:3]:
        assert not run_check(fast, request(content_hash, seed, 10), 1_000, 0).passed


@pytest.mark.parametrize("every", [1, 3])
def test_full_verify_every_catches_unsampled_corruption(store, tmp_path, every) -> None:
    data = make_blob(8 * CHUNK)
    content_hash = store.put_bytes(data)
    fast = chunked(store, tmp_path, full_verify_every=every)
    clean = [
        s for s in (f"s{i}" for i in range(400)) if sample_window(content_hash, s, len(data), 10)[0] < CHUNK
    ]
    results = []
    for check in range(1, 2 * every + 1):
        if check == 2:
            damage(store, content_hash, "flip-last")
            set_key(fast, store, content_hash)
        results.append(run_check(fast, request(content_hash, clean[check], 10), 1_000, 0).passed)
    first_full_after_damage = every if every > 1 else 2
    assert results[: first_full_after_damage - 1] == [True] * (first_full_after_damage - 1)
    assert results[first_full_after_damage - 1] is False


def test_deleted_between_issue_and_answer_is_missing(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(4 * CHUNK))
    fast = chunked(store, tmp_path)
    challenge = issue_storage_challenge(fast, request(content_hash))
    store.blob_path(content_hash).unlink()
    with pytest.raises(BlobNotFound):
        answer_storage_challenge(fast, challenge, 1_000)


def test_directory_in_place_of_a_large_blob_is_an_io_error(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(4 * CHUNK))
    fast = chunked(store, tmp_path)
    fast.read_sample(content_hash, 10, "s")
    damage(store, content_hash, "directory")
    with pytest.raises(Io, match="Is a directory"):
        fast.read_sample(content_hash, 10, "s")
    with pytest.raises(Io):
        fast.blob_len(content_hash)


@pytest.mark.parametrize("mode", ["full", "chunked"])
@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_non_regular_file_at_a_must_hold_name_is_a_counted_io_error(store, tmp_path, mode, kind) -> None:
    """Our index keeps names the upstream listing skips (FIFOs, symlinks to devices). Reading one
    must be a READ_IO_ERROR in both modes, never a probe blocked on a FIFO or reading /dev/zero."""
    content_hash = store.put_bytes(make_blob(100))
    path = store.blob_path(content_hash)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    assert list(store.candidates()) == [content_hash]

    def hung(_signum, _frame):
        raise TimeoutError("the read blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        reader = make_reader(store, VerifyOptions(mode=mode, chunk_size_bytes=CHUNK))
        outcome = run_check(reader, request(content_hash), 1_000, 0)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert not outcome.passed
    assert outcome.failure is not None
    assert outcome.failure.reason.value == "READ_IO_ERROR"
    assert outcome.failure.error.endswith("failed: not a regular file")


def test_sha256_store_uses_sha256_for_the_whole_blob_and_blake3_for_samples(tmp_path) -> None:
    store = LocalCasStore(tmp_path / "store", "sha256")
    data = make_blob(6 * CHUNK)
    content_hash = store.put_bytes(data)
    fast = chunked(store, tmp_path)
    challenge = issue_storage_challenge(fast, request(content_hash))
    window = data[challenge.sample_offset : challenge.sample_offset + challenge.sample_size_bytes]
    assert challenge.expected_sample_hash == blake3_hex(window)
    damage(store, content_hash, "truncate")
    with pytest.raises(BlobHashMismatch) as info:
        fast.read_sample(content_hash, 10, "s")
    assert len(info.value.actual) == 64 and info.value.actual != blake3_hex(data[:-1])


# --- the cache file -----------------------------------------------------------------------------------


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").rglob("*.chk"))


def test_cache_file_is_reused_by_a_new_reader(store, tmp_path, monkeypatch) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    chunked(store, tmp_path).read_sample(content_hash, 10, "s")
    (cache_file,) = cache_files(tmp_path)
    assert cache_file.is_relative_to(tmp_path / "cache" / f"chunks-{CHUNK}")
    sizes = count_pread_bytes(monkeypatch)
    second = chunked(store, tmp_path)
    assert run_check(second, request(content_hash, "t"), 1_000, 0).passed
    assert (second.stats.cache_file_hits, second.stats.full_verifies) == (1, 0)
    assert sum(sizes) <= 2 * CHUNK


def test_cache_is_keyed_by_chunk_size(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    chunked(store, tmp_path).read_sample(content_hash, 10, "s")
    other = chunked(store, tmp_path, chunk_size_bytes=CHUNK * 2)
    other.read_sample(content_hash, 10, "s")
    assert other.stats.full_verifies == 1
    assert len(cache_files(tmp_path)) == 2


@pytest.mark.parametrize("corruption", ["flip-header", "truncate", "extend", "garbage", "empty"])
def test_corrupt_cache_file_is_rebuilt_never_trusted(store, tmp_path, corruption) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    chunked(store, tmp_path).read_sample(content_hash, 10, "s")
    (cache_file,) = cache_files(tmp_path)
    raw = bytearray(cache_file.read_bytes())
    if corruption == "flip-header":
        raw[20] ^= 0x01
    elif corruption == "truncate":
        raw = raw[: len(raw) - 1]
    elif corruption == "extend":
        raw += b"\0" * 32
    elif corruption == "garbage":
        raw = bytearray(b"x" * len(raw))
    else:
        raw = bytearray()
    cache_file.write_bytes(bytes(raw))
    reader = chunked(store, tmp_path)
    assert run_check(reader, request(content_hash), 1_000, 0).passed
    assert (reader.stats.cache_file_hits, reader.stats.full_verifies) == (0, 1)
    assert decode_cache_file(cache_file.read_bytes(), content_hash) is not None  # rewritten valid


def test_corrupt_cached_digest_costs_a_full_verify_never_a_false_failure(store, tmp_path) -> None:
    """Digests are read only where a window needs them, so their corruption is found only there:
    the mismatch is confirmed by a full verify (which passes), never reported as HASH_MISMATCH."""
    data = make_blob(16 * CHUNK)
    content_hash = store.put_bytes(data)
    chunked(store, tmp_path).read_sample(content_hash, 10, "s")
    (cache_file,) = cache_files(tmp_path)
    raw = bytearray(cache_file.read_bytes())
    raw[-1] ^= 0x01  # the digest of the last chunk
    cache_file.write_bytes(bytes(raw))
    seeds = (f"s{i}" for i in range(1000))
    seed = next(s for s in seeds if sample_window(content_hash, s, len(data), 10)[0] >= 15 * CHUNK)
    reader = chunked(store, tmp_path)
    assert run_check(reader, request(content_hash, seed, 10), 1_000, 0).passed
    assert (reader.stats.cache_file_hits, reader.stats.confirmations, reader.stats.full_verifies) == (1, 1, 1)
    assert decode_cache_file(cache_file.read_bytes(), content_hash).digests[-1] == raw[-1] ^ 0x01


def test_forged_cache_with_valid_checksum_but_other_file_state_is_ignored(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    chunked(store, tmp_path).read_sample(content_hash, 10, "s")
    path = store.blob_path(content_hash)
    replacement = path.with_name("replacement")
    replacement.write_bytes(path.read_bytes())
    os.replace(replacement, path)  # same bytes, new inode: the old digests describe another file
    reader = chunked(store, tmp_path)
    reader.read_sample(content_hash, 10, "s")
    assert (reader.stats.cache_file_hits, reader.stats.full_verifies) == (0, 1)


def test_unwritable_cache_dir_does_not_fail_checks(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    (tmp_path / "cache").write_bytes(b"a file where the cache dir should be")
    reader = chunked(store, tmp_path)
    for seed in ("a", "b"):
        assert run_check(reader, request(content_hash, seed), 1_000, 0).passed
    assert reader.stats.cache_write_errors == 1 and reader.stats.full_verifies == 1


def test_memory_only_cache_without_cache_dir(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(16 * CHUNK))
    reader = make_reader(store, VerifyOptions(chunk_size_bytes=CHUNK))
    for seed in ("a", "b", "c"):
        assert run_check(reader, request(content_hash, seed), 1_000, 0).passed
    assert isinstance(reader, ChunkedReader) and reader.stats.full_verifies == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_blob_len(store, tmp_path) -> None:
    content_hash = store.put_bytes(make_blob(123))
    for reader in (make_reader(store, VerifyOptions(mode="full")), chunked(store, tmp_path)):
        assert reader.blob_len(content_hash) == 123
        with pytest.raises(BlobNotFound):
            reader.blob_len(blake3_hex(b"absent"))


def test_a_whole_small_blob_sample_is_hashed_once_per_check(store, tmp_path, monkeypatch) -> None:
    """Issue 11: the content check of a blob of at most one chunk already is the BLAKE3 of the whole
    blob, which is the sample when the sample covers it; the issue reuses it (the answer reuses the
    issue's). A larger window is still hashed once, and the receipt's hash is the sample's."""

    small = store.put_bytes(make_blob(CHUNK - 5))
    large = store.put_bytes(make_blob(8 * CHUNK))
    fast = chunked(store, tmp_path)
    calls: list[int] = []
    real = window_module.blake3_hex

    def spy(data: bytes) -> str:
        calls.append(len(data))
        return real(data)

    monkeypatch.setattr(window_module, "blake3_hex", spy)
    outcome = run_check(fast, request(small, "s", CHUNK), 1_000, 0)
    assert outcome.passed and outcome.semantics is not None
    assert outcome.semantics.post_commitment_hint == small  # BLAKE3 of the whole blob
    assert calls == []
    outcome = run_check(fast, request(large, "s", 100), 1_000, 0)
    assert outcome.passed and outcome.semantics is not None
    offset, size = sample_window(large, "s", 8 * CHUNK, 100)
    assert outcome.semantics.post_commitment_hint == blake3_hex(make_blob(8 * CHUNK)[offset : offset + size])
    assert calls == [100]


def test_a_steady_check_hashes_only_the_window_with_blake3(store, tmp_path, monkeypatch) -> None:
    """Issue 11: the covering chunks are checked by xxh3-64, so the only BLAKE3 of a steady check
    is the sample's own (once: the answer reuses the issue's bytes and hash)."""
    data = make_blob(16 * CHUNK)
    content_hash = store.put_bytes(data)
    fast = chunked(store, tmp_path)
    assert run_check(fast, request(content_hash, "warm", 3 * CHUNK), 1_000, 0).passed  # builds the cache
    hashed: list[int] = []
    real = chunks.blake3.blake3

    def spy(data=b"", *args, **kwargs):
        hashed.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(chunks.blake3, "blake3", spy)
    outcome = run_check(fast, request(content_hash, "s", 3 * CHUNK), 1_000, 0)
    assert outcome.passed and fast.stats.full_verifies == 1 and fast.stats.memo_hits == 2
    assert [n for n in hashed if n > 100] == [3 * CHUNK]  # (the others: seeds and offsets, 66 bytes)
    monkeypatch.undo()
    offset, size = sample_window(content_hash, "s", len(data), 3 * CHUNK)
    assert outcome.semantics.post_commitment_hint == blake3_hex(data[offset : offset + size])


@pytest.mark.parametrize("blob_format", ["raw", "o7cblob1"])
def test_a_window_of_the_whole_large_blob_is_not_hashed_again(tmp_path, monkeypatch, blob_format) -> None:
    """Its sample hash is the content hash the full verify established (issue 11)."""

    store = LocalCasStore(tmp_path / "store", blob_format=blob_format)
    half_random = b"".join(os.urandom(16) + bytes(16) for _ in range(12 * CHUNK // 32))
    data = make_blob(6 * CHUNK) if blob_format == "raw" else half_random  # compressed: over 1 chunk
    content_hash = store.put_bytes(data)
    fast = chunked(store, tmp_path)
    assert run_check(fast, request(content_hash, "warm", 10), 1_000, 0).passed  # builds the cache
    calls: list[int] = []
    monkeypatch.setattr(window_module, "blake3_hex", lambda d: calls.append(len(d)) or blake3_hex(d))
    outcome = run_check(fast, request(content_hash, "s", len(data)), 1_000, 0)
    assert outcome.passed and outcome.semantics is not None
    assert outcome.semantics.post_commitment_hint == content_hash == blake3_hex(data)
    assert fast.stats.full_verifies == 1 and fast.stats.small_reads == 0 and calls == []
