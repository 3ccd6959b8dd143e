"""The cursor-state file and what we keep beside it: load, atomic save, the lock, crash recovery.

Why this module exists: the state file is the only memory the scheduler has between runs (SPEC 3.3).
Upstream loses it silently (a parse error starts from the default state) and writes it without fsync.
Here a bad state file is a usage error that leaves the file untouched, a write is atomic and durable,
two runs cannot share one state file (whatever name they give it), and a `kill -9` at any moment
loses no round and counts none twice.

Files beside the state file `S` (all ours; upstream reads only `S`, which keeps its 14 keys):

- `S.lock`: holds an `flock` for the lifetime of a run, and the holder's pid for the refusal message.
- `S.id`: the state's identity (world, node, store root, random state id; see `identity`).
- `S.wal`: a pointer to the round log of the run that last wrote `S`: its path and inode, the state
  id, and the record of the round `S` was at when the log was opened (its epoch sums), so that a
  run killed before its first commit splits no epoch.
- `S.blobs`: a snapshot of the per-blob history (the book) as of a round; the round records after
  it carry their changes (`blob_changes`), so the book is snapshot + replay.
- Atomic writes use unique, exclusively created temp names beside their target.

Write-ahead protocol (`RoundJournal.commit`): the round record, with `state_after`, is appended to
the log as one self-checking line (see `journal`); with `runtime.durability=round` it is
fdatasync'ed before `commit` returns, with `pipelined` its fdatasync is started (`aiosync`) and
waited for before the next line is written (at most one round in flight), with `interval` at most
every `durability_interval_ms`. `S` is a checkpoint: rewritten atomically at most every interval,
at log rotation and at the end of the run, and only after the log holding its rounds is synced, so
`S` never claims a round the log does not hold. At the start of a run (under the lock), `recover`
reads `S`, follows `S.wal` to the log, cuts a torn tail that provably is ours, and rolls `S`
forward through the logged rounds after it, each applied only when consistent (round index in
sequence, `state_after` = state + its counts). The union of all round logs holds each `round_index`
from 1 to `rounds_executed` exactly once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distfs_pipeline.core import safefile
from distfs_pipeline.core.blobs import BlobRecord
from distfs_pipeline.core.errors import Serde, UsageError
from distfs_pipeline.core.models import I64_MAX, I64_MIN, U32_MAX, U64_MAX, CursorState, add_counts
from distfs_pipeline.persist import journal
from distfs_pipeline.persist.identity import Identity, identity_path, load_identity

__all__ = ["identity_path", "load_identity"]

WAL_VERSION = 2
ROUND_LOG_NAME = "rounds.jsonl"  # the only file name a WAL may point at (recovery may cut its tail)
STATE_READ_CAP = 1 << 20
WAL_READ_CAP = 1 << 20
BOOK_VERSION = 1
BOOK_READ_CAP = 1 << 31  # ~100 bytes a blob: room for millions of blobs, still a bound

Book = dict[str, BlobRecord]


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def lock_path(state_path: Path) -> Path:
    return _sidecar(state_path, ".lock")


def wal_path(state_path: Path) -> Path:
    return _sidecar(state_path, ".wal")


def temp_path(state_path: Path) -> Path:
    """The name upstream uses for its temp file; we never write it (our temps are unique)."""
    return _sidecar(state_path, ".tmp")


def book_path(state_path: Path) -> Path:
    """`<state>.blobs`: the snapshot of the per-blob history (see `save_book`)."""
    return _sidecar(state_path, ".blobs")


def canonical_state_path(state_path: str | os.PathLike[str]) -> Path:
    """What the state file *is*: its directory resolved (symlinks, `..`, relative), its own name kept.

    Two spellings of one file then take one lock. A symlink as the state file itself is refused:
    replacing it atomically would silently turn it into a regular file.
    """
    path = Path(os.path.abspath(state_path))
    canonical = Path(os.path.realpath(path.parent)) / path.name
    try:
        st = os.lstat(canonical)
    except FileNotFoundError:
        return canonical
    except OSError as err:
        raise UsageError(f"state file {path}: {describe_os_error(err)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(
            f"state file {path} is a symbolic link (to {os.readlink(canonical)}); "
            "give the real file as runtime.state_path"
        )
    if stat.S_ISDIR(st.st_mode):
        raise UsageError(f"state file {path}: is a directory, not a file")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"state file {path}: is not a regular file")
    if st.st_nlink > 1:
        raise UsageError(
            f"state file {path} has {st.st_nlink} hard links: two names would take two locks; "
            "remove the other names"
        )
    return canonical


# --- load / save -------------------------------------------------------------------------------


def load_state(path: str | os.PathLike[str]) -> CursorState:
    """Read the state file: missing gives the default state, legacy files get defaults filled in.

    Unlike upstream (which logs and starts over), a file that cannot be read or parsed is a
    `UsageError` naming the file: silently resetting would throw away the audit history, and the
    file is left exactly as it is for the user to inspect.
    """
    path = Path(path)
    try:
        raw = safefile.read_optional(path, STATE_READ_CAP)
    except OSError as err:
        raise UsageError(f"state file {path}: cannot read: {err.strerror or err}") from None
    return CursorState() if raw is None else parse_state(raw, str(path))


def parse_state(raw: bytes, source: str) -> CursorState:
    """Parse state JSON as serde would; any problem is a `UsageError` naming `source`."""
    try:
        data = safefile.loads_strict(raw)
    except ValueError as err:
        raise UsageError(f"state file {source}: not valid JSON ({err})") from None
    try:
        return CursorState.from_dict(data)
    except Serde as err:
        raise UsageError(f"state file {source}: {err}") from None


def state_json(state: CursorState) -> bytes:
    """Upstream's `to_vec_pretty`: 2-space indent, struct field order, no trailing newline."""
    return json.dumps(state.to_dict(), indent=2).encode("utf-8")


