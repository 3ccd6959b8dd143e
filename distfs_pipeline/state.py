"""The cursor-state file: load, atomic persist, an exclusive lock, and crash recovery.

Why this module exists: the state file is the only memory the scheduler has between runs (SPEC 3.3).
Upstream loses it silently (a parse error starts from the default state) and writes it without fsync.
Here a bad state file is a usage error that leaves the file untouched, a write is atomic and durable,
two runs cannot share one state file, and a `kill -9` at any moment loses no round and counts none
twice.

Files beside the state file `S` (all ours; upstream never reads them):

- `S.lock`: holds an `flock` for the lifetime of a run, and the holder's pid for the refusal message.
- `S.tmp`: the temp file of an atomic write (upstream's `probe-state.json.tmp`), renamed over `S`.
- `S.wal`: a pointer `{"version": 1, "log_path": ...}` to the round log of the run that last wrote
  `S`. Round logs live in each run's Hydra run dir, which differs between runs, so recovery needs
  this pointer to find the log that may be one round ahead of the state.

Write-ahead protocol, per round (`RoundJournal.commit`):

1. Append the round record to the log as one line, including `state_after` (the state after the
   round); flush and fsync. From here the round is durable.
2. Write `S` atomically: `S.tmp`, fsync, `os.replace`, fsync the directory.

So the log is always at most one round ahead of `S`, never behind. At the start of a run (under
the lock), `recover` reads `S`, follows `S.wal` to the previous log and looks at its last line:

- a torn last line (no newline, or not JSON: the kill hit step 1) is cut off; that round never
  happened and runs again;
- a last record with `round_index == rounds_executed + 1` (the kill hit between 1 and 2) rolls `S`
  forward to its `state_after`;
- a last record with `round_index == rounds_executed` is the normal case.

Only then does `RoundJournal.open` point `S.wal` at the new run's log. Hence the union of all round
logs holds each `round_index` from 1 to `rounds_executed` exactly once, and their counts sum to the
cumulative counts in `S`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from . import safefile
from .blobs import BlobRecord
from .errors import Serde, UsageError
from .models import CursorState

WAL_VERSION = 1
ROUND_LOG_NAME = "rounds.jsonl"  # the only file name a WAL may point at (recovery may cut its tail)
_TAIL_BLOCK = 64 * 1024


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def lock_path(state_path: Path) -> Path:
    return _sidecar(state_path, ".lock")


def wal_path(state_path: Path) -> Path:
    return _sidecar(state_path, ".wal")


def temp_path(state_path: Path) -> Path:
    return _sidecar(state_path, ".tmp")


def book_path(state_path: Path) -> Path:
    """`<state>.blobs`: the snapshot of the per-blob history (see `save_book`)."""
    return _sidecar(state_path, ".blobs")


Book = dict[str, BlobRecord]
BOOK_VERSION = 1
BOOK_READ_CAP = 1 << 31  # ~250 bytes a blob: room for millions of blobs, still a bound


# --- load / save -------------------------------------------------------------------------------


def load_state(path: str | os.PathLike[str]) -> CursorState:
    """Read the state file: missing gives the default state, legacy files get defaults filled in.

    Unlike upstream (which logs and starts over), a file that cannot be read or parsed is a
    `UsageError` naming the file: silently resetting would throw away the audit history, and the
    file is left exactly as it is for the user to inspect.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return CursorState()
    except OSError as err:
        raise UsageError(f"state file {path}: cannot read: {err.strerror or err}") from None
    return parse_state(raw, str(path))


def parse_state(raw: bytes, source: str) -> CursorState:
    """Parse state JSON as serde would; any problem is a `UsageError` naming `source`."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"state file {source}: not valid JSON ({err})") from None
    try:
        return CursorState.from_dict(data)
    except Serde as err:
        raise UsageError(f"state file {source}: {err}") from None


def state_json(state: CursorState) -> bytes:
    """Upstream's `to_vec_pretty`: 2-space indent, struct field order, no trailing newline."""
    return json.dumps(state.to_dict(), indent=2).encode("utf-8")


def save_state(path: str | os.PathLike[str], state: CursorState) -> None:
    """Write the state atomically and durably: temp file, fsync, rename, fsync the directory."""
    path = Path(path)
    write_atomic(path, state_json(state), temp_path(path), what="state file")


