"""Opening, reading and replacing our own files so that a planted file cannot turn us into a weapon.

Why one module: the tool runs as root in directories other people can write to. Every file we keep
(state, lock, WAL pointer, round and epoch logs, caches, summaries, metrics, history) is opened
through these few functions, so one set of rules holds everywhere:

- never follow a symlink at the last path component (`O_NOFOLLOW`);
- never block on a FIFO or a device (`O_NONBLOCK`), and refuse anything that `fstat` does not show
  as a regular file once opened (the check is on what was opened, not on a name looked up before);
- never write through a second name of someone else's file: a file we append to or lock must have
  exactly one link (a planted hard link to `/etc/shadow` has two);
- temp files are created exclusively with unique names (`O_EXCL`), so a planted temp name can
  only make the write fail, never redirect it;
- every read back is capped in size, and JSON we parse refuses duplicate keys (as serde does) and
  reports every way `json` can fail as one `ValueError`.

Errors are `OSError`s that carry the path, so callers can name the file in one line.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import grp
import json
import os
import pwd
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from distfs_pipeline.core.errors import UsageError

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_BASE = _NOFOLLOW | _CLOEXEC | _NONBLOCK

DEFAULT_READ_CAP = 64 * 1024 * 1024
"""The largest file of ours we read back whole, unless the caller says otherwise."""


class UnsafeFileError(OSError):
    """A path is not the plain, single-linked regular file we expect (link, FIFO, device, ...)."""


def _refuse(path: Path | str, why: str) -> UnsafeFileError:
    return UnsafeFileError(errno.EPERM, f"refusing to use it: {why}", str(path))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_opened(fd: int, path: Path | str, *, single_link: bool) -> os.stat_result:
    """`fstat` what was opened: a regular file (and with one link, for files we write)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, f"it is {_kind(st.st_mode)}")
    if single_link and st.st_nlink > 1:
        raise _refuse(path, f"it has {st.st_nlink} hard links (a planted second name?)")
    return st


def _open_checked(path: Path | str, flags: int, mode: int, *, single_link: bool) -> int:
    try:
        fd = os.open(path, flags | _BASE, mode)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _refuse(path, "it is a symbolic link") from None
        if err.errno == errno.ENXIO:
            raise _refuse(path, "it is a FIFO or socket, not a regular file") from None
        if err.filename is None:
            err.filename = str(path)
        raise
    try:
        check_opened(fd, path, single_link=single_link)
        if flags & (os.O_WRONLY | os.O_RDWR):
            os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_append(path: Path | str, mode: int = 0o644, *, readable: bool = False) -> int:
    """An fd for appending to our own log, created if missing; never a link, FIFO or shared file.

    `readable`: also open it for reading (`pread`), e.g. to look at the last byte before appending.
    """
    access = os.O_RDWR if readable else os.O_WRONLY
    return _open_checked(path, access | os.O_APPEND | os.O_CREAT, mode, single_link=True)


def open_update(path: Path | str, mode: int = 0o644) -> int:
    """An fd for reading and writing our own file in place (a lock file, a log being repaired)."""
    return _open_checked(path, os.O_RDWR | os.O_CREAT, mode, single_link=True)


def open_existing_update(path: Path | str) -> int:
    """Like `open_update`, but the file must already exist."""
    return _open_checked(path, os.O_RDWR, 0, single_link=True)


def open_read(path: Path | str) -> tuple[int, os.stat_result]:
    """An fd for reading a regular file (no link at the last component, never blocks on a FIFO)."""
    fd = _open_checked(path, os.O_RDONLY, 0, single_link=False)
    return fd, os.fstat(fd)


def read_capped(path: Path | str, cap: int = DEFAULT_READ_CAP) -> bytes:
    """The whole content of a regular file of ours, refused when larger than `cap` bytes."""
    fd, st = open_read(path)
    try:
        if st.st_size > cap:
            raise OSError(errno.EFBIG, f"larger than the {cap} bytes allowed", str(path))
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            piece = os.read(fd, min(left, 1 << 20))
            if not piece:
                break
            chunks.append(piece)
            left -= len(piece)
        data = b"".join(chunks)
        if len(data) > cap:
            raise OSError(errno.EFBIG, f"larger than the {cap} bytes allowed", str(path))
        return data
    finally:
        os.close(fd)


