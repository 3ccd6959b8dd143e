"""Sample readers: upstream's whole-blob verification, and ours, where I/O follows the sample.

`make_reader(store, verify)` returns a `SampleReader` (see `challenge.SampleReader`):

- `mode="full"` is upstream: every issue and every answer reads and hashes the whole blob
  (`get_verified`), so a check of a 16 MiB blob costs 32 MiB of reading and hashing whatever the
  sample size is.
- `mode="chunked"` is ours (SPEC section 0, "I/O follows the sample"):

  * A blob no larger than one chunk is read whole and checked against its content hash on every
    read, exactly as upstream does; no cache is involved, so every outcome equals upstream's.
  * A larger blob is fully verified once (its whole hash must equal the content hash, else
    `BlobHashMismatch` and nothing is cached); that read also records the BLAKE3 hash of every
    `chunk_size_bytes` chunk. Later checks read only the chunks the sample window covers and
    compare their hashes (a mismatch is `BlobHashMismatch`, hence HASH_MISMATCH).
  * The chunk hashes are trusted only while the blob file keeps the size, mtime_ns, ctime_ns
    and inode it had when they were built; any change (a truncation, a rewrite, a replace)
    forces a new full verification.
  * `full_verify_every = n > 0` makes every n-th check of a blob (per process) a full
    verification as well.

  Trade-off, on purpose: a corruption that leaves size, mtime, ctime and inode unchanged (bit
  rot, a raw write to the device; an ordinary write changes ctime even if mtime is reset) is
  caught only when a check samples a damaged chunk, or at the next periodic full verify. With
  64 KiB chunks and 64 KiB samples a check covers one or two of the 256 chunks of a 16 MiB blob,
  so one damaged chunk is found with probability about 2/256 per check of that blob: use
  `full_verify_every` to bound the delay. Once a damaged chunk is seen, the blob's digests are
  dropped, so each later check of it is a full verify (and fails, as upstream would).
  The cache is stricter than size + mtime: ctime and inode changes also invalidate it.

The chunk cache lives in memory and, if `cache_dir` is set, in one small binary file per blob under
`cache_dir` (never inside the audited store: `make_reader` refuses that). Files are written
atomically and end with a BLAKE3 of their content; a file that is corrupt or describes another
file state is ignored and rebuilt from a verified read, never trusted.

Between issue and answer of one check the chunked reader reuses the bytes it just verified if a
`stat` shows the file unchanged: both happen in the same process microseconds apart, and the
second read would only re-hash identical bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import blake3

from .challenge import SampleReader, check_window, extract_sample_slice, sample_window
from .errors import BlobHashMismatch, Io, UsageError
from .models import VerifyOptions
from .store import LocalCasStore, blake3_hex, require_regular_file

__all__ = ["ChunkedReader", "FullReader", "SampleReader", "make_reader"]

_LOG = logging.getLogger(__name__)
VERIFY_MODES = ("chunked", "full")
_DIGEST = 32
_MAGIC = b"DFSCHK01"
_HEADER = struct.Struct("<8sQQqQqH")  # magic, chunk size, blob size, mtime_ns, ino, ctime_ns, hash len
_STREAM_BYTES = 1 << 20
# Bound on chunk digests kept in memory (LRU): 64 MiB of digests describe 128 GiB of 64 KiB chunks.
_MEMORY_DIGEST_BUDGET = 64 << 20

FileKey = tuple[int, int, int, int]  # size, mtime_ns, ino, ctime_ns


def make_reader(store: LocalCasStore, verify: VerifyOptions) -> SampleReader:
    """The reader for `verify.mode`; `UsageError` (naming the setting) for invalid options."""
    _validate_options(store, verify)
    if verify.mode == "full":
        return FullReader(store)
    cache_dir = Path(verify.cache_dir) if verify.cache_dir is not None else None
    return ChunkedReader(store, verify.chunk_size_bytes, cache_dir, verify.full_verify_every)


def _validate_options(store: LocalCasStore, verify: VerifyOptions) -> None:
    if verify.mode not in VERIFY_MODES:
        raise UsageError(f"probe.verify_mode must be one of {', '.join(VERIFY_MODES)}, got {verify.mode!r}")
    if isinstance(verify.chunk_size_bytes, bool) or verify.chunk_size_bytes < 1:
        raise UsageError(f"probe.chunk_size_bytes must be >= 1, got {verify.chunk_size_bytes!r}")
    if isinstance(verify.full_verify_every, bool) or verify.full_verify_every < 0:
        raise UsageError(f"probe.full_verify_every must be >= 0, got {verify.full_verify_every!r}")
    if verify.mode == "chunked" and verify.cache_dir is not None:
        cache = Path(verify.cache_dir).resolve()
        root = store.root.resolve()
        if cache == root or cache.is_relative_to(root):
            raise UsageError(
                f"probe.chunk_cache_dir {verify.cache_dir} is inside the audited store {store.root}: "
                "the store is read-only to the auditor"
            )


# ---------------------------------------------------------------------- shared file access


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class _BlobAccess:
    """Opening and stat-ing blob files with upstream's error mapping, for both readers."""

    def __init__(self, store: LocalCasStore) -> None:
        self.store = store

    def blob_len(self, content_hash: str) -> int:
        """Size of the blob file: `BlobNotFound` if absent, `Io` if it is not a regular file."""
        path = self.store.blob_file(content_hash)
        return self._stat(content_hash, path).st_size

    def _stat(self, content_hash: str, path: str) -> os.stat_result:
        try:
            st = os.stat(path)
        except (OSError, ValueError) as exc:
            raise self.store.classify_open_error(content_hash, path, exc) from exc
        require_regular_file(st, path)
        return st

    def _stat_key(self, content_hash: str, path: str) -> FileKey:
        return _file_key(self._stat(content_hash, path))

    def _open(self, content_hash: str, path: str) -> tuple[int, os.stat_result]:
        """Open read-only (non-blocking, so a FIFO cannot hang us) and fstat a regular file."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError) as exc:
            raise self.store.classify_open_error(content_hash, path, exc) from exc
        try:
            st = os.fstat(fd)
            require_regular_file(st, path)
        except BaseException:
            os.close(fd)
            raise
        return fd, st


def _read_all(fd: int, path: str, expected: int) -> bytes:
    """Read the whole file from offset 0 (as `fs::read`, even if it grew since `fstat`)."""
    try:
        data = os.pread(fd, expected + 1, 0)
        if len(data) <= expected:
            return data
        parts = [data]
        offset = len(data)
        while part := os.pread(fd, _STREAM_BYTES, offset):
            parts.append(part)
            offset += len(part)
        return b"".join(parts)
    except OSError as exc:
        raise Io(f"read blob {path} failed: {exc.strerror or exc}") from exc


# ---------------------------------------------------------------------- upstream mode


class FullReader(_BlobAccess):
    """Upstream design: `get_verified` of the whole blob at issue and again at answer.

    (`LocalCasStore.get` refuses a non-regular file with `Io` instead of blocking on it.)
    """

    def read_sample(self, content_hash: str, max_sample_bytes: int, vrf_seed: str) -> tuple[int, int, bytes]:
        blob = self.store.get_verified(content_hash)
        offset, size = sample_window(content_hash, vrf_seed, len(blob), max_sample_bytes)
        return offset, size, blob[offset : offset + size]

    def read_window(self, content_hash: str, offset: int, size: int) -> bytes:
        return extract_sample_slice(self.store.get_verified(content_hash), offset, size)


# ---------------------------------------------------------------------- chunked mode


@dataclass(frozen=True)
class ChunkEntry:
    """Per-chunk BLAKE3 digests of a verified blob, valid while the file keeps `key`."""

    content_hash: str
    chunk_size: int
    key: FileKey
    digests: bytes  # 32 bytes per chunk, concatenated


@dataclass
class ReaderStats:
    """Counters that show where a reader's I/O went (benchmarks, diagnostics)."""

    small_reads: int = 0
    chunk_reads: int = 0
    full_verifies: int = 0
    cache_file_hits: int = 0
    cache_file_rejected: int = 0
    cache_write_errors: int = 0
    memo_hits: int = 0


