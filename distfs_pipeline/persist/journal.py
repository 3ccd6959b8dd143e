"""The round log's bytes: self-checking records, a bounded backward scan, segments and group commit.

Why a module of its own: `state` decides *what* recovery does (roll forward, replay the blob book);
this module knows how a log line is built and read back, so that:

- every line proves its owner and its integrity: `{"state_id": ...` is its first key (even a torn
  line names its state) and `"crc32"` its last (a CRC-32 of the line's bytes before it), so recovery
  never acts on a record of another state or one damaged on disk;
- reading the tail is linear in the bytes read (blocks backwards from the end, each byte once) and
  capped, however long the log has grown;
- the active log `rounds.jsonl` rotates into numbered segments (`rounds.jsonl.1`, `.2`, ... , gzip
  optional); a normal start reads only the active segment's tail;
- durability is a policy (`round`: fdatasync per round; `pipelined`: that fdatasync overlapped
  with the next round, at most one round in flight; `interval`: group commit at most every
  `interval_ms`), chosen per run; a kill -9 loses nothing in any (written bytes survive a killed
  process), only a power loss can cost the round in flight or the last interval.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import gzip
import json
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError

CRC_KEY = "crc32"
_CRC_SUFFIX_LEN = len(',"crc32":"00000000"}')
_CRC_RE = re.compile(rb',"crc32":"([0-9a-f]{8})"\}$')
SCAN_BLOCK = 1 << 20
SCAN_CAP = 1 << 30  # recovery never reads more than this much of a log backwards
DURABILITY_MODES = ("round", "pipelined", "interval")


# --- one line -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def line_prefix(state_id: str) -> bytes:
    """How every record line of `state_id` begins (what a torn line can still be matched against)."""
    return b'{"state_id":' + json.dumps(state_id).encode("utf-8") + b","


# `json.dumps(..., separators=(",", ":"))`'s bytes; without the circular-reference bookkeeping (a
# third of the encoding's time), since a record is a fresh tree of plain values built for this line.
_COMPACT = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode


def encode_record(state_id: str, body: dict[str, Any]) -> bytes:
    """One log line: `{"state_id":..., <body>, "crc32":"<crc of the bytes before it>"}\\n`.

    Built as the cached prefix + the body's own encoding (one encoder, no merged copy of the body):
    the same bytes as encoding `{"state_id": state_id, **body}`, which is what an empty body or one
    naming `state_id` itself still does.
    """
    if body and "state_id" not in body:
        head = line_prefix(state_id) + _COMPACT(body)[1:-1].encode("utf-8")
    else:
        head = _COMPACT({"state_id": state_id, **body}).encode("utf-8")[:-1]
    return head + b',"crc32":"%08x"}\n' % zlib.crc32(head)


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of a complete line (no newline) when its checksum holds, else None."""
    match = _CRC_RE.search(line)
    if match is None or int(match.group(1), 16) != zlib.crc32(line[:-_CRC_SUFFIX_LEN]):
        return None
    try:
        record = safefile.loads_strict(line)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    record.pop(CRC_KEY, None)
    return record


def is_own_prefix(torn: bytes, state_id: str) -> bool:
    """Whether a torn (newline-less) tail can be the start of one of our lines, or power-loss zeros."""
    if not torn.strip(b"\x00"):
        return True
    prefix = line_prefix(state_id)
    n = min(len(torn), len(prefix))
    return torn[:n] == prefix[:n]


# --- the backward scan ----------------------------------------------------------------------------


@dataclass
class Tail:
    """What the end of a log holds: verified records (oldest first) and the bytes to cut."""

    records: list[dict[str, Any]] = field(default_factory=list)
    valid_len: int = 0  # bytes up to and including the last verified line's newline
    size: int = 0
    reached_start: bool = False  # the scan read back to the first byte of the log

    @property
    def torn(self) -> bool:
        return self.valid_len != self.size


def _complete_lines_backward(fd: int, end: int, cap: int, source: str) -> Iterator[tuple[bytes, int]]:
    """(line without newline, offset just past its newline) for the complete lines of [0, end), newest
    first. Each byte is read once; more than `cap` bytes is a `UsageError` naming `source`."""
    pos, carry, read = end, b"", 0
    while pos > 0:
        step = min(SCAN_BLOCK, pos)
        pos -= step
        read += step
        if read > cap:
            raise UsageError(f"round log {source}: more than {cap} bytes to scan back; refusing to go on")
        buf = os.pread(fd, step, pos) + carry
        parts = buf[:-1].split(b"\n")
        first = 1 if pos > 0 else 0
        line_end = pos + len(buf)
        for part in reversed(parts[first:]):
            yield part, line_end
            line_end -= len(part) + 1
        carry = parts[0] + b"\n" if pos > 0 else b""


