"""Our must-hold index: what the node must hold, as recorded by `put` (upstream has no such thing).

Two files beside `blobs/`, invisible to upstream (it only looks inside `blobs/` for `*.blob`):

    <root>/must_hold.idx                 append-only log, one "<hash> <size>" line per put
    <root>/must_hold.sorted              sorted snapshot of the log's hashes (a cache, see below)

and, outside the store, in the per-store cache dir the runner gives the store (`listing_cache_dir`):

    <cache>/index-<16 hex>.bin           the parsed candidates, packed (a cache, see below)

Why an index: upstream audits whatever the `blobs` directory lists, so a lost blob silently leaves
the candidate set (SPEC section 0). A store with our index is audited against what `put` recorded,
so a lost blob stays a candidate and fails as MISSING_SAMPLE. `LocalCasStore` (store.py) owns one
`MustHoldIndex` and delegates to it: `put` records, `candidates()` reads.

Why an append-only log: each put is one `O_APPEND` write of one short line (O(1), safe between
processes), and the reader dedupes. `MustHoldIndex.hashes()` keeps the parsed index in memory, packed
(`packed.PackedHashes`, 32 bytes a hash), and on each call only stats the log and parses the
appended tail, so a round costs the same on 1,000 and on 1,000,000 blobs.

Damaged lines (issue 8: a damaged line must not silently drop a blob). The rule, per complete line:
- `<hash> <decimal size>` with a valid hash: a record;
- any other line whose first field (up to the first space) is lowercase hex of 32 bytes, i.e. what
  `put` writes: damaged, but the blob stays a candidate ("kept");
- any other line: "unreadable", it names no blob we could audit.
Both kinds are counted (`damage()`, with the byte offset of the first unreadable line) and the
runner warns about them at start. The one line silently left unread is an incomplete last line (no
newline yet): a put still writing it, or a crash mid-append; it is read once complete, and the next
put ends it with a newline first, after which it counts as a damaged line like any other.

Start-up. Loading the log is O(store), so it is done once per change of the log, not once per run:
- the packed cache outside the store records the candidates, the damage counts, the log's size,
  mtime, inode and device, the BLAKE3 of the log bytes it covers and a BLAKE3 of itself. When the
  log's `stat` matches, the cache was written more than `RACY_WINDOW_NS` after the log's mtime, and
  it is younger than `max_age_ns`, it is loaded in one read and used as is: no per-entry objects,
  nothing proportional to the store but one checksum pass in C. Otherwise (the log grew, a racy or
  aged cache) its covered prefix is re-hashed (C speed) and only the tail past it parsed. The age
  bound (default `DEFAULT_MAX_AGE_S`) is the most a cache can vouch on `stat` alone, in a new
  process or in a long run;
- once the log passes 1 MiB, `put` keeps `must_hold.sorted` in the store: the sorted, deduplicated
  hashes (and damage counts) of a prefix of the log, bound to that prefix by its BLAKE3 and
  rewritten each time the log grows by another 1/16 (amortized O(log n) per put). A reader without
  the packed cache takes it instead of sorting the prefix, and parses only the rest of the log;
- plain log lines are parsed in bulk (an odd line sends only its neighbourhood through the per-line
  parser).
A cache or snapshot that is missing, corrupt or describes other log bytes is ignored; neither
changes anything but speed: the candidates are those of the log alone. Every file is read through
`fileops.read_own` (no links, no FIFOs, size caps); nothing on the read paths writes in the store.
"""

from __future__ import annotations

import logging
import math
import operator
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import islice, pairwise
from pathlib import Path
from urllib.parse import quote, unquote

import blake3

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import BlobHashInvalid, Io
from distfs_pipeline.core.fileops import (
    io_error,
    path_exists,
    read_own,
    remove_quietly,
    validate_hash,
    write_new_file,
)
from distfs_pipeline.core.packed import PackedHashes, packable

