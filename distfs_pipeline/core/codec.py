"""The blob encodings of upstream's store (SPEC 2.1): raw bytes, and `O7CBLOB1` compressed blobs.

Why a module of its own: the encoding is a fact of the on-disk format shared by the store (`put`,
`get`) and the chunked reader (which decodes only a prefix), and upstream's read rules have to be
exactly the same in both places.

`O7CBLOB1` (current upstream, eng-cc/oasis7 since `d81a341a`): `b"O7CBLOB1"` (8 bytes), the raw length
as u64 little-endian (8), the content hash as ASCII (64), then zstd frames of the bytes (level 3).
`put` writes it only for blobs of at least 1 KiB, and only when strictly shorter than the raw bytes.

Upstream's `get` returns the decoded bytes only when every one of these holds, else the file's bytes
unchanged (so damage then fails the content hash as `BlobHashMismatch`):

- the file is at least 80 bytes long and starts with the magic;
- bytes 16..80 equal the requested content hash;
- zstd decoding of bytes 80.. succeeds (`zstd::stream::decode_all`: every frame complete, no trailing
  garbage; an empty payload is an incomplete frame);
- the decoded length equals the header's raw length.

`python-zstandard`'s stream reader does not report a frame cut short at the end of its input (it
returns what it decoded), so `_FrameWalker` follows the frame and block headers (RFC 8878) of the
bytes the decoder consumes and tells whether the input ended on a frame boundary, as the Rust
decoder's "incomplete frame" check does. The walker only reads headers; libzstd decodes.

Decoding streams and stops as soon as the output exceeds the header's length, so a hostile file
(a "decompression bomb") costs at most the declared length plus one read of memory.
"""

from __future__ import annotations

from collections.abc import Callable

import zstandard

MAGIC = b"O7CBLOB1"
HEADER_LEN = 80  # magic (8) + raw length u64 LE (8) + content hash ASCII (64)
HASH_FIELD = slice(16, HEADER_LEN)
MIN_COMPRESS_LEN = 1024
ZSTD_LEVEL = 3
_READ_STEP = 1 << 20
_ZSTD_MAGIC = 0xFD2FB528
_SKIPPABLE_MASK, _SKIPPABLE_MAGIC = 0xFFFFFFF0, 0x184D2A50
_COMPRESSOR = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
_DECOMPRESSOR = zstandard.ZstdDecompressor()


class DecodeError(Exception):
    """The payload is not a complete, valid zstd stream (upstream then reads the file raw)."""


def hash_field(content_hash: str) -> bytes:
    """The content hash as the header stores it (UTF-8 bytes; only 64 of them make a valid header)."""
    return content_hash.encode("utf-8", "surrogateescape")


def encode_compressed(content_hash: str, data: bytes | memoryview) -> bytes:
    """The `O7CBLOB1` encoding of `data`, whatever its size (`encode` decides whether to use it)."""
    field = hash_field(content_hash)
    if len(field) != HEADER_LEN - 16:
        raise ValueError(f"O7CBLOB1 needs a 64-byte content hash, got {len(field)} bytes")
    return MAGIC + len(data).to_bytes(8, "little") + field + _COMPRESSOR.compress(data)


def encode(content_hash: str, data: bytes) -> bytes:
    """What upstream's `put` writes: the compressed encoding when `len >= 1024` and it is strictly
    shorter than the raw bytes, else the raw bytes."""
    if len(data) < MIN_COMPRESS_LEN or len(hash_field(content_hash)) != HEADER_LEN - 16:
        return data
    encoded = encode_compressed(content_hash, data)
    return encoded if len(encoded) < len(data) else data


def header_raw_len(head: bytes | memoryview, content_hash: str, file_len: int) -> int | None:
    """The raw length the header declares, when `head` (the file's first bytes) is an `O7CBLOB1`
    header for `content_hash` in a file of `file_len` bytes; None when upstream reads the file raw."""
    if file_len < HEADER_LEN or len(head) < HEADER_LEN or bytes(head[:8]) != MAGIC:
        return None
    if bytes(head[HASH_FIELD]) != hash_field(content_hash):
        return None
    return int.from_bytes(head[8:16], "little")


def decode(file_bytes: bytes, content_hash: str) -> bytes:
    """Upstream's `get` on a file's bytes: the decoded blob, or the file's bytes unchanged."""
    raw_len = header_raw_len(file_bytes, content_hash, len(file_bytes))
    if raw_len is None:
        return file_bytes
    payload = memoryview(file_bytes)[HEADER_LEN:]
    offset = 0

    def read(n: int) -> bytes:
        nonlocal offset
        piece = bytes(payload[offset : offset + n])
        offset += len(piece)
        return piece

    decoded = bytearray()
    try:
        for piece in decode_stream(read, raw_len):
            decoded += piece
    except DecodeError:
        return file_bytes
    return bytes(decoded)


def decode_stream(read: Callable[[int], bytes], raw_len: int) -> _Decoded:
    """Iterate the decoded bytes of the payload `read` returns (b"" at its end), checked as upstream
    checks it: `DecodeError` (raised by the iteration) unless the stream is complete, valid and
    exactly `raw_len` bytes long. Stops early (with the error) once the output exceeds `raw_len`."""
    return _Decoded(read, raw_len)