def read_optional(path: Path | str, cap: int = DEFAULT_READ_CAP) -> bytes | None:
    """`read_capped`, or None when the file does not exist."""
    try:
        return read_capped(path, cap)
    except FileNotFoundError:
        return None


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def unique_temp(path: Path) -> Path:
    """A temp name beside `path` that nobody can have planted in advance."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(6)}")


def create_exclusive(path: Path | str, mode: int = 0o644) -> int:
    """A new file, created by us now (`O_EXCL`: an existing name, link or not, is an error)."""
    return _open_checked(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode, single_link=True)


def _regular_or_absent(path: Path | str) -> os.stat_result | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode):
        raise _refuse(path, f"it is {_kind(st.st_mode)}")
    return st


def check_replaceable(path: Path) -> None:
    """Refuse to rename over anything but a regular file: a planted link is never replaced silently."""
    _regular_or_absent(path)


def check_real_dir(path: Path | str) -> None:
    """`path` is a directory itself, not a link to one (a link is refused, never followed)."""
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise _refuse(path, f"it is {_kind(st.st_mode)}")


def check_trusted_path(path: Path | str) -> None:
    """No one but root and us can redirect what we write under `path`: no existing component is
    a symbolic link owned by someone else (it could point anywhere its owner likes), nor a
    directory someone else can change (owned by another user, or writable by a group other than
    ours or by everyone, without the sticky bit: they could rename our dir away and put a link in
    its place). This is ssh's StrictModes rule. The same holds for where a trusted link leads (its
    real path is checked too). A path that climbs with `..` is refused: the kernel applies `..`
    after following links, so it could lead somewhere the check did not look. A link or dir of
    root's or ours is trusted, e.g. an alias for a data disk, and so is a sticky world-writable
    dir such as /tmp (others cannot move our entries). The first missing component ends the
    check: what we create below is ours.
    """
    if ".." in Path(path).parts:
        raise _refuse(
            path, "it climbs with '..', which the kernel applies after following links; give it without"
        )
    full = Path(os.path.abspath(path))
    _check_components(full)
    real = Path(os.path.realpath(full))
    if real != full:
        _check_components(real)


def _check_components(full: Path) -> None:
    for component in (*reversed(full.parents), full):
        try:
            link = os.lstat(component)
            st = os.stat(component) if stat.S_ISLNK(link.st_mode) else link
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(link.st_mode) and link.st_uid not in _trusted_uids():
            raise _refuse(component, f"it is a symbolic link owned by uid {link.st_uid}")
        if stat.S_ISDIR(st.st_mode):
            _check_trusted_dir(component, st)


def _trusted_uids() -> set[int]:
    return {0, os.geteuid()}


_FIX = "; use a dir only root (or you) can write, or chmod go-w (or +t) this one"


def _check_trusted_dir(path: Path, st: os.stat_result) -> None:
    if st.st_uid not in _trusted_uids():
        raise _refuse(
            path, f"it is a directory owned by uid {st.st_uid}, who could replace what is in it{_FIX}"
        )
    group_can = st.st_mode & stat.S_IWGRP and not _group_is_ours(st.st_gid)
    if (group_can or st.st_mode & stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
        who = "everyone" if st.st_mode & stat.S_IWOTH else f"group {st.st_gid}"
        raise _refuse(
            path, f"{who} can write to this directory (mode {st.st_mode & 0o7777:o}, not sticky){_FIX}"
        )


@functools.cache
def _group_is_ours(gid: int) -> bool:
    """A group only we are in (ours, or root's, with no other member listed in the group or
    passwd databases): its write bit lets no one else in, as with umask 002 on a system with a
    group per user. Members the databases do not list (NSS without enumeration) are not seen."""
    if gid not in (0, os.getegid()):
        return False
    me = {0, os.geteuid()}
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        members = set()
    others = {p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid or p.pw_name in members}
    return others <= me


def check_own_dir(path: Path | str) -> None:
    """`path`, where it exists, is a directory itself (not a link to one), and nobody else can
    redirect the way to it (`check_trusted_path`): a dir we are about to write our files into."""
    check_trusted_path(path)
    if os.path.lexists(path):
        check_real_dir(path)


def check_writable_file(path: Path | str) -> None:
    """A file that something else opens for us (a log handler, SQLite): the way to it is trusted
    (`check_trusted_path`) and it is absent or a plain single-link file (`check_single_file`)."""
    check_trusted_path(path)
    check_single_file(path)


@contextlib.contextmanager
def refused_as(key: str) -> Iterator[None]:
    """Checks of what the setting `key` names: an `OSError` becomes the one-line `UsageError`
    `<key>: <file>: <reason>` (exit status 2)."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"{key}: {describe(err)}") from None