def check_loadable(state: CursorState, what: str) -> None:
    """Refuse, before writing, a state the tool (or upstream) would refuse to load back."""
    check_loadable_dict(state.to_dict(), what)


def check_loadable_dict(data: dict[str, Any], what: str) -> None:
    """`check_loadable` of a state's `to_dict()`: the fast test first, `from_dict` when it says no.

    WHY (issue 11): this guard runs on every round's `state_after`; `CursorState.from_dict` is the
    authority (it names the bad key) but costs several microseconds, while a state the scheduler
    built passes a handful of exact-type and bound comparisons.
    """
    if loadable_fast(data):
        return
    try:
        CursorState.from_dict(data)
    except Serde as err:
        raise UsageError(f"{what}: refusing to write a state that could not be loaded back: {err}") from None


_UNSIGNED_BOUNDS = (
    ("next_blob_cursor", U64_MAX),
    ("rounds_executed", U64_MAX),
    ("cumulative_total_checks", U64_MAX),
    ("cumulative_passed_checks", U64_MAX),
    ("cumulative_failed_checks", U64_MAX),
    ("consecutive_failure_rounds", U64_MAX),
    ("cumulative_backoff_skipped_rounds", U64_MAX),
    ("last_backoff_multiplier", U32_MAX),
)
_SIGNED_KEYS = ("backoff_until_unix_ms", "cumulative_backoff_applied_ms", "last_backoff_duration_ms")
_STATE_KEYS = tuple(f.name for f in dataclasses.fields(CursorState))


def loadable_fast(data: dict[str, Any]) -> bool:
    """True only when `CursorState.from_dict(data)` certainly accepts `data` (all 14 keys, in order,
    each of its exact type within its bounds); False means "ask `from_dict`", not "bad".

    Every bound that can overflow is here: the u64 counters, the u32 multiplier, the i64 times
    (`tests/test_state.py` checks each against `from_dict` at and beyond its limits)."""
    if tuple(data) != _STATE_KEYS:
        return False
    for key, top in _UNSIGNED_BOUNDS:
        value = data[key]
        if type(value) is not int or not 0 <= value <= top:
            return False
    for key in _SIGNED_KEYS:
        value = data[key]
        if type(value) is not int or not I64_MIN <= value <= I64_MAX:
            return False
    probe = data["last_probe_unix_ms"]
    if probe is not None and (type(probe) is not int or not I64_MIN <= probe <= I64_MAX):
        return False
    reason = data["last_backoff_reason"]
    if reason is not None and type(reason) is not str:
        return False
    reasons = data["cumulative_failure_reasons"]
    return type(reasons) is dict and all(
        type(k) is str and type(v) is int and 0 <= v <= U64_MAX for k, v in reasons.items()
    )


