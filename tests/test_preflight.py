"""Pre-flight: every bad configuration fails before any round, as one line naming the key."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hydra.compose import compose
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.pipeline import preflight as pf
from distfs_pipeline.pipeline.flags import rewrite_argv
from distfs_pipeline.pipeline.preflight import preflight

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
P = "--reward-distfs-"


def error(argv: list[str], config_dir: Path = CONF) -> str:
    with pytest.raises(UsageError) as err:
        preflight(argv, config_dir)
    message = str(err.value)
    assert "\n" not in message
    return message


def user_dir(tmp_path: Path, files: dict[str, str]) -> str:
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    return f"hydra.searchpath=[file://{tmp_path}]"


@pytest.fixture(autouse=True)
def hydra_left_clean() -> object:
    yield
    assert not GlobalHydra.instance().is_initialized()


# --- single run ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["policy=steady", "probe=upstream_full", "runtime=wall", "scenario=none"],
        ["policy=thrifty", "--cfg", "job"],
        ["runtime.storage_root=/srv/store", "runtime.state_path=/var/lib/probe-state.json"],
    ],
)
def test_good_configurations_pass(argv: list[str]) -> None:
    preflight(argv, CONF)


def test_spec5_cli_vector_passes_after_rewrite() -> None:
    argv = [
        *(P + "probe-max-sample-bytes", "8192", P + "probe-per-tick=3", P + "probe-ttl-ms", "45000"),
        *(P + "probe-allowed-clock-skew-ms", "2000", P + "adaptive-max-checks-per-round", "9"),
        *(P + "adaptive-backoff-base-ms", "250", P + "adaptive-backoff-max-ms", "2500"),
        *("--cfg", "job", "policy=steady"),
    ]
    preflight(rewrite_argv(argv), CONF)


def test_a_lone_legacy_base_flag_above_the_default_max_is_refused() -> None:
    message = error(rewrite_argv([P + "adaptive-backoff-base-ms", "200"]))
    assert message == "policy.backoff_max_ms: must be >= policy.backoff_base_ms (0 < 200)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["policy.backoff_base_ms=200", "policy.backoff_max_ms=100"], "policy.backoff_max_ms: must be >= "),
        (["probe.challenges_per_tick=0"], "probe.challenges_per_tick: must be >= 1 (got 0)"),
        (["policy.max_checks_per_round=4294967296"], "policy.max_checks_per_round: must be <= 4294967295"),
        (["policy.typo=1"], "policy.typo: unknown key (not in PolicyConf)"),
        (["+policy.typo=1"], "policy.typo: unknown key"),
        (["+extra=1"], "extra: unknown key"),
        (["policy.backoff_base_ms=abc"], "policy.backoff_base_ms: Value 'abc' of type 'str' could not be"),
        (
            ["runtime.clock=sundial"],
            "runtime.clock: Invalid value 'sundial', expected one of [virtual, wall]",
        ),
        (
            ["~policy.backoff_base_ms"],
            "policy.backoff_base_ms: PolicyConf (DictConfig) does not support deletion",
        ),
        (["policy=nope"], "policy: no option 'nope' (available: default, precise, steady, thrifty)"),
        (["probe=nope"], "probe: no option 'nope' (available: default, upstream_full)"),
        (["hydra/launcher=nope"], "hydra/launcher: no option 'nope'"),
        (["hydra.job.chdir=maybe"], "hydra.job.chdir: Value 'maybe' is not a valid bool"),
        (["policy.x=[1"], "override 'policy.x=[1': cannot parse"),
        (
            ["policy.backoff_base_ms=1,2"],
            "override 'policy.backoff_base_ms=1,2': ambiguous value (to sweep add",
        ),
        (["runtime.node_id=${nope}"], "runtime.node_id: Interpolation key 'nope' not found"),
        (["runtime.rounds=0"], "runtime.rounds: 0 (run until stopped) needs runtime.clock=wall"),
        (["a=1", "--cfg", "job", "b=2"], "command line: unrecognized arguments: b=2"),
        (["-cn", "nope"], "nope: Cannot find primary config 'nope'"),
    ],
)
def test_bad_configurations_fail_with_one_line(argv: list[str], message: str) -> None:
    assert error(argv).startswith(message)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help", "policy=nope"],
        ["-h", "policy.typo=1"],
        ["--hydra-help", "policy=nope"],
        ["--info", "defaults", "policy=nope"],
        ["--info=defaults", "policy=nope"],
        ["--version"],
        ["--shell-completion", "policy=nope"],
    ],
)
def test_requests_that_run_no_job_are_not_validated(argv: list[str]) -> None:
    preflight(argv, CONF)


# --- user YAML through hydra.searchpath / --config-dir -------------------------------------------


def test_user_preset_with_typo_key_is_refused_naming_key_and_file(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/mine.yaml": "backoff_bse_ms: 100\n"})
    message = error([searchpath, "policy=mine"])
    assert message == "policy.backoff_bse_ms: unknown key (not in PolicyConf) (in 'policy/mine')"


def test_user_preset_with_wrong_type_is_refused(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"probe/mine.yaml": "verify_mode: fast\n"})
    assert error([searchpath, "probe=mine"]).startswith("probe.verify_mode: Invalid value 'fast'")


def test_user_preset_breaking_a_range_rule_is_refused(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/mine.yaml": "backoff_base_ms: 200\nbackoff_max_ms: 100\n"})
    assert error([searchpath, "policy=mine"]) == (
        "policy.backoff_max_ms: must be >= policy.backoff_base_ms (100 < 200)"
    )


def test_user_yaml_that_does_not_parse_names_the_file(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/broken.yaml": "backoff_base_ms: [1\n"})
    message = error([searchpath, "policy=broken"])
    assert message.startswith(f"{tmp_path}/policy/broken.yaml: not valid YAML:")
    assert "(line 2, column 1)" in message


def test_missing_option_lists_the_users_presets_too(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/mine.yaml": "backoff_base_ms: 0\n"})
    assert (
        error([searchpath, "policy=nope"])
        == "policy: no option 'nope' (available: default, mine, precise, steady, thrifty)"
    )


def test_good_user_preset_passes(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/mine.yaml": "backoff_base_ms: 100\nbackoff_max_ms: 400\n"})
    preflight([searchpath, "policy=mine"], CONF)


def test_config_dir_flag_adds_a_search_path(tmp_path: Path) -> None:
    user_dir(tmp_path, {"policy/mine.yaml": "max_checks_per_round: 0\n"})
    assert error(["-cd", str(tmp_path), "policy=mine"]) == "policy.max_checks_per_round: must be >= 1 (got 0)"
    assert error(["--config-dir", str(tmp_path / "nope")]).startswith("--config-dir: directory not found:")


def test_config_path_flag_replaces_the_primary_dir(tmp_path: Path) -> None:
    user_dir(
        tmp_path,
        {"config.yaml": "defaults:\n  - pipeline_schema\n  - _self_\nprobe:\n  max_sample_bytes: 0\n"},
    )
    assert error(["-cp", str(tmp_path)]) == "probe.max_sample_bytes: must be >= 1 (got 0)"
    assert (
        error(["-cp", str(tmp_path / "nope")]) == f"--config-path: directory not found: {tmp_path / 'nope'}"
    )


# --- multirun -------------------------------------------------------------------------------------


def test_good_sweep_passes() -> None:
    preflight(
        ["-m", "policy=default,steady,thrifty", "probe.challenges_per_tick=1,4", "runtime=default"], CONF
    )


def test_bad_sweep_job_is_named() -> None:
    message = error(["-m", "policy=default,steady,thrifty", "policy.backoff_max_ms=500,5000"])
    assert message == (
        "policy.backoff_max_ms: must be >= policy.backoff_base_ms (500 < 1000) "
        "[sweep job: policy=steady policy.backoff_max_ms=500]"
    )


def test_sweep_over_a_missing_option_is_refused() -> None:
    assert error(["--multirun", "policy=default,nope"]) == (
        "policy: no option 'nope' (available: default, precise, steady, thrifty) [sweep job: policy=nope]"
    )


def test_range_sweeps_are_enumerated() -> None:
    message = error(["-m", "policy.backoff_base_ms=range(0,500,100)", "policy.backoff_max_ms=250"])
    assert message.startswith("policy.backoff_max_ms: must be >= policy.backoff_base_ms (250 < 300)")


def test_glob_sweeps_are_enumerated() -> None:
    preflight(["-m", "policy=glob(*)"], CONF)
    assert "[sweep job: policy=" in error(["-m", "policy=glob(*)", "policy.backoff_max_ms=1"])


def test_interval_sweeps_are_skipped() -> None:
    preflight(["-m", "scenario.objective_weight_checks=interval(0,1)"], CONF)


def test_sweeps_need_multirun_or_hydra_mode() -> None:
    assert "ambiguous value" in error(["probe.challenges_per_tick=1,0"])
    assert "[sweep job: probe.challenges_per_tick=0]" in error(
        ["hydra.mode=MULTIRUN", "probe.challenges_per_tick=1,0"]
    )


def test_sweeper_params_from_a_config_file_are_validated(tmp_path: Path) -> None:
    user_dir(
        tmp_path,
        {"sweep.yaml": "defaults: [config, _self_]\nhydra: {sweeper: {params: {runtime.rounds: '1,0'}}}\n"},
    )
    assert error(["-m", "-cd", str(tmp_path), "-cn", "sweep"]).endswith("[sweep job: runtime.rounds=0]")
    preflight(["-m", "-cd", str(tmp_path), "-cn", "sweep", "runtime.rounds=5,6"], CONF)  # command line wins


def test_later_override_of_a_swept_key_wins() -> None:
    preflight(["-m", "probe.challenges_per_tick=0,1", "probe.challenges_per_tick=2,3"], CONF)


def test_jobs_are_capped_and_cover_every_value(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = list(pf._capped_jobs([["a=1", "a=2", "a=3"], ["b=1", "b=2"], ["c=1"]], cap=4))
    assert len(jobs) == 4 and len(set(jobs)) == 4
    assert {job[0] for job in jobs} == {"a=1", "a=2", "a=3"} and {job[1] for job in jobs} == {"b=1", "b=2"}
    assert len(list(pf._capped_jobs([["a=1", "a=2"], ["b=1", "b=2"]], cap=100))) == 4

    validated: list[object] = []
    monkeypatch.setattr(pf, "MAX_SWEEP_JOBS", 5)
    real = pf.settings_from_cfg
    monkeypatch.setattr(pf, "settings_from_cfg", lambda cfg: validated.append(cfg) or real(cfg))
    preflight(["-m", "probe.challenges_per_tick=range(1,50)", "runtime.rounds=1,2,3"], CONF)
    assert len(validated) == 5


def test_sweep_composes_once_per_group_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    real = pf._compose
    monkeypatch.setattr(pf, "_compose", lambda name, ovs: calls.append(tuple(ovs)) or real(name, ovs))
    preflight(
        ["-m", "policy=default,steady,thrifty", "probe.challenges_per_tick=1,2,3", "runtime.rounds=4,5"], CONF
    )
    assert len(calls) == 3  # one per policy choice (the sweeper params come from the base); 18 jobs


def test_fast_path_matches_a_full_compose() -> None:
    job = (
        "policy=steady",
        "probe.challenges_per_tick=3",
        "runtime=wall",
        "++runtime.node_id=n7",
        "runtime.rounds=2",
    )
    with pf._hydra_session(str(CONF), None):
        parser = pf.OverridesParser.create(config_loader=GlobalHydra.instance().config_loader())
        fast = pf._compose_job("config", job, parser, {})
        full = compose("config", list(job))
    fast_values = OmegaConf.to_container(fast)
    del fast_values["hydra"]  # type: ignore[union-attr]
    assert fast_values == OmegaConf.to_container(full)
    assert fast.runtime.node_id == "n7" and fast.runtime.clock == "wall"


# --- end to end: a Hydra app behind the shim ------------------------------------------------------

STUB_APP = """
import sys
from pathlib import Path
import hydra
from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.pipeline.flags import rewrite_argv
from distfs_pipeline.pipeline.preflight import preflight
from distfs_pipeline.pipeline.validation import settings_from_cfg

