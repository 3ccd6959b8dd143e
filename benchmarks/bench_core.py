"""Check cost must follow the sample, not the blob (SPEC section 0, "I/O follows the sample").

Prints figures and ratios; asserts nothing (timings belong here, not in tests).

1. Blob size: the same rounds (one check each, same 64 KiB sample) on a store of 16 MiB blobs and on
   a store of 64 KiB blobs (the sample is the whole blob: its hash is known, see BLOB_SIZE_CASES) and
   of 1 MiB blobs (the same work). Chunked mode should cost about the same on both (target <= 1.5x); full
   mode (upstream's design: the whole blob is read and hashed at issue and again at answer) costs
   in proportion to the blob (expect ~250x).
2. Overhead: the per-check cost of `run_check` in chunked mode against the physical limit of a check,
   "pread of the window plus BLAKE3 of it" (issue 11; the loop opens and closes each file, as a check
   of a different blob each round must; the same without open/close is printed too), target <= 2x,
   on 16 MiB and 1 MiB raw blobs with 16 KiB (default) and 64 KiB chunks. The covering chunks are
   checked by their xxh3-64 checksums, then the sample is BLAKE3-hashed once for the protocol. A
   "verified floor" line runs exactly those reads and hashes with no protocol code, splitting the
   ratio into what verification costs (floor/limit) and what the issue/answer/verify code adds
   (run_check/floor). Compressed (O7CBLOB1) blobs are reported apart: their check decodes from the
   start of the payload to the window's end by design, so their floor is that decode.
3. First check in a new run (issue 11): once the chunk cache exists on disk (it outlives runs by
   default), a new reader's first check of a blob against that reader's steady checks (target
   <= 2x), and the cache bytes it reads (they follow the window: a header and a few digests).
4. Store size (100,000-blob rounds) is measured by `benchmarks/bench_rounds.py`.

All runs are warm: the files are in the page cache and the chunk cache is built before timing.
Stores are built once under /tmp/distfs-bench-core (override with DISTFS_BENCH_DIR).
Run: `python benchmarks/bench_core.py` (about a minute on 2 cores; `--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import zstandard
from xxhash import xxh3_64_digest as xxh3_64

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_codec import compressible  # this directory: the same compressible content

from distfs_pipeline.core import codec
from distfs_pipeline.core.challenge import SampleReader, issue_storage_challenge, probe_request, run_check
from distfs_pipeline.core.chunks import make_reader

try:
    from distfs_pipeline.core.chunks import CHECKSUM_PIECE_BYTES
except ImportError:  # an older reader (a checksum per chunk), measured side by side with this script
    CHECKSUM_PIECE_BYTES = 1 << 32
from distfs_pipeline.core.models import ProbeConfig, StorageChallengeRequest, VerifyOptions
from distfs_pipeline.core.store import LocalCasStore

BENCH_ROOT = Path(os.environ.get("DISTFS_BENCH_DIR", "/tmp/distfs-bench-core"))
MIB, KIB = 1 << 20, 1 << 10
SAMPLE = 64 * KIB
WORLD, NODE, START_MS, TICK_MS, TTL_MS = "bench-world", "bench-node", 1_700_000_000_000, 1_000, 30_000


def blob_bytes(index: int, size: int) -> bytes:
    """Unique, incompressible-enough content: a seeded BLAKE3 XOF stream."""
    return blake3.blake3(b"distfs-bench-%d-%d" % (index, size)).digest(length=size)


def cached_store(count: int, size: int, compressed: bool = False) -> tuple[LocalCasStore, list[str]]:
    """Build `count` blobs of `size` bytes once; a marker beside the store says it is complete.
    `compressed`: text-like content that `put` stores as O7CBLOB1 (else incompressible: raw)."""
    name = f"store-{count}x{size}" + ("-o7cblob1" if compressed else "")
    root = BENCH_ROOT / name
    done = BENCH_ROOT / f"{name}.done"
    store = LocalCasStore(root)
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        for index in range(count):
            store.put_bytes(compressible(index, size) if compressed else blob_bytes(index, size))
        done.write_text(f"{count} {size}\n")
        print(f"  built {count} x {size // KIB} KiB blobs in {time.perf_counter() - started:.1f}s: {root}")
    return store, list(store.candidates())


def requests(hashes: list[str], rounds: int, offset: int = 0) -> list[StorageChallengeRequest]:
    """The scheduled requests of `rounds` one-check rounds walking the store with the cursor."""
    probe = ProbeConfig(max_sample_bytes=SAMPLE, challenge_ttl_ms=TTL_MS)
    return [
        probe_request(
            probe, WORLD, NODE, START_MS + cursor * TICK_MS, 0, hashes[cursor % len(hashes)], cursor=cursor
        )
        for cursor in range(offset, offset + rounds)
    ]


def best_of(repeats: int, run: Callable[[], None]) -> float:
    """Best wall time of `repeats` runs: the machine is shared, the minimum is the least noisy."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return min(times)


