"""LocalCasStore: upstream `lib.rs` CAS vectors and layout rules, then our must-hold index."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from distfs_pipeline.core import index as index_module
from distfs_pipeline.core import store as store_module
from distfs_pipeline.core.errors import (
    BlobHashInvalid,
    BlobHashMismatch,
    BlobNotFound,
    DistributedValidationFailed,
    Io,
    Serde,
)
from distfs_pipeline.core.index import INDEX_FILE, SNAPSHOT_FILE
from distfs_pipeline.core.store import LocalCasStore, blake3_hex, validate_hash


def make_blob(n: int) -> bytes:
    return bytes((i % 251) + 3 for i in range(n))


def age_dir(path: Path) -> None:
    """Move a directory's mtime into the past, out of the racy window of the listing cache."""
    past = time.time_ns() - 10_000_000_000
    os.utime(path, ns=(past, past))


# --- hashing and validation ------------------------------------------------------------------------


def test_blake3_hex_known_vector() -> None:
    assert blake3_hex(b"") == "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"


@pytest.mark.parametrize("bad", ["", "a/b", "/abs", "a\\b", "..", "a..b", "x.."])
def test_validate_hash_rejects_only_upstream_cases(bad: str) -> None:
    with pytest.raises(BlobHashInvalid):
        validate_hash(bad)


@pytest.mark.parametrize("good", ["abc", "a.b", "NOT-HEX", " ", "x.y.z", "é"])
def test_validate_hash_has_no_hex_or_length_check(good: str) -> None:
    validate_hash(good)


def test_unknown_hash_algorithm_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="hash_algorithm"):
        LocalCasStore(tmp_path, "md5")


# --- upstream lib.rs vectors -----------------------------------------------------------------------


def test_cas_roundtrip_and_pin(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path / "cas")
    data = b"hello distfs"
    content_hash = store.put_bytes(data)
    assert content_hash == blake3_hex(data)
    assert store.has(content_hash)
    assert store.get(content_hash) == data
    store.pin(content_hash)
    assert store.is_pinned(content_hash)
    pins_text = (tmp_path / "cas" / "pins.json").read_text()
    assert json.loads(pins_text) == {"pins": [content_hash]}
    # `write_json_atomic` is `serde_json::to_vec` (compact) in every upstream version that writes
    # through `<name>.tmp-<pid>-<nanos>`, the one SPEC 2.1 describes.
    assert pins_text == '{"pins":["' + content_hash + '"]}'


def test_cas_sha256_roundtrip_and_verify(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path / "cas-sha256", "sha256")
    data = b"hello sha256 distfs"
    content_hash = store.put_bytes(data)
    assert content_hash == hashlib.sha256(data).hexdigest()
    assert store.has(content_hash)
    assert store.get_verified(content_hash) == data
    store.blob_path(content_hash).write_bytes(b"tampered")
    with pytest.raises(BlobHashMismatch) as info:
        store.get_verified(content_hash)
    assert (info.value.expected, info.value.actual) == (content_hash, hashlib.sha256(b"tampered").hexdigest())


# --- layout, put, get ------------------------------------------------------------------------------


