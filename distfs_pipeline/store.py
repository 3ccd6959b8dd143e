"""The local content-addressed blob store (SPEC 2.1), plus our index of what the node must hold.

Upstream layout, kept byte-compatible so both tools can share a store:

    <root>/blobs/<content_hash>.blob     raw bytes, flat, no sharding
    <root>/pins.json                     {"pins": [sorted set]}

Ours, invisible to upstream (it only looks inside `blobs/` for `*.blob`):

    <root>/must_hold.idx                 append-only log, one "<hash> <size>" line per put

Why an index: upstream audits whatever the `blobs` directory lists, so a lost blob silently leaves
the candidate set (SPEC section 0). A store with our index is audited against what `put` recorded,
so a lost blob stays a candidate and fails as MISSING_SAMPLE.

Why an append-only log: each put is one `O_APPEND` write of one short line (O(1), safe between
processes), and the reader dedupes. `candidates()` keeps the parsed index in memory and, on each
call, only stats the log and parses the appended tail, so a round costs the same on 1,000 and on
100,000 blobs. Nothing on the read paths creates a directory or a file in the store.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, unquote

import blake3

from .errors import BlobHashInvalid, BlobHashMismatch, BlobNotFound, DistributedValidationFailed, Io, Serde

BLOBS_DIR = "blobs"
PINS_FILE = "pins.json"
FILES_INDEX_FILE = "files_index.json"
INDEX_FILE = "must_hold.idx"
BLOB_EXTENSION = "blob"
HASH_ALGORITHMS = ("blake3", "sha256")
# A directory whose mtime is this close to the moment we listed it may still change within the
# same timestamp tick (coarse kernel clocks tick every 1-10 ms), so its listing is not trusted
# as a cache: the next call lists again ("racy" entries, as git does for its index).
_RACY_WINDOW_NS = 50_000_000


class Hasher(Protocol):
    """The streaming interface shared by `blake3.blake3` and `hashlib` objects."""

    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def blake3_hex(data: bytes | memoryview) -> str:
    """Lowercase hex BLAKE3 of `data` (sample hashes and the default store hash)."""
    return blake3.blake3(data).hexdigest()


def validate_hash(content_hash: str) -> None:
    """Upstream's only rule: refuse an empty hash, `/`, `\\` or `..` (path safety, not hex syntax)."""
    if not content_hash or "/" in content_hash or "\\" in content_hash or ".." in content_hash:
        raise BlobHashInvalid(content_hash)


def _io_error(action: str, path: Path | str, exc: OSError) -> Io:
    """`WorldError::Io(String)` with the action and the path, so the round log says what failed."""
    return Io(f"{action} {path} failed: {exc.strerror or exc}")


def _exists(path: Path | str) -> bool:
    """Rust's `Path::exists`: follows symlinks, and any error counts as "does not exist"."""
    try:
        os.stat(path)
    except (OSError, ValueError):
        return False
    return True


@dataclass
class _IndexCache:
    """The parsed must-hold log and how much of the file it reflects."""

    ino: int = -1
    mtime_ns: int = -1
    consumed: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    ordered: list[str] = field(default_factory=list)
    snapshot: tuple[str, ...] = ()


@dataclass
class _ListingCache:
    """The last upstream listing and the blobs-dir mtime it was taken at."""

    mtime_ns: int = -1
    ino: int = -1
    racy: bool = True
    snapshot: tuple[str, ...] = ()