def side_by_side(repeats: int, runs: list[Callable[[], None]]) -> list[float]:
    """Best wall time of each run, the runs interleaved (a, b, c, a, b, c, ...) so that a noisy
    neighbour slows all of them alike rather than one."""
    best = [float("inf")] * len(runs)
    for _ in range(repeats):
        for index, run in enumerate(runs):
            started = time.perf_counter()
            run()
            best[index] = min(best[index], time.perf_counter() - started)
    return best


def run_rounds(reader: SampleReader, batch: list[StorageChallengeRequest]) -> None:
    for request in batch:
        if not run_check(reader, request, request.issued_at_unix_ms, 5_000).passed:
            raise SystemExit(f"benchmark store is damaged: {request.content_hash}")


def reader_for(store: LocalCasStore, mode: str, cache: Path, chunk: int = 64 * KIB) -> SampleReader:
    reader = make_reader(store, VerifyOptions(mode=mode, chunk_size_bytes=chunk, cache_dir=str(cache)))
    for content_hash in store.candidates():  # warm: page cache and chunk cache
        run_rounds(reader, requests([content_hash], 1))
    return reader


# ---------------------------------------------------------------------- 1. blob size

# (mode, chunk size, small blob size, target); 16 KiB chunks are the configured default. Against
# 64 KiB blobs the sample is the whole blob, whose BLAKE3 the content check (or full verify) already
# computed, so those checks skip the sample hash a 16 MiB blob's window needs (BLAKE3 of 64 KiB, about
# 11 us here): unequal work. Against 1 MiB blobs both read and hash a 64 KiB window at a random offset:
# the same work, 16x the blob.
BLOB_SIZE_CASES = (
    ("chunked", 64 * KIB, 64 * KIB, "<= 1.5x"),
    ("chunked", 16 * KIB, 64 * KIB, "<= 1.5x"),
    ("chunked", 64 * KIB, 1 * MIB, "<= 1.5x"),
    ("chunked", 16 * KIB, 1 * MIB, "<= 1.5x"),
    ("full", 64 * KIB, 64 * KIB, "~250x"),
)


def bench_blob_size(args: argparse.Namespace, cache: Path) -> None:
    print(f"\n1. Same rounds, same {SAMPLE // KIB} KiB sample: 16 MiB blobs vs smaller blobs (per check)")
    big, big_hashes = cached_store(args.big_blobs, 16 * MIB)
    print(
        f"  {'mode':8} {'chunk':>6} {'rounds':>7} {'small blobs':>22} {'16 MiB blobs':>14}"
        f" {'ratio':>8}  target"
    )
    for mode, chunk, small_size, target in BLOB_SIZE_CASES:
        small, small_hashes = cached_store(args.big_blobs, small_size)
        rounds = args.rounds if mode == "chunked" else args.full_rounds
        tag = f"{mode}-{chunk}-{small_size}"
        small_reader = reader_for(small, mode, cache / f"small-{tag}", chunk)
        big_reader = reader_for(big, mode, cache / f"big-{tag}", chunk)
        small_batch, big_batch = requests(small_hashes, rounds), requests(big_hashes, rounds)
        small_us, big_us = (
            t / rounds * 1e6
            for t in side_by_side(
                5,
                [
                    lambda r=small_reader, b=small_batch: run_rounds(r, b),
                    lambda r=big_reader, b=big_batch: run_rounds(r, b),
                ],
            )
        )
        chunk_text = f"{chunk // KIB} KiB" if mode == "chunked" else "-"
        small_text = f"{small_size // KIB} KiB" if small_size < MIB else f"{small_size // MIB} MiB"
        print(
            f"  {mode:8} {chunk_text:>6} {rounds:>7} {small_text:>7}: {small_us:>9.1f} us {big_us:>11.1f} us "
            f"{big_us / small_us:>7.2f}x  {target}"
        )


