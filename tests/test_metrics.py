"""Metrics on real runs: a real 127.0.0.1 socket scraped while the run goes, a real textfile."""

from __future__ import annotations

import os
import socket
import threading
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import CursorState, FailureReason, RoundReport
from distfs_pipeline.core.store import LocalCasStore
from distfs_pipeline.ops import metrics
from distfs_pipeline.pipeline.runner import RunHooks, run_audit
from distfs_pipeline.pipeline.validation import Settings


def small_store(root: Path, blobs: int = 6) -> tuple[Path, list[str]]:
    store = LocalCasStore(root)
    hashes = [store.put_bytes(f"metrics blob {i} ".encode() * (i * 50 + 1)) for i in range(blobs)]
    return root, sorted(hashes)


def settings(**runtime: Any) -> Settings:
    probe = runtime.pop("probe", {})
    base = {"progress": "never", "rounds": 4, "epoch_rounds": 100}
    return Settings.model_validate({"runtime": base | runtime, "probe": probe})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition text, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return found[(f"distfs_pipeline_{name}", tuple(sorted(labels.items())))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_textfile_counts_checks_reasons_blobs_and_coverage(tmp_path: Path) -> None:
    root, hashes = small_store(tmp_path / "store")
    os.unlink(LocalCasStore(root).blob_path(hashes[0]))  # indexed: fails as MISSING_SAMPLE
    textfile = tmp_path / "node_exporter" / "distfs.prom"
    textfile.parent.mkdir()
    run_audit(
        settings(storage_root=str(root), metrics_textfile=str(textfile), probe={"challenges_per_tick": 2}),
        tmp_path / "run",
    )
    found = samples(textfile.read_text())
    # 4 rounds x 2 checks over 6 blobs: the lost first blob is checked twice (the cursor wraps)
    assert value(found, "checks_total", result="passed") == 6
    assert value(found, "checks_total", result="failed") == 2
    assert value(found, "check_failures_total", reason="MISSING_SAMPLE") == 2
    for reason in FailureReason:  # every reason present, at 0 when it never happened
        assert ("distfs_pipeline_check_failures_total", (("reason", reason.value),)) in found
    assert value(found, "check_failures_total", reason="HASH_MISMATCH") == 0
    assert value(found, "rounds_total") == 4
    assert value(found, "blobs") == 6
    assert value(found, "blobs_failing") == 1
    assert value(found, "blobs_never_checked") == 0  # 4 rounds x 2 checks cover 6 blobs
    assert value(found, "coverage_ratio") == 1.0
    assert value(found, "last_round_timestamp_seconds") == (1_767_225_600_000 + 3 * 200) / 1000
    assert value(found, "read_bytes_total") > 0
    assert not [p for p in textfile.parent.iterdir() if p != textfile]  # no temp file left behind


def test_every_series_exists_before_the_first_round(tmp_path: Path) -> None:
    """Alerts work from the start: a fresh state exports zeros, not missing series."""
    root, _ = small_store(tmp_path / "store")
    textfile = tmp_path / "m.prom"
    seen: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    hooks = RunHooks(
        before_round=lambda n, _ms: seen.append(samples(textfile.read_text())) if n == 1 else None
    )
    run_audit(
        settings(storage_root=str(root), metrics_textfile=str(textfile), rounds=1), tmp_path / "run", hooks
    )
    first = seen[0]
    assert value(first, "rounds_total") == 0 and value(first, "checks_total", result="failed") == 0
    assert value(first, "blobs") == 6 and value(first, "blobs_never_checked") == 6
    assert value(first, "coverage_ratio") == 0.0 and value(first, "backoff_active") == 0
    for reason in FailureReason:
        assert value(first, "check_failures_total", reason=reason.value) == 0
        assert value(first, "backoff_reason", reason=reason.value) == 0
    assert set(first) <= set(samples(textfile.read_text()))  # the same series after the run


def test_http_endpoint_on_loopback_is_scraped_during_the_run(tmp_path: Path) -> None:
    root, _hashes = small_store(tmp_path / "store")
    port = free_port()
    scraped: list[str] = []

    def scrape(n: int, _ms: int) -> None:
        if n == 3:  # two rounds are durable: the scrape shows them
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
                scraped.append(answer.read().decode())

    run_audit(
        settings(storage_root=str(root), metrics_port=port), tmp_path / "run", RunHooks(before_round=scrape)
    )
    found = samples(scraped[0])
    assert value(found, "rounds_total") == 2 and value(found, "checks_total", result="passed") == 2
    assert value(found, "coverage_ratio") == pytest.approx(2 / 6)
    info = next(k for k in found if k[0] == "distfs_pipeline_info")
    assert ("store_root", str(root.absolute())) in info[1]
    with pytest.raises(OSError):  # the server is gone when the run ends
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_port_zero_binds_loopback_only_and_a_busy_port_is_one_usage_line(tmp_path: Path) -> None:
    root, _ = small_store(tmp_path / "store")
    sink = metrics.Metrics({"node_id": "n"}, LocalCasStore(root), port=0)
    sink.start(CursorState(), {})
    try:
        assert sink.bound_port and sink._server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{sink.bound_port}/metrics", timeout=10) as answer:
            assert b"distfs_pipeline_rounds_total 0.0" in answer.read()
        busy = metrics.Metrics({"node_id": "n"}, LocalCasStore(root), port=sink.bound_port)
        with pytest.raises(UsageError, match=r"runtime.metrics_port: cannot serve on 127.0.0.1:\d+"):
            busy.start(CursorState(), {})
    finally:
        sink.close(CursorState())


def test_a_textfile_that_is_a_link_or_inside_the_store_is_refused(tmp_path: Path) -> None:
    root, _ = small_store(tmp_path / "store")
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "m.prom"
    link.symlink_to(victim)
    with pytest.raises(UsageError, match=r"runtime\.metrics_textfile: cannot write"):
        run_audit(settings(storage_root=str(root), metrics_textfile=str(link)), tmp_path / "run")
    assert victim.read_text() == "precious"
    with pytest.raises(UsageError, match="inside the audited store"):
        run_audit(settings(storage_root=str(root), metrics_textfile=str(root / "m.prom")), tmp_path / "run2")
    assert not (root / "m.prom").exists()


def test_round_folds_changes_without_rescanning_the_store(tmp_path: Path) -> None:
    """Per round the observer touches only the round's changes; a changed store is recounted."""
    root, hashes = small_store(tmp_path / "store", blobs=3)
    store = LocalCasStore(root)
    sink = metrics.Metrics({}, store)
    sink.start(CursorState(), {})
    from distfs_pipeline.core.blobs import apply_report
    from distfs_pipeline.core.models import CheckFailure

    book: dict[str, Any] = {}
    report = RoundReport(
        node_id="n", world_id="w", observed_at_unix_ms=5, checked_hashes=[hashes[0], hashes[1]]
    )
    report.failures = [CheckFailure(hashes[1], FailureReason.HASH_MISMATCH, "x")]
    changes = apply_report(book, report)
    book.update(changes)
    sink.round(report, CursorState(rounds_executed=1), changes, book, 0.01)
    assert (sink.snapshot.blobs, sink.snapshot.blobs_checked, sink.snapshot.blobs_failing) == (3, 2, 1)
    again = RoundReport(node_id="n", world_id="w", observed_at_unix_ms=6, checked_hashes=[hashes[1]])
    changes = apply_report(book, again)
    book.update(changes)
    sink.round(again, CursorState(rounds_executed=2), changes, book, 0.01)
    assert (sink.snapshot.blobs_checked, sink.snapshot.blobs_failing) == (2, 0)  # a re-check is not new
    store.put_bytes(b"a fourth blob")
    quiet = RoundReport(node_id="n", world_id="w", observed_at_unix_ms=7)
    sink.round(quiet, CursorState(rounds_executed=3), {}, book, 0.0)
    assert (sink.snapshot.blobs, sink.snapshot.blobs_checked) == (4, 2)


def test_scrapes_from_another_thread_see_whole_snapshots(tmp_path: Path) -> None:
    root, _ = small_store(tmp_path / "store")
    sink = metrics.Metrics({}, LocalCasStore(root))
    sink.start(CursorState(), {})
    stop = threading.Event()
    texts: list[bytes] = []

    def scrape() -> None:
        while not stop.is_set():
            texts.append(sink.text())

    thread = threading.Thread(target=scrape)
    thread.start()
    for n in range(1, 200):
        report = RoundReport(node_id="n", world_id="w", observed_at_unix_ms=n)
        sink.round(report, CursorState(rounds_executed=n, cumulative_total_checks=n), {}, {}, 0.0)
    stop.set()
    thread.join()
    for text in texts:  # rounds_total and the timestamp always come from the same round
        found = samples(text.decode())
        assert value(found, "rounds_total") == value(found, "last_round_timestamp_seconds") * 1000 or (
            value(found, "rounds_total") == 0
        )
