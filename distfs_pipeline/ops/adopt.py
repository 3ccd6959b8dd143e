"""Adopt a plain upstream store: record what it holds now in our must-hold index.

Why: a store without our index is audited against its directory listing, so a blob that is lost
simply leaves the listing and the audit never notices (SPEC section 0). Adoption verifies every
listed blob once (the store's own `get_verified`, so every blob generation the store can read is
verified the way a full check would) and records each in `must_hold.idx` through the index's own
writer. From then on a lost blob stays a candidate and fails as MISSING_SAMPLE.

What it changes: nothing but the index files (`must_hold.idx`, and `must_hold.sorted` once the log
is large). No blob is written, renamed or touched. It is idempotent: blobs already recorded are
neither verified again nor recorded twice, so it can be re-run after upstream copied blobs in.

Blobs that do not verify are recorded too (fail closed: the node claimed them by their name, and
leaving them out would hide them from the audit); the summary lists each with its reason, and
`--only-verified` leaves them out instead. A blob that vanished since the listing is not held and
is not recorded.

    python -m distfs_pipeline.adopt --store ROOT [--only-verified] [--json] [--quiet]

Exit status: 0 every blob verified, 1 some did not (listed in the summary), 2 usage error.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from distfs_pipeline.core.challenge import classify_world_error_reason
from distfs_pipeline.core.errors import BlobNotFound, WorldError
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops.args import OneLineArgumentParser

PROG = "python -m distfs_pipeline.adopt"
_PROGRESS_INTERVAL_S = 0.2


@dataclass
class BadBlob:
    """A listed blob that did not verify: why, and whether it was recorded anyway."""

    content_hash: str
    reason: str
    error: str
    recorded: bool


@dataclass
class Adoption:
    """What one adoption found and did."""

    store: str
    index: str
    listed: int = 0
    already_recorded: int = 0
    verified: int = 0
    verified_bytes: int = 0
    recorded: int = 0
    vanished: list[str] = field(default_factory=list)
    did_not_verify: list[BadBlob] = field(default_factory=list)


class _Progress:
    """`verified n/N` on stderr: redrawn on a terminal, about every 10% otherwise."""

    def __init__(self, total: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = _isatty(stream)
        self._last = 0.0
        self._step = -1

    def update(self, done: int, nbytes: int) -> None:
        if not self.enabled or self.total <= 0:
            return
        text = f"adopt: verified {done}/{self.total} blobs ({nbytes / (1 << 20):.1f} MiB)"
        if self.tty:
            now = time.monotonic()
            if now - self._last >= _PROGRESS_INTERVAL_S or done == self.total:
                self._last = now
                self.stream.write("\r" + text + ("\n" if done == self.total else ""))
                self.stream.flush()
            return
        step = done * 10 // self.total
        if step != self._step:
            self._step = step
            self.stream.write(text + "\n")
            self.stream.flush()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def adopt(root: Path, *, only_verified: bool = False, progress: _Progress | None = None) -> Adoption:
    """Verify the blobs of `root` not yet in its index, and record them (see the module docstring)."""
    store = LocalCasStore(root)
    listed = store.list_blob_hashes()
    known = set(store.must_hold.hashes() or ())
    result = Adoption(store=str(root), index=str(store.index_path), listed=len(listed))
    todo = [h for h in listed if h not in known]
    result.already_recorded = len(listed) - len(todo)
    progress = progress or _Progress(len(todo), sys.stderr, enabled=False)
    progress.total = len(todo)
    entries: list[tuple[str, int]] = []
    for done, content_hash in enumerate(todo, 1):
        try:
            size = len(store.get_verified(content_hash))
        except BlobNotFound:
            result.vanished.append(content_hash)
        except WorldError as err:
            reason = classify_world_error_reason(err).value
            result.did_not_verify.append(BadBlob(content_hash, reason, str(err), not only_verified))
            if not only_verified:
                entries.append((content_hash, _size_on_disk(store, content_hash)))
        else:
            result.verified += 1
            result.verified_bytes += size
            entries.append((content_hash, size))
        progress.update(done, result.verified_bytes)
    if entries or not store.has_index():
        result.recorded = store.must_hold.adopt(entries)
    return result


def _size_on_disk(store: LocalCasStore, content_hash: str) -> int:
    """The claimed size of a blob that did not verify (0 when it cannot even be stat'ed)."""
    try:
        return max(0, store.blob_path(content_hash).lstat().st_size)
    except (OSError, WorldError):
        return 0


def format_adoption(result: Adoption) -> str:
    """The summary for people (stdout)."""
    bad = result.did_not_verify
    lines = [
        f"adopted {result.store}",
        f"  listed            {result.listed} blobs ({result.already_recorded} already in the index)",
        f"  verified          {result.verified} ({result.verified_bytes} bytes)",
        f"  did not verify    {len(bad)}",
        f"  recorded now      {result.recorded} in {result.index}",
    ]
    if result.vanished:
        lines.append(f"  vanished          {len(result.vanished)} (gone since the listing; not recorded)")
    for blob in bad:
        fate = "recorded: its checks will fail" if blob.recorded else "not recorded (--only-verified)"
        lines.append(f"    {blob.content_hash}  {blob.reason}  {fate}: {blob.error}")
    if not bad:
        lines.append("every blob verified; from now on a lost blob fails as MISSING_SAMPLE")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m distfs_pipeline.adopt --store ROOT`: record a plain store's blobs in our index."""
    parser = OneLineArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True, type=Path, metavar="ROOT", help="the store root")
    parser.add_argument("--only-verified", action="store_true", help="leave blobs that do not verify out")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    root: Path = args.store.absolute()
    if not root.is_dir():
        parser.error(f"--store: {root} {'is not a directory' if root.exists() else 'does not exist'}")
    if not (root / "blobs").is_dir():
        parser.error(f"--store: {root} has no blobs/ directory: not a DistFS store")
    progress = _Progress(0, sys.stderr, enabled=not args.quiet)
    try:
        result = adopt(root, only_verified=args.only_verified, progress=progress)
    except (WorldError, OSError) as err:
        print(f"{PROG}: error: --store: {root}: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(_jsonable(result), indent=2))
    else:
        print(format_adoption(result))
    return 1 if result.did_not_verify else 0


def _jsonable(result: Adoption) -> dict[str, Any]:
    return asdict(result)


if __name__ == "__main__":
    raise SystemExit(main())
