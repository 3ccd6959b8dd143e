"""O7CBLOB1 compressed blobs (SPEC 2.1, issue 7): upstream's encoding and read rules, every fallback,
both verify modes on raw, compressed and mixed stores, on real files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import blake3
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distfs_pipeline.core import codec
from distfs_pipeline.core.challenge import run_check, sample_window
from distfs_pipeline.core.chunks import COMPRESSED, RAW, ChunkedReader, FullReader, rekey_cache_files
from distfs_pipeline.core.errors import BlobHashMismatch
from distfs_pipeline.core.models import StorageChallengeRequest
from distfs_pipeline.core.store import LocalCasStore, blake3_hex

CHUNK = 1024


def text(n: int, label: str = "t") -> bytes:
    """Compressible bytes: words picked by a BLAKE3 stream (about 3x with zstd)."""
    words = (b"alpha", b"beta", b"gamma", b"delta", b"store", b"chunk", b"node", b"proof")
    stream = blake3.blake3(label.encode()).digest(length=n)
    return b" ".join(words[b % len(words)] for b in stream)[:n]


def noise(n: int, label: str = "n") -> bytes:
    return blake3.blake3(label.encode()).digest(length=n)


def request(content_hash: str, seed: str = "seed", max_bytes: int = 100) -> StorageChallengeRequest:
    return StorageChallengeRequest("cid", "w", "n", content_hash, max_bytes, 1_000, 100, seed)


def outcome_key(outcome) -> tuple:
    return (outcome.passed, outcome.failure.reason if outcome.failure else None, outcome.semantics)


def both_readers(
    store: LocalCasStore, tmp_path: Path, chunk: int = CHUNK
) -> tuple[FullReader, ChunkedReader]:
    return FullReader(store), ChunkedReader(store, chunk, tmp_path / "cache")


def seed_where(content_hash: str, blob_len: int, wanted, max_bytes: int = 100) -> str:
    """A seed whose sample window (of `max_bytes`) starts at an offset `wanted` accepts."""
    seeds = (f"s{i}" for i in range(1000))
    return next(s for s in seeds if wanted(sample_window(content_hash, s, blob_len, max_bytes)[0]))


def write_blob(store: LocalCasStore, content_hash: str, body: bytes) -> None:
    store.blobs_dir.mkdir(parents=True, exist_ok=True)
    store.blob_path(content_hash).write_bytes(body)


# --- vectors -----------------------------------------------------------------------------------------


def test_compressible_blob_of_1_kib_is_stored_with_the_header_and_reads_back_equal(tmp_path) -> None:
    """Upstream's own expectation: a compressible blob >= 1 KiB starts with the magic, reads back equal."""
    store = LocalCasStore(tmp_path / "store")
    data = text(1024)
    content_hash = store.put_bytes(data)
    body = store.blob_path(content_hash).read_bytes()
    assert body[:8] == b"O7CBLOB1"
    assert int.from_bytes(body[8:16], "little") == 1024
    assert body[16:80] == content_hash.encode("ascii")
    assert zstandard.ZstdDecompressor().decompress(body[80:]) == data  # a plain level-3 zstd frame
    assert len(body) < len(data)
    assert store.get(content_hash) == data and store.get_verified(content_hash) == data
    full, fast = both_readers(store, tmp_path)
    for reader in (full, fast):
        assert run_check(reader, request(content_hash), 1_000, 0).passed
        assert reader.blob_len(content_hash) == 1024  # the decoded length


@pytest.mark.parametrize(
    ("data", "why"),
    [(text(1023), "below 1 KiB"), (noise(4096), "incompressible: the encoding is not shorter")],
)
def test_blobs_stored_raw_by_upstreams_rule(tmp_path, data, why) -> None:
    store = LocalCasStore(tmp_path / "store")
    content_hash = store.put_bytes(data)
    assert store.blob_path(content_hash).read_bytes() == data, why
    full, fast = both_readers(store, tmp_path)
    for reader in (full, fast):
        assert run_check(reader, request(content_hash), 1_000, 0).passed