def save_state(path: str | os.PathLike[str], state: CursorState) -> None:
    """Write the state atomically and durably (unique temp, fsync, rename, fsync the directory)."""
    path = Path(path)
    check_loadable(state, f"state file {path}")
    write_atomic(path, state_json(state), what="state file")


def write_atomic(path: Path, data: bytes, tmp: Path | None = None, what: str = "file") -> None:
    """`safefile.write_atomic` with a `UsageError` naming `path` (old content kept on failure).

    `tmp` is accepted for old callers and ignored: temp names are always unique and exclusive.
    """
    del tmp
    try:
        make_dirs(path.parent)
        safefile.write_atomic(path, data)
    except OSError as err:
        raise UsageError(f"{what} {path}: cannot write: {describe_os_error(err)}") from None


def make_dirs(directory: Path) -> None:
    """`mkdir -p` through trusted dirs only (`safefile.make_trusted_dirs`), with a clear error
    when a component exists but is not a directory."""
    try:
        safefile.make_trusted_dirs(directory)
    except (FileExistsError, NotADirectoryError):
        ancestors = (directory, *directory.parents)
        blocker = next((p for p in ancestors if p.exists() and not p.is_dir()), directory)
        raise NotADirectoryError(errno.ENOTDIR, "exists but is not a directory", str(blocker)) from None


def describe_os_error(err: OSError) -> str:
    """`<file>: <strerror>` in one line."""
    return safefile.describe(err)


def fsync_dir(directory: Path) -> None:
    safefile.fsync_dir(directory)


# --- the lock ----------------------------------------------------------------------------------


class StateLock:
    """An exclusive, non-blocking `flock` on `<canonical state>.lock` for the lifetime of a run.

    The lock is taken on the canonical path (`canonical_state_path`), so a symlinked directory, a
    relative path or `..` cannot give one file two locks; a hard-linked or symlinked state file is
    refused. The lock file is opened with `safefile.open_update` (no link, FIFO or device) and never
    deleted (deleting would let a third run lock a fresh inode while the second still holds the old
    one). The kernel drops the lock when the holder dies, even by `kill -9`.
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
            make_dirs(self.state_path.parent)
        except OSError as err:
            raise UsageError(f"state file {self.state_path}: {describe_os_error(err)}") from None
        canonical = canonical_state_path(self.state_path)
        self.path = lock_path(canonical)
        try:
            fd = safefile.open_update(self.path)
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
        except OSError as err:
            os.close(fd)
            raise UsageError(
                f"state file {self.state_path}: cannot lock {self.path}: {err.strerror}"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as err:
            os.close(fd)
            raise UsageError(f"lock file {self.path}: cannot write: {err.strerror}") from None
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


# --- the WAL pointer ---------------------------------------------------------------------------


@dataclass
class WalPointer:
    """`<state>.wal`: which log (path and inode) holds the rounds after the state's checkpoint."""

    log_path: Path
    state_id: str | None  # None: a version-1 pointer of an older release (not provably ours)
    dev: int | None = None
    ino: int | None = None
    carried: dict[str, Any] | None = None  # the record of the round the state was at on open

    def to_json(self) -> bytes:
        body = {
            "version": WAL_VERSION,
            "log_path": str(self.log_path),
            "dev": self.dev,
            "ino": self.ino,
            "state_id": self.state_id,
            "carried": self.carried,
        }
        return json.dumps(body, indent=2).encode("utf-8") + b"\n"


def read_wal(state_path: Path) -> WalPointer | None:
    """The pointer in `<state>.wal`, or None when there is none."""
    path = wal_path(state_path)
    try:
        raw = safefile.read_optional(path, WAL_READ_CAP)
        data = None if raw is None else safefile.loads_strict(raw)
    except (OSError, ValueError) as err:
        text = describe_os_error(err) if isinstance(err, OSError) else str(err)
        raise UsageError(f"WAL file {path}: unreadable ({text}); remove it to skip crash recovery") from None
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("log_path"), str):
        raise UsageError(f"WAL file {path}: no log_path; remove it to skip crash recovery")
    if data.get("version") == 1:
        return WalPointer(Path(data["log_path"]), None)
    dev, ino, sid, carried = data.get("dev"), data.get("ino"), data.get("state_id"), data.get("carried")
    if (
        data.get("version") != WAL_VERSION
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in (dev, ino))
        or not isinstance(sid, str)
        or not (carried is None or isinstance(carried, dict))
    ):
        raise UsageError(
            f"WAL file {path}: not a version {WAL_VERSION} pointer; remove it to skip crash recovery"
        )
    return WalPointer(Path(data["log_path"]), sid, dev, ino, carried)


