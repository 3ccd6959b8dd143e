"""The local content-addressed blob store (SPEC 2.1), plus our index of what the node must hold.

Upstream layout, kept byte-compatible so both tools can share a store:

    <root>/blobs/<content_hash>.blob     raw bytes, flat, no sharding
    <root>/pins.json                     {"pins": [sorted set]}

Ours, invisible to upstream (it only looks inside `blobs/` for `*.blob`):

    <root>/must_hold.idx                 append-only log, one "<hash> <size>" line per put
    <root>/must_hold.sorted              sorted snapshot of the log's hashes (a cache, see below)

Why an index: upstream audits whatever the `blobs` directory lists, so a lost blob silently leaves
the candidate set (SPEC section 0). A store with our index is audited against what `put` recorded,
so a lost blob stays a candidate and fails as MISSING_SAMPLE.

Why an append-only log: each put is one `O_APPEND` write of one short line (O(1), safe between
processes), and the reader dedupes. `candidates()` keeps the parsed index in memory and, on each
call, only stats the log and parses the appended tail, so a round costs the same on 1,000 and on
100,000 blobs. Nothing on the read paths creates a directory or a file in the store.

The one-time load is O(store) but kept small: plain log lines are parsed in bulk (an odd line, torn
or %-quoted or invalid, sends only its neighbourhood through the per-line parser), and once the log
passes 1 MiB, `put` keeps `must_hold.sorted`: the sorted, deduplicated hashes of a prefix of the log,
bound to that prefix by its BLAKE3 and rewritten each time the log grows by another 1/16 (amortized
O(log n) per put). A reader takes the snapshot instead of sorting the prefix and parses only the rest
of the log; a snapshot that is missing, corrupt or describes other log bytes is ignored.
The snapshot changes nothing but speed: the candidates are those of the log alone.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import logging
import math
import operator
import os
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import BinaryIO, Protocol
from urllib.parse import quote, unquote

import blake3

from .errors import BlobHashInvalid, BlobHashMismatch, BlobNotFound, DistributedValidationFailed, Io, Serde

BLOBS_DIR = "blobs"
PINS_FILE = "pins.json"
FILES_INDEX_FILE = "files_index.json"
INDEX_FILE = "must_hold.idx"
SNAPSHOT_FILE = "must_hold.sorted"
BLOB_EXTENSION = "blob"
_BLOB_SUFFIX = f".{BLOB_EXTENSION}"
HASH_ALGORITHMS = ("blake3", "sha256")
# A directory whose mtime is this close to the moment we listed it may still change within the
# same timestamp tick (coarse kernel clocks tick every 1-10 ms), so its listing is not trusted
# as a cache: the next call lists again ("racy" entries, as git does for its index).
_RACY_WINDOW_NS = 50_000_000
# The index snapshot (see the module docstring): header, then one (%-quoted) hash per line, sorted,
# then a BLAKE3 of everything before it.
_SNAPSHOT_MAGIC = b"DFSIDXS1"
_SNAPSHOT_HEADER = struct.Struct("<8sQ32sQ")  # magic, log bytes covered, BLAKE3 of them, hash count
_SNAPSHOT_MIN_BYTES = 1 << 20  # a smaller log parses in a few milliseconds: no snapshot
_SNAPSHOT_GROWTH = 1.0625  # rewrite each time the log grows by 1/16: the unsorted rest stays small
_DIGEST = 32
_STREAM_BYTES = 1 << 20
_LOG = logging.getLogger(__name__)


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


def require_regular_file(st: os.stat_result, path: Path | str) -> None:
    """`Io` unless `st` is a regular file: a directory fails as upstream's read does (EISDIR)."""
    if stat.S_ISDIR(st.st_mode):
        raise Io(f"read blob {path} failed: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Io(f"read blob {path} failed: not a regular file")


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
    ordered: list[str] = field(default_factory=list)  # sorted, no duplicates
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
        self.snapshot_path = self.root / SNAPSHOT_FILE
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
        """Raw bytes of a blob: `BlobHashInvalid`, `BlobNotFound` if absent, `Io` on read errors.

        For a regular file this is upstream's `get`. Anything else under a blob name is refused
        with `Io` (a directory as upstream's EISDIR) without reading it: upstream would block on a
        FIFO or read a device without end, and our index lists such names (the listing skips them),
        so a probe must count them as READ_IO_ERROR, not hang.
        """
        path = self.blob_file(content_hash)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise self.classify_open_error(content_hash, path, exc) from exc
        try:
            require_regular_file(os.fstat(fd), path)
            with open(fd, "rb", closefd=False) as handle:
                return handle.read()
        except OSError as exc:
            raise _io_error("read blob", path, exc) from exc
        finally:
            os.close(fd)

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

        In bulk: the names of the regular files, then one check of all their stems together; the
        per-entry rules run only when that check (or the scan) meets something odd, in directory
        order, so the first offending entry fails the listing as before.
        """
        try:
            with os.scandir(self.blobs_dir) as entries:
                names = [entry.name for entry in entries if entry.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        except OSError:
            return self._list_blob_hashes_per_entry()  # says which entry or the dir, as upstream
        stems = [name[:-5] for name in names if name.endswith(_BLOB_SUFFIX)]
        if "" in stems:
            stems.remove("")  # the dotfile ".blob": no extension for Rust
        joined = "/".join(stems)  # no file name holds a "/"
        if not joined.isascii() or "\\" in joined or ".." in joined:
            for stem in stems:
                _check_stem(stem, os.path.join(self.blobs_dir, stem + _BLOB_SUFFIX))
        # One directory holds each name once, so the stems are unique. Python orders str by code
        # point, which equals UTF-8 byte order (Rust's String order).
        stems.sort()
        return stems

    def _list_blob_hashes_per_entry(self) -> list[str]:
        """`list_blob_hashes` entry by entry (the reference rules; used when the bulk scan fails)."""
        try:
            with os.scandir(self.blobs_dir) as entries:
                hashes = [h for h in (_blob_stem(entry) for entry in entries) if h is not None]
        except FileNotFoundError:
            return []
        except OSError as exc:
            if not _exists(self.blobs_dir):
                return []
            raise _io_error("list blobs dir", self.blobs_dir, exc) from exc
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
        if any(_has_lone_surrogate(v) for v in values):  # serde_json refuses "\ud800"; so do we
            raise Serde(f"parse {self.pins_path} failed: lone surrogate in a pin")
        return sorted(set(values))

    def is_pinned(self, content_hash: str) -> bool:
        validate_hash(content_hash)
        return content_hash in self.pins()

    # ------------------------------------------------------------------ our index

    def has_index(self) -> bool:
        """Whether the store carries our must-hold index (then it is audited against it)."""
        return _exists(self.index_path)

    def index_sizes(self) -> dict[str, int]:
        """Hash -> size recorded at put (the last line wins). Empty without an index.

        Parses the whole log on each call: no round needs the sizes, so they are not cached.
        """
        try:
            with open(self.index_path, "rb") as handle:
                log = handle.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _io_error("read index", self.index_path, exc) from exc
        hashes, sizes = _parse_index_lines(log[: log.rfind(b"\n") + 1])
        return dict(zip(hashes, map(int, sizes), strict=True))

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
        """Upstream `write_json_atomic`: compact `serde_json::to_vec` bytes (UTF-8, not \\u-escaped),
        through the temp `pins.tmp-<pid>-<nanos>` (the path with its extension replaced)."""
        self._ensure_dirs()
        text = json.dumps({"pins": sorted(pins)}, separators=(",", ":"), ensure_ascii=False)
        try:
            body = text.encode()
        except UnicodeEncodeError as exc:  # a surrogate-escaped (non-UTF-8) name: no Rust `String`
            raise Serde(f"serialize {self.pins_path} failed: {exc}") from None
        tmp = self.pins_path.with_name(f"{self.pins_path.stem}.tmp-{os.getpid()}-{time.time_ns()}")
        try:
            tmp.write_bytes(body)
            os.replace(tmp, self.pins_path)
        except OSError as exc:
            _remove_quietly(tmp)
            raise _io_error("write pins", self.pins_path, exc) from exc

    def _record_in_index(self, content_hash: str, size: int) -> None:
        """Append the put's line (seeding the index first on an upstream store), then keep the
        snapshot current."""
        created = not _exists(self.index_path)
        seeded, end = self._create_index_from_listing() if created else (set(), 0)
        grown_from = 0  # the log size before this put's writes; `end` is the size after them
        if content_hash not in seeded:
            before, end = _append_line(self.index_path, _index_line(content_hash, size))
            grown_from = 0 if created else before
        if end >= _SNAPSHOT_MIN_BYTES and (
            _snapshot_step(grown_from) != _snapshot_step(end) or not _exists(self.snapshot_path)
        ):
            self._write_snapshot()

    def _create_index_from_listing(self) -> tuple[set[str], int]:
        """First put on a store: seed the index with the blobs already present.

        Otherwise the first put on an upstream store would shrink its audit to one blob. The
        seeded file appears atomically (`link` refuses to overwrite), so a concurrent first put
        either wins or appends to the winner's file; invalid stems are not seeded. Returns the
        hashes this call seeded (empty if another writer created the index first) and the size
        of the seed it wrote.
        """
        lines, seeded = [], set()
        for content_hash, path in _valid_blob_files(self.blobs_dir):
            try:
                lines.append(_index_line(content_hash, os.stat(path).st_size))
            except OSError:
                continue  # gone since the scan: it is not held, so nothing to record
            seeded.add(content_hash)
        seed = "".join(lines).encode()
        tmp = self.root / f"{INDEX_FILE}.tmp-{os.getpid()}-{time.time_ns()}"
        _write_new_file(tmp, seed, "write index temp")
        try:
            os.link(tmp, self.index_path)
        except FileExistsError:
            return set(), 0
        except OSError:
            return self._create_index_without_link(seed, seeded)
        finally:
            _remove_quietly(tmp)
        return seeded, len(seed)

    def _create_index_without_link(self, seed: bytes, seeded: set[str]) -> tuple[set[str], int]:
        """For filesystems without hard links: exclusive create, then one append of the seed.

        A reader may briefly see the index before the seed lands; concurrent appends stay whole.
        """
        try:
            fd = os.open(self.index_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return set(), 0
        except OSError as exc:
            raise _io_error("create index", self.index_path, exc) from exc
        try:
            os.write(fd, seed)
        except OSError as exc:
            raise _io_error("write index", self.index_path, exc) from exc
        finally:
            os.close(fd)
        return seeded, len(seed)

    def _write_snapshot(self) -> None:
        """Rewrite `must_hold.sorted` from the log's complete lines (atomically: temp + rename).

        Only `put` calls this; the snapshot is a cache, so a failure is logged and the put stands.
        Like a reader, it starts from the old snapshot if that matches the log (one read of the
        log serves both, so the new snapshot describes exactly the bytes it was made from).
        """
        tmp = self.root / f"{SNAPSHOT_FILE}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            with open(self.index_path, "rb") as handle:
                log = handle.read()
            covered = log.rfind(b"\n") + 1
            if covered == 0:
                return
            hashes, start = self._load_snapshot(partial(_bytes_line_prefix_digest, log)) or ([], 0)
            hashes += _parse_index_lines(log[start:covered])[0]
            ordered: list[str] = []
            _merge_sorted(ordered, hashes)
            _write_new_file(tmp, _encode_snapshot(log, covered, ordered), "write index snapshot temp")
            os.replace(tmp, self.snapshot_path)
        except (OSError, Io) as exc:
            _remove_quietly(tmp)
            _LOG.warning("index snapshot %s not written: %s", self.snapshot_path, exc)

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
            self._read_index_tail(cache, st.st_size)
        cache.mtime_ns = st.st_mtime_ns
        return True

    def _read_index_tail(self, cache: _IndexCache, size: int) -> None:
        """Parse what the log holds past `cache.consumed` (on a first load of a large log, past
        what a sound snapshot covers) and merge it into the candidates."""
        hashes: list[str] = []
        consumed = cache.consumed
        if consumed == 0 and size >= _SNAPSHOT_MIN_BYTES:
            loaded = self._load_snapshot(self._log_prefix_digest)
            if loaded is not None:
                hashes, consumed = loaded
        try:
            with open(self.index_path, "rb") as handle:
                handle.seek(consumed)
                tail = handle.read()
        except OSError as exc:
            raise _io_error("read index", self.index_path, exc) from exc
        complete = tail.rfind(b"\n") + 1  # a line still being written is read next time
        if complete:
            hashes += _parse_index_lines(tail[:complete])[0]
        cache.consumed = consumed + complete
        if _merge_sorted(cache.ordered, hashes):
            cache.snapshot = tuple(cache.ordered)

    def _load_snapshot(
        self, log_prefix_digest: Callable[[int], bytes | None]
    ) -> tuple[list[str], int] | None:
        """(hashes, log bytes they cover) from a sound snapshot, else None.

        Sound: intact, and `log_prefix_digest(covered)` (the BLAKE3 of the log's first `covered`
        bytes, if they end a line) equals the digest the snapshot was made for.
        """
        try:
            with open(self.snapshot_path, "rb") as handle:
                raw = handle.read()
        except OSError:
            return None  # a cache: without it the whole log is parsed
        header = _snapshot_header(raw)
        if header is None:
            return None
        covered, prefix_digest, count = header
        if log_prefix_digest(covered) != prefix_digest:
            return None
        hashes = _snapshot_hashes(raw, count)
        return None if hashes is None else (hashes, covered)

    def _log_prefix_digest(self, covered: int) -> bytes | None:
        """`_line_prefix_digest` of the log file as it is now (None if it cannot be read)."""
        try:
            with open(self.index_path, "rb", buffering=0) as handle:
                return _line_prefix_digest(handle, covered)
        except OSError:
            return None

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
    _check_stem(stem, entry.path)
    return stem


def _has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a UTF-16 surrogate (a JSON `\\udXXX` escape not part of a pair)."""
    return not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text)


