"""Start-up: `distfs-pipeline runtime.rounds=1` against a bare one-file Hydra app, side by side.

    python benchmarks/bench_startup.py [--repeat 15]

Both are real processes on this machine, started alternately (so load drifts hit both), each from
the same empty directory with its own run dir. The bare app is `@hydra.main` with an empty config
and a task that does nothing: the floor any Hydra app pays (interpreter, Hydra's import and plugin
scan, one compose, the run dir). Ours composes once, validates, and runs one audit round on the
demo store (built before timing). Prints wall and CPU times (CPU time is what load from other
processes on a shared machine cannot inflate) and the ratios of the medians and of the minima.

Both run from byte-compiled modules, as installed packages do (pip compiles a wheel's modules when
it installs them): the checkout is compiled first, since a checkout run with
PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module of ours on every start (about 0.1 s,
which no user pays). Then one `-X importtime` start of each shows where the difference goes: the
modules only ours imports, by package, self time summed.
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
        compile_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "distfs_pipeline")], env=compile_env
        )
        timed([*ours, f"hydra.run.dir={scratch / 'warm'}"], work, env)  # builds the demo store once
        for i in range(args.repeat):
            times[BARE].append(timed([*bare, f"hydra.run.dir={scratch / f'b{i}'}"], work, env))
            times[OURS].append(timed([*ours, f"hydra.run.dir={scratch / f'o{i}'}"], work, env))
        extra = imports_only_ours(bare, ours, scratch, work, env)
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
    total = sum(extra.values())
    top = ", ".join(f"{name} {ms:.0f}" for name, ms in sorted(extra.items(), key=lambda kv: -kv[1])[:6])
    print(f"imported only by ours (-X importtime self, ms): {total:.0f} in all; {top}")


def import_self_times(command: list[str], cwd: Path, env: dict[str, str]) -> dict[str, float]:
    """Module -> self import time (ms) of one start under `-X importtime`."""
    done = subprocess.run(
        [command[0], "-X", "importtime", *command[1:]], cwd=cwd, env=env, capture_output=True, text=True
    )
    found: dict[str, float] = {}
    for line in done.stderr.splitlines():
        if line.startswith("import time:") and "self [us]" not in line:
            own, _, name = line[len("import time:") :].split("|")
            found[name.strip()] = int(own) / 1000
    return found


def imports_only_ours(
    bare: list[str], ours: list[str], scratch: Path, work: Path, env: dict[str, str]
) -> dict[str, float]:
    """Self import time of the modules our start imports and the bare app's does not, by package
    (ours by layer)."""
    bare_mods = import_self_times([*bare, f"hydra.run.dir={scratch / 'bi'}"], work, env)
    our_mods = import_self_times([*ours, f"hydra.run.dir={scratch / 'oi'}"], work, env)
    groups: dict[str, float] = {}
    for name, ms in our_mods.items():
        if name in bare_mods:
            continue
        parts = name.split(".")
        group = ".".join(parts[:2]) if parts[0] == "distfs_pipeline" else parts[0]
        groups[group] = groups.get(group, 0.0) + ms
    return groups


if __name__ == "__main__":
    main()
