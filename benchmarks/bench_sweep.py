"""A 9-job sweep: Hydra's basic launcher against the joblib launcher with 2 workers, side by side.

    python benchmarks/bench_sweep.py [--rounds 300] [--repeat 1]

The sweep is the README's policy study shape: 3 policies x 3 scenarios (lost_blob, bit_rot,
slow_disk) on the demo store, `runtime.rounds` rounds each, run as real processes from the same
empty directory, one after the other per repetition. Wall time is what matters for a parallel
launcher; the ratio basic/joblib is printed (target >= 1.6x on 2 cores).
"""

from __future__ import annotations

import argparse
import os
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


def run_sweep(launcher: tuple[str, ...], rounds: int, sweep_dir: Path, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "distfs_pipeline", "-m", *launcher, *SWEEP, f"runtime.rounds={rounds}"]
    command += ["runtime.progress=never", f"hydra.sweep.dir={sweep_dir}"]
    started = time.perf_counter()
    subprocess.run(command, cwd=sweep_dir.parent, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in LAUNCHERS}
    with tempfile.TemporaryDirectory() as scratch_name:
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
        print(f"9 jobs, {name:16s} median {statistics.median(values):6.2f} s  (min {min(values):6.2f} s)")
    ratio = statistics.median(times["basic"]) / statistics.median(times["joblib n_jobs=2"])
    print(f"speed-up joblib(2) over basic: {ratio:.2f}x (target >= 1.6x)")


if __name__ == "__main__":
    main()