def make_real_dirs(base: Path, target: Path) -> None:
    """Create each directory from `base` (a dir already trusted) down to `target`; one that
    exists must be a real directory, not a link. Cheaper than `make_trusted_dirs` for the dirs a
    tool makes under its own: nobody else can add entries there."""
    current = base
    for part in target.relative_to(base).parts:
        current = current / part
        try:
            os.mkdir(current, 0o755)
        except FileExistsError:
            check_real_dir(current)


def make_trusted_dirs(directory: Path | str) -> None:
    """`mkdir -p` that follows no link but a trusted one and creates each missing directory itself
    (so it is ours, mode 0755): the path must pass `check_trusted_path` before and after, and
    every component must be, or resolve to, a directory."""
    check_trusted_path(directory)
    full = Path(os.path.abspath(directory))
    for component in (*reversed(full.parents), full):
        if not os.path.lexists(component):
            with contextlib.suppress(FileExistsError):  # made meanwhile: checked below
                os.mkdir(component, 0o755)
        st = os.stat(component)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, "exists but is not a directory", str(component))
    check_trusted_path(full)  # what was made in the meantime by someone else is refused


def check_single_file(path: Path | str) -> None:
    """`path` is absent, or a regular file with one link (not a link, FIFO, device or hard link
    to someone else's file): what a file we append to must be."""
    st = _regular_or_absent(path)
    if st is not None and st.st_nlink != 1:
        raise _refuse(path, f"it has {st.st_nlink} hard links")


def write_atomic(path: Path | str, data: bytes, *, durable: bool = True, mode: int = 0o644) -> None:
    """Replace `path` with `data`: readers see the old or the new content, never a mix.

    The temp file is ours (exclusive, unique name); the target must be a regular file or absent.
    With `durable`, the data and the rename are fsynced. On any error the temp file is removed and
    `path` keeps its old content; the `OSError` is raised with the file it concerns.
    """
    path = Path(path)
    check_replaceable(path)
    tmp = unique_temp(path)
    fd = create_exclusive(tmp, mode)
    try:
        write_all(fd, data)
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    try:
        check_replaceable(path)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


def is_inside(path: Path | str, root: Path | str) -> bool:
    """Whether `path` is `root` or lies under it once symlinks are resolved: the one test behind
    "never write inside the audited store" (caches, state, run dirs, metrics textfiles)."""
    resolved, base = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return resolved == base or base in resolved.parents


def fsync_dir(directory: Path | str) -> None:
    """Make a rename in `directory` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as err:  # some file systems refuse fsync on a directory
        if err.errno not in (errno.EINVAL, errno.EBADF):
            raise
    finally:
        os.close(fd)


# --- JSON we read back ---------------------------------------------------------------------------


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate field `{key}`")
        out[key] = value
    return out


def loads_strict(raw: bytes | str) -> Any:
    """Parse JSON as serde would accept it, or raise one `ValueError` that says why.

    Refuses invalid UTF-8, duplicate keys, NaN/Infinity, and numbers too long to convert;
    `RecursionError` (deep nesting) and friends never escape.
    """
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise ValueError(f"invalid UTF-8 at byte {err.start}") from None
    else:
        text = raw
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"invalid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    except RecursionError:
        raise ValueError("nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(f"invalid JSON: {err}") from None


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"`{name}` is not JSON")


def load_json_file(path: Path | str, cap: int = DEFAULT_READ_CAP) -> Any:
    """`read_capped` then `loads_strict`; errors are `OSError` (the file) or `ValueError` (content)."""
    return loads_strict(read_capped(path, cap))


def describe(err: OSError) -> str:
    """`<file>: <reason>` in one line, for messages that name the file."""
    text = err.strerror or str(err)
    return f"{err.filename}: {text}" if err.filename else text
