"""Fault schedules applied to real files of a scratch store, round by round.

A study asks "what does this policy cost, and how late does it notice?" about faults that really
happen to storage nodes. This module makes those faults happen, on real files, at the rounds a
scenario names, and records when each one started and ended, so `study` can measure detection and
recovery from the auditor's round reports. It never decides anything about the audit itself.

Fault kinds (what a real node sees, and what the auditor should report):

- `bit_rot`: media corruption flips bits in place; the file keeps its size and mtime. With
  `silent: true` (the default) it also stays invisible to the chunk cache, as rot below the file
  system is (see `FaultInjector._rekey_chunk_cache`): a chunked check then notices only when its
  sample window covers the damaged chunk, or at a periodic full verify (`probe.full_verify_every`).
  Expected reason: HASH_MISMATCH.
- `delete`: an indexed blob disappears (an operator's `rm`, a buggy GC). MISSING_SAMPLE, because the
  index keeps it a candidate; a store without an index simply stops auditing it (SPEC section 0).
- `truncate`: a crash or a partial copy leaves a shorter file. HASH_MISMATCH.
- `unreadable`: reads fail (a bad sector, a dying controller). Tests and studies run as root, where
  permission bits do not stop reads, so the blob file is replaced by a directory of the same name:
  opening it fails with `IsADirectoryError`, i.e. READ_IO_ERROR, and the index keeps it a candidate.
- `slow`: the node answers after TTL + skew (an overloaded disk or link), in virtual time through
  the auditor's `response_delay_ms` hook; no file changes. TIMEOUT.

Any kind can flap (`flap_every: k`: on for k rounds, off for k rounds) and be repaired at a round
(`repair_at_round`): the original bytes come back by an atomic replace, as a re-replication would.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import blake3

from distfs_pipeline.core.chunks import rekey_cache_files
from distfs_pipeline.core.errors import UsageError, WorldError
from distfs_pipeline.core.models import FaultKind, TargetOrder
from distfs_pipeline.core.store import LocalCasStore

# Member names are lowercase and equal their values: `config.FaultConf` uses these enums too, and
# OmegaConf matches enum values by member *name*, so YAML and overrides read `kind: bit_rot`.
FILE_KINDS = frozenset({FaultKind.bit_rot, FaultKind.delete, FaultKind.truncate, FaultKind.unreadable})


@dataclass(frozen=True)
class FaultSpec:
    """One entry of `scenario.faults`, as plain data (validated by `validation.FaultSettings`)."""

    kind: FaultKind
    at_round: int = 1
    repair_at_round: int | None = None
    flap_every: int = 0
    target_index: int = 0
    target_order: TargetOrder = TargetOrder.by_hash
    blobs: int = 1
    flip_bytes: int = 1
    offset: int | None = None
    silent: bool = True
    truncate_to: int | None = None
    delay_ms: int | None = None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> FaultSpec:
        """Build from a validated settings dump (enum fields arrive as strings)."""
        values = dict(data)
        values["kind"] = FaultKind(values["kind"])
        values["target_order"] = TargetOrder(values.get("target_order", TargetOrder.by_hash))
        return cls(**values)

    def active_at(self, round_number: int) -> bool:
        """Whether the fault is present during round `round_number` (1-based)."""
        if round_number < self.at_round:
            return False
        if self.repair_at_round is not None and round_number >= self.repair_at_round:
            return False
        if self.flap_every:
            return (round_number - self.at_round) // self.flap_every % 2 == 0
        return True


@dataclass(frozen=True)
class FaultEvent:
    """A fault switched on (`inject`) or off (`repair`) just before round `round_number`."""

    fault: int
    kind: FaultKind
    action: str  # "inject" | "repair"
    round_number: int
    observed_ms: int
    hashes: tuple[str, ...]


@dataclass
class _Saved:
    """What a blob looked like before a fault, so a repair can put it back."""

    data: bytes
    atime_ns: int
    mtime_ns: int


@dataclass
class _Target:
    """A fault bound to the concrete blobs of one store."""

    spec: FaultSpec
    hashes: tuple[str, ...]
    active: bool = False
    saved: dict[str, _Saved] = field(default_factory=dict)


def copy_store(source: Path, destination: Path) -> Path:
    """A scratch copy of a store (blobs, pins, index), so faults never touch the original.

    `copy2` keeps mtimes, so the copy's blobs look as old as the originals. Symlinks are copied as
    links (upstream's listing skips them either way). `destination` must not exist yet.
    """
    if not source.is_dir():
        raise UsageError(f"runtime.storage_root: {source} is not a directory (the store to copy)")
    shutil.copytree(source, destination, symlinks=True)
    return destination


def healthy_copy(source: Path, destination: Path) -> tuple[int, list[str]]:
    """A scratch store holding only the source blobs that verify; returns (kept, dropped hashes).

    A blob that already fails would blur what a scenario measures (its failures trigger backoff
    too), so the healthy baseline leaves it out. Blobs go in through `put`, so the copy carries
    the must-hold index and a deleted blob stays a candidate.
    """
    if not source.is_dir():
        raise UsageError(f"runtime.storage_root: {source} is not a directory (the store to copy)")
    src, dst = LocalCasStore(source), LocalCasStore(destination)
    try:
        hashes = src.candidates()
    except WorldError as err:
        raise UsageError(f"runtime.storage_root: cannot copy the store: {err}") from None
    dst.blobs_dir.mkdir(parents=True)
    kept, dropped = 0, []
    for content_hash in hashes:
        try:
            data = src.get_verified(content_hash)
        except WorldError:
            dropped.append(content_hash)
            continue
        dst.put(content_hash, data)
        kept += 1
    return kept, dropped


def order_candidates(store: LocalCasStore, order: TargetOrder) -> list[str]:
    """The store's audit candidates in `order` (largest first ties broken by hash)."""
    hashes = list(store.candidates())
    if order is TargetOrder.by_hash:
        return hashes
    sizes = store.index_sizes()

    def size_of(content_hash: str) -> int:
        if content_hash in sizes:
            return sizes[content_hash]
        try:
            return store.blob_path(content_hash).stat().st_size
        except OSError:
            return -1

    return sorted(hashes, key=lambda h: (-size_of(h), h))


def resolve_targets(store: LocalCasStore, faults: Sequence[FaultSpec]) -> list[tuple[str, ...]]:
    """The blobs each fault hits; `UsageError` if an index is out of range or two file faults overlap.

    Two file faults on one blob would undo each other's saved bytes, so that schedule is refused.
    """
    resolved: list[tuple[str, ...]] = []
    owner: dict[str, int] = {}
    for number, spec in enumerate(faults):
        ordered = order_candidates(store, spec.target_order)
        end = spec.target_index + spec.blobs
        if end > len(ordered):
            raise UsageError(
                f"scenario.faults[{number}]: target_index {spec.target_index} + blobs {spec.blobs} "
                f"exceeds the {len(ordered)} audit candidates of {store.root}"
            )
        hashes = tuple(ordered[spec.target_index : end])
        if spec.kind in FILE_KINDS:
            for content_hash in hashes:
                if content_hash in owner:
                    raise UsageError(
                        f"scenario.faults[{number}]: blob {content_hash[:16]}... is already the "
                        f"target of scenario.faults[{owner[content_hash]}]"
                    )
                owner[content_hash] = number
        resolved.append(hashes)
    return resolved


class FaultInjector:
    """Applies a fault schedule to a store's real files, and answers the auditor's delay hook.

    Call `before_round(n, observed_ms)` before every round (skipped ones too): each fault whose
    desired state differs from its current one is injected or repaired, and the switch is recorded
    in `events`.
    """

    def __init__(
        self,
        store_root: Path,
        faults: Sequence[FaultSpec],
        *,
        default_delay_ms: int,
        chunk_cache_dir: Path | None = None,
    ) -> None:
        self.store = LocalCasStore(store_root)
        self.default_delay_ms = default_delay_ms
        self.chunk_cache_dir = chunk_cache_dir
        hashes = resolve_targets(self.store, faults)
        self.targets = [_Target(spec, h) for spec, h in zip(faults, hashes, strict=True)]
        self.events: list[FaultEvent] = []
        self._delays: dict[str, int] = {}

    # ------------------------------------------------------------------ the hooks

    def before_round(self, round_number: int, observed_ms: int) -> None:
        """Bring every fault to the state the schedule wants for `round_number`."""
        for number, target in enumerate(self.targets):
            wanted = target.spec.active_at(round_number)
            if wanted == target.active:
                continue
            if wanted:
                self._inject(target)
            else:
                self._repair(target)
            target.active = wanted
            action = "inject" if wanted else "repair"
            self.events.append(
                FaultEvent(number, target.spec.kind, action, round_number, observed_ms, target.hashes)
            )

    def response_delay_ms(self, content_hash: str) -> int:
        """How late the node answers a challenge for `content_hash` (0 unless a `slow` fault is on)."""
        return self._delays.get(content_hash, 0)

    # ------------------------------------------------------------------ inject / repair

    def _inject(self, target: _Target) -> None:
        spec = target.spec
        for content_hash in target.hashes:
            if spec.kind is FaultKind.slow:
                self._delays[content_hash] = (
                    spec.delay_ms if spec.delay_ms is not None else self.default_delay_ms
                )
                continue
            path = self.store.blob_path(content_hash)
            target.saved[content_hash] = _save(path)
            self._damage(path, content_hash, spec)

    def _repair(self, target: _Target) -> None:
        for content_hash in target.hashes:
            if target.spec.kind is FaultKind.slow:
                self._delays.pop(content_hash, None)
                continue
            saved = target.saved.pop(content_hash)
            _restore(self.store.blob_path(content_hash), saved)

    def _damage(self, path: Path, content_hash: str, spec: FaultSpec) -> None:
        """Do to the blob file what the fault kind does to a real node's file."""
        match spec.kind:
            case FaultKind.bit_rot:
                self._bit_rot(path, content_hash, spec)
            case FaultKind.delete:
                path.unlink()
            case FaultKind.truncate:
                size = path.stat().st_size
                keep = spec.truncate_to if spec.truncate_to is not None else size // 2
                os.truncate(path, min(keep, max(size - 1, 0)))
            case FaultKind.unreadable:
                path.unlink()
                path.mkdir()
            case _:  # pragma: no cover - slow never reaches here
                raise AssertionError(spec.kind)

    def _bit_rot(self, path: Path, content_hash: str, spec: FaultSpec) -> None:
        """Flip the low bit of `flip_bytes` bytes in place; keep size and mtime."""
        before = os.stat(path)
        size = before.st_size
        if size == 0:
            raise UsageError(f"scenario: cannot rot an empty blob {content_hash}")
        count = min(spec.flip_bytes, size)
        offset = min(rot_offset(content_hash, size) if spec.offset is None else spec.offset, size - count)
        fd = os.open(path, os.O_RDWR)
        try:
            original = os.pread(fd, count, offset)
            os.pwrite(fd, bytes(b ^ 0x01 for b in original), offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        if spec.silent:
            self._rekey_chunk_cache(content_hash, path)

    def _rekey_chunk_cache(self, content_hash: str, path: Path) -> None:
        """Make the chunk cache see the file as unchanged since it verified it.

        Rot below the file system changes bytes and no metadata. A user process cannot write a
        file without the kernel moving its ctime, and the chunk cache (the only part that looks at
        metadata) keys its trust on size, mtime, ctime and inode. So the cache's record of this
        blob is re-stamped with the file's new metadata, keeping the digests it verified: exactly
        what the cache would hold had the disk flipped the bits. A blob never verified yet has no
        record, and its first check will do a full verify, as it would for real.
        """
        if self.chunk_cache_dir is None or not self.chunk_cache_dir.is_dir():
            return
        rekey_cache_files(self.chunk_cache_dir, content_hash, os.stat(path))


def rot_offset(content_hash: str, size: int) -> int:
    """Where rot strikes when the scenario does not say: uniform over the blob, but reproducible.

    Not the middle: a sample window covers a blob's middle far more often than its ends, so a
    fixed middle position would flatter sampled verification.
    """
    digest = blake3.blake3(f"distfs-scenario-rot:{content_hash}".encode()).digest(length=8)
    return int.from_bytes(digest, "little") % size


def _save(path: Path) -> _Saved:
    st = os.stat(path)
    return _Saved(path.read_bytes(), st.st_atime_ns, st.st_mtime_ns)


def _restore(path: Path, saved: _Saved) -> None:
    """Put the original bytes back by an atomic replace, as a re-replication would."""
    if path.is_dir() and not path.is_symlink():
        path.rmdir()
    tmp = path.with_name(path.name + ".repair-tmp")
    tmp.write_bytes(saved.data)
    os.replace(tmp, path)


def specs_from_settings(faults: Iterable[Mapping[str, Any]]) -> list[FaultSpec]:
    """`FaultSpec`s from the validated `scenario.faults` entries."""
    return [FaultSpec.from_mapping(f) for f in faults]