def test_raw_option_writes_the_older_layout(tmp_path) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = text(50_000)
    content_hash = store.put_bytes(data)
    assert store.blob_path(content_hash).read_bytes() == data
    with pytest.raises(ValueError, match="blob_format"):
        LocalCasStore(tmp_path / "x", blob_format="zip")


def test_encoding_is_exactly_the_header_and_a_zstd_frame() -> None:
    data = text(5000)
    content_hash = blake3_hex(data)
    encoded = codec.encode(content_hash, data)
    assert encoded == b"O7CBLOB1" + (5000).to_bytes(8, "little") + content_hash.encode() + encoded[80:]
    assert codec.decode(encoded, content_hash) == data
    assert codec.encode("short-hash", data) == data  # no valid 64-byte header field: raw


def test_a_stream_without_content_size_and_several_frames_decode_as_upstream() -> None:
    """`zstd::stream::encode_all` writes no content size; `decode_all` reads across frames and
    skippable frames; a frame checksum is verified."""
    data = text(40_000)
    content_hash = blake3_hex(data)
    obj = zstandard.ZstdCompressor(level=3).compressobj()
    streamed = obj.compress(data[:20_000]) + obj.flush()
    second = zstandard.ZstdCompressor(level=3, write_checksum=True).compress(data[20_000:])
    skippable = (0x184D2A53).to_bytes(4, "little") + (5).to_bytes(4, "little") + b"12345"
    header = b"O7CBLOB1" + len(data).to_bytes(8, "little") + content_hash.encode()
    assert codec.decode(header + streamed + skippable + second, content_hash) == data
    for broken in (header + streamed + second[:-4], header + streamed + skippable[:-1]):
        assert codec.decode(broken, content_hash) == broken  # incomplete frame: raw


# --- every fallback: the file's bytes are used, so the check fails as HASH_MISMATCH -------------------


def _encoded(data: bytes) -> tuple[str, bytes]:
    content_hash = blake3_hex(data)
    return content_hash, codec.encode_compressed(content_hash, data)


def _fallback_cases() -> dict[str, tuple[str, bytes]]:
    data = text(20_000, "fallback")
    content_hash, body = _encoded(data)
    other = blake3_hex(b"another blob")
    frame = body[80:]
    middle = len(body) // 2
    cases = {
        "magic": body[:7] + b"X" + body[8:],
        "short-file": body[:79],
        "header-only": body[:80],
        "header-hash": body[:16] + other.encode() + frame,
        "length-bigger": body[:8] + (len(data) + 1).to_bytes(8, "little") + body[16:],
        "length-smaller": body[:8] + (len(data) - 1).to_bytes(8, "little") + body[16:],
        "payload-flip": body[:middle] + bytes([body[middle] ^ 0x10]) + body[middle + 1 :],
        "payload-garbage": body[:80] + b"\x00" * len(frame),
        "truncated": body[:-7],
        "trailing-garbage": body + b"junk",
        "two-frames": body + frame,
    }
    return {name: (content_hash, value) for name, value in cases.items()}


FALLBACKS = _fallback_cases()


@pytest.mark.parametrize("case", sorted(FALLBACKS))
@pytest.mark.parametrize("chunk", [CHUNK, 1 << 20])
def test_each_fallback_reads_the_file_raw_and_fails_as_upstream(tmp_path, case, chunk) -> None:
    content_hash, body = FALLBACKS[case]
    store = LocalCasStore(tmp_path / "store")
    write_blob(store, content_hash, body)
    assert store.get(content_hash) == body  # upstream's `get`: the file's bytes unchanged
    with pytest.raises(BlobHashMismatch, match=f"actual={blake3_hex(body)}"):
        store.get_verified(content_hash)
    full, fast = both_readers(store, tmp_path, chunk)
    for seed in ("a", "b"):
        expected = run_check(full, request(content_hash, seed), 1_000, 0)
        assert expected.failure is not None and expected.failure.reason.value == "HASH_MISMATCH"
        got = run_check(fast, request(content_hash, seed), 1_000, 0)
        assert outcome_key(got) == outcome_key(expected) and got.failure.error == expected.failure.error


