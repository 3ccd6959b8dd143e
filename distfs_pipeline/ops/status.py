"""`distfs-pipeline status --state PATH`: what an operator needs first, without running a round.

Why: an operator used to `zpool status`, Ceph's health or HDFS's block scanner report asks "is the
node healthy, and if not, what is wrong since when?" before anything else. This command answers
from the files a run keeps, read-only and through `safefile` (a planted link, FIFO or huge file
is refused with one line, never followed, blocked on or read whole):

- the state file (upstream's 14 keys): rounds, cumulative checks, the backoff and its reason;
- the per-blob history beside it (`state.load_book`): which blobs failed their last check, with
  reason, first and last failure of the current streak, and how many times;
- the identity beside it (`state.load_identity`, when present): node, world and store root;
- the tail of the round log the WAL names: the last round's time and error, the measured check
  rate (for the time to the next full pass), the open epoch's sums and the last epoch's report;
- the store's candidates (index, else listing; read-only) and each blob file's mtime, for coverage.

Coverage: the share of the blobs held now whose last check is not older than their file's last
change (a restored or re-copied blob counts as unchecked until it is checked again); blobs never
checked; when every blob held now was last verified (the oldest last check, as Ceph's oldest
deep-scrub stamp); where the round-robin cursor is in its pass, when the last pass completed and
when, at the measured rate, the current one will.

Health: DEGRADED when a blob held failed its last check, a backoff is in force, the last rounds
failed, or the last round had a round-level error. Exit status 0 healthy, 1 degraded, 2 usage
error (a missing, corrupt or hostile file: one line naming it).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distfs_pipeline.core import reward, safefile
from distfs_pipeline.core.blobs import BlobRecord
from distfs_pipeline.core.errors import UsageError, WorldError
from distfs_pipeline.core.models import CursorState
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops.args import OneLineArgumentParser
from distfs_pipeline.persist import state

PROG = "distfs-pipeline status"
STATE_CAP = 1 << 20  # upstream's 14 keys are a few hundred bytes
SIDECAR_CAP = 1 << 20
TAIL_BYTES = 1 << 20  # enough for the last few hundred round records
SUMMARY_FILE = "summary.json"
EPOCHS_FILE = "epochs.jsonl"
SHOWN_FAILING = 20
EXIT_HEALTHY, EXIT_DEGRADED, EXIT_USAGE = 0, 1, 2
_WALL_TOLERANCE_MS = 120_000  # a round is written within this long of being observed on the wall clock


# ---------------------------------------------------------------------- reading (I/O, all via safefile)


@dataclasses.dataclass
class Sources:
    """Everything status reads, as plain values (the report below is a pure function of it)."""

    state_path: Path
    state: CursorState
    book: dict[str, BlobRecord]
    identity: dict[str, Any]
    store_root: Path | None
    held: Sequence[str] | None  # the store's candidates now (None: store not readable)
    indexed: bool
    store_error: str | None
    mtimes_ms: dict[str, int]  # blob file mtimes of held blobs that exist
    log_path: Path | None
    tail: list[dict[str, Any]]  # the last complete round records, oldest first
    last_epoch: dict[str, Any] | None
    written_ms: int  # when the state (or the round log) was last written, by the file system's clock

    @property
    def timeline(self) -> str:
        """`wall` when the audit's times are real (the last round was written when it was observed),
        else `virtual` (a study's simulated clock): then file times cannot be compared with them."""
        last = self.state.last_probe_unix_ms
        return "wall" if last is not None and abs(self.written_ms - last) <= _WALL_TOLERANCE_MS else "virtual"


def read_state(path: Path) -> tuple[CursorState, int]:
    """The state file through `safefile` (a FIFO or link is refused, not opened) and its mtime (ms).

    A missing file is an error here: there is nothing to report on.
    """
    try:
        raw = safefile.read_capped(path, STATE_CAP)
        mtime_ms = os.stat(path).st_mtime_ns // 1_000_000
    except FileNotFoundError:
        raise UsageError(f"--state: {path} does not exist (no audit has run with this state file)") from None
    except OSError as err:
        raise UsageError(f"--state: {safefile.describe(err)}") from None
    return state.parse_state(raw, str(path)), mtime_ms


def _check_wal(state_path: Path) -> None:
    """Refuse a hostile `<state>.wal` before anything follows it (a FIFO would block a plain read)."""
    path = state.wal_path(state_path)
    try:
        raw = safefile.read_optional(path, SIDECAR_CAP)
        if raw is not None:
            safefile.loads_strict(raw)
    except OSError as err:
        raise UsageError(f"WAL file {safefile.describe(err)}") from None
    except ValueError as err:
        raise UsageError(f"WAL file {path}: {err}") from None


def load_identity(state_path: Path) -> dict[str, Any]:
    """The identity kept beside the state (`state.load_identity`, when this build has it), as a dict.

    The one seam to adapt if the identity's shape changes: an object with attributes, a dataclass
    or a mapping; missing means "unknown", and the round log's records fill node and world in.
    """
    loader = getattr(state, "load_identity", None)
    if loader is None:
        return {}
    found = loader(state_path)
    if found is None:
        return {}
    if dataclasses.is_dataclass(found) and not isinstance(found, type):
        found = dataclasses.asdict(found)
    elif not isinstance(found, Mapping):
        found = {
            k: getattr(found, k)
            for k in ("world_id", "node_id", "store_root", "state_id")
            if hasattr(found, k)
        }
    return {str(k): v for k, v in found.items()}


def read_tail(log: Path, max_bytes: int = TAIL_BYTES) -> list[dict[str, Any]]:
    """The complete JSON records in the last `max_bytes` of a round log (a torn last line is skipped)."""
    try:
        fd, st = safefile.open_read(log)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise UsageError(f"round log {safefile.describe(err)}") from None
    try:
        start = max(0, st.st_size - max_bytes)
        data = os.pread(fd, st.st_size - start, start)
    except OSError as err:
        raise UsageError(f"round log {log}: cannot read: {err.strerror}") from None
    finally:
        os.close(fd)
    lines = data.split(b"\n")[:-1]  # the part after the last newline is torn or empty
    if start > 0 and lines:
        lines = lines[1:]  # the first line is cut by the window
    records = []
    for line in lines:
        try:
            record = safefile.loads_strict(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def wal_log(state_path: Path) -> Path | None:
    """The round log the WAL names: `state.read_wal` gives a path, or a pointer with `log_path`."""
    pointer = state.read_wal(state_path)
    if pointer is None:
        return None
    return Path(getattr(pointer, "log_path", pointer))


def _own(records: list[dict[str, Any]], identity: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Only this state's records: a record naming another `state_id` (a shared run dir) is not ours."""
    state_id = identity.get("state_id")
    if not state_id:
        return records
    return [r for r in records if r.get("state_id") in (None, state_id)]


def _read_json_object(path: Path) -> dict[str, Any] | None:
    try:
        data = safefile.load_json_file(path, SIDECAR_CAP)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _last_epoch(log: Path | None, tail: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The last closed epoch's report: the newest of epochs.jsonl's last line and the log tail's."""
    found = [dict(r["epoch_report"]) for r in tail if isinstance(r.get("epoch_report"), dict)]
    if log is not None:
        found += [r for r in read_tail(log.parent / EPOCHS_FILE, 64 * 1024)[-1:] if isinstance(r, dict)]
    found = [r for r in found if isinstance(r.get("epoch"), int)]
    return max(found, key=lambda r: r["epoch"]) if found else None


def _store_root(identity: Mapping[str, Any], given: Path | None, log: Path | None) -> Path | None:
    """`--store`, else the identity's store root, else the last run's summary.json."""
    if given is not None:
        return given
    if isinstance(identity.get("store_root"), str):
        return Path(identity["store_root"])
    if log is not None:
        summary = _read_json_object(log.parent / SUMMARY_FILE)
        if summary is not None and isinstance(summary.get("store_root"), str):
            return Path(summary["store_root"])
    return None


def gather(state_path: Path, store: Path | None = None) -> Sources:
    """Read every source (`UsageError` for a missing, corrupt or hostile file of ours)."""
    current, written_ms = read_state(state_path)
    _check_wal(state_path)
    book = state.load_book(state_path)
    identity = load_identity(state_path)
    log = wal_log(state_path)
    tail = _own(read_tail(log), identity) if log is not None else []
    root = _store_root(identity, store, log)
    held: Sequence[str] | None = None
    indexed, store_error, mtimes = False, None, {}
    if root is not None:
        try:
            cas = LocalCasStore(root)
            if not cas.blobs_dir.is_dir():
                raise WorldError(f"{root} has no blobs/ directory")
            held = cas.candidates()
            indexed = cas.has_index()
            mtimes = _mtimes(cas, held)
        except (WorldError, OSError) as err:
            held, store_error = None, str(err)
    return Sources(
        state_path, current, book, identity, root, held, indexed, store_error, mtimes, log, tail,
        _last_epoch(log, tail), written_ms,
    )  # fmt: skip


def _mtimes(cas: LocalCasStore, held: Sequence[str]) -> dict[str, int]:
    """mtime (ms) of each held blob file that exists: one `lstat` a blob (never follows a link)."""
    out = {}
    for content_hash in held:
        try:
            out[content_hash] = os.lstat(cas.blob_file(content_hash)).st_mtime_ns // 1_000_000
        except (OSError, WorldError):
            continue
    return out


# ---------------------------------------------------------------------- the report (pure)


def _rate_per_ms(tail: Sequence[Mapping[str, Any]]) -> float | None:
    """Checks per ms over the log tail (None with fewer than two rounds or no elapsed time)."""
    times = [r.get("observed_at_unix_ms") for r in tail]
    points = [(t, r.get("total_checks", 0)) for t, r in zip(times, tail, strict=True) if isinstance(t, int)]
    if len(points) < 2 or points[-1][0] <= points[0][0]:
        return None
    checks = sum(c for _, c in points[1:] if isinstance(c, int))
    return checks / (points[-1][0] - points[0][0]) if checks else None


def coverage(src: Sources) -> dict[str, Any]:
    """Coverage of the blobs held now (see the module docstring)."""
    if src.held is None:
        return {"blobs": None}
    held, book = src.held, src.book
    checked = [h for h in held if (r := book.get(h)) is not None and r.last_checked_ms is not None]
    mtimes = src.mtimes_ms if src.timeline == "wall" else {}  # a virtual time says nothing of files
    fresh = [h for h in checked if (book[h].last_checked_ms or 0) >= mtimes.get(h, 0)]
    n = len(held)
    oldest = min((book[h].last_checked_ms or 0 for h in checked), default=None) if len(checked) == n else None
    position = src.state.next_blob_cursor % n if n else 0
    last_pass = book.get(held[-1]) if n else None  # the cursor wraps after the last candidate
    rate = _rate_per_ms(src.tail)
    eta_ms = (n - position) / rate if rate and n else None
    return {
        "blobs": n,
        "checked_since_change": len(fresh),
        "ratio": len(fresh) / n if n else 0.0,
        "never_checked": n - len(checked),
        "changed_since_check": len(checked) - len(fresh),
        "every_blob_checked_since_unix_ms": oldest,
        "pass_position": position,
        "last_full_pass_unix_ms": last_pass.last_checked_ms if last_pass is not None else None,
        "checks_per_s": rate * 1000 if rate else None,
        "next_full_pass_eta_s": eta_ms / 1000 if eta_ms is not None else None,
    }


def failing_blobs(src: Sources) -> list[dict[str, Any]]:
    """Blobs whose last check failed, the longest-failing first."""
    held = set(src.held) if src.held is not None else None
    rows = [
        {
            "content_hash": h,
            "reason": r.last_reason,
            "first_failure_unix_ms": r.first_failure_ms,
            "last_failure_unix_ms": r.last_failure_ms,
            "consecutive_failures": r.consecutive_failures,
            "failures": r.failures,
            "checks": r.checks,
            "held": None if held is None else h in held,
        }
        for h, r in src.book.items()
        if r.failing
    ]
    return sorted(rows, key=lambda row: (row["first_failure_unix_ms"] or 0, row["content_hash"]))


def backoff(current: CursorState, now_ms: int) -> dict[str, Any]:
    """The backoff in force (if any) and why: the reason, multiplier and failure streak behind it."""
    active = current.backoff_until_unix_ms > now_ms
    return {
        "active": active,
        "until_unix_ms": current.backoff_until_unix_ms or None,
        "remaining_ms": current.backoff_until_unix_ms - now_ms if active else 0,
        "reason": current.last_backoff_reason,
        "multiplier": current.last_backoff_multiplier,
        "duration_ms": current.last_backoff_duration_ms,
        "consecutive_failure_rounds": current.consecutive_failure_rounds,
        "rounds_skipped_total": current.cumulative_backoff_skipped_rounds,
    }


def build_report(src: Sources, now_ms: int) -> dict[str, Any]:
    """The status as plain data (`--json` prints it; the text view is drawn from it)."""
    st = src.state
    last = src.tail[-1] if src.tail else None
    if last is not None and last.get("round_index") != st.rounds_executed:
        last = None  # the log's last record is not the state's last round: do not mix them
    failing = failing_blobs(src)
    held_failing = [f for f in failing if f["held"] is not False]
    off = backoff(st, now_ms)
    problems = []
    if held_failing:
        problems.append(f"{len(held_failing)} blob(s) failed their last check")
    if off["active"]:
        problems.append(f"backoff in force ({off['reason'] or 'no reason recorded'})")
    if st.consecutive_failure_rounds:
        problems.append(f"the last {st.consecutive_failure_rounds} round(s) had failures")
    if last is not None and last.get("error"):
        problems.append(f"the last round failed: {last['error']}")
    if src.store_error:
        problems.append(f"the store cannot be read: {src.store_error}")
    open_epoch = last.get("epoch") if last is not None and isinstance(last.get("epoch"), dict) else None
    return {
        "health": "DEGRADED" if problems else "HEALTHY",
        "problems": problems,
        "state_path": str(src.state_path),
        "identity": {
            "world_id": src.identity.get("world_id") or (last or {}).get("world_id"),
            "node_id": src.identity.get("node_id") or (last or {}).get("node_id"),
            "state_id": src.identity.get("state_id"),
        },
        "store": {"root": str(src.store_root) if src.store_root else None, "indexed": src.indexed},
        "evaluated_at_unix_ms": now_ms,
        "timeline": src.timeline,
        "rounds": {
            "executed": st.rounds_executed,
            "last_round_unix_ms": st.last_probe_unix_ms,
            "last_round_error": (last or {}).get("error"),
            "round_log": str(src.log_path) if src.log_path else None,
        },
        "checks": {
            "total": st.cumulative_total_checks,
            "passed": st.cumulative_passed_checks,
            "failed": st.cumulative_failed_checks,
            "pass_ratio": reward.pass_ratio(st.cumulative_passed_checks, st.cumulative_total_checks),
            "failure_reasons": dict(sorted(st.cumulative_failure_reasons.items())),
        },
        "backoff": off,
        "coverage": coverage(src),
        "failing": failing,
        "last_epoch": src.last_epoch,
        "open_epoch": open_epoch,
    }


# ---------------------------------------------------------------------- the text view


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "-"
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"
    return f"{stamp} ({_ago(now_ms - ms)})"


def _ago(delta_ms: int) -> str:
    future = delta_ms < 0
    text = _span(abs(delta_ms))
    return f"in {text}" if future else f"{text} ago"


def _span(ms: float) -> str:
    seconds = ms / 1000
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.1f} s"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def format_report(report: Mapping[str, Any], all_failing: bool = False) -> str:
    """The report for people, `zpool status`-style: health first, then what is wrong."""
    now = report["evaluated_at_unix_ms"]
    ident, store, rounds, checks = report["identity"], report["store"], report["rounds"], report["checks"]
    cov, off = report["coverage"], report["backoff"]
    rows = [
        ("health", report["health"]),
        *(("problem", p) for p in report["problems"]),
        ("node", f"{ident['node_id'] or '?'} (world {ident['world_id'] or '?'})"),
        ("state", report["state_path"]),
        ("store", _store_text(store, cov)),
        ("rounds", f"{rounds['executed']}, last {_when(rounds['last_round_unix_ms'], now)}"),
        *(
            [("clock", "virtual: times are the audit's own timeline")]
            if report["timeline"] == "virtual"
            else []
        ),
        (
            "checks",
            f"{checks['total']} ({checks['passed']} passed, {checks['failed']} failed, "
            f"pass ratio {_pct(checks['pass_ratio'])})",
        ),
        *((f"  {k}", str(v)) for k, v in checks["failure_reasons"].items()),
        ("backoff", _backoff_text(off, now)),
        *_coverage_rows(cov, now),
        ("epoch", _epoch_text(report["last_epoch"])),
    ]
    if report["open_epoch"]:
        e = report["open_epoch"]
        sums = f"{e.get('storage_valid_checks')}/{e.get('storage_total_checks')} valid checks"
        rows.append(("open epoch", f"#{e.get('epoch')}: {sums} over {e.get('rounds')} rounds so far"))
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:>{width}}: {value}" for name, value in rows]
    lines += _failing_lines(report["failing"], now, all_failing)
    return "\n".join(lines)


def _store_text(store: Mapping[str, Any], cov: Mapping[str, Any]) -> str:
    if store["root"] is None:
        return "unknown (pass --store ROOT)"
    kind = "indexed" if store["indexed"] else "plain listing, no must-hold index (see `index adopt`)"
    held = f"{cov['blobs']} blobs" if cov.get("blobs") is not None else "unreadable"
    return f"{store['root']} ({kind}, {held})"


def _backoff_text(off: Mapping[str, Any], now: int) -> str:
    if off["active"]:
        return (
            f"IN FORCE until {_when(off['until_unix_ms'], now)}: {off['reason']} x{off['multiplier']}, "
            f"{off['consecutive_failure_rounds']} failure round(s) in a row"
        )
    last = (
        f"; last ended {_when(off['until_unix_ms'], now)} ({off['reason']})" if off["until_unix_ms"] else ""
    )
    return f"none in force{last}; {off['rounds_skipped_total']} round(s) skipped in all"


def _coverage_rows(cov: Mapping[str, Any], now: int) -> list[tuple[str, str]]:
    if cov.get("blobs") is None:
        return [("coverage", "unknown (the store could not be read)")]
    rows = [
        (
            "coverage",
            f"{_pct(cov['ratio'])} of {cov['blobs']} blobs checked since they last changed; "
            f"{cov['never_checked']} never checked, {cov['changed_since_check']} changed since their check",
        ),
        (
            "verified",
            f"every blob held now checked since {_when(cov['every_blob_checked_since_unix_ms'], now)}",
        ),
    ]
    eta = cov["next_full_pass_eta_s"]
    rate = f" at {cov['checks_per_s']:.2f} checks/s" if cov["checks_per_s"] else ""
    next_in = _span(eta * 1000) if eta is not None else "? (rate unknown)"
    last = _when(cov["last_full_pass_unix_ms"], now)
    rows.append(
        ("pass", f"at {cov['pass_position']}/{cov['blobs']}; last full pass {last}; next in {next_in}{rate}")
    )
    return rows


def _epoch_text(epoch: Mapping[str, Any] | None) -> str:
    if not epoch:
        return "no epoch closed yet"
    span = f"rounds {epoch.get('first_round')}-{epoch.get('last_round')}"
    span += "" if epoch.get("complete") else ", incomplete"
    valid = f"{epoch.get('storage_valid_checks')}/{epoch.get('storage_total_checks')} valid checks"
    eligible = "eligible" if epoch.get("eligible") else "NOT eligible"
    return (
        f"#{epoch.get('epoch')} ({span}): {valid} ({_pct(epoch.get('pass_ratio'))}), {eligible}, "
        f"rewardable {epoch.get('rewardable_bytes')} B, storage score {epoch.get('storage_score') or 0:.4f}"
    )


def _failing_lines(failing: Sequence[Mapping[str, Any]], now: int, show_all: bool) -> list[str]:
    if not failing:
        return ["", "no blob failed its last check"]
    shown = failing if show_all else failing[:SHOWN_FAILING]
    width = max(len(str(f["content_hash"])) for f in shown)
    lines = ["", f"failing blobs ({len(failing)}):"]
    lines.append(f"  {'HASH':<{width}}  {'REASON':<17}  {'TIMES':>5}  FIRST FAILURE / LAST FAILURE")
    for f in shown:
        gone = "" if f["held"] is not False else "  (no longer in the store's listing)"
        lines.append(
            f"  {f['content_hash']:<{width}}  {f['reason'] or '?':<17}  {f['consecutive_failures']:>5}  "
            f"{_when(f['first_failure_unix_ms'], now)} / {_when(f['last_failure_unix_ms'], now)}{gone}"
        )
    if len(failing) > len(shown):
        lines.append(f"  ... and {len(failing) - len(shown)} more (--all lists them)")
    return lines


# ---------------------------------------------------------------------- the command


def main(argv: list[str] | None = None) -> int:
    """`distfs-pipeline status --state PATH [--store ROOT] [--json] [--all] [--at UNIX_MS]`."""
    parser = OneLineArgumentParser(
        prog=PROG, description="Health, failing blobs, backoff, coverage and reward inputs of an audit."
    )
    parser.add_argument("--state", required=True, type=Path, metavar="PATH", help="the state file")
    parser.add_argument("--store", type=Path, metavar="ROOT", help="the store root (default: as recorded)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for scripts)")
    parser.add_argument("--all", action="store_true", help="list every failing blob, not the first 20")
    parser.add_argument("--at", type=int, metavar="UNIX_MS", help="evaluate as of this time (default: now)")
    args = parser.parse_args(argv)
    try:
        sources = gather(args.state.absolute(), args.store.absolute() if args.store else None)
    except UsageError as err:
        print(f"{PROG}: error: {err}", file=sys.stderr, flush=True)
        return EXIT_USAGE
    now_ms = args.at if args.at is not None else default_now(sources)
    report = build_report(sources, now_ms)
    text = json.dumps(report, indent=2) if args.json else format_report(report, args.all)
    try:
        print(text, flush=True)
    except BrokenPipeError:  # `| head`: the reader has what it wanted
        with_devnull()
    return EXIT_DEGRADED if report["problems"] else EXIT_HEALTHY


def default_now(src: Sources) -> int:
    """Now on the wall clock; on a virtual timeline, the audit's own last round (real time means
    nothing there: a backoff would always look expired and every time a year old)."""
    if src.timeline == "virtual" and src.state.last_probe_unix_ms is not None:
        return src.state.last_probe_unix_ms
    return time.time_ns() // 1_000_000


def with_devnull() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


if __name__ == "__main__":
    raise SystemExit(main())
