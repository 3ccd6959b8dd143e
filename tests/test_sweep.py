"""The sweep summary from real job directories: rows, failed jobs, Pareto fronts, files, table."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
from hydra.core.utils import JobReturn, JobStatus

from distfs_pipeline import sweep

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
