"""The `conf/` tree, the structured-config schema and the pydantic rules, through Hydra's compose API."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException
from omegaconf import OmegaConf

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import I64_MAX, U32_MAX, AdaptivePolicy, ProbeConfig, VerifyOptions
from distfs_pipeline.pipeline.config import (
    SCHEMA_NAME,
    PipelineConf,
    PolicyConf,
    ProbeConf,
    RuntimeConf,
    ScenarioConf,
)
from distfs_pipeline.pipeline.flags import LEGACY_FLAGS
from distfs_pipeline.pipeline.validation import (
    PolicySettings,
    ProbeSettings,
    RuntimeSettings,
    ScenarioSettings,
    Settings,
    settings_from_cfg,
)

CONF = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("policy", "probe", "runtime", "scenario")
PRESETS = [(group, path.stem) for group in GROUPS for path in sorted((CONF / group).glob("*.yaml"))]
MULTIPLIERS = [f"backoff_multiplier_{r}" for r in ("hash_mismatch", "missing_sample", "timeout")] + [
    f"backoff_multiplier_{r}" for r in ("read_io_error", "signature_invalid", "unknown")
]


@pytest.fixture(scope="module", autouse=True)
def hydra_conf() -> Iterator[None]:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def settings(*overrides: str) -> Settings:
    return settings_from_cfg(compose("config", list(overrides)))


def usage_error(*overrides: str) -> str:
    """The one-line message settings_from_cfg gives for these overrides."""
    with pytest.raises(UsageError) as err:
        settings(*overrides)
    message = str(err.value)
    assert "\n" not in message
    return message


# --- the conf tree -------------------------------------------------------------------------------


def test_default_composition_is_upstream() -> None:
    s = settings()
    assert s.adaptive_policy() == AdaptivePolicy()
    assert s.probe_config() == ProbeConfig()
    assert s.adaptive_policy().max_checks_per_round == 4294967295
    assert s.verify_options() == VerifyOptions(mode="chunked", chunk_size_bytes=16384)
    assert s.runtime.clock == "virtual" and s.runtime.storage_root is None and s.runtime.state_path is None
    assert s.scenario.name == "none" and s.scenario.faults == []


def test_defaults_list_order_and_choices() -> None:
    cfg = compose("config", return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    assert (choices.policy, choices.probe, choices.runtime, choices.scenario) == (
        "default",
        "default",
        "default",
        "none",
    )
    assert choices["hydra/help"] == "distfs"
    raw = OmegaConf.load(CONF / "config.yaml")
    assert list(raw.defaults) == [
        SCHEMA_NAME,
        {"policy": "default"},
        {"probe": "default"},
        {"runtime": "default"},
        {"scenario": "none"},
        {"override hydra/help": "distfs"},
        {"override hydra/job_logging": "distfs"},
        {"override hydra/hydra_logging": "distfs"},
        "_self_",
    ]


def test_hydra_run_dir_is_hydras_default_made_unique_per_process() -> None:
    from distfs_pipeline.pipeline import resolvers

    cfg = compose("config", return_hydra_config=True)
    run_dir = OmegaConf.to_container(cfg.hydra.run, resolve=False)["dir"]  # type: ignore[index]
    assert run_dir == "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}-${distfs_run_id:}"
    assert resolvers.run_id().startswith(f"{os.getpid()}-")


@pytest.mark.parametrize(("group", "preset"), PRESETS)
def test_every_preset_composes_and_validates(group: str, preset: str) -> None:
    s = settings(f"{group}={preset}")
    assert isinstance(s, Settings)


@pytest.mark.parametrize(("group", "preset"), PRESETS)
def test_every_preset_says_what_it_is_for(group: str, preset: str) -> None:
    lines = (CONF / group / f"{preset}.yaml").read_text().splitlines()
    assert lines[0].startswith("# yaml-language-server: $schema=")
    comment = [line for line in lines[1:] if line.startswith("# ")]
    assert len(" ".join(comment)) > 40, f"{group}/{preset}.yaml needs a comment saying what it is for"


def test_presets_required_by_the_issue_exist() -> None:
    names = {f"{g}/{p}" for g, p in PRESETS}
    assert {
        "policy/default",
        "probe/default",
        "probe/upstream_full",
        "runtime/default",
        "runtime/wall",
    } <= names
    assert {"scenario/none"} <= names
    assert len([n for n in names if n.startswith("policy/")]) >= 3


def test_policy_default_yaml_lists_the_nine_upstream_defaults() -> None:
    raw = OmegaConf.to_container(OmegaConf.load(CONF / "policy" / "default.yaml"))
    assert raw == AdaptivePolicy().to_dict()


def test_steady_backs_off_for_environment_failures_only() -> None:
    p = settings("policy=steady").policy
    for reason in ("timeout", "read_io_error", "unknown"):
        assert getattr(p, f"backoff_multiplier_{reason}") > 1
    for reason in ("hash_mismatch", "missing_sample"):
        assert getattr(p, f"backoff_multiplier_{reason}") == 1
    assert 0 < p.backoff_base_ms <= p.backoff_max_ms


def test_thrifty_saves_io() -> None:
    thrifty, steady = settings("policy=thrifty").policy, settings("policy=steady").policy
    assert thrifty.max_checks_per_round < steady.max_checks_per_round
    assert thrifty.backoff_base_ms > steady.backoff_base_ms and thrifty.backoff_max_ms > steady.backoff_max_ms
    assert thrifty.backoff_multiplier_hash_mismatch == thrifty.backoff_multiplier_missing_sample == 1


def test_probe_upstream_full_uses_full_verify() -> None:
    s = settings("probe=upstream_full")
    assert s.verify_options().mode == "full"
    assert s.probe_config() == ProbeConfig()


def test_runtime_wall_runs_until_stopped() -> None:
    r = settings("runtime=wall").runtime
    assert (r.clock, r.rounds) == ("wall", 0)


def test_runtime_keys_match_the_architecture() -> None:
    expected = {"world_id", "node_id", "storage_root", "state_path", "clock", "start_unix_ms", "tick_ms"}
    expected |= {"rounds", "epoch_rounds", "progress", "allow_empty_store"}
    expected |= {"tick_jitter_ms", "metrics_port", "metrics_textfile"}  # operations (issue 9)
    expected |= {"durability", "durability_interval_ms", "log_max_bytes", "log_keep", "log_compress"}
    expected |= {"log_format"}  # logging (issue 9)
    assert set(RuntimeSettings.model_fields) == expected


def test_probe_keys_match_the_architecture() -> None:
    expected = {"max_sample_bytes", "challenges_per_tick", "challenge_ttl_ms", "allowed_clock_skew_ms"}
    expected |= {"verify_mode", "chunk_size_bytes", "chunk_cache_dir", "full_verify_every"}
    expected |= {"full_verify_interval_ms"}
    expected |= {"max_bytes_per_s"}  # pacing (issue 9)
    assert set(ProbeSettings.model_fields) == expected


def test_hydra_help_describes_groups_presets_and_every_legacy_flag() -> None:
    cfg = compose("config", return_hydra_config=True)
    assert cfg.hydra.help.app_name == "distfs_pipeline"
    template = OmegaConf.to_container(cfg.hydra.help, resolve=False)["template"]  # type: ignore[index]
    for flag in LEGACY_FLAGS:
        assert flag in template
    for group, preset in PRESETS:
        assert f"{group}={preset}" in template
    assert "$APP_CONFIG_GROUPS" in template and "== Examples ==" in template


# --- dataclass schema and pydantic models agree -------------------------------------------------


@pytest.mark.parametrize(
    ("conf", "model"),
    [
        (PolicyConf, PolicySettings),
        (ProbeConf, ProbeSettings),
        (RuntimeConf, RuntimeSettings),
        (ScenarioConf, ScenarioSettings),
    ],
)
def test_dataclass_and_model_have_same_keys_and_defaults(conf: type, model: type) -> None:
    data = {f.name: getattr(conf(), f.name) for f in dataclasses.fields(conf)}
    plain = {k: getattr(v, "value", v) for k, v in data.items()}
    assert plain == model().model_dump()


def test_policy_keys_match_models_adaptive_policy() -> None:
    assert list(PolicySettings.model_fields) == [f.name for f in dataclasses.fields(AdaptivePolicy)]


def test_enum_and_mapping_inputs_are_accepted() -> None:
    s = settings_from_cfg(dataclasses.asdict(PipelineConf()))
    assert s.runtime.clock == "virtual" and s.probe.verify_mode == "chunked"


# --- compose refuses unknown keys and wrong types ------------------------------------------------


@pytest.mark.parametrize(
    "override",
    [
        "policy.backoff_bse_ms=5",
        "policy.backoff_base_ms=abc",
        "policy.backoff_base_ms=1.5",
        "probe.verify_mode=fast",
        "runtime.clock=sundial",
        "runtime.progress=sometimes",
        "scenario.faults=5",
    ],
)
def test_compose_refuses_unknown_keys_and_wrong_types(override: str) -> None:
    with pytest.raises(ConfigCompositionException):
        compose("config", [override])


def test_compose_refuses_missing_group_option() -> None:
    with pytest.raises(MissingConfigException):
        compose("config", ["policy=nope"])


def _user_dir(tmp_path: Path, group: str, name: str, body: str) -> str:
    (tmp_path / group).mkdir(parents=True, exist_ok=True)
    (tmp_path / group / f"{name}.yaml").write_text(body)
    return f"hydra.searchpath=[file://{tmp_path}]"


def test_user_yaml_through_searchpath_with_typo_is_refused_at_compose(tmp_path: Path) -> None:
    searchpath = _user_dir(tmp_path, "policy", "mine", "backoff_bse_ms: 100\n")
    with pytest.raises(ConfigCompositionException, match="backoff_bse_ms"):
        compose("config", [searchpath, "policy=mine"])


def test_user_yaml_through_searchpath_with_wrong_type_is_refused_at_compose(tmp_path: Path) -> None:
    searchpath = _user_dir(tmp_path, "runtime", "mine", "tick_ms: fast\n")
    with pytest.raises(ConfigCompositionException, match="tick_ms"):
        compose("config", [searchpath, "runtime=mine"])


def test_user_partial_preset_gets_upstream_defaults(tmp_path: Path) -> None:
    searchpath = _user_dir(tmp_path, "policy", "mine", "backoff_base_ms: 100\nbackoff_max_ms: 400\n")
    p = settings(searchpath, "policy=mine").policy
    assert (p.backoff_base_ms, p.backoff_max_ms, p.max_checks_per_round) == (100, 400, U32_MAX)


# --- pydantic ranges and cross-field rules -------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("policy.max_checks_per_round=0", "policy.max_checks_per_round: must be >= 1 (got 0)"),
        ("policy.max_checks_per_round=4294967296", "policy.max_checks_per_round: must be <= 4294967295"),
        ("policy.backoff_base_ms=-1", "policy.backoff_base_ms: must be >= 0 (got -1)"),
        ("policy.backoff_max_ms=-1", "policy.backoff_max_ms: must be >= 0 (got -1)"),
        (
            "policy.backoff_max_ms=9223372036854775808",
            "policy.backoff_max_ms: must be <= 9223372036854775807",
        ),
        ("probe.max_sample_bytes=0", "probe.max_sample_bytes: must be >= 1 (got 0)"),
        ("probe.challenges_per_tick=0", "probe.challenges_per_tick: must be >= 1 (got 0)"),
        ("probe.challenge_ttl_ms=0", "probe.challenge_ttl_ms: must be > 0 (got 0)"),
        ("probe.allowed_clock_skew_ms=-1", "probe.allowed_clock_skew_ms: must be >= 0 (got -1)"),
        ("probe.chunk_size_bytes=0", "probe.chunk_size_bytes: must be >= 1 (got 0)"),
        ("probe.full_verify_every=-1", "probe.full_verify_every: must be >= 0 (got -1)"),
        ("runtime.tick_ms=0", "runtime.tick_ms: must be > 0 (got 0)"),
        ("runtime.epoch_rounds=0", "runtime.epoch_rounds: must be > 0 (got 0)"),
        ("runtime.start_unix_ms=-5", "runtime.start_unix_ms: must be >= 0 (got -5)"),
        ("runtime.node_id=''", "runtime.node_id: must not be empty"),
        ("runtime.world_id='  '", "runtime.world_id: must not be empty"),
        ("runtime.rounds=0", "runtime.rounds: 0 (run until stopped) needs runtime.clock=wall (got virtual)"),
        ("+policy.typo=1", "policy.typo: unknown key"),
        ("+extra=1", "extra: unknown key"),
    ],
)
def test_range_rules_name_the_key(override: str, message: str) -> None:
    assert usage_error(override).startswith(message)


@pytest.mark.parametrize("multiplier", MULTIPLIERS)
def test_every_multiplier_must_be_positive_u32(multiplier: str) -> None:
    assert usage_error(f"policy.{multiplier}=0") == f"policy.{multiplier}: must be >= 1 (got 0)"
    too_big = usage_error(f"policy.{multiplier}=4294967296")
    assert too_big == f"policy.{multiplier}: must be <= 4294967295 (got 4294967296)"
    assert getattr(settings(f"policy.{multiplier}={U32_MAX}").policy, multiplier) == U32_MAX


def test_backoff_max_below_base_names_both_keys() -> None:
    message = usage_error("policy.backoff_base_ms=200", "policy.backoff_max_ms=100")
    assert message == "policy.backoff_max_ms: must be >= policy.backoff_base_ms (100 < 200)"


def test_bounds_are_inclusive() -> None:
    s = settings(f"policy.backoff_base_ms={I64_MAX}", f"policy.backoff_max_ms={I64_MAX}", "runtime=wall")
    assert s.policy.backoff_max_ms == I64_MAX
    assert (
        settings("probe.allowed_clock_skew_ms=0", "probe.full_verify_every=0").probe.allowed_clock_skew_ms
        == 0
    )


def test_virtual_clock_overflow_is_refused() -> None:
    message = usage_error(f"runtime.tick_ms={I64_MAX // 2}", "runtime.rounds=3")
    assert message.startswith("runtime.rounds: the virtual clock would pass i64 max")


def test_unresolvable_interpolation_names_the_key() -> None:
    assert usage_error("runtime.node_id=${nope}") == "runtime.node_id: Interpolation key 'nope' not found"


def test_interpolation_between_keys_resolves() -> None:
    assert settings("policy.backoff_max_ms=${policy.backoff_base_ms}").policy.backoff_max_ms == 0


def test_hydra_node_is_ignored_by_settings() -> None:
    cfg = compose("config", return_hydra_config=True)
    assert settings_from_cfg(cfg) == settings()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"policy": {"max_checks_per_round": True}}, "policy.max_checks_per_round: must be an integer"),
        ({"policy": {"max_checks_per_round": "5"}}, "policy.max_checks_per_round: must be an integer"),
        ({"policy": 5}, "policy: must be a mapping"),
        ({"scenario": {"faults": [1]}}, "scenario.faults[0]: must be a mapping"),
        ({"probe": {"verify_mode": "fast"}}, "probe.verify_mode: must be one of 'chunked' or 'full'"),
        ([1], "config: must be a mapping"),
    ],
)
def test_mapping_inputs_are_strict(data: object, message: str) -> None:
    with pytest.raises(UsageError) as err:
        settings_from_cfg(data)
    assert str(err.value).startswith(message)


def test_settings_hand_out_models_values() -> None:
    s = settings(
        "policy=steady",
        "probe.verify_mode=full",
        "probe.chunk_cache_dir=/tmp/cache",
        "probe.full_verify_every=7",
        "probe.chunk_size_bytes=4096",
    )
    assert s.adaptive_policy() == AdaptivePolicy(
        **OmegaConf.to_container(OmegaConf.load(CONF / "policy/steady.yaml"))
    )
    assert s.verify_options() == VerifyOptions(
        mode="full", chunk_size_bytes=4096, cache_dir="/tmp/cache", full_verify_every=7
    )
    with pytest.raises(Exception, match="frozen"):
        s.policy.backoff_base_ms = 3  # type: ignore[misc]
