"""Build step: ship `conf/` and `schemas/` inside the package (see distfs_pipeline/pipeline/resources.py).

Everything else about the project is in pyproject.toml. The two trees stay at the repository's top
as the source of truth; `build_py` copies them into `<build>/distfs_pipeline/` so every wheel (and
so `pip install .`, `pipx install .`) carries them. An editable install copies nothing: the package
then reads the checkout's own directories.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
SHIPPED_TREES = ("conf", "schemas")  # = distfs_pipeline.pipeline.resources.SHIPPED_TREES (a test checks)


class BuildPyWithResources(build_py):
    """`build_py`, then a copy of each shipped tree into the built package."""

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for name in SHIPPED_TREES:
            target = Path(self.build_lib) / "distfs_pipeline" / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(HERE / name, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".*"))


setup(cmdclass={"build_py": BuildPyWithResources})
