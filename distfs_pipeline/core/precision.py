"""The precise policy's pure core: which blobs a round checks, and each blob's schedule after it.

Why (issue 10, `docs/policy-study.md`): upstream's backoff is node-wide, so a slow disk's timeouts
pause every check and hide real loss elsewhere (`bad_day`), and its fixed rotating cursor is blind
to a fault whose period matches the store's cycle. The anchors (`shared/ANCHORS.md`) do otherwise,
and each of their ideas is one policy key here, off by default:

- `backoff_scope=blob` (Garage): a failing blob backs off alone, on upstream's exponential schedule
  (`backoff_base_ms` doubling to `backoff_max_ms`, times the reason's multiplier); the node never
  pauses, so the other blobs keep their cadence.
- reason classes: ENVIRONMENT (TIMEOUT, READ_IO_ERROR, UNKNOWN: maybe the disk, the link or the
  auditor) against LOSS (HASH_MISMATCH, MISSING_SAMPLE, SIGNATURE_INVALID: proof the data is bad).
  `backoff_on_loss=false` never backs off on proof of loss (no anchor does).
- `loss_recheck_ms` (HDFS's suspect queue): a blob that proved loss is re-checked on that period,
  ahead of the rotation, so a repair is noticed in about that time, not a whole cycle.
- `containment_attempts` (Storj's containment): an environment failure is not a free pass: the
  same sample is asked again in the next rounds, up to N times, before the failure counts and the
  blob's backoff starts. A pass in between clears it.
- `confirm_loss` (Ceph/HDFS re-read): a blob's first loss failure is re-read at once; only a second
  failure condemns it (and starts `loss_recheck_ms`).
- `release_on_pass`: when a blob backed off for an environment reason passes, every blob backed off
  for the same reason is due again: the disk is back, so its repair is noticed at once.
- `environment_recheck=due`: a blob whose environment backoff ran out is due work (re-checked
  then, not at its next rotation slot), so a repaired disk is seen within the backoff; its own
  rotation slots stay idle while it fails.
- `group_backoff_ms` (with `release_on_pass`): blobs failing for the same environment reason
  share one watcher: a failing blob whose reason another blob will re-check before its own
  backoff ends backs off this much longer instead; the watcher's pass releases the group. Ten
  slow blobs then cost about one re-check per backoff, not ten.
- the systemic guard (Storj's suspected network problem): in a round of at least
  `systemic_min_checks` checks of which more than `systemic_percent` % fail the same environmental
  way, those failures are blamed on the environment, not on the blobs: no blob is contained or
  backed off for them, so an outage of the auditor's own disk or link cannot take every blob out of
  the rotation (which would mask loss). Loss found in that round counts as usual.
- `order=shuffle` (Ceph and Garage randomize; upstream's `vrf_seed` idea): each pass over the store
  visits the blobs in a fresh permutation seeded by (`order_seed`, world, node, pass), reproducible
  and unpredictable, so no periodic fault can stay in step with the cursor.

Budget: a round never checks more than `min(challenges_per_tick, max_checks_per_round, n)` blobs;
re-checks, re-asks and confirmations are checks. Priority work (due blobs) takes at most half a
round's slots (with one slot: every other round), plus any slot whose rotation blob is itself out of
the rotation, so the cursor always advances and the rotation cannot starve.

Bound (blob scope, property-tested in `tests/test_precision.py`): with n candidates, b slots per
round, `priority_share_percent` s and the longest delay
D = max(backoff_max_ms, loss_recheck_ms, group_backoff_ms),
every blob is checked within `D / tick + 4 * P + 1` rounds of its previous check, where
P = ceil(100 * n / (b * (100 - s))) bounds the rounds one pass of the rotation takes: two passes for
a blob in the rotation (a new order may put it first, then last), and at most two more for a due
blob (served oldest first; every pass lends each out-of-rotation blob's own slot to due work).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import blake3

from distfs_pipeline.core.backoff import compute_backoff
from distfs_pipeline.core.models import AdaptivePolicy, BlobRecord, FailureReason, RoundReport

ENVIRONMENT = frozenset({FailureReason.TIMEOUT, FailureReason.READ_IO_ERROR, FailureReason.UNKNOWN})
LOSS = frozenset({FailureReason.HASH_MISMATCH, FailureReason.MISSING_SAMPLE, FailureReason.SIGNATURE_INVALID})
SCOPES = ("node", "blob")
ORDERS = ("rotate", "shuffle", "jitter")
# With `order=shuffle` the cursor counts slots over this many passes (pass = cursor // n), so the
# permutation of the current pass follows from the state alone and survives a restart.
SHUFFLE_PASSES = 1 << 16

ROTATION = "rotation"
PRIORITY = "priority"


def reason_of(value: FailureReason | str | None) -> FailureReason | None:
    if value is None:
        return None
    try:
        return FailureReason(value)
    except ValueError:
        return FailureReason.UNKNOWN


def is_environment(reason: FailureReason | str | None) -> bool:
    """Whether a reason may be the environment's fault (so backing off is fair)."""
    return reason_of(reason) in ENVIRONMENT


