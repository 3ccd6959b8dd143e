"""Our must-hold index: what the node must hold, as recorded by `put` (upstream has no such thing).

Two files beside `blobs/`, invisible to upstream (it only looks inside `blobs/` for `*.blob`):

    <root>/must_hold.idx                 append-only log, one "<hash> <size>" line per put
    <root>/must_hold.sorted              sorted snapshot of the log's hashes (a cache, see below)

Why an index: upstream audits whatever the `blobs` directory lists, so a lost blob silently leaves
the candidate set (SPEC section 0). A store with our index is audited against what `put` recorded,
so a lost blob stays a candidate and fails as MISSING_SAMPLE. `LocalCasStore` (store.py) owns one
`MustHoldIndex` and delegates to it: `put` records, `candidates()` reads.

Why an append-only log: each put is one `O_APPEND` write of one short line (O(1), safe between
processes), and the reader dedupes. `MustHoldIndex.hashes()` keeps the parsed index in memory and,
on each call, only stats the log and parses the appended tail, so a round costs the same on 1,000
and on 100,000 blobs. Nothing on the read paths creates a directory or a file in the store.

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
import logging
import math
import operator
import os
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote, unquote

import blake3

from . import safefile
from .errors import BlobHashInvalid, Io
from .fileops import io_error, path_exists, remove_quietly, validate_hash, write_new_file

INDEX_FILE = "must_hold.idx"
SNAPSHOT_FILE = "must_hold.sorted"
# The index snapshot (see the module docstring): header, then one (%-quoted) hash per line, sorted,
# then a BLAKE3 of everything before it.
_SNAPSHOT_MAGIC = b"DFSIDXS1"
_SNAPSHOT_HEADER = struct.Struct("<8sQ32sQ")  # magic, log bytes covered, BLAKE3 of them, hash count
_SNAPSHOT_MIN_BYTES = 1 << 20  # a smaller log parses in a few milliseconds: no snapshot
_SNAPSHOT_GROWTH = 1.0625  # rewrite each time the log grows by 1/16: the unsorted rest stays small
_DIGEST = 32
_STREAM_BYTES = 1 << 20
_LOG = logging.getLogger(__name__)


@dataclass
class _IndexCache:
    """The parsed must-hold log and how much of the file it reflects."""

    ino: int = -1
    mtime_ns: int = -1
    consumed: int = 0
    ordered: list[str] = field(default_factory=list)  # sorted, no duplicates
    snapshot: tuple[str, ...] = ()


class MustHoldIndex:
    """The must-hold log of one store root and its sorted snapshot.

    The instance caches the parsed log for `hashes()`; it is not thread-safe (one auditor owns one
    store object), but any number of processes may `record` concurrently.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / INDEX_FILE
        self.snapshot_path = root / SNAPSHOT_FILE
        self._cache = _IndexCache()

    # ------------------------------------------------------------------ public

    def exists(self) -> bool:
        """Whether the store carries the index (then it is audited against it)."""
        return path_exists(self.path)

    def sizes(self) -> dict[str, int]:
        """Hash -> size recorded at put (the last line wins). Empty without an index.

        Parses the whole log on each call: no round needs the sizes, so they are not cached.
        """
        try:
            with open(self.path, "rb") as handle:
                log = handle.read()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise io_error("read index", self.path, exc) from exc
        hashes, sizes = _parse_index_lines(log[: log.rfind(b"\n") + 1])
        return dict(zip(hashes, map(int, sizes), strict=True))

    def hashes(self) -> tuple[str, ...] | None:
        """The recorded hashes, sorted and deduped; None when there is no index.

        Cached: an unchanged log costs one `stat`; an appended log costs only parsing the new tail.
        The result is an immutable tuple, shared between calls.
        """
        if self._refresh():
            return self._cache.snapshot
        return None

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
        tmp = self.root / f"{SNAPSHOT_FILE}.tmp-{os.getpid()}-{time.time_ns()}"
        try:
            with open(self.path, "rb") as handle:
                log = handle.read()
            covered = log.rfind(b"\n") + 1
            if covered == 0:
                return
            hashes, start = self._load_snapshot(partial(_bytes_line_prefix_digest, log)) or ([], 0)
            hashes += _parse_index_lines(log[start:covered])[0]
            ordered: list[str] = []
            _merge_sorted(ordered, hashes)
            write_new_file(tmp, _encode_snapshot(log, covered, ordered), "write index snapshot temp")
            os.replace(tmp, self.snapshot_path)
        except (OSError, Io) as exc:
            remove_quietly(tmp)
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
        ):
            cache = self._cache = _IndexCache(ino=st.st_ino)
        if st.st_size > cache.consumed:
            self._read_tail(cache, st.st_size)
        cache.mtime_ns = st.st_mtime_ns
        return True

    def _read_tail(self, cache: _IndexCache, size: int) -> None:
        """Parse what the log holds past `cache.consumed` (on a first load of a large log, past
        what a sound snapshot covers) and merge it into the candidates."""
        hashes: list[str] = []
        consumed = cache.consumed
        if consumed == 0 and size >= _SNAPSHOT_MIN_BYTES:
            loaded = self._load_snapshot(self._log_prefix_digest)
            if loaded is not None:
                hashes, consumed = loaded
        try:
            with open(self.path, "rb") as handle:
                handle.seek(consumed)
                tail = handle.read()
        except OSError as exc:
            raise io_error("read index", self.path, exc) from exc
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
            with open(self.path, "rb", buffering=0) as handle:
                return _line_prefix_digest(handle, covered)
        except OSError:
            return None


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


def _append_line(path: Path, line: str) -> tuple[int, int]:
    """One `O_APPEND` write; starts with a newline if a torn line was left at the end.

    Returns the file size before and after (as seen by this writer).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
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


# ---------------------------------------------------------------------- the sorted candidates


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


# ---------------------------------------------------------------------- the snapshot file


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
