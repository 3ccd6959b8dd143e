"""Properties of the scheduler that must hold for any sequence of rounds, and of the store's index.

Two drivers for the scheduler: the pure `advance`/`skip_for_backoff` pair fed generated reports
(fast, many cases), and a real store audited by `Auditor` with a generated set of tampered blobs
(slower, fewer cases). For the index: its fast paths (bulk parsing, the sorted snapshot, merging
appended tails) give what the per-line rules give for the whole log, whatever the log holds.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distfs_pipeline.core import index as index_module
from distfs_pipeline.core import scheduler
from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.index import INDEX_FILE, SNAPSHOT_FILE
from distfs_pipeline.core.models import (
    AdaptivePolicy,
    CursorState,
    FailureReason,
    ProbeConfig,
    RoundReport,
    VerifyOptions,
)
from distfs_pipeline.core.store import LocalCasStore

REASON_KEYS = [reason.value for reason in FailureReason]


@st.composite
def policies(draw: st.DrawFn) -> AdaptivePolicy:
    """Valid policies only (max >= base), with small numbers so caps are actually reached."""
    base = draw(st.integers(0, 500))
    multipliers = {
        f"backoff_multiplier_{key.lower()}": draw(st.integers(1, 5), label=key) for key in REASON_KEYS
    }
    return AdaptivePolicy(
        max_checks_per_round=draw(st.integers(1, 6)),
        backoff_base_ms=base,
        backoff_max_ms=draw(st.integers(base, 5_000)),
        **multipliers,
    )


@st.composite
def round_reports(draw: st.DrawFn) -> tuple[int, dict[str, int], int, int]:
    """(passed, failure reasons, time step, candidate count) of one round."""
    passed = draw(st.integers(0, 4))
    reasons = draw(st.dictionaries(st.sampled_from(REASON_KEYS), st.integers(1, 4), max_size=3))
    return passed, reasons, draw(st.integers(0, 3_000)), draw(st.integers(0, 7))


@dataclass
class Totals:
    """What the rounds added up to, counted independently of the scheduler."""

    rounds: int = 0
    total: int = 0
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    applied_ms: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, report: RoundReport, backoff_ms: int) -> None:
        self.rounds += 1
        self.total += report.total_checks
        self.passed += report.passed_checks
        self.failed += report.failed_checks
        self.applied_ms += backoff_ms
        for key, count in report.failure_reasons.items():
            self.reasons[key] = self.reasons.get(key, 0) + count

    def assert_matches(self, state: CursorState) -> None:
        assert state.rounds_executed == self.rounds + self.skipped
        assert state.cumulative_total_checks == self.total
        assert state.cumulative_passed_checks == self.passed
        assert state.cumulative_failed_checks == self.failed
        assert state.cumulative_failure_reasons == self.reasons
        assert state.cumulative_backoff_skipped_rounds == self.skipped
        assert state.cumulative_backoff_applied_ms == self.applied_ms


def assert_round_invariants(
    before: CursorState, after: CursorState, report: RoundReport, policy: AdaptivePolicy, blob_count: int
) -> None:
    """The per-round properties: cursor in range, backoff bounded, streak rule."""
    assert 0 <= after.next_blob_cursor < max(blob_count, 1)
    assert 0 <= after.last_backoff_duration_ms <= policy.backoff_max_ms
    failure_round = report.failed_checks > 0 and report.passed_checks == 0
    if failure_round:
        assert after.consecutive_failure_rounds == before.consecutive_failure_rounds + 1
        assert after.backoff_until_unix_ms - report.observed_at_unix_ms <= policy.backoff_max_ms
    else:
        assert (after.consecutive_failure_rounds, after.backoff_until_unix_ms) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(policy=policies(), rounds=st.lists(round_reports(), max_size=25))
def test_advance_properties(
    policy: AdaptivePolicy, rounds: list[tuple[int, dict[str, int], int, int]]
) -> None:
    state, totals, now = CursorState(), Totals(), 0
    for passed, reasons, step, blob_count in rounds:
        now += step
        skipped = scheduler.skip_for_backoff(state, now)
        if skipped is not None:
            assert skipped.next_blob_cursor == state.next_blob_cursor
            state, totals.skipped = skipped, totals.skipped + 1
            continue
        failed = sum(reasons.values())
        report = RoundReport("n", "w", now, passed + failed, passed, failed, dict(reasons))
        new, decision = scheduler.advance(state, report, policy, blob_count)
        assert_round_invariants(state, new, report, policy, blob_count)
        assert decision.backoff_ms <= policy.backoff_max_ms
        totals.add(report, decision.backoff_ms)
        state = new
    totals.assert_matches(state)


_example_ids = itertools.count()


def blob(size: int) -> bytes:
    """Upstream scheduler test helper (`(i % 251) + 11` as a wrapping u8 add): distinct per size."""
    return bytes(((i % 251) + 11) % 256 for i in range(size))


def tamper(store: LocalCasStore, content_hash: str, how: str) -> None:
    """Corrupt a blob in place: rewrite it shorter, or flip its last byte (same size)."""
    path = store.blob_path(content_hash)
    if how == "rewrite":
        path.write_bytes(b"tampered")
        return
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_auditor_properties_on_a_real_store(tmp_path: Path, data: st.DataObject) -> None:
    root = tmp_path / f"example-{next(_example_ids)}"
    store = LocalCasStore(root / "store")
    sizes = data.draw(st.lists(st.integers(1, 300), max_size=6, unique=True), label="sizes")
    hashes = sorted(store.put_bytes(blob(n)) for n in sizes)
    tampered = data.draw(st.sets(st.sampled_from(hashes)) if hashes else st.just(set()), label="tampered")
    how = data.draw(st.sampled_from(["rewrite", "flip"]), label="how")
    for content_hash in tampered:
        tamper(store, content_hash, how)
    policy = data.draw(policies(), label="policy")
    probe = ProbeConfig(16, data.draw(st.integers(1, 4), label="per_tick"), 100, 0)
    verify = VerifyOptions(
        mode=data.draw(st.sampled_from(["chunked", "full"])), cache_dir=str(root / "cache")
    )
    audit = Auditor(store, world_id="w", node_id="n", probe=probe, policy=policy, verify=verify)

    state, totals, now = CursorState(), Totals(), 0
    for step in data.draw(st.lists(st.integers(0, 2_000), min_size=1, max_size=8), label="steps"):
        now += step
        report, new = audit.run_round(state, now)
        assert report.round_index == new.rounds_executed
        if report.skipped_by_backoff:
            totals.skipped += 1
        else:
            expected_checks = min(probe.challenges_per_tick, policy.max_checks_per_round, len(hashes))
            start = state.next_blob_cursor % max(len(hashes), 1)
            window = [hashes[(start + i) % len(hashes)] for i in range(expected_checks)]
            assert report.checked_hashes == window
            assert {f.content_hash for f in report.failures} == set(window) & tampered
            assert report.passed_checks == len(set(window) - tampered)
            assert set(report.failure_reasons) <= {"HASH_MISMATCH"}
            assert_round_invariants(state, new, report, policy, len(hashes))
            assert report.backoff is not None
            totals.add(report, report.backoff.backoff_ms)
        state = new
    totals.assert_matches(state)


# ---------------------------------------------------------------------- the must-hold index

_HEX = "0123456789abcdef"
_ODD_PIECES = ["%", "%20", "%0A", "%2F", "/", "\\", "..", ".", " ", "  ", "\t", "\r", "é", "²", "٣", ""]

index_lines = st.one_of(
    st.builds("{} {}\n".format, st.text(_HEX, min_size=1, max_size=6), st.integers(0, 10**6)).map(str.encode),
    st.builds(
        "{}{}{} {}\n".format,
        st.text(_HEX, max_size=3),
        st.sampled_from(_ODD_PIECES),
        st.text(_HEX, max_size=3),
        st.sampled_from(["1", "22", "", "x", "²", "٣", "1 2"]),
    ).map(str.encode),
    st.text(_HEX, max_size=6).map(lambda h: h.encode() + b"\n"),  # torn
    st.binary(max_size=8).map(lambda b: b + b"\n"),
)


@settings(max_examples=300, deadline=None)
@given(lines=st.lists(index_lines, max_size=40))
def test_bulk_index_parse_equals_the_per_line_rules(lines: list[bytes]) -> None:
    block = b"".join(lines)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "_PER_LINE_BYTES", 24)  # halve down to a line or two
        assert index_module._parse_index_lines(block) == index_module._parse_odd_lines(block)


def _reference_candidates(root: Path) -> list[str]:
    log = (root / INDEX_FILE).read_bytes()
    records, _, damaged = index_module._parse_odd_lines(log[: log.rfind(b"\n") + 1])
    return sorted({*records, *(content_hash for _, content_hash in damaged if content_hash)})


store_ops = st.one_of(
    st.tuples(st.just("puts"), st.lists(st.integers(1, 60), min_size=1, max_size=8)),
    st.tuples(st.just("append"), index_lines),  # what another writer, a crash or damage leaves
    st.tuples(st.just("append"), st.text(_HEX, min_size=1, max_size=4).map(str.encode)),  # no newline yet
    st.just(("snapshot", 0)),
    st.just(("damage snapshot", 0)),
    st.just(("replace log", 0)),
    st.just(("new reader", 0)),
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=st.lists(store_ops, min_size=1, max_size=30))
def test_index_candidates_are_the_logs_whatever_the_fast_paths_do(tmp_path: Path, ops: list) -> None:
    root = tmp_path / f"example-{next(_example_ids)}"
    root.mkdir()
    index, snapshot = root / INDEX_FILE, root / SNAPSHOT_FILE
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(index_module, "_SNAPSHOT_MIN_BYTES", 64)
        patch.setattr(index_module, "_INSORT_MAX", 2)  # both merge paths
        patch.setattr(index_module, "_PER_LINE_BYTES", 24)
        cache = tmp_path / f"{root.name}-cache"  # the packed cache outside the store, used by `cached`
        writer, reader = LocalCasStore(root), LocalCasStore(root)
        cached = LocalCasStore(root, listing_cache_dir=cache)
        for op, arg in ops:
            if op == "puts":
                for size in arg:
                    writer.put_bytes(blob(size))
            elif op == "append":
                with open(index, "ab") as handle:
                    handle.write(arg)
            elif op == "snapshot" and index.exists():
                writer.must_hold._write_snapshot()
            elif op == "damage snapshot" and snapshot.exists():
                raw = bytearray(snapshot.read_bytes())
                raw[len(raw) // 3] ^= 0x20
                snapshot.write_bytes(bytes(raw))
            elif op == "replace log" and index.exists():
                log = index.read_bytes()
                (root / "log.new").write_bytes(log[: len(log) // 2])
                os.replace(root / "log.new", index)
            elif op == "new reader":
                reader = LocalCasStore(root)
                cached = LocalCasStore(root, listing_cache_dir=cache)
            if index.exists():
                expected = _reference_candidates(root)
                assert list(reader.candidates()) == expected
                assert list(LocalCasStore(root).candidates()) == expected
                assert list(cached.candidates()) == expected
                assert list(LocalCasStore(root, listing_cache_dir=cache).candidates()) == expected