def is_loss(reason: FailureReason | str | None) -> bool:
    """Whether a reason is evidence that the data itself is bad."""
    return reason_of(reason) in LOSS


def per_blob(policy: AdaptivePolicy) -> bool:
    return policy.backoff_scope == "blob"


def enabled(policy: AdaptivePolicy) -> bool:
    """Whether rounds are planned here instead of by upstream's plain cursor walk."""
    return per_blob(policy) or policy.order != "rotate"


def cursor_modulus(policy: AdaptivePolicy, blob_count: int) -> int:
    """What the cursor wraps at: n (upstream), or n * SHUFFLE_PASSES (the pass is part of it)."""
    if blob_count <= 0:
        return 0
    return blob_count * SHUFFLE_PASSES if policy.order != "rotate" else blob_count


def sample_seed(world_id: str, node_id: str, asked_ms: int, content_hash: str) -> str:
    """The vrf seed of a precise check: a re-ask with the same `asked_ms` asks the same sample."""
    return f"precise:{world_id}:{node_id}:{asked_ms}:{content_hash}"


def order_seed(policy: AdaptivePolicy, world_id: str, node_id: str) -> str:
    return f"{policy.order_seed}:{world_id}:{node_id}"


def _keyed(prefix: bytes, content_hash: str) -> int:
    return int.from_bytes(blake3.blake3(prefix + content_hash.encode()).digest(length=8), "little")


