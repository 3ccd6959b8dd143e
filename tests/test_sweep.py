"""The sweep summary from real job directories: rows, failed jobs, Pareto fronts, files, table."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus

from distfs_pipeline.studies import sweep

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def job(sweep_dir: Path, num: int, record: dict[str, Any]) -> Path:
    job_dir = sweep_dir / str(num)
    job_dir.mkdir(parents=True)
    (job_dir / sweep.RESULT_FILE).write_text(json.dumps({"job": num, **record}))
    return job_dir


def study_record(scenario: str, policy: str, checks: int, detect: float, recover: float) -> dict[str, Any]:
    return {
        "status": "completed",
        "scenario": scenario,
        "overrides": [f"scenario={scenario}", f"policy={policy}"],
        "objective": detect + recover + checks,
        "metrics": {
            "checks_spent": checks,
            "detection_latency_ms": detect,
            "recovery_latency_ms": recover,
            "undetected_episodes": 0,
        },
    }


def make_sweep(sweep_dir: Path) -> None:
    job(sweep_dir, 0, study_record("lost_blob", "default", 300, 2000.0, 2000.0))
    job(sweep_dir, 1, study_record("lost_blob", "steady", 250, 2000.0, 5000.0))  # beats job 0 on detection
    job(sweep_dir, 2, study_record("lost_blob", "thrifty", 260, 2400.0, 9000.0))  # dominated twice
    job(sweep_dir, 3, study_record("slow_disk", "default", 900, 50.0, 100.0))  # alone: on both fronts
    job(sweep_dir, 4, {"status": "failed", "scenario": "slow_disk", "error": "StudyJobFailed: boom"})
    job(sweep_dir, 5, {"status": "running", "overrides": ["scenario=bad_day"]})  # its worker died
    (sweep_dir / ".hidden" / "x").mkdir(parents=True)
    (sweep_dir / ".hidden" / "x" / sweep.RESULT_FILE).write_text("{}")  # not a job


def test_summary_files_list_every_job_with_fronts_per_scenario(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    rows = sweep.write_summary(tmp_path)
    with open(tmp_path / sweep.SUMMARY_CSV, newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [r["job"] for r in table] == ["0", "1", "2", "3", "4", "5"]
    assert [r["status"] for r in table] == ["completed"] * 4 + ["failed"] * 2
    assert table[4]["error"] == "StudyJobFailed: boom"
    assert table[5]["error"] == sweep.DIED
    assert [r["pareto_detection"] for r in table] == ["False", "True", "False", "True", "False", "False"]
    assert [r["pareto_recovery"] for r in table] == ["True", "True", "False", "True", "False", "False"]
    assert (table[1]["overrides"], table[1]["job_dir"]) == ("scenario=lost_blob policy=steady", "1")
    summary = json.loads((tmp_path / sweep.SUMMARY_JSON).read_text())
    assert (summary["jobs"], summary["completed"], summary["failed"]) == (6, 4, 2)
    assert summary["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / sweep.SUMMARY_PNG).read_bytes().startswith(PNG_MAGIC)


def test_pareto_front_minimizes_both_axes() -> None:
    points = [(1.0, 9.0), (2.0, 5.0), (3.0, 5.0), (4.0, 1.0), (4.0, 1.0), (5.0, 6.0)]
    assert sweep.pareto_front(points) == {0, 1, 3, 4}


def test_printed_table_names_the_sweep_and_shows_errors(tmp_path: Path) -> None:
    make_sweep(tmp_path)
    text = sweep.format_table(sweep.write_summary(tmp_path, plot=False))
    lines = text.splitlines()
    assert lines[0].split()[:4] == ["job", "status", "scenario", "sweep"]
    assert "policy=steady" in lines[2] and "DR" in lines[2]
    assert "    error: StudyJobFailed: boom" in text
    assert "6 jobs: 4 completed, 2 failed" in text


def test_plain_audit_sweep_still_gets_files_and_a_plot_saying_why_it_is_empty(tmp_path: Path) -> None:
    job_dir = job(tmp_path, 0, {"status": "completed", "overrides": ["policy=steady"], "metrics": {}})
    (job_dir / "summary.json").write_text(json.dumps({"checks_spent": 20, "rounds": 20}))
    rows = sweep.write_summary(tmp_path)
    assert rows[0]["checks_spent"] is None  # metrics are filled by the callback, from summary.json
    assert sweep._audit_metrics(job_dir) == {"checks_spent": 20, "rounds": 20}
    assert (tmp_path / sweep.SUMMARY_PNG).read_bytes().startswith(PNG_MAGIC)


def test_grouped_means_average_over_the_nuisance_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for num, (policy, target, detect) in enumerate([("a", 0, 100.0), ("a", 5, 300.0), ("b", 0, 50.0)]):
        record = study_record("lost_blob", policy, 10 * (num + 1), detect, 0.0)
        record["overrides"].append(f"scenario.faults.0.target_index={target}")
        job(tmp_path, num, record)
    job(tmp_path, 3, {"status": "failed", "overrides": ["scenario=lost_blob", "policy=b"], "error": "x"})
    groups = sweep.group_means(sweep.write_summary(tmp_path, plot=False), ["scenario", "policy"])
    assert [
        (g["policy"], g["jobs"], g["failed"], g["detection_latency_ms"], g["checks_spent"]) for g in groups
    ] == [
        ("a", 2, 0, 200.0, 15.0),
        ("b", 2, 1, 50.0, 30.0),
    ]
    assert sweep.main([str(tmp_path), "--by", "policy", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "4 jobs: 3 completed, 1 failed" in printed and printed.splitlines()[-1].split()[:4] == [
        "b",
        "2",
        "1",
        "30",
    ]


def returned(status: JobStatus, value: Any) -> JobReturn:
    ret = JobReturn()
    ret.status = status
    ret.return_value = value
    return ret


def test_end_record_keeps_what_the_job_wrote_and_adds_hydras_verdict() -> None:
    written = {"status": "completed", "objective": 12.0, "metrics": {"checks_spent": 3}}
    assert sweep.end_record(written, returned(JobStatus.COMPLETED, 12.0)) == written
    plain = sweep.end_record({"status": "running"}, returned(JobStatus.COMPLETED, 7))
    assert (plain["status"], plain["objective"]) == ("completed", 7.0)
    failed = sweep.end_record({"status": "running"}, returned(JobStatus.FAILED, ValueError("bad key")))
    assert (failed["status"], failed["error"]) == ("failed", "ValueError: bad key")
    study_failed = {"status": "failed", "error": "UsageError: the study's own words"}
    kept = sweep.end_record(study_failed, returned(JobStatus.FAILED, RuntimeError("wrapped")))
    assert kept["error"] == "UsageError: the study's own words"


def test_a_compact_job_error_is_recorded_as_its_one_line() -> None:
    from distfs_pipeline.app import JobFailed

    failed = sweep.end_record({"status": "running"}, returned(JobStatus.FAILED, JobFailed("runtime.x: bad")))
    assert failed["error"] == "runtime.x: bad"


@pytest.mark.parametrize("argv", [[], ["/nonexistent/sweep"], ["--by"]])
def test_command_line_mistakes_are_one_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        sweep.main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("python -m distfs_pipeline.sweep: error: ")


# ---------------------------------------------------------------------- the figure


def drawn_texts(fig: Any) -> list[tuple[str, Any]]:
    """(text, display bbox) of every text the figure draws: tick labels inside the view limits
    (matplotlib keeps some outside, undrawn), titles, labels, legend entries, annotations."""
    from matplotlib.text import Text

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ticks: set[int] = set()
    shown: list[Any] = []
    for ax in fig.axes:
        for axis, limits in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            low, high = sorted(limits)
            for tick in axis.get_major_ticks():
                ticks |= {id(tick.label1), id(tick.label2)}
                label = tick.label1
                if low - 1e-9 <= tick.get_loc() <= high + 1e-9 and label.get_visible() and label.get_text():
                    shown.append(label)
    shown += [t for t in fig.findobj(Text) if id(t) not in ticks and t.get_visible() and t.get_text().strip()]
    return [(t.get_text(), t.get_window_extent(renderer)) for t in shown]


def assert_no_overlap(fig: Any) -> None:
    import itertools

    boxes = drawn_texts(fig)
    clashes = [(a, b) for (a, box_a), (b, box_b) in itertools.combinations(boxes, 2) if box_a.overlaps(box_b)]
    assert not clashes, clashes[:5]


def scatter_points(ax: Any) -> int:
    return sum(len(c.get_offsets()) for c in ax.collections)


def full_row(job_num: int, **values: Any) -> dict[str, Any]:
    row: dict[str, Any] = {c: None for c in (*sweep.ID_COLUMNS, *sweep.METRIC_COLUMNS)}
    row |= {c: False for c in sweep.FRONT_COLUMNS} | {"job": job_num, "status": "completed", "error": None}
    return row | values


def study_rows(settings: int) -> list[dict[str, Any]]:
    rows = []
    for num in range(2 * settings):
        scenario = ("bit_rot", "lost_blob")[num % 2]
        rows.append(
            full_row(
                num,
                scenario=scenario,
                overrides=f"scenario={scenario} policy.backoff_base_ms={100 * (num // 2)}",
                checks_spent=200 + num % 5,
                detection_latency_ms=2000.0 + num % 3,
                recovery_latency_ms=3000.0 + num % 4,
                objective=5000.0 + num,
                undetected_episodes=1 if num == 3 else 0,
                unrecovered_repairs=1 if num == 4 else 0,
            )
        )
    sweep.mark_fronts(rows)
    return rows


@pytest.mark.parametrize("settings", [3, 14], ids=["marker-per-setting", "numbered-points"])
def test_study_figure_has_points_censored_markers_and_the_objective_heatmap(settings: int) -> None:
    import matplotlib.pyplot as plt

    rows = study_rows(settings)
    fig = sweep.build_figure(rows)
    try:
        detection, recovery, heatmap = fig.axes[0], fig.axes[1], fig.axes[2]
        censored = [a for a in fig.findobj() if a.get_gid() == sweep.CENSORED_GID]
        assert len([a for a in censored if a.axes is detection]) == 2  # job 3: hollow marker + arrow
        assert len([a for a in censored if a.axes is recovery]) == 2  # job 4
        assert scatter_points(detection) >= len(rows) and scatter_points(recovery) >= len(rows)
        [image] = [a for a in heatmap.get_images() if a.get_gid() == sweep.HEATMAP_GID]
        grid = image.get_array()
        assert grid.shape == ((2, settings) if settings <= 10 else (settings, 2))
        assert grid.min() == 1.0  # each scenario's best is at 1x
        cells = [t.get_text() for t in heatmap.texts]
        assert any(c.startswith("\u2265") for c in cells)  # a censored objective is a lower bound
        if settings > 10:  # too many shapes: points carry job numbers, placed without overlap
            numbers = {t.get_text() for ax in (detection, recovery) for t in ax.texts}
            assert len(numbers) > settings
        assert_no_overlap(fig)
    finally:
        plt.close(fig)


def test_plain_audit_figure_plots_pass_ratio_checks_and_failures_per_job() -> None:
    import matplotlib.pyplot as plt

    rows = [
        full_row(n, scenario="none", overrides=f"policy={p} probe.challenges_per_tick={c}",
                 checks_spent=300 * c, failed_checks=3 * n, pass_ratio=1 - 0.01 * n, rounds=300)
        for n, (p, c) in enumerate([("default", 1), ("steady", 4), ("thrifty", 16)])
    ]  # fmt: skip
    rows.append(full_row(3, status="failed", overrides="policy=broken", error="boom"))
    fig = sweep.build_figure(rows)
    try:
        ratio, checks, failures = fig.axes
        assert [p.get_width() for p in ratio.patches] == [1.0, 0.99, 0.98, 0.0]
        assert [p.get_width() for p in checks.patches] == [300, 1200, 4800, 0.0]
        assert [p.get_width() for p in failures.patches] == [0, 3, 6, 0.0]
        assert "failed" in [t.get_text() for t in checks.texts]
        assert_no_overlap(fig)
    finally:
        plt.close(fig)


def test_a_sweep_where_every_job_failed_says_why_in_the_figure() -> None:
    import matplotlib.pyplot as plt

    fig = sweep.build_figure([full_row(0, status="failed", error="UsageError: runtime.x: bad")])
    try:
        assert any("runtime.x: bad" in t.get_text() for t in fig.texts)
    finally:
        plt.close(fig)


def test_audit_jobs_get_their_pass_ratio_from_the_run_summary(tmp_path: Path) -> None:
    job_dir = tmp_path / "0"
    job_dir.mkdir()
    (job_dir / "summary.json").write_text(json.dumps({"checks_spent": 20, "pass_ratio": 0.95, "rounds": 20}))
    assert sweep._audit_metrics(job_dir)["pass_ratio"] == 0.95
    row = full_row(0, scenario="none", overrides="policy=steady", checks_spent=20, pass_ratio=0.95)
    assert "95.0%" in sweep.format_table([row]).splitlines()[1]


def test_a_single_study_job_prints_its_study_metrics(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline", "scenario=lost_blob", "runtime.rounds=60",
         "scenario.faults.0.at_round=5", "scenario.faults.0.repair_at_round=30",
         f"hydra.run.dir={tmp_path}/run"],
        capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PYTHONPATH": str(root), "XDG_CACHE_HOME": str(tmp_path / "cache")},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    study = done.stdout[done.stdout.index("distfs_pipeline study: scenario lost_blob") :]
    result = json.loads((tmp_path / "run" / sweep.RESULT_FILE).read_text())
    assert f"detection  {result['metrics']['detection_latency_ms']:.0f} ms" in study
    assert "recovery" in study and f"objective  {result['objective']:.0f} = detection_latency_ms" in study


def test_a_censored_latency_is_printed_as_a_lower_bound() -> None:
    from distfs_pipeline.studies.study import StudyMetrics, format_study

    metrics = StudyMetrics(fault_episodes=1, undetected_episodes=1, detection_latency_ms=20000.0)
    metrics.detection_latency_rounds = 100.0
    record = {"scenario": "bit_rot", "metrics": metrics.scalars(), "objective": 20000.0}
    record["objective_formula"] = "detection_latency_ms"
    text = format_study(record)
    assert ">= 20000 ms (>= 100.0 rounds)" in text and "1 of 1 fault(s) not noticed" in text
    assert "recovery   - (nothing to measure)" in text


@pytest.mark.parametrize(
    "kind", ["dangling link", "link", "directory", "not JSON", "metrics list", "overrides int", "job str"]
)
def test_a_job_record_that_cannot_be_read_is_a_failed_row(tmp_path: Path, kind: str) -> None:
    """A job dir whose `result.json` is refused or damaged is listed as failed with why; it is
    never left out of the summary (the count of jobs would then quietly shrink)."""
    make_sweep(tmp_path)
    record = tmp_path / "6" / sweep.RESULT_FILE
    record.parent.mkdir()
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    if kind == "link":
        victim.write_text('{"status": "completed"}')
    if kind in ("link", "dangling link"):
        record.symlink_to(victim)
    elif kind == "directory":
        record.mkdir()
    elif kind == "not JSON":
        record.write_text("{not json")
    else:
        bad = {"metrics list": '"metrics": [1]', "overrides int": '"overrides": 5', "job str": '"job": "0"'}
        record.write_text('{"status": "completed", ' + bad[kind] + "}")
    rows = sweep.write_summary(tmp_path, plot=False)
    assert len(rows) == 7
    row = next(r for r in rows if r["job_dir"] == "6")
    assert row["status"] == "failed" and row["error"].startswith("result.json")
    expected = {"link": "symbolic link", "dangling link": "symbolic link", "directory": "directory"}
    assert expected.get(kind, "not JSON" if kind == "not JSON" else "wrong type") in row["error"]


def test_a_deep_tree_in_the_sweep_dir_is_not_a_crash(tmp_path: Path) -> None:
    """Job dirs sit right below the sweep dir; a planted tree 1,500 levels deep (os.walk recursed
    until RecursionError) is not searched past a few levels."""
    make_sweep(tmp_path)
    levels = [tmp_path / "a"]
    levels[0].mkdir()
    for _ in range(1500):
        levels.append(Path(os.path.join(levels[-1], "a")))
        os.mkdir(levels[-1])
    try:
        assert len(sweep.write_summary(tmp_path, plot=False)) == 6
    finally:  # bottom up: pytest's own clean-up (shutil.rmtree) recurses and would fail on it
        for level in reversed(levels):
            os.rmdir(level)


def test_the_expected_jobs_are_listed_and_nothing_else(tmp_path: Path) -> None:
    """With the driver's job dirs: a record elsewhere is ignored, a dir never made (the sweep
    ended first) is left out, and a started job without a record is a failed row."""
    make_sweep(tmp_path)
    (tmp_path / "7").mkdir()  # started, no record
    expected = [tmp_path / "0", tmp_path / "1", tmp_path / "7", tmp_path / "8"]  # 8 never started
    rows = sweep.summary_rows(tmp_path, expected)
    assert [(r["job_dir"], r["status"]) for r in rows] == [
        ("0", "completed"),
        ("1", "completed"),
        ("7", "failed"),
    ]
    assert rows[2]["error"].startswith("no result.json")


def test_plot_refuses_a_link_planted_at_the_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """matplotlib's own `savefig(path)` opens the path with O_TRUNC and follows a link: a link planted
    in a shared sweep dir would let a root run overwrite any file. The PNG goes through safefile."""
    make_sweep(tmp_path)
    victim = tmp_path.parent / f"{tmp_path.name}-victim"
    victim.write_text("not yours")
    (tmp_path / sweep.SUMMARY_PNG).symlink_to(victim)
    with pytest.raises(sweep.SummaryNotWritten, match=r"sweep_summary\.png: .*symbolic link") as caught:
        sweep.write_summary(tmp_path)  # the other files are still written, then the refusal is raised
    assert "\n" not in str(caught.value) and str(caught.value).startswith("hydra.sweep.dir: ")
    assert victim.read_text() == "not yours"
    assert (tmp_path / sweep.SUMMARY_CSV).is_file() and (tmp_path / sweep.SUMMARY_JSON).is_file()
