"""Start-up: `distfs-pipeline runtime.rounds=1` against a bare one-file Hydra app, side by side.

    python benchmarks/bench_startup.py [--repeat 15]

Both are real processes on this machine, started alternately (so load drifts hit both), each from
the same empty directory with its own run dir. The bare app is `@hydra.main` with an empty config
and a task that does nothing: the floor any Hydra app pays (interpreter, Hydra's import and plugin
scan, one compose, the run dir). Ours composes once, validates, and runs one audit round on the
demo store (built before timing). Prints wall and CPU times (CPU time is what load from other
processes on a shared machine cannot inflate) and the ratios of the medians and of the minima.
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
BARE_APP = (
    "import hydra\n"
    "from omegaconf import DictConfig\n\n"
    '@hydra.main(version_base="1.3", config_path=None, config_name=None)\n'
    "def main(cfg: DictConfig) -> None:\n"
    "    pass\n\n"
    'if __name__ == "__main__":\n'
    "    main()\n"
)
BARE, OURS = "bare Hydra app", "distfs-pipeline rounds=1"


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the child)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        command, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    times: dict[str, list[tuple[float, float]]] = {BARE: [], OURS: []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(scratch / "cache")}
        (scratch / "bare.py").write_text(BARE_APP)
        work = scratch / "cwd"
        work.mkdir()
        ours = [sys.executable, "-m", "distfs_pipeline", "runtime.rounds=1", "runtime.progress=never"]
        bare = [sys.executable, str(scratch / "bare.py")]
        timed([*ours, f"hydra.run.dir={scratch / 'warm'}"], work, env)  # builds the demo store once
        for i in range(args.repeat):
            times[BARE].append(timed([*bare, f"hydra.run.dir={scratch / f'b{i}'}"], work, env))
            times[OURS].append(timed([*ours, f"hydra.run.dir={scratch / f'o{i}'}"], work, env))
    for name, values in times.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(
            f"{name:26s} wall min {min(walls) * 1000:7.1f} ms,"
            f" median {statistics.median(walls) * 1000:7.1f} ms;"
            f"  cpu median {statistics.median(cpus) * 1000:7.1f} ms"
        )
    for label, index in (("wall", 0), ("cpu", 1)):
        ours_v = [v[index] for v in times[OURS]]
        bare_v = [v[index] for v in times[BARE]]
        ratio = statistics.median(ours_v) / statistics.median(bare_v)
        print(
            f"ratio ours/bare ({label}): median {ratio:.2f}x,"
            f" min {min(ours_v) / min(bare_v):.2f}x (target <= 1.2x)"
        )


if __name__ == "__main__":
    main()
