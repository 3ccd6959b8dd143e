"""Adopting a plain upstream store: the index is written, no blob is touched, a lost blob then fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distfs_pipeline.core.index import INDEX_FILE
from distfs_pipeline.core.store import LocalCasStore, blake3_hex
from distfs_pipeline.ops import adopt
from distfs_pipeline.pipeline.runner import run_audit
from distfs_pipeline.pipeline.validation import Settings

ROOT = Path(__file__).resolve().parent.parent


def upstream_store(root: Path, blobs: int = 5) -> list[str]:
    """A store as upstream writes it: `blobs/<hash>.blob` files, no index of ours."""
    (root / "blobs").mkdir(parents=True)
    hashes = []
    for i in range(blobs):
        data = f"upstream blob {i} ".encode() * (i * 300 + 1)
        content_hash = blake3_hex(data)
        (root / "blobs" / f"{content_hash}.blob").write_bytes(data)
        hashes.append(content_hash)
    return sorted(hashes)


def tree(root: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file under root with its bytes, mtime and inode."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            st = path.stat()
            out[str(path.relative_to(root))] = (path.read_bytes(), st.st_mtime_ns, st.st_ino)
    return out


def audit(root: Path, run_dir: Path, blobs: int) -> dict[str, Any]:
    settings = Settings.model_validate(
        {
            "runtime": {"storage_root": str(root), "rounds": 1, "progress": "never"},
            "probe": {"challenges_per_tick": blobs},
        }
    )
    return run_audit(settings, run_dir)


def test_adoption_records_every_blob_and_changes_nothing_else(tmp_path: Path) -> None:
    root = tmp_path / "store"
    hashes = upstream_store(root)
    before = tree(root)
    assert adopt.main(["--store", str(root), "--quiet"]) == 0
    after = tree(root)
    assert set(after) - set(before) == {INDEX_FILE}  # the index is the only file added
    assert {k: v for k, v in after.items() if k != INDEX_FILE} == before  # not a byte, not an mtime
    store = LocalCasStore(root)
    assert store.has_index() and list(store.candidates()) == hashes
    assert store.index_sizes() == {h: len(store.get(h)) for h in hashes}
    assert adopt.main(["--store", str(root), "--quiet"]) == 0  # idempotent: nothing new to record
    assert (root / INDEX_FILE).read_text().count("\n") == len(hashes)


def test_after_adoption_a_lost_blob_fails_as_missing_sample(tmp_path: Path) -> None:
    """Without adoption the lost blob silently leaves the audit; with it, it fails."""
    plain, adopted = tmp_path / "plain", tmp_path / "adopted"
    for root in (plain, adopted):
        upstream_store(root)
    assert adopt.main(["--store", str(adopted), "--quiet"]) == 0
    for root in (plain, adopted):
        victim = sorted((root / "blobs").iterdir())[0]
        victim.unlink()
    unnoticed = audit(plain, tmp_path / "run-plain", 5)
    noticed = audit(adopted, tmp_path / "run-adopted", 5)
    assert unnoticed["failed_checks"] == 0 and unnoticed["blob_count"] == 4
    assert noticed["failure_reasons"] == {"MISSING_SAMPLE": 1} and noticed["blob_count"] == 5


def test_blobs_that_do_not_verify_are_listed_and_recorded_unless_only_verified(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "store"
    hashes = upstream_store(root)
    rotten = root / "blobs" / f"{hashes[1]}.blob"
    data = bytearray(rotten.read_bytes())
    data[0] ^= 1
    rotten.write_bytes(bytes(data))
    unreadable = root / "blobs" / f"{hashes[2]}.blob"
    unreadable.unlink()
    unreadable.mkdir()  # not listed by upstream's rules (a directory): not adopted either
    assert adopt.main(["--store", str(root), "--json", "--quiet"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert (result["listed"], result["verified"], result["recorded"]) == (4, 3, 4)
    assert [(b["content_hash"], b["reason"], b["recorded"]) for b in result["did_not_verify"]] == [
        (hashes[1], "HASH_MISMATCH", True)
    ]
    assert hashes[1] in LocalCasStore(root).candidates()  # its checks will fail, not vanish
    summary = audit(root, tmp_path / "run", 5)
    assert summary["failure_reasons"] == {"HASH_MISMATCH": 1}

    other = tmp_path / "other"
    hashes = upstream_store(other)
    (other / "blobs" / f"{hashes[0]}.blob").write_bytes(b"not the content")
    assert adopt.main(["--store", str(other), "--only-verified", "--quiet"]) == 1
    text = capsys.readouterr().out
    assert f"{hashes[0]}  HASH_MISMATCH  not recorded (--only-verified)" in text
    assert hashes[0] not in LocalCasStore(other).candidates()


def test_a_store_with_an_index_gets_only_the_blobs_it_lacks(tmp_path: Path) -> None:
    root = tmp_path / "store"
    store = LocalCasStore(root)
    first = store.put_bytes(b"put through our store")
    index_before = (root / INDEX_FILE).read_bytes()
    copied = blake3_hex(b"copied in by upstream")
    (root / "blobs" / f"{copied}.blob").write_bytes(b"copied in by upstream")
    assert adopt.main(["--store", str(root), "--quiet"]) == 0
    assert (root / INDEX_FILE).read_bytes() == index_before + f"{copied} 21\n".encode()
    assert sorted(LocalCasStore(root).candidates()) == sorted([first, copied])


def test_a_planted_index_link_is_refused_not_followed(tmp_path: Path) -> None:
    root = tmp_path / "store"
    upstream_store(root)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (root / INDEX_FILE).symlink_to(victim)
    assert adopt.main(["--store", str(root), "--quiet"]) == 2
    assert victim.read_text() == "precious\n"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_text("x"), "is not a directory"),
        (lambda p: p.mkdir(), "has no blobs/ directory"),
    ],
)
def test_a_root_that_is_not_a_store_is_one_usage_line(tmp_path: Path, make: Any, message: str) -> None:
    root = tmp_path / "root"
    make(root)
    done = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline.ops.adopt", "--store", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and message in done.stderr
    assert not (tmp_path / "root" / INDEX_FILE).exists()


def test_progress_is_shown_on_stderr_when_not_quiet(tmp_path: Path) -> None:
    root = tmp_path / "store"
    upstream_store(root, blobs=3)
    done = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline.ops.adopt", "--store", str(root)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "adopt: verified 3/3 blobs" in done.stderr
    assert "every blob verified" in done.stdout
