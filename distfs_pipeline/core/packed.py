"""A sorted, deduplicated set of content hashes, packed: what a round's candidates are held in.

Why packed: a store's candidates (its index or its listing) are held for the whole run, and a tuple
of 64-character `str` costs about 12 MiB per 100k hashes (object header, hash cache and pointer per
entry). Every hash our `put` can record is lowercase hex of a 32-byte digest (BLAKE3 or SHA-256), so
here each is 32 bytes in one `bytes` buffer (about 3 MiB per 100k), and the rare name that is not
(an upstream store may hold any valid stem) is kept as a `str` in a small sorted side list, with
its position in the merged order. Lowercase hex of equal length sorts as its bytes do, so the
packed part keeps the code point order (= UTF-8 byte order) that the listing and the index use.

`PackedHashes` is an immutable `Sequence[str]`: `hashes[i]` (the auditor's cursor access) costs one
32-byte slice and `hex()`, or a bisection when odd names exist; `in` is a bisection. Loading from a
cache file builds no per-entry objects: the digests are the file's bytes.
"""

from __future__ import annotations

import bisect
import struct
from array import array
from collections.abc import Iterable, Iterator, Sequence
from itertools import pairwise
from typing import overload

DIGEST = 32
HEX_LEN = 2 * DIGEST
_LOWER_HEX = b"0123456789abcdef"
_ITER_BLOCK = 4096  # digests turned into hex text per step when iterating
# `to_bytes`: counts, the digests, then per odd name its UTF-8 length and bytes, then `odd_at`.
_BODY_COUNTS = struct.Struct("<QQ")  # packed count, odd count
_ODD_LEN = struct.Struct("<I")


def packable(content_hash: str) -> bool:
    """Whether a hash is lowercase hex of 32 bytes (stored packed) rather than an odd name."""
    return (
        len(content_hash) == HEX_LEN
        and content_hash.isascii()
        and not content_hash.encode().translate(None, _LOWER_HEX)
    )


def _all_packable(hashes: list[str]) -> bool:
    """`packable` of every entry, checked in bulk (C loops over one joined text)."""
    if not hashes:
        return True
    joined = "".join(hashes)
    return (
        len(joined) == HEX_LEN * len(hashes)
        and min(map(len, hashes)) == HEX_LEN
        and joined.isascii()
        and not joined.encode().translate(None, _LOWER_HEX)
    )