# --- the per-blob book ---------------------------------------------------------------------------


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
        raise UsageError(f"blob history {path}: cannot write: {describe_os_error(err)}") from None


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
        raise UsageError(f"blob history {path}: cannot read: {describe_os_error(err)}") from None
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
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= U64_MAX


def load_book(state_path: str | os.PathLike[str]) -> Book:
    """The per-blob history as of the last durable round, read-only (for `status`).

    The snapshot plus the `blob_changes` of the logged rounds after it; nothing is cut or written.
    """
    state_path = Path(state_path)
    return _read_history(state_path, load_identity(state_path), load_state(state_path), repair=False).book


# --- recovery ----------------------------------------------------------------------------------


@dataclass
class Recovered:
    """What `recover` found: the state to continue from and the last durable round record."""

    state: CursorState
    last_record: dict[str, Any] | None = None  # the record whose round_index == state's (epoch sums)
    rolled_forward: bool = False
    log_path: Path | None = None  # the previous run's round log, when the WAL names one
    notes: list[str] = field(default_factory=list)  # things worth a warning line
    book: Book = field(default_factory=dict)  # per-blob history as of `state.rounds_executed`
    book_round: int = 0  # the round the book snapshot on disk was taken at
    rolled_rounds: int = 0  # how many logged rounds were applied to the state file


def recover(state_path: str | os.PathLike[str], identity: Identity | None = None) -> Recovered:
    """Load the state and reconcile it with the last run's round log (see the module docstring).

    Must run under the `StateLock`. Raises `UsageError` for a corrupt state file, WAL pointer or
    log, and for history of another identity (all untouched). `identity` defaults to `<state>.id`.
    """
    state_path = Path(state_path)
    identity = identity if identity is not None else load_identity(state_path)
    state = load_state(state_path)
    recovered = _read_history(state_path, identity, state, repair=True)
    if recovered.rolled_forward:
        save_state(state_path, recovered.state)
    return recovered


def _read_history(
    state_path: Path, identity: Identity | None, state: CursorState, *, repair: bool
) -> Recovered:
    book, book_round = read_book_snapshot(state_path)
    recovered = Recovered(state, book=book, book_round=book_round)
    wal = read_wal(state_path)
    if wal is None:
        return recovered
    if identity is None or wal.state_id is None:
        recovered.notes.append(
            f"WAL file {wal_path(state_path)} is from an older release or a state without identity; "
            "its round log is left as it is and the state file is taken as it stands"
        )
        return recovered
    if wal.state_id != identity.state_id:
        raise UsageError(
            f"WAL file {wal_path(state_path)} belongs to state id {wal.state_id!r}, not "
            f"{identity.state_id!r} ({identity_path(state_path)}); remove it to skip crash recovery"
        )
    log = wal.log_path
    if log.name != ROUND_LOG_NAME:
        raise UsageError(
            f"WAL file {wal_path(state_path)}: log_path {log} is not a round log (a regular file "
            f"named {ROUND_LOG_NAME}); remove the WAL file to skip crash recovery"
        )
    fd = _open_owned_log(state_path, wal, repair, recovered)
    if fd is None:
        _adopt_carried(recovered, wal)
        return recovered
    try:
        recovered.log_path = log
        back_to = min(state.rounds_executed, book_round)
        tail = journal.scan_tail(fd, str(log), identity.state_id, back_to)
        if repair and tail.torn:
            os.ftruncate(fd, tail.valid_len)
            os.fsync(fd)
    except OSError as err:
        raise UsageError(
            f"round log {log}: cannot check its last records: {describe_os_error(err)}"
        ) from None
    finally:
        os.close(fd)
    _apply_tail(recovered, tail.records, str(log))
    if recovered.last_record is None:
        _adopt_carried(recovered, wal)
    return recovered