def test_a_raw_blob_that_starts_with_the_magic_reads_raw(tmp_path) -> None:
    """Upstream's expectation: a file that only looks compressed is read raw (and verifies)."""
    store = LocalCasStore(tmp_path / "store")
    looks = b"O7CBLOB1" + (10).to_bytes(8, "little") + blake3_hex(b"x").encode() + noise(3000)
    content_hash = store.put_bytes(looks)  # incompressible: stored raw, as upstream would
    assert store.blob_path(content_hash).read_bytes() == looks
    assert store.get_verified(content_hash) == looks
    full, fast = both_readers(store, tmp_path)
    for seed in ("a", "b", "c"):
        expected = run_check(full, request(content_hash, seed, 500), 1_000, 0)
        assert expected.passed
        assert outcome_key(run_check(fast, request(content_hash, seed, 500), 1_000, 0)) == outcome_key(
            expected
        )
    assert fast._entries[content_hash].layout == RAW


# --- chunked mode on compressed blobs -----------------------------------------------------------------


def compressed_store(tmp_path: Path, size: int = 200_000) -> tuple[LocalCasStore, str, bytes]:
    store = LocalCasStore(tmp_path / "store")
    data = text(size, "big")
    content_hash = store.put_bytes(data)
    assert store.blob_path(content_hash).stat().st_size > 4 * CHUNK
    return store, content_hash, data


def test_chunked_windows_of_a_compressed_blob_equal_upstreams(tmp_path) -> None:
    store, content_hash, data = compressed_store(tmp_path)
    full, fast = both_readers(store, tmp_path)
    for seed in range(40):
        for max_bytes in (1, 100, CHUNK, 3 * CHUNK + 5, len(data)):
            req = request(content_hash, f"s{seed}", max_bytes)
            assert outcome_key(run_check(fast, req, 1_000, 0)) == outcome_key(run_check(full, req, 1_000, 0))
            offset, size, sample = fast.read_sample(content_hash, max_bytes, f"s{seed}")
            assert sample == data[offset : offset + size]
    entry = fast._entries[content_hash]
    assert (entry.layout, entry.decoded_len, fast.stats.full_verifies) == (COMPRESSED, len(data), 1)


def test_first_check_decodes_once_and_later_checks_stop_at_the_window_end(tmp_path) -> None:
    store, content_hash, data = compressed_store(tmp_path, 1_000_000)
    fast = ChunkedReader(store, CHUNK, tmp_path / "cache")
    assert run_check(fast, request(content_hash, "first"), 1_000, 0).passed
    # issue verified the whole blob and captured the window on the way; answer reused it
    assert (fast.stats.full_verifies, fast.stats.decoded_bytes, fast.stats.memo_hits) == (1, len(data), 1)
    file_size = store.blob_path(content_hash).stat().st_size
    early = seed_where(content_hash, len(data), lambda offset: offset < 100_000)
    before = fast.stats.decoded_bytes, fast.stats.window_disk_bytes
    assert run_check(fast, request(content_hash, early), 1_000, 0).passed
    offset, size = sample_window(content_hash, early, len(data), 100)
    assert fast.stats.decoded_bytes - before[0] == offset + size  # decoded up to the window end, once
    assert fast.stats.window_disk_bytes - before[1] < file_size // 2  # only the on-disk prefix


