"""schemas/*.json are current, every conf YAML validates, and the validate command works for users."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from distfs_pipeline.pipeline import schemas
from distfs_pipeline.pipeline.schemas import (
    MODELS,
    build_schemas,
    main,
    render,
    schema_filename,
    validate_file,
)

ROOT = Path(__file__).resolve().parent.parent
CONF_YAMLS = sorted((ROOT / "conf").rglob("*.yaml"))
EXPECTED = {"config", "policy", "probe", "runtime", "scenario", "hydra_help", "hydra_logging"}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_committed_schemas_are_not_stale() -> None:
    for name, schema in build_schemas().items():
        path = ROOT / "schemas" / schema_filename(name)
        assert path.is_file(), f"missing {path}: run python -m distfs_pipeline.schemas generate"
        assert path.read_text() == render(schema), (
            f"{path} is stale: run python -m distfs_pipeline.schemas generate"
        )
    assert {p.name for p in (ROOT / "schemas").glob("*.json")} == {schema_filename(n) for n in EXPECTED}


def test_generation_is_deterministic_and_valid_json_schema() -> None:
    first, second = build_schemas(), build_schemas()
    assert [render(s) for s in first.values()] == [render(s) for s in second.values()]
    for schema in first.values():
        Draft202012Validator.check_schema(schema)
        assert render(schema).endswith("}\n")


def test_generate_then_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["generate", "--out", str(tmp_path)]) == 0
    assert main(["generate", "--out", str(tmp_path), "--check"]) == 0
    (tmp_path / "policy.schema.json").write_text("{}\n")
    assert main(["generate", "--out", str(tmp_path), "--check"]) == 1
    assert "policy.schema.json: stale" in capsys.readouterr().out


def test_schema_has_upstream_bounds() -> None:
    policy = build_schemas()["policy"]["properties"]
    assert policy["max_checks_per_round"]["minimum"] == 1
    assert policy["max_checks_per_round"]["maximum"] == 4294967295
    assert policy["backoff_base_ms"]["maximum"] == 9223372036854775807
    assert build_schemas()["probe"]["properties"]["challenge_ttl_ms"]["exclusiveMinimum"] == 0
    assert build_schemas()["policy"]["additionalProperties"] is False


@pytest.mark.parametrize("path", CONF_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_conf_yaml_validates(path: Path) -> None:
    assert validate_file(path) == []


@pytest.mark.parametrize("path", CONF_YAMLS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_conf_yaml_names_its_schema_for_editors(path: Path) -> None:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# yaml-language-server: $schema=")
    target = (path.parent / first.split("$schema=", 1)[1]).resolve()
    assert target.is_file() and target.parent == ROOT / "schemas"
    expected = path.parent.name if path.parent.name in EXPECTED else {"config": "config"}.get(path.stem)
    if path.parent.name == "help":
        expected = "hydra_help"
    if path.parent.name in ("job_logging", "hydra_logging"):
        expected = "hydra_logging"
    assert target.name == schema_filename(str(expected))


@pytest.mark.parametrize(
    ("group", "body", "line"),
    [
        ("policy", "backoff_bse_ms: 5\n", "backoff_bse_ms: unknown key"),
        ("policy", "max_checks_per_round: 0\n", "max_checks_per_round: must be >= 1 (got 0)"),
        (
            "policy",
            "max_checks_per_round: 4294967296\n",
            "max_checks_per_round: must be <= 4294967295 (got 4294967296)",
        ),
        ("policy", "backoff_base_ms: abc\n", "backoff_base_ms: must be of type integer (got 'abc')"),
        ("policy", "backoff_base_ms: true\n", "backoff_base_ms: must be of type integer (got True)"),
        ("policy", "backoff_base_ms: 1.0\n", "backoff_base_ms: must be an integer (got 1.0)"),
        (
            "policy",
            "backoff_base_ms: 200\nbackoff_max_ms: 100\n",
            "backoff_max_ms: must be >= backoff_base_ms (100 < 200)",
        ),
        ("probe", "challenge_ttl_ms: 0\n", "challenge_ttl_ms: must be > 0 (got 0)"),
        ("probe", "verify_mode: fast\n", "verify_mode: must be one of ['chunked', 'full'] (got 'fast')"),
        ("runtime", "storage_root: 5\n", "storage_root: must be of type string or null (got 5)"),
        ("runtime", "node_id: ''\n", "node_id: must not be empty"),
        ("runtime", "state_path: ''\n", "state_path: must not be empty"),
        ("runtime", "rounds: 0\n", "rounds: 0 (run until stopped) needs clock=wall (got virtual)"),
        ("scenario", "faults: [1]\n", "faults[0]: must be of type object (got 1)"),
    ],
)
def test_bad_file_gives_one_line_per_problem(tmp_path: Path, group: str, body: str, line: str) -> None:
    path = write(tmp_path / group / "bad.yaml", body)
    assert validate_file(path) == [f"{path}:{line}"]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    path = write(tmp_path / "policy" / "bad.yaml", "typo: 1\nother: 2\nmax_checks_per_round: 0\n")
    assert validate_file(path) == [
        f"{path}:other: unknown key",
        f"{path}:typo: unknown key",
        f"{path}:max_checks_per_round: must be >= 1 (got 0)",
    ]


def test_config_file_checks_nested_groups(tmp_path: Path) -> None:
    path = write(tmp_path / "config.yaml", "defaults: [_self_]\npolicy:\n  backoff_bse_ms: 1\nhydra: {}\n")
    assert validate_file(path) == [f"{path}:policy.backoff_bse_ms: unknown key"]


def test_schema_comes_from_the_schema_line_first(tmp_path: Path) -> None:
    text = "# yaml-language-server: $schema=../schemas/probe.schema.json\nbackoff_base_ms: 1\n"
    path = write(tmp_path / "policy" / "x.yaml", text)
    assert validate_file(path) == [f"{path}:backoff_base_ms: unknown key"]


def test_schema_option_overrides_everything(tmp_path: Path) -> None:
    path = write(tmp_path / "anything.yaml", "challenges_per_tick: 0\n")
    assert validate_file(path, "probe") == [f"{path}:challenges_per_tick: must be >= 1 (got 0)"]


def test_file_with_a_defaults_list_leaves_cross_field_rules_to_compose(tmp_path: Path) -> None:
    path = write(tmp_path / "policy" / "mine.yaml", "defaults: [steady]\nbackoff_base_ms: 2000\n")
    assert validate_file(path) == []


def test_unknown_schema_and_undecidable_files(tmp_path: Path) -> None:
    odd = write(tmp_path / "x.yaml", "# yaml-language-server: $schema=./nope.schema.json\na: 1\n")
    assert validate_file(odd) == [f"{odd}: unknown schema 'nope' (known: {', '.join(MODELS)})"]
    plain = write(tmp_path / "y.yaml", "a: 1\n")
    assert validate_file(plain)[0].startswith(f"{plain}: cannot tell which schema applies")


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    missing = tmp_path / "policy" / "missing.yaml"
    assert validate_file(missing)[0].startswith(f"{missing}: cannot read:")
    broken = write(tmp_path / "policy" / "broken.yaml", "backoff_base_ms: [1\n")
    assert validate_file(broken)[0].startswith(f"{broken}: not valid YAML:")
    listing = write(tmp_path / "policy" / "list.yaml", "- 1\n")
    assert validate_file(listing) == [f"{listing}: must be a mapping of keys, got list"]
    empty = write(tmp_path / "scenario" / "empty.yaml", "")
    assert validate_file(empty) == []


def test_validate_command_exit_status_and_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = ROOT / "conf" / "policy" / "steady.yaml"
    bad = write(tmp_path / "policy" / "bad.yaml", "max_checks_per_round: 0\n")
    assert main(["validate", str(good)]) == 0
    assert f"{good}: ok" in capsys.readouterr().out
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [f"{bad}:max_checks_per_round: must be >= 1 (got 0)"]
    assert main(["validate", "--schema", "runtime", str(bad)]) == 2
    assert "max_checks_per_round: unknown key" in capsys.readouterr().err


def test_validate_command_as_a_module(tmp_path: Path) -> None:
    bad = write(tmp_path / "runtime" / "bad.yaml", "clock: sundial\n")
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "distfs_pipeline.pipeline.schemas",
            "validate",
            str(bad),
            str(ROOT / "conf" / "config.yaml"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    assert run.returncode == 2
    assert run.stderr == f"{bad}:clock: must be one of ['virtual', 'wall'] (got 'sundial')\n"
    assert run.stdout == f"{ROOT / 'conf' / 'config.yaml'}: ok\n"


def test_schema_dir_points_at_the_repo() -> None:
    assert schemas.SCHEMA_DIR == ROOT / "schemas"
    assert json.loads((ROOT / "schemas" / "config.schema.json").read_text())["$schema"] == schemas.DIALECT


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "the following arguments are required: command"),
        (["validate"], "the following arguments are required: FILE"),
        (["bogus"], "invalid choice: 'bogus'"),
        (["validate", "--schema", "nope", "x.yaml"], "invalid choice: 'nope'"),
    ],
)
def test_command_line_mistakes_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert (
        len(err.splitlines()) == 1 and message in err and err.startswith("python -m distfs_pipeline.schemas")
    )


def test_validate_never_blocks_on_a_fifo(tmp_path: Path) -> None:
    """Root safety: `schemas validate` on a FIFO is one line, exit 2, at once (no reader waits)."""
    fifo = tmp_path / "policy.yaml"
    os.mkfifo(fifo)
    proc = subprocess.run(
        [sys.executable, "-m", "distfs_pipeline.schemas", "validate", str(fifo)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "FIFO" in proc.stderr + proc.stdout
    assert "Traceback" not in proc.stderr
