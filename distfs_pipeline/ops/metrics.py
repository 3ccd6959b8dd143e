"""Prometheus metrics of a running audit: served on 127.0.0.1 and/or written as a node_exporter textfile.

Why: an operator alerts on a node's audit the way Storj's dashboard and node_exporter do, so the
numbers that matter are exported as plain series: checks by result and reason, rounds and rounds
skipped by backoff, the backoff deadline and reason, consecutive failure rounds, blobs failing,
coverage, the last round's time and duration, bytes read. Every series exists from the start, with
every failure reason at 0, so `increase(...[1h]) > 0` alerts work before the first failure.

The runner calls one `Metrics` object (its observer) at the start, after each durable round and at
the end; this module never touches the store's bytes. The counters come from the state (cumulative
across runs, like the state file), the per-blob gauges from the runner's book (kept current from
each round's changes, so a round costs O(its checks), not O(store)), the bytes from the process's
own read counter (`pacing.bytes_read_so_far`).

Output:
- `runtime.metrics_port`: `prometheus_client`'s HTTP server bound to 127.0.0.1 only (0: any free
  port, logged); each scrape reads the latest snapshot.
- `runtime.metrics_textfile`: the same text in node_exporter's textfile-collector format, replaced
  atomically (`safefile.write_atomic`: readers never see half a file; a planted link is refused) at
  the start, at most once a second while running, and at the end.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from distfs_pipeline.core import safefile
from distfs_pipeline.core.blobs import BlobRecord
from distfs_pipeline.core.errors import UsageError, WorldError
from distfs_pipeline.core.models import CursorState, FailureReason, RoundReport
from distfs_pipeline.ops.pacing import bytes_read_so_far

PREFIX = "distfs_pipeline"
REASONS = tuple(reason.value for reason in FailureReason)
TEXTFILE_INTERVAL_S = 1.0
_LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape shows; replaced whole after each round (scrapes run in another thread)."""

    state: CursorState
    blobs: int = 0
    blobs_checked: int = 0
    blobs_failing: int = 0
    last_round_unix_ms: int | None = None
    last_round_seconds: float | None = None
    read_bytes: int = 0


def render(snapshot: Snapshot, identity: Mapping[str, str], now_ms: int) -> list[Metric]:
    """The metric families of one snapshot (pure: the same input gives the same text)."""
    st = snapshot.state
    p = PREFIX
    out: list[Metric] = []
    info = GaugeMetricFamily(f"{p}_info", "The audited node and this tool's version.", labels=list(identity))
    info.add_metric(list(identity.values()), 1)
    out.append(info)
    checks = CounterMetricFamily(
        f"{p}_checks", "Storage-challenge checks by result (state, cumulative).", labels=["result"]
    )
    checks.add_metric(["passed"], st.cumulative_passed_checks)
    checks.add_metric(["failed"], st.cumulative_failed_checks)
    out.append(checks)
    failures = CounterMetricFamily(
        f"{p}_check_failures", "Failed checks by reason (state, cumulative).", labels=["reason"]
    )
    for reason in _all_reasons(st.cumulative_failure_reasons):
        failures.add_metric([reason], st.cumulative_failure_reasons.get(reason, 0))
    out.append(failures)
    out.append(_counter(f"{p}_rounds", "Rounds executed (state, cumulative).", st.rounds_executed))
    out.append(
        _counter(
            f"{p}_rounds_skipped_by_backoff",
            "Rounds skipped because a backoff was in force (state, cumulative).",
            st.cumulative_backoff_skipped_rounds,
        )
    )
    out.append(
        _gauge(
            f"{p}_backoff_until_timestamp_seconds",
            "End of the backoff in force (unix seconds; 0: none ever).",
            st.backoff_until_unix_ms / 1000,
        )
    )
    out.append(
        _gauge(
            f"{p}_backoff_active",
            "1 while a backoff is in force.",
            1 if st.backoff_until_unix_ms > now_ms else 0,
        )
    )
    reason = GaugeMetricFamily(
        f"{p}_backoff_reason", "1 for the reason of the last backoff.", labels=["reason"]
    )
    for name in _all_reasons({}):
        reason.add_metric([name], 1 if st.last_backoff_reason == name else 0)
    out.append(reason)
    out.append(
        _gauge(
            f"{p}_last_backoff_duration_seconds",
            "Length of the last backoff applied.",
            st.last_backoff_duration_ms / 1000,
        )
    )
    out.append(
        _gauge(
            f"{p}_consecutive_failure_rounds",
            "Failure rounds in a row (0: healthy).",
            st.consecutive_failure_rounds,
        )
    )
    out.append(_gauge(f"{p}_blobs", "Blobs the node must hold (audit candidates).", snapshot.blobs))
    out.append(_gauge(f"{p}_blobs_failing", "Blobs whose last check failed.", snapshot.blobs_failing))
    out.append(
        _gauge(
            f"{p}_blobs_never_checked",
            "Blobs held now that were never checked.",
            max(0, snapshot.blobs - snapshot.blobs_checked),
        )
    )
    out.append(
        _gauge(
            f"{p}_coverage_ratio",
            "Share of the blobs held now that have been checked at least once.",
            coverage(snapshot.blobs_checked, snapshot.blobs),
        )
    )
    last = snapshot.last_round_unix_ms
    out.append(
        _gauge(
            f"{p}_last_round_timestamp_seconds",
            "When the last round was observed (unix seconds; 0: no round yet).",
            (last or 0) / 1000,
        )
    )
    out.append(
        _gauge(
            f"{p}_last_round_duration_seconds",
            "How long the last round took to run and commit.",
            snapshot.last_round_seconds or 0.0,
        )
    )
    out.append(_counter(f"{p}_read_bytes", "Bytes this process has read (rchar).", snapshot.read_bytes))
    return out