CONF = {conf!r}

@hydra.main(version_base="1.3", config_path=CONF, config_name="config")
def run(cfg):
    s = settings_from_cfg(cfg)
    print("RUN", s.probe.challenges_per_tick, s.policy.backoff_base_ms, s.runtime.clock)

if __name__ == "__main__":
    try:
        argv = rewrite_argv(sys.argv[1:])
        preflight(argv, Path(CONF))
    except UsageError as exc:
        print(f"error: {{exc}}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [sys.argv[0], *argv]
    run()
"""


def run_stub(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    app = tmp_path / "stub_app.py"
    app.write_text(textwrap.dedent(STUB_APP.format(conf=str(CONF))))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(app), *argv], capture_output=True, text=True, cwd=tmp_path, env=env, check=False
    )


def test_hydra_accepts_the_shimmed_argv_in_any_order(tmp_path: Path) -> None:
    argv = ["policy=steady", "--cfg", "job", f"{P}probe-per-tick", "3", "runtime.clock=wall", "--resolve"]
    done = run_stub(tmp_path, *argv)
    assert done.returncode == 0, done.stderr
    cfg = OmegaConf.create(done.stdout)
    assert (cfg.probe.challenges_per_tick, cfg.policy.backoff_base_ms, cfg.runtime.clock) == (3, 1000, "wall")


def test_multirun_runs_every_job_and_a_bad_value_exits_2(tmp_path: Path) -> None:
    done = run_stub(
        tmp_path, f"{P}probe-per-tick=2", "-m", "runtime.clock=virtual,wall", f"hydra.sweep.dir={tmp_path}/m"
    )
    assert done.returncode == 0, done.stderr
    assert [line for line in done.stdout.splitlines() if line.startswith("RUN")] == [
        "RUN 2 0 virtual",
        "RUN 2 0 wall",
    ]
    bad = run_stub(tmp_path, "-m", "probe.challenges_per_tick=1,0", f"hydra.sweep.dir={tmp_path}/m2")
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == (
        "error: probe.challenges_per_tick: must be >= 1 (got 0) [sweep job: probe.challenges_per_tick=0]\n"
    )
    assert not (tmp_path / "m2").exists()


# --- Hydra's own flag rules and output dirs: one line instead of Hydra's traceback ---------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--cfg", "job", "-m", "policy=default,steady"],
            "command line: --multirun and --cfg cannot be combined",
        ),
        (["--info", "-m"], "command line: --multirun and --info cannot be combined"),
        (["--run", "-m"], "command line: --run and --multirun cannot be combined"),
        (["--info", "searchpath", "--cfg", "job"], "command line: --cfg and --info cannot be combined"),
        (["--resolve", "runtime.rounds=2"], "command line: --resolve needs --cfg"),
        (
            ["--experimental-rerun", "/nonexistent/config.pickle"],
            "--experimental-rerun: not supported: it loads a pickle",
        ),
        (["--info", "policy=nope"], "command line: argument --info/-i: invalid choice: 'policy=nope'"),
    ],
)
def test_hydra_flag_conflicts_are_one_line(argv: list[str], message: str) -> None:
    assert error(argv).startswith(message)


@pytest.mark.parametrize("argv", [["--help", "-m"], ["--cfg", "job", "--resolve"], ["--version", "-m"]])
def test_allowed_flag_combinations_pass(argv: list[str]) -> None:
    preflight(argv, CONF)


def test_a_run_dir_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("x")
    assert error([f"hydra.run.dir={tmp_path}/afile"]) == f"hydra.run.dir: {tmp_path}/afile is not a directory"
    assert error([f"hydra.run.dir={tmp_path}/afile/sub"]).endswith(
        f"is inside {tmp_path}/afile, which is not a directory"
    )
    assert error(["-m", f"hydra.sweep.dir={tmp_path}/afile"]).startswith("hydra.sweep.dir:")
    preflight(["--cfg", "job", f"hydra.run.dir={tmp_path}/afile"], CONF)  # prints only: no dir made


def test_user_yaml_that_is_a_list_names_the_config(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"policy/mine.yaml": "- 1\n- 2\n"})
    assert error([searchpath, "policy=mine"]).startswith("config 'policy/mine': Merge error: list is not")


def test_user_yaml_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "policy").mkdir()
    (tmp_path / "policy" / "mine.yaml").write_bytes(b"backoff_base_ms: \xff\n")
    message = error([f"hydra.searchpath=[file://{tmp_path}]", "policy=mine"])
    assert message.startswith(f"{tmp_path}/policy/mine.yaml: not UTF-8 text")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["scenario=bit_rot", "scenario.faults[0].blobs=3"], "index with a dot: scenario.faults.0.blobs=..."),
        (["runtime.world_id=世界"], "quote a value with other characters: key='value'"),
    ],
)
def test_unparsable_overrides_say_how_to_write_them(argv: list[str], message: str) -> None:
    assert error(argv).endswith(message)


def test_an_unknown_key_does_not_suggest_adding_it() -> None:
    # The schema is closed: `+foo=1` is refused too, so Hydra's "+key=value" advice misleads.
    assert error(["foo=1"]) == "foo: unknown key (not in PipelineConf)"


def test_a_scenario_schedule_past_the_run_is_refused_up_front() -> None:
    message = "scenario.faults[0].at_round: 41 is after the last round (runtime.rounds=20)"
    assert error(["scenario=lost_blob", "runtime.rounds=20"]) == message
    assert error(["-m", "scenario=lost_blob", "runtime.rounds=20,400"]).startswith(message)
    assert error(["scenario=lost_blob", "runtime=wall", "runtime.rounds=0"]).startswith(
        "runtime.rounds: a scenario"
    )


def test_a_user_scenario_without_a_name_is_refused_not_run_as_a_plain_audit(tmp_path: Path) -> None:
    searchpath = user_dir(tmp_path, {"scenario/mine.yaml": "faults:\n  - kind: delete\n    at_round: 3\n"})
    assert error([searchpath, "scenario=mine"]).startswith(
        "scenario.faults: faults are only injected by a scenario"
    )
    preflight([searchpath, "scenario=mine", "scenario.name=mine"], CONF)


@pytest.mark.parametrize(("jobs", "complete"), [(4, True), (5, False)])
def test_a_sweep_past_the_cap_is_never_called_complete(
    jobs: int, complete: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each dimension used to be cut at the cap before the jobs were counted, so a one-key sweep of
    100,000 values counted as 256 jobs, "every job checked": Hydra's own check was then switched off
    for jobs never validated, and the reusing launchers composed and kept all 100,000 up front."""
    monkeypatch.setattr(pf, "MAX_SWEEP_JOBS", 4)
    preflight(["-m", f"runtime.rounds=range(1,{jobs + 1})"], CONF)
    assert pf._SweepCoverage.complete is complete


@pytest.mark.parametrize(
    ("launcher", "ids"),
    [("hydra/launcher=basic", ["0", "1"]), ("hydra/launcher=joblib", ["app_0", "app_1"])],
)
def test_sweep_jobs_are_checked_with_the_job_id_their_launcher_sets(
    launcher: str, ids: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${hydra:job.id}` in a path was checked as the job number even where the joblib launcher
    names the job `app_<number>`: the path checked was not the path written."""
    seen: list[Path] = []
    real = pf._job_state_path
    monkeypatch.setattr(pf, "_job_state_path", lambda cfg: seen.append(real(cfg)) or seen[-1])
    state = str(tmp_path) + "/${hydra:job.id}/s.json"
    preflight(["-m", launcher, "policy=default,steady", f"runtime.state_path={state}"], CONF)
    assert [p.parent.name for p in seen] == ids
