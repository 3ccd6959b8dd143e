"""The embedded demo store: what `python -m distfs_pipeline` audits when no store is given.

Why: a fresh checkout should show the audit doing real work (real files, real failures) with no
set-up and no network. The store is built once, outside the tracked tree, under
`$XDG_CACHE_HOME/distfs_pipeline/demo-store-v2` (default `~/.cache/...`), with our `put`, so it
carries the must-hold index and lost blobs stay candidates, and holds both generations of upstream's
blob files as today's nodes write them (SPEC 2.1): every other blob is compressible text, which `put`
stores as `O7CBLOB1` (zstd) when it is at least 1 KiB; the rest is incompressible and stays raw. The
damage is done to the bytes ON DISK (for a compressed blob: to its header or zstd payload).

The mix (`DEMO_MIX`; also written to `demo-manifest.json` in the store root, hash by hash):

| condition   | blobs | how it is damaged                                       | every check fails as |
|-------------|-------|---------------------------------------------------------|----------------------|
| healthy     | 40    | 1 B .. 200 000 B, several larger than one 64 KiB chunk  | (passes)             |
| bit_rot     | 2     | one on-disk byte flipped in place (one raw and small,   | HASH_MISMATCH        |
|             |       | one compressed and multi-chunk)                         |                      |
| truncated   | 1     | a compressed file cut to half its on-disk length         | HASH_MISMATCH        |
| deleted     | 1     | file removed, still in the index                        | MISSING_SAMPLE       |
| unreadable  | 1     | file replaced by a directory of the same name           | READ_IO_ERROR        |

A directory stands in for an unreadable file because reads then fail for root too (permission
bits do not stop root). Contents are deterministic (BLAKE3 XOF of a label), so every machine builds
the same store and a virtual-clock run gives the same summary everywhere.

Building is idempotent and safe against a concurrent build (e.g. a multirun's parallel jobs): the
store is built in a temp directory beside the target and renamed into place; the loser of the race
discards its copy. The version marker is written last, so a marker means a complete store.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import blake3

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.store import LocalCasStore

DEMO_VERSION = 2
DEMO_DIRNAME = f"demo-store-v{DEMO_VERSION}"
MARKER_FILE = ".distfs-demo-version"
MANIFEST_FILE = "demo-manifest.json"

# condition -> (number of blobs, the failure reason every check of such a blob gives; None: passes)
DEMO_MIX: dict[str, tuple[int, str | None]] = {
    "healthy": (40, None),
    "bit_rot": (2, "HASH_MISMATCH"),
    "truncated": (1, "HASH_MISMATCH"),
    "deleted": (1, "MISSING_SAMPLE"),
    "unreadable": (1, "READ_IO_ERROR"),
}
DEMO_BLOB_COUNT = sum(count for count, _ in DEMO_MIX.values())

_HEALTHY_SIZES = (1, 512, 4096, 32_768, 65_536, 65_537, 131_072, 200_000)
_DAMAGED_SIZES = {
    "bit_rot": (3000, 150_000),
    "truncated": (90_000,),
    "deleted": (5000,),
    "unreadable": (7000,),
}


def default_demo_root() -> Path:
    """`$XDG_CACHE_HOME/distfs_pipeline/demo-store-v1`, or `~/.cache/...` (XDG: ignore relative)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    return base / "distfs_pipeline" / DEMO_DIRNAME


def ensure_demo_store(root: Path | None = None) -> Path:
    """The demo store at `root` (default `default_demo_root()`), built if not yet complete; a
    problem with its dir is a `UsageError` naming the dir and what sets it."""
    root = (root or default_demo_root()).absolute()
    try:
        return _ensure_demo_store(root)
    except OSError as err:
        raise UsageError(
            f"demo store {root}: {safefile.describe(err)} (it lives under XDG_CACHE_HOME, else "
            "~/.cache; point that at a dir of your own, or audit a store: runtime.storage_root)"
        ) from None


def _ensure_demo_store(root: Path) -> Path:
    safefile.make_trusted_dirs(root.parent)  # a cache dir someone else can change: refused
    if os.path.islink(root):
        raise safefile.UnsafeFileError(errno.EPERM, "refusing to use it: it is a symbolic link", str(root))
    if (root / MARKER_FILE).is_file():
        return root
    if root.exists():  # an incomplete or foreign leftover under our own name: start over
        shutil.rmtree(root)
    scratch = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))  # ours, unguessable
    build_demo_store(scratch)
    os.chmod(scratch, 0o755)
    try:
        os.rename(scratch, root)
    except OSError:
        shutil.rmtree(scratch)  # a concurrent build won the race; theirs is identical
        if not (root / MARKER_FILE).is_file():
            raise
    return root


_WORDS = tuple(
    b"blob chunk store audit sample window proof node epoch round hash seed cursor backoff reward "
    b"index".split()
)


def _content(label: str, size: int, compressible: bool = False) -> bytes:
    """Deterministic bytes: a BLAKE3 XOF stream, or (compressible) words picked by one."""
    stream = blake3.blake3(label.encode()).digest(length=size)
    if not compressible:
        return stream
    text = b" ".join(_WORDS[b % len(_WORDS)] for b in stream)
    return text[:size]


# Damaged blobs stored compressed (the rest of the damaged ones are incompressible, so raw).
_COMPRESSED_DAMAGE = {("bit_rot", 1), ("truncated", 0)}


def build_demo_store(root: Path) -> dict[str, str]:
    """Write the demo mix into `root`; returns hash -> condition (also saved as the manifest)."""
    store = LocalCasStore(root)
    manifest: dict[str, str] = {}
    for i in range(DEMO_MIX["healthy"][0]):
        size = _HEALTHY_SIZES[i % len(_HEALTHY_SIZES)] + i // len(_HEALTHY_SIZES)
        manifest[store.put_bytes(_content(f"healthy-{i}", size, compressible=i % 2 == 1))] = "healthy"
    for condition, sizes in _DAMAGED_SIZES.items():
        for i, size in enumerate(sizes):
            compressible = (condition, i) in _COMPRESSED_DAMAGE
            content_hash = store.put_bytes(_content(f"{condition}-{i}", size, compressible))
            path = store.blob_path(content_hash)
            _damage(path, condition, path.stat().st_size)
            manifest[content_hash] = condition
    (root / MANIFEST_FILE).write_text(json.dumps(dict(sorted(manifest.items())), indent=2) + "\n")
    (root / MARKER_FILE).write_text(f"{DEMO_VERSION}\n")
    return manifest


def _damage(path: Path, condition: str, size: int) -> None:
    """Damage the file as stored (`size` is its on-disk length)."""
    if condition == "bit_rot":
        with open(path, "r+b") as handle:
            handle.seek(size // 2)
            byte = handle.read(1)
            handle.seek(size // 2)
            handle.write(bytes([byte[0] ^ 0x01]))
    elif condition == "truncated":
        os.truncate(path, size // 2)
    elif condition == "deleted":
        path.unlink()
    elif condition == "unreadable":
        path.unlink()
        path.mkdir()


def load_manifest(root: Path) -> dict[str, str]:
    """hash -> condition of a demo store (for tests and for checking a summary by hand)."""
    data: dict[str, str] = json.loads((root / MANIFEST_FILE).read_text())
    return data
