"""File primitives shared by the blob store (`store.py`) and our must-hold index (`index.py`).

Both keep files under the store root and must fail the same way: a content hash is a file name, so
upstream's hash rule is a path-safety rule; `path_exists` is Rust's `Path::exists`, on which upstream's
error mapping turns; new files are created exclusively and removed if they cannot be written; every
`OSError` becomes one `Io` that names the action and the path. A module of its own so that the store
and the index can share these without importing each other.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .errors import BlobHashInvalid, Io


def validate_hash(content_hash: str) -> None:
    """Upstream's only rule: refuse an empty hash, `/`, `\\` or `..` (path safety, not hex syntax)."""
    if not content_hash or "/" in content_hash or "\\" in content_hash or ".." in content_hash:
        raise BlobHashInvalid(content_hash)


def io_error(action: str, path: Path | str, exc: OSError) -> Io:
    """`WorldError::Io(String)` with the action and the path, so the round log says what failed."""
    return Io(f"{action} {path} failed: {exc.strerror or exc}")


def path_exists(path: Path | str) -> bool:
    """Rust's `Path::exists`: follows symlinks, and any error counts as "does not exist"."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


def write_new_file(path: Path, data: bytes, action: str) -> None:
    """Create `path` exclusively and write all of `data` (no fsync); on failure remove it, raise `Io`."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise io_error(action, path, exc) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        os.close(fd)
        remove_quietly(path)
        raise io_error(action, path, exc) from exc
    os.close(fd)


def remove_quietly(path: Path) -> None:
    """Unlink `path` if it is there (cleanup of a temp file: a failure changes nothing)."""
    with contextlib.suppress(OSError):
        os.unlink(path)
