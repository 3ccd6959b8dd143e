"""Start-up: `distfs-pipeline runtime.rounds=1` against a bare one-file Hydra app, side by side.

    python benchmarks/bench_startup.py [--repeat 15]

All are real processes on this machine, started in turn (so load drifts hit each), each from the
same empty directory with its own run dir. The bare app is `@hydra.main` with an empty config and a
task that does nothing: the floor any Hydra app pays (interpreter, Hydra's import and plugin scan,
two composes: Hydra's mode detection, then the run's; the run dir). Ours composes once, validates,
and runs one audit round on the demo store (built before timing). Two more are the bare app plus
only what the design requires of every start: pydantic with one model, and our validation models
and structured configs (imported, so built). Prints wall and CPU times (CPU time is what load from
other processes on a shared machine cannot inflate) and the ratios of the medians and of the minima.

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
# The bare app with only what the design requires of every start added: pydantic with one model
# (the validation's library), then our validation models and structured configs (their import,
# which builds them), still with an empty config and a task that does nothing. They show how much
# of the 1.2x budget those requirements spend before any of our work starts.
WITH_PYDANTIC_APP = BARE_APP.replace(
    "from omegaconf import DictConfig\n",
    "from omegaconf import DictConfig\nimport os\n"
    'os.environ["PYDANTIC_DISABLE_PLUGINS"] = "__all__"  # as ours: no entry-point scan\n'
    "from pydantic import BaseModel\n\n"
    "class One(BaseModel):\n    x: int = 0\n",
).replace("    pass\n", "    One(x=1)\n")
WITH_MODELS_APP = BARE_APP.replace(
    "from omegaconf import DictConfig\n",
    "from omegaconf import DictConfig\nimport distfs_pipeline.pipeline.config\n"
    "import distfs_pipeline.pipeline.validation\n",
)
BARE, OURS = "bare Hydra app", "distfs-pipeline rounds=1"
WITH_PYDANTIC, WITH_MODELS = "bare + pydantic, 1 model", "bare + our models"


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
    times: dict[str, list[tuple[float, float]]] = {BARE: [], OURS: [], WITH_PYDANTIC: [], WITH_MODELS: []}
    with tempfile.TemporaryDirectory() as scratch_name:
        scratch = Path(scratch_name)
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(scratch / "cache")}
        work = scratch / "cwd"
        work.mkdir()
        ours = [sys.executable, "-m", "distfs_pipeline", "runtime.rounds=1", "runtime.progress=never"]
        commands = {OURS: ours}
        for name, text, file in (
            (BARE, BARE_APP, "bare.py"),
            (WITH_PYDANTIC, WITH_PYDANTIC_APP, "with_pydantic.py"),
            (WITH_MODELS, WITH_MODELS_APP, "with_models.py"),
        ):
            (scratch / file).write_text(text)
            commands[name] = [sys.executable, str(scratch / file)]
        bare = commands[BARE]
        compile_env = {k: v for k, v in env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        subprocess.run(
            [sys.executable, "-m", "compileall", "-q", str(ROOT / "distfs_pipeline")], env=compile_env
        )
        timed([*ours, f"hydra.run.dir={scratch / 'warm'}"], work, env)  # builds the demo store once
        for i in range(args.repeat):
            for n, (name, command) in enumerate(commands.items()):
                times[name].append(timed([*command, f"hydra.run.dir={scratch / f'{n}-{i}'}"], work, env))
        extra = imports_only_ours(bare, ours, scratch, work, env)
    for name, values in times.items():
        walls, cpus = [v[0] for v in values], [v[1] for v in values]
        print(
            f"{name:26s} wall min {min(walls) * 1000:7.1f} ms,"
            f" median {statistics.median(walls) * 1000:7.1f} ms;"
            f"  cpu median {statistics.median(cpus) * 1000:7.1f} ms"
        )
    for label, index in (("wall", 0), ("cpu", 1)):
        bare_v = [v[index] for v in times[BARE]]
        for name in (OURS, WITH_PYDANTIC, WITH_MODELS):
            other = [v[index] for v in times[name]]
            ratio = statistics.median(other) / statistics.median(bare_v)
            target = " (target <= 1.2x)" if name == OURS else ""
            print(
                f"ratio {name}/bare ({label}): median {ratio:.2f}x,"
                f" min {min(other) / min(bare_v):.2f}x{target}"
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
