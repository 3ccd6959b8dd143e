"""Wall-clock pacing: a byte-rate limit measured from real reads, and a jittered tick."""

from __future__ import annotations

import itertools
import json
import os
import statistics
from pathlib import Path

import pytest

from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops import pacing
from distfs_pipeline.pipeline.runner import StopFlag, WallClock, run_audit
from distfs_pipeline.pipeline.validation import Settings

needs_proc_io = pytest.mark.skipif(pacing.bytes_read_so_far() is None, reason="no /proc/self/io here")


@needs_proc_io
def test_bytes_read_follows_real_reads(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(1 << 20))
    before = pacing.bytes_read_so_far() or 0
    assert len(path.read_bytes()) == 1 << 20
    assert (pacing.bytes_read_so_far() or 0) - before >= 1 << 20


@needs_proc_io
def test_the_next_round_waits_until_the_bytes_fit_the_rate(tmp_path: Path) -> None:
    path = tmp_path / "data"
    path.write_bytes(os.urandom(1 << 20))
    paced = pacing.Pacing(tick_ms=10, max_bytes_per_s=4 << 20)
    paced.round_started(100.0)
    path.read_bytes()  # the "round" reads 1 MiB: at 4 MiB/s the next may start 0.25 s later
    earliest = paced.earliest_next_start()
    assert earliest is not None and 100.25 <= earliest < 100.5
    assert pacing.Pacing(tick_ms=10).earliest_next_start() is None  # no limit: the plain grid


def test_jitter_keeps_the_mean_tick_and_spreads_the_phase() -> None:
    plain = pacing.Pacing(tick_ms=200)
    assert {plain.interval_s() for _ in range(10)} == {0.2}
    jittered = pacing.Pacing(tick_ms=200, jitter_ms=50, seed=7)
    intervals = [jittered.interval_s() for _ in range(4000)]
    assert all(0.15 <= i <= 0.25 for i in intervals)
    assert statistics.fmean(intervals) == pytest.approx(0.2, abs=0.003)
    assert len(set(intervals)) > 3900
    other = pacing.Pacing(tick_ms=200, jitter_ms=50, seed=8)
    assert [other.interval_s() for _ in range(5)] != intervals[:5]  # two nodes drift apart


def test_wall_clock_uses_the_jittered_interval() -> None:
    reference = pacing.Pacing(20, jitter_ms=15, seed=1)
    first, second = reference.interval_s(), reference.interval_s()
    clock, stop = WallClock(20, pacing.Pacing(20, jitter_ms=15, seed=1)), StopFlag()
    clock.next_round(0, stop)
    due_after_first = clock.due
    clock.next_round(1, stop)
    assert due_after_first is not None and clock.due is not None
    assert clock.due - due_after_first == pytest.approx(second)
    assert first != 0.02 and second != 0.02


@needs_proc_io
def test_a_paced_wall_run_spaces_rounds_by_the_bytes_they_read(tmp_path: Path) -> None:
    """Full verify reads each 256 KiB blob twice a check: at 2 MiB/s a round may start every ~0.25 s."""
    store = LocalCasStore(tmp_path / "store")
    for _ in range(3):
        store.put_bytes(os.urandom(256 << 10))  # incompressible: stored raw, read whole
    settings = Settings.model_validate(
        {
            "runtime": {
                "storage_root": str(tmp_path / "store"),
                "clock": "wall",
                "tick_ms": 10,
                "rounds": 4,
                "progress": "never",
            },
            "probe": {"verify_mode": "full", "max_bytes_per_s": 2 << 20},
        }
    )
    run_audit(settings, tmp_path / "run")
    lines = (tmp_path / "run" / "rounds.jsonl").read_text().splitlines()
    observed = [json.loads(line)["observed_at_unix_ms"] for line in lines]
    gaps = [b - a for a, b in itertools.pairwise(observed)]
    assert len(gaps) == 3 and min(gaps) >= 200  # unpaced, they would be 10 ms apart
