"""Start-up must not grow with the store: whole-process 100-round runs on 1M vs 1k blobs.

Issue 11's target: a 100-round run of the app (`python -m distfs_pipeline runtime.rounds=100 ...`)
on a 1,000,000-blob store within 1.5x of the same run on a 1,000-blob store, for a plain upstream
store (audited by its listing) and for a store with our must-hold index, with the peak RSS of each
run and the memory of the candidate representation per 100k blobs.

Every run is a fresh process, as an operator starts one, with the per-store cache dir
(`probe.chunk_cache_dir`, where the listing cache and the index snapshot persist) kept between runs:
the first, untimed run on each store builds the caches (O(store), once per change of the store); the
timed runs are what every later start costs when nothing changed. Rows are measured side by side,
interleaved, best of `--repeat`.

The storage score's input, `rewardable_bytes`, is summed from the durable per-blob book (bytes of
blobs whose last check passed, issue 8), so no start stats every blob or re-parses the index.

Stores (tiny blobs; a plain store's blob contents hash correctly, so the checks pass) are built once
under /work/bench-stores (override with DISTFS_SCALE_DIR) and reused; the indexed stores hard-link
the plain stores' blob files, so they cost no extra data. Building the 1M stores takes a few minutes
and about 4 GiB. Run: `python benchmarks/bench_scale.py [--repeat N] [--big N]`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import blake3

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distfs_pipeline.core.index import INDEX_FILE, MustHoldIndex
from distfs_pipeline.core.packed import PackedHashes

BENCH_ROOT = Path(os.environ.get("DISTFS_SCALE_DIR", "/work/bench-stores"))
REPO = Path(__file__).resolve().parents[1]
SMALL, BIG = 1_000, 1_000_000
TARGET_RATIO = 1.5
STORE_FORMAT = 1  # bump when the layout built here changes, so cached stores are rebuilt
ROUNDS = 100


def blob_bytes(i: int) -> bytes:
    """A tiny, unique blob: the point is many files, not many bytes."""
    return b"distfs-bench-blob-%08d" % i


def _marker(root: Path) -> Path:
    return root.with_name(root.name + ".done")


def _is_built(root: Path, n: int) -> bool:
    marker = _marker(root)
    return marker.exists() and marker.read_text() == f"{n} format={STORE_FORMAT}\n"


def build_plain(n: int) -> Path:
    """`blobs/<blake3>.blob` files only, as upstream leaves a store (built once, then reused)."""
    root = BENCH_ROOT / f"plain-{n}"
    if _is_built(root, n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    prefix = os.fspath(blobs) + "/"
    for i in range(n):
        data = blob_bytes(i)
        fd = os.open(f"{prefix}{blake3.blake3(data).hexdigest()}.blob", os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        os.write(fd, data)
        os.close(fd)
    _age(blobs)
    _marker(root).write_text(f"{n} format={STORE_FORMAT}\n")
    print(f"built plain store of {n} blobs in {time.perf_counter() - started:.0f}s: {root}", flush=True)
    return root


def build_indexed(n: int, plain: Path) -> Path:
    """The plain store's blobs (hard links) plus our must-hold index, as `put` leaves it (the log and
    its in-store snapshot), written in one go: a million `put`s would take far longer."""
    root = BENCH_ROOT / f"indexed-{n}"
    if _is_built(root, n):
        return root
    shutil.rmtree(root, ignore_errors=True)
    started = time.perf_counter()
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    lines = []
    with os.scandir(plain / "blobs") as entries:
        for entry in entries:
            os.link(entry.path, blobs / entry.name)
            lines.append(f"{entry.name[:-5]} {len(blob_bytes(0))}\n")
    (root / INDEX_FILE).write_text("".join(lines))
    MustHoldIndex(root)._write_snapshot()
    _age(blobs)
    _age(root / INDEX_FILE)
    _marker(root).write_text(f"{n} format={STORE_FORMAT}\n")
    print(f"built indexed store of {n} blobs in {time.perf_counter() - started:.0f}s: {root}", flush=True)
    return root


def _age(path: Path) -> None:
    """Move an mtime out of the caches' racy window (a store built seconds ago is still "racy")."""
    past = time.time_ns() - 60_000_000_000
    os.utime(path, ns=(past, past))