def test_a_new_reader_uses_the_cache_file_for_a_compressed_blob(tmp_path) -> None:
    store, content_hash, data = compressed_store(tmp_path, 1_000_000)
    ChunkedReader(store, CHUNK, tmp_path / "cache").read_sample(content_hash, 100, "a")
    second = ChunkedReader(store, CHUNK, tmp_path / "cache")
    early = seed_where(content_hash, len(data), lambda offset: offset < 100_000)
    assert run_check(second, request(content_hash, early), 1_000, 0).passed
    assert (second.stats.full_verifies, second.stats.cache_file_hits) == (0, 1)
    chunks = -(-store.blob_path(content_hash).stat().st_size // CHUNK)
    assert second.stats.cache_bytes_read < 32 * chunks // 3  # the header and the prefix's digests only


def _silent_flip(store: LocalCasStore, cache: Path, content_hash: str, position: int) -> None:
    """Flip one on-disk byte and re-key the cache: rot no metadata shows (as scenarios do)."""
    path = store.blob_path(content_hash)
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)
        handle.seek(position)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    rekey_cache_files(cache, content_hash, path.stat())


@pytest.mark.parametrize("position", [0, 12, 40, 79, 80, 2000])
def test_silent_damage_in_the_read_prefix_of_a_compressed_blob_fails_as_upstream(tmp_path, position) -> None:
    """Header bytes (magic, length, hash) and payload bytes before the window: every one is in an
    on-disk chunk the decode reads, so the mismatch is seen, confirmed in full, and fails as upstream."""
    store, content_hash, data = compressed_store(tmp_path)
    cache = tmp_path / "cache"
    ChunkedReader(store, CHUNK, cache).read_sample(content_hash, 100, "warm")
    _silent_flip(store, cache, content_hash, position)
    full, fast = FullReader(store), ChunkedReader(store, CHUNK, cache)
    late = seed_where(content_hash, len(data), lambda offset: offset > 100_000)
    expected = run_check(full, request(content_hash, late), 1_000, 0)
    got = run_check(fast, request(content_hash, late), 1_000, 0)
    assert not expected.passed and outcome_key(got) == outcome_key(expected)
    assert got.failure.error == expected.failure.error
    assert (fast.stats.cache_file_hits, fast.stats.confirmations) == (1, 1)


def test_damage_past_the_window_is_the_documented_trade_off(tmp_path) -> None:
    store, content_hash, data = compressed_store(tmp_path, 1_000_000)
    cache = tmp_path / "cache"
    ChunkedReader(store, CHUNK, cache).read_sample(content_hash, 100, "warm")
    file_size = store.blob_path(content_hash).stat().st_size
    _silent_flip(store, cache, content_hash, file_size - 10)
    fast = ChunkedReader(store, CHUNK, cache)
    early = seed_where(content_hash, len(data), lambda offset: offset < 10_000)
    assert run_check(fast, request(content_hash, early), 1_000, 0).passed  # unseen until sampled
    assert not run_check(fast, request(content_hash, "x", len(data)), 1_000, 0).passed  # the whole blob


# --- bounded trust (issue 8) --------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000_000_000_000_000

    def __call__(self) -> int:
        return self.now


@pytest.mark.parametrize("layout", ["raw", "o7cblob1"])
def test_cached_digests_vouch_for_at_most_the_interval(tmp_path, layout) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format=layout)
    content_hash = store.put_bytes(text(100_000))
    clock = FakeClock()
    day_ms = 24 * 3600 * 1000

    def reader() -> ChunkedReader:
        return ChunkedReader(store, CHUNK, tmp_path / "cache", full_verify_interval_ms=day_ms, clock_ns=clock)

    first = reader()
    first.read_sample(content_hash, 100, "a")
    clock.now += day_ms * 1_000_000 - 1
    first.read_sample(content_hash, 100, "b")
    second = reader()
    second.read_sample(content_hash, 100, "c")
    assert (first.stats.full_verifies, second.stats.full_verifies) == (1, 0)  # within the day: trusted
    clock.now += 2
    from_file = reader()
    from_file.read_sample(content_hash, 100, "d")  # due: re-read in full (and the file refreshed)
    assert (from_file.stats.interval_verifies, from_file.stats.full_verifies) == (1, 1)
    first.read_sample(content_hash, 100, "d")  # its memory entry is due too
    assert (first.stats.interval_verifies, first.stats.full_verifies) == (1, 2)
    clock.now -= 10 * day_ms * 1_000_000  # a clock stepped back: a verify "in the future" is not trusted
    late = reader()
    late.read_sample(content_hash, 100, "e")
    assert late.stats.interval_verifies == 1


