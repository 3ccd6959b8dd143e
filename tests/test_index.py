"""The must-hold index and the listing at scale: packed candidates, the persisted caches and what may
vouch for them, damaged index lines, stray blob names. Real files throughout."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distfs_pipeline.core import index as index_module
from distfs_pipeline.core import store as store_module
from distfs_pipeline.core.errors import BlobHashInvalid, DistributedValidationFailed, Io
from distfs_pipeline.core.index import INDEX_FILE, SNAPSHOT_FILE, IndexDamage
from distfs_pipeline.core.packed import PackedHashes
from distfs_pipeline.core.store import LocalCasStore, blake3_hex
from distfs_pipeline.pipeline.runner import run_audit
from distfs_pipeline.pipeline.validation import Settings


def age(path: Path, seconds: int = 30) -> None:
    """Move an mtime out of the caches' racy window (2 s)."""
    past = time.time_ns() - seconds * 1_000_000_000
    os.utime(path, ns=(past, past))


def hexes(n: int, salt: str = "") -> list[str]:
    return [blake3_hex(f"{salt}{i}".encode()) for i in range(n)]


ODD_NAMES = ["a", "zz", "with space", "é", "new\nline", "A" * 64, "0" * 63, "f" * 65, "per%cent"]


# --- PackedHashes ----------------------------------------------------------------------------------


@pytest.mark.parametrize("odd", [[], ODD_NAMES, ODD_NAMES[:1]])
def test_packed_is_the_sorted_set_as_a_sequence(odd: list[str]) -> None:
    names = hexes(300) + odd
    shuffled = names * 2
    random.Random(7).shuffle(shuffled)
    expected = sorted(set(names))
    packed = PackedHashes.from_unsorted(shuffled)
    assert len(packed) == len(expected)
    assert list(packed) == expected
    assert [packed[i] for i in range(len(packed))] == expected
    assert [packed[-i] for i in range(1, 4)] == expected[-1:-4:-1]
    assert packed[5:9] == expected[5:9]
    assert all(name in packed for name in expected)
    assert not any(name in packed for name in ["nope", "b" * 64, "", 3])
    with pytest.raises(IndexError):
        packed[len(expected)]
    assert packed.nbytes < 32 * 300 + 200 * len(odd) + 1


@pytest.mark.parametrize("splice_max", [1, 1024])
def test_packed_merge_equals_a_rebuild(splice_max: int) -> None:
    base = PackedHashes.from_unsorted(hexes(200) + ODD_NAMES[:3])
    for extra in (hexes(5, "x"), ["b", "é", *hexes(3, "y")], hexes(300, "z"), hexes(2)):
        merged = base.merged(extra, splice_max)
        assert list(merged) == sorted({*base, *extra})
        assert [merged[i] for i in range(len(merged))] == list(merged)
        base = merged
    assert base.merged(hexes(10)) is base  # nothing new: the same object (a round's cache stays put)


def test_packed_round_trips_without_copies_and_refuses_damaged_bodies() -> None:
    packed = PackedHashes.from_unsorted(hexes(50) + ODD_NAMES)
    body = packed.to_bytes()
    back = PackedHashes.from_bytes(body)
    assert back is not None and list(back) == list(packed)
    assert isinstance(back.digests, memoryview) and back.digests.obj is body  # a view of the file's bytes
    empty = PackedHashes.from_bytes(PackedHashes().to_bytes())
    assert empty is not None and len(empty) == 0
    for damaged in (body[:-1], body + b"\0", body[:10], b"", body[:16] + b"\xff" * (len(body) - 16)):
        assert PackedHashes.from_bytes(damaged) is None


def test_packed_holds_32_bytes_a_hex_hash() -> None:
    """Issue 11: about 3 MiB per 100k hashes (a tuple of str: about 12 MiB)."""
    packed = PackedHashes.from_sorted(sorted(hexes(100_000)))
    assert packed.nbytes == 32 * 100_000
    assert isinstance(packed.digests, bytes) and len(packed.digests) == 3_200_000


# --- damaged index lines (issue 8) -------------------------------------------------------------------


def damage_line(root: Path, content_hash: str, replacement: bytes) -> None:
    """Overwrite, in place, the log line that records `content_hash`."""
    log = (root / INDEX_FILE).read_bytes()
    start = log.index(content_hash.encode())
    end = log.index(b"\n", start)
    (root / INDEX_FILE).write_bytes(log[:start] + replacement + log[end:])


