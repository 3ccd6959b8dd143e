"""Checks of O7CBLOB1 (zstd-compressed) blobs: the default probe against upstream's (issue 7).

Prints figures and ratios; asserts nothing (timings belong here, not in tests).

A store of 16 MiB compressible blobs written by our `put` (so stored compressed, as today's nodes
store them). Per check, side by side in one run:

1. Time, warm page cache, chunk cache built: the default probe (`chunked`, 16 KiB chunks, 64 KiB
   sample: decodes the stream only up to the window's end, checking the on-disk chunks it feeds the
   decoder) against `probe=upstream_full` (reads, decodes and hashes the whole blob at issue and again
   at answer, as upstream does). Target: 0.3x or less.
2. Bytes read from disk per check with a cold page cache (`posix_fadvise(DONTNEED)` on the blob and
   cache files before each check; `/proc/self/io` `read_bytes`), for both probes.

Stores are built once under /tmp/distfs-bench-codec (override with DISTFS_BENCH_DIR).
Run: `python benchmarks/bench_codec.py` (about a minute on 2 cores; `--quick` for a smoke run).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distfs_pipeline.core import codec
from distfs_pipeline.core.challenge import SampleReader, probe_request, run_check
from distfs_pipeline.core.chunks import ChunkedReader, make_reader
from distfs_pipeline.core.models import ProbeConfig, StorageChallengeRequest, VerifyOptions
from distfs_pipeline.core.store import LocalCasStore

BENCH_ROOT = Path(os.environ.get("DISTFS_BENCH_DIR", "/tmp/distfs-bench-codec"))
MIB, KIB = 1 << 20, 1 << 10
BLOB = 16 * MIB
WORLD, NODE, START_MS, TICK_MS = "bench-world", "bench-node", 1_700_000_000_000, 1_000
_ALPHABET = np.frombuffer(b"etaoinshrdlucmfwypvbgkjqxz .,;\n-", dtype=np.uint8)


def compressible(index: int, size: int) -> bytes:
    """Text-like bytes (a skewed 32-symbol alphabet): zstd level 3 stores them in about 55%."""
    weights = 1 / np.arange(1, 33) ** 1.1
    rng = np.random.default_rng(index)
    return _ALPHABET[rng.choice(32, size=size, p=weights / weights.sum())].tobytes()


def build_store(count: int) -> tuple[LocalCasStore, list[str]]:
    root = BENCH_ROOT / f"store-{count}x16MiB-o7cblob1"
    done = root.with_name(root.name + ".done")
    store = LocalCasStore(root)
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        started = time.perf_counter()
        for index in range(count):
            store.put_bytes(compressible(index, BLOB))
        done.write_text(f"{count}\n")
        print(f"  built {count} x 16 MiB blobs in {time.perf_counter() - started:.1f}s: {root}")
    hashes = list(store.candidates())
    for content_hash in hashes:
        with open(store.blob_path(content_hash), "rb") as handle:
            assert handle.read(8) == codec.MAGIC, "benchmark blobs must be stored compressed"
    return store, hashes


def requests(hashes: list[str], rounds: int, offset: int = 0) -> list[StorageChallengeRequest]:
    probe = ProbeConfig()  # upstream's defaults: 64 KiB sample, one check per round
    return [
        probe_request(probe, WORLD, NODE, START_MS + c * TICK_MS, 0, hashes[c % len(hashes)], cursor=c)
        for c in range(offset, offset + rounds)
    ]


def check_all(reader: SampleReader, batch: list[StorageChallengeRequest]) -> None:
    for request in batch:
        if not run_check(reader, request, request.issued_at_unix_ms, 5_000).passed:
            raise SystemExit(f"benchmark store is damaged: {request.content_hash}")


def per_check_ms(reader: SampleReader, batch: list[StorageChallengeRequest], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        check_all(reader, batch)
        best = min(best, time.perf_counter() - started)
    return best / len(batch) * 1e3


def readers(store: LocalCasStore, cache: Path) -> dict[str, SampleReader]:
    return {
        "default (chunked)": make_reader(store, VerifyOptions(cache_dir=str(cache))),
        "upstream_full": make_reader(store, VerifyOptions(mode="full")),
    }


def read_bytes() -> int:
    with open("/proc/self/io") as handle:
        for line in handle:
            if line.startswith("read_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no read_bytes in /proc/self/io")


def drop_pages(paths: list[Path]) -> None:
    """Evict these files from the page cache (no machine-wide drop: the machine is shared)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fdatasync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--blobs", type=int, default=4, help="16 MiB blobs in the store (default 4)")
    parser.add_argument("--rounds", type=int, default=48, help="checks timed per probe (default 48)")
    parser.add_argument("--cold", type=int, default=8, help="cold-cache checks per probe (default 8)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 blobs, few checks")
    args = parser.parse_args()
    if args.quick:
        args.blobs, args.rounds, args.cold = 2, 8, 2
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    store, hashes = build_store(args.blobs)
    on_disk = sum(store.blob_path(h).stat().st_size for h in hashes) / len(hashes)
    share = on_disk / BLOB
    print(f"\nstore: {len(hashes)} blobs of 16 MiB, {on_disk / MIB:.2f} MiB each on disk ({share:.0%})")
    with tempfile.TemporaryDirectory(prefix="chunk-cache-", dir=BENCH_ROOT) as cache_dir:
        cache = Path(cache_dir)
        found = readers(store, cache)
        for reader in found.values():
            check_all(reader, requests(hashes, len(hashes)))  # warm: page cache, chunk cache
        print("\n1. Time per check, warm (best of 3; 64 KiB sample)")
        times = {}
        for name, reader in found.items():
            rounds = args.rounds if name.startswith("default") else max(4, args.rounds // 6)
            times[name] = per_check_ms(reader, requests(hashes, rounds, 1000), 3)
            print(f"  {name:18} {times[name]:8.2f} ms/check  ({rounds} checks)")
        ratio = times["default (chunked)"] / times["upstream_full"]
        print(f"  ratio default / upstream_full: {ratio:.3f}x  (target <= 0.3x)")
        chunked = found["default (chunked)"]
        assert isinstance(chunked, ChunkedReader)
        s = chunked.stats
        print(
            f"  chunked reader: {s.full_verifies} full verifies (warm-up), {s.chunk_reads} window reads, "
            f"{s.decoded_bytes / max(s.chunk_reads, 1) / MIB:.2f} MiB decoded per window read on average"
        )

        print("\n2. Bytes read from disk per check, cold page cache (blob and cache files evicted)")
        files = [store.blob_path(h) for h in hashes] + sorted(cache.rglob("*.chk"))
        cold = {}
        for name, reader in readers(store, cache).items():
            total = 0
            for request in requests(hashes, args.cold, 5000):
                drop_pages(files)
                before = read_bytes()
                check_all(reader, [request])
                total += read_bytes() - before
            cold[name] = total / args.cold
            print(f"  {name:18} {cold[name] / MIB:8.2f} MiB/check")
        if cold["upstream_full"]:
            cold_ratio = cold["default (chunked)"] / cold["upstream_full"]
            print(f"  ratio default / upstream_full: {cold_ratio:.3f}x")


if __name__ == "__main__":
    main()
