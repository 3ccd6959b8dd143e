"""File primitives shared by the blob store (`store.py`) and our must-hold index (`index.py`).

Both keep files under the store root and must fail the same way: a content hash is a file name, so
upstream's hash rule is a path-safety rule; `path_exists` is Rust's `Path::exists`, on which upstream's
error mapping turns; new files are created exclusively and removed if they cannot be written; every
`OSError` becomes one `Io` that names the action and the path. A module of its own so that the store
and the index can share these without importing each other.

Reading our own files back (the index, its snapshots, the listing cache) goes through `read_own`:
`safefile.open_read` (no symlink at the last component, never blocks on a FIFO, regular files only),
a size cap, and one buffer of the file's size rather than a list of pieces joined afterwards.
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import BlobHashInvalid, Io


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


def read_own(path: Path | str, cap: int, offset: int = 0) -> tuple[bytes, os.stat_result]:
    """Bytes `offset..end` of a regular file of ours and its `fstat` after the read.

    Refused (an `OSError` naming the file) when it is a link, FIFO, device or directory, or when it
    holds more than `cap` bytes. Compare the returned `st_size` with `offset + len(data)` to tell
    whether the file changed while it was read.
    """
    fd, st = safefile.open_read(path)
    try:
        if st.st_size > cap:
            raise OSError(errno.EFBIG, f"larger than the {cap} bytes allowed", str(path))
        want = max(st.st_size - offset, 0)
        data = os.pread(fd, want + 1, offset) if want < (1 << 30) else b""
        if len(data) <= want:  # short read (or a huge file): finish in pieces, capped
            pieces, at = [data], offset + len(data)
            while piece := os.pread(fd, 1 << 24, at):
                pieces.append(piece)
                at += len(piece)
                if at > cap:
                    raise OSError(errno.EFBIG, f"larger than the {cap} bytes allowed", str(path))
            data = b"".join(pieces)
        if offset + len(data) > cap:
            raise OSError(errno.EFBIG, f"larger than the {cap} bytes allowed", str(path))
        return data, os.fstat(fd)
    finally:
        os.close(fd)


def escaped_name(path: str) -> str:
    """A file name an operator can type back: non-UTF-8 bytes as `\\xNN`, control characters escaped.

    Python's `ascii()`-style escaping of the raw bytes, without the quotes (`b'...'`).
    """
    raw = os.fsencode(path)
    return repr(raw)[2:-1]