def test_a_damaged_line_that_names_a_hash_keeps_the_blob_a_candidate(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    a, b, c = (store.put_bytes(bytes([n]) * 10) for n in range(3))
    damage_line(tmp_path, b, b.encode() + b" 1\xff0")  # the size is garbled: the hash still stands
    reader = LocalCasStore(tmp_path)
    assert list(reader.candidates()) == sorted([a, b, c])
    assert reader.index_damage() == IndexDamage(kept=1, unreadable=0, first_unreadable_at=-1)
    assert b not in reader.index_sizes()  # no size is believed from a damaged line


def test_an_unreadable_line_is_counted_with_its_offset_and_a_torn_last_line_is_not(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    offset = (tmp_path / INDEX_FILE).read_bytes().index(b.encode())
    damage_line(tmp_path, b, b"\0" * 66)  # zeroed (a crash of the file system, say)
    with open(tmp_path / INDEX_FILE, "ab") as handle:
        handle.write(b"e3b0c4")  # a put still writing (or killed mid-append): no newline yet
    reader = LocalCasStore(tmp_path)
    assert list(reader.candidates()) == [a]
    assert reader.index_damage() == IndexDamage(kept=0, unreadable=1, first_unreadable_at=offset)
    c = store.put_bytes(b"c")  # ends the torn line first: it is now a damaged line like any other
    assert list(reader.candidates()) == sorted([a, c])
    assert reader.index_damage() == IndexDamage(kept=0, unreadable=2, first_unreadable_at=offset)
    assert "2 damaged lines" in reader.index_damage().describe(reader.index_path)


def parsed_sizes(monkeypatch) -> list[int]:
    """Spy: the size of every block the log parser is handed."""
    parsed: list[int] = []
    real = index_module._parse_index_lines
    monkeypatch.setattr(
        index_module, "_parse_index_lines", lambda block: parsed.append(len(block)) or real(block)
    )
    return parsed


def test_damage_counts_survive_the_snapshot_and_the_packed_cache(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "_SNAPSHOT_MIN_BYTES", 2048)
    root, cache = tmp_path / "store", tmp_path / "cache"
    store = LocalCasStore(root)
    hashes = [store.put_bytes(bytes([n]) * 3) for n in range(10)]
    damage_line(root, hashes[2], b"garbage")
    damage_line(root, hashes[4], hashes[4].encode() + b" x")
    for n in range(10, 60):  # the snapshot now covers the damaged lines
        store.put_bytes(bytes([n]) * 3)
    assert (root / SNAPSHOT_FILE).is_file()
    expected = IndexDamage(kept=1, unreadable=1, first_unreadable_at=2 * 67)
    parsed: list[int] = []
    real = index_module._parse_index_lines
    monkeypatch.setattr(
        index_module, "_parse_index_lines", lambda block: parsed.append(len(block)) or real(block)
    )
    via_snapshot = LocalCasStore(root, listing_cache_dir=cache)
    assert hashes[4] in via_snapshot.candidates() and hashes[2] not in via_snapshot.candidates()
    assert via_snapshot.index_damage() == expected
    assert sum(parsed) < (root / INDEX_FILE).stat().st_size / 2  # the damage came from the snapshot
    age(root / INDEX_FILE)
    LocalCasStore(root, listing_cache_dir=cache).candidates()  # rewrites the cache, now not racy
    parsed.clear()
    via_cache = LocalCasStore(root, listing_cache_dir=cache)
    assert hashes[4] in via_cache.candidates()
    assert via_cache.index_damage() == expected and parsed == []


def test_a_run_warns_about_damaged_index_lines(tmp_path: Path, capsys) -> None:
    root = tmp_path / "store"
    store = LocalCasStore(root)
    a = store.put_bytes(b"a" * 100)
    store.put_bytes(b"b" * 100)
    damage_line(root, a, b"torn")
    settings = Settings.model_validate(
        {"runtime": {"storage_root": str(root), "rounds": 2, "progress": "never", "epoch_rounds": 5}}
    )
    summary = run_audit(settings, tmp_path / "run")
    assert summary["blob_count"] == 1
    err = capsys.readouterr().err
    assert "must_hold.idx has 1 damaged lines" in err and "1 unreadable (the first at byte 0)" in err
    assert "put the affected blobs again" in err


# --- the packed index cache outside the store --------------------------------------------------------


def indexed_store(root: Path, n: int = 20) -> list[str]:
    store = LocalCasStore(root)
    hashes = [store.put_bytes(b"blob %d" % i) for i in range(n)]
    age(root / INDEX_FILE)
    return sorted(hashes)


def index_reads(monkeypatch) -> list[int]:
    """Spy: the offset of every read of the index log."""
    reads: list[int] = []
    real = index_module.read_own

    def spy(path, cap, offset=0):
        if str(path).endswith(INDEX_FILE):
            reads.append(offset)
        return real(path, cap, offset)

    monkeypatch.setattr(index_module, "read_own", spy)
    return reads


def test_an_unchanged_index_loads_from_the_cache_without_reading_the_log(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = indexed_store(root)
    before = sorted(p.name for p in root.rglob("*"))
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == hashes
    assert sorted(p.name for p in root.rglob("*")) == before  # the cache is not in the store
    reads = index_reads(monkeypatch)
    reader = LocalCasStore(root, listing_cache_dir=cache)
    assert list(reader.candidates()) == hashes
    assert reads == []
    assert isinstance(reader.candidates(), PackedHashes)


def test_an_appended_index_hashes_the_cached_prefix_and_parses_only_the_tail(
    tmp_path: Path, monkeypatch
) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    indexed_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    size = (root / INDEX_FILE).stat().st_size
    extra = LocalCasStore(root).put_bytes(b"one more")
    parsed: list[int] = []
    real = index_module._parse_index_lines
    monkeypatch.setattr(
        index_module, "_parse_index_lines", lambda block: parsed.append(len(block)) or real(block)
    )
    reader = LocalCasStore(root, listing_cache_dir=cache)
    assert extra in reader.candidates() and len(reader.candidates()) == 21
    assert parsed == [(root / INDEX_FILE).stat().st_size - size]


@pytest.mark.parametrize("when", ["racy", "aged"])
def test_a_same_size_rewrite_that_keeps_the_stat_is_caught(tmp_path: Path, when: str) -> None:
    """A cache taken while the log was racy, or older than the age bound, is checked by content."""
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = indexed_store(root)
    index = root / INDEX_FILE
    st = index.stat()
    if when == "racy":
        os.utime(index, ns=(time.time_ns(), time.time_ns()))
        st = index.stat()
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    other = blake3_hex(b"other")
    with open(index, "r+b") as handle:  # in place: same inode, same size
        handle.write(index.read_bytes().replace(hashes[0].encode(), other.encode()))
    os.utime(index, ns=(st.st_atime_ns, st.st_mtime_ns))
    if when == "racy":
        reader = LocalCasStore(root, listing_cache_dir=cache)
    else:
        trusting = LocalCasStore(root, listing_cache_dir=cache)
        assert hashes[0] in trusting.candidates()  # within the bound, the stat vouches (documented)
        reader = LocalCasStore(root, listing_cache_dir=cache, cache_max_age_s=0)
    assert list(reader.candidates()) == sorted([other, *hashes[1:]])


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "other log"])
def test_a_damaged_or_foreign_index_cache_is_ignored(tmp_path: Path, damage: str) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = indexed_store(root)
    reader = LocalCasStore(root, listing_cache_dir=cache)
    reader.candidates()
    path = reader.must_hold.cache_path
    assert path is not None and path.is_file()
    raw = bytearray(path.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 1
    elif damage == "truncate":
        raw = raw[:-7]
    elif damage == "empty":
        raw = bytearray()
    path.write_bytes(bytes(raw))
    if damage == "other log":  # a new inode: the cache describes a file that is gone
        log = (root / INDEX_FILE).read_bytes()
        (root / "new").write_bytes(log.replace(hashes[3].encode(), blake3_hex(b"x").encode()))
        os.replace(root / "new", root / INDEX_FILE)
        age(root / INDEX_FILE)
        hashes = sorted([blake3_hex(b"x"), *hashes[:3], *hashes[4:]])
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == hashes


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_a_planted_cache_file_is_neither_followed_nor_blocked_on(tmp_path: Path, kind: str, caplog) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = indexed_store(root)
    cache.mkdir()
    reader = LocalCasStore(root, listing_cache_dir=cache)
    path = reader.must_hold.cache_path
    assert path is not None
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    if kind == "symlink":
        path.symlink_to(victim)
    else:
        os.mkfifo(path)
    assert list(reader.candidates()) == hashes  # read: refused and ignored, without blocking
    assert victim.read_bytes() == b"precious"  # write: refused (a warning), never through the link
    assert "index cache write" in caplog.text


def test_a_fifo_at_the_index_fails_the_round_instead_of_hanging(tmp_path: Path) -> None:
    indexed_store(tmp_path, 2)
    os.unlink(tmp_path / INDEX_FILE)
    os.mkfifo(tmp_path / INDEX_FILE)
    code = (
        "import sys; from distfs_pipeline.core.store import LocalCasStore\n"
        "try:\n    LocalCasStore(sys.argv[1]).candidates()\n"
        "except Exception as e:\n    print(type(e).__name__, e)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=60, env=env
    )
    assert out.stdout.startswith("Io read index") and "FIFO" in out.stdout


# --- the listing cache: packed, and bounded in time --------------------------------------------------


def plain_store(root: Path, n: int = 5) -> list[str]:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    for i in range(n):
        (blobs / f"{blake3_hex(b'%d' % i)}.blob").write_bytes(b"%d" % i)
    age(blobs)
    return sorted(blake3_hex(b"%d" % i) for i in range(n))


def listings(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = LocalCasStore.list_blob_hashes
    monkeypatch.setattr(LocalCasStore, "list_blob_hashes", lambda self: calls.append(1) or real(self))
    return calls


def test_the_persisted_listing_loads_packed_from_the_file(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    calls = listings(monkeypatch)
    loaded = LocalCasStore(root, listing_cache_dir=cache).candidates()
    assert calls == [] and list(loaded) == hashes
    assert isinstance(loaded, PackedHashes) and isinstance(loaded.digests, memoryview)


def test_no_listing_vouches_for_longer_than_the_age_bound(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    calls = listings(monkeypatch)
    assert list(LocalCasStore(root, listing_cache_dir=cache, cache_max_age_s=0).candidates()) == hashes
    assert len(calls) == 1  # persisted, but aged: scanned again
    in_memory = LocalCasStore(root, cache_max_age_s=0)
    in_memory.candidates()
    in_memory.candidates()
    assert len(calls) == 3  # in memory too: a dir's mtime can be set back, so the stat alone expires
    trusting = LocalCasStore(root)
    trusting.candidates()
    trusting.candidates()
    assert len(calls) == 4
    # A listing persisted "in the future" (a clock set back since) is not trusted either.
    path = trusting.listing_cache_path or LocalCasStore(root, listing_cache_dir=cache).listing_cache_path
    assert path is not None
    st = os.stat(root / "blobs")
    future = time.time_ns() + 3_600_000_000_000
    store_module._save_persisted_listing(path, st.st_mtime_ns, st.st_ino, st.st_dev, future, hashes)
    assert (
        LocalCasStore(root, listing_cache_dir=cache)._load_persisted_listing(
            path, st.st_mtime_ns, st.st_ino, st.st_dev
        )
        is None
    )


# --- stray names in blobs/ ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "error", "shown"),
    [
        (b"\xff\x01.blob", DistributedValidationFailed, "\\xff\\x01.blob"),
        (b"a..b.blob", BlobHashInvalid, "a..b.blob"),
        (b"back\\slash.blob", BlobHashInvalid, "back\\\\slash.blob"),
    ],
)
def test_a_stray_name_is_escaped_and_the_error_says_what_to_do(
    tmp_path: Path, name: bytes, error: type, shown: str
) -> None:
    plain_store(tmp_path, 1)
    os.close(os.open(os.path.join(os.fsencode(tmp_path / "blobs"), name), os.O_CREAT | os.O_WRONLY))
    with pytest.raises(error) as raised:
        LocalCasStore(tmp_path).candidates()
    message = str(raised.value)
    assert f"{tmp_path}/blobs/{shown}" in message
    assert f"move the file out of {tmp_path}/blobs" in message
    assert "\ufffd" not in message and message.isprintable()


def test_the_index_read_error_names_the_file(tmp_path: Path) -> None:
    indexed_store(tmp_path, 2)
    target = tmp_path / "elsewhere"
    os.replace(tmp_path / INDEX_FILE, target)
    (tmp_path / INDEX_FILE).symlink_to(target)
    with pytest.raises(Io, match=f"read index {tmp_path / INDEX_FILE}"):
        LocalCasStore(tmp_path).candidates()


def test_a_put_never_appends_through_a_planted_index_link(tmp_path: Path) -> None:
    """Root safety: a symlink planted at `must_hold.idx` is refused by `put`, its target untouched."""
    store = LocalCasStore(tmp_path / "store")
    store.put_bytes(b"first blob")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    store.index_path.unlink()
    store.index_path.symlink_to(victim)
    with pytest.raises(Io, match="index"):
        store.put_bytes(b"second blob")
    assert victim.read_bytes() == b"precious\n" and store.index_path.is_symlink()


def test_a_link_planted_as_the_snapshot_is_left_alone(tmp_path: Path, monkeypatch) -> None:
    """The snapshot is rewritten through safefile: a link in its place is neither followed nor
    replaced (the put stands; the snapshot, a cache, is only not written)."""
    monkeypatch.setattr(index_module, "_SNAPSHOT_MIN_BYTES", 256)
    root = tmp_path / "store"
    store = LocalCasStore(root)
    store.put_bytes(b"first")
    victim = tmp_path / "victim"
    victim.write_bytes(b"not yours")
    (root / SNAPSHOT_FILE).symlink_to(victim)
    hashes = [store.put_bytes(bytes([n]) * 3) for n in range(10)]
    assert (root / SNAPSHOT_FILE).is_symlink() and victim.read_bytes() == b"not yours"
    assert set(hashes) <= set(LocalCasStore(root).candidates())