def test_blob_layout_is_flat_hash_dot_blob(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    content_hash = store.put_bytes(b"x")
    assert store.blob_path(content_hash) == tmp_path / "blobs" / f"{content_hash}.blob"
    assert (tmp_path / "blobs" / f"{content_hash}.blob").read_bytes() == b"x"


def test_put_checks_the_hash_before_writing(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    with pytest.raises(BlobHashMismatch) as info:
        store.put(blake3_hex(b"a"), b"b")
    assert (info.value.expected, info.value.actual) == (blake3_hex(b"a"), blake3_hex(b"b"))
    assert list((tmp_path / "blobs").iterdir()) == []


def test_put_never_rewrites_an_existing_file(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    content_hash = store.put_bytes(b"original")
    store.blob_path(content_hash).write_bytes(b"tampered")
    store.put(content_hash, b"original")
    assert store.blob_path(content_hash).read_bytes() == b"tampered"


def test_put_writes_through_a_pid_nanos_temp_then_renames(tmp_path: Path, monkeypatch) -> None:
    store = LocalCasStore(tmp_path)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", spy)
    content_hash = store.put_bytes(b"payload")
    (src, dst), *_ = renames
    prefix = f"{content_hash}.tmp-{os.getpid()}-"
    assert src.startswith(prefix) and src[len(prefix) :].isdigit()
    assert dst == f"{content_hash}.blob"
    assert sorted(p.name for p in (tmp_path / "blobs").iterdir()) == [dst]


def test_get_errors(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.get(blake3_hex(b"absent"))
    with pytest.raises(BlobHashInvalid):
        store.get("../escape")
    content_hash = store.put_bytes(b"data")
    path = store.blob_path(content_hash)
    path.unlink()
    path.mkdir()  # as root, chmod does not stop reads: a directory does
    with pytest.raises(Io, match="Is a directory"):
        store.get(content_hash)
    with pytest.raises(BlobNotFound):
        store.get("nul\0byte")  # upstream: exists() is false for such a path


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_get_refuses_a_non_regular_file_without_reading_it(tmp_path: Path, kind: str) -> None:
    """A FIFO (would block) or a link to a device (would read without end) under a blob name."""
    store = LocalCasStore(tmp_path)
    content_hash = store.put_bytes(b"data")
    path = store.blob_path(content_hash)
    path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")

    def hung(_signum, _frame):
        raise TimeoutError("the read blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(5)
    try:
        with pytest.raises(Io) as info:
            store.get_verified(content_hash)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert str(info.value) == f"read blob {path} failed: not a regular file"


def test_pins_unpin_and_missing_blob(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    with pytest.raises(BlobNotFound):
        store.pin(blake3_hex(b"absent"))
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    store.pin(b)
    store.pin(a)
    store.pin(a)
    assert store.pins() == sorted([a, b])
    assert store.unpin(a) is True
    assert store.unpin(a) is False
    assert store.pins() == [b]


def test_pins_file_is_upstream_bytes_through_a_pid_nanos_temp(tmp_path: Path, monkeypatch) -> None:
    """`pins.json` as `serde_json::to_vec` writes it: compact, sorted, non-ASCII kept as UTF-8, and
    written through `pins.tmp-<pid>-<nanos>` (the path with its extension replaced), then renamed."""
    store = LocalCasStore(tmp_path)
    names = ["zz", "b\u00e9", "a\u00ff"]
    for name in names:
        (tmp_path / "blobs").mkdir(exist_ok=True)
        store.blob_path(name).write_bytes(b"x")
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src, dst):
        renames.append((Path(src).name, Path(dst).name))
        real_replace(src, dst)

    monkeypatch.setattr(store_module.os, "replace", spy)
    for name in names:
        store.pin(name)
    assert (tmp_path / "pins.json").read_bytes() == '{"pins":["a\u00ff","b\u00e9","zz"]}'.encode()
    src, dst = renames[-1]
    prefix = f"pins.tmp-{os.getpid()}-"
    assert src.startswith(prefix) and src[len(prefix) :].isdigit() and dst == "pins.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs", "pins.json"]
    assert store.unpin("zz") is True
    assert (tmp_path / "pins.json").read_bytes() == '{"pins":["a\u00ff","b\u00e9"]}'.encode()


def test_pins_file_with_a_lone_surrogate_is_refused_as_serde_json_does(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    (tmp_path / "pins.json").write_text('{"pins":["\\ud800"]}')
    with pytest.raises(Serde, match="lone surrogate"):
        store.pins()
    (tmp_path / "pins.json").write_text('{"pins":["\\ud83d\\ude00"]}')  # a pair is one character
    assert store.pins() == ["\U0001f600"]
    (tmp_path / "blobs").mkdir()
    (tmp_path / "blobs" / os.fsdecode(b"\xff.blob")).write_bytes(b"x")  # not UTF-8: no Rust String
    with pytest.raises(Serde, match="serialize"):
        store.pin(os.fsdecode(b"\xff"))
    assert store.pins() == ["\U0001f600"]


# --- upstream listing --------------------------------------------------------------------------------


def test_listing_of_a_missing_store_is_empty_and_creates_nothing(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path / "nowhere")
    assert store.list_blob_hashes() == []
    assert list(store.candidates()) == []
    assert not store.has_index()
    assert not (tmp_path / "nowhere").exists()


def test_listing_keeps_only_regular_dot_blob_files_sorted(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    hashes = [store.put_bytes(make_blob(n)) for n in (5, 6, 7)]
    blobs = tmp_path / "blobs"
    (blobs / "zz.tmp-1-2").write_bytes(b"temp")
    (blobs / ".blob").write_bytes(b"dotfile: no extension for Rust")
    (blobs / "notes.txt").write_bytes(b"other")
    (blobs / "x.BLOB").write_bytes(b"extension is case-sensitive")
    (blobs / "dir.blob").mkdir()
    (blobs / "link.blob").symlink_to(blobs / f"{hashes[0]}.blob")
    (blobs / "A.b.blob").write_bytes(b"stem keeps inner dots")
    assert store.list_blob_hashes() == sorted([*hashes, "A.b"])


def test_listing_fails_whole_on_an_invalid_stem(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    store.put_bytes(b"ok")
    (tmp_path / "blobs" / "a..b.blob").write_bytes(b"bad")
    with pytest.raises(BlobHashInvalid):
        store.list_blob_hashes()


def test_listing_sorts_bytewise(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for stem in ("b", "B", "a", "é", "Z"):
        (blobs / f"{stem}.blob").write_bytes(b"")
    expected = sorted(["b", "B", "a", "é", "Z"], key=str.encode)
    assert LocalCasStore(tmp_path).list_blob_hashes() == expected


# --- our index -----------------------------------------------------------------------------------------


def test_put_records_the_index_outside_blobs(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    assert not store.has_index()
    a = store.put_bytes(make_blob(10))
    b = store.put_bytes(make_blob(20))
    store.put_bytes(make_blob(10))  # a re-put appends a duplicate line; readers dedupe
    assert store.has_index()
    assert (tmp_path / INDEX_FILE).read_text().splitlines() == [f"{a} 10", f"{b} 20", f"{a} 10"]
    assert list(store.candidates()) == sorted([a, b])
    assert store.index_sizes() == {a: 10, b: 20}
    assert store.list_blob_hashes() == sorted([a, b])  # upstream ignores the index file


def test_lost_blob_stays_a_candidate_with_an_index(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    store.blob_path(a).unlink()
    assert list(store.candidates()) == sorted([a, b])
    assert store.list_blob_hashes() == [b]


def test_plain_upstream_store_is_audited_by_listing(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    hashes = sorted(blake3_hex(make_blob(n)) for n in (1, 2, 3))
    for n in (1, 2, 3):
        (blobs / f"{blake3_hex(make_blob(n))}.blob").write_bytes(make_blob(n))
    store = LocalCasStore(tmp_path)
    assert not store.has_index()
    assert list(store.candidates()) == hashes


def test_first_put_on_an_upstream_store_seeds_the_index(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    old = blake3_hex(b"old")
    (blobs / f"{old}.blob").write_bytes(b"old")
    (blobs / "bad..name.blob").write_bytes(b"not a hash: not seeded")
    store = LocalCasStore(tmp_path)
    new = store.put_bytes(b"new")
    assert list(store.candidates()) == sorted([old, new])
    assert store.index_sizes() == {old: 3, new: 3}
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_candidates_sees_puts_from_another_instance(tmp_path: Path) -> None:
    auditor_view = LocalCasStore(tmp_path)
    writer = LocalCasStore(tmp_path)
    a = writer.put_bytes(b"a")
    assert list(auditor_view.candidates()) == [a]
    b = writer.put_bytes(b"b")
    assert list(auditor_view.candidates()) == sorted([a, b])


def test_candidates_reads_only_the_appended_tail(tmp_path: Path, monkeypatch) -> None:
    store = LocalCasStore(tmp_path)
    for n in range(50):
        store.put_bytes(make_blob(n))
    first = store.candidates()
    assert store.candidates() is first  # unchanged: no re-read, same tuple
    reads: list[int] = []
    real_read = index_module.read_own

    def spy_read(path, cap, offset=0):
        if str(path).endswith(INDEX_FILE):
            reads.append(offset)
        return real_read(path, cap, offset)

    monkeypatch.setattr(index_module, "read_own", spy_read)
    extra = store.put_bytes(b"one more")
    assert extra in store.candidates()
    assert reads == [(tmp_path / INDEX_FILE).stat().st_size - len(f"{extra} 8\n")]


def test_torn_index_line_is_skipped_and_later_records_survive(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    a = store.put_bytes(b"a")
    with open(tmp_path / INDEX_FILE, "ab") as handle:
        handle.write(b"deadbeef")  # a crash mid-append: no size, no newline
    assert list(store.candidates()) == [a]
    b = store.put_bytes(b"b")
    assert list(LocalCasStore(tmp_path).candidates()) == sorted([a, b])
    assert list(store.candidates()) == sorted([a, b])


def test_rewritten_index_is_reloaded(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    a, b = store.put_bytes(b"a"), store.put_bytes(b"b")
    assert len(store.candidates()) == 2
    replacement = tmp_path / "replacement"
    replacement.write_text(f"{b} 1\n")
    os.replace(replacement, tmp_path / INDEX_FILE)
    assert list(store.candidates()) == [b]
    (tmp_path / INDEX_FILE).unlink()
    assert list(store.candidates()) == sorted([a, b])  # back to the listing


def test_listing_cache_relists_only_when_the_dir_changes(tmp_path: Path, monkeypatch) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    (blobs / "a.blob").write_bytes(b"")
    age_dir(blobs)
    store = LocalCasStore(tmp_path)
    calls: list[int] = []
    real = LocalCasStore.list_blob_hashes
    monkeypatch.setattr(LocalCasStore, "list_blob_hashes", lambda self: calls.append(1) or real(self))
    assert list(store.candidates()) == ["a"]
    assert list(store.candidates()) == ["a"]
    assert len(calls) == 1
    (blobs / "b.blob").write_bytes(b"")
    assert list(store.candidates()) == ["a", "b"]  # mtime changed (and is racy: relisted next time)
    age_dir(blobs)
    store.candidates()
    store.candidates()
    assert len(calls) == 3


def test_index_handles_odd_listed_names(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for stem in ("with space", "per%cent", "new\nline"):
        (blobs / f"{stem}.blob").write_bytes(b"")
    store = LocalCasStore(tmp_path)
    new = store.put_bytes(b"x")
    assert list(LocalCasStore(tmp_path).candidates()) == sorted(["with space", "per%cent", "new\nline", new])


def test_index_seeding_works_without_hard_links(tmp_path: Path, monkeypatch) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    old = blake3_hex(b"old")
    (blobs / f"{old}.blob").write_bytes(b"old")

    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(store_module.os, "link", no_links)
    store = LocalCasStore(tmp_path)
    new = store.put_bytes(b"new")
    assert list(store.candidates()) == sorted([old, new])
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_puts_stay_cheap_as_the_index_grows(tmp_path: Path, monkeypatch) -> None:
    """Each put appends one line: it never reads or rewrites the index (no O(n^2) over many puts)."""
    store = LocalCasStore(tmp_path)
    for n in range(200):
        store.put_bytes(make_blob(n))
    writes: list[int] = []
    real_write = os.write
    monkeypatch.setattr(
        store_module.os, "write", lambda fd, data: writes.append(len(data)) or real_write(fd, data)
    )
    monkeypatch.setattr(index_module, "_parse_index_lines", None)  # any parse during put would fail
    store.put_bytes(b"one more")
    assert writes == [len(b"one more"), len(f"{blake3_hex(b'one more')} 8\n")]


# --- the fast paths change nothing but speed ------------------------------------------------------


def reference_candidates(root: Path) -> list[str]:
    """What the per-line rules make of the whole log (the reference for every fast path)."""
    log = (root / INDEX_FILE).read_bytes()
    records, _, damaged = index_module._parse_odd_lines(log[: log.rfind(b"\n") + 1])
    return sorted({*records, *(content_hash for _, content_hash in damaged if content_hash)})


ODD_INDEX_LINES = [
    b"deadbeef",  # torn: no size (the next line follows it on the same line)
    b"a%20b 3",  # %-quoted
    b"new%0Aline 4",
    b"x%2Fy 2",  # quoted "/": invalid once unquoted
    b"a/b 1",
    b"a..b 1",
    b" 5",  # empty hash
    b"abc ",  # empty size
    b"abc  5",  # two spaces
    b"abc 5 6",
    b"abc\t5",
    b"abc 5\r",
    b"\xc3\xa9 4",  # non-ASCII (valid UTF-8)
    b"\xff\xfe 4",  # not UTF-8
    b"abc \xc2\xb2",  # "2" superscript: isdigit() but not a number
    b"abc \xd9\xa3",  # Arabic-Indic 3: a number for int()
    b"",
]


@pytest.mark.parametrize("odd", ODD_INDEX_LINES)
def test_bulk_index_parse_equals_the_per_line_rules(odd: bytes, monkeypatch) -> None:
    monkeypatch.setattr(index_module, "_PER_LINE_BYTES", 64)  # so the halving is exercised
    plain = [f"{blake3_hex(bytes([n]))} {n}".encode() for n in range(40)]
    for block in (odd + b"\n", b"\n".join([*plain[:25], odd, *plain[25:]]) + b"\n"):
        assert index_module._parse_index_lines(block) == index_module._parse_odd_lines(block)
    block = b"\n".join(plain) + b"\n"
    assert index_module._parse_plain_lines(block) == index_module._parse_odd_lines(block)


def test_listing_bulk_path_equals_the_per_entry_rules(tmp_path: Path) -> None:
    store = LocalCasStore(tmp_path)
    hashes = [store.put_bytes(make_blob(n)) for n in (1, 2)]
    blobs = tmp_path / "blobs"
    for name in (".blob", "..blob", "a.b.blob", "é.blob", "sp ace.blob", "x.blob.tmp"):
        (blobs / name).write_bytes(b"")
    (blobs / "sub.blob").mkdir()
    (blobs / "link.blob").symlink_to(blobs / f"{hashes[0]}.blob")
    listed = store.list_blob_hashes()
    assert listed == store._list_blob_hashes_per_entry()
    assert listed == sorted([*hashes, ".", "a.b", "é", "sp ace"])


@pytest.mark.parametrize(
    ("name", "error"),
    [
        (b"a..b.blob", BlobHashInvalid),
        (b"back\\slash.blob", BlobHashInvalid),
        (b"\xff.blob", DistributedValidationFailed),
    ],
)
def test_listing_bulk_path_fails_as_the_per_entry_rules(tmp_path: Path, name: bytes, error: type) -> None:
    store = LocalCasStore(tmp_path)
    store.put_bytes(b"ok")
    os.close(os.open(os.path.join(os.fsencode(tmp_path / "blobs"), name), os.O_CREAT | os.O_WRONLY))
    with pytest.raises(error) as bulk:
        store.list_blob_hashes()
    with pytest.raises(error) as per_entry:
        store._list_blob_hashes_per_entry()
    assert str(bulk.value) == str(per_entry.value)


@pytest.fixture
def small_snapshots(monkeypatch) -> None:
    """Snapshots from a 2 KiB log on (about 30 puts), so the tests stay small."""
    monkeypatch.setattr(index_module, "_SNAPSHOT_MIN_BYTES", 2048)


def parsed_bytes(monkeypatch) -> list[int]:
    """Spy: the size of every block the log parser is handed."""
    sizes: list[int] = []
    real = index_module._parse_index_lines

    def spy(block: bytes) -> tuple[list[str], list[str]]:
        sizes.append(len(block))
        return real(block)

    monkeypatch.setattr(index_module, "_parse_index_lines", spy)
    return sizes


def test_large_index_keeps_a_snapshot_and_a_reader_parses_only_the_rest(
    tmp_path: Path, monkeypatch, small_snapshots
) -> None:
    store = LocalCasStore(tmp_path)
    for n in range(60):
        store.put_bytes(make_blob(n))
    store.put_bytes(make_blob(3))  # a re-put: a duplicate line
    assert (tmp_path / SNAPSHOT_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []
    parsed = parsed_bytes(monkeypatch)
    reader = LocalCasStore(tmp_path)
    assert list(reader.candidates()) == reference_candidates(tmp_path)
    assert sum(parsed) < (tmp_path / INDEX_FILE).stat().st_size / 4  # the snapshot covered the rest
    extra = store.put_bytes(b"after the snapshot")
    assert extra in reader.candidates()
    assert list(reader.candidates()) == reference_candidates(tmp_path)


def test_snapshot_keeps_odd_names(tmp_path: Path, small_snapshots) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for stem in ("with space", "per%cent", "new\nline", "é"):
        (blobs / f"{stem}.blob").write_bytes(b"")
    store = LocalCasStore(tmp_path)
    for n in range(40):
        store.put_bytes(make_blob(n))
    store.must_hold._write_snapshot()
    reader = LocalCasStore(tmp_path)
    loaded = reader.must_hold._load_snapshot(reader.must_hold._log_prefix_digest)
    assert loaded is not None and list(loaded.hashes) == reference_candidates(tmp_path)
    assert {"with space", "per%cent", "new\nline", "é"} <= set(LocalCasStore(tmp_path).candidates())


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "replace the log", "rewrite the log"])
def test_a_snapshot_that_does_not_match_is_ignored(
    tmp_path: Path, monkeypatch, small_snapshots, damage: str
) -> None:
    store = LocalCasStore(tmp_path)
    hashes = [store.put_bytes(make_blob(n)) for n in range(40)]
    snapshot, index = tmp_path / SNAPSHOT_FILE, tmp_path / INDEX_FILE
    if damage == "flip a byte":
        raw = bytearray(snapshot.read_bytes())
        raw[len(raw) // 2] ^= 1
        snapshot.write_bytes(bytes(raw))
    elif damage == "truncate":
        snapshot.write_bytes(snapshot.read_bytes()[:-10])
    elif damage == "replace the log":  # a shorter log: the snapshot covers more than it holds
        replacement = tmp_path / "replacement"
        replacement.write_text(f"{hashes[0]} 0\n")
        os.replace(replacement, index)
    else:  # same length, other content: only the BLAKE3 of the prefix tells
        log = index.read_bytes()
        index.write_bytes(log.replace(hashes[1].encode(), blake3_hex(b"other").encode()))
    reader = LocalCasStore(tmp_path)
    assert reader.must_hold._load_snapshot(reader.must_hold._log_prefix_digest) is None
    parsed = parsed_bytes(monkeypatch)
    assert list(LocalCasStore(tmp_path).candidates()) == reference_candidates(tmp_path)
    assert sum(parsed) == index.stat().st_size  # the whole log, parsed as if there were no snapshot


def test_a_failed_snapshot_does_not_fail_the_put(tmp_path: Path, small_snapshots, caplog) -> None:
    (tmp_path / SNAPSHOT_FILE).mkdir(parents=True)  # the rename onto it fails
    store = LocalCasStore(tmp_path)
    hashes = [store.put_bytes(make_blob(n)) for n in range(40)]
    assert list(LocalCasStore(tmp_path).candidates()) == sorted(hashes)
    assert "index snapshot" in caplog.text
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []


def test_reading_never_writes_a_snapshot(tmp_path: Path, small_snapshots) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    lines = [f"{blake3_hex(make_blob(n))} {n}\n" for n in range(100)]
    (tmp_path / INDEX_FILE).write_text("".join(lines))  # a large log written without our put
    store = LocalCasStore(tmp_path)
    assert list(store.candidates()) == reference_candidates(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blobs", INDEX_FILE]


# --- the persisted listing cache (outside the store) ----------------------------------------------


def plain_store(root: Path, n: int = 3) -> list[str]:
    """An upstream store of `n` blobs (no index), its blobs dir aged out of the racy window."""
    blobs = root / "blobs"
    blobs.mkdir(parents=True)
    for i in range(n):
        (blobs / f"{blake3_hex(make_blob(i))}.blob").write_bytes(make_blob(i))
    age_dir(blobs)
    return sorted(blake3_hex(make_blob(i)) for i in range(n))


def count_listings(monkeypatch) -> list[int]:
    """Spy: one entry per upstream listing (the bulk listing, as `candidates()` calls it)."""
    calls: list[int] = []
    real = LocalCasStore.list_blob_hashes
    monkeypatch.setattr(LocalCasStore, "list_blob_hashes", lambda self: calls.append(1) or real(self))
    return calls


def test_listing_cache_lets_a_new_process_load_without_listing(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    first = LocalCasStore(root, listing_cache_dir=cache)
    assert list(first.candidates()) == hashes
    assert first.listing_cache_path is not None and first.listing_cache_path.parent == cache
    assert [p.name for p in cache.iterdir()] == [first.listing_cache_path.name]
    scans: list[object] = []
    real_scandir = os.scandir
    monkeypatch.setattr(store_module.os, "scandir", lambda path: scans.append(path) or real_scandir(path))
    second = LocalCasStore(root, listing_cache_dir=cache)
    assert list(second.candidates()) == hashes
    assert scans == []
    assert list(LocalCasStore(root).candidates()) == hashes  # without the cache: listed
    assert len(scans) == 1


@pytest.mark.parametrize("change", ["add", "remove"])
def test_listing_cache_sees_a_blob_added_or_removed_later(tmp_path: Path, monkeypatch, change: str) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    blobs = root / "blobs"
    if change == "add":
        extra = blake3_hex(b"extra")
        (blobs / f"{extra}.blob").write_bytes(b"extra")
        expected = sorted([*hashes, extra])
    else:
        (blobs / f"{hashes[0]}.blob").unlink()
        expected = hashes[1:]
    later = time.time_ns() + 1_000_000_000  # a coarse clock may leave the mtime as it was: force it on
    os.utime(blobs, ns=(later, later))
    calls = count_listings(monkeypatch)
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == expected
    assert len(calls) == 1


@pytest.mark.parametrize("damage", ["flip a body byte", "flip a header byte", "truncate", "empty", "garbage"])
def test_a_damaged_listing_cache_is_ignored(tmp_path: Path, monkeypatch, damage: str) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    path = LocalCasStore(root, listing_cache_dir=cache).listing_cache_path
    assert path is not None
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    raw = bytearray(path.read_bytes())
    if damage == "flip a body byte":
        raw[-5] ^= 1
    elif damage == "flip a header byte":  # e.g. the count or the listing time
        raw[store_module._LISTING_FIELDS.size - 3] ^= 1
    elif damage == "truncate":
        raw = raw[:-10]
    elif damage == "empty":
        raw = bytearray()
    else:
        raw = bytearray(b"\0" * 200)
    path.write_bytes(bytes(raw))
    reader = LocalCasStore(root, listing_cache_dir=cache)
    assert reader._load_persisted_listing(path, *_stat_key(root)) is None
    calls = count_listings(monkeypatch)
    assert list(reader.candidates()) == hashes
    assert len(calls) == 1


def _stat_key(root: Path) -> tuple[int, int, int]:
    st = os.stat(root / "blobs")
    return st.st_mtime_ns, st.st_ino, st.st_dev


def test_a_listing_cache_of_a_replaced_blobs_dir_is_ignored(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    plain_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    mtime = (root / "blobs").stat().st_mtime_ns
    os.rename(root / "blobs", tmp_path / "old-blobs")
    (root / "blobs").mkdir()
    (root / "blobs" / "other.blob").write_bytes(b"")
    os.utime(root / "blobs", ns=(mtime, mtime))  # same mtime, other inode
    calls = count_listings(monkeypatch)
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == ["other"]
    assert len(calls) == 1


def test_a_racy_listing_is_neither_written_nor_trusted(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    hashes = plain_store(root)
    now = time.time_ns()
    os.utime(root / "blobs", ns=(now, now))  # changed just now: a listing now is racy
    store = LocalCasStore(root, listing_cache_dir=cache)
    assert list(store.candidates()) == hashes
    assert not cache.exists()
    # A racy file (as another writer might leave it) is not trusted either.
    path = store.listing_cache_path
    assert path is not None
    store_module._save_persisted_listing(path, *_stat_key(root), now, tuple(hashes))
    assert path.is_file()
    reader = LocalCasStore(root, listing_cache_dir=cache)
    assert reader._load_persisted_listing(path, *_stat_key(root)) is None
    calls = count_listings(monkeypatch)
    assert list(reader.candidates()) == hashes
    assert len(calls) == 1


def test_listing_cache_is_never_written_inside_the_store(tmp_path: Path, caplog) -> None:
    hashes = plain_store(tmp_path)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for inside in (tmp_path, tmp_path / "cache", tmp_path / "blobs"):
        store = LocalCasStore(tmp_path, listing_cache_dir=inside)
        assert store.listing_cache_path is None
        assert list(store.candidates()) == hashes
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    assert "inside the store" in caplog.text


def test_a_failed_listing_cache_write_changes_nothing_else(tmp_path: Path, caplog) -> None:
    root = tmp_path / "store"
    hashes = plain_store(root)
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    store = LocalCasStore(root, listing_cache_dir=not_a_dir)
    assert list(store.candidates()) == hashes
    assert list(store.candidates()) == hashes
    assert "listing cache write" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "store"]


def test_an_indexed_store_writes_no_listing_cache_but_its_packed_index(tmp_path: Path) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    store = LocalCasStore(root, listing_cache_dir=cache)
    a = store.put_bytes(b"a")
    age_dir(root / "blobs")
    reader = LocalCasStore(root, listing_cache_dir=cache)
    assert list(reader.candidates()) == [a]
    assert reader.must_hold.cache_path is not None and reader.listing_cache_path is not None
    assert [p.name for p in cache.iterdir()] == [reader.must_hold.cache_path.name]
    assert reader.must_hold.cache_path.name == "index-" + reader.listing_cache_path.name[len("listing-") :]


def test_names_with_a_newline_are_listed_and_persisted(tmp_path: Path, monkeypatch) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    (root / "blobs").mkdir(parents=True)
    (root / "blobs" / "new\nline.blob").write_bytes(b"")
    (root / "blobs" / "plain.blob").write_bytes(b"")
    age_dir(root / "blobs")
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == ["new\nline", "plain"]
    calls = count_listings(monkeypatch)
    assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == ["new\nline", "plain"]
    assert calls == []


@pytest.mark.parametrize("name", [b"a..b.blob", b"\xff.blob"])
def test_listing_errors_are_unchanged_with_a_listing_cache(tmp_path: Path, name: bytes) -> None:
    root, cache = tmp_path / "store", tmp_path / "cache"
    plain_store(root)
    os.close(os.open(os.path.join(os.fsencode(root / "blobs"), name), os.O_CREAT | os.O_WRONLY))
    age_dir(root / "blobs")
    with pytest.raises((BlobHashInvalid, DistributedValidationFailed)) as plain:
        LocalCasStore(root).candidates()
    with pytest.raises(type(plain.value)) as cached:
        LocalCasStore(root, listing_cache_dir=cache).candidates()
    assert str(cached.value) == str(plain.value)
    assert not cache.exists()


def test_an_unopenable_blobs_dir_fails_as_without_the_cache(tmp_path: Path, monkeypatch) -> None:
    """A chmod leaves the mtime as it was: the cached listing must not hide the listing's error."""
    root, cache = tmp_path / "store", tmp_path / "cache"
    plain_store(root)
    LocalCasStore(root, listing_cache_dir=cache).candidates()
    blobs = os.fspath(root / "blobs")
    real_open, real_scandir = os.open, os.scandir

    def denied(path, *args, **kwargs):
        if os.fspath(path) == blobs:
            raise PermissionError(13, "Permission denied", blobs)
        return (real_open if args else real_scandir)(path, *args, **kwargs)

    monkeypatch.setattr(store_module.os, "open", denied)
    monkeypatch.setattr(store_module.os, "scandir", denied)
    with pytest.raises(Io, match="list blobs dir"):
        LocalCasStore(root, listing_cache_dir=cache).candidates()
