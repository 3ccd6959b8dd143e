"""The local content-addressed blob store (SPEC 2.1): upstream's layout and blob API, and what an
audit may check in it.

Upstream layout, kept byte-compatible so both tools can share a store:

    <root>/blobs/<content_hash>.blob     raw bytes, flat, no sharding
    <root>/pins.json                     {"pins": [sorted set]}

`LocalCasStore` is upstream's store (hash validation, atomic put, get/get_verified, the listing,
pins) plus `candidates()`, the blobs a round may check. Beside `blobs/`, invisible to upstream, a
store may carry our must-hold index (`index.py`, `MustHoldIndex`): `put` records every blob there,
and a store with an index is audited against it, so a lost blob stays a candidate. A plain upstream
store is audited against its listing, which is cached here and relisted only when the `blobs`
directory changes, so a round on an unchanged store costs a `stat`, not a directory scan.

The listing may also persist between processes, in `listing_cache_dir` (never inside the store,
which is read-only to an audit): `listing-<BLAKE3 of the absolute root path, 16 hex>.bin`, a header
(format version, the `blobs` dir's mtime_ns, inode and device, hash count, when it was listed, a
BLAKE3 of the header fields and the body) and the sorted hashes, packed (`packed.PackedHashes`: 32
bytes a hash, loaded in one read without per-entry objects). It is trusted only when the header
matches the dir's current `stat`, the checksum verifies, the listing was not racy (taken more than
`_PERSISTED_RACY_WINDOW_NS`, 2 s, after the dir's mtime: any change after it moves the mtime on), and
it is younger than `cache_max_age_s` (default one hour): a directory's mtime can be set back, so no
listing, persisted or in memory, vouches for the store for longer than that without a fresh scan.
A missing, damaged, stale or aged file is ignored and the store listed as without it. The first
listing after a change of `blobs/` is O(store) (a directory scan; nothing cheaper can prove it).
The same dir holds the index's packed cache (`index-<same key>.bin`, see `index.py`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import blake3

from distfs_pipeline.core import codec, safefile
from distfs_pipeline.core.errors import (
    BlobHashInvalid,
    BlobHashMismatch,
    BlobNotFound,
    DistributedValidationFailed,
    Io,
    Serde,
    WorldError,
)
from distfs_pipeline.core.fileops import (
    escaped_name,
    io_error,
    path_exists,
    read_own,
    remove_quietly,
    validate_hash,
    write_new_file,
)
from distfs_pipeline.core.index import DEFAULT_MAX_AGE_S, IndexDamage, MustHoldIndex
from distfs_pipeline.core.packed import PackedHashes

BLOBS_DIR = "blobs"
PINS_FILE = "pins.json"
FILES_INDEX_FILE = "files_index.json"
BLOB_EXTENSION = "blob"
_BLOB_SUFFIX = f".{BLOB_EXTENSION}"
HASH_ALGORITHMS = ("blake3", "sha256")
# What `put` writes (SPEC 2.1): upstream's current compressed encoding, or the older raw layout.
BLOB_FORMATS = ("o7cblob1", "raw")
# A directory whose mtime is this close to the moment we listed it may still change within the
# same timestamp tick (coarse kernel clocks tick every 1-10 ms), so its listing is not trusted
# as a cache: the next call lists again ("racy" entries, as git does for its index).
_RACY_WINDOW_NS = 50_000_000
# A persisted listing outlives the process, so it must also hold on file systems whose timestamps
# are coarse (FAT and some network file systems tick every 1-2 s): it is written and trusted only
# when the listing was taken this long after the dir's last change.
_PERSISTED_RACY_WINDOW_NS = 2_000_000_000
# The persisted listing (see the module docstring): these fields, a BLAKE3 of them and the body, the body.
_LISTING_MAGIC = b"DFSLIST\0"
_LISTING_VERSION = 2  # 2: the body is `PackedHashes.to_bytes`
_LISTING_FIELDS = struct.Struct("<8sIqQQQq")  # magic, version, mtime_ns, ino, dev, count, listed_at_ns
_LISTING_DIGEST = 32
_LISTING_HEADER_SIZE = _LISTING_FIELDS.size + _LISTING_DIGEST
_LISTING_READ_CAP = 8 << 30  # the packed listing of about 250M blobs
_LOG = logging.getLogger(__name__)


class Hasher(Protocol):
    """The streaming interface shared by `blake3.blake3` and `hashlib` objects."""

    def update(self, data: bytes | memoryview, /) -> object: ...

    def hexdigest(self) -> str: ...


def blake3_hex(data: bytes | memoryview) -> str:
    """Lowercase hex BLAKE3 of `data` (sample hashes and the default store hash)."""
    return blake3.blake3(data).hexdigest()


def require_regular_file(st: os.stat_result, path: Path | str) -> None:
    """`Io` unless `st` is a regular file: a directory fails as upstream's read does (EISDIR)."""
    if stat.S_ISDIR(st.st_mode):
        raise Io(f"read blob {path} failed: Is a directory")
    if not stat.S_ISREG(st.st_mode):
        raise Io(f"read blob {path} failed: not a regular file")