@functools.lru_cache(maxsize=4)
def _permutation(hashes: tuple[str, ...], seed: str, pass_no: int, jitter: bool) -> tuple[str, ...]:
    """The blobs of pass `pass_no` in a fresh, reproducible order.

    shuffle: sorted by a keyed hash (any blob anywhere). jitter: the rotation, each blob moved later
    by a keyed amount below n / 2, so a blob's phase drifts from pass to pass (no periodic fault can
    stay in step with it) while the gap between its checks stays near n; a full shuffle makes the
    mean gap's residual about 1/6 longer (the inspection paradox), which slows detection.
    """
    prefix = f"distfs-order:{seed}:{pass_no}:".encode()
    if not jitter:
        return tuple(sorted(hashes, key=lambda h: _keyed(prefix, h)))
    n = len(hashes)
    span = max(n // 2, 1)
    return tuple(h for _, h in sorted((i + _keyed(prefix, h) % span, h) for i, h in enumerate(hashes)))


def slot_blob(hashes: Sequence[str], cursor: int, policy: AdaptivePolicy, seed: str) -> str:
    """The blob at rotation position `cursor` (any non-negative int; wraps)."""
    n = len(hashes)
    if policy.order == "rotate":
        return hashes[cursor % n]
    position = cursor % (n * SHUFFLE_PASSES)
    return _permutation(tuple(hashes), seed, position // n, policy.order == "jitter")[position % n]


def _waits_for_slot(record: BlobRecord, policy: AdaptivePolicy | None = None) -> bool:
    """With `environment_recheck=slot` an environment backoff only ever removes checks: once it ran
    out, the blob is back at its rotation slot, never ahead of it (or a short backoff would check a
    slow disk more than once a pass). With `due` it is due work like the rest, so a repair of a
    blob that failed for the environment is noticed when its backoff ends, not a pass later (its
    own rotation slots stay idle meanwhile, so a backoff longer than a pass still saves checks).
    Proof of loss, containment re-asks and released blobs are always due work, served first."""
    if policy is not None and policy.environment_recheck == "due":
        return False
    return _urgency(record) == 2


def in_rotation(
    record: BlobRecord | None, now_ms: int | None = None, policy: AdaptivePolicy | None = None
) -> bool:
    """Whether the blob is checked at its rotation slot: no due time, or (given `now_ms`) an
    environment backoff that has run out and waits for its slot (see `_waits_for_slot`)."""
    if record is None or record.next_due_ms is None:
        return True
    return now_ms is not None and record.next_due_ms <= now_ms and _waits_for_slot(record, policy)


@dataclass(frozen=True)
class PlannedCheck:
    """One check of a round: which blob, why, and the time its sample was first asked (the seed)."""

    content_hash: str
    kind: str  # ROTATION | PRIORITY
    asked_ms: int


@dataclass(frozen=True)
class RoundPlan:
    checks: tuple[PlannedCheck, ...]
    cursor_steps: int  # rotation slots walked (checked or idle); the cursor advances by this


def priority_slots(budget: int, round_number: int, share_percent: int) -> int:
    """Slots priority work may take from round `round_number`'s `budget`: `share_percent` % of all
    slots over time, spread evenly and stateless (with one slot and 50 %: every other round)."""
    share = min(max(share_percent, 0), 99)  # < 100: the rotation always gets some slots
    return (round_number * budget * share) // 100 - ((round_number - 1) * budget * share) // 100


def _urgency(record: BlobRecord) -> int:
    """Among work due at the same time, which goes first: proof of loss (watch for its repair),
    then containment re-asks, then blobs whose backoff ran out or that a pass released. Only a
    tie-breaker: oldest due first is what bounds every blob's wait."""
    if record.failing and is_loss(record.last_reason):
        return 0
    return 1 if record.contained else 2


def due_blobs(
    hashes: Sequence[str],
    book: Mapping[str, BlobRecord],
    now_ms: int,
    policy: AdaptivePolicy | None = None,
) -> list[str]:
    """Candidates out of the rotation whose due time has come, oldest first (then most urgent).

    O(book) per round: fine for the stores this tool audits (a sorted due index would make it
    O(due) if a store of millions of blobs ever needs it).
    """
    due = [
        (record.next_due_ms, _urgency(record), h)
        for h, record in book.items()
        if record.next_due_ms is not None
        and record.next_due_ms <= now_ms
        and not _waits_for_slot(record, policy)
    ]
    if not due:
        return []
    members = set(hashes)
    return [h for _, _, h in sorted(due) if h in members]


def _asked_ms(record: BlobRecord | None, now_ms: int) -> int:
    if record is not None and record.contained_since_ms is not None:
        return record.contained_since_ms  # containment re-asks the very same sample
    return now_ms


def plan_round(
    hashes: Sequence[str],
    book: Mapping[str, BlobRecord],
    cursor: int,
    budget: int,
    now_ms: int,
    round_number: int,
    policy: AdaptivePolicy,
    seed: str,
) -> RoundPlan:
    """The checks of one round (see the module docstring for the rules and the bound).

    `budget` is `min(challenges_per_tick, max_checks_per_round)`; `round_number` is the round's
    1-based index in the state's history (it alternates priority rounds when budget is 1).
    """
    n = len(hashes)
    budget = min(budget, n)
    if budget <= 0:
        return RoundPlan((), 0)
    queue = due_blobs(hashes, book, now_ms, policy) if per_blob(policy) else []
    checks: list[PlannedCheck] = []

    def take_priority() -> None:
        h = queue.pop(0)
        checks.append(PlannedCheck(h, PRIORITY, _asked_ms(book.get(h), now_ms)))

    slots = budget
    for _ in range(min(priority_slots(budget, round_number, policy.priority_share_percent), len(queue))):
        take_priority()
        slots -= 1
    steps = 0
    while slots > 0:
        h = slot_blob(hashes, cursor + steps, policy, seed)
        steps += 1
        slots -= 1
        if any(c.content_hash == h for c in checks):
            continue  # a new pass's order can put a blob just checked next: once a round is enough
        if in_rotation(book.get(h), now_ms, policy):
            checks.append(PlannedCheck(h, ROTATION, now_ms))
        elif queue:
            take_priority()  # the slot's own blob waits for its due time: lend the slot
    return RoundPlan(tuple(checks), steps)


# ---------------------------------------------------------------------- after a check


def systemic_round(report: RoundReport, policy: AdaptivePolicy) -> FailureReason | None:
    """The environment reason to blame a round's failures on, or None (see the guard above)."""
    if policy.systemic_min_checks <= 0 or report.total_checks < policy.systemic_min_checks:
        return None
    for key, count in sorted(report.failure_reasons.items(), key=lambda kv: (-kv[1], kv[0])):
        reason = reason_of(key)
        if reason in ENVIRONMENT and count * 100 > policy.systemic_percent * report.total_checks:
            return reason
        break
    return None


def _backoff_ms(policy: AdaptivePolicy, streak: int, reason: FailureReason) -> int:
    return compute_backoff(
        policy.backoff_base_ms, policy.backoff_max_ms, streak, policy.multiplier_for(reason)
    )


def reschedule(
    before: BlobRecord,
    after: BlobRecord,
    reason: FailureReason | None,
    now_ms: int,
    policy: AdaptivePolicy,
    *,
    blamed_on_environment: bool = False,
    group_due_ms: int | None = None,
) -> BlobRecord:
    """`after` (the record with this check folded in) with its scheduling fields set.

    Pass: back in the rotation. Loss: confirmation, then `loss_recheck_ms` (or the backoff when
    `backoff_on_loss`). Environment: containment, then the blob's own backoff. A failure the
    systemic guard blames on the environment leaves the blob in the rotation. `group_due_ms` is
    the earliest due time of the other blobs failing for the same reason (see `group_due`): when it
    comes before this blob's own backoff ends, someone else watches the reason, so this blob backs
    off `group_backoff_ms` (if longer); with `release_on_pass` that one's pass releases it.
    """
    clear = {"contained": 0, "contained_since_ms": None}
    if reason is None or blamed_on_environment:
        return dataclasses.replace(after, **clear, next_due_ms=None)
    if reason in LOSS:
        if policy.confirm_loss and not before.failing:
            return dataclasses.replace(after, **clear, next_due_ms=now_ms)  # re-read next round
        if policy.backoff_on_loss and policy.backoff_base_ms > 0:
            due = now_ms + _backoff_ms(policy, after.consecutive_failures, reason)
            return dataclasses.replace(after, **clear, next_due_ms=due)
        due = now_ms + policy.loss_recheck_ms if policy.loss_recheck_ms > 0 else None
        return dataclasses.replace(after, **clear, next_due_ms=due)
    if before.contained < policy.containment_attempts:
        since = before.contained_since_ms if before.contained_since_ms is not None else now_ms
        return dataclasses.replace(
            after, next_due_ms=now_ms, contained=before.contained + 1, contained_since_ms=since
        )
    streak = max(after.consecutive_failures - policy.containment_attempts, 1)
    backoff = _backoff_ms(policy, streak, reason)
    if policy.group_backoff_ms > 0 and group_due_ms is not None and group_due_ms <= now_ms + backoff:
        backoff = max(backoff, policy.group_backoff_ms)
    return dataclasses.replace(after, **clear, next_due_ms=now_ms + backoff if backoff > 0 else None)


def group_due(book: Mapping[str, BlobRecord], content_hash: str, reason: FailureReason) -> int | None:
    """The earliest due time of the blobs other than `content_hash` failing for environment `reason`
    (None: no other, or not an environment reason). O(book), like `due_blobs`."""
    if reason not in ENVIRONMENT:
        return None
    return min(
        (
            r.next_due_ms
            for h, r in book.items()
            if h != content_hash and r.failing and r.last_reason == reason and r.next_due_ms is not None
        ),
        default=None,
    )


def released(
    book: Mapping[str, BlobRecord], passed: str, reason: str | None, now_ms: int
) -> dict[str, BlobRecord]:
    """Blobs backed off for environment `reason`, re-asked now because one of them just passed.

    A released blob is contained (due work, served ahead of the rotation) with its re-asks spent,
    so a failure sends it straight back to its backoff. A release never postpones: a blob due
    already keeps its place in the queue (oldest first is what bounds the wait).
    """
    if reason is None or not is_environment(reason):
        return {}
    return {
        h: dataclasses.replace(
            record, next_due_ms=min(record.next_due_ms, now_ms), contained=max(record.contained, 1)
        )
        for h, record in book.items()
        if record.last_reason == reason and record.failing and record.next_due_ms is not None and h != passed
    }