def write_atomic(path: Path, data: bytes, tmp: Path | None = None, what: str = "file") -> None:
    """Replace `path` with `data` so a reader sees the old or the new content, never a mix.

    Any OS error is a `UsageError` naming `path` (and the file that failed): `path` then still
    holds its old content, and a temp file this call created is removed.
    """
    tmp = tmp or _sidecar(path, f".tmp-{os.getpid()}")
    created = False
    try:
        make_dirs(path.parent)
        with open(tmp, "wb") as handle:
            created = True
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as err:
        if created:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        raise UsageError(f"{what} {path}: cannot write: {describe_os_error(err)}") from None


def make_dirs(directory: Path) -> None:
    """`mkdir -p`, with a clear error when a component exists but is not a directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        ancestors = (directory, *directory.parents)
        blocker = next((p for p in ancestors if p.exists() and not p.is_dir()), directory)
        raise NotADirectoryError(errno.ENOTDIR, "exists but is not a directory", str(blocker)) from None


def describe_os_error(err: OSError) -> str:
    """`<strerror>` plus the file it concerns, in one line."""
    text = err.strerror or str(err)
    return f"{err.filename}: {text}" if err.filename else text


def fsync_dir(directory: Path) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems refuse fsync on a directory
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- the per-blob book ------------------------------------------------------------------------


def book_to_json(book: Book, round_index: int) -> bytes:
    """The snapshot's bytes: compact JSON, only the fields that differ from a fresh record."""
    blank = BlobRecord().to_dict()
    blobs = {h: {k: v for k, v in rec.to_dict().items() if v != blank[k]} for h, rec in sorted(book.items())}
    body = {"version": BOOK_VERSION, "round_index": round_index, "blobs": blobs}
    return json.dumps(body, separators=(",", ":")).encode("utf-8")


def save_book(state_path: str | os.PathLike[str], book: Book, round_index: int) -> None:
    """Write the snapshot `<state>.blobs` atomically and durably (the book as of `round_index`)."""
    path = book_path(Path(state_path))
    try:
        safefile.write_atomic(path, book_to_json(book, round_index))
    except OSError as err:
        raise UsageError(f"blob history {path}: cannot write: {safefile.describe(err)}") from None


def read_book_snapshot(state_path: Path) -> tuple[Book, int]:
    """The snapshot on disk and its round (an empty book at round 0 when there is none)."""
    path = book_path(state_path)
    try:
        raw = safefile.read_optional(path, BOOK_READ_CAP)
        if raw is None:
            return {}, 0
        data = safefile.loads_strict(raw)
        if not isinstance(data, dict) or data.get("version") != BOOK_VERSION:
            raise ValueError(f"not a version {BOOK_VERSION} blob history")
        index, blobs = data.get("round_index"), data.get("blobs")
        if not _is_count(index) or not isinstance(blobs, dict):
            raise ValueError("no round_index or blobs")
        return {str(h): BlobRecord.from_dict(_mapping(r)) for h, r in blobs.items()}, index
    except OSError as err:
        raise UsageError(f"blob history {path}: cannot read: {safefile.describe(err)}") from None
    except ValueError as err:
        raise UsageError(f"blob history {path}: {err}; remove it to rebuild the history") from None


def apply_book_changes(book: Book, record: dict[str, Any]) -> None:
    """Fold one round record's `blob_changes` into `book` (ValueError when malformed)."""
    changes = record.get("blob_changes") or {}
    if not isinstance(changes, dict):
        raise ValueError("blob_changes is not an object")
    for content_hash, raw in changes.items():
        book[str(content_hash)] = BlobRecord.from_dict(_mapping(raw))


