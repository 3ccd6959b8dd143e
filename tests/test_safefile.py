"""The shared safe-file rules, on real files: links, FIFOs, hard links, caps, strict JSON."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from distfs_pipeline.core import safefile


def test_append_refuses_symlink_and_keeps_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "log").symlink_to(victim)
    with pytest.raises(safefile.UnsafeFileError, match="symbolic link"):
        safefile.open_append(tmp_path / "log")
    assert victim.read_bytes() == b"precious"


def test_append_refuses_hard_link(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    os.link(victim, tmp_path / "log")
    with pytest.raises(safefile.UnsafeFileError, match="hard links"):
        safefile.open_append(tmp_path / "log")
    assert victim.read_bytes() == b"precious"


def test_read_never_blocks_on_fifo(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(safefile.UnsafeFileError, match="FIFO"):
        safefile.read_capped(tmp_path / "fifo")
    with pytest.raises(safefile.UnsafeFileError, match="FIFO"):
        safefile.open_append(tmp_path / "fifo")


def test_read_cap(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * 100)
    assert safefile.read_capped(tmp_path / "big", cap=100) == b"x" * 100
    with pytest.raises(OSError, match="larger than"):
        safefile.read_capped(tmp_path / "big", cap=99)
    assert safefile.read_optional(tmp_path / "absent") is None


def test_write_atomic_refuses_planted_symlink_target(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    (tmp_path / "state.json").symlink_to(victim)
    with pytest.raises(safefile.UnsafeFileError):
        safefile.write_atomic(tmp_path / "state.json", b"new")
    assert victim.read_bytes() == b"precious"
    assert (tmp_path / "state.json").is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json", "victim"]


def test_write_atomic_replaces_regular_file(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    target.write_bytes(b"old")
    safefile.write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_temp_names_are_unique_and_exclusive(tmp_path: Path) -> None:
    first, second = safefile.unique_temp(tmp_path / "a"), safefile.unique_temp(tmp_path / "a")
    assert first != second
    first.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(FileExistsError):
        safefile.create_exclusive(first)
    assert not (tmp_path / "elsewhere").exists()


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b'{"a": 1, "a": 2}', "duplicate field `a`"),
        (b"\xff\xfe", "invalid UTF-8"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b"1" * 5000, "invalid JSON"),
        (b"NaN", "not JSON"),
        (b'{"a": ', "invalid JSON"),
    ],
)
def test_loads_strict_refuses(raw: bytes, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        safefile.loads_strict(raw)


def test_loads_strict_accepts_plain_json() -> None:
    assert safefile.loads_strict(b'{"a": [1, 2, {"b": null}]}') == {"a": [1, 2, {"b": None}]}


def test_is_inside_resolves_links(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (store / "sub").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(store / "sub")
    assert safefile.is_inside(store, store) and safefile.is_inside(tmp_path / "alias" / "x", store)
    assert not safefile.is_inside(tmp_path / "storex", store)
    assert not safefile.is_inside(tmp_path, store)
