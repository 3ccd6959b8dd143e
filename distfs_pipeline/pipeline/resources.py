"""Where the configs and JSON Schemas are: inside the installed package, or at the checkout's top.

Why two places: `conf/` and `schemas/` stay the repository's source of truth (editors, reviews and
`schemas generate` work on them), while an installed wheel (pip, pipx, a container image) has no
checkout around it. The build (`setup.py`'s `build_py`) copies both trees into the package as
`distfs_pipeline/conf` and `distfs_pipeline/schemas`; a checkout or an editable install has no such
copy, so the top-level directories are used. The packaged copy wins when both exist.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # distfs_pipeline/, above this subpackage
# The trees the build copies into the package (setup.py reads this too).
SHIPPED_TREES = ("conf", "schemas")


def resource_dir(name: str) -> Path:
    """`distfs_pipeline/<name>` when the package carries it (installed), else `<checkout>/<name>`."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


def conf_dir() -> Path:
    """The primary config directory (`conf/`)."""
    return resource_dir("conf")


def schema_dir() -> Path:
    """The JSON Schemas (`schemas/`)."""
    return resource_dir("schemas")