def _open_owned_log(state_path: Path, wal: WalPointer, repair: bool, recovered: Recovered) -> int | None:
    """The WAL's log, opened only if it is the very file the WAL named (inode), else None + a note.

    A log that is gone may have been rotated out just before a crash: the newest segment with the
    WAL's inode is then the one to read (read only).
    """
    log = wal.log_path
    try:
        fd = safefile.open_existing_update(log) if repair else safefile.open_read(log)[0]
    except FileNotFoundError:
        fd = None
    except IsADirectoryError:
        raise UsageError(
            f"WAL file {wal_path(state_path)}: log_path {log} is not a round log (a regular file "
            f"named {ROUND_LOG_NAME}); remove the WAL file to skip crash recovery"
        ) from None
    except OSError as err:
        if isinstance(err, safefile.UnsafeFileError):
            raise UsageError(
                f"WAL file {wal_path(state_path)}: log_path {log} is not a round log ({err.strerror}); "
                "remove the WAL file to skip crash recovery"
            ) from None
        raise UsageError(f"round log {log}: cannot open: {describe_os_error(err)}") from None
    if fd is not None:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == (wal.dev, wal.ino):
            return fd
        os.close(fd)
    for _number, segment in reversed(journal.segments(log)):
        if segment.suffix == ".gz":
            continue
        with contextlib.suppress(OSError):
            st = os.lstat(segment)
            if (st.st_dev, st.st_ino) == (wal.dev, wal.ino):
                return safefile.open_read(segment)[0]
    what = "is gone" if fd is None else "is not the file the WAL named (replaced)"
    recovered.notes.append(f"round log {log} (named by {wal_path(state_path)}) {what}; it is left as it is")
    return None


def _adopt_carried(recovered: Recovered, wal: WalPointer) -> None:
    """The WAL's carried record stands for the state's round when the log has no record of it yet."""
    carried = wal.carried
    if carried is not None and carried.get("round_index") == recovered.state.rounds_executed:
        recovered.last_record = carried


def _apply_tail(recovered: Recovered, records: list[dict[str, Any]], source: str) -> None:
    """Roll the state forward through the logged rounds after it, and replay the book."""
    state = recovered.state
    for record in records:
        index = record.get("round_index")
        if not _is_count(index):
            raise UsageError(f"round log {source}: a record without a valid round_index")
        if index > state.rounds_executed:
            state = _roll(state, record, source)
            recovered.rolled_rounds += 1
        if recovered.book_round < index <= state.rounds_executed:
            try:
                apply_book_changes(recovered.book, record)
            except ValueError as err:
                raise UsageError(f"round log {source}: round {index}: {err}") from None
        if index == state.rounds_executed:
            recovered.last_record = record
    if recovered.rolled_rounds:
        recovered.state, recovered.rolled_forward = state, True
        recovered.notes.append(
            f"recovered {recovered.rolled_rounds} round(s) up to {state.rounds_executed} from {source} "
            "(logged after the state file's last checkpoint)"
        )
    elif records and state.rounds_executed > max(r["round_index"] for r in records):
        recovered.notes.append(
            f"round log {source} ends at round {records[-1]['round_index']} but the state file has "
            f"rounds_executed={state.rounds_executed}; continuing from the state file"
        )


def _roll(state: CursorState, record: dict[str, Any], source: str) -> CursorState:
    """The state after `record`, applied only when the record is consistent with `state`."""
    index = record["round_index"]
    if index != state.rounds_executed + 1:
        raise UsageError(
            f"round log {source}: round {index} follows a state at round {state.rounds_executed}: "
            "rounds are missing; refusing to roll forward"
        )
    try:
        after = CursorState.from_dict(record.get("state_after"))
    except Serde as err:
        raise UsageError(f"round log {source}: round {index} has a bad state_after: {err}") from None
    expected = {
        "rounds_executed": index,
        "cumulative_total_checks": min(
            U64_MAX, state.cumulative_total_checks + _count(record, "total_checks")
        ),
        "cumulative_passed_checks": min(
            U64_MAX, state.cumulative_passed_checks + _count(record, "passed_checks")
        ),
        "cumulative_failed_checks": min(
            U64_MAX, state.cumulative_failed_checks + _count(record, "failed_checks")
        ),
        "cumulative_backoff_skipped_rounds": state.cumulative_backoff_skipped_rounds
        + int(record.get("skipped_by_backoff") is True),
    }
    reasons = record.get("failure_reasons") or {}
    if isinstance(reasons, dict):
        expected_reasons = add_counts(state.cumulative_failure_reasons, reasons, U64_MAX)
    else:
        expected_reasons = None
    wrong = [key for key, value in expected.items() if getattr(after, key) != value]
    if expected_reasons != after.cumulative_failure_reasons:
        wrong.append("cumulative_failure_reasons")
    if wrong:
        raise UsageError(
            f"round log {source}: round {index}'s state_after is not the state plus its counts "
            f"({', '.join(wrong)}); refusing to roll forward"
        )
    return after