class PackedHashes(Sequence[str]):
    """Sorted, unique hashes: 32-byte digests in one buffer plus odd names (see the module doc).

    Invariants (the constructors keep them; a cache loader's checksum vouches for its file):
    `digests` holds `len(digests) // 32` strictly increasing digests; `odd` is sorted and holds no
    packable name; `odd_at[k]` is the index of `odd[k]` in the merged sequence.
    """

    __slots__ = ("_digests", "_hex_count", "_odd", "_odd_at")

    def __init__(
        self,
        digests: bytes | memoryview = b"",
        odd: tuple[str, ...] = (),
        odd_at: Sequence[int] | None = None,
    ) -> None:
        if len(digests) % DIGEST:
            raise ValueError("packed digests must be a multiple of 32 bytes")
        self._digests = digests
        self._hex_count = len(digests) // DIGEST
        self._odd = odd
        self._odd_at: Sequence[int] = odd_at if odd_at is not None else self._positions(odd)

    # ------------------------------------------------------------------ building

    @classmethod
    def from_sorted(cls, hashes: Sequence[str]) -> PackedHashes:
        """From hashes already sorted and unique (a listing, a merged index)."""
        if _all_packable(list(hashes)):
            return cls(bytes.fromhex("".join(hashes)))
        plain: list[str] = []
        odd: list[str] = []
        odd_at: list[int] = []
        for position, content_hash in enumerate(hashes):
            if packable(content_hash):
                plain.append(content_hash)
            else:
                odd.append(content_hash)
                odd_at.append(position)
        return cls(bytes.fromhex("".join(plain)), tuple(odd), odd_at)

    @classmethod
    def from_unsorted(cls, hashes: Iterable[str]) -> PackedHashes:
        """From hashes in any order, duplicates allowed (a log's lines)."""
        return cls.from_sorted(sorted(set(hashes)))

    def merged(self, hashes: Iterable[str], splice_max: int = 1024) -> PackedHashes:
        """This set plus `hashes` (any order, duplicates and known ones allowed); `self` if unchanged.

        A few new hashes (a put between rounds; up to `splice_max`, or 1/8 of the set) are spliced
        in: one bisection each, then one copy of the buffer. Many (a long tail) are merged by
        rebuilding, which sorts once.
        """
        new = set(hashes)
        plain = sorted(h for h in new if packable(h))
        odd = sorted(h for h in new.difference(plain) if h not in self._odd_set())
        if len(plain) > max(splice_max, self._hex_count // 8):
            rebuilt = PackedHashes.from_unsorted([*self, *new])
            return self if len(rebuilt) == len(self) else rebuilt
        digests = bytes(self._digests)  # slices of `bytes` compare without a copy per probe
        view = memoryview(digests)
        pieces: list[bytes | memoryview] = []
        done = 0
        for content_hash in plain:  # sorted: each search starts where the last one ended
            digest = bytes.fromhex(content_hash)
            at = _bisect(digests, digest, done, self._hex_count)
            if digests[at * DIGEST : (at + 1) * DIGEST] == digest:
                continue  # known
            pieces += [view[done * DIGEST : at * DIGEST], digest]
            done = at
        if not pieces and not odd:
            return self
        if pieces:
            pieces.append(view[done * DIGEST :])
            digests = b"".join(pieces)
        return PackedHashes(digests, tuple(sorted({*self._odd, *odd})))

    # ------------------------------------------------------------------ Sequence

    def __len__(self) -> int:
        return self._hex_count + len(self._odd)

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> list[str]: ...

    def __getitem__(self, index: int | slice) -> str | list[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        size = len(self)
        if index < 0:
            index += size
        if not 0 <= index < size:
            raise IndexError("candidate index out of range")
        if self._odd:
            k = bisect.bisect_left(self._odd_at, index)
            if k < len(self._odd_at) and self._odd_at[k] == index:
                return self._odd[k]
            index -= k
        return self._digest_hex(index)

    def __iter__(self) -> Iterator[str]:
        odd_iter = iter(zip(self._odd_at, self._odd, strict=True))
        next_odd = next(odd_iter, None)
        position = 0
        view = memoryview(self._digests)
        for start in range(0, self._hex_count, _ITER_BLOCK):
            text = view[start * DIGEST : (start + _ITER_BLOCK) * DIGEST].hex()
            for offset in range(0, len(text), HEX_LEN):
                while next_odd is not None and next_odd[0] == position:
                    yield next_odd[1]
                    position += 1
                    next_odd = next(odd_iter, None)
                yield text[offset : offset + HEX_LEN]
                position += 1
        while next_odd is not None:
            yield next_odd[1]
            next_odd = next(odd_iter, None)

    def __contains__(self, item: object) -> bool:
        if not isinstance(item, str):
            return False
        if packable(item):
            digest = bytes.fromhex(item)
            at = self._bisect_digest(digest)
            return at < self._hex_count and self._digest_bytes(at) == digest
        at = bisect.bisect_left(self._odd, item)
        return at < len(self._odd) and self._odd[at] == item

    def __repr__(self) -> str:
        return f"PackedHashes({len(self)} hashes, {len(self._odd)} odd)"

    # ------------------------------------------------------------------ what a cache file stores

    def to_bytes(self) -> bytes:
        """The set as a cache file body (`from_bytes` reads it back without per-entry objects)."""
        odd = b"".join(_ODD_LEN.pack(len(raw)) + raw for raw in (h.encode("utf-8") for h in self._odd))
        positions = array("q", self._odd_at)
        if positions.itemsize != 8 or struct.pack("=q", 1) != struct.pack("<q", 1):
            raise ValueError("odd positions are stored as little-endian 64-bit integers")
        return b"".join((_BODY_COUNTS.pack(self._hex_count, len(self._odd)), self._digests, odd, positions))

    @classmethod
    def from_bytes(cls, body: bytes | memoryview) -> PackedHashes | None:
        """A set from `to_bytes` output, or None if the body is not one (wrong lengths, an odd name
        that is packable, not UTF-8 or out of order, positions that do not fit). The digests stay a
        view of `body`: nothing is copied. Digest order is the writer's (a checksum vouches for it)."""
        view = memoryview(body).cast("B")
        if len(view) < _BODY_COUNTS.size:
            return None
        hex_count, odd_count = _BODY_COUNTS.unpack_from(view)
        at = _BODY_COUNTS.size + hex_count * DIGEST
        if at > len(view):
            return None
        digests = view[_BODY_COUNTS.size : at]
        odd: list[str] = []
        try:
            for _ in range(odd_count):
                (length,) = _ODD_LEN.unpack_from(view, at)
                name = str(view[at + _ODD_LEN.size : at + _ODD_LEN.size + length], "utf-8")
                at += _ODD_LEN.size + length
                if packable(name) or (odd and odd[-1] >= name) or not name:
                    return None
                odd.append(name)
        except (struct.error, UnicodeDecodeError):
            return None
        if len(view) - at != 8 * odd_count:
            return None
        positions = array("q")
        positions.frombytes(view[at:])
        size = hex_count + odd_count
        if any(not (k <= p < size) for k, p in enumerate(positions)) or any(
            a >= b for a, b in pairwise(positions)
        ):
            return None
        return cls(digests if hex_count else b"", tuple(odd), positions)

    @property
    def digests(self) -> bytes | memoryview:
        """The packed part: 32 bytes per hash, sorted."""
        return self._digests

    @property
    def odd(self) -> tuple[str, ...]:
        """The names that are not lowercase hex of 32 bytes, sorted."""
        return self._odd

    @property
    def odd_at(self) -> Sequence[int]:
        """`odd[k]`'s index in the whole sequence."""
        return self._odd_at

    @property
    def nbytes(self) -> int:
        """About what the representation holds in memory (the packed buffer and the odd names)."""
        return len(self._digests) + sum(49 + len(h) for h in self._odd) + 8 * len(self._odd_at)

    # ------------------------------------------------------------------ internals

    def _odd_set(self) -> frozenset[str]:
        return frozenset(self._odd)

    def _digest_bytes(self, index: int) -> bytes:
        return bytes(self._digests[index * DIGEST : (index + 1) * DIGEST])

    def _digest_hex(self, index: int) -> str:
        return self._digests[index * DIGEST : (index + 1) * DIGEST].hex()

    def _bisect_digest(self, digest: bytes) -> int:
        """Where `digest` is or would go among the packed digests."""
        if isinstance(self._digests, bytes):
            return _bisect(self._digests, digest, 0, self._hex_count)
        low, high = 0, self._hex_count  # a view of a cache file: one small copy per probe
        while low < high:
            mid = (low + high) // 2
            if self._digest_bytes(mid) < digest:
                low = mid + 1
            else:
                high = mid
        return low

    def _bisect_hex_text(self, text: str) -> int:
        """How many packed hashes sort before the odd name `text` (compared as text)."""
        low, high = 0, self._hex_count
        while low < high:
            mid = (low + high) // 2
            if self._digest_hex(mid) < text:
                low = mid + 1
            else:
                high = mid
        return low

    def _positions(self, odd: tuple[str, ...]) -> list[int]:
        """Each odd name's index in the merged order: packed hashes before it, plus odd ones."""
        return [self._bisect_hex_text(name) + k for k, name in enumerate(odd)]


def _bisect(digests: bytes, digest: bytes, low: int, high: int) -> int:
    """`bisect_left` of `digest` among the 32-byte records `low..high` of `digests`."""
    while low < high:
        mid = (low + high) // 2
        if digests[mid * DIGEST : mid * DIGEST + DIGEST] < digest:
            low = mid + 1
        else:
            high = mid
    return low
