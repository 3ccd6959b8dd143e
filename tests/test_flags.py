"""Upstream's 13 `--reward-distfs-*` flags -> Hydra overrides (SPEC 3.1 and the SPEC 5 CLI vectors)."""

from __future__ import annotations

import pytest
from hydra._internal.utils import get_args_parser

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.pipeline.flags import (
    HYDRA_INFO_CHOICES,
    HYDRA_OPTIONAL_VALUE_FLAGS,
    HYDRA_SWITCHES,
    HYDRA_VALUE_FLAGS,
    LEGACY_FLAGS,
    parse_rust_int,
    rewrite_argv,
)

P = "--reward-distfs-"
# flag -> (key, positive?) straight from the SPEC 3.1 table.
SPEC_TABLE = {
    P + "probe-max-sample-bytes": ("probe.max_sample_bytes", "u32", True),
    P + "probe-per-tick": ("probe.challenges_per_tick", "u32", True),
    P + "probe-ttl-ms": ("probe.challenge_ttl_ms", "i64", True),
    P + "probe-allowed-clock-skew-ms": ("probe.allowed_clock_skew_ms", "i64", False),
    P + "adaptive-max-checks-per-round": ("policy.max_checks_per_round", "u32", True),
    P + "adaptive-backoff-base-ms": ("policy.backoff_base_ms", "i64", False),
    P + "adaptive-backoff-max-ms": ("policy.backoff_max_ms", "i64", False),
    P + "adaptive-multiplier-hash-mismatch": ("policy.backoff_multiplier_hash_mismatch", "u32", True),
    P + "adaptive-multiplier-missing-sample": ("policy.backoff_multiplier_missing_sample", "u32", True),
    P + "adaptive-multiplier-timeout": ("policy.backoff_multiplier_timeout", "u32", True),
    P + "adaptive-multiplier-read-io-error": ("policy.backoff_multiplier_read_io_error", "u32", True),
    P + "adaptive-multiplier-signature-invalid": ("policy.backoff_multiplier_signature_invalid", "u32", True),
    P + "adaptive-multiplier-unknown": ("policy.backoff_multiplier_unknown", "u32", True),
}


def usage(argv: list[str]) -> str:
    with pytest.raises(UsageError) as err:
        rewrite_argv(argv)
    return str(err.value)


def test_table_matches_spec() -> None:
    assert {name: (f.key, f.integer, f.positive) for name, f in LEGACY_FLAGS.items()} == SPEC_TABLE


@pytest.mark.parametrize("flag", sorted(SPEC_TABLE))
def test_every_flag_in_both_forms(flag: str) -> None:
    key = SPEC_TABLE[flag][0]
    assert rewrite_argv([flag, "7"]) == [f"{key}=7"]
    assert rewrite_argv([f"{flag}=7"]) == [f"{key}=7"]


@pytest.mark.parametrize("flag", sorted(SPEC_TABLE))
def test_every_flag_rejects_its_bad_values_naming_the_flag(flag: str) -> None:
    _, integer, positive = SPEC_TABLE[flag]
    wording = "a positive integer" if positive else "a non-negative integer"
    bad = ["-1", "abc", "", " 5", "5 ", "1_000", "0x10", "1.0", "+", "٣"]
    bad += ["0"] if positive else []
    bad += ["4294967296"] if integer == "u32" else ["9223372036854775808", "-9223372036854775809"]
    for value in bad:
        assert usage([flag, value]) == f"{flag} requires {wording} (got {value!r})"
        assert usage([f"{flag}={value}"]) == f"{flag} requires {wording} (got {value!r})"
    assert usage([flag]) == f"{flag} requires {wording} (got nothing)"