class LocalCasStore:
    """`LocalCasStore` with upstream semantics (SPEC 2.1) and our must-hold index.

    The instance caches the parsed index / listing for `candidates()`; it is not thread-safe
    (one auditor owns one store object), but any number of processes may `put` concurrently.
    """

    def __init__(self, root: str | os.PathLike[str], hash_algorithm: str = "blake3") -> None:
        if hash_algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"hash_algorithm must be one of {HASH_ALGORITHMS}, got {hash_algorithm!r}")
        self.root = Path(root)
        self.blobs_dir = self.root / BLOBS_DIR
        self.pins_path = self.root / PINS_FILE
        self.files_index_path = self.root / FILES_INDEX_FILE
        self.index_path = self.root / INDEX_FILE
        self.hash_algorithm = hash_algorithm
        self._blobs_prefix = os.path.join(os.fspath(self.blobs_dir), "")
        self._index = _IndexCache()
        self._listing = _ListingCache()

    # ------------------------------------------------------------------ hashing and paths

    def new_hasher(self) -> Hasher:
        """A streaming hasher of the store's algorithm (whole-blob verification)."""
        return blake3.blake3() if self.hash_algorithm == "blake3" else hashlib.sha256()

    def hash_hex(self, data: bytes | memoryview) -> str:
        """The store's content hash of `data`: lowercase hex BLAKE3 or SHA-256."""
        if self.hash_algorithm == "blake3":
            return blake3.blake3(data).hexdigest()
        return hashlib.sha256(data).hexdigest()

    def blob_path(self, content_hash: str) -> Path:
        """`<root>/blobs/<hash>.blob`, after `validate_hash` (so no path can escape `blobs/`)."""
        return Path(self.blob_file(content_hash))

    def blob_file(self, content_hash: str) -> str:
        """`blob_path` as a plain string: the per-check read paths skip `pathlib` overhead."""
        validate_hash(content_hash)
        return f"{self._blobs_prefix}{content_hash}.{BLOB_EXTENSION}"

    # ------------------------------------------------------------------ upstream blob API

    def put(self, content_hash: str, data: bytes) -> None:
        """Store `data` under `content_hash` (upstream order), then record it in our index.

        The hash is recomputed first (`BlobHashMismatch`); an existing file is never rewritten,
        even if it was tampered with; a new file appears atomically (temp + rename, no fsync, as
        upstream). The index line is appended on every put, also when the file already existed,
        so a put that crashed between the blob and the index is repaired by retrying it.
        """
        self._ensure_dirs()
        actual = self.hash_hex(data)
        if actual != content_hash:
            raise BlobHashMismatch(content_hash, actual)
        path = self.blob_path(content_hash)
        if not _exists(path):
            self._write_blob_atomic(path, content_hash, data)
        self._record_in_index(content_hash, len(data))

    def put_bytes(self, data: bytes) -> str:
        """Hash `data` with the store's algorithm, `put` it, return the hash."""
        content_hash = self.hash_hex(data)
        self.put(content_hash, data)
        return content_hash

    def has(self, content_hash: str) -> bool:
        """Whether the blob file exists (upstream `has`)."""
        return _exists(self.blob_path(content_hash))

    def get(self, content_hash: str) -> bytes:
        """Raw bytes of a blob: `BlobHashInvalid`, `BlobNotFound` if absent, `Io` on read errors."""
        path = self.blob_path(content_hash)
        try:
            with open(path, "rb") as handle:
                return handle.read()
        except (OSError, ValueError) as exc:
            raise self.classify_open_error(content_hash, path, exc) from exc

    def get_verified(self, content_hash: str) -> bytes:
        """`get`, then re-hash with the store's algorithm (`BlobHashMismatch` if it differs)."""
        data = self.get(content_hash)
        actual = self.hash_hex(data)
        if actual != content_hash:
            raise BlobHashMismatch(content_hash, actual)
        return data

    def classify_open_error(
        self, content_hash: str, path: Path | str, exc: OSError | ValueError
    ) -> BlobNotFound | Io:
        """Upstream checks `exists()` before reading: absent -> `BlobNotFound`, else `Io`.

        Shared with the sample readers so every read path maps errors the same way. A NUL in
        the hash (allowed by `validate_hash`) makes the path unusable: upstream's `exists()`
        is then false, so it is `BlobNotFound` too.
        """
        if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError) or not _exists(path):
            return BlobNotFound(content_hash)
        return _io_error("read blob", path, exc)

    def list_blob_hashes(self) -> list[str]:
        """Upstream listing: regular `*.blob` files, stem as hash, sorted bytewise, deduped.

        A missing `blobs` dir gives `[]`; an invalid stem fails the whole listing; symlinks,
        directories, temp files and dotfiles are skipped. Never creates anything.
        """
        try:
            with os.scandir(self.blobs_dir) as entries:
                hashes = [h for h in (_blob_stem(entry) for entry in entries) if h is not None]
        except FileNotFoundError:
            return []
        except OSError as exc:
            if not _exists(self.blobs_dir):
                return []
            raise _io_error("list blobs dir", self.blobs_dir, exc) from exc
        # Python orders str by code point, which equals UTF-8 byte order (Rust's String order).
        return sorted(set(hashes))

    # ------------------------------------------------------------------ pins (SPEC 2.1)

    def pin(self, content_hash: str) -> None:
        """Add a blob to `pins.json`; `BlobNotFound` if the blob is absent."""
        validate_hash(content_hash)
        if not self.has(content_hash):
            raise BlobNotFound(content_hash)
        pins = set(self.pins())
        pins.add(content_hash)
        self._save_pins(pins)

    def unpin(self, content_hash: str) -> bool:
        """Remove a pin; returns whether it was pinned. Upstream rewrites the file either way."""
        validate_hash(content_hash)
        pins = set(self.pins())
        removed = content_hash in pins
        pins.discard(content_hash)
        self._save_pins(pins)
        return removed

    def pins(self) -> list[str]:
        """The pinned hashes, sorted (`list_pins`). A missing file means no pins."""
        if not _exists(self.pins_path):
            return []
        try:
            raw = self.pins_path.read_bytes()
        except OSError as exc:
            raise _io_error("read pins", self.pins_path, exc) from exc
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Serde(f"parse {self.pins_path} failed: {exc}") from exc
        values = data.get("pins", []) if isinstance(data, dict) else None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise Serde(f'parse {self.pins_path} failed: expected {{"pins": [string]}}')
        return sorted(set(values))

    def is_pinned(self, content_hash: str) -> bool:
        validate_hash(content_hash)
        return content_hash in self.pins()

    # ------------------------------------------------------------------ our index

    def has_index(self) -> bool:
        """Whether the store carries our must-hold index (then it is audited against it)."""
        return _exists(self.index_path)

    def index_sizes(self) -> dict[str, int]:
        """Hash -> size recorded at put (the last line wins). Empty without an index."""
        if not self._refresh_index():
            return {}
        return dict(self._index.sizes)

    def candidates(self) -> Sequence[str]:
        """What a round may check: the index (sorted, deduped) if present, else the listing.

        Cached: an unchanged store costs one or two `stat` calls; an appended index costs only
        parsing the new tail. The result is an immutable tuple, shared between calls.
        """
        if self._refresh_index():
            return self._index.snapshot
        return self._cached_listing()

    # ------------------------------------------------------------------ internals: writing

    def _ensure_dirs(self) -> None:
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _io_error("create store dirs", self.blobs_dir, exc) from exc

    def _write_blob_atomic(self, path: Path, content_hash: str, data: bytes) -> None:
        tmp = path.with_name(f"{content_hash}.tmp-{os.getpid()}-{time.time_ns()}")
        _write_new_file(tmp, data, "write blob temp")
        try:
            os.replace(tmp, path)
        except OSError as exc:
            _remove_quietly(tmp)
            raise _io_error("rename blob temp", tmp, exc) from exc

    def _save_pins(self, pins: set[str]) -> None:
        self._ensure_dirs()
        body = json.dumps({"pins": sorted(pins)}, indent=2).encode()
        tmp = self.pins_path.with_suffix(".tmp")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, self.pins_path)
        except OSError as exc:
            raise _io_error("write pins", self.pins_path, exc) from exc

    def _record_in_index(self, content_hash: str, size: int) -> None:
        if not _exists(self.index_path) and content_hash in self._create_index_from_listing():
            return
        _append_line(self.index_path, _index_line(content_hash, size))

    def _create_index_from_listing(self) -> set[str]:
        """First put on a store: seed the index with the blobs already present.

        Otherwise the first put on an upstream store would shrink its audit to one blob. The
        seeded file appears atomically (`link` refuses to overwrite), so a concurrent first put
        either wins or appends to the winner's file; invalid stems are not seeded. Returns the
        hashes this call seeded (empty if another writer created the index first).
        """
        lines, seeded = [], set()
        for content_hash, path in _valid_blob_files(self.blobs_dir):
            try:
                lines.append(_index_line(content_hash, os.stat(path).st_size))
            except OSError:
                continue  # gone since the scan: it is not held, so nothing to record
            seeded.add(content_hash)
        tmp = self.root / f"{INDEX_FILE}.tmp-{os.getpid()}-{time.time_ns()}"
        _write_new_file(tmp, "".join(lines).encode(), "write index temp")
        try:
            os.link(tmp, self.index_path)
        except FileExistsError:
            return set()
        except OSError:
            return self._create_index_without_link(lines, seeded)
        finally:
            _remove_quietly(tmp)
        return seeded

    def _create_index_without_link(self, lines: list[str], seeded: set[str]) -> set[str]:
        """For filesystems without hard links: exclusive create, then one append of the seed.

        A reader may briefly see the index before the seed lands; concurrent appends stay whole.
        """
        try:
            fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return set()
        except OSError as exc:
            raise _io_error("create index", self.index_path, exc) from exc
        try:
            os.write(fd, "".join(lines).encode())
        except OSError as exc:
            raise _io_error("write index", self.index_path, exc) from exc
        finally:
            os.close(fd)
        return seeded

    # ------------------------------------------------------------------ internals: reading

    def _refresh_index(self) -> bool:
        """Bring the cached index up to date with the log; False when there is no index."""
        try:
            st = os.stat(self.index_path)
        except FileNotFoundError:
            self._index = _IndexCache()
            return False
        except OSError as exc:
            raise _io_error("stat index", self.index_path, exc) from exc
        cache = self._index
        if (
            st.st_ino != cache.ino
            or st.st_size < cache.consumed
            or (st.st_size == cache.consumed and st.st_mtime_ns != cache.mtime_ns)
        ):
            cache = self._index = _IndexCache(ino=st.st_ino)
        if st.st_size > cache.consumed:
            self._read_index_tail(cache)
        cache.mtime_ns = st.st_mtime_ns
        return True

    def _read_index_tail(self, cache: _IndexCache) -> None:
        try:
            with open(self.index_path, "rb") as handle:
                handle.seek(cache.consumed)
                tail = handle.read()
        except OSError as exc:
            raise _io_error("read index", self.index_path, exc) from exc
        complete = tail.rfind(b"\n") + 1  # a line still being written is read next time
        if complete == 0:
            return
        cache.consumed += complete
        new = _parse_index_lines(tail[:complete], cache.sizes)
        if not new:
            return
        if len(new) * 8 < len(cache.ordered):
            for content_hash in new:
                bisect.insort(cache.ordered, content_hash)
        else:
            cache.ordered.extend(new)
            cache.ordered.sort()
        cache.snapshot = tuple(cache.ordered)

    def _cached_listing(self) -> tuple[str, ...]:
        """Upstream listing, relisted only when the blobs dir changed (its mtime or inode)."""
        try:
            st = os.stat(self.blobs_dir)
            key = (st.st_mtime_ns, st.st_ino)
        except OSError:
            key = (-1, -1)  # missing (or unreadable): let `list_blob_hashes` decide
        cache = self._listing
        if not cache.racy and key == (cache.mtime_ns, cache.ino):
            return cache.snapshot
        listed_at = time.time_ns()
        snapshot = tuple(self.list_blob_hashes())
        racy = key[0] < 0 or key[0] + _RACY_WINDOW_NS >= listed_at
        self._listing = _ListingCache(mtime_ns=key[0], ino=key[1], racy=racy, snapshot=snapshot)
        return snapshot