# ---------------------------------------------------------------------- 2. overhead


def physical_limit(store: LocalCasStore, windows: list[tuple[str, int, int]]) -> None:
    """The physical limit of a check (issue 11: "pread of the window plus BLAKE3 of it"), with the
    open and close a check of a different blob each round cannot avoid. No verification, no protocol."""
    for content_hash, offset, size in windows:
        fd = os.open(store.blob_file(content_hash), os.O_RDONLY)
        try:
            blake3.blake3(os.pread(fd, size, offset)).hexdigest()
        finally:
            os.close(fd)


def pread_hash_only(fds: dict[str, int], windows: list[tuple[str, int, int]]) -> None:
    """The issue's words taken literally: pread of the window plus BLAKE3 of it, files kept open."""
    for content_hash, offset, size in windows:
        blake3.blake3(os.pread(fds[content_hash], size, offset)).hexdigest()


def file_checksums(path: str, chunk: int) -> bytes:
    """The xxh3-64 of every `chunk` of a blob file as stored (what the chunk cache records)."""
    with open(path, "rb") as handle:
        view = memoryview(handle.read())
    return b"".join([xxh3_64(view[at : at + chunk]) for at in range(0, len(view), chunk)])


def verified_floor(
    store: LocalCasStore, windows: list[tuple[str, int, int]], checksums: dict[str, bytes], chunk: int
) -> None:
    """The floor of a verified chunked check without any protocol code: the limit's open and read
    widened to the covering chunks, each chunk's xxh3-64 compared with its cached checksum, the
    window's view BLAKE3-hashed once, and the answer's `stat` (the reuse of the issue's bytes
    is conditional on it). What `run_check` adds on top of this is Python overhead."""
    for content_hash, offset, size in windows:
        path = store.blob_file(content_hash)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fstat(fd)
            first, last = offset // chunk, (offset + size - 1) // chunk
            block = os.pread(fd, (last - first + 1) * chunk, first * chunk)
            view, known = memoryview(block), checksums[content_hash]
            sums = b"".join([xxh3_64(view[at : at + chunk]) for at in range(0, len(view), chunk)])
            if sums != known[first * 8 : (last + 1) * 8]:
                raise SystemExit(f"benchmark store is damaged: {content_hash}")
            start = offset - first * chunk
            blake3.blake3(view[start : start + size]).hexdigest()  # a view, as the reader returns it
        finally:
            os.close(fd)
        os.stat(path)


def decode_floor(store: LocalCasStore, windows: list[tuple[str, int, int]]) -> None:
    """The floor of a compressed blob's check by design: a zstd frame cannot be entered in the
    middle, so the payload is decoded from its start to the window's end, then the window is
    BLAKE3-hashed. No chunk checksums, no protocol."""
    for content_hash, offset, size in windows:
        with open(store.blob_file(content_hash), "rb", buffering=0) as handle:
            handle.seek(codec.HEADER_LEN)
            reader = zstandard.ZstdDecompressor().stream_reader(handle, read_across_frames=True)
            left = offset
            while left:
                left -= len(reader.read(min(left, MIB)))
            blake3.blake3(reader.read(size)).hexdigest()