INDEX_FILE = "must_hold.idx"
SNAPSHOT_FILE = "must_hold.sorted"
# The index snapshot (see the module docstring): header, then one (%-quoted) hash per line, sorted,
# then a BLAKE3 of everything before it. (2: damage counts in the header.)
_SNAPSHOT_MAGIC = b"DFSIDXS2"
# magic, log bytes covered, BLAKE3 of them, hash count, damaged lines kept, unreadable, first at
_SNAPSHOT_HEADER = struct.Struct("<8sQ32sQQQq")
_SNAPSHOT_MIN_BYTES = 1 << 20  # a smaller log parses in a few milliseconds: no snapshot
_SNAPSHOT_GROWTH = 1.0625  # rewrite each time the log grows by 1/16: the unsorted rest stays small
# The packed cache outside the store: these fields, a BLAKE3 of them and the body, the body
# (`PackedHashes.to_bytes`).
_CACHE_MAGIC = b"DFSIDXC\0"
_CACHE_VERSION = 1
# magic, version, log ino, dev, size, mtime_ns, written_at_ns, bytes covered, their BLAKE3,
# damaged lines kept, unreadable, first unreadable at
_CACHE_FIELDS = struct.Struct("<8sIQQQqqQ32sQQq")
_DIGEST = 32
# A file whose mtime is this close to when we read it may still change within the same timestamp
# tick (coarse file systems tick every 1-2 s) without its mtime moving: a cache taken then is
# verified by content, not trusted on `stat` (git's "racy" entries).
RACY_WINDOW_NS = 2_000_000_000
DEFAULT_MAX_AGE_S = 3600.0
# What we read back whole at most: the log of about 100M puts, its snapshot, the packed cache.
_READ_CAP = 8 << 30
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexDamage:
    """Damaged complete lines of the log (see the module docstring for the rule)."""

    kept: int = 0  # still name a plausible hash: the blob stays a candidate
    unreadable: int = 0  # name no blob: whatever they recorded is not audited
    first_unreadable_at: int = -1  # byte offset of the first unreadable line in the log, -1: none

    def __bool__(self) -> bool:
        return bool(self.kept or self.unreadable)

    def plus(self, other: IndexDamage) -> IndexDamage:
        """Both counts; `other` describes later bytes of the log than `self`."""
        first = self.first_unreadable_at if self.first_unreadable_at >= 0 else other.first_unreadable_at
        return IndexDamage(self.kept + other.kept, self.unreadable + other.unreadable, first)

    def describe(self, path: Path | str) -> str:
        """One line for the operator: what was found, what it means, what to do."""
        parts = []
        if self.kept:
            parts.append(f"{self.kept} still name a blob and keep it a candidate")
        if self.unreadable:
            parts.append(
                f"{self.unreadable} unreadable (the first at byte {self.first_unreadable_at}): "
                "a blob they recorded is not audited"
            )
        return (
            f"index {path} has {self.kept + self.unreadable} damaged lines: {'; '.join(parts)}. "
            "A crash in the middle of a put leaves one such line; put the affected blobs again "
            "(each put appends a fresh line) or restore the index"
        )


@dataclass
class _IndexCache:
    """The parsed must-hold log and how much of the file it reflects."""

    ino: int = -1
    mtime_ns: int = -1
    consumed: int = 0
    hashes: PackedHashes = field(default_factory=PackedHashes)
    damage: IndexDamage = field(default_factory=IndexDamage)
    loaded_at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class _Loaded:
    """Candidates of the first `consumed` bytes of the log, and the BLAKE3 of those bytes."""

    hashes: PackedHashes
    damage: IndexDamage
    consumed: int
    prefix_digest: bytes


