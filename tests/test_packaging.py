"""The package as users install and call it: a built wheel carries conf/ and schemas/, the console
script's subcommands, `--version` and shell completion (legacy flags included)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from distfs_pipeline import __main__ as entry
from distfs_pipeline import __version__
from distfs_pipeline.pipeline import resources

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real wheel of this checkout, built as `pip install .` builds one (no network needed)."""
    out = tmp_path_factory.mktemp("wheel")
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    (path,) = out.glob("distfs_pipeline-*.whl")
    return path


def test_the_wheel_ships_conf_and_schemas_equal_to_the_sources(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        for tree_name in resources.SHIPPED_TREES:
            prefix = f"distfs_pipeline/{tree_name}/"
            packaged = {n.removeprefix(prefix): archive.read(n) for n in names if n.startswith(prefix)}
            assert packaged == tree(ROOT / tree_name), tree_name
    assert "distfs_pipeline/conf/config.yaml" in names


def test_setup_py_ships_the_trees_resources_reads() -> None:
    text = (ROOT / "setup.py").read_text()
    line = next(line for line in text.splitlines() if line.startswith("SHIPPED_TREES = "))
    assert ast.literal_eval(line.split("=", 1)[1].split("#", 1)[0].strip()) == resources.SHIPPED_TREES


def test_a_checkout_reads_the_top_level_trees_and_a_package_its_own_copy(tmp_path: Path) -> None:
    assert resources.conf_dir() == ROOT / "conf" and resources.schema_dir() == ROOT / "schemas"
    from distfs_pipeline import app
    from distfs_pipeline.pipeline import schemas

    assert app.CONF_DIR == ROOT / "conf" and schemas.SCHEMA_DIR == ROOT / "schemas"
    fake = tmp_path / "distfs_pipeline"
    (fake / "conf").mkdir(parents=True)
    saved = resources.PACKAGE_DIR
    try:
        resources.PACKAGE_DIR = fake
        assert resources.conf_dir() == fake / "conf"
        assert resources.schema_dir() == tmp_path / "schemas"  # no packaged copy: beside the package
    finally:
        resources.PACKAGE_DIR = saved


def test_version_names_ours_and_hydras(tmp_path: Path) -> None:
    done = cli("--version", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"distfs_pipeline {__version__} (Hydra 1.3.")
    assert cli("policy=steady", "--version", cwd=tmp_path).stdout == done.stdout


def test_subcommands_dispatch_to_their_modules(tmp_path: Path) -> None:
    done = cli("schemas", "generate", "--check", cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    bad = cli("schemas", "validate", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert bad.returncode == 2 and "cannot read" in bad.stderr
    assert set(entry.SUBCOMMANDS) >= {"status", "index"}
    assert entry.SUBCOMMANDS["status"] == "distfs_pipeline.ops.status"
    assert entry.SUBCOMMANDS["index"] == "distfs_pipeline.ops.adopt"


def test_a_subcommand_not_in_this_build_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(entry.SUBCOMMANDS, "nothing", "distfs_pipeline.no_such_module")
    assert entry.run_subcommand("nothing", []) == 2


def test_help_of_the_job_is_not_a_subcommand(tmp_path: Path) -> None:
    done = cli("--help", cwd=tmp_path)
    assert done.returncode == 0 and "--reward-distfs-probe-per-tick" in done.stdout


def completion(line: str, tmp_path: Path) -> list[str]:
    done = cli("-sc", "query=bash", cwd=tmp_path, env={"COMP_LINE": line, "COMP_POINT": str(len(line))})
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout.split()


def test_completion_offers_groups_and_keys(tmp_path: Path) -> None:
    assert "policy=" in completion("distfs-pipeline pol", tmp_path)
    assert "policy=steady" in completion("distfs-pipeline policy=", tmp_path)


def test_completion_is_not_broken_by_a_legacy_flag(tmp_path: Path) -> None:
    line = "distfs-pipeline --reward-distfs-probe-per-tick 4 --reward-distfs-probe-ttl-ms=9 policy="
    assert "policy=thrifty" in completion(line, tmp_path)


def test_completion_completes_legacy_flags(tmp_path: Path) -> None:
    words = completion("distfs-pipeline --reward-distfs-probe-p", tmp_path)
    assert words == ["--reward-distfs-probe-per-tick"]


def test_completion_install_script_names_the_console_script(tmp_path: Path) -> None:
    script = Path(sys.executable).parent / "distfs-pipeline"
    if not script.exists():
        pytest.skip("the console script is not installed in this environment")
    done = subprocess.run(
        [str(script), "-sc", "install=bash"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "complete -o nospace -o default -F hydra_bash_completion distfs-pipeline" in done.stdout