@dataclass
class _ListingCache:
    """The last upstream listing, the blobs-dir mtime it was taken at, and when (wall clock ns)."""

    mtime_ns: int = -1
    ino: int = -1
    racy: bool = True
    snapshot: PackedHashes = field(default_factory=PackedHashes)
    listed_at_ns: int = -1


class LocalCasStore:
    """`LocalCasStore` with upstream semantics (SPEC 2.1), recording every put in our must-hold index.

    The instance caches the parsed index (in `must_hold`) / the listing for `candidates()`; it is not
    thread-safe (one auditor owns one store object), but any number of processes may `put` concurrently.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        hash_algorithm: str = "blake3",
        listing_cache_dir: str | os.PathLike[str] | None = None,
        blob_format: str = "o7cblob1",
        cache_max_age_s: float = DEFAULT_MAX_AGE_S,
    ) -> None:
        """`listing_cache_dir`: where a plain store's listing and an indexed store's parsed index
        persist between processes (None: they do not). A directory inside the store is not used (a
        warning is logged); a missing one is created on the first write; a failed write is a logged
        warning and changes nothing else.

        `blob_format`: what `put` writes, `o7cblob1` (today's nodes: compressed when that is shorter)
        or `raw` (the layout older nodes read). Reads accept both whatever this says.

        `cache_max_age_s`: the longest a listing or a parsed index is trusted on `stat` alone (in
        memory or persisted) before the store is scanned again, so a cache cannot vouch indefinitely
        for a directory whose stat key happens to repeat (issue 8)."""
        if hash_algorithm not in HASH_ALGORITHMS:
            raise ValueError(f"hash_algorithm must be one of {HASH_ALGORITHMS}, got {hash_algorithm!r}")
        if blob_format not in BLOB_FORMATS:
            raise ValueError(f"blob_format must be one of {BLOB_FORMATS}, got {blob_format!r}")
        self.blob_format = blob_format
        self.root = Path(root)
        self.blobs_dir = self.root / BLOBS_DIR
        self.pins_path = self.root / PINS_FILE
        self.files_index_path = self.root / FILES_INDEX_FILE
        self.listing_cache_path = _listing_cache_path(self.root, listing_cache_dir)
        self.cache_max_age_ns = int(cache_max_age_s * 1e9)
        index_cache = None
        if self.listing_cache_path is not None:
            index_cache = self.listing_cache_path.with_name("index-" + self.listing_cache_path.name[8:])
        self.must_hold = MustHoldIndex(self.root, index_cache, cache_max_age_s)
        self.index_path = self.must_hold.path
        self.snapshot_path = self.must_hold.snapshot_path
        self.hash_algorithm = hash_algorithm
        self._blobs_prefix = os.path.join(os.fspath(self.blobs_dir), "")
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
        upstream), holding `codec.encode(data)` (`blob_format="o7cblob1"`: compressed when at
        least 1 KiB and strictly shorter) or the raw bytes (`"raw"`). The index line (with the raw,
        decoded size) is appended on every put, also when the file already existed, so a put that
        crashed between the blob and the index is repaired by retrying it.
        """
        self._ensure_dirs()
        actual = self.hash_hex(data)
        if actual != content_hash:
            raise BlobHashMismatch(content_hash, actual)
        path = self.blob_path(content_hash)
        if not path_exists(path):
            encoded = codec.encode(content_hash, data) if self.blob_format == "o7cblob1" else data
            self._write_blob_atomic(path, content_hash, encoded)
        self.must_hold.record(content_hash, len(data), self._present_blob_sizes)

    def put_bytes(self, data: bytes) -> str:
        """Hash `data` with the store's algorithm, `put` it, return the hash."""
        content_hash = self.hash_hex(data)
        self.put(content_hash, data)
        return content_hash

    def has(self, content_hash: str) -> bool:
        """Whether the blob file exists (upstream `has`)."""
        return path_exists(self.blob_path(content_hash))

    def get(self, content_hash: str) -> bytes:
        """The bytes of a blob: `BlobHashInvalid`, `BlobNotFound` if absent, `Io` on read errors.

        For a regular file this is upstream's `get`: the file's bytes, decoded when they are a
        valid `O7CBLOB1` encoding of this hash, else unchanged (`codec.decode`). Anything else
        under a blob name is refused with `Io` (a directory as upstream's EISDIR) without reading
        it: upstream would block on a FIFO or read a device without end, and our index lists such
        names (the listing skips them), so a probe must count them as READ_IO_ERROR, not hang.
        """
        path = self.blob_file(content_hash)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise self.classify_open_error(content_hash, path, exc) from exc
        try:
            require_regular_file(os.fstat(fd), path)
            with open(fd, "rb", closefd=False) as handle:
                raw = handle.read()
        except OSError as exc:
            raise io_error("read blob", path, exc) from exc
        finally:
            os.close(fd)
        return codec.decode(raw, content_hash)

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
        if not isinstance(exc, OSError) or isinstance(exc, FileNotFoundError) or not path_exists(path):
            return BlobNotFound(content_hash)
        return io_error("read blob", path, exc)

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
            if not path_exists(self.blobs_dir):
                return []
            raise io_error("list blobs dir", self.blobs_dir, exc) from exc
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
        if not path_exists(self.pins_path):
            return []
        try:
            raw = self.pins_path.read_bytes()
        except OSError as exc:
            raise io_error("read pins", self.pins_path, exc) from exc
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

    # ------------------------------------------------------------------ our index (see index.py)

    def has_index(self) -> bool:
        """Whether the store carries our must-hold index (then it is audited against it)."""
        return self.must_hold.exists()

    def index_sizes(self) -> dict[str, int]:
        """Hash -> size recorded at put (the last line wins). Empty without an index.

        Parses the whole log on each call: no round needs the sizes, so they are not cached.
        """
        return self.must_hold.sizes()

    def candidates(self) -> Sequence[str]:
        """What a round may check: the index (sorted, deduped) if present, else the listing.

        Cached: an unchanged store costs one or two `stat` calls; an appended index costs only
        parsing the new tail. The result is an immutable, packed `Sequence[str]`, shared between
        calls (`packed.PackedHashes`).
        """
        held = self.must_hold.hashes()
        return held if held is not None else self._cached_listing()

    def index_damage(self) -> IndexDamage:
        """Damaged lines of the must-hold index as of the last `candidates()` (false when none)."""
        return self.must_hold.damage()

    # ------------------------------------------------------------------ internals: writing

    def _ensure_dirs(self) -> None:
        try:
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise io_error("create store dirs", self.blobs_dir, exc) from exc

    def _write_blob_atomic(self, path: Path, content_hash: str, data: bytes) -> None:
        tmp = path.with_name(f"{content_hash}.tmp-{os.getpid()}-{time.time_ns()}")
        write_new_file(tmp, data, "write blob temp")
        try:
            os.replace(tmp, path)
        except OSError as exc:
            remove_quietly(tmp)
            raise io_error("rename blob temp", tmp, exc) from exc

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
            remove_quietly(tmp)
            raise io_error("write pins", self.pins_path, exc) from exc

    # ------------------------------------------------------------------ internals: reading

    def _present_blob_sizes(self) -> Iterator[tuple[str, int]]:
        """(hash, size) of the blob files upstream would list (invalid names skipped): the seed of
        the index when the first put on an upstream store creates it."""
        for content_hash, _path in _valid_blob_files(self.blobs_dir):
            try:
                size = self.held_size(content_hash)
            except (OSError, WorldError):
                continue  # gone since the scan: it is not held, so nothing to record
            yield content_hash, size

    def held_size(self, content_hash: str) -> int:
        """The size of the blob the file holds: an `O7CBLOB1` header's raw length, else the file's.

        Only the 80-byte header is read (never a decode), so this is a claim the header makes; callers
        use it where the content has been or will be verified (after a passing check, to seed the
        index). `OSError`/`WorldError` when the file cannot be opened as a regular file.
        """
        fd, st = safefile.open_read(self.blob_file(content_hash))
        try:
            head = os.pread(fd, codec.HEADER_LEN, 0)
        finally:
            os.close(fd)
        raw_len = codec.header_raw_len(head, content_hash, st.st_size)
        return st.st_size if raw_len is None else raw_len

    def _cached_listing(self) -> PackedHashes:
        """Upstream listing, relisted only when the blobs dir changed (its mtime or inode) or the
        listing is older than `cache_max_age_ns`.

        Before listing, the persisted listing (if any) is tried; a listing that is not racy is
        persisted for the next process.
        """
        try:
            st = os.stat(self.blobs_dir)
            key, dev = (st.st_mtime_ns, st.st_ino), st.st_dev
        except OSError:
            key, dev = (-1, -1), -1  # missing (or unreadable): let `list_blob_hashes` decide
        cache = self._listing
        now = time.time_ns()
        if (
            not cache.racy
            and key == (cache.mtime_ns, cache.ino)
            and 0 <= now - cache.listed_at_ns <= self.cache_max_age_ns
        ):
            return cache.snapshot
        persisted = self.listing_cache_path
        if persisted is not None and key[0] >= 0:
            loaded = self._load_persisted_listing(persisted, key[0], key[1], dev)
            if loaded is not None:
                hashes, listed_at = loaded
                self._listing = _ListingCache(key[0], key[1], False, hashes, listed_at)
                return hashes
        listed_at = time.time_ns()
        snapshot = PackedHashes.from_sorted(self.list_blob_hashes())
        racy = key[0] < 0 or key[0] + _RACY_WINDOW_NS >= listed_at
        self._listing = _ListingCache(key[0], key[1], racy=racy, snapshot=snapshot, listed_at_ns=listed_at)
        if persisted is not None and key[0] + _PERSISTED_RACY_WINDOW_NS < listed_at:
            _save_persisted_listing(persisted, key[0], key[1], dev, listed_at, snapshot)
        return snapshot

    def _load_persisted_listing(
        self, path: Path, mtime_ns: int, ino: int, dev: int
    ) -> tuple[PackedHashes, int] | None:
        """(the persisted listing, when it was taken) if it is intact, not racy, not older than
        `cache_max_age_ns` and of the dir as it is now; else None."""
        try:
            raw, _ = read_own(path, _LISTING_READ_CAP)
        except OSError:
            return None
        if len(raw) < _LISTING_HEADER_SIZE:
            return None
        magic, version, *stat_key, count, listed_at = _LISTING_FIELDS.unpack_from(raw)
        if (magic, version) != (_LISTING_MAGIC, _LISTING_VERSION) or stat_key != [mtime_ns, ino, dev]:
            return None
        if listed_at <= mtime_ns + _PERSISTED_RACY_WINDOW_NS:
            return None  # racy: a change in the same tick would not show in the mtime
        if not 0 <= time.time_ns() - listed_at <= self.cache_max_age_ns:
            return None  # aged (or from the future): only a fresh scan vouches for the dir now
        view = memoryview(raw)
        hasher = blake3.blake3(view[: _LISTING_FIELDS.size], max_threads=blake3.blake3.AUTO)
        hasher.update(view[_LISTING_HEADER_SIZE:])
        if hasher.digest() != view[_LISTING_FIELDS.size : _LISTING_HEADER_SIZE]:
            return None
        hashes = PackedHashes.from_bytes(view[_LISTING_HEADER_SIZE:])
        if hashes is None or len(hashes) != count:
            return None
        # The listing would fail if the dir could no longer be opened (a chmod leaves the mtime).
        try:
            os.close(os.open(self.blobs_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except OSError:
            return None
        return hashes, listed_at


# ---------------------------------------------------------------------- module helpers


def _listing_cache_path(root: Path, cache_dir: str | os.PathLike[str] | None) -> Path | None:
    """`<cache_dir>/listing-<16 hex of BLAKE3(absolute root)>.bin`; None without a usable dir."""
    if cache_dir is None:
        return None
    directory = Path(cache_dir)
    if safefile.is_inside(directory, root):
        _LOG.warning("listing cache dir %s is inside the store %s: not used", directory, root)
        return None
    key = blake3.blake3(os.fsencode(os.path.abspath(root))).hexdigest()[:16]
    return directory / f"listing-{key}.bin"


def _save_persisted_listing(
    path: Path, mtime_ns: int, ino: int, dev: int, listed_at: int, hashes: Sequence[str]
) -> None:
    """Write the listing atomically (a unique temp + rename beside it, no fsync: a torn file fails its
    checksum); a failure is only a warning."""
    packed = hashes if isinstance(hashes, PackedHashes) else PackedHashes.from_sorted(hashes)
    try:
        body = packed.to_bytes()
        fields = _LISTING_FIELDS.pack(
            _LISTING_MAGIC, _LISTING_VERSION, mtime_ns, ino, dev, len(packed), listed_at
        )
        hasher = blake3.blake3(fields, max_threads=blake3.blake3.AUTO)
        hasher.update(body)
        safefile.make_trusted_dirs(path.parent)
        safefile.write_atomic(path, fields + hasher.digest() + body, durable=False)
    except (OSError, ValueError, struct.error) as exc:
        shown = safefile.describe(exc) if isinstance(exc, OSError) else exc
        _LOG.warning("listing cache write %s failed: %s", path, shown)


def _blob_stem(entry: os.DirEntry[str]) -> str | None:
    """The hash named by a directory entry, or None if upstream would skip the entry."""
    try:
        if not entry.is_file(follow_symlinks=False):
            return None
    except OSError as exc:
        raise io_error("stat blob entry", entry.path, exc) from exc
    stem, ext = _split_extension(entry.name)
    if ext != BLOB_EXTENSION:
        return None
    _check_stem(stem, entry.path)
    return stem


def _has_lone_surrogate(text: str) -> bool:
    """Whether `text` holds a UTF-16 surrogate (a JSON `\\udXXX` escape not part of a pair)."""
    return not text.isascii() and any("\ud800" <= c <= "\udfff" for c in text)


class StrayBlobName(BlobHashInvalid):
    """`BlobHashInvalid` for a file in `blobs/` whose stem is no valid hash (`a..b.blob`): upstream's
    variant (so it classifies as upstream's does), with a message that names the file and the fix."""

    def __init__(self, stem: str, path: str) -> None:
        super().__init__(stem)
        self.args = (f"{self.args[0]} (file {escaped_name(path)}): {_STRAY_FIX.format(_dir_of(path))}",)


# What an operator can do about a name that fails the whole listing (for us as for upstream).
_STRAY_FIX = "upstream cannot list a store holding this name; move the file out of {}"


def _dir_of(path: str) -> str:
    return escaped_name(os.path.dirname(path))


def _check_stem(stem: str, path: str) -> None:
    """Upstream's rules for a listed stem: valid UTF-8 (else the whole listing fails), a valid hash.

    Either failure fails the whole listing, as upstream's does; the error names the file with its
    bytes escaped (a non-UTF-8 name as `\\xff`), so the operator can find it, and says what to do.
    """
    try:
        stem.encode("utf-8")
    except UnicodeEncodeError:
        raise DistributedValidationFailed(
            f"invalid blob file name (not UTF-8): {escaped_name(path)}: {_STRAY_FIX.format(_dir_of(path))}"
        ) from None
    try:
        validate_hash(stem)
    except BlobHashInvalid:
        raise StrayBlobName(stem, path) from None


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
        raise io_error("list blobs dir", blobs_dir, exc) from exc
    return found