class ChunkedReader(_BlobAccess):
    """Sample-proportional verified reads (see the module docstring for the guarantees)."""

    def __init__(
        self,
        store: LocalCasStore,
        chunk_size: int,
        cache_dir: Path | None = None,
        full_verify_every: int = 0,
    ) -> None:
        super().__init__(store)
        self.chunk_size = chunk_size
        self.cache_dir = cache_dir / f"chunks-{chunk_size}" if cache_dir is not None else None
        self.full_verify_every = full_verify_every
        self.stats = ReaderStats()
        self._entries: OrderedDict[str, ChunkEntry] = OrderedDict()
        self._digest_bytes = 0
        self._checks: dict[str, int] = {}
        self._memo: tuple[str, FileKey, int, int, bytes] | None = None

    # -- SampleReader

    def read_sample(self, content_hash: str, max_sample_bytes: int, vrf_seed: str) -> tuple[int, int, bytes]:
        """Verified bytes of the deterministic window; counts one check of the blob."""
        path = self.store.blob_file(content_hash)
        fd, st = self._open(content_hash, path)
        try:
            if st.st_size <= self.chunk_size:
                blob = self._read_small(fd, path, content_hash, st.st_size)
                offset, size = sample_window(content_hash, vrf_seed, len(blob), max_sample_bytes)
                data = blob[offset : offset + size]
            else:
                entry = self._entry_for_check(fd, path, content_hash, st)
                offset, size = sample_window(content_hash, vrf_seed, st.st_size, max_sample_bytes)
                data = self._read_verified(fd, path, entry, offset, size)
        finally:
            os.close(fd)
        self._memo = (
            content_hash,
            (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns),
            offset,
            size,
            data,
        )
        return offset, size, data

    def read_window(self, content_hash: str, offset: int, size: int) -> bytes:
        """Verified bytes of an explicit window (answer); upstream's window errors."""
        path = self.store.blob_file(content_hash)
        memo = self._memo
        if memo is not None and memo[:4] == (content_hash, self._stat_key(content_hash, path), offset, size):
            self.stats.memo_hits += 1
            return memo[4]
        fd, st = self._open(content_hash, path)
        try:
            if st.st_size <= self.chunk_size:
                return extract_sample_slice(
                    self._read_small(fd, path, content_hash, st.st_size), offset, size
                )
            entry = self._entry(fd, path, content_hash, st)
            check_window(offset, size, st.st_size)
            return self._read_verified(fd, path, entry, offset, size)
        finally:
            os.close(fd)

    # -- small blobs: exactly upstream's check

    def _read_small(self, fd: int, path: str, content_hash: str, size: int) -> bytes:
        self.stats.small_reads += 1
        blob = _read_all(fd, path, size)
        actual = self.store.hash_hex(blob)
        if actual != content_hash:
            raise BlobHashMismatch(content_hash, actual)
        return blob

    # -- large blobs: the chunk cache

    def _entry_for_check(self, fd: int, path: str, content_hash: str, st: os.stat_result) -> ChunkEntry:
        """The valid entry, after counting the check and doing the periodic full verify."""
        count = self._checks.get(content_hash, 0) + 1
        self._checks[content_hash] = count
        if self.full_verify_every and count % self.full_verify_every == 0:
            return self._build(fd, path, content_hash, st)
        return self._entry(fd, path, content_hash, st)

    def _entry(self, fd: int, path: str, content_hash: str, st: os.stat_result) -> ChunkEntry:
        key = _file_key(st)
        entry = self._entries.get(content_hash)
        if entry is not None and entry.key == key:
            self._entries.move_to_end(content_hash)
            return entry
        entry = self._load_cache_file(content_hash, key)
        if entry is not None:
            self.stats.cache_file_hits += 1
            self._remember(entry)
            return entry
        return self._build(fd, path, content_hash, st)

    def _build(self, fd: int, path: str, content_hash: str, st: os.stat_result) -> ChunkEntry:
        """Full verified read; records chunk digests only if the whole hash matches."""
        self.stats.full_verifies += 1
        self._forget(content_hash)
        whole = self.store.new_hasher()
        digests = bytearray()
        offset = 0
        step = max(self.chunk_size, _STREAM_BYTES // self.chunk_size * self.chunk_size)
        try:
            while block := os.pread(fd, step, offset):
                view = memoryview(block)
                whole.update(view)
                for start in range(0, len(view), self.chunk_size):
                    digests += blake3.blake3(view[start : start + self.chunk_size]).digest()
                offset += len(block)
                if len(block) % self.chunk_size:
                    break  # a short block is the end of the file (or a torn read: hash decides)
        except OSError as exc:
            raise Io(f"read blob {path} failed: {exc.strerror or exc}") from exc
        actual = whole.hexdigest()
        if actual != content_hash:
            self._delete_cache_file(content_hash)
            raise BlobHashMismatch(content_hash, actual)
        if offset != st.st_size:
            raise BlobHashMismatch(content_hash, f"size changed while reading: {st.st_size} -> {offset}")
        entry = ChunkEntry(content_hash, self.chunk_size, _file_key(st), bytes(digests))
        self._remember(entry)
        self._write_cache_file(entry)
        return entry

    def _read_verified(self, fd: int, path: str, entry: ChunkEntry, offset: int, size: int) -> bytes:
        """Read the chunks covering the window in one `pread`, check each digest, return the window."""
        self.stats.chunk_reads += 1
        if size == 0:
            return b""
        cs = self.chunk_size
        first = offset // cs
        start = first * cs
        length = min(((offset + size - 1) // cs + 1) * cs, entry.key[0]) - start
        try:
            block = os.pread(fd, length, start)
        except OSError as exc:
            raise Io(f"read blob {path} failed: {exc.strerror or exc}") from exc
        view, digests = memoryview(block), entry.digests
        for pos in range(0, length, cs):
            at = (first + pos // cs) * _DIGEST
            piece = view[pos : pos + cs]
            if len(block) != length or blake3.blake3(piece).digest() != digests[at : at + _DIGEST]:
                self._known_bad(entry.content_hash)
                raise BlobHashMismatch(entry.content_hash, _chunk_actual(first + pos // cs, cs, piece))
        return block[offset - start : offset - start + size]

    def _known_bad(self, content_hash: str) -> None:
        """Drop every cached digest of a blob seen damaged, so its next check is a full verify."""
        self._forget(content_hash)
        self._delete_cache_file(content_hash)

    # -- memory cache

    def _remember(self, entry: ChunkEntry) -> None:
        self._forget(entry.content_hash)
        self._entries[entry.content_hash] = entry
        self._digest_bytes += len(entry.digests)
        while self._digest_bytes > _MEMORY_DIGEST_BUDGET and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._digest_bytes -= len(evicted.digests)

    def _forget(self, content_hash: str) -> None:
        old = self._entries.pop(content_hash, None)
        if old is not None:
            self._digest_bytes -= len(old.digests)
        if self._memo is not None and self._memo[0] == content_hash:
            self._memo = None

    # -- cache files

    def _cache_path(self, content_hash: str) -> Path | None:
        if self.cache_dir is None:
            return None
        name = blake3_hex(content_hash.encode("utf-8", "surrogatepass"))
        return self.cache_dir / name[:2] / f"{name}.chk"

    def _load_cache_file(self, content_hash: str, key: FileKey) -> ChunkEntry | None:
        path = self._cache_path(content_hash)
        if path is None:
            return None
        try:
            raw = path.read_bytes()
        except OSError:
            return None
        entry = decode_cache_file(raw)
        if entry is None or entry.content_hash != content_hash or entry.chunk_size != self.chunk_size:
            self.stats.cache_file_rejected += 1
            return None
        return entry if entry.key == key else None

    def _write_cache_file(self, entry: ChunkEntry) -> None:
        path = self._cache_path(entry.content_hash)
        if path is None:
            return
        tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(encode_cache_file(entry))
            os.replace(tmp, path)
        except OSError as exc:
            # The cache only saves I/O; the verified entry is still used from memory.
            self.stats.cache_write_errors += 1
            _LOG.warning("chunk cache write %s failed: %s", path, exc)
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _delete_cache_file(self, content_hash: str) -> None:
        path = self._cache_path(content_hash)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


def _chunk_actual(index: int, chunk_size: int, piece: memoryview) -> str:
    """What `BlobHashMismatch.actual` says for a chunk: which bytes, and their BLAKE3."""
    start = index * chunk_size
    return f"chunk {index} [{start}..{start + len(piece)}) blake3={blake3_hex(piece)}"


def encode_cache_file(entry: ChunkEntry) -> bytes:
    """Header, content hash, digests, then a BLAKE3 of all of it (corruption is detected)."""
    name = entry.content_hash.encode("utf-8", "surrogatepass")
    size, mtime_ns, ino, ctime_ns = entry.key
    body = (
        _HEADER.pack(_MAGIC, entry.chunk_size, size, mtime_ns, ino, ctime_ns, len(name))
        + name
        + entry.digests
    )
    return body + blake3.blake3(body).digest()


def decode_cache_file(raw: bytes) -> ChunkEntry | None:
    """The entry in a cache file, or None if the file is corrupt in any way."""
    if len(raw) < _HEADER.size + _DIGEST:
        return None
    body, trailer = raw[:-_DIGEST], raw[-_DIGEST:]
    if blake3.blake3(body).digest() != trailer:
        return None
    magic, chunk_size, size, mtime_ns, ino, ctime_ns, name_len = _HEADER.unpack_from(body)
    digests = body[_HEADER.size + name_len :]
    chunks = -(-size // chunk_size) if chunk_size else -1
    if magic != _MAGIC or len(digests) != chunks * _DIGEST:
        return None
    try:
        name = body[_HEADER.size : _HEADER.size + name_len].decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return None
    return ChunkEntry(name, chunk_size, (size, mtime_ns, ino, ctime_ns), digests)