def _count(record: dict[str, Any], key: str) -> int:
    value = record.get(key, 0)
    return value if _is_count(value) else -1  # -1 can never match: the record is refused


def repair_tail(log: Path, state_id: str) -> dict[str, Any] | None:
    """Cut a torn tail of our own log `log` (fsynced) and return its last record, if any.

    Used for a log this run will append to (the run dir's `rounds.jsonl` or `epochs.jsonl`): a
    line of another state is a `UsageError`, never cut.
    """
    try:
        fd = safefile.open_existing_update(log)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise UsageError(f"log {log}: cannot open: {describe_os_error(err)}") from None
    try:
        tail = journal.scan_tail(fd, str(log), state_id, U64_MAX)
        if tail.torn:
            os.ftruncate(fd, tail.valid_len)
            os.fsync(fd)
    except OSError as err:
        raise UsageError(f"log {log}: cannot check its last record: {describe_os_error(err)}") from None
    finally:
        os.close(fd)
    return tail.records[-1] if tail.records else None


# --- the journal -------------------------------------------------------------------------------


@dataclass
class LogOptions:
    """How the round log is written: durability and rotation (the `runtime` keys of the same names)."""

    durability: str = "round"
    durability_interval_ms: int = 1000
    log_max_bytes: int = 0  # 0: never rotate
    log_keep: int = 8
    log_compress: bool = False