def run_app(root: Path, cache: Path, work: Path) -> tuple[float, int]:
    """One whole-process 100-round run: (wall seconds, peak RSS in KiB). Fails loudly on exit != 0."""
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    state = run_dir / "state.json"  # a fresh state (and identity) per run: every run starts the same
    overrides = [
        f"runtime.storage_root={root}",
        f"runtime.rounds={ROUNDS}",
        f"runtime.state_path={state}",
        "runtime.progress=never",
        f"probe.chunk_cache_dir={cache}",
        f"hydra.run.dir={run_dir}",
    ]
    head = [sys.executable, "-m", "distfs_pipeline"]
    env = {**os.environ, "PYTHONPATH": os.fspath(REPO)}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [*head, *overrides], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work
    )
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = proc.stderr.read().decode() if proc.stderr else ""
    if proc.returncode != 0:
        raise SystemExit(f"run on {root} failed ({proc.returncode}): {stderr.strip()[-2000:]}")
    shutil.rmtree(run_dir, ignore_errors=True)
    return elapsed, usage.ru_maxrss


def representation_mib_per_100k(n: int = 100_000) -> tuple[float, float]:
    """(packed, tuple of str) MiB for `n` lowercase-hex BLAKE3 hashes, measured with tracemalloc."""
    hexes = sorted(blake3.blake3(blob_bytes(i)).hexdigest() for i in range(n))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    packed = PackedHashes.from_sorted(hexes)
    packed_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    joined = "\n".join(hexes)
    del hexes
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    strings = tuple(joined.split("\n"))
    tuple_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(packed) == len(strings) == n and packed[n // 2] == strings[n // 2]
    scale = 100_000 / n / (1 << 20)
    return packed_bytes * scale, tuple_bytes * scale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big", type=int, default=BIG, help="blobs in the big store (default 1M)")
    parser.add_argument("--build-only", action="store_true")
    args = parser.parse_args(argv)
    BENCH_ROOT.mkdir(parents=True, exist_ok=True)
    stores: dict[tuple[str, int], Path] = {}
    for n in (SMALL, args.big):
        stores["plain", n] = build_plain(n)
        stores["indexed", n] = build_indexed(n, stores["plain", n])
    if args.build_only:
        return 0
    packed_mib, tuple_mib = representation_mib_per_100k()
    print(f"candidates per 100k blobs: packed {packed_mib:.2f} MiB, tuple of str {tuple_mib:.2f} MiB")
    ok = True
    with tempfile.TemporaryDirectory(prefix="distfs-scale-") as tmp:
        work = Path(tmp)
        caches = {key: work / f"cache-{key[0]}-{key[1]}" for key in stores}
        for key, root in stores.items():  # the first start on each store: builds its caches
            first, _ = run_app(root, caches[key], work)
            print(f"first run (builds the caches) {key[0]:7} {key[1]:>8} blobs: {first:6.2f} s", flush=True)
        best: dict[tuple[str, int], tuple[float, int]] = {}
        for _ in range(args.repeat):
            for key, root in stores.items():
                t, rss = run_app(root, caches[key], work)
                old = best.get(key)
                best[key] = (min(t, old[0]) if old else t, max(rss, old[1]) if old else rss)
    print(f"{ROUNDS}-round whole-process runs, best of {args.repeat}; {SMALL} vs {args.big} blobs")
    for kind in ("plain", "indexed"):
        (t_small, rss_small), (t_big, rss_big) = best[kind, SMALL], best[kind, args.big]
        ratio = t_big / t_small
        verdict = "ok" if ratio <= TARGET_RATIO else "MISS"
        print(
            f"{kind:8} | {t_small:6.3f} s / {t_big:6.3f} s | ratio {ratio:5.2f}x {verdict}"
            f" | peak RSS {rss_small / 1024:6.1f} / {rss_big / 1024:6.1f} MiB"
        )
        ok &= ratio <= TARGET_RATIO
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