def test_spec5_parse_options_reads_custom_values() -> None:
    argv = [
        *(P + "probe-max-sample-bytes", "8192", P + "probe-per-tick", "3"),
        *(P + "probe-ttl-ms", "45000", P + "probe-allowed-clock-skew-ms", "2000"),
        *(P + "adaptive-max-checks-per-round", "9", P + "adaptive-backoff-base-ms", "250"),
        *(P + "adaptive-backoff-max-ms", "2500", P + "adaptive-multiplier-hash-mismatch", "5"),
        *(P + "adaptive-multiplier-missing-sample", "2", P + "adaptive-multiplier-timeout", "3"),
        *(P + "adaptive-multiplier-read-io-error", "4", P + "adaptive-multiplier-signature-invalid", "6"),
        *(P + "adaptive-multiplier-unknown", "7"),
    ]
    assert rewrite_argv(argv) == [
        "probe.max_sample_bytes=8192",
        "probe.challenges_per_tick=3",
        "probe.challenge_ttl_ms=45000",
        "probe.allowed_clock_skew_ms=2000",
        "policy.max_checks_per_round=9",
        "policy.backoff_base_ms=250",
        "policy.backoff_max_ms=2500",
        "policy.backoff_multiplier_hash_mismatch=5",
        "policy.backoff_multiplier_missing_sample=2",
        "policy.backoff_multiplier_timeout=3",
        "policy.backoff_multiplier_read_io_error=4",
        "policy.backoff_multiplier_signature_invalid=6",
        "policy.backoff_multiplier_unknown=7",
    ]


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        ([P + "probe-per-tick", "0"], P + "probe-per-tick"),
        ([P + "probe-allowed-clock-skew-ms", "-1"], P + "probe-allowed-clock-skew-ms"),
        ([P + "adaptive-max-checks-per-round", "0"], P + "adaptive-max-checks-per-round"),
        ([P + "adaptive-multiplier-hash-mismatch", "0"], P + "adaptive-multiplier-hash-mismatch"),
        ([P + "adaptive-multiplier-unknown", "0"], P + "adaptive-multiplier-unknown"),
    ],
)
def test_spec5_rejections_mention_the_flag(argv: list[str], flag: str) -> None:
    assert flag in usage(argv)


def test_spec5_rejects_backoff_max_below_base() -> None:
    message = usage([P + "adaptive-backoff-base-ms", "200", P + "adaptive-backoff-max-ms", "100"])
    assert message == f"{P}adaptive-backoff-max-ms must be >= {P}adaptive-backoff-base-ms (100 < 200)"


def test_max_equal_to_base_is_fine_and_check_uses_last_values() -> None:
    argv = [
        P + "adaptive-backoff-base-ms=200",
        P + "adaptive-backoff-max-ms=100",
        P + "adaptive-backoff-max-ms=200",
    ]
    assert rewrite_argv(argv) == ["policy.backoff_base_ms=200", "policy.backoff_max_ms=200"]


@pytest.mark.parametrize(
    ("text", "integer", "value"),
    [
        ("+5", "u32", 5),
        ("007", "u32", 7),
        ("4294967295", "u32", 4294967295),
        ("-0", "i64", 0),
        ("+0", "i64", 0),
        ("-5", "i64", -5),
        ("9223372036854775807", "i64", 9223372036854775807),
        ("-9223372036854775808", "i64", -9223372036854775808),
    ],
)
def test_parse_rust_int_accepts(text: str, integer: str, value: int) -> None:
    assert parse_rust_int(text, integer) == value  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "integer"),
    [
        ("-0", "u32"),
        ("-1", "u32"),
        ("1_000", "u32"),
        (" 5", "u32"),
        ("5\n", "u32"),
        ("", "u32"),
        ("+", "i64"),
        ("-", "i64"),
        ("++5", "i64"),
        ("+-5", "i64"),
        ("4294967296", "u32"),
        ("9223372036854775808", "i64"),
        ("١٢", "u32"),
    ],
)
def test_parse_rust_int_refuses(text: str, integer: str) -> None:
    assert parse_rust_int(text, integer) is None  # type: ignore[arg-type]


def test_plus_sign_is_accepted_and_normalised() -> None:
    assert rewrite_argv([P + "probe-per-tick", "+5"]) == ["probe.challenges_per_tick=5"]
    assert rewrite_argv([P + "probe-allowed-clock-skew-ms=-0"]) == ["probe.allowed_clock_skew_ms=0"]


def test_value_is_taken_verbatim_even_when_it_looks_like_a_flag() -> None:
    assert (
        usage([P + "probe-per-tick", "--cfg", "job"])
        == f"{P}probe-per-tick requires a positive integer (got '--cfg')"
    )


