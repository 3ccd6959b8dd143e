"""Error types.

`WorldError` mirrors upstream's `oasis7_distfs::WorldError` variants one class each, because the
failure classification (SPEC 2.7) is a function of the variant. `UsageError` is ours: bad input from
a user (a flag, a config key, a file), which the entry point turns into one line and exit status 2.
"""

from __future__ import annotations


class WorldError(Exception):
    """Base of the upstream error variants."""


class NetworkProtocolUnavailable(WorldError):
    def __init__(self, protocol: str) -> None:
        super().__init__(f"network protocol unavailable: {protocol}")
        self.protocol = protocol


class NetworkRequestFailed(WorldError):
    def __init__(self, code: str, message: str, retryable: bool = False) -> None:
        super().__init__(f"network request failed: code={code} message={message}")
        self.code, self.message, self.retryable = code, message, retryable


class DistributedValidationFailed(WorldError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BlobNotFound(WorldError):
    def __init__(self, content_hash: str) -> None:
        super().__init__(f"blob not found: {content_hash}")
        self.content_hash = content_hash


class BlobHashMismatch(WorldError):
    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"blob hash mismatch: expected={expected} actual={actual}")
        self.expected, self.actual = expected, actual


class BlobHashInvalid(WorldError):
    def __init__(self, content_hash: str) -> None:
        super().__init__(f"blob hash invalid: {content_hash!r}")
        self.content_hash = content_hash


class SignatureKeyInvalid(WorldError):
    def __init__(self, message: str = "signature key invalid") -> None:
        super().__init__(message)


class Io(WorldError):
    """`WorldError::Io(String)`: any I/O failure while reading or writing the store."""


class Serde(WorldError):
    """`WorldError::Serde(String)`: a (de)serialization failure."""


class UsageError(Exception):
    """Bad input from the user. The message names the flag, key or file; the CLI exits 2."""