def test_interval_zero_never_expires(tmp_path) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    content_hash = store.put_bytes(noise(100_000))
    clock = FakeClock()
    ChunkedReader(store, CHUNK, tmp_path / "cache", clock_ns=clock).read_sample(content_hash, 100, "a")
    clock.now += 10**20
    again = ChunkedReader(store, CHUNK, tmp_path / "cache", full_verify_interval_ms=0, clock_ns=clock)
    again.read_sample(content_hash, 100, "b")
    assert again.stats.full_verifies == 0


def test_a_planted_symlink_in_the_cache_is_neither_read_nor_written_through(tmp_path) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    content_hash = store.put_bytes(noise(100_000))
    ChunkedReader(store, CHUNK, tmp_path / "cache").read_sample(content_hash, 100, "a")
    (cache_file,) = (tmp_path / "cache").rglob("*.chk")
    victim = tmp_path / "victim"
    shutil.copyfile(cache_file, victim)
    cache_file.unlink()
    cache_file.symlink_to(victim)
    reader = ChunkedReader(store, CHUNK, tmp_path / "cache")
    assert run_check(reader, request(content_hash), 1_000, 0).passed
    assert (reader.stats.cache_file_hits, reader.stats.full_verifies, reader.stats.cache_write_errors) == (
        0,
        1,
        1,
    )
    assert cache_file.is_symlink() and victim.read_bytes()  # neither followed nor replaced


def test_a_persisted_listing_older_than_the_bound_is_not_trusted(tmp_path) -> None:
    root = tmp_path / "store"
    (root / "blobs").mkdir(parents=True)
    data = b"plain"
    (root / "blobs" / f"{blake3_hex(data)}.blob").write_bytes(data)
    past = 1_600_000_000_000_000_000
    os.utime(root / "blobs", ns=(past, past))
    LocalCasStore(root, listing_cache_dir=tmp_path / "c").candidates()  # persisted
    fresh = LocalCasStore(root, listing_cache_dir=tmp_path / "c")
    path = fresh.listing_cache_path
    assert path is not None and fresh._load_persisted_listing(
        path, past, os.stat(root / "blobs").st_ino, os.stat(root / "blobs").st_dev
    )
    stale = LocalCasStore(root, listing_cache_dir=tmp_path / "c", cache_max_age_s=0)
    st_blobs = os.stat(root / "blobs")
    assert stale._load_persisted_listing(path, past, st_blobs.st_ino, st_blobs.st_dev) is None


# --- property: mixed stores, full and chunked agree wherever the damage is read -----------------------