def scan_tail(fd: int, source: str, state_id: str, back_to: int, cap: int = SCAN_CAP) -> Tail:
    """Read the end of a log back to the first record with `round_index <= back_to` (or the start).

    Tolerated at the very end only (what a kill or a power loss leaves): a line without its newline
    that is the start of one of our lines, and then one complete line that fails its checksum. Any
    other bad line, or a verified record of another state, is a `UsageError`: not ours to cut.
    """
    size = os.fstat(fd).st_size
    tail = Tail(size=size)
    last_nl = _last_newline(fd, size, cap, source)
    torn = os.pread(fd, size - last_nl, last_nl) if size > last_nl else b""
    if torn and not is_own_prefix(torn, state_id):
        raise UsageError(f"round log {source}: ends with bytes that are not a record of this state")
    tail.valid_len = last_nl
    newest = True
    for line, line_end in _complete_lines_backward(fd, last_nl, cap, source):
        record = decode_line(line)
        if record is None:
            if newest and tail.valid_len == line_end and (not tail.torn or torn.strip(b"\x00") == b""):
                tail.valid_len = line_end - len(line) - 1  # a damaged last line (power loss): cut it
                newest = False
                continue
            raise UsageError(
                f"round log {source}: the line ending at byte {line_end} fails its checksum "
                "(damaged, or not written by this tool)"
            )
        newest = False
        if record.get("state_id") != state_id:
            raise UsageError(
                f"round log {source}: holds records of state id {record.get('state_id')!r}, not this "
                f"state's {state_id!r}; use another run dir or remove {source}"
            )
        tail.records.append(record)
        index = record.get("round_index")
        if isinstance(index, int) and index <= back_to:
            break
    else:
        tail.reached_start = True
    tail.records.reverse()
    return tail


def _last_newline(fd: int, size: int, cap: int, source: str) -> int:
    """Offset just past the last newline of the file (0 when it has none)."""
    pos = size
    while pos > 0:
        step = min(SCAN_BLOCK, pos)
        pos -= step
        if size - pos > cap:
            raise UsageError(f"round log {source}: a last line of more than {cap} bytes; refusing it")
        found = os.pread(fd, step, pos).rfind(b"\n")
        if found != -1:
            return pos + found + 1
    return 0


# --- segments -------------------------------------------------------------------------------------


def segment_number(active: Path, candidate: Path) -> int | None:
    """N for `<active>.N` or `<active>.N.gz`, else None."""
    rest = candidate.name[len(active.name) + 1 :] if candidate.name.startswith(active.name + ".") else ""
    rest = rest.removesuffix(".gz")
    return int(rest) if rest.isdigit() and not rest.startswith("0") else None


def segments(active: Path) -> list[tuple[int, Path]]:
    """The rotated segments beside `active`, oldest first."""
    found: list[tuple[int, Path]] = []
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        for entry in os.scandir(active.parent):
            number = segment_number(active, Path(entry.path))
            if number is not None and entry.is_file(follow_symlinks=False):
                found.append((number, Path(entry.path)))
    return sorted(found)


def rotate_out(active: Path) -> Path:
    """Rename the active segment to the next number (fsync of the dir); returns its new name."""
    existing = segments(active)
    number = existing[-1][0] + 1 if existing else 1
    target = active.with_name(f"{active.name}.{number}")
    if os.path.lexists(target) or os.path.lexists(f"{target}.gz"):
        raise OSError(errno.EEXIST, "segment name already taken", str(target))
    os.rename(active, target)
    safefile.fsync_dir(active.parent)
    return target


def compress_segment(path: Path) -> None:
    """`path` -> `path.gz` (atomic, durable), then remove `path`. Old segments are only read by people."""
    fd, _st = safefile.open_read(path)
    try:
        with os.fdopen(os.dup(fd), "rb") as handle:
            data = gzip.compress(handle.read(), compresslevel=6, mtime=0)
    finally:
        os.close(fd)
    safefile.write_atomic(path.with_name(path.name + ".gz"), data)
    os.unlink(path)
    safefile.fsync_dir(path.parent)


def prune_segments(active: Path, keep: int) -> None:
    """Remove all but the newest `keep` rotated segments, and a plain segment whose `.gz` exists (a
    kill between compressing and removing it); regular files only, links are left alone."""
    found = segments(active)
    names = {path.name for _n, path in found}
    numbers = sorted({n for n, _p in found})
    drop = set(numbers[: max(0, len(numbers) - keep)])
    for number, path in found:
        if number in drop or path.name + ".gz" in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


# --- durability -----------------------------------------------------------------------------------


@dataclass
class SyncPolicy:
    """When the log is fdatasync'ed (`mode`) and the state file checkpointed (every `interval_ms`).

    `round`: every round durable against power loss when `commit` returns. `pipelined`: a round's
    fdatasync runs while the next round's checks do (`aiosync`), and completes before the next line
    is written (a power loss can cost the one round in flight). `interval`: group commit,
    a power loss can cost the rounds of the last `interval_ms` (plus at most one tick on the wall
    clock); the state file is only ever written after the log holding its rounds is synced.
    """

    mode: str = "round"
    interval_ms: int = 1000
    last_sync: float = field(default_factory=time.monotonic)
    last_checkpoint: float = field(default_factory=time.monotonic)

    def sync_due(self, now: float) -> bool:
        return self.mode == "round" or (now - self.last_sync) * 1000 >= self.interval_ms

    def checkpoint_due(self, now: float) -> bool:
        return (now - self.last_checkpoint) * 1000 >= self.interval_ms