@pytest.mark.parametrize(
    ("typo", "suggestion"),
    [
        (P + "probe-per-tik", P + "probe-per-tick"),
        (P + "probe-ttl", P + "probe-ttl-ms"),
        (P + "adaptive-multiplier-hash", P + "adaptive-multiplier-hash-mismatch"),
        (P + "multiplier-timeout", P + "adaptive-multiplier-timeout"),
        (P + "adaptive-backof-max-ms", P + "adaptive-backoff-max-ms"),
    ],
)
def test_unknown_flag_suggests_the_closest(typo: str, suggestion: str) -> None:
    assert usage([typo, "3"]) == f"unknown option: {typo} (did you mean {suggestion}?)"
    assert usage([f"{typo}=3"]) == f"unknown option: {typo} (did you mean {suggestion}?)"


def test_unknown_flag_without_a_close_match() -> None:
    assert usage([P + "xyz", "1"]) == f"unknown option: {P}xyz"


def test_repeated_flag_last_wins_at_its_last_position() -> None:
    argv = [P + "probe-per-tick", "2", "policy=steady", f"{P}probe-per-tick=4", "runtime=wall"]
    assert rewrite_argv(argv) == ["policy=steady", "probe.challenges_per_tick=4", "runtime=wall"]


def test_repeated_flag_with_a_bad_earlier_value_is_still_refused() -> None:
    assert "probe-per-tick" in usage([P + "probe-per-tick", "0", P + "probe-per-tick", "4"])


def test_overrides_keep_their_order_with_converted_flags() -> None:
    argv = ["policy=thrifty", P + "adaptive-max-checks-per-round=3", "policy.max_checks_per_round=5"]
    assert rewrite_argv(argv) == [
        "policy=thrifty",
        "policy.max_checks_per_round=3",
        "policy.max_checks_per_round=5",
    ]


def test_hydra_flags_go_first() -> None:
    argv = ["policy=steady", "--cfg", "job", P + "probe-per-tick", "3", "-m", "probe.max_sample_bytes=1,2"]
    assert rewrite_argv(argv) == [
        "--cfg",
        "job",
        "-m",
        "policy=steady",
        "probe.challenges_per_tick=3",
        "probe.max_sample_bytes=1,2",
    ]


def test_every_kind_of_hydra_flag_goes_first_with_its_value() -> None:
    argv = [
        *("a=1", "--multirun", "b=2", "-cn", "config", "c=3", "--config-dir=/x", "--resolve"),
        *("--info", "defaults", "-p", "policy", "--hydra-help", "-cp", "/conf", "--config-path", "/c"),
        *("-cd", "/d", "--run", "-r", "--package=policy", "--cfg=job", "-c", "all", "-sc", "d=4"),
    ]
    out = rewrite_argv(argv)
    assert out[-4:] == ["a=1", "b=2", "c=3", "d=4"]
    assert out[:-4] == [t for t in argv if t not in ("a=1", "b=2", "c=3", "d=4")]


def test_info_takes_a_value_only_when_it_is_an_info_choice() -> None:
    assert rewrite_argv(["a=1", "--info", "b=2"]) == ["--info", "a=1", "b=2"]
    assert rewrite_argv(["a=1", "-i", "searchpath", "b=2"]) == ["-i", "searchpath", "a=1", "b=2"]


def test_rewritten_argv_is_accepted_by_hydras_parser() -> None:
    argv = ["policy=steady", "--cfg", "job", P + "probe-per-tick=3", "-m", "x=1,2", "--resolve"]
    args = get_args_parser().parse_args(rewrite_argv(argv))
    assert (args.cfg, args.multirun, args.resolve) == ("job", True, True)
    assert args.overrides == ["policy=steady", "probe.challenges_per_tick=3", "x=1,2"]


def test_flag_sets_match_hydras_parser() -> None:
    actions = {a.dest: a for a in get_args_parser()._actions}
    switches = {s for a in actions.values() if a.nargs == 0 for s in a.option_strings}
    with_value = {
        s for a in actions.values() if a.nargs is None and a.option_strings for s in a.option_strings
    }
    optional = {s for a in actions.values() if a.nargs == "?" for s in a.option_strings}
    assert switches == HYDRA_SWITCHES
    assert with_value == HYDRA_VALUE_FLAGS
    assert optional == HYDRA_OPTIONAL_VALUE_FLAGS
    assert set(actions["info"].choices) == HYDRA_INFO_CHOICES


def test_plain_arguments_pass_through_untouched() -> None:
    argv = ["hydra.searchpath=[file:///tmp/x]", "+scenario=none", "~runtime.state_path", "--unknown"]
    assert rewrite_argv(argv) == argv