class MustHoldIndex:
    """The must-hold log of one store root, its sorted snapshot and its packed cache.

    The instance caches the parsed log for `hashes()`; it is not thread-safe (one auditor owns one
    store object), but any number of processes may `record` concurrently.
    """

    def __init__(
        self, root: Path, cache_path: Path | None = None, max_age_s: float = DEFAULT_MAX_AGE_S
    ) -> None:
        """`cache_path`: where the packed candidates persist between processes (None: they do not);
        `max_age_s`: the longest a parsed log or a cache is trusted on `stat` alone."""
        self.root = root
        self.path = root / INDEX_FILE
        self.snapshot_path = root / SNAPSHOT_FILE
        self.cache_path = cache_path
        self.max_age_ns = int(max_age_s * 1e9)
        self._cache = _IndexCache()

    # ------------------------------------------------------------------ public

    def exists(self) -> bool:
        """Whether the store carries the index (then it is audited against it)."""
        return path_exists(self.path)

    def sizes(self) -> dict[str, int]:
        """Hash -> size recorded at put (the last line wins). Empty without an index.

        Parses the whole log on each call: no round needs the sizes, so they are not cached. A
        damaged line records no size.
        """
        try:
            log, _ = read_own(self.path, _READ_CAP)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise io_error("read index", self.path, exc) from exc
        hashes, sizes, _ = _parse_index_lines(log[: log.rfind(b"\n") + 1])
        return dict(zip(hashes, map(int, sizes), strict=True))

    def hashes(self) -> PackedHashes | None:
        """The recorded hashes, sorted and deduped; None when there is no index.

        Cached: an unchanged log costs one `stat`; an appended log costs only parsing the new tail.
        The result is immutable, shared between calls.
        """
        if self._refresh():
            return self._cache.hashes
        return None

    def damage(self) -> IndexDamage:
        """The damaged lines of the log as of the last `hashes()` (see the module docstring)."""
        return self._cache.damage

    def record(self, content_hash: str, size: int, present: Callable[[], Iterable[tuple[str, int]]]) -> None:
        """Append a put's line (seeding the index first on an upstream store), then keep the
        snapshot current.

        `present` gives (hash, size) of the blobs already in the store; it is called only when this
        put creates the index. The line is appended on every put, also when the blob already
        existed, so a put that crashed between the blob and the index is repaired by retrying it.
        """
        created = not path_exists(self.path)
        seeded, end = self._create_from_listing(present) if created else (set(), 0)
        grown_from = 0  # the log size before this put's writes; `end` is the size after them
        if content_hash not in seeded:
            before, end = _append_line(self.path, _index_line(content_hash, size))
            grown_from = 0 if created else before
        if end >= _SNAPSHOT_MIN_BYTES and (
            _snapshot_step(grown_from) != _snapshot_step(end) or not path_exists(self.snapshot_path)
        ):
            self._write_snapshot()

    def adopt(self, entries: Iterable[tuple[str, int]]) -> int:
        """Record blobs a store already holds (`adopt.py`); returns how many were newly recorded.

        Without an index, it appears atomically holding exactly `entries` (as the first put's seed
        does); with one, the entries it lacks are appended in a few large `O_APPEND` writes opened
        through `safefile.open_append`, so a planted link in place of the index is refused, never
        followed. Nothing else in the store is touched; the snapshot is kept as `record` keeps it.
        """
        entries = list(entries)
        if not self.exists():
            seeded, end = self._create_from_listing(lambda: entries)
            if seeded or not entries:
                if end >= _SNAPSHOT_MIN_BYTES:
                    self._write_snapshot()
                return len(seeded)
        known = set(self.hashes() or ())
        fresh = [_index_line(h, size) for h, size in dict(entries).items() if h not in known]
        if not fresh:
            return 0
        try:
            fd = safefile.open_append(self.path)
        except OSError as exc:
            raise io_error("open index", self.path, exc) from exc
        try:
            grown_from = os.fstat(fd).st_size
            if grown_from and _last_byte(self.path, os.fstat(fd)) != b"\n":
                fresh[0] = "\n" + fresh[0]  # a torn last line stays torn, on a line of its own
            for start in range(0, len(fresh), 8192):
                safefile.write_all(fd, "".join(fresh[start : start + 8192]).encode())
            end = os.fstat(fd).st_size
        except OSError as exc:
            raise io_error("append index", self.path, exc) from exc
        finally:
            os.close(fd)
        if end >= _SNAPSHOT_MIN_BYTES and _snapshot_step(grown_from) != _snapshot_step(end):
            self._write_snapshot()
        return len(fresh)

    # ------------------------------------------------------------------ internals: writing

    def _create_from_listing(self, present: Callable[[], Iterable[tuple[str, int]]]) -> tuple[set[str], int]:
        """First put on a store: seed the index with the blobs already present.

        Otherwise the first put on an upstream store would shrink its audit to one blob. The
        seeded file appears atomically (`link` refuses to overwrite), so a concurrent first put
        either wins or appends to the winner's file; invalid stems are not seeded. Returns the
        hashes this call seeded (empty if another writer created the index first) and the size
        of the seed it wrote.
        """
        lines, seeded = [], set()
        for content_hash, size in present():
            lines.append(_index_line(content_hash, size))
            seeded.add(content_hash)
        seed = "".join(lines).encode()
        tmp = self.root / f"{INDEX_FILE}.tmp-{os.getpid()}-{time.time_ns()}"
        write_new_file(tmp, seed, "write index temp")
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return set(), 0
        except OSError:
            return self._create_without_link(seed, seeded)
        finally:
            remove_quietly(tmp)
        return seeded, len(seed)

    def _create_without_link(self, seed: bytes, seeded: set[str]) -> tuple[set[str], int]:
        """For filesystems without hard links: exclusive create, then one append of the seed.

        A reader may briefly see the index before the seed lands; concurrent appends stay whole.
        """
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return set(), 0
        except OSError as exc:
            raise io_error("create index", self.path, exc) from exc
        try:
            os.write(fd, seed)
        except OSError as exc:
            raise io_error("write index", self.path, exc) from exc
        finally:
            os.close(fd)
        return seeded, len(seed)

    def _write_snapshot(self) -> None:
        """Rewrite `must_hold.sorted` from the log's complete lines (atomically: temp + rename).

        Only `record` calls this; the snapshot is a cache, so a failure is logged and the put stands.
        Like a reader, it starts from the old snapshot if that matches the log (one read of the
        log serves both, so the new snapshot describes exactly the bytes it was made from).
        """
        try:
            log, _ = read_own(self.path, _READ_CAP)
            covered = log.rfind(b"\n") + 1
            if covered == 0:
                return
            loaded = _parse_log(log, self._load_snapshot(partial(_bytes_line_prefix_digest, log)), covered)
            data = _encode_snapshot(log, covered, loaded.hashes, loaded.damage)
            safefile.write_atomic(self.snapshot_path, data, durable=False)  # a link there: refused
        except (OSError, Io) as exc:
            _LOG.warning("index snapshot %s not written: %s", self.snapshot_path, exc)

    # ------------------------------------------------------------------ internals: reading

    def _refresh(self) -> bool:
        """Bring the cached index up to date with the log; False when there is no index."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._cache = _IndexCache()
            return False
        except OSError as exc:
            raise io_error("stat index", self.path, exc) from exc
        cache = self._cache
        if (
            st.st_ino != cache.ino
            or st.st_size < cache.consumed
            or (st.st_size == cache.consumed and st.st_mtime_ns != cache.mtime_ns)
            or (time.monotonic() - cache.loaded_at) * 1e9 > self.max_age_ns
        ):
            cache = self._cache = _IndexCache(ino=st.st_ino)
            self._load_all(cache, st)
        elif st.st_size > cache.consumed:
            self._read_tail(cache)
        cache.mtime_ns = st.st_mtime_ns
        return True

    def _read_tail(self, cache: _IndexCache) -> None:
        """Parse what the log holds past `cache.consumed` and merge it into the candidates."""
        try:
            tail, _ = read_own(self.path, _READ_CAP, cache.consumed)
        except OSError as exc:
            raise io_error("read index", self.path, exc) from exc
        complete = tail.rfind(b"\n") + 1  # a line still being written is read next time
        if complete:
            hashes, _, damaged = _parse_index_lines(tail[:complete])
            cache.hashes = cache.hashes.merged([*hashes, *_kept(damaged)], _INSORT_MAX)
            cache.damage = cache.damage.plus(_damage_of(damaged, cache.consumed))
        cache.consumed += complete

    def _load_all(self, cache: _IndexCache, st: os.stat_result) -> None:
        """The first load (or a reload): the packed cache if it vouches for the log as it is, else
        one read of the log, from the cache, the snapshot or nothing, parsing only what they miss."""
        cached = self._load_cache(st)
        if type(cached) is _Loaded:  # vouches for the log as it is
            cache.hashes, cache.damage, cache.consumed = cached.hashes, cached.damage, cached.consumed
            return
        try:
            log, after = read_own(self.path, _READ_CAP)
        except OSError as exc:
            raise io_error("read index", self.path, exc) from exc
        complete = log.rfind(b"\n") + 1
        base: _Loaded | None = None
        if cached is not None and _bytes_line_prefix_digest(log, cached.consumed) == cached.prefix_digest:
            base = cached
        elif len(log) >= _SNAPSHOT_MIN_BYTES:
            base = self._load_snapshot(partial(_bytes_line_prefix_digest, log))
        save = self.cache_path is not None and after.st_size == len(log)
        loaded = _parse_log(log, base, complete, digest=save)
        cache.ino = after.st_ino
        cache.hashes, cache.damage, cache.consumed = loaded.hashes, loaded.damage, loaded.consumed
        if save:
            self._save_cache(after, loaded)

    def _load_snapshot(self, log_prefix_digest: Callable[[int], bytes | None]) -> _Loaded | None:
        """The candidates of a sound snapshot, else None.

        Sound: intact, and `log_prefix_digest(covered)` (the BLAKE3 of the log's first `covered`
        bytes, if they end a line) equals the digest the snapshot was made for.
        """
        try:
            raw, _ = read_own(self.snapshot_path, _READ_CAP)
        except OSError:
            return None  # a cache: without it the whole log is parsed
        header = _snapshot_header(raw)
        if header is None:
            return None
        covered, prefix_digest, count, damage = header
        if log_prefix_digest(covered) != prefix_digest:
            return None
        hashes = _snapshot_hashes(raw, count)
        return None if hashes is None else _Loaded(hashes, damage, covered, prefix_digest)

    def _log_prefix_digest(self, covered: int) -> bytes | None:
        """`_bytes_line_prefix_digest` of the log file as it is now (None if it cannot be read)."""
        try:
            log, _ = read_own(self.path, _READ_CAP)
        except OSError:
            return None
        return _bytes_line_prefix_digest(log, covered)

    def _load_cache(self, st: os.stat_result) -> _Loaded | None:
        """The packed cache: a `_Loaded` usable as is if it vouches for the log's current `stat`, a
        `_Stale` one (to be verified against the log's bytes) if not, None if absent or damaged."""
        if self.cache_path is None:
            return None
        try:
            raw, _ = read_own(self.cache_path, _READ_CAP)
        except OSError:
            return None
        if len(raw) < _CACHE_FIELDS.size + _DIGEST:
            return None
        view = memoryview(raw)
        fields, checksum, body = (
            view[: _CACHE_FIELDS.size],
            view[_CACHE_FIELDS.size : _CACHE_FIELDS.size + _DIGEST],
            view[_CACHE_FIELDS.size + _DIGEST :],
        )
        (magic, version, ino, dev, size, mtime_ns, written_at, consumed, prefix, kept, unreadable, first) = (
            _CACHE_FIELDS.unpack(fields)
        )
        if (magic, version) != (_CACHE_MAGIC, _CACHE_VERSION) or consumed > size:
            return None
        hasher = blake3.blake3(fields, max_threads=blake3.blake3.AUTO)
        hasher.update(body)
        if hasher.digest() != checksum:
            return None
        hashes = PackedHashes.from_bytes(body)
        if hashes is None:
            return None
        damage = IndexDamage(kept, unreadable, first)
        fresh = (
            (ino, dev, size, mtime_ns) == (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns)
            and written_at > mtime_ns + RACY_WINDOW_NS
            and 0 <= time.time_ns() - written_at <= self.max_age_ns
        )
        kind = _Loaded if fresh else _Stale
        return kind(hashes, damage, consumed, bytes(prefix))

    def _save_cache(self, st: os.stat_result, loaded: _Loaded) -> None:
        """Write the packed cache (temp + rename, no fsync: a torn file fails its checksum); a
        failure is only a logged warning."""
        path = self.cache_path
        if path is None:
            return
        fields = _CACHE_FIELDS.pack(
            _CACHE_MAGIC,
            _CACHE_VERSION,
            st.st_ino,
            st.st_dev,
            st.st_size,
            st.st_mtime_ns,
            time.time_ns(),
            loaded.consumed,
            loaded.prefix_digest,
            loaded.damage.kept,
            loaded.damage.unreadable,
            loaded.damage.first_unreadable_at,
        )
        body = loaded.hashes.to_bytes()
        hasher = blake3.blake3(fields, max_threads=blake3.blake3.AUTO)
        hasher.update(body)
        try:
            safefile.make_trusted_dirs(path.parent)
            safefile.write_atomic(path, fields + hasher.digest() + body, durable=False)
        except OSError as exc:
            _LOG.warning("index cache write %s failed: %s", path, safefile.describe(exc))


class _Stale(_Loaded):
    """A packed cache that does not vouch for the log on `stat` alone (see `_load_cache`)."""


def _parse_log(log: bytes, base: _Loaded | None, complete: int, digest: bool = False) -> _Loaded:
    """The candidates of `log[:complete]`: `base` (a sound cache of a prefix) plus the rest, and
    (if `digest`: only a cache to be written needs it) the BLAKE3 of `log[:complete]`."""
    start = base.consumed if base is not None else 0
    hashes, _, damaged = _parse_index_lines(log[start:complete])
    found = [*hashes, *_kept(damaged)]
    damage = _damage_of(damaged, start)
    if base is None:
        packed = PackedHashes.from_unsorted(found)
    else:
        packed, damage = base.hashes.merged(found, _INSORT_MAX), base.damage.plus(damage)
    prefix = (
        blake3.blake3(memoryview(log)[:complete], max_threads=blake3.blake3.AUTO).digest() if digest else b""
    )
    return _Loaded(packed, damage, complete, prefix)


def _kept(damaged: list[tuple[int, str]]) -> list[str]:
    return [content_hash for _, content_hash in damaged if content_hash]


def _damage_of(damaged: list[tuple[int, str]], at: int) -> IndexDamage:
    """Counts of a block's damaged lines; `at` is the block's offset in the log."""
    unreadable = [offset for offset, content_hash in damaged if not content_hash]
    return IndexDamage(
        len(damaged) - len(unreadable), len(unreadable), at + unreadable[0] if unreadable else -1
    )


def _last_byte(path: Path, appending: os.stat_result) -> bytes:
    """The last byte of the file being appended to (an append-only fd cannot read it itself)."""
    fd, st = safefile.open_read(path)
    try:
        if (st.st_dev, st.st_ino) != (appending.st_dev, appending.st_ino):
            raise OSError(f"{path} was replaced while being opened")
        return os.pread(fd, 1, appending.st_size - 1)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- log lines

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
_INSORT_MAX = 1024  # up to this many new hashes are spliced into the packed candidates one by one

# (hashes, size texts) of the records, and (offset in the block, kept hash or "") of damaged lines
Parsed = tuple[list[str], list[str], list[tuple[int, str]]]


def _parse_index_lines(block: bytes) -> Parsed:
    """The records of a block of complete lines, in log order, and its damaged lines.

    Plain blocks (the usual case) are parsed in bulk; a block holding an odd line (damaged,
    %-quoted, invalid, not ASCII) is halved at a line boundary until the odd parts are small enough
    for the per-line parser, so a few odd lines cost little more than plain ones. Both give the
    same result (damage offsets are relative to `block`).
    """
    plain = _parse_plain_lines(block)
    if plain is not None:
        return plain
    half = len(block) // 2
    mid = (block.rfind(b"\n", 0, half) + 1) or (block.find(b"\n", half) + 1)
    if len(block) <= _PER_LINE_BYTES or mid >= len(block):
        return _parse_odd_lines(block)
    head, tail = _parse_index_lines(block[:mid]), _parse_index_lines(block[mid:])
    return head[0] + tail[0], head[1] + tail[1], head[2] + [(at + mid, h) for at, h in tail[2]]


def _parse_plain_lines(block: bytes) -> Parsed | None:
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
    return fields[0::2], sizes, []


def _parse_odd_lines(block: bytes) -> Parsed:
    """The per-line parser: the reference rules for any line (see the module docstring)."""
    hashes: list[str] = []
    sizes: list[str] = []
    damaged: list[tuple[int, str]] = []
    offset = 0
    lines = block.split(b"\n")
    for raw_line in lines[:-1] if lines[-1] == b"" else lines:  # the block ends with a newline
        at, offset = offset, offset + len(raw_line) + 1
        raw = raw_line.decode("utf-8", "replace")
        content_hash, sep, size_text = raw.partition(" ")
        record = bool(sep) and size_text.isdecimal()  # what `int()` reads (isdigit() also has "²")
        if record and "%" in content_hash:
            content_hash = unquote(content_hash)
        try:
            validate_hash(content_hash)
        except BlobHashInvalid:
            record = False
        if record:
            hashes.append(content_hash)
            sizes.append(size_text)
        else:
            first = raw.partition(" ")[0]
            damaged.append((at, first if packable(first) else ""))
    return hashes, sizes, damaged


def _append_line(path: Path, line: str) -> tuple[int, int]:
    """One `O_APPEND` write; starts with a newline if a torn line was left at the end.

    Returns the file size before and after (as seen by this writer).
    """
    try:
        fd = safefile.open_append(path, readable=True)  # a planted link or FIFO is refused, not followed
    except OSError as exc:
        raise io_error("open index", path, exc) from exc
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = "\n" + line
        data = line.encode()
        os.write(fd, data)
    except OSError as exc:
        raise io_error("append index", path, exc) from exc
    finally:
        os.close(fd)
    return size, size + len(data)


# ---------------------------------------------------------------------- the snapshot file


def _snapshot_step(log_size: int) -> int:
    """Which snapshot size a log of `log_size` bytes has passed (-1: none): a put that changes
    it rewrites the snapshot, so one is written per 1/16 of growth, by whoever passes the size."""
    if log_size < _SNAPSHOT_MIN_BYTES:
        return -1
    return int(math.log(log_size / _SNAPSHOT_MIN_BYTES, _SNAPSHOT_GROWTH))


def _encode_snapshot(log: bytes, covered: int, hashes: Sequence[str], damage: IndexDamage) -> bytes:
    """Header (bound to `log[:covered]` by its BLAKE3), the sorted hashes one a line, a BLAKE3."""
    lines = "\n".join(hashes)
    if any(c in lines for c in "%\r ") or lines.count("\n") != len(hashes) - 1:
        lines = "\n".join(map(_quoted, hashes))
    section = (lines + "\n").encode() if len(hashes) else b""
    prefix_digest = blake3.blake3(memoryview(log)[:covered], max_threads=blake3.blake3.AUTO).digest()
    header = _SNAPSHOT_HEADER.pack(
        _SNAPSHOT_MAGIC,
        covered,
        prefix_digest,
        len(hashes),
        damage.kept,
        damage.unreadable,
        damage.first_unreadable_at,
    )
    body = header + section
    return body + blake3.blake3(body, max_threads=blake3.blake3.AUTO).digest()


def _snapshot_header(raw: bytes) -> tuple[int, bytes, int, IndexDamage] | None:
    """(log bytes covered, their BLAKE3, hash count, damage) of an intact snapshot file, else None."""
    if len(raw) < _SNAPSHOT_HEADER.size + _DIGEST:
        return None
    if blake3.blake3(memoryview(raw)[:-_DIGEST], max_threads=blake3.blake3.AUTO).digest() != raw[-_DIGEST:]:
        return None
    magic, covered, prefix_digest, count, kept, unreadable, first = _SNAPSHOT_HEADER.unpack_from(raw)
    if magic != _SNAPSHOT_MAGIC or covered <= 0:
        return None
    return covered, prefix_digest, count, IndexDamage(kept, unreadable, first)


def _bytes_line_prefix_digest(log: bytes, covered: int) -> bytes | None:
    """BLAKE3 of `log[:covered]` if the log has those bytes and they end a line, else None."""
    if not 0 < covered <= len(log) or log[covered - 1] != ord("\n"):
        return None
    return blake3.blake3(memoryview(log)[:covered], max_threads=blake3.blake3.AUTO).digest()


def _snapshot_hashes(raw: bytes, count: int) -> PackedHashes | None:
    """The `count` hashes of an intact snapshot file if every one is valid and they are strictly
    increasing, else None.

    The usual snapshot (every hash lowercase hex of 32 bytes, 65 bytes a line) becomes the packed
    digests by one `bytes.fromhex`, without per-entry objects; its order is checked in one pass.
    """
    section = memoryview(raw)[_SNAPSHOT_HEADER.size : -_DIGEST]
    if not count:
        return PackedHashes() if not section else None
    if section[-1] != ord("\n"):
        return None
    if len(section) == 65 * count and bytes(section[64::65]) == b"\n" * count:
        hex_text = raw[_SNAPSHOT_HEADER.size : -_DIGEST].replace(b"\n", b"")
        if not hex_text.translate(None, b"0123456789abcdef"):
            digests = bytes.fromhex(hex_text.decode("ascii"))
            return PackedHashes(digests) if _strictly_increasing(digests) else None
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
    if any(a >= b for a, b in pairwise(hashes)):
        return None
    return PackedHashes.from_sorted(hashes)


def _strictly_increasing(digests: bytes) -> bool:
    """Whether packed 32-byte digests are sorted and unique (one C-level pass over their slices)."""
    items = [digests[i : i + _DIGEST] for i in range(0, len(digests), _DIGEST)]
    return all(map(operator.lt, items, islice(items, 1, None)))