# ---------------------------------------------------------------------- module helpers


def _blob_stem(entry: os.DirEntry[str]) -> str | None:
    """The hash named by a directory entry, or None if upstream would skip the entry."""
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
    except OSError as exc:
        raise _io_error("stat blob entry", entry.path, exc) from exc
    stem, ext = _split_extension(entry.name)
    if ext != BLOB_EXTENSION:
        return None
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:
        shown = entry.path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise DistributedValidationFailed(f"invalid blob file name: {shown}") from None
    validate_hash(stem)
    return stem


def _split_extension(name: str) -> tuple[str, str | None]:
    """Rust's `file_stem`/`extension`: split at the last dot unless the name starts with it."""
    if name == "..":
        return name, None
    dot = name.rfind(".")
    if dot <= 0:
        return name, None
    return name[:dot], name[dot + 1 :]


def _valid_blob_files(blobs_dir: Path) -> list[tuple[str, Path]]:
    """(hash, path) of the blob files upstream would list, skipping invalid names."""
    found = []
    try:
        with os.scandir(blobs_dir) as entries:
            for entry in entries:
                try:
                    stem = _blob_stem(entry)
                except (DistributedValidationFailed, BlobHashInvalid, Io):
                    continue
                if stem is not None:
                    found.append((stem, Path(entry.path)))
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise _io_error("list blobs dir", blobs_dir, exc) from exc
    return found