def _check_stem(stem: str, path: str) -> None:
    """Upstream's rules for a listed stem: valid UTF-8 (else the whole listing fails), a valid hash."""
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:
        shown = path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        raise DistributedValidationFailed(f"invalid blob file name: {shown}") from None
    validate_hash(stem)


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


def _quoted(content_hash: str) -> str:
    """Hashes from `put` are hex; odd listed names are %-escaped to stay one line."""
    if any(c in content_hash for c in _ESCAPE):
        return quote(content_hash, safe="")
    return content_hash


def _index_line(content_hash: str, size: int) -> str:
    """One log line: `<hash> <size>`."""
    return f"{_quoted(content_hash)} {size}\n"


# Every byte except ASCII whitespace (what `str.split()` splits ASCII text at): deleting these
# leaves a block's whitespace, in order.
_NOT_WHITESPACE = bytes(b for b in range(256) if b not in b" \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f")
_PER_LINE_BYTES = 4096  # an odd part of a block at most this long goes through the per-line parser
_INSORT_MAX = 16  # up to this many hashes are merged into the candidates one by one


def _parse_index_lines(block: bytes) -> tuple[list[str], list[str]]:
    """(hashes, size texts) of the valid lines of a block of complete lines, in log order.

    A torn line (a crash mid-append) lacks the size field and is skipped; the next append starts
    on a fresh line (see `_append_line`), so it cannot swallow a later record. Plain blocks (the
    usual case) are parsed in bulk; a block holding an odd line (torn, %-quoted, invalid, not
    ASCII) is halved at a line boundary until the odd parts are small enough for the per-line
    parser, so a few odd lines cost little more than plain ones. Both give the same result.
    """
    plain = _parse_plain_lines(block)
    if plain is not None:
        return plain
    half = len(block) // 2
    mid = (block.rfind(b"\n", 0, half) + 1) or (block.find(b"\n", half) + 1)
    if len(block) <= _PER_LINE_BYTES or mid >= len(block):
        return _parse_odd_lines(block)
    head, tail = _parse_index_lines(block[:mid]), _parse_index_lines(block[mid:])
    return head[0] + tail[0], head[1] + tail[1]


