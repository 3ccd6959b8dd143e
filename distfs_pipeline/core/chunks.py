"""Sample readers: upstream's whole-blob verification, and ours, where I/O follows the sample.

`make_reader(store, verify)` returns a `SampleReader` (see `window.SampleReader`):

- `mode="full"` is upstream: every issue and every answer reads, decodes (`codec`) and hashes the
  whole blob (`get_verified`), so a check of a 16 MiB blob costs 32 MiB of reading and hashing
  (and, for an `O7CBLOB1` blob, two whole zstd decodes) whatever the sample size is.
- `mode="chunked"` is ours (SPEC section 0, "I/O follows the sample"):

  * A blob FILE no larger than one chunk is read whole, decoded as upstream's `get` decodes it and
    checked against its content hash on every read, exactly as upstream does; no cache is involved,
    so every outcome equals upstream's (a compressed blob whose file fits one chunk included).
  * A larger file is fully verified once, exactly by upstream's rule (decode when the file is a valid
    `O7CBLOB1` encoding of this hash, else the raw bytes; the whole hash must equal the content
    hash, else `BlobHashMismatch` and nothing is cached). That one read records a checksum (xxh3-64)
    of every piece of the file AS STORED ON DISK (pieces of `chunk_size_bytes`, at most 16 KiB:
    `CHECKSUM_PIECE_BYTES`; "chunk" below), the layout found (raw or compressed) and the decoded
    length.
  * Later checks of a raw blob read only the chunks the window covers (one `pread` into one
    buffer), compare their checksums with the recorded ones (one comparison), and hand the window
    out as a read-only view of that buffer: the only BLAKE3 of a steady check is the sample's own.
  * Later checks of a compressed blob decode the zstd stream from its start and stop at the
    window's end (a frame cannot be entered in the middle; never the whole blob, never twice),
    checking the checksum of every on-disk chunk fed to the decoder. zstd decoding is deterministic,
    so an intact on-disk prefix decodes to exactly the bytes the full verify hashed: no digest of
    the decoded content is needed, and the only hash over decoded bytes is the sample's own.
  * Confirm before condemning: a checksum that does not match (or a cache that cannot be read, or a
    decode that fails) is not a verdict by itself; the blob is fully verified again, as upstream
    would read it, and that decides. So a corrupt or stale cache can cost I/O but can never make a
    healthy blob fail, and a damaged one fails exactly as upstream fails it.
  * The checksums are trusted only while the file keeps the size, mtime_ns, ctime_ns and inode it had
    when they were built, and (issue 8: a cache must not vouch indefinitely) for at most
    `full_verify_interval_ms` of wall time since that full verify (default 7 days, like Ceph's
    deep scrub; 0 = no bound); `full_verify_every = n > 0` also makes every n-th check of a blob
    (per process) a full verify.

  Trade-off, on purpose: a corruption that leaves size, mtime, ctime and inode unchanged (bit rot)
  is caught when a check reads a damaged chunk (for a compressed blob: any chunk of the prefix up
  to the window), or at the next periodic full verify.

  Why a non-cryptographic checksum per chunk (issue 11): the cache's job between two full BLAKE3
  verifies is to notice accidental change of bytes the file's metadata does not show (bit rot, a
  misdirected write), the job HDFS gives a CRC32C per 512 bytes (its VolumeScanner), Ceph's deep
  scrub crc32c and ZFS fletcher4. A BLAKE3 per chunk made every steady check hash the window twice
  (the chunks, then the sample). xxh3-64 runs at about 60 GB/s here against 6 GB/s for BLAKE3 and
  27 GB/s for hardware CRC32C (`google-crc32c`, which also copies a memoryview), and misses a
  changed chunk with probability about 2^-64. It detects accidents, not a forger: whoever can write
  under the file system (the block device, a VM image, a SAN or NFS back end, a restored snapshot)
  changes bytes without changing size, mtime, ctime or inode, and can choose bytes with the same
  xxh3-64 (it is no second-preimage-resistant hash). Such a writer could as well rewrite this cache
  (root on the node: no local cache is a MAC against it, and a BLAKE3 per chunk was not either), so
  the defence is the full verify, BLAKE3 of the whole blob by upstream's rule, at least every
  `full_verify_interval_ms` (7 days by default; lower it, or use `probe=upstream_full`, where that
  writer is in the threat model); a mismatch is never a verdict by itself (above).

The chunk cache lives in memory and, if `cache_dir` is set, in one binary file per blob under
`cache_dir/chunks-<size>/` (never inside the audited store: `make_reader` refuses that), with a FIXED
layout so a check reads only what it needs: a header (magic `DFSCHK03`, file key, layout, decoded
length, time of the full verify, the content hash) sealed by a BLAKE3 of it, then 8 bytes (xxh3-64)
per on-disk piece: 512 KiB per GiB of store at the default 16 KiB chunks and any larger chunk size
(2 MiB at 4 KiB). A new run reads the header and the checksums of the window's chunks (`pread`), not the
whole file. A file of an older format (`DFSCHK02`: a BLAKE3 per chunk) is ignored and rebuilt. Files are
written through `safefile.write_atomic` and opened through `safefile.open_read` (no link, FIFO or
device followed; sizes checked); a file that is corrupt, of another blob, or of another file state is
ignored and rebuilt from a verified read, never trusted.

Between issue and answer of one check the chunked reader reuses the bytes it just verified if a
`stat` shows the file unchanged: both happen in the same process microseconds apart, and the
second read would only re-hash identical bytes. And when the sample is exactly the bytes whose
BLAKE3 a check already knows (a whole blob of at most one chunk, hashed for its content check in a
BLAKE3 store; a window of the whole of a larger blob, whose hash the full verify established), that
digest is handed to the issue (`window.note_sample_hash`) instead of hashing the same bytes again
(issue 11). Full mode is
upstream's and untouched: it reads and hashes the whole blob at issue and again at answer.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import blake3
import xxhash

from distfs_pipeline.core import codec, safefile
from distfs_pipeline.core.errors import BlobHashMismatch, Io, UsageError
from distfs_pipeline.core.models import VerifyOptions
from distfs_pipeline.core.store import LocalCasStore, blake3_hex, require_regular_file
from distfs_pipeline.core.window import (
    Sample,
    SampleReader,
    check_window,
    extract_sample_slice,
    note_sample_hash,
    sample_window,
)

__all__ = ["ChunkedReader", "FullReader", "SampleReader", "make_reader"]

_LOG = logging.getLogger(__name__)
VERIFY_MODES = ("chunked", "full")
RAW, COMPRESSED = 0, 1  # the layout of a blob file (`ChunkEntry.layout`)
_SEAL = 32  # the BLAKE3 that seals a cache file's header
_CHECKSUM = 8  # the xxh3-64 of one on-disk chunk (big-endian, as `xxh3_64_digest` gives it)
_checksum = xxhash.xxh3_64_digest
_MAGIC = b"DFSCHK03"  # 03: xxh3-64 per chunk (02 held a BLAKE3 per chunk: ignored, rebuilt)
# magic, layout, chunk size, file size, mtime_ns, ino, ctime_ns, decoded length, verified at (ns), hash len
_HEADER = struct.Struct("<8sBxxxIQqQqQqH")
_STREAM_BYTES = 1 << 20
# Bound on chunk checksums kept in memory (LRU): 64 MiB of them describe 128 GiB of 16 KiB chunks.
_MEMORY_DIGEST_BUDGET = 64 << 20
# A full verify stamped further in the future than this (a clock stepped back, a forged file) is due.
_FUTURE_SLACK_NS = 60_000_000_000
DEFAULT_FULL_VERIFY_INTERVAL_MS = 7 * 24 * 3600 * 1000
# The largest piece one checksum covers. A 64 KiB window at a random offset then costs at most 96 KiB
# read and checksummed (80 KiB typically), whatever `chunk_size_bytes` is: with 64 KiB pieces it was
# 128 KiB (about 5 us more per check, measured by benchmarks/bench_core.py). 8 bytes per 16 KiB is
# 512 KiB of cache per GiB of store. Finer pieces save little: each costs a call (about 0.1 us).
CHECKSUM_PIECE_BYTES = 16 * 1024

FileKey = tuple[int, int, int, int]  # size, mtime_ns, ino, ctime_ns


def make_reader(
    store: LocalCasStore, verify: VerifyOptions, clock_ns: Callable[[], int] = time.time_ns
) -> SampleReader:
    """The reader for `verify.mode`; `UsageError` (naming the setting) for invalid options.

    `clock_ns` is the wall clock that ages cached digests (tests pass their own)."""
    _validate_options(store, verify)
    if verify.mode == "full":
        return FullReader(store)
    cache_dir = Path(verify.cache_dir) if verify.cache_dir is not None else None
    return ChunkedReader(
        store,
        verify.chunk_size_bytes,
        cache_dir,
        verify.full_verify_every,
        full_verify_interval_ms=verify.full_verify_interval_ms,
        clock_ns=clock_ns,
    )


def _validate_options(store: LocalCasStore, verify: VerifyOptions) -> None:
    if verify.mode not in VERIFY_MODES:
        raise UsageError(f"probe.verify_mode must be one of {', '.join(VERIFY_MODES)}, got {verify.mode!r}")
    if isinstance(verify.chunk_size_bytes, bool) or not 1 <= verify.chunk_size_bytes <= 0xFFFFFFFF:
        raise UsageError(f"probe.chunk_size_bytes must be >= 1, got {verify.chunk_size_bytes!r}")
    if isinstance(verify.full_verify_every, bool) or verify.full_verify_every < 0:
        raise UsageError(f"probe.full_verify_every must be >= 0, got {verify.full_verify_every!r}")
    interval = verify.full_verify_interval_ms
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 0:
        raise UsageError(f"probe.full_verify_interval_ms must be >= 0, got {interval!r}")
    if verify.mode == "chunked" and verify.cache_dir is not None:
        refuse_cache_inside_store(Path(verify.cache_dir), store.root)


def refuse_cache_inside_store(cache_dir: Path, store_root: Path) -> None:
    """`UsageError` when `cache_dir` is the store or inside it (after resolving links): the
    audited store is read-only to the auditor."""
    if safefile.is_inside(cache_dir, store_root):
        raise UsageError(
            f"probe.chunk_cache_dir {cache_dir} is inside the audited store {store_root}: "
            "the store is read-only to the auditor"
        )


# ---------------------------------------------------------------------- shared file access


def _file_key(st: os.stat_result) -> FileKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class _BlobAccess:
    """Opening and stat-ing blob files with upstream's error mapping, for both readers."""

    def __init__(self, store: LocalCasStore) -> None:
        self.store = store

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