_ESCAPE = "%\n\r "


def _index_line(content_hash: str, size: int) -> str:
    """One log line. Hashes from `put` are hex; odd listed names are %-escaped to stay one line."""
    if any(c in content_hash for c in _ESCAPE):
        content_hash = quote(content_hash, safe="")
    return f"{content_hash} {size}\n"


def _parse_index_lines(block: bytes, sizes: dict[str, int]) -> list[str]:
    """Parse complete lines into `sizes`; return the hashes seen for the first time.

    A torn line (a crash mid-append) lacks the size field and is skipped; the next append starts
    on a fresh line (see `_append_line`), so it cannot swallow a later record.
    """
    fresh: list[str] = []
    for raw in block.decode("utf-8", "replace").split("\n"):
        content_hash, sep, size_text = raw.partition(" ")
        if not sep or not size_text.isdigit():
            continue
        if "%" in content_hash:
            content_hash = unquote(content_hash)
        try:
            validate_hash(content_hash)
        except BlobHashInvalid:
            continue
        if content_hash not in sizes:
            fresh.append(content_hash)
        sizes[content_hash] = int(size_text)
    return fresh


def _append_line(path: Path, line: str) -> None:
    """One `O_APPEND` write; starts with a newline if a torn line was left at the end."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _io_error("open index", path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        os.write(fd, line.encode())
    except OSError as exc:
        raise _io_error("append index", path, exc) from exc
    finally:
        os.close(fd)


def _write_new_file(path: Path, data: bytes, action: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise _io_error(action, path, exc) from exc
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        os.close(fd)
        _remove_quietly(path)
        raise _io_error(action, path, exc) from exc
    os.close(fd)


def _remove_quietly(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)