def _parse_plain_lines(block: bytes) -> tuple[list[str], list[str]] | None:
    """The bulk parse, or None unless every line is plain: `<hash> <digits>`, ASCII, no `%`,
    the hash valid. Then the whitespace of the block is one space and one newline a line, in
    turn, and (no field being empty) `split()` yields hash, size, hash, size...
    """
    lines = block.count(b"\n")
    if (
        not block.isascii()
        or b"%" in block
        or b"/" in block
        or b"\\" in block
        or (b"." in block and b".." in block)  # one-byte searches are the fast ones
        or block.translate(None, _NOT_WHITESPACE) != b" \n" * lines
    ):
        return None
    fields = block.decode("ascii").split()
    sizes = fields[1::2]
    if len(fields) != 2 * lines or not "".join(sizes).isdigit():
        return None  # an empty field (`split()` drops it) or a size that is not a number
    return fields[0::2], sizes


def _parse_odd_lines(block: bytes) -> tuple[list[str], list[str]]:
    """The per-line parser: the reference rules for any line."""
    hashes: list[str] = []
    sizes: list[str] = []
    for raw in block.decode("utf-8", "replace").split("\n"):
        content_hash, sep, size_text = raw.partition(" ")
        if not sep or not size_text.isdecimal():  # what `int()` reads (isdigit() also has "²")
            continue
        if "%" in content_hash:
            content_hash = unquote(content_hash)
        try:
            validate_hash(content_hash)
        except BlobHashInvalid:
            continue
        hashes.append(content_hash)
        sizes.append(size_text)
    return hashes, sizes