def coverage(checked: int, held: int) -> float:
    """checked / held, 0 for an empty store (nothing held is nothing proven)."""
    return min(1.0, checked / held) if held > 0 else 0.0


def _all_reasons(seen: Mapping[str, int]) -> list[str]:
    """Every upstream reason, plus any other key a state file holds (never dropped silently)."""
    return [*REASONS, *sorted(set(seen) - set(REASONS))]


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


class _Collector(Collector):
    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield from render(self.metrics.snapshot, self.metrics.identity, time.time_ns() // 1_000_000)


class Metrics:
    """The runner's observer: keeps a snapshot current and exports it (HTTP and/or textfile)."""

    def __init__(
        self,
        identity: Mapping[str, str],
        store: Any,
        *,
        port: int | None = None,
        textfile: Path | None = None,
    ) -> None:
        self.identity = dict(identity)
        self.store = store
        self.port = port
        self.textfile = textfile
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))
        self.snapshot = Snapshot(CursorState())
        self.bound_port: int | None = None
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._failing: set[str] = set()
        self._held: Sequence[str] = ()
        self._read_at_start = bytes_read_so_far() or 0
        self._last_write = 0.0

    # -- the runner's calls

    def start(self, state: CursorState, book: Mapping[str, BlobRecord]) -> None:
        """Export the state as it is now (zeros on a new state): before the first round."""
        self._failing = {h for h, rec in book.items() if rec.failing}
        self._held = self._candidates()
        checked = self._count_checked(book)
        self.snapshot = Snapshot(state, len(self._held), checked, len(self._failing))
        if self.port is not None:
            self._serve()
        self._write_textfile(force=True)

    def round(
        self,
        report: RoundReport,
        state: CursorState,
        changes: Mapping[str, BlobRecord],
        book: Mapping[str, BlobRecord],
        seconds: float,
    ) -> None:
        """After a durable round: fold its changes in O(changes) (a changed store is recounted)."""
        checked = self.snapshot.blobs_checked
        for content_hash, record in changes.items():
            if record.failing:
                self._failing.add(content_hash)
            else:
                self._failing.discard(content_hash)
            if record.checks == report.checked_hashes.count(content_hash):
                checked += 1  # its first checks ever were in this round
        held = self._candidates()
        if held is not self._held and (len(held) != len(self._held) or tuple(held) != tuple(self._held)):
            self._held = held
            checked = self._count_checked(book)
        self.snapshot = Snapshot(
            state,
            len(held),
            checked,
            len(self._failing),
            report.observed_at_unix_ms,
            seconds,
            self._read_bytes(),
        )
        self._write_textfile()

    def close(self, state: CursorState) -> None:
        """At the end of the run: the final textfile, then the server stops."""
        self.snapshot = dataclasses.replace(self.snapshot, state=state, read_bytes=self._read_bytes())
        try:
            self._write_textfile(force=True)
        finally:
            if self._server is not None:
                self._server.shutdown()
                self._server.server_close()
                self._server = None

    # -- output

    def text(self) -> bytes:
        """The exposition text of the current snapshot."""
        return generate_latest(self.registry)

    def _serve(self) -> None:
        try:
            self._server, self._thread = start_http_server(
                self.port or 0, addr="127.0.0.1", registry=self.registry
            )
        except OSError as err:
            raise UsageError(
                f"runtime.metrics_port: cannot serve on 127.0.0.1:{self.port} ({err.strerror or err})"
            ) from None
        self.bound_port = int(self._server.server_port)
        _LOG.info("metrics: serving Prometheus text on http://127.0.0.1:%d/metrics", self.bound_port)

    def _write_textfile(self, force: bool = False) -> None:
        if self.textfile is None:
            return
        now = time.monotonic()
        if not force and now - self._last_write < TEXTFILE_INTERVAL_S:
            return
        try:
            safefile.check_trusted_path(self.textfile.parent)  # a dir swapped in since the last write
            safefile.write_atomic(self.textfile, self.text(), durable=False)
        except OSError as err:
            raise UsageError(f"runtime.metrics_textfile: cannot write: {safefile.describe(err)}") from None
        self._last_write = now

    # -- helpers

    def _candidates(self) -> Sequence[str]:
        try:
            return self.store.candidates()
        except (WorldError, OSError):
            return self._held  # each round reports the listing failure itself

    def _count_checked(self, book: Mapping[str, BlobRecord]) -> int:
        """O(store): only at the start and when the store's content changed."""
        count = 0
        for content_hash in self._held:
            record = book.get(content_hash)
            if record is not None and record.last_checked_ms is not None:
                count += 1
        return count

    def _read_bytes(self) -> int:
        now = bytes_read_so_far()
        return max(0, now - self._read_at_start) if now is not None else 0
