"""What metrics cost a round, and that the observer's per-round work does not grow with the store.

Runs the same virtual-clock audit (`run_audit`, the real runner with its durable commits) three
ways on one store: no metrics, a node_exporter textfile, and the 127.0.0.1 HTTP endpoint plus the
textfile, and prints rounds per second and the ratio to no metrics, measured side by side, best of
`--repeat`. Then it times the observer alone (`Metrics.round`, the work the runner adds after each
durable round) on a 1,000-blob and on a 100,000-blob book and prints the big/small ratio: the
observer folds a round's changes, so the ratio stays near 1x (a rescan of the store would be ~100x).

Run: `python benchmarks/bench_metrics.py [--rounds N] [--repeat N]`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distfs_pipeline.core.blobs import BlobRecord, apply_report
from distfs_pipeline.core.models import CursorState, RoundReport
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops.metrics import Metrics
from distfs_pipeline.pipeline.runner import run_audit
from distfs_pipeline.pipeline.validation import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def audit_rate(store: Path, work: Path, rounds: int, **runtime: Any) -> float:
    settings = Settings.model_validate(
        {"runtime": {"storage_root": str(store), "rounds": rounds, "progress": "never", **runtime}}
    )
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # the run's summary table
        run_audit(settings, work)
    return rounds / (time.perf_counter() - started)


class _Held:
    def __init__(self, hashes: tuple[str, ...]) -> None:
        self.hashes = hashes

    def candidates(self) -> tuple[str, ...]:
        return self.hashes


def observer_seconds_per_round(blobs: int, rounds: int) -> float:
    hashes = tuple(f"{i:064x}" for i in range(blobs))
    book = {h: BlobRecord(checks=1, last_result="pass", last_checked_ms=1) for h in hashes}
    sink = Metrics({}, _Held(hashes))
    sink.start(CursorState(), book)
    started = time.perf_counter()
    for n in range(rounds):
        report = RoundReport(
            node_id="n", world_id="w", observed_at_unix_ms=n, checked_hashes=[hashes[n % blobs]]
        )
        changes = apply_report(book, report)
        book.update(changes)
        sink.round(report, CursorState(rounds_executed=n + 1), changes, book, 0.0)
    return (time.perf_counter() - started) / rounds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=400)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-metrics-") as tmp:
        root = Path(tmp)
        store = LocalCasStore(root / "store")
        for i in range(200):
            store.put_bytes(f"bench blob {i} ".encode() * 50)
        modes = {
            "none": {},
            "textfile": {"metrics_textfile": str(root / "m.prom")},
            "http+textfile": {"metrics_textfile": str(root / "m2.prom"), "metrics_port": free_port()},
        }
        best = {name: 0.0 for name in modes}
        for attempt in range(args.repeat):
            for name, extra in modes.items():  # interleaved, so machine load hits every mode alike
                work = root / f"run-{name}-{attempt}"
                best[name] = max(best[name], audit_rate(root / "store", work, args.rounds, **extra))
    print(f"run_audit, {args.rounds} virtual rounds, 200 blobs, best of {args.repeat}:")
    for name, rate in best.items():
        print(f"  {name:<14} {rate:8.0f} rounds/s   ratio to none {best['none'] / rate:5.2f}x")
    small = min(observer_seconds_per_round(1_000, 2_000) for _ in range(args.repeat))
    big = min(observer_seconds_per_round(100_000, 2_000) for _ in range(args.repeat))
    sink = Metrics({}, _Held(()), textfile=Path(tempfile.mkdtemp(prefix="bench-metrics-")) / "m.prom")
    sink.start(CursorState(), {})
    started = time.perf_counter()
    for _ in range(200):
        sink._write_textfile(force=True)
    write = (time.perf_counter() - started) / 200
    print(f"textfile render + atomic replace: {write * 1e6:.0f} us each, at most once a second while running")
    print("observer alone (Metrics.round after each durable round):")
    print(f"  1k-blob book   {small * 1e6:7.1f} us/round")
    print(f"  100k-blob book {big * 1e6:7.1f} us/round   ratio {big / small:4.2f}x (a rescan would be ~100x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
