"""Per-round cost of the app's durability against the durable floor, measured side by side.

The floor (issue 11): one appended JSON line of the round record plus one `fdatasync`, in a loop,
in the same directory the app writes to. The app: `run_audit` in-process on a small healthy store
(virtual clock, default probe), in each `runtime.durability` mode. A run's per-round cost is the
difference between a long and a short run divided by the extra rounds, so start-up (config,
identity, recovery, summary) is not counted as round cost. Printed: microseconds per round and the
ratio to the floor; the target is <= 1.2x.

Also printed, to read the figures: `interval` syncs about once a second, so its cost is the app's
CPU per round; `round` syncs before the next round starts, so it cannot beat floor + that CPU (the
line "sequential bound"); `pipelined` overlaps the sync with the next round's CPU, so its bound is
max(floor, CPU); the line "same overlap, plain CPU" runs that overlap (the same line, the same
`AsyncDatasync`) with plain CPU work of the same length instead of rounds, which is what this
machine allows; the gap from there to `pipelined` is the app's (its round, whose checks make
about a dozen file system calls, runs slower while the sync is in flight than plain CPU does).

The target is issue 11's: the app per round within 1.2x of the floor, by group commit (the way the
issue names: one fdatasync for many rounds, as SQLite's WAL and PostgreSQL's commit delay do), i.e.
`durability=interval`, whose power-loss window is stated. The per-round modes are printed beside it
as what per-round power-loss durability costs on top; `round` cannot reach 1.2x by construction
(it waits for each sync, so it pays floor + CPU), and `pipelined` only where the overlap is clean.

Run: `python benchmarks/bench_durability.py [--rounds N] [--repeat N]` (exit 1 when the target is
missed). Uses a temp dir under $TMPDIR (set it to the file system you care about).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.persist.aiosync import AsyncDatasync
from distfs_pipeline.pipeline.runner import run_audit
from distfs_pipeline.pipeline.validation import Settings

TARGET = 1.2
MODES = ("round", "pipelined", "interval")


def make_store(root: Path, blobs: int = 50) -> Path:
    store = LocalCasStore(root)
    for i in range(blobs):
        store.put_bytes(b"bench blob %d " % i * (200 + 37 * i))
    return root


def settings(store: Path, state: Path, rounds: int, durability: str) -> Settings:
    """Default probe; the chunk cache is shared and warmed, so rounds are steady checks."""
    runtime = {
        "storage_root": str(store),
        "state_path": str(state),
        "rounds": rounds,
        "progress": "never",
        "durability": durability,
        "log_max_bytes": 0,
    }
    probe = {"chunk_cache_dir": str(store.parent / "chunk-cache")}
    return Settings.model_validate({"runtime": runtime, "probe": probe})


def app_run_s(
    base: Path, store: Path, rounds: int, durability: str, tag: str
) -> tuple[float, dict[str, Any]]:
    run_dir = base / f"{durability}-{tag}-{rounds}"
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        run_audit(settings(store, run_dir / "state.json", rounds, durability), run_dir)
    elapsed = time.perf_counter() - start
    record = json.loads((run_dir / "rounds.jsonl").read_bytes().splitlines()[-1])
    return elapsed, record


def app_per_round_s(base: Path, store: Path, short: int, long: int, durability: str, tag: str) -> float:
    t_short, _ = app_run_s(base, store, short, durability, f"s{tag}")
    t_long, _ = app_run_s(base, store, long, durability, f"l{tag}")
    return (t_long - t_short) / (long - short)


def floor_body(record: dict[str, Any]) -> dict[str, Any]:
    """The round record as the floor appends it: without what only the state file carries."""
    return {k: v for k, v in record.items() if k not in ("state_after", "crc32", "state_id")}


def new_log(path: Path) -> int:
    """A new append-only file of ours (never an existing one, never through a link)."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW, 0o644)


def floor_per_round_s(base: Path, record: dict[str, Any], rounds: int, tag: str) -> float:
    """One appended JSON line of the round record + one fdatasync, per round."""
    body = floor_body(record)
    fd = new_log(base / f"floor-{tag}.jsonl")
    try:
        start = time.perf_counter()
        for n in range(rounds):
            body["round_index"] = n + 1
            os.write(fd, json.dumps(body, separators=(",", ":")).encode() + b"\n")
            os.fdatasync(fd)
        return (time.perf_counter() - start) / rounds
    finally:
        os.close(fd)


def overlap_floor_per_round_s(
    base: Path, record: dict[str, Any], rounds: int, cpu_s: float, tag: str
) -> float:
    """What `pipelined` could reach on this machine: the floor's line and fdatasync, the sync run
    as the app runs it (`AsyncDatasync`), overlapped with `cpu_s` of plain CPU work (JSON encoding
    calibrated to take `cpu_s` while no sync is in flight). Where this is above max(floor, CPU),
    the machine itself slows CPU that runs during a sync."""
    body = floor_body(record)
    calibration = 2000
    start = time.perf_counter()
    for _ in range(calibration):
        json.dumps(body)
    reps = max(1, round(cpu_s / ((time.perf_counter() - start) / calibration)))
    fd = new_log(base / f"overlap-{tag}.jsonl")
    syncer = AsyncDatasync()
    try:
        start = time.perf_counter()
        for n in range(rounds):
            if syncer.in_flight:
                syncer.wait()
            body["round_index"] = n + 1
            os.write(fd, json.dumps(body, separators=(",", ":")).encode() + b"\n")
            syncer.start(fd)
            for _ in range(reps):
                json.dumps(body)
        if syncer.in_flight:
            syncer.wait()
        return (time.perf_counter() - start) / rounds
    finally:
        syncer.close()
        os.close(fd)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=400, help="extra rounds of the long run")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="distfs-bench-durability-") as tmp:
        base = Path(tmp)
        store = make_store(base / "store")
        _, record = app_run_s(base, store, 120, "round", "warm-up")  # fills the shared chunk cache
        short, long = 20, 20 + args.rounds
        best = {name: float("inf") for name in ("floor", *MODES)}
        for attempt in range(args.repeat):  # interleaved, best of each: the machine is shared
            best["floor"] = min(best["floor"], floor_per_round_s(base, record, args.rounds, str(attempt)))
            for mode in MODES:
                best[mode] = min(best[mode], app_per_round_s(base, store, short, long, mode, f"{attempt}"))
        floor = best["floor"]
        overlap = min(
            overlap_floor_per_round_s(base, record, args.rounds, best["interval"], f"{n}") for n in range(3)
        )
        rows = [("floor: append + fdatasync", floor)]
        rows += [(f"app, durability={mode}", best[mode]) for mode in MODES]
    rows += [
        ("sequential bound (round)", floor + best["interval"]),
        ("overlap bound (pipelined)", max(floor, best["interval"])),
        ("same overlap, plain CPU", overlap),
    ]
    size = len(json.dumps(record))
    print(f"per-round cost ({args.rounds} rounds, best of {args.repeat}, interleaved; round record {size} B)")
    syncer = AsyncDatasync()
    print(f"  pipelined fdatasync backend: {syncer.backend}")
    syncer.close()
    for name, value in rows:
        print(f"  {name:<28} {value * 1e6:10.1f} us   {value / floor:6.2f}x floor")
    group, strict, pipelined = (best[mode] / floor for mode in ("interval", "round", "pipelined"))
    print(f"group commit (durability=interval) vs floor: {group:.2f}x (target <= {TARGET}x)")
    print(f"per-round power-loss durability: pipelined {pipelined:.2f}x, round {strict:.2f}x")
    return 0 if group <= TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
