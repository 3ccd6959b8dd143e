"""The deterministic sample window (SPEC 2.4) and the reader contract a check reads through.

Why a module of its own: the challenge protocol (`challenge`) and the readers that serve it
(`chunks`) both need the window rules and the `SampleReader` contract; keeping them here, below
both, lets the readers exist without importing the protocol and the protocol without the readers.
"""

from __future__ import annotations

from typing import Protocol

import blake3

from distfs_pipeline.core.errors import DistributedValidationFailed
from distfs_pipeline.core.models import U32_MAX, U64_MAX
from distfs_pipeline.core.store import blake3_hex

__all__ = [
    "USIZE_MAX",
    "SampleReader",
    "check_window",
    "deterministic_offset",
    "extract_sample_slice",
    "note_sample_hash",
    "sample_window",
]

USIZE_MAX = U64_MAX  # upstream runs on 64-bit targets
# Verified sample bytes: `bytes`, or a read-only view into an immutable `bytes` buffer (the chunked
# reader's window inside the chunks it read and checked: no copy, since the protocol only hashes it).
Sample = bytes | memoryview


class SampleReader(Protocol):
    """How a check reads verified sample bytes (implemented in `chunks`).

    `read_window` is our addition to the contract: answering must read the challenge's own
    window (as upstream's `extract_sample_slice` does), not re-derive one.
    """

    def blob_len(self, content_hash: str) -> int: ...

    def read_sample(self, content_hash: str, max_sample_bytes: int, vrf_seed: str) -> tuple[int, int, Sample]:
        """(offset, size, verified bytes) of the deterministic window (SPEC 2.4)."""
        ...

    def read_window(self, content_hash: str, offset: int, size: int) -> Sample:
        """Verified bytes of an explicit window, with upstream's window errors."""
        ...


class _SampleHashMemo:
    """BLAKE3 of the last sample object hashed.

    A reader may hand the answer the very bytes object it verified for the issue (see `chunks`);
    bytes are immutable, so that object's hash is computed once. An identity test, not equality:
    any other object is hashed afresh.
    """

    __slots__ = ("digest", "sample")

    def __init__(self) -> None:
        self.sample: Sample | None = None
        self.digest = ""

    def hex(self, sample: Sample) -> str:
        if sample is not self.sample:
            self.sample, self.digest = sample, blake3_hex(sample)
        return self.digest

    def note(self, sample: Sample, digest: str) -> None:
        self.sample, self.digest = sample, digest


_SAMPLE_HASHES = _SampleHashMemo()


def note_sample_hash(sample: Sample, blake3_hex_digest: str) -> None:
    """A reader that has just computed the lowercase hex BLAKE3 of exactly the `sample` object it
    will return (a whole small blob hashed for its content check, a window that is exactly one
    verified chunk) hands it over, so the issue does not hash the same bytes a second time.
    Only the BLAKE3 of that very object may be noted: the memo is keyed by identity."""
    _SAMPLE_HASHES.note(sample, blake3_hex_digest)


# ---------------------------------------------------------------------- sample window (2.4)


def _u64_le_prefix(data: bytes) -> int:
    return int.from_bytes(blake3.blake3(data).digest()[:8], "little")


def deterministic_offset(content_hash: str, vrf_seed: str, blob_len: int, sample_size: int) -> int:
    """0 when the sample covers the blob, else BLAKE3(hash ":" seed)[0..8] LE mod (len - size + 1)."""
    if blob_len <= sample_size:
        return 0
    material = content_hash.encode() + b":" + vrf_seed.encode()
    return _u64_le_prefix(material) % (blob_len - sample_size + 1)


def check_window(offset: int, size: int, blob_len: int) -> int:
    """Upstream `extract_sample_slice` bounds checks; returns the window end.

    Negative or oversized sizes cannot exist in Rust (u32); here they get the overflow message.
    """
    if not 0 <= offset <= USIZE_MAX:
        raise DistributedValidationFailed(f"sample_offset overflow: {offset}")
    end = offset + size
    if not 0 <= size <= U32_MAX or end > USIZE_MAX:
        raise DistributedValidationFailed(f"sample window overflow: offset={offset} size={size}")
    if end > blob_len:
        raise DistributedValidationFailed(
            f"sample window out of bounds: offset={offset} size={size} blob_len={blob_len}"
        )
    return end


def extract_sample_slice(blob: bytes, offset: int, size: int) -> bytes:
    """`blob[offset:offset+size]` after `check_window`."""
    end = check_window(offset, size, len(blob))
    return blob[offset:end]


def sample_window(content_hash: str, vrf_seed: str, blob_len: int, max_sample_bytes: int) -> tuple[int, int]:
    """(offset, size) of the deterministic sample of a blob of `blob_len` bytes (SPEC 2.4)."""
    if max_sample_bytes < 1:
        raise DistributedValidationFailed("max_sample_bytes must be >= 1")
    size = min(blob_len, max_sample_bytes)
    if size > U32_MAX:
        raise DistributedValidationFailed(
            f"sample size conversion overflow: blob_len={blob_len} sample_size={size}"
        )
    offset = deterministic_offset(content_hash, vrf_seed, blob_len, size)
    check_window(offset, size, blob_len)
    return offset, size