def _no_readahead(fd: int) -> None:
    """A window read wants exactly its bytes: without this hint the kernel's readahead, seeing a
    compressed blob's prefix read front to back (or a raw window after cached pages), pulls in more."""
    try:  # noqa: SIM105 (hot path: suppress() costs an object per check)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    except (OSError, AttributeError):
        pass


def _pread(fd: int, path: str, length: int, offset: int) -> bytes:
    try:
        return os.pread(fd, length, offset)
    except OSError as exc:
        raise Io(f"read blob {path} failed: {exc.strerror or exc}") from exc


def _checksums(block: bytes, chunk_size: int) -> bytes:
    """The concatenated xxh3-64 of each `chunk_size` piece of `block` (the last may be short)."""
    if len(block) <= chunk_size:
        return _checksum(block)
    view = memoryview(block)
    return b"".join([_checksum(view[at : at + chunk_size]) for at in range(0, len(block), chunk_size)])


# ---------------------------------------------------------------------- upstream mode


class FullReader(_BlobAccess):
    """Upstream design: `get_verified` of the whole blob at issue and again at answer.

    (`LocalCasStore.get` refuses a non-regular file with `Io` instead of blocking on it.)
    """

    def blob_len(self, content_hash: str) -> int:
        """The decoded length of the verified blob (SPEC 2.1: `blob_len` is the decoded length)."""
        return len(self.store.get_verified(content_hash))

    def read_sample(self, content_hash: str, max_sample_bytes: int, vrf_seed: str) -> tuple[int, int, Sample]:
        blob = self.store.get_verified(content_hash)
        offset, size = sample_window(content_hash, vrf_seed, len(blob), max_sample_bytes)
        return offset, size, blob[offset : offset + size]

    def read_window(self, content_hash: str, offset: int, size: int) -> Sample:
        return extract_sample_slice(self.store.get_verified(content_hash), offset, size)