class _Decoded:
    """The iterator behind `decode_stream`."""

    def __init__(self, read: Callable[[int], bytes], raw_len: int) -> None:
        self._walker = _FrameWalker()
        self._source = _WalkedSource(read, self._walker)
        self._reader = _DECOMPRESSOR.stream_reader(self._source, read_across_frames=True, closefd=False)
        self._raw_len = raw_len
        self._produced = 0
        self._done = False

    def __iter__(self) -> _Decoded:
        return self

    def __next__(self) -> bytes:
        if self._done:
            raise StopIteration
        try:
            piece = self._reader.read(min(_READ_STEP, self._raw_len - self._produced + 1))
        except zstandard.ZstdError as exc:
            self._done = True
            raise DecodeError(f"zstd: {exc}") from None
        if piece:
            self._produced += len(piece)
            if self._produced > self._raw_len:
                self._done = True
                raise DecodeError(f"decoded more than the header's {self._raw_len} bytes")
            return piece
        self._done = True
        if not self._walker.complete():
            raise DecodeError("incomplete zstd frame")
        if self._produced != self._raw_len:
            raise DecodeError(f"decoded {self._produced} bytes, the header says {self._raw_len}")
        raise StopIteration


def stream_prefix(
    read: Callable[[int], bytes], read_size: int = 32 * 1024
) -> zstandard.ZstdDecompressionReader:
    """A decompressing reader over a payload already known to decode (a verified blob's bytes):
    reading `n` bytes decodes only up to `n` (plus what one `read_size` of input holds), never the
    rest of the stream."""
    return _DECOMPRESSOR.stream_reader(
        _Source(read), read_size=read_size, read_across_frames=True, closefd=False
    )


class _Source:
    """The minimal file object `stream_reader` reads from, over a `read(n)` callable."""

    def __init__(self, read: Callable[[int], bytes]) -> None:
        self._read = read

    def read(self, n: int = -1) -> bytes:
        return self._read(_READ_STEP if n is None or n < 0 else n)


class _WalkedSource(_Source):
    """A `_Source` whose bytes also go through a `_FrameWalker`."""

    def __init__(self, read: Callable[[int], bytes], walker: _FrameWalker) -> None:
        super().__init__(read)
        self._walker = walker

    def read(self, n: int = -1) -> bytes:
        piece = super().read(n)
        self._walker.feed(piece)
        return piece


class _FrameWalker:
    """Follows zstd frame and block headers over a byte stream to tell whether it ended on a frame
    boundary after at least one frame (RFC 8878 sections 3.1.1 and 3.1.2). Malformed headers are
    left to libzstd, which rejects them while decoding; the walker then only says "incomplete"."""

    def __init__(self) -> None:
        self._state, self._need = "magic", 4  # the header field wanted next, and its length
        self._buffer = bytearray()
        self._skip = 0  # bytes to pass over before the next header field
        self._closing = False  # the frame ends when `_skip` reaches 0
        self._frames = 0
        self._checksum = False
        self._broken = False

    def complete(self) -> bool:
        """Whether the bytes fed so far are whole frames, at least one."""
        idle = self._state == "magic" and not self._buffer and not self._skip and not self._closing
        return idle and self._frames > 0 and not self._broken

    def feed(self, data: bytes) -> None:
        view, pos = memoryview(data), 0
        while pos < len(view) and not self._broken:
            if self._skip:
                step = min(self._skip, len(view) - pos)
                self._skip -= step
                pos += step
                if not self._skip:
                    self._close_frame()
                continue
            take = min(self._need - len(self._buffer), len(view) - pos)
            self._buffer += view[pos : pos + take]
            pos += take
            if len(self._buffer) == self._need:
                field, self._buffer = bytes(self._buffer), bytearray()
                self._advance(field)

    def _close_frame(self) -> None:
        if self._closing:
            self._frames += 1
            self._closing = False

    def _end_frame_after(self, skip: int) -> None:
        """The frame ends once `skip` more bytes have passed; then a new frame's magic is due."""
        self._state, self._need = "magic", 4
        self._skip, self._closing = skip, True
        if not skip:
            self._close_frame()

    def _advance(self, field: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & _SKIPPABLE_MASK == _SKIPPABLE_MAGIC:
                self._state, self._need = "skippable", 4
            else:
                self._broken = True
        elif state == "skippable":
            self._end_frame_after(int.from_bytes(field, "little"))
        elif state == "descriptor":
            fhd = field[0]
            single_segment = (fhd >> 5) & 1
            fcs = (0, 2, 4, 8)[fhd >> 6] or single_segment
            self._checksum = bool(fhd & 0x04)
            self._skip = (0 if single_segment else 1) + (0, 1, 2, 4)[fhd & 0x03] + fcs
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            last, kind, size = header & 1, (header >> 1) & 3, header >> 3
            if kind == 3:
                self._broken = True
            elif last:
                self._end_frame_after((1 if kind == 1 else size) + (4 if self._checksum else 0))
            else:
                self._skip = 1 if kind == 1 else size
