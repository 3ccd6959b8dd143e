"""A 9-job sweep: Hydra's basic launcher against the joblib launcher with 2 workers, side by side.

    python benchmarks/bench_sweep.py [--rounds 300] [--repeat 1]

The sweep is the README's policy study shape: 3 policies x 3 scenarios (lost_blob, bit_rot,
slow_disk) on the demo store, `runtime.rounds` rounds each, run as real processes from the same
empty directory, one after the other per repetition. Wall time is what matters for a parallel
launcher; the ratio basic/joblib is printed (target >= 1.6x on 2 cores).

Run it twice, on disk and with `--dir` on a tmpfs: the difference is what per-round fsync costs,
which two parallel jobs cannot share out (one journal, one device).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SWEEP = ("policy=default,steady,thrifty", "scenario=lost_blob,bit_rot,slow_disk")
LAUNCHERS = {
    "basic": ("hydra/launcher=basic",),
    "joblib n_jobs=2": ("hydra/launcher=joblib", "hydra.launcher.n_jobs=2"),
}


def run_sweep(
    launcher: tuple[str, ...], rounds: int, sweep_dir: Path, env: dict[str, str]
) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the sweep's processes, workers included)."""
    command = [sys.executable, "-m", "distfs_pipeline", "-m", *launcher, *SWEEP, f"runtime.rounds={rounds}"]
    command += ["runtime.progress=never", f"hydra.sweep.dir={sweep_dir}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, cwd=sweep_dir.parent, env=env, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument(
        "--dir", default=None, help="where the sweeps write (e.g. a tmpfs, where fsync costs nothing)"
    )
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch_name:
        scratch = Path(scratch_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(scratch / "cache")}
        warm = [
            sys.executable,
            "-m",
            "distfs_pipeline",
            "runtime.rounds=1",
            f"hydra.run.dir={scratch / 'warm'}",
        ]
        subprocess.run(warm, env=env, check=True, stdout=subprocess.DEVNULL)  # the demo store, built once
        for i in range(args.repeat):
            for name, launcher in LAUNCHERS.items():
                times[name].append(run_sweep(launcher, args.rounds, scratch / f"{i}-{name.split()[0]}", env))
    for name, values in times.items():
        walls = [v[0] for v in values]
        cpu = statistics.median(v[1] for v in values)
        print(
            f"9 jobs, {name:16s} wall median {statistics.median(walls):6.2f} s (min {min(walls):6.2f} s);"
            f" cpu {cpu:6.2f} s = {cpu / statistics.median(walls):4.2f} cores busy"
        )
    basic = statistics.median(v[0] for v in times["basic"])
    joblib = statistics.median(v[0] for v in times["joblib n_jobs=2"])
    print(f"speed-up joblib(2) over basic: {basic / joblib:.2f}x (target >= 1.6x)")
    print(f"machine load average while measuring: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