# ---------------------------------------------------------------------- chunked mode


@dataclass(frozen=True)
class ChunkEntry:
    """What one full verify of a blob file established, valid while the file keeps `key`.

    `chunk_size`: the piece each checksum covers (`ChunkedReader.piece`: the configured chunk size,
    at most `CHECKSUM_PIECE_BYTES`). `digests`: the xxh3-64 checksum of each on-disk piece, 8 bytes
    each, concatenated; None when they stay in the cache file `cache_path` and are read (`pread`)
    only as a check needs them."""

    content_hash: str
    chunk_size: int
    key: FileKey
    digests: bytes | None
    layout: int = RAW
    decoded_len: int = 0
    verified_at_ns: int = 0
    cache_path: Path | None = None
    cache_identity: tuple[int, int, int] | None = None  # ino, size, mtime_ns of the cache file read

    @property
    def chunk_count(self) -> int:
        return -(-self.key[0] // self.chunk_size)


@dataclass
class ReaderStats:
    """Counters that show where a reader's I/O went (benchmarks, diagnostics)."""

    small_reads: int = 0
    chunk_reads: int = 0
    full_verifies: int = 0
    confirmations: int = 0
    interval_verifies: int = 0
    cache_file_hits: int = 0
    cache_file_rejected: int = 0
    cache_write_errors: int = 0
    cache_bytes_read: int = 0
    window_disk_bytes: int = 0  # blob bytes read by checks vouched for by the cache
    verify_disk_bytes: int = 0  # blob bytes read by full verifies
    decoded_bytes: int = 0
    memo_hits: int = 0


class _Unverified(Exception):
    """The window's bytes could not be vouched for by the cache: confirm with a full verify."""


class ChunkedReader(_BlobAccess):
    """Sample-proportional verified reads (see the module docstring for the guarantees)."""

    def __init__(
        self,
        store: LocalCasStore,
        chunk_size: int,
        cache_dir: Path | None = None,
        full_verify_every: int = 0,
        *,
        full_verify_interval_ms: int = DEFAULT_FULL_VERIFY_INTERVAL_MS,
        clock_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        super().__init__(store)
        self.chunk_size = chunk_size
        # The checksum granularity (`ChunkEntry.chunk_size`): at most 16 KiB, so that the bytes a
        # window's check reads and checksums stay close to the window even with large chunks.
        self.piece = min(chunk_size, CHECKSUM_PIECE_BYTES)
        self.cache_dir = cache_dir / f"chunks-{chunk_size}" if cache_dir is not None else None
        self._cache_root_ready = False  # `_make_cache_dirs` checked the cache root in this reader
        self.full_verify_every = full_verify_every
        self.full_verify_interval_ns = full_verify_interval_ms * 1_000_000
        self.clock_ns = clock_ns
        self.stats = ReaderStats()
        self._entries: OrderedDict[str, ChunkEntry] = OrderedDict()
        self._digest_bytes = 0
        self._checks: dict[str, int] = {}
        self._file_checks: dict[str, int] = {}  # checks served by a file-backed entry (see _promote)
        self._memo: tuple[str, FileKey, int, int, Sample, str] | None = None  # the last sample, its path
        self._blake3_store = store.hash_algorithm == "blake3"

    # -- SampleReader

    def blob_len(self, content_hash: str) -> int:
        """The decoded length, once verified: `BlobNotFound`, `Io`, `BlobHashMismatch` as a read."""
        path = self.store.blob_file(content_hash)
        fd, st = self._open(content_hash, path)
        try:
            if st.st_size <= self.chunk_size:
                return len(self._read_small(fd, path, content_hash, st.st_size))
            return self._entry(fd, path, content_hash, st).decoded_len
        finally:
            os.close(fd)

    def read_sample(self, content_hash: str, max_sample_bytes: int, vrf_seed: str) -> tuple[int, int, Sample]:
        """Verified bytes of the deterministic window; counts one check of the blob."""
        path = self.store.blob_file(content_hash)
        fd, st = self._open(content_hash, path)
        try:
            if st.st_size <= self.chunk_size:
                blob = self._read_small(fd, path, content_hash, st.st_size)
                offset, size = sample_window(content_hash, vrf_seed, len(blob), max_sample_bytes)
                data = blob[offset : offset + size]
            else:

                def window(blob_len: int) -> tuple[int, int]:
                    return sample_window(content_hash, vrf_seed, blob_len, max_sample_bytes)

                offset, size, data = self._checked_window(fd, path, content_hash, st, window, count=True)
        finally:
            os.close(fd)
        self._memo = (content_hash, _file_key(st), offset, size, data, path)
        return offset, size, data

    def read_window(self, content_hash: str, offset: int, size: int) -> Sample:
        """Verified bytes of an explicit window (answer); upstream's window errors."""
        memo = self._memo
        if (
            memo is not None
            and memo[0] == content_hash
            and memo[2] == offset
            and memo[3] == size
            and self._stat_key(content_hash, memo[5]) == memo[1]
        ):
            self.stats.memo_hits += 1
            return memo[4]
        path = self.store.blob_file(content_hash)
        fd, st = self._open(content_hash, path)
        try:
            if st.st_size <= self.chunk_size:
                return extract_sample_slice(
                    self._read_small(fd, path, content_hash, st.st_size), offset, size
                )

            def window(blob_len: int) -> tuple[int, int]:
                check_window(offset, size, blob_len)
                return offset, size

            return self._checked_window(fd, path, content_hash, st, window, count=False)[2]
        finally:
            os.close(fd)

    # -- small files: exactly upstream's check

    def _read_small(self, fd: int, path: str, content_hash: str, size: int) -> bytes:
        self.stats.small_reads += 1
        blob = codec.decode(_read_all(fd, path, size), content_hash)
        actual = self.store.hash_hex(blob)
        if actual != content_hash:
            raise BlobHashMismatch(content_hash, actual)
        if self._blake3_store:  # a whole-blob sample's hash is the one just computed
            note_sample_hash(blob, actual)
        return blob

    # -- large files: the chunk cache

    def _checked_window(
        self,
        fd: int,
        path: str,
        content_hash: str,
        st: os.stat_result,
        window: Callable[[int], tuple[int, int]],
        *,
        count: bool,
    ) -> tuple[int, int, Sample]:
        """(offset, size, verified bytes) of `window(decoded length)`.

        A full verify (the first check, a due one, or a confirmation) captures the window while it
        decodes, so a compressed blob is never decoded twice in one check."""
        entry = self._entry_for_check(fd, path, content_hash, st, count)
        if entry is None:
            return self._build_capturing(fd, path, content_hash, st, window)
        offset, size = window(entry.decoded_len)
        try:
            return offset, size, self._read_verified(fd, path, entry, offset, size)
        except _Unverified:
            self.stats.confirmations += 1
            return self._build_capturing(fd, path, content_hash, st, window)

    def _build_capturing(
        self,
        fd: int,
        path: str,
        content_hash: str,
        st: os.stat_result,
        window: Callable[[int], tuple[int, int]],
    ) -> tuple[int, int, Sample]:
        entry, captured = self._build(fd, path, content_hash, st, window)
        if captured is not None:
            return captured
        offset, size = window(entry.decoded_len)
        try:
            return offset, size, self._read_verified(fd, path, entry, offset, size)
        except _Unverified:  # it verified a moment ago: the file is changing under us
            self._known_bad(content_hash)
            raise BlobHashMismatch(content_hash, "the file changed while it was being verified") from None

    def _entry_for_check(
        self, fd: int, path: str, content_hash: str, st: os.stat_result, count: bool
    ) -> ChunkEntry | None:
        """The valid entry, or None when a full verify is due (periodic by count, or first)."""
        if count:
            number = self._checks.get(content_hash, 0) + 1
            self._checks[content_hash] = number
            if self.full_verify_every and number % self.full_verify_every == 0:
                return None
        key = _file_key(st)
        entry = self._entries.get(content_hash)  # the steady case, inline (issue 11: per-check cost)
        if entry is not None and entry.key == key and not (self.full_verify_interval_ns and self._due(entry)):
            self._entries.move_to_end(content_hash)
            return entry
        return self._valid_entry(content_hash, key)

    def _entry(self, fd: int, path: str, content_hash: str, st: os.stat_result) -> ChunkEntry:
        entry = self._valid_entry(content_hash, _file_key(st))
        return entry if entry is not None else self._build(fd, path, content_hash, st, None)[0]

    def _valid_entry(self, content_hash: str, key: FileKey) -> ChunkEntry | None:
        """A cached entry (memory, else the cache file's header) for this file state and not due."""
        entry = self._entries.get(content_hash)
        if entry is not None and entry.key == key:
            if not self._due(entry):
                self._entries.move_to_end(content_hash)
                return entry
            self.stats.interval_verifies += 1
            return None
        entry = self._load_cache_file(content_hash, key)
        if entry is None:
            return None
        if self._due(entry):
            self.stats.interval_verifies += 1
            return None
        self.stats.cache_file_hits += 1
        self._remember(entry)
        return entry

    def _due(self, entry: ChunkEntry) -> bool:
        """Whether the bounded-trust interval since the entry's full verify has run out."""
        if not self.full_verify_interval_ns:
            return False
        now = self.clock_ns()
        age = now - entry.verified_at_ns
        return age > self.full_verify_interval_ns or age < -_FUTURE_SLACK_NS

    def _build(
        self,
        fd: int,
        path: str,
        content_hash: str,
        st: os.stat_result,
        window: Callable[[int], tuple[int, int]] | None,
    ) -> tuple[ChunkEntry, tuple[int, int, bytes] | None]:
        """Full verify by upstream's rule in one pass over the file; records the on-disk chunk
        digests only if the whole hash matches. Returns the entry and, for a compressed blob, the
        `window` captured from the decode."""
        self.stats.full_verifies += 1
        self._forget(content_hash)
        scan = _FileScan(fd, path, self.piece, self.store.new_hasher())
        head = scan.read_exact(codec.HEADER_LEN)
        raw_len = codec.header_raw_len(head, content_hash, st.st_size)
        decoded, captured = None, None
        if raw_len is not None:
            decoded, captured = self._decode_whole(scan, raw_len, window)
        scan.drain()
        self.stats.verify_disk_bytes += scan.position
        if scan.position != st.st_size:
            changed = f"size changed while reading: {st.st_size} -> {scan.position}"
            raise BlobHashMismatch(content_hash, changed)
        if decoded is not None:
            actual, layout, decoded_len = decoded.hexdigest(), COMPRESSED, raw_len or 0
        else:
            actual, layout, decoded_len, captured = scan.hasher.hexdigest(), RAW, scan.position, None
        if actual != content_hash:
            self._delete_cache_file(content_hash)
            raise BlobHashMismatch(content_hash, actual)
        entry = ChunkEntry(
            content_hash,
            self.piece,
            _file_key(st),
            bytes(scan.digests),
            layout,
            decoded_len,
            self.clock_ns(),
        )
        self._remember(entry)
        self._write_cache_file(entry)
        return entry, captured

    def _decode_whole(
        self, scan: _FileScan, raw_len: int, window: Callable[[int], tuple[int, int]] | None
    ) -> tuple[object | None, tuple[int, int, bytes] | None]:
        """Decode and hash the whole payload (upstream's `decode_all`), capturing `window` on the way.

        (None, None) when upstream would fall back to the raw bytes."""
        hasher = self.store.new_hasher()
        bounds: tuple[int, int] | None = None
        if window is not None:
            with contextlib.suppress(Exception):  # a window error shows again on the decided layout
                bounds = window(raw_len)
        parts: list[bytes] = []
        position = 0
        try:
            for piece in codec.decode_stream(scan.read, raw_len):
                hasher.update(piece)
                if bounds is not None:
                    start, end = bounds[0], bounds[0] + bounds[1]
                    if position < end and position + len(piece) > start:
                        parts.append(piece[max(start - position, 0) : end - position])
                position += len(piece)
        except codec.DecodeError:
            return None, None
        self.stats.decoded_bytes += position
        if bounds is None:
            return hasher, None
        return hasher, (bounds[0], bounds[1], b"".join(parts))

    def _read_verified(self, fd: int, path: str, entry: ChunkEntry, offset: int, size: int) -> Sample:
        """The window's bytes, vouched for by the entry's checksums; `_Unverified` otherwise.

        A raw blob's window costs one `pread` of its covering chunks (one buffer), their xxh3-64
        compared with the cached ones in one comparison, and the window sliced out of the buffer.
        A window of the whole blob is the very content the full verify hashed to `content_hash`
        (every byte is vouched for by a matching checksum), so in a BLAKE3 store that is its sample
        hash: handed to the issue instead of hashing the blob once more."""
        self.stats.chunk_reads += 1
        if not size:
            return b""
        if entry.digests is None:
            entry = self._promote(entry)
        _no_readahead(fd)
        if entry.layout == COMPRESSED:
            data = self._read_compressed(fd, path, entry, offset, size)
        else:
            cs = entry.chunk_size
            first = offset // cs
            count = (offset + size - 1) // cs - first + 1
            start = first * cs
            length = min(start + count * cs, entry.key[0]) - start
            block = _pread(fd, path, length, start)  # one read of the covering chunks
            self.stats.window_disk_bytes += len(block)
            known = (
                entry.digests[first * _CHECKSUM : (first + count) * _CHECKSUM]
                if entry.digests is not None
                else self._digests(entry, first, count)
            )
            if len(block) != length or _checksums(block, cs) != known:
                raise _Unverified
            # A read-only view of the immutable buffer, not a 64 KiB copy: the protocol only hashes it.
            data = (
                block
                if offset == start and size == length
                else memoryview(block)[offset - start : offset - start + size]
            )
        if self._blake3_store and offset == 0 and size == entry.decoded_len:
            note_sample_hash(data, entry.content_hash)
        return data

    def _read_compressed(self, fd: int, path: str, entry: ChunkEntry, offset: int, size: int) -> bytes:
        """Decode the payload from its start up to the window's end, feeding the decoder only
        on-disk chunks whose checksums match (then its output is what the full verify hashed)."""
        cs, file_size = entry.chunk_size, entry.key[0]
        # The digests of the on-disk prefix the window is likely to need, read in one go
        # (proportionally to its end, plus a margin); more are read if the decoder asks for them.
        guess = min(entry.chunk_count, ((offset + size) * file_size // max(entry.decoded_len, 1)) // cs + 3)
        known = bytearray(self._digests(entry, 0, guess))
        state = {"chunk": 0, "skip": codec.HEADER_LEN}

        def read(n: int) -> bytes:
            piece = b""
            while not piece and state["chunk"] < entry.chunk_count and n > 0:
                piece = read_chunks(n)  # empty only while the header is being skipped
            return piece

        def read_chunks(n: int) -> bytes:
            chunk = state["chunk"]
            count = min(max(1, -(-(n + state["skip"]) // cs)), entry.chunk_count - chunk)
            have = len(known) // _CHECKSUM
            if chunk + count > have:
                known.extend(self._digests(entry, have, chunk + count - have))
            start = chunk * cs
            length = min((chunk + count) * cs, file_size) - start
            block = _pread(fd, path, length, start)
            self.stats.window_disk_bytes += len(block)
            if len(block) != length:
                raise _Unverified
            if _checksums(block, cs) != known[chunk * _CHECKSUM : (chunk + count) * _CHECKSUM]:
                raise _Unverified
            state["chunk"] = chunk + count
            skip, state["skip"] = state["skip"], max(0, state["skip"] - length)
            return block[skip:] if skip else block

        reader = codec.stream_prefix(read)
        try:
            left = offset
            while left:
                piece = reader.read(min(left, _STREAM_BYTES))
                if not piece:
                    raise _Unverified
                left -= len(piece)
            parts, left = [], size
            while left:
                piece = reader.read(left)
                if not piece:
                    raise _Unverified
                parts.append(piece)
                left -= len(piece)
        except codec.zstandard.ZstdError:
            raise _Unverified from None
        self.stats.decoded_bytes += offset + size
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _digests(self, entry: ChunkEntry, first: int, count: int) -> bytes:
        """`count` digests from chunk `first`: from memory, or one `pread` of the cache file."""
        count = max(0, min(count, entry.chunk_count - first))
        if entry.digests is not None:
            return entry.digests[first * _CHECKSUM : (first + count) * _CHECKSUM]
        if entry.cache_path is None or not count:
            return b""
        try:
            fd, st = safefile.open_read(entry.cache_path)
        except (OSError, safefile.UnsafeFileError):
            raise _Unverified from None
        try:
            if (st.st_ino, st.st_size, st.st_mtime_ns) != entry.cache_identity:
                raise _Unverified  # replaced since its header was read
            start = _data_start(entry.content_hash) + first * _CHECKSUM
            data = os.pread(fd, count * _CHECKSUM, start)
        except OSError:
            raise _Unverified from None
        finally:
            os.close(fd)
        self.stats.cache_bytes_read += len(data)
        if len(data) != count * _CHECKSUM:
            raise _Unverified
        return data

    def _promote(self, entry: ChunkEntry) -> ChunkEntry:
        """A file-backed entry, or from its second check on, the same entry with all its checksums
        in memory (one `pread` of them), so the steady checks of a run that found the cache on disk
        cost what those of the run that built it cost (no open, fstat and read of the cache file per
        check). The first check still reads only its window's checksums; entries too large for a
        share of the memory budget stay file-backed; the LRU budget bounds the rest."""
        uses = self._file_checks.get(entry.content_hash, 0) + 1
        self._file_checks[entry.content_hash] = uses
        if uses < 2 or entry.chunk_count * _CHECKSUM > _MEMORY_DIGEST_BUDGET // 16:
            return entry
        promoted = replace(entry, digests=self._digests(entry, 0, entry.chunk_count))
        self._remember(promoted)
        return promoted

    def _known_bad(self, content_hash: str) -> None:
        """Drop every cached digest of a blob seen damaged, so its next check is a full verify."""
        self._forget(content_hash)
        self._delete_cache_file(content_hash)

    # -- memory cache

    def _remember(self, entry: ChunkEntry) -> None:
        self._forget(entry.content_hash)
        self._entries[entry.content_hash] = entry
        self._digest_bytes += len(entry.digests or b"")
        while self._digest_bytes > _MEMORY_DIGEST_BUDGET and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._digest_bytes -= len(evicted.digests or b"")

    def _forget(self, content_hash: str) -> None:
        self._file_checks.pop(content_hash, None)
        old = self._entries.pop(content_hash, None)
        if old is not None:
            self._digest_bytes -= len(old.digests or b"")
        if self._memo is not None and self._memo[0] == content_hash:
            self._memo = None

    # -- cache files

    def _cache_path(self, content_hash: str) -> Path | None:
        return cache_file_path(self.cache_dir, content_hash) if self.cache_dir is not None else None

    def _load_cache_file(self, content_hash: str, key: FileKey) -> ChunkEntry | None:
        path = self._cache_path(content_hash)
        if path is None:
            return None
        entry = read_cache_header(path, content_hash)
        if entry is None:
            if path.exists():
                self.stats.cache_file_rejected += 1
            return None
        self.stats.cache_bytes_read += _data_start(content_hash)
        if entry.chunk_size != self.piece:
            self.stats.cache_file_rejected += 1
            return None
        return entry if entry.key == key else None

    def _make_cache_dirs(self, directory: Path) -> None:
        """The cache's own dirs for a new file: the cache root made through trusted dirs only once
        per reader (`safefile.make_trusted_dirs`, a few dozen system calls), then the subdirs
        below it as real dirs (a first check of each blob writes a file: this is per round)."""
        assert self.cache_dir is not None
        if not self._cache_root_ready:
            safefile.make_trusted_dirs(self.cache_dir)
            self._cache_root_ready = True
        safefile.make_real_dirs(self.cache_dir, directory)

    def _write_cache_file(self, entry: ChunkEntry) -> None:
        path = self._cache_path(entry.content_hash)
        if path is None:
            return
        try:
            self._make_cache_dirs(path.parent)
            safefile.write_atomic(path, encode_cache_file(entry), durable=False)
        except (OSError, safefile.UnsafeFileError) as exc:
            # The cache only saves I/O; the verified entry is still used from memory.
            self.stats.cache_write_errors += 1
            _LOG.warning("chunk cache write %s failed: %s", path, exc)

    def _delete_cache_file(self, content_hash: str) -> None:
        path = self._cache_path(content_hash)
        if path is not None:
            with contextlib.suppress(OSError):
                path.unlink()


class _FileScan:
    """One front-to-back read of a blob file that hashes every byte as it passes: the store's hash
    of the raw bytes (upstream's fallback) and the xxh3-64 checksum of every on-disk chunk."""

    def __init__(self, fd: int, path: str, chunk_size: int, hasher: object) -> None:
        self.fd, self.path, self.chunk_size = fd, path, chunk_size
        self.hasher = hasher
        self.digests = bytearray()
        self.position = 0  # bytes read from the file so far
        self._step = max(chunk_size, _STREAM_BYTES // chunk_size * chunk_size)
        self._buffer = memoryview(b"")
        self._eof = False

    def _fill(self) -> None:
        block = _pread(self.fd, self.path, self._step, self.position)
        view = memoryview(block)
        self.hasher.update(view)  # type: ignore[attr-defined]
        for start in range(0, len(view), self.chunk_size):
            self.digests += _checksum(view[start : start + self.chunk_size])
        self.position += len(block)
        # A short block is the end of the file (or a torn read: the hash decides).
        self._eof = len(block) < self._step
        self._buffer = view

    def read(self, n: int) -> bytes:
        """Up to `n` next bytes (b"" at the end of the file)."""
        if not self._buffer and not self._eof:
            self._fill()
        piece, self._buffer = self._buffer[:n], self._buffer[n:]
        return bytes(piece)

    def read_exact(self, n: int) -> bytes:
        parts, left = [], n
        while left and (piece := self.read(left)):
            parts.append(piece)
            left -= len(piece)
        return b"".join(parts)

    def drain(self) -> None:
        """Read (and hash) the rest of the file."""
        self._buffer = memoryview(b"")
        while not self._eof:
            self._fill()
            self._buffer = memoryview(b"")


# ---------------------------------------------------------------------- cache file format


def cache_file_path(chunks_dir: Path, content_hash: str) -> Path:
    """`<chunks_dir>/<2 hex>/<BLAKE3 of the hash>.chk` (any hash string maps to a safe name)."""
    name = blake3_hex(content_hash.encode("utf-8", "surrogatepass"))
    return chunks_dir / name[:2] / f"{name}.chk"


def _name_bytes(content_hash: str) -> bytes:
    return content_hash.encode("utf-8", "surrogatepass")


def _data_start(content_hash: str) -> int:
    """Where the digests begin: the header, the hash, the header's seal."""
    return _HEADER.size + len(_name_bytes(content_hash)) + _SEAL


def _pack_header(entry: ChunkEntry) -> bytes:
    name = _name_bytes(entry.content_hash)
    size, mtime_ns, ino, ctime_ns = entry.key
    fields = _HEADER.pack(
        _MAGIC, entry.layout, entry.chunk_size, size, mtime_ns, ino, ctime_ns,
        entry.decoded_len, entry.verified_at_ns, len(name),
    )  # fmt: skip
    return fields + name + blake3.blake3(fields + name).digest()


def encode_cache_file(entry: ChunkEntry) -> bytes:
    """The header (sealed by its own BLAKE3), then the chunk checksums at a fixed place."""
    if entry.digests is None:
        raise ValueError("only an entry holding its digests can be written")
    return _pack_header(entry) + entry.digests


def _parse_header(raw: bytes, content_hash: str) -> ChunkEntry | None:
    """The entry a header describes (digests left in the file), or None if it is corrupt or another's."""
    name = _name_bytes(content_hash)
    if len(raw) != _HEADER.size + len(name) + _SEAL:
        return None
    body, seal = raw[:-_SEAL], raw[-_SEAL:]
    if blake3.blake3(body).digest() != seal:
        return None
    magic, layout, chunk_size, size, mtime_ns, ino, ctime_ns, decoded_len, verified_at, name_len = (
        _HEADER.unpack_from(body)
    )
    if magic != _MAGIC or layout not in (RAW, COMPRESSED) or not chunk_size or name_len != len(name):
        return None
    if body[_HEADER.size :] != name:
        return None
    if layout == RAW and decoded_len != size:
        return None
    key = (size, mtime_ns, ino, ctime_ns)
    return ChunkEntry(content_hash, chunk_size, key, None, layout, decoded_len, verified_at)


def read_cache_header(path: Path, content_hash: str) -> ChunkEntry | None:
    """The file-backed entry in the cache file at `path`, or None when absent, unsafe, corrupt or of
    another blob. Reads only the header; checks the file is exactly as long as its digests need."""
    try:
        fd, st = safefile.open_read(path)
    except (OSError, safefile.UnsafeFileError):
        return None
    try:
        raw = os.pread(fd, _data_start(content_hash), 0)
    except OSError:
        return None
    finally:
        os.close(fd)
    entry = _parse_header(raw, content_hash)
    if entry is None or st.st_size != len(raw) + entry.chunk_count * _CHECKSUM:
        return None
    return replace(entry, cache_path=path, cache_identity=(st.st_ino, st.st_size, st.st_mtime_ns))


def decode_cache_file(raw: bytes, content_hash: str) -> ChunkEntry | None:
    """The whole entry in a cache file's bytes (digests included), or None if corrupt in any way."""
    start = _data_start(content_hash)
    entry = _parse_header(raw[:start], content_hash)
    if entry is None or len(raw) != start + entry.chunk_count * _CHECKSUM:
        return None
    return replace(entry, digests=raw[start:])


def rekey_cache_files(cache_dir: Path, content_hash: str, st: os.stat_result) -> int:
    """Re-stamp every cache file of `content_hash` under `cache_dir` (all chunk sizes) with the
    blob file's current metadata, keeping its digests and verify time; returns how many.

    For scenarios only: it makes a deliberate in-place corruption look like rot below the file
    system, which no metadata shows (see `scenarios.FaultInjector._rekey_chunk_cache`)."""
    count = 0
    for chunks_dir in sorted(cache_dir.glob("chunks-*")):
        path = cache_file_path(chunks_dir, content_hash)
        try:
            entry = decode_cache_file(safefile.read_capped(path, 1 << 30), content_hash)
        except (OSError, safefile.UnsafeFileError):
            continue
        if entry is None:
            continue
        safefile.write_atomic(path, encode_cache_file(replace(entry, key=_file_key(st))), durable=False)
        count += 1
    return count


# ---------------------------------------------------------------------- where the cache lives


def default_cache_dir(store_root: Path | str) -> Path:
    """The per-store cache directory that outlives runs (issue 11):
    `$XDG_CACHE_HOME/distfs_pipeline/<16 hex of BLAKE3(resolved store root)>/`, falling back to
    `~/.cache` when XDG_CACHE_HOME is unset or relative (as the XDG spec says). Keyed by the store's
    resolved path, so two names of one store share a cache and two stores never do."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if os.path.isabs(cache) else Path.home() / ".cache"
    key = blake3_hex(os.fsencode(Path(store_root).resolve()))[:16]
    return base / "distfs_pipeline" / key