def _merge_sorted(ordered: list[str], hashes: list[str]) -> bool:
    """Merge `hashes` into `ordered` (sorted, no duplicates), in place; True if it changed.

    A few hashes (a put between rounds) are looked up and inserted by bisection. Many (the first
    load, a long tail) are merged by one sort: timsort is linear on the runs that are already in
    order (`ordered`, a snapshot), so only the new part costs n log n. One pass then proves the
    result strictly increasing; only if it is not are the duplicates dropped.
    """
    if len(hashes) <= _INSORT_MAX:
        fresh = sorted({h for h in hashes if not _sorted_contains(ordered, h)})
        for content_hash in fresh:
            bisect.insort(ordered, content_hash)
        return bool(fresh)
    before = len(ordered)
    ordered += hashes
    ordered.sort()
    if not all(map(operator.lt, ordered, islice(ordered, 1, None))):
        ordered[:] = dict.fromkeys(ordered)  # drops the duplicates, keeps the order
    return len(ordered) != before


def _sorted_contains(ordered: list[str], content_hash: str) -> bool:
    at = bisect.bisect_left(ordered, content_hash)
    return at < len(ordered) and ordered[at] == content_hash


def _snapshot_step(log_size: int) -> int:
    """Which snapshot size a log of `log_size` bytes has passed (-1: none): a put that changes
    it rewrites the snapshot, so one is written per 1/16 of growth, by whoever passes the size."""
    if log_size < _SNAPSHOT_MIN_BYTES:
        return -1
    return int(math.log(log_size / _SNAPSHOT_MIN_BYTES, _SNAPSHOT_GROWTH))


