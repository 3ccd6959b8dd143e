"""The precise policy (issue 10): each mechanism alone in the pure core, with exact numbers; the
bound on how long a blob can go unchecked (property test); and the auditor's fail-closed rules
(issue 8: a vanished store, a read slower than TTL + skew on the wall clock) on real files."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from distfs_pipeline.core import blobs, precision, scheduler
from distfs_pipeline.core.auditor import Auditor
from distfs_pipeline.core.blobs import BlobRecord
from distfs_pipeline.core.models import (
    AdaptivePolicy,
    CheckFailure,
    CursorState,
    FailureReason,
    ProbeConfig,
    RoundReport,
    VerifyOptions,
)
from distfs_pipeline.core.store import LocalCasStore, blake3_hex

T, IO, MISS = FailureReason.TIMEOUT, FailureReason.READ_IO_ERROR, FailureReason.MISSING_SAMPLE
HASHES = tuple(f"{i:064x}" for i in range(6))
BLOB = AdaptivePolicy(backoff_scope="blob")


def _report(ms: int, checked: list[str], failed: dict[str, FailureReason]) -> RoundReport:
    r = RoundReport(node_id="n", world_id="w", observed_at_unix_ms=ms)
    r.checked_hashes = list(checked)
    r.total_checks = len(checked)
    r.failures = [CheckFailure(h, reason, "x") for h, reason in failed.items()]
    r.failed_checks = len(failed)
    r.passed_checks = len(checked) - len(failed)
    for reason in failed.values():
        r.failure_reasons[reason.value] = r.failure_reasons.get(reason.value, 0) + 1
    return r


def _plan(book: dict[str, BlobRecord], cursor: int, budget: int, now: int, rnd: int, policy: AdaptivePolicy):
    return precision.plan_round(HASHES, book, cursor, budget, now, rnd, policy, "seed")


# ---------------------------------------------------------------------- planning


def test_rotation_walks_the_cursor_like_upstream() -> None:
    plan = _plan({}, 4, 3, 1000, 1, BLOB)
    assert [(c.content_hash, c.kind) for c in plan.checks] == [
        (HASHES[4], "rotation"),
        (HASHES[5], "rotation"),
        (HASHES[0], "rotation"),
    ]
    assert plan.cursor_steps == 3


def test_a_backed_off_blob_leaves_its_slot_idle_or_lends_it_to_due_work() -> None:
    book = {HASHES[0]: BlobRecord(next_due_ms=5000)}
    idle = _plan(book, 0, 1, 1000, 2, BLOB)
    assert idle.checks == () and idle.cursor_steps == 1  # no check spent, the cursor moves on
    book[HASHES[3]] = BlobRecord(last_result="fail", last_reason="MISSING_SAMPLE", next_due_ms=900)
    lent = _plan(book, 0, 1, 1000, 2, dataclasses.replace(BLOB, priority_share_percent=0))
    assert [(c.content_hash, c.kind) for c in lent.checks] == [(HASHES[3], "priority")]
    assert lent.cursor_steps == 1


def test_priority_share_is_exact_and_stateless() -> None:
    assert [precision.priority_slots(1, r, 50) for r in range(1, 7)] == [0, 1, 0, 1, 0, 1]
    assert [precision.priority_slots(1, r, 75) for r in range(1, 5)] == [0, 1, 1, 1]
    assert [precision.priority_slots(4, r, 50) for r in range(1, 4)] == [2, 2, 2]
    assert sum(precision.priority_slots(1, r, 100) for r in range(1, 101)) == 99  # capped at 99 %


def test_due_work_oldest_first_then_loss_before_containment() -> None:
    book = {
        HASHES[0]: BlobRecord(last_result="fail", last_reason="TIMEOUT", next_due_ms=900),
        HASHES[1]: BlobRecord(last_result="fail", last_reason="TIMEOUT", next_due_ms=100),
        HASHES[2]: BlobRecord(last_result="fail", last_reason="TIMEOUT", contained=1, next_due_ms=100),
        HASHES[3]: BlobRecord(last_result="fail", last_reason="MISSING_SAMPLE", next_due_ms=100),
        HASHES[4]: BlobRecord(next_due_ms=2000),  # not due yet
    }
    assert precision.due_blobs(HASHES, book, 1000) == [HASHES[3], HASHES[2]]
    # a run-out environment backoff is not due work: the blob is back at its rotation slot
    assert precision.in_rotation(book[HASHES[1]], 1000) and not precision.in_rotation(book[HASHES[4]], 1000)


def test_environment_recheck_due_re_checks_a_run_out_environment_backoff_ahead_of_its_slot() -> None:
    book = {
        HASHES[0]: BlobRecord(last_result="fail", last_reason="TIMEOUT", next_due_ms=900),
        HASHES[1]: BlobRecord(last_result="fail", last_reason="TIMEOUT", next_due_ms=100),
        HASHES[3]: BlobRecord(last_result="fail", last_reason="MISSING_SAMPLE", next_due_ms=100),
        HASHES[4]: BlobRecord(last_result="fail", last_reason="TIMEOUT", next_due_ms=2000),
    }
    due = dataclasses.replace(BLOB, environment_recheck="due", priority_share_percent=0)
    # oldest first, loss before environment at the same due time; not before the backoff ran out
    assert precision.due_blobs(HASHES, book, 1000, due) == [HASHES[3], HASHES[1], HASHES[0]]
    assert not precision.in_rotation(book[HASHES[1]], 1000, due)
    assert precision.in_rotation(book[HASHES[1]], 1000, BLOB)  # slot (the default) waits for the slot
    # with no share for due work the blob still goes first, in the slot of a blob out of the rotation
    plan = _plan(book, 3, 1, 1000, 1, due)
    assert [(c.content_hash, c.kind) for c in plan.checks] == [(HASHES[3], "priority")]
    plan = _plan(book, 4, 1, 1000, 1, due)
    assert [(c.content_hash, c.kind) for c in plan.checks] == [(HASHES[3], "priority")]
    slot = _plan(book, 1, 1, 1000, 1, dataclasses.replace(BLOB, priority_share_percent=0))
    assert [(c.content_hash, c.kind) for c in slot.checks] == [(HASHES[1], "rotation")]
    assert [(c.content_hash, c.kind) for c in _plan(book, 1, 1, 1000, 1, due).checks] == [
        (HASHES[3], "priority")
    ]


def test_a_containment_re_ask_asks_the_same_sample() -> None:
    book = {HASHES[2]: BlobRecord(contained=1, contained_since_ms=800, next_due_ms=800)}
    plan = _plan(book, 0, 2, 1000, 1, BLOB)
    assert plan.checks[0] == precision.PlannedCheck(HASHES[2], "priority", 800)
    assert plan.checks[1] == precision.PlannedCheck(HASHES[0], "rotation", 1000)


def test_shuffle_visits_every_blob_once_per_pass_in_a_new_reproducible_order() -> None:
    shuffled = dataclasses.replace(BLOB, order="shuffle")
    passes = [[precision.slot_blob(HASHES, p * 6 + i, shuffled, "s") for i in range(6)] for p in range(4)]
    assert all(sorted(p) == list(HASHES) for p in passes)
    assert len({tuple(p) for p in passes}) > 1
    assert passes[0] == [precision.slot_blob(HASHES, i, shuffled, "s") for i in range(6)]
    assert passes[0] != [precision.slot_blob(HASHES, i, shuffled, "other") for i in range(6)]
    assert precision.cursor_modulus(shuffled, 6) == 6 * precision.SHUFFLE_PASSES


# ---------------------------------------------------------------------- after a check


def _fold(before: BlobRecord, reason: FailureReason | None, now: int, policy: AdaptivePolicy) -> BlobRecord:
    return precision.reschedule(before, blobs.record_check(before, now, reason), reason, now, policy)


def test_blob_backoff_follows_upstreams_schedule_per_blob() -> None:
    policy = dataclasses.replace(
        BLOB, backoff_base_ms=1000, backoff_max_ms=3000, backoff_multiplier_timeout=2
    )
    r1 = _fold(BlobRecord(), T, 10_000, policy)
    assert r1.next_due_ms == 12_000  # 1000 * 2^0 * 2
    r2 = _fold(r1, T, 12_000, policy)
    assert r2.next_due_ms == 15_000  # min(1000 * 2^1 * 2, 3000)
    assert _fold(r2, None, 15_000, policy).next_due_ms is None  # a pass: back in the rotation


def test_group_backoff_one_blob_watches_a_reason_the_others_wait_for_its_pass() -> None:
    policy = dataclasses.replace(
        BLOB, backoff_base_ms=1000, backoff_max_ms=4000, group_backoff_ms=20_000, release_on_pass=True
    )
    watcher = _fold(BlobRecord(), T, 10_000, policy)
    assert watcher.next_due_ms == 11_000  # alone with its reason: upstream's schedule
    book = {HASHES[0]: watcher}
    assert precision.group_due(book, HASHES[1], T) == 11_000
    assert precision.group_due(book, HASHES[0], T) is None  # itself does not count
    assert precision.group_due(book, HASHES[1], IO) is None  # another reason
    assert precision.group_due(book, HASHES[1], MISS) is None  # loss is never grouped
    # HASHES[1] times out at 10_200: HASHES[0] is due before 10_200 + 1000, so HASHES[1] waits 20 s
    report = _report(10_200, [HASHES[1]], {HASHES[1]: T})
    waiting = blobs.apply_report(book, report, policy)[HASHES[1]]
    assert waiting.next_due_ms == 30_200
    book[HASHES[1]] = waiting
    # HASHES[0] fails again at 11_000: the other is due only at 30_200, later than 11_000 + 2000
    book.update(blobs.apply_report(book, _report(11_000, [HASHES[0]], {HASHES[0]: T}), policy))
    assert book[HASHES[0]].next_due_ms == 13_000
    # its pass at 13_000 releases HASHES[1] at once
    changes = blobs.apply_report(book, _report(13_000, [HASHES[0]], {}), policy)
    assert changes[HASHES[1]].next_due_ms == 13_000 and changes[HASHES[0]].next_due_ms is None
    off = dataclasses.replace(policy, group_backoff_ms=0)
    assert blobs.apply_report({HASHES[0]: watcher}, report, off)[HASHES[1]].next_due_ms == 11_200


def test_containment_re_asks_n_times_before_the_backoff_starts() -> None:
    policy = dataclasses.replace(BLOB, backoff_base_ms=1000, backoff_max_ms=8000, containment_attempts=2)
    r1 = _fold(BlobRecord(), T, 1000, policy)
    assert (r1.next_due_ms, r1.contained, r1.contained_since_ms) == (1000, 1, 1000)
    r2 = _fold(r1, T, 1200, policy)
    assert (r2.next_due_ms, r2.contained, r2.contained_since_ms) == (1200, 2, 1000)
    r3 = _fold(r2, T, 1400, policy)  # third failure counts: streak 3 - 2 = 1, so 1000 ms
    assert (r3.next_due_ms, r3.contained, r3.contained_since_ms) == (2400, 0, None)
    assert _fold(r1, None, 1200, policy).contained == 0  # a pass ends containment


def test_reason_classes_loss_never_backs_off_and_is_rechecked() -> None:
    policy = dataclasses.replace(
        BLOB, backoff_base_ms=1000, backoff_max_ms=8000, backoff_on_loss=False, loss_recheck_ms=700
    )
    assert _fold(BlobRecord(), MISS, 5000, policy).next_due_ms == 5700
    assert _fold(BlobRecord(), IO, 5000, policy).next_due_ms == 6000
    upstream_like = dataclasses.replace(policy, backoff_on_loss=True)
    assert _fold(BlobRecord(), MISS, 5000, upstream_like).next_due_ms == 6000


def test_confirmation_re_reads_a_first_loss_at_once_then_condemns() -> None:
    policy = dataclasses.replace(BLOB, confirm_loss=True, backoff_on_loss=False, loss_recheck_ms=1000)
    first = _fold(BlobRecord(), MISS, 5000, policy)
    assert first.next_due_ms == 5000  # due at the next round
    assert _fold(first, MISS, 5200, policy).next_due_ms == 6200  # confirmed: the recheck period
    assert _fold(first, None, 5200, policy).next_due_ms is None  # a transient: cleared


def test_release_on_pass_makes_blobs_backed_off_for_the_same_reason_due() -> None:
    policy = dataclasses.replace(BLOB, release_on_pass=True, backoff_base_ms=1000, backoff_max_ms=8000)
    failing = BlobRecord(checks=1, failures=1, last_result="fail", last_reason="TIMEOUT", next_due_ms=9000)
    other = dataclasses.replace(failing, last_reason="READ_IO_ERROR")
    book = {HASHES[0]: failing, HASHES[1]: failing, HASHES[2]: other}
    changes = blobs.apply_report(book, _report(3000, [HASHES[0]], {}), policy)
    assert changes[HASHES[0]].next_due_ms is None
    assert changes[HASHES[1]].next_due_ms == 3000
    assert HASHES[2] not in changes


def test_systemic_guard_blames_the_environment_not_the_blobs() -> None:
    policy = dataclasses.replace(
        BLOB, backoff_base_ms=1000, backoff_max_ms=8000, systemic_min_checks=4, systemic_percent=50
    )
    outage = _report(1000, list(HASHES[:4]), {HASHES[0]: T, HASHES[1]: T, HASHES[2]: T, HASHES[3]: MISS})
    assert precision.systemic_round(outage, policy) is T
    changes = blobs.apply_report(
        {}, outage, dataclasses.replace(policy, loss_recheck_ms=500, backoff_on_loss=False)
    )
    assert [changes[h].next_due_ms for h in HASHES[:3]] == [None, None, None]  # still in the rotation
    assert changes[HASHES[3]].next_due_ms == 1500  # loss in the same round still counts
    assert all(changes[h].failing for h in HASHES[:4])  # the history keeps every failure
    half = _report(1000, list(HASHES[:4]), {HASHES[0]: T, HASHES[1]: T})
    assert precision.systemic_round(half, policy) is None  # 50 % is not "more than 50 %"
    assert precision.systemic_round(outage, dataclasses.replace(policy, systemic_min_checks=5)) is None


def test_apply_report_without_a_precise_policy_keeps_upstream_records() -> None:
    report = _report(1000, [HASHES[0]], {HASHES[0]: T})
    assert blobs.apply_report({}, report) == blobs.apply_report({}, report, AdaptivePolicy())
    assert blobs.apply_report({}, report)[HASHES[0]].next_due_ms is None


def test_blob_scope_never_pauses_the_node_and_moves_the_cursor_by_its_slots() -> None:
    policy = dataclasses.replace(BLOB, backoff_base_ms=1000, backoff_max_ms=8000)
    failed = _report(1000, [HASHES[0]], {HASHES[0]: T})
    state, decision = scheduler.advance(CursorState(next_blob_cursor=5), failed, policy, 6, cursor_steps=2)
    assert (decision.failure_round, decision.backoff_ms, state.backoff_until_unix_ms) == (True, 0, 1000)
    assert state.next_blob_cursor == 1 and state.consecutive_failure_rounds == 1
    node, _ = scheduler.advance(CursorState(), failed, dataclasses.replace(policy, backoff_scope="node"), 6)
    assert node.backoff_until_unix_ms == 2000  # upstream's node-wide pause, unchanged


def test_node_scope_backoff_on_loss_false_does_not_pause_on_proof_of_loss() -> None:
    policy = AdaptivePolicy(backoff_base_ms=1000, backoff_max_ms=8000, backoff_on_loss=False)
    state, _ = scheduler.advance(CursorState(), _report(1000, [HASHES[0]], {HASHES[0]: MISS}), policy, 6)
    assert state.backoff_until_unix_ms == 1000
    state, _ = scheduler.advance(CursorState(), _report(1000, [HASHES[0]], {HASHES[0]: T}), policy, 6)
    assert state.backoff_until_unix_ms == 2000


# ---------------------------------------------------------------------- the bound


def _precise(**overrides: object) -> AdaptivePolicy:
    base = dict(
        backoff_scope="blob",
        backoff_base_ms=1000,
        backoff_max_ms=4000,
        backoff_multiplier_timeout=2,
        backoff_multiplier_read_io_error=2,
        backoff_multiplier_unknown=2,
        backoff_on_loss=False,
        loss_recheck_ms=1000,
        containment_attempts=1,
        confirm_loss=True,
        release_on_pass=True,
        systemic_min_checks=4,
        priority_share_percent=75,
        order="shuffle",
    )
    return AdaptivePolicy(**{**base, **overrides})  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(1, 12),
    budget=st.integers(1, 4),
    share=st.integers(0, 99),
    order=st.sampled_from(["rotate", "shuffle", "jitter"]),
    recheck=st.sampled_from(["slot", "due"]),
    group=st.sampled_from([0, 0, 3000, 20_000]),
    faults=st.lists(
        st.sampled_from([None, None, T, IO, MISS, FailureReason.HASH_MISMATCH]), min_size=1, max_size=50
    ),
)
def test_no_blob_goes_unchecked_longer_than_the_stated_bound(
    n: int,
    budget: int,
    share: int,
    order: str,
    recheck: str,
    group: int,
    faults: list[FailureReason | None],
) -> None:
    """Every blob is checked within D / tick + 4 * P + 1 rounds of its last check, whatever the
    failures: D = max(backoff_max_ms, loss_recheck_ms, group_backoff_ms), P = ceil(100 * n /
    (b * (100 - share))) the rounds one pass of the rotation can take (b = min(budget, n) slots,
    share % lent to due work), two passes for a blob to come round again in a new order, and at
    most two more for a due blob (due work is served oldest first, and every pass lends each
    out-of-rotation blob's own slot to it). The same with `environment_recheck=due` (a run-out
    environment backoff is one more due blob) and with a group backoff (one more delay in D)."""
    tick = 200
    policy = _precise(
        priority_share_percent=share, order=order, environment_recheck=recheck, group_backoff_ms=group
    )
    hashes = tuple(f"{i:064x}" for i in range(n))
    b = min(budget, n)
    rounds_per_pass = -(-100 * n // (b * (100 - share)))
    longest = max(policy.backoff_max_ms, policy.loss_recheck_ms, policy.group_backoff_ms)
    bound = longest // tick + 4 * rounds_per_pass + 1
    book: dict[str, BlobRecord] = {}
    state = CursorState()
    last = {h: 0 for h in hashes}
    for rnd in range(1, 3 * bound):
        now = rnd * tick
        plan = precision.plan_round(hashes, book, state.next_blob_cursor, budget, now, rnd, policy, "p")
        checked = [c.content_hash for c in plan.checks]
        assert len(checked) <= b and len(set(checked)) == len(checked)
        failed = {h: faults[(rnd + i) % len(faults)] for i, h in enumerate(checked)}
        report = _report(now, checked, {h: r for h, r in failed.items() if r is not None})
        state, _ = scheduler.advance(state, report, policy, n, plan.cursor_steps)
        book.update(blobs.apply_report(book, report, policy))
        for h in checked:
            last[h] = rnd
        assert all(rnd - seen <= bound for seen in last.values()), (rnd, last, bound)


# ---------------------------------------------------------------------- the auditor (real files)


def _store(tmp_path: Path, sizes: list[int]) -> tuple[LocalCasStore, list[str]]:
    store = LocalCasStore(tmp_path / "store")
    hashes = []
    for i, size in enumerate(sizes):
        data = bytes([i + 1]) * size
        hashes.append(blake3_hex(data))
        store.put(hashes[-1], data)
    return store, sorted(hashes)


def test_precise_rounds_plan_from_the_book_and_contain_a_timeout(tmp_path: Path) -> None:
    store, hashes = _store(tmp_path, [100, 200, 300])
    slow = {hashes[0]}
    audit = Auditor(
        store,
        world_id="w",
        node_id="n",
        probe=ProbeConfig(64, 1, 100, 0),
        policy=_precise(order="rotate", priority_share_percent=50),
        verify=VerifyOptions(cache_dir=str(tmp_path / "cache")),
        response_delay_ms=lambda h: 1000 if h in slow else 0,
    )
    book: dict[str, BlobRecord] = {}
    state = CursorState()
    seen = []
    for rnd in range(1, 5):
        report, state = audit.run_round(state, rnd * 200, book)
        book.update(blobs.apply_report(book, report, audit.policy))
        seen.append((report.checked_hashes, report.failure_reasons))
    assert seen == [
        ([hashes[0]], {"TIMEOUT": 1}),
        ([hashes[0]], {"TIMEOUT": 1}),  # round 2 may take due work: the contained re-ask
        ([hashes[1]], {}),
        ([hashes[2]], {}),
    ]
    assert book[hashes[0]].next_due_ms == 400 + 2000  # counted after 1 re-ask: 1000 ms * 2
    assert state.backoff_until_unix_ms == 0 and state.next_blob_cursor == 0


def test_a_vanished_store_fails_each_round_and_keeps_the_cursor(tmp_path: Path) -> None:
    store, _ = _store(tmp_path, [10, 20, 30])
    audit = Auditor(store, world_id="w", node_id="n", probe=ProbeConfig(), policy=AdaptivePolicy())
    report, state = audit.run_round(CursorState(), 1000)
    assert (report.passed_checks, state.next_blob_cursor) == (1, 1)
    shutil.rmtree(store.root)
    for observed in (2000, 3000):
        report, state = audit.run_round(state, observed)
        assert (report.total_checks, report.failed_checks) == (1, 1)
        assert report.failure_reasons == {"READ_IO_ERROR": 1}
        assert report.error is not None and "store vanished" in report.error
        assert state.next_blob_cursor == 1
    assert state.cumulative_failed_checks == 2


def test_wall_clock_a_read_slower_than_ttl_plus_skew_times_out(tmp_path: Path) -> None:
    store, hashes = _store(tmp_path, [48 * 1024 * 1024])
    probe = ProbeConfig(64, 1, 1, 0)  # 1 ms to answer, no skew: reading and hashing 48 MiB takes longer
    full = VerifyOptions(mode="full")
    stamped = Auditor(store, world_id="w", node_id="n", probe=probe, policy=AdaptivePolicy(), verify=full)
    report, _ = stamped.run_round(CursorState(), 1000)
    assert report.passed_checks == 1  # the virtual clock: the answer is stamped with the round's time
    measured = Auditor(
        store,
        world_id="w",
        node_id="n",
        probe=probe,
        policy=AdaptivePolicy(),
        verify=full,
        measure_response_time=True,
    )
    report, _ = measured.run_round(CursorState(), 1000)
    assert report.failure_reasons == {"TIMEOUT": 1}
    assert report.checked_hashes == hashes


# ---------------------------------------------------------------------- end to end


def test_a_precise_run_notices_a_repair_within_its_recheck_and_the_study_table_says_so(
    tmp_path: Path,
) -> None:
    """A real multirun (Hydra, runner, scratch store, fault injector) of the four presets, then the
    table script of docs/policy-study.md: precise notices the restored blob within its 1 s re-check."""
    import csv
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    sweep = tmp_path / "sweep"
    env = {**os.environ, "PYTHONPATH": str(root)}
    overrides = [
        f"hydra.sweep.dir={sweep}",
        "runtime.progress=never",
        "runtime.rounds=100",
        "scenario=lost_blob",
        "scenario.faults.0.at_round=5",
        "scenario.faults.0.repair_at_round=50",
        "policy=default,steady,thrifty,precise",
    ]
    run = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", "-m", *overrides], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    study_dir = tmp_path / "study"
    study_dir.mkdir()
    (study_dir / "lost_blob").symlink_to(sweep)
    out = tmp_path / "out"
    out.mkdir()
    table = root / "docs" / "policy-study" / "precise_table.py"
    made = subprocess.run(
        [sys.executable, str(table), str(study_dir), str(out)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr[-2000:]
    rows = {r["policy"]: r for r in csv.DictReader((out / "precise.csv").open())}
    assert set(rows) == {"default", "steady", "thrifty", "precise"}
    # the 1 s re-check period bounds precise's recovery (default's depends on where its cursor is)
    assert float(rows["precise"]["recovery_latency_ms"]) <= 1000
    assert float(rows["precise"]["checks_spent"]) <= 100  # one check per round at most
    assert "| lost_blob | 1 |" in (out / "precise.md").read_text()
    assert (out / "precise.png").stat().st_size > 0
