"""Whose history is this: the identity of a state file, kept beside it in `<state>.id`.

Why: upstream's state file holds 14 counters and no name, so a state, a round log or an epoch log of
one node (or one store, or one world) could silently be continued by a run for another. The state
file must stay upstream's exact format, so the identity lives in a small sidecar of ours, created
with the state: world, node, store root and a random `state_id`. Every round and epoch record
carries the `state_id` (round records as their first key, so even a torn line names its owner),
recovery cuts or rolls forward only records of this id, and a run whose world, node or store differ
from the identity is refused with one line.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distfs_pipeline.core import safefile
from distfs_pipeline.core.errors import UsageError

IDENTITY_VERSION = 1
IDENTITY_SUFFIX = ".id"
_READ_CAP = 64 * 1024
_KEYS = ("state_id", "world_id", "node_id", "store_root")


@dataclass(frozen=True)
class Identity:
    """Who a state file belongs to. `state_id` is random, made once when the state is created."""

    state_id: str
    world_id: str
    node_id: str
    store_root: str
    created_unix_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"version": IDENTITY_VERSION, **asdict(self)}


def identity_path(state_path: str | os.PathLike[str]) -> Path:
    path = Path(state_path)
    return path.with_name(path.name + IDENTITY_SUFFIX)


def new_identity(world_id: str, node_id: str, store_root: str) -> Identity:
    return Identity(secrets.token_hex(16), world_id, node_id, store_root, time.time_ns() // 1_000_000)


def load_identity(state_path: str | os.PathLike[str]) -> Identity | None:
    """The identity beside `state_path`, or None when it has none (a new or an upstream state).

    A sidecar that cannot be read or is not ours is a `UsageError` naming it (left untouched).
    """
    path = identity_path(state_path)
    try:
        data = safefile.loads_strict(raw) if (raw := safefile.read_optional(path, _READ_CAP)) else None
    except OSError as err:
        raise UsageError(f"identity file {path}: cannot read: {safefile.describe(err)}") from None
    except ValueError as err:
        raise UsageError(f"identity file {path}: {err}") from None
    if data is None:
        return None
    if not isinstance(data, dict) or data.get("version") != IDENTITY_VERSION:
        raise UsageError(f"identity file {path}: not a version {IDENTITY_VERSION} identity")
    if not all(isinstance(data.get(key), str) and data[key] for key in _KEYS):
        raise UsageError(f"identity file {path}: needs non-empty strings {', '.join(_KEYS)}")
    created = data.get("created_unix_ms", 0)
    if not isinstance(created, int) or isinstance(created, bool):
        raise UsageError(f"identity file {path}: created_unix_ms is not an integer")
    return Identity(*(data[key] for key in _KEYS), created_unix_ms=created)


def save_identity(state_path: str | os.PathLike[str], identity: Identity) -> None:
    path = identity_path(state_path)
    data = (json.dumps(identity.to_dict(), indent=2) + "\n").encode("utf-8")
    try:
        safefile.write_atomic(path, data)
    except OSError as err:
        raise UsageError(f"identity file {path}: cannot write: {safefile.describe(err)}") from None


def ensure_identity(state_path: Path, world_id: str, node_id: str, store_root: str) -> tuple[Identity, bool]:
    """The state's identity, checked against this run's world, node and store; made if missing.

    Returns (identity, created). A state without a sidecar (new, or upstream's) is adopted by this
    run. A mismatch is one line naming both sides and what to do: never continue another's history.
    """
    found = load_identity(state_path)
    if found is None:
        identity = new_identity(world_id, node_id, store_root)
        save_identity(state_path, identity)
        return identity, True
    for key, ours in (("world_id", world_id), ("node_id", node_id), ("store_root", store_root)):
        theirs = getattr(found, key)
        if theirs != ours:
            raise UsageError(
                f"state file {state_path} belongs to {key} {theirs!r} (see {identity_path(state_path)}), "
                f"not runtime.{'storage_root' if key == 'store_root' else key} {ours!r}: "
                "use another runtime.state_path for this one"
            )
    return found, False


def check_owner(record: dict[str, Any], identity: Identity, what: str) -> None:
    """Refuse a record (round, epoch or WAL pointer) that names another state's id."""
    theirs = record.get("state_id")
    if theirs != identity.state_id:
        raise UsageError(
            f"{what} belongs to state id {theirs!r}, not {identity.state_id!r} "
            f"({identity.node_id} in {identity.world_id}): it is another state's history; "
            "use another run dir or runtime.state_path"
        )