def _encode_snapshot(log: bytes, covered: int, hashes: list[str]) -> bytes:
    """Header (bound to `log[:covered]` by its BLAKE3), the sorted hashes one a line, a BLAKE3."""
    lines = "\n".join(hashes)
    if any(c in lines for c in "%\r ") or lines.count("\n") != len(hashes) - 1:
        lines = "\n".join(map(_quoted, hashes))
    section = (lines + "\n").encode() if hashes else b""
    prefix_digest = blake3.blake3(memoryview(log)[:covered]).digest()
    body = _SNAPSHOT_HEADER.pack(_SNAPSHOT_MAGIC, covered, prefix_digest, len(hashes)) + section
    return body + blake3.blake3(body).digest()


def _snapshot_header(raw: bytes) -> tuple[int, bytes, int] | None:
    """(log bytes covered, their BLAKE3, hash count) of an intact snapshot file, else None."""
    if len(raw) < _SNAPSHOT_HEADER.size + _DIGEST:
        return None
    if blake3.blake3(memoryview(raw)[:-_DIGEST]).digest() != raw[-_DIGEST:]:
        return None
    magic, covered, prefix_digest, count = _SNAPSHOT_HEADER.unpack_from(raw)
    return (covered, prefix_digest, count) if magic == _SNAPSHOT_MAGIC and covered > 0 else None