DAMAGES = ("none", "flip", "flip-silent", "flip-in-window", "truncate", "extend")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blobs=st.lists(st.tuples(st.integers(0, 30_000), st.booleans(), st.booleans()), min_size=1, max_size=4),
    damage=st.sampled_from(DAMAGES),
    where=st.floats(0, 1, exclude_max=True),
    victim=st.integers(0, 3),
    chunk=st.sampled_from([512, 4096]),
    seeds=st.lists(st.text("abcdef", min_size=1, max_size=4), min_size=1, max_size=4),
    max_bytes=st.sampled_from([1, 100, 3000, 70_000]),
)
def test_full_and_chunked_agree_on_mixed_stores_wherever_the_damage_is_read(
    tmp_path_factory, blobs, damage, where, victim, chunk, seeds, max_bytes
) -> None:
    root = tmp_path_factory.mktemp("mixed")
    cache = root / "cache"
    compressed, raw = LocalCasStore(root / "store"), LocalCasStore(root / "store", blob_format="raw")
    hashes = []
    for i, (size, compressible, as_raw) in enumerate(blobs):
        data = text(size, f"p{i}") if compressible else noise(size, f"p{i}")
        hashes.append((raw if as_raw else compressed).put_bytes(data))
    target = hashes[victim % len(hashes)]
    full, warm = FullReader(compressed), ChunkedReader(compressed, chunk, cache)
    for content_hash in hashes:  # cache built before the damage
        warm.read_sample(content_hash, max_bytes, "warm")
    path = compressed.blob_path(target)
    size = path.stat().st_size
    position = int(where * size) if size else 0
    if damage == "flip-in-window" and size:
        # where the first seed's check reads on the intact file: the damage goes inside it
        intact = ChunkedReader(compressed, chunk, cache)
        run_check(intact, request(target, seeds[0], max_bytes), 1_000, 0)
        start = _window_disk_start(intact, target, request(target, seeds[0], max_bytes))
        length = intact.stats.window_disk_bytes or size
        position = min(start + int(where * length), size - 1)
    if damage in ("flip-silent", "flip-in-window") and size:
        _silent_flip(compressed, cache, target, position)
    elif damage == "flip" and size:
        _loud_flip(path, position)
    elif damage == "truncate" and size:
        os.truncate(path, position)
    elif damage == "extend":
        with open(path, "ab") as handle:
            handle.write(b"\x01")
    if damage == "flip-in-window":
        req = request(target, seeds[0], max_bytes)
        got = run_check(ChunkedReader(compressed, chunk, cache), req, 1_000, 0)
        assert outcome_key(got) == outcome_key(run_check(full, req, 1_000, 0))
    for seed in seeds:
        req = request(target, seed, max_bytes)
        expected = run_check(full, req, 1_000, 0)
        probe = ChunkedReader(compressed, chunk, cache)
        got = run_check(probe, req, 1_000, 0)
        read_up_to = probe.stats.window_disk_bytes  # the prefix (or chunks) this check read and vouched for
        window_start = _window_disk_start(probe, target, req)
        damage_read = (
            damage not in ("flip-silent", "flip-in-window")
            or size <= chunk
            or window_start <= position < window_start + read_up_to
        )
        if damage_read:
            assert outcome_key(got) == outcome_key(expected), (damage, position, size)
        else:
            assert got.passed or outcome_key(got) == outcome_key(expected)


def _loud_flip(path: Path, position: int) -> None:
    """A user-space write: the ctime moves, so the cache no longer vouches for the file."""
    body = bytearray(path.read_bytes())
    body[position] ^= 0x01
    path.write_bytes(bytes(body))


def _window_disk_start(reader: ChunkedReader, content_hash: str, req: StorageChallengeRequest) -> int:
    """Where on disk the check's read began: 0 for a compressed blob, the first covering chunk for raw."""
    entry = reader._entries.get(content_hash)
    if entry is None or entry.layout == COMPRESSED:
        return 0
    offset, _ = sample_window(content_hash, req.vrf_seed, entry.decoded_len, req.max_sample_bytes)
    return offset // reader.chunk_size * reader.chunk_size


# --- whole rounds: upstream_full audits a damaged mixed store as upstream, chunked agrees -------------