def _mapping(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise ValueError(f"a blob record is not an object: {raw!r:.40}")
    return raw


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**64


def load_book(state_path: str | os.PathLike[str]) -> Book:
    """The per-blob history as of the last durable round, read-only (for `status`).

    The snapshot plus the `blob_changes` of the round records after it in the log the WAL names;
    nothing is repaired or written.
    """
    state_path = Path(state_path)
    book, at = read_book_snapshot(state_path)
    log = read_wal(state_path)
    if log is not None:
        for record in _records_after(log, at):
            try:
                apply_book_changes(book, record)
            except ValueError as err:
                raise UsageError(f"round log {log}: round {record.get('round_index')}: {err}") from None
    return book


def _records_after(log: Path, after: int) -> list[dict[str, Any]]:
    """Complete records of `log` whose round_index is above `after`, oldest first."""
    try:
        raw = safefile.read_optional(log, BOOK_READ_CAP)
    except OSError as err:
        raise UsageError(f"round log {log}: cannot read: {safefile.describe(err)}") from None
    out = []
    for line in (raw or b"").split(b"\n")[:-1]:
        record = _parse_record(line)
        if record is not None and _is_count(record.get("round_index")) and record["round_index"] > after:
            out.append(record)
    return out


# --- the lock ----------------------------------------------------------------------------------


class StateLock:
    """An exclusive, non-blocking `flock` on `<state>.lock` for the lifetime of a run.

    The lock file is never deleted (deleting would let a third run lock a fresh inode while the
    second still holds the old one). The kernel drops the lock when the holder dies, even by
    `kill -9`, so a crashed run never leaves a stale lock behind.
    """

    def __init__(self, state_path: str | os.PathLike[str]) -> None:
        self.state_path = Path(state_path)
        self.path = lock_path(self.state_path)
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise `UsageError` naming the state file and the holder's pid."""
        if self.state_path.is_dir():
            raise UsageError(f"state file {self.state_path}: is a directory, not a file")
        try:
            make_dirs(self.path.parent)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise UsageError(
                f"state file {self.state_path}: cannot create its lock {self.path}: {describe_os_error(err)}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise UsageError(
                f"state file {self.state_path} is in use by another run (pid {holder}); "
                "wait for it to finish or use another runtime.state_path"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> StateLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(fd: int) -> str:
    text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    return text if text.isdigit() else "unknown"


# --- the round log and recovery ----------------------------------------------------------------


@dataclass
class Recovered:
    """What `recover` found: the state to continue from and the last durable round record."""

    state: CursorState
    last_record: dict[str, Any] | None = None  # the log record whose round_index == state's
    rolled_forward: bool = False
    log_path: Path | None = None  # the previous run's round log, when the WAL names one
    notes: list[str] = field(default_factory=list)  # things worth a warning line
    book: Book = field(default_factory=dict)  # per-blob history as of `state.rounds_executed`
    book_round: int = 0  # the round the book snapshot on disk was taken at


def recover(state_path: str | os.PathLike[str]) -> Recovered:
    """Load the state and reconcile it with the last run's round log (see the module docstring).

    Must run under the `StateLock`. Raises `UsageError` for a corrupt state file or WAL pointer
    (both untouched).
    """
    state_path = Path(state_path)
    state = load_state(state_path)
    log = read_wal(state_path)
    if log is None or not log.exists():
        recovered = Recovered(state)
        if log is not None:
            recovered.notes.append(f"round log {log} (named by {wal_path(state_path)}) is gone")
        _recover_book(state_path, recovered, None)
        return recovered
    if log.name != ROUND_LOG_NAME or not log.is_file():
        # Recovery may cut the tail of the file it follows: never of a file that is not ours.
        raise UsageError(
            f"WAL file {wal_path(state_path)}: log_path {log} is not a round log (a regular file "
            f"named {ROUND_LOG_NAME}); remove the WAL file to skip crash recovery"
        )
    recovered = _reconcile(state_path, state, log, repair_tail(log))
    recovered.log_path = log
    _recover_book(state_path, recovered, log)
    return recovered


def _recover_book(state_path: Path, recovered: Recovered, log: Path | None) -> None:
    """The book as of the recovered state: the snapshot plus the logged changes after it."""
    book, at = read_book_snapshot(state_path)
    recovered.book_round = at
    if log is not None:
        for record in _records_after(log, at):
            if record["round_index"] > recovered.state.rounds_executed:
                break
            try:
                apply_book_changes(book, record)
            except ValueError as err:
                raise UsageError(f"round log {log}: round {record['round_index']}: {err}") from None
    recovered.book = book


def _reconcile(state_path: Path, state: CursorState, log: Path, record: dict[str, Any] | None) -> Recovered:
    if record is None:
        return Recovered(state)
    index = record.get("round_index")
    if index == state.rounds_executed:
        return Recovered(state, last_record=record)
    if index == state.rounds_executed + 1:
        try:
            rolled = CursorState.from_dict(record.get("state_after"))
        except Serde as err:
            raise UsageError(f"round log {log}: last record has a bad state_after: {err}") from None
        save_state(state_path, rolled)
        note = f"recovered round {index} from {log} (the previous run stopped before saving it)"
        return Recovered(rolled, last_record=record, rolled_forward=True, notes=[note])
    note = (
        f"round log {log} ends at round {index} but {state_path} has rounds_executed="
        f"{state.rounds_executed}; continuing from the state file"
    )
    return Recovered(state, notes=[note])


def read_wal(state_path: Path) -> Path | None:
    """The log path recorded in `<state>.wal`, or None when there is no WAL."""
    path = wal_path(state_path)
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"WAL file {path}: unreadable ({err}); remove it to skip crash recovery") from None
    if not isinstance(data, dict) or not isinstance(data.get("log_path"), str):
        raise UsageError(f"WAL file {path}: no log_path; remove it to skip crash recovery")
    return Path(data["log_path"])


def repair_tail(log: Path) -> dict[str, Any] | None:
    """Cut a torn tail off `log` (fsynced) and return the last complete record, if any.

    A torn tail is a last line without its newline (the kill hit the append), or, after a power
    loss, one complete line that is not JSON. Anything worse is not ours to cut: `UsageError`.
    Only the tail is read, so this is cheap however long the log has grown. An OS error is a
    `UsageError` naming the log.
    """
    try:
        return _repair_tail(log)
    except OSError as err:
        raise UsageError(f"round log {log}: cannot check its last record: {describe_os_error(err)}") from None


def _repair_tail(log: Path) -> dict[str, Any] | None:
    with open(log, "r+b") as handle:
        size = handle.seek(0, os.SEEK_END)
        line, valid_len = _last_line(handle, size)
        record = _parse_record(line)
        if line is not None and record is None:
            line, valid_len = _last_line(handle, valid_len - len(line) - 1)
            record = _parse_record(line)
            if line is not None and record is None:
                raise UsageError(f"round log {log}: its last lines are not JSON records")
        if valid_len != size:
            handle.truncate(valid_len)
            handle.flush()
            os.fsync(handle.fileno())
    return record


def _parse_record(line: bytes | None) -> dict[str, Any] | None:
    if line is None:
        return None
    try:
        record = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _last_line(handle: IO[bytes], end: int) -> tuple[bytes | None, int]:
    """In the first `end` bytes: the last newline-terminated line (without its newline) and the
    length up to and including that newline; (None, 0) when there is no complete line."""
    pos = end
    buf = b""
    while pos > 0:
        step = min(_TAIL_BLOCK, pos)
        pos -= step
        handle.seek(pos)
        buf = handle.read(step) + buf
        stop = buf.rfind(b"\n")
        if stop == -1:
            continue
        start = buf.rfind(b"\n", 0, stop)
        if start != -1 or pos == 0:
            return buf[start + 1 : stop], pos + stop + 1
    return None, 0


class RoundJournal:
    """The round log of one run, bound to the state file by the WAL pointer.

    `commit` is the only way a round reaches disk, so the protocol's order cannot be broken by a
    caller.
    """

    def __init__(self, state_path: str | os.PathLike[str], log_path: str | os.PathLike[str]) -> None:
        self.state_path = Path(state_path)
        self.log_path = Path(log_path).resolve()
        if self.log_path.name != ROUND_LOG_NAME:
            raise ValueError(f"a round log is named {ROUND_LOG_NAME}, not {self.log_path.name}")
        self._log: IO[bytes] | None = None

    def open(self) -> None:
        """Open the log for appending and point the WAL at it (after `recover`)."""
        try:
            make_dirs(self.log_path.parent)
            if self.log_path.exists():
                repair_tail(self.log_path)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - held open for the whole run
            fsync_dir(self.log_path.parent)
        except OSError as err:
            raise UsageError(f"round log {self.log_path}: cannot open: {describe_os_error(err)}") from None
        pointer = {"version": WAL_VERSION, "log_path": str(self.log_path)}
        data = json.dumps(pointer, indent=2).encode("utf-8")
        write_atomic(wal_path(self.state_path), data, what="WAL file")

    def commit(self, record: dict[str, Any], state: CursorState) -> None:
        """Make one round durable: log line (with `state_after`) first, then the state file."""
        if self._log is None:
            raise RuntimeError("RoundJournal.commit before open")
        line = json.dumps({**record, "state_after": state.to_dict()}, separators=(",", ":"))
        try:
            self._log.write(line.encode("utf-8") + b"\n")
            self._log.flush()
            os.fsync(self._log.fileno())
        except OSError as err:  # a torn line at worst: the next run's recovery cuts it
            raise UsageError(f"round log {self.log_path}: cannot append: {describe_os_error(err)}") from None
        save_state(self.state_path, state)  # if this fails, the next run rolls the state forward

    def close(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                self._log.close()
            self._log = None