# (label, blob size, chunk size, layout); 16 KiB chunks are the configured default.
OVERHEAD_CASES = (
    ("16 MiB raw", 16 * MIB, 16 * KIB, "raw"),
    ("16 MiB raw", 16 * MIB, 64 * KIB, "raw"),
    ("1 MiB raw", 1 * MIB, 16 * KIB, "raw"),
    ("1 MiB raw", 1 * MIB, 64 * KIB, "raw"),
    ("64 KiB raw", 64 * KIB, 64 * KIB, "raw"),
)
COMPRESSED_CASES = (("16 MiB O7CBLOB1", 16 * MIB, 16 * KIB), ("1 MiB O7CBLOB1", 1 * MIB, 16 * KIB))


def sample_windows(reader: SampleReader, batch: list[StorageChallengeRequest]) -> list[tuple[str, int, int]]:
    windows = []
    for request in batch:
        challenge = issue_storage_challenge(reader, request)
        windows.append((request.content_hash, challenge.sample_offset, challenge.sample_size_bytes))
    return windows


def bench_overhead(args: argparse.Namespace, cache: Path) -> None:
    """A 64 KiB window at a random offset spans five 16 KiB pieces, so the chunked check reads 80 KiB
    and checks them by xxh3-64 (about 60 GB/s here, against 6 GB/s for BLAKE3), then BLAKE3-hashes the
    sample once (the answer reuses that hash). Chunks larger than 16 KiB are checksummed in 16 KiB
    pieces (`chunks.CHECKSUM_PIECE_BYTES`), so 64 KiB chunks read the same 80 KiB, not 128 KiB."""
    print(
        "\n2. Per-check cost of run_check (chunked, warm) vs the physical limit: pread of the window plus"
        "\n   BLAKE3 of it (open, pread, BLAKE3, close; 'fd open' = without the open/close). Target <= 2x."
    )
    for label, size, chunk, _layout in OVERHEAD_CASES:
        store, hashes = cached_store(args.big_blobs, size)
        batch = requests(hashes, args.rounds)
        reader = reader_for(store, "chunked", cache / f"overhead-{size}-{chunk}", chunk)
        windows = sample_windows(reader, batch)
        piece = min(chunk, CHECKSUM_PIECE_BYTES)  # the granularity of the cache's checksums
        checksums = {h: file_checksums(store.blob_file(h), piece) for h in hashes} if size > chunk else {}
        fds = {h: os.open(store.blob_file(h), os.O_RDONLY) for h in hashes}
        runs = [
            lambda r=reader, b=batch: run_rounds(r, b),
            lambda s=store, w=windows: physical_limit(s, w),
            lambda f=fds, w=windows: pread_hash_only(f, w),
        ]
        if size > chunk:  # a blob of one chunk is read whole and checked by its content hash
            runs.append(lambda s=store, w=windows, d=checksums, c=piece: verified_floor(s, w, d, c))
        try:
            check, limit, bare, *floor = (t / len(batch) * 1e6 for t in side_by_side(7, runs))
        finally:
            for fd in fds.values():
                os.close(fd)
        line = (
            f"  {label:>10} blobs, {chunk // KIB:>2} KiB chunks: run_check {check:5.1f} us,"
            f" limit {limit:5.1f} us, run_check/limit {check / limit:.2f}x (target <= 2x);"
            f" fd open {bare:5.1f} us, {check / bare:.2f}x"
        )
        if floor:
            line += (
                f"\n    verified floor {floor[0]:5.1f} us = {floor[0] / limit:.2f}x limit;"
                f" run_check {check / floor[0]:.2f}x floor"
            )
        print(line)
    print("  compressed blobs (decoded from the start to the window by design; not under the 2x target):")
    for label, size, chunk in COMPRESSED_CASES:
        store, hashes = cached_store(max(2, args.big_blobs // 4), size, compressed=True)
        rounds = max(8, args.full_rounds if size > MIB else args.rounds // 10)
        batch = requests(hashes, rounds)
        reader = reader_for(store, "chunked", cache / f"overhead-o7c-{size}-{chunk}", chunk)
        windows = sample_windows(reader, batch)
        runs = [
            lambda r=reader, b=batch: run_rounds(r, b),
            lambda s=store, w=windows: decode_floor(s, w),
            lambda s=store, w=windows: physical_limit(s, w),
        ]
        check, floor, limit = (t / len(batch) * 1e6 for t in side_by_side(3, runs))
        print(
            f"  {label:>15} blobs, {chunk // KIB:>2} KiB chunks: run_check {check:8.1f} us;"
            f" decode-to-window floor {floor:8.1f} us, run_check/floor {check / floor:.2f}x;"
            f" pread+BLAKE3 of a window {limit:5.1f} us ({check / limit:.0f}x)"
        )


# ---------------------------------------------------------------------- 3. first check of a run


FIRST_CHECK_CASES = (("1 MiB", 1 * MIB), ("16 MiB", 16 * MIB), ("64 MiB", 64 * MIB))


def bench_first_check(args: argparse.Namespace, cache: Path) -> None:
    """A new reader on an existing cache dir is what a new run is (the default cache dir is per store,
    outside the run dir). Page cache warm in both, so the figure is the cache's cost, not the disk's."""
    print("\n3. First check of a blob in a new run (cache on disk) vs steady checks (16 KiB chunks)")
    chunk = 16 * KIB
    for label, size in FIRST_CHECK_CASES:
        count = max(2, min(args.big_blobs, (256 * MIB) // size))
        store, hashes = cached_store(count, size)
        where = cache / f"first-{size}"
        steady_reader = reader_for(store, "chunked", where, chunk)  # builds and persists the cache
        batch = requests(hashes, args.rounds)
        firsts, cache_bytes, trials = [], 0, max(4, args.rounds // 50)
        for trial in range(trials):
            fresh = make_reader(store, VerifyOptions(chunk_size_bytes=chunk, cache_dir=str(where)))
            first_batch = requests(hashes, len(hashes), offset=10_000 + trial * len(hashes))
            started = time.perf_counter()
            run_rounds(fresh, first_batch)
            firsts.append((time.perf_counter() - started) / len(first_batch) * 1e6)
            cache_bytes += fresh.stats.cache_bytes_read  # type: ignore[attr-defined]
            assert fresh.stats.full_verifies == 0  # type: ignore[attr-defined]
        first = min(firsts)
        per_check = cache_bytes / (trials * len(hashes))
        # The same new reader's later checks: the steady state of every run after the first.
        run_rounds(fresh, requests(hashes, len(hashes), offset=50_000))
        steady_next, steady = side_by_side(
            3, [lambda r=fresh, b=batch: run_rounds(r, b), lambda r=steady_reader, b=batch: run_rounds(r, b)]
        )
        steady_next, steady = steady_next / len(batch) * 1e6, steady / len(batch) * 1e6
        print(
            f"  {label:>6} blobs: first {first:6.1f} us, steady {steady:6.1f} us, ratio {first / steady:.2f}x"
            f" (target <= 2x); cache bytes read per first check {per_check:.0f};"
            f" the new run's steady {steady_next:6.1f} us ({steady_next / steady:.2f}x)"
        )


# ---------------------------------------------------------------------- 4. store size (slot)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big-blobs", type=int, default=24, help="blobs per store (default 24)")
    parser.add_argument("--rounds", type=int, default=2_000, help="rounds in chunked mode (default 2000)")
    parser.add_argument("--full-rounds", type=int, default=72, help="rounds in full mode (default 72)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 4 blobs, few rounds")
    parser.add_argument("--sections", default="123", help="which sections to run (default 123)")
    args = parser.parse_args()
    if args.quick:
        args.big_blobs, args.rounds, args.full_rounds = 4, 200, 8
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="chunk-cache-", dir=BENCH_ROOT) as cache_dir:
        cache = Path(cache_dir)
        for section, bench in (("1", bench_blob_size), ("2", bench_overhead), ("3", bench_first_check)):
            if section in args.sections:
                bench(args, cache)
    print(f"\ntotal {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