def _mixed_damaged_store(root: Path) -> tuple[LocalCasStore, dict[str, str | None]]:
    """Raw and compressed blobs, small and multi-chunk, damaged in upstream's fallback ways
    (user-space writes, so file metadata shows them); hash -> expected failure reason."""
    store, raw = LocalCasStore(root), LocalCasStore(root, blob_format="raw")
    expected: dict[str, str | None] = {}
    for i, size in enumerate((10, 900, 3_000, 70_000, 300_000)):
        expected[store.put_bytes(text(size, f"c{i}"))] = None
        expected[raw.put_bytes(noise(size, f"r{i}"))] = None
    looks = b"O7CBLOB1" + (5).to_bytes(8, "little") + blake3_hex(b"y").encode() + noise(20_000)
    expected[raw.put_bytes(looks)] = None  # only looks compressed: reads raw and passes
    damages = {
        "header-magic": lambda b: b"X" + b[1:],
        "header-length": lambda b: (
            b[:8] + (int.from_bytes(b[8:16], "little") + 1).to_bytes(8, "little") + b[16:]
        ),
        "header-hash": lambda b: b[:16] + blake3_hex(b"z").encode() + b[80:],
        "payload": lambda b: b[:-100] + bytes([b[-100] ^ 0x40]) + b[-99:],
        "truncated": lambda b: b[: len(b) - 3],
    }
    for i, (name, damage) in enumerate(damages.items()):
        content_hash = store.put_bytes(text(50_000 + i, f"d{name}"))
        path = store.blob_path(content_hash)
        assert path.read_bytes()[:8] == codec.MAGIC
        path.write_bytes(damage(path.read_bytes()))
        expected[content_hash] = "HASH_MISMATCH"
    gone = store.put_bytes(text(40_000, "gone"))
    store.blob_path(gone).unlink()
    expected[gone] = "MISSING_SAMPLE"
    return store, expected


def test_rounds_on_a_damaged_mixed_store_equal_upstream_in_full_and_chunked_mode(tmp_path) -> None:
    from distfs_pipeline.core.auditor import Auditor
    from distfs_pipeline.core.models import AdaptivePolicy, CursorState, ProbeConfig, VerifyOptions

    store, expected = _mixed_damaged_store(tmp_path / "store")
    probe = ProbeConfig(max_sample_bytes=4096, challenges_per_tick=len(expected))
    results = {}
    for mode in ("full", "chunked"):
        verify = VerifyOptions(mode=mode, chunk_size_bytes=CHUNK, cache_dir=str(tmp_path / f"cache-{mode}"))
        auditor = Auditor(
            store, world_id="w", node_id="n", probe=probe, policy=AdaptivePolicy(), verify=verify
        )
        state, reports = CursorState(), []
        for round_number in range(3):
            report, state = auditor.run_round(state, 1_000 + round_number * 1_000)
            reports.append(report.to_dict())
        results[mode] = (reports, state.to_dict())
    reports, _ = results["full"]
    for report in reports:
        reasons = {f["content_hash"]: f["reason"] for f in report["failures"]}
        assert reasons == {h: r for h, r in expected.items() if r is not None}
        assert report["passed_checks"] == sum(r is None for r in expected.values())
        assert report["latest_proof_semantics"] is not None
    assert results["chunked"] == results["full"]  # check for check: outcome, semantics, state


def test_answering_a_challenge_issued_elsewhere_and_window_errors_on_compressed_blobs(tmp_path) -> None:
    from distfs_pipeline.core.challenge import answer_storage_challenge, issue_storage_challenge

    store, content_hash, data = compressed_store(tmp_path)
    full = FullReader(store)
    challenge = issue_storage_challenge(full, request(content_hash, "elsewhere", 5000))
    fresh = ChunkedReader(store, CHUNK, tmp_path / "cache")  # no memo, no entry: verifies, then reads
    assert answer_storage_challenge(fresh, challenge, 1_050) == answer_storage_challenge(
        full, challenge, 1_050
    )
    for reader in (ChunkedReader(store, CHUNK, tmp_path / "cache2"), fresh):  # building, then cached
        for offset, size in ((len(data) - 10, 11), (len(data) + 1, 0), (2**64, 1)):
            with pytest.raises(Exception) as got:
                reader.read_window(content_hash, offset, size)
            with pytest.raises(Exception) as want:
                full.read_window(content_hash, offset, size)
            assert (type(got.value), str(got.value)) == (type(want.value), str(want.value))