class RoundJournal:
    """The round log of one run, bound to the state file by the WAL pointer.

    `commit` is the only way a round reaches disk, so the protocol's order cannot be broken by a
    caller; `checkpoint` and `close` write the state file only after syncing the log.
    """

    def __init__(
        self,
        state_path: str | os.PathLike[str],
        log_path: str | os.PathLike[str],
        identity: Identity,
        options: LogOptions | None = None,
    ) -> None:
        self.state_path = Path(state_path)
        self.log_path = Path(os.path.realpath(Path(log_path).parent)) / Path(log_path).name
        if self.log_path.name != ROUND_LOG_NAME:
            raise ValueError(f"a round log is named {ROUND_LOG_NAME}, not {self.log_path.name}")
        self.identity = identity
        self.options = options or LogOptions()
        self.policy = journal.SyncPolicy(self.options.durability, self.options.durability_interval_ms)
        self._fd: int | None = None
        self._size = 0
        self._unsynced = False
        self._saved_round: int | None = None
        self._async: Any = None  # `pipelined`: an `aiosync.AsyncDatasync`, the previous round's fdatasync
        self._last: dict[str, Any] | None = None  # round_index and epoch of the last record written

    def open(self, state: CursorState, carried: dict[str, Any] | None = None) -> None:
        """Open (create) the log, then point the WAL at it with the state's round record `carried`."""
        try:
            make_dirs(self.log_path.parent)
            if os.path.lexists(self.log_path):
                repair_tail(self.log_path, self.identity.state_id)
            self._fd = safefile.open_append(self.log_path)
            st = os.fstat(self._fd)
            self._size = st.st_size
            os.fsync(self._fd)
            fsync_dir(self.log_path.parent)
        except OSError as err:
            raise UsageError(f"round log {self.log_path}: cannot open: {describe_os_error(err)}") from None
        self._saved_round = state.rounds_executed
        # The epoch sums always; a closing round's `epoch_report` only within one run dir (rotation),
        # since a new run has completed the previous dir's epochs.jsonl before opening its log.
        self._last = {k: v for k, v in (carried or {}).items() if k in ("epoch", "epoch_report")}
        self._last["round_index"] = state.rounds_executed
        self._point_wal(st)

    def _point_wal(self, st: os.stat_result) -> None:
        keep = self._last
        pointer = WalPointer(self.log_path, self.identity.state_id, st.st_dev, st.st_ino, keep)
        write_atomic(wal_path(self.state_path), pointer.to_json(), what="WAL file")

    def commit(self, record: dict[str, Any], state: CursorState) -> None:
        """Make one round durable: log line (with `state_after`) first; the state file at checkpoints."""
        if self._fd is None:
            raise RuntimeError("RoundJournal.commit before open")
        after = state.to_dict()
        # refused before it is written: a state_after recovery could not load back
        check_loadable_dict(after, f"round {state.rounds_executed}")
        line = journal.encode_record(self.identity.state_id, {**record, "state_after": after})
        self._wait_pending()  # `pipelined`: the previous round is synced before this line is written
        try:
            safefile.write_all(self._fd, line)
        except OSError as err:  # a torn line at worst: the next run's recovery cuts it
            raise UsageError(f"round log {self.log_path}: cannot append: {err.strerror or err}") from None
        self._size += len(line)
        self._unsynced = True
        self._last = {"round_index": state.rounds_executed, "epoch": record.get("epoch")}
        if record.get("epoch_report") is not None:
            self._last["epoch_report"] = record["epoch_report"]
        now = journal.time.monotonic()
        if self.options.durability == "pipelined":
            self._start_sync(now)
        elif self.policy.sync_due(now):
            self.sync(now)
        if self.policy.checkpoint_due(now):
            self.checkpoint(state)

    def _start_sync(self, now: float) -> None:
        """Start this line's fdatasync and return: it runs while the next round's checks do (in the
        kernel's AIO worker, so no GIL handoff; see `aiosync`). Only one is ever in flight."""
        if self._async is None:
            from distfs_pipeline.persist.aiosync import AsyncDatasync

            self._async = AsyncDatasync()
        assert self._fd is not None
        try:
            self._async.start(self._fd)
        except OSError as err:
            raise UsageError(f"round log {self.log_path}: cannot sync: {err.strerror or err}") from None
        self._unsynced = False
        self.policy.last_sync = now

    def _wait_pending(self) -> None:
        """Block until the fdatasync in flight (if any) is done: then every written line is durable."""
        if self._async is None or not self._async.in_flight:
            return
        try:
            self._async.wait()
        except OSError as err:
            self._unsynced = True
            raise UsageError(f"round log {self.log_path}: cannot sync: {err.strerror or err}") from None

    def sync(self, now: float | None = None) -> None:
        self._wait_pending()
        if self._fd is None or not self._unsynced:
            return
        try:
            os.fdatasync(self._fd)
        except OSError as err:
            raise UsageError(f"round log {self.log_path}: cannot sync: {err.strerror or err}") from None
        self._unsynced = False
        self.policy.last_sync = now if now is not None else journal.time.monotonic()

    def checkpoint(self, state: CursorState) -> None:
        """Write the state file, after the log holding its rounds is synced (never ahead of the log)."""
        self.sync()
        if self._saved_round != state.rounds_executed:
            save_state(self.state_path, state)
            self._saved_round = state.rounds_executed
        self.policy.last_checkpoint = journal.time.monotonic()

    def rotation_due(self) -> bool:
        return self.options.log_max_bytes > 0 and self._size >= self.options.log_max_bytes

    def rotate(self, state: CursorState) -> None:
        """Start a new active segment. The caller has saved the book at `state`; here: checkpoint,
        rename the active log to the next segment, open a fresh one, move the WAL, then compress and
        prune old segments (which no start ever needs again)."""
        self.checkpoint(state)
        carried = self._last
        self.close()
        try:
            rotated = journal.rotate_out(self.log_path)
        except OSError as err:
            raise UsageError(f"round log {self.log_path}: cannot rotate: {describe_os_error(err)}") from None
        self.open(state, carried)
        try:
            if self.options.log_compress:
                journal.compress_segment(rotated)
            journal.prune_segments(self.log_path, self.options.log_keep)
        except OSError as err:
            raise UsageError(f"round log segment {rotated}: {describe_os_error(err)}") from None

    def close(self, state: CursorState | None = None) -> None:
        """Sync and close the log; with `state`, checkpoint the state file first."""
        if self._fd is None:
            return
        try:
            if state is not None:
                self.checkpoint(state)
            else:
                with contextlib.suppress(UsageError):
                    self.sync()
        finally:
            with contextlib.suppress(UsageError):
                self._wait_pending()
            if self._async is not None:
                self._async.close()
                self._async = None
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