def _line_prefix_digest(handle: BinaryIO, covered: int) -> bytes | None:
    """BLAKE3 of the first `covered` bytes of a file if it has them and they end a line, else None.

    Streamed through one small buffer: no copy of the whole log is made.
    """
    hasher = blake3.blake3()
    buffer = memoryview(bytearray(min(covered, _STREAM_BYTES)))
    remaining, last = covered, 0
    while remaining:
        got = handle.readinto(buffer[: min(remaining, len(buffer))])
        if not got:
            return None
        hasher.update(buffer[:got])
        remaining, last = remaining - got, buffer[got - 1]
    return hasher.digest() if last == ord("\n") else None


def _bytes_line_prefix_digest(log: bytes, covered: int) -> bytes | None:
    """`_line_prefix_digest` of a log already in memory."""
    if not 0 < covered <= len(log) or log[covered - 1] != ord("\n"):
        return None
    return blake3.blake3(memoryview(log)[:covered]).digest()


def _snapshot_hashes(raw: bytes, count: int) -> list[str] | None:
    """The `count` hashes of an intact snapshot file if every one is valid, else None.

    They are sorted as written; the reader's merge (`_merge_sorted`) re-establishes the order and
    uniqueness it relies on in linear time, so it does not trust them.
    """
    section = memoryview(raw)[_SNAPSHOT_HEADER.size : -_DIGEST]
    if not count:
        return [] if not section else None
    if section[-1] != ord("\n"):
        return None
    try:
        text = str(section[:-1], "utf-8")
    except UnicodeDecodeError:
        return None
    hashes = text.split("\n")
    if len(hashes) != count or "" in hashes:
        return None
    if "%" in text or "/" in text or "\\" in text or ("." in text and ".." in text):
        hashes = [unquote(h) if "%" in h else h for h in hashes]
        try:
            for content_hash in hashes:
                validate_hash(content_hash)
        except BlobHashInvalid:
            return None
    return hashes


def _append_line(path: Path, line: str) -> tuple[int, int]:
    """One `O_APPEND` write; starts with a newline if a torn line was left at the end.

    Returns the file size before and after (as seen by this writer).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise _io_error("open index", path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = line.encode()
        os.write(fd, data)
    except OSError as exc:
        raise _io_error("append index", path, exc) from exc
    finally:
        os.close(fd)
    return size, size + len(data)


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
