"""The chunk cache's per-chunk checksums (issue 11: xxh3-64, format DFSCHK03) must catch what they are for.

Bit rot below the file system keeps a file's size, mtime, inode (and ctime, which no test can put back):
these tests flip one bit in place, put the mtime back with `os.utime`, and re-stamp the cache with the
file's new ctime (as `scenarios` does), so only the checksums stand between the damage and a pass.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path

import blake3
import pytest

from distfs_pipeline.core import chunks, codec
from distfs_pipeline.core.challenge import run_check
from distfs_pipeline.core.chunks import ChunkedReader, cache_file_path, decode_cache_file, rekey_cache_files
from distfs_pipeline.core.models import StorageChallengeRequest
from distfs_pipeline.core.store import LocalCasStore, blake3_hex
from distfs_pipeline.core.window import sample_window

CHUNK = 1024
WINDOW = 3 * CHUNK


def request(content_hash: str, seed: str, max_bytes: int = WINDOW) -> StorageChallengeRequest:
    return StorageChallengeRequest("cid", "w", "n", content_hash, max_bytes, 1_000, 100, seed)


def text(n: int) -> bytes:
    """Compressible bytes (about 3x with zstd)."""
    words = (b"alpha", b"beta", b"gamma", b"delta", b"store", b"chunk", b"node", b"proof")
    return b" ".join(words[b % len(words)] for b in blake3.blake3(b"rot").digest(length=n))[:n]


def flip_bit_in_place(path: Path, position: int, bit: int = 0) -> None:
    """One bit changed where it lies: same inode, same size, the mtime put back (ctime moves)."""
    before = os.stat(path)
    with open(path, "r+b") as handle:
        handle.seek(position)
        byte = handle.read(1)[0]
        handle.seek(position)
        handle.write(bytes([byte ^ (1 << bit)]))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(path)
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (
        before.st_size,
        before.st_mtime_ns,
        before.st_ino,
    )


def as_if_unchanged(
    reader: ChunkedReader, cache: Path, content_hash: str, path: Path, run: str
) -> ChunkedReader:
    """Make the damage invisible to metadata: the cache is re-stamped with the file's new ctime.
    `run="same"` keeps the reader (its entry in memory); `"new"` starts a reader on the cache file."""
    st = os.stat(path)
    if run == "same":
        entry = reader._entries[content_hash]
        reader._entries[content_hash] = dataclasses.replace(entry, key=chunks._file_key(st))
        return reader
    assert rekey_cache_files(cache, content_hash, st) == 1
    return ChunkedReader(reader.store, CHUNK, cache)


def seed_for(content_hash: str, blob_len: int, wanted) -> str:
    return next(
        s
        for s in (f"s{i}" for i in range(2000))
        if wanted(sample_window(content_hash, s, blob_len, WINDOW)[0])
    )


@pytest.mark.parametrize("run", ["same", "new"])
@pytest.mark.parametrize(
    "where", ["head of the first covered chunk", "inside the window", "tail of the last"]
)
def test_one_flipped_bit_in_a_raw_windows_chunks_is_caught_by_the_steady_check(tmp_path, run, where) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = bytes(range(256)) * (16 * CHUNK // 256)
    content_hash = store.put_bytes(data)
    cache = tmp_path / "cache"
    reader = ChunkedReader(store, CHUNK, cache)
    seed = seed_for(content_hash, len(data), lambda o: o % CHUNK > 100 and 2 * CHUNK <= o <= 10 * CHUNK)
    assert run_check(reader, request(content_hash, seed), 1_000, 0).passed  # builds the cache
    offset, size = sample_window(content_hash, seed, len(data), WINDOW)
    first, last = offset // CHUNK * CHUNK, ((offset + size - 1) // CHUNK + 1) * CHUNK
    position = {
        "head of the first covered chunk": first + 3,
        "inside the window": offset + size // 2,
        "tail of the last": last - 2,
    }[where]
    path = store.blob_path(content_hash)
    flip_bit_in_place(path, position, bit=5)
    reader = as_if_unchanged(reader, cache, content_hash, path, run)
    outcome = run_check(reader, request(content_hash, seed), 1_000, 0)
    assert outcome.failure is not None and outcome.failure.reason.value == "HASH_MISMATCH"
    # Condemned only after the full verify confirmed it (upstream's verdict and message).
    assert reader.stats.confirmations == 1
    assert outcome.failure.error.endswith(f"actual={blake3_hex(path.read_bytes())}")


@pytest.mark.parametrize("run", ["same", "new"])
def test_one_flipped_bit_in_a_compressed_prefix_never_reaches_the_decoder(tmp_path, monkeypatch, run) -> None:
    """The decoder is fed only chunks whose checksums match: a flipped bit in the prefix is caught
    before zstd sees it (zstd could otherwise decode damaged literals to wrong bytes silently)."""
    store = LocalCasStore(tmp_path / "store")
    data = text(96 * CHUNK)
    content_hash = store.put_bytes(data)
    path = store.blob_path(content_hash)
    assert path.read_bytes()[:8] == codec.MAGIC and os.stat(path).st_size > 8 * CHUNK
    cache = tmp_path / "cache"
    reader = ChunkedReader(store, CHUNK, cache)
    seed = seed_for(content_hash, len(data), lambda o: o > len(data) // 2)
    assert run_check(reader, request(content_hash, seed), 1_000, 0).passed  # builds the cache
    flip_bit_in_place(path, 2 * CHUNK + 100, bit=3)  # inside on-disk chunk 2, well before the window
    reader = as_if_unchanged(reader, cache, content_hash, path, run)
    fed: list[int] = []
    real = chunks.codec.stream_prefix

    def spy(read):
        def counting(n: int) -> bytes:
            piece = read(n)
            fed.append(len(piece))
            return piece

        return real(counting)

    monkeypatch.setattr(chunks.codec, "stream_prefix", spy)
    outcome = run_check(reader, request(content_hash, seed), 1_000, 0)
    assert outcome.failure is not None and outcome.failure.reason.value == "HASH_MISMATCH"
    assert reader.stats.confirmations == 1
    assert sum(fed) <= 2 * CHUNK - codec.HEADER_LEN  # nothing of the damaged chunk was decoded


def old_format_file(
    content_hash: str, st: os.stat_result, chunk: int, body: bytes, verified_at: int
) -> bytes:
    """A cache file of format 02 (a BLAKE3 per chunk) that is right in every other way: correct
    seal, this blob, this file state, digests that match the file."""
    name = content_hash.encode()
    fields = struct.pack(
        "<8sBxxxIQqQqQqH", b"DFSCHK02", chunks.RAW, chunk, st.st_size, st.st_mtime_ns, st.st_ino,
        st.st_ctime_ns, st.st_size, verified_at, len(name),
    )  # fmt: skip
    digests = b"".join(blake3.blake3(body[at : at + chunk]).digest() for at in range(0, len(body), chunk))
    return fields + name + blake3.blake3(fields + name).digest() + digests


def test_a_cache_file_of_the_old_format_is_rebuilt_not_trusted(tmp_path) -> None:
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = bytes(range(256)) * (8 * CHUNK // 256)
    content_hash = store.put_bytes(data)
    path = store.blob_path(content_hash)
    cache_file = cache_file_path(tmp_path / "cache" / f"chunks-{CHUNK}", content_hash)
    cache_file.parent.mkdir(parents=True)
    cache_file.write_bytes(old_format_file(content_hash, os.stat(path), CHUNK, data, 1_000))
    reader = ChunkedReader(store, CHUNK, tmp_path / "cache", clock_ns=lambda: 2_000)
    assert run_check(reader, request(content_hash, "s"), 1_000, 0).passed
    stats = reader.stats
    assert (stats.cache_file_hits, stats.cache_file_rejected, stats.full_verifies) == (0, 1, 1)
    raw = cache_file.read_bytes()
    assert raw[:8] == b"DFSCHK03"
    entry = decode_cache_file(raw, content_hash)
    assert entry is not None and entry.verified_at_ns == 2_000
    # 8 bytes per on-disk chunk, each the xxh3-64 of that chunk as stored.
    assert len(raw) == chunks._data_start(content_hash) + 8 * 8
    assert entry.digests == b"".join(
        chunks._checksum(data[at : at + CHUNK]) for at in range(0, len(data), CHUNK)
    )


def test_a_wrong_checksum_in_the_cache_is_confirmed_never_condemned(tmp_path) -> None:
    """The other direction: a cache checksum flipped (the blob intact) costs a full verify that
    passes, and the rebuilt cache holds the right checksum again."""
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = bytes(range(256)) * (16 * CHUNK // 256)
    content_hash = store.put_bytes(data)
    cache = tmp_path / "cache"
    seed = seed_for(content_hash, len(data), lambda o: o >= 4 * CHUNK and o + WINDOW <= 8 * CHUNK)
    assert run_check(ChunkedReader(store, CHUNK, cache), request(content_hash, seed), 1_000, 0).passed
    (cache_file,) = sorted(cache.rglob("*.chk"))
    raw = bytearray(cache_file.read_bytes())
    at = chunks._data_start(content_hash) + 5 * 8  # the checksum of chunk 5, inside the window
    raw[at] ^= 0x40
    cache_file.write_bytes(bytes(raw))
    reader = ChunkedReader(store, CHUNK, cache)
    assert run_check(reader, request(content_hash, seed), 1_000, 0).passed
    assert (reader.stats.cache_file_hits, reader.stats.confirmations, reader.stats.full_verifies) == (1, 1, 1)
    assert cache_file.read_bytes()[at] == raw[at] ^ 0x40


def test_a_new_run_reads_the_windows_checksums_first_then_keeps_them_in_memory(tmp_path, monkeypatch) -> None:
    """The first check of a run that finds the cache on disk reads only the header and its window's
    checksums; the second loads the blob's checksums once; later checks read no cache file at all."""
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = bytes(range(256)) * (64 * CHUNK // 256)
    content_hash = store.put_bytes(data)
    cache = tmp_path / "cache"
    assert run_check(ChunkedReader(store, CHUNK, cache), request(content_hash, "build"), 1_000, 0).passed
    reader = ChunkedReader(store, CHUNK, cache)
    header = chunks._data_start(content_hash)
    read_so_far = []
    for seed in ("a", "b", "c", "d"):
        assert run_check(reader, request(content_hash, seed), 1_000, 0).passed
        read_so_far.append(reader.stats.cache_bytes_read)
    assert read_so_far[0] <= header + 4 * 8  # a 3 KiB window covers at most 4 chunks
    assert read_so_far[1] - read_so_far[0] == 64 * 8  # all 64 checksums, once
    assert read_so_far[3] == read_so_far[1]
    assert reader.stats.full_verifies == 0 and reader.stats.cache_file_hits == 1


def test_large_chunks_are_checksummed_in_16_kib_pieces(tmp_path) -> None:
    """With 64 KiB chunks a 64 KiB window at a random offset reads its covering 16 KiB pieces (at most
    96 KiB), not two 64 KiB chunks; a file of at most one chunk is still read whole."""
    piece = chunks.CHECKSUM_PIECE_BYTES
    assert piece == 16 * 1024
    store = LocalCasStore(tmp_path / "store", blob_format="raw")
    data = blake3.blake3(b"pieces").digest(length=1 << 20)
    content_hash = store.put_bytes(data)
    whole = store.put_bytes(data[: 64 * 1024])
    reader = ChunkedReader(store, 64 * 1024, tmp_path / "cache")
    assert reader.piece == piece
    for seed in ("warm", "a", "b", "c"):
        before = reader.stats.window_disk_bytes
        assert run_check(reader, request(content_hash, seed, 64 * 1024), 1_000, 0).passed
        offset, size = sample_window(content_hash, seed, len(data), 64 * 1024)
        covered = ((offset + size - 1) // piece + 1) * piece - offset // piece * piece
        assert seed == "warm" or reader.stats.window_disk_bytes - before == covered <= 96 * 1024
    (cache_file,) = sorted((tmp_path / "cache" / "chunks-65536").rglob("*.chk"))
    assert len(cache_file.read_bytes()) == chunks._data_start(content_hash) + (len(data) // piece) * 8
    assert run_check(reader, request(whole, "s", 64 * 1024), 1_000, 0).passed
    assert reader.stats.small_reads == 1 and reader.stats.full_verifies == 1
    # A flipped bit in the window (metadata made to look unchanged) is caught at this granularity too.
    offset, size = sample_window(content_hash, "d", len(data), 64 * 1024)
    path = store.blob_path(content_hash)
    flip_bit_in_place(path, offset + size - 1)
    reader = as_if_unchanged(reader, tmp_path / "cache", content_hash, path, "same")
    outcome = run_check(reader, request(content_hash, "d", 64 * 1024), 1_000, 0)
    assert outcome.failure is not None and outcome.failure.reason.value == "HASH_MISMATCH"
    assert reader.stats.confirmations == 1
