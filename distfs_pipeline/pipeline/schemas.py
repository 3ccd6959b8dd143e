"""JSON Schemas of our YAML files, generated from the pydantic models, and a validator for users' CI.

    python -m distfs_pipeline.schemas generate [--out DIR] [--check]
    python -m distfs_pipeline.schemas validate [--schema NAME] FILE [FILE ...]

`generate` writes `schemas/<name>.schema.json` (sorted keys, 2-space indent, trailing newline), so
the files are a pure function of `validation` and a test can tell when they are stale. Every YAML
under `conf/` names its schema on a `# yaml-language-server: $schema=...` line, so editors check
as you type. `validate` checks any YAML file the way composing would: first the JSON Schema (types,
bounds, unknown keys), then the pydantic model for what a schema cannot say (`backoff_max_ms >=
backoff_base_ms`, the runtime rules). It prints one line per problem, `FILE:key: rule`, and exits
0 when every file is valid, 2 otherwise.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError as SchemaError
from pydantic import BaseModel, ConfigDict, Field
from pydantic import ValidationError as ModelError

from distfs_pipeline.core import safefile
from distfs_pipeline.ops.args import OneLineArgumentParser
from distfs_pipeline.pipeline.resources import schema_dir
from distfs_pipeline.pipeline.validation import (
    CROSS_FIELD_TEMPLATES,
    PolicySettings,
    ProbeSettings,
    RuntimeSettings,
    ScenarioSettings,
    Settings,
    describe_error_details,
)

SCHEMA_DIR = schema_dir()  # the packaged copy when installed, else the checkout's schemas/
DIALECT = "https://json-schema.org/draft/2020-12/schema"
EXIT_OK, EXIT_STALE, EXIT_INVALID = 0, 1, 2
_SCHEMA_LINE = re.compile(r"^#\s*yaml-language-server:\s*\$schema=(\S+)", re.MULTILINE)


class HydraHelpFile(BaseModel):
    """Our `hydra/help` config: the text of `--help` (Hydra substitutes `$APP_CONFIG_GROUPS` etc.)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    app_name: str = Field("distfs_pipeline", description="Name shown in the help header.")
    header: str = Field("", description="Text before the configuration groups.")
    footer: str = Field("", description="Text after the config.")
    template: str = Field("", description="The whole help page; may use Hydra's $APP_CONFIG_GROUPS, $CONFIG.")


class HydraLoggingFile(BaseModel):
    """Our `hydra/job_logging` and `hydra/hydra_logging` configs: Python's logging dictConfig.

    The app allows only its own handler and formatters there (`confguard`); this schema checks
    the shape for editors.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    version: int = Field(1, ge=1, le=1, description="dictConfig schema version (always 1).")
    formatters: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Formatters by name.")
    filters: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Filters (not allowed).")
    handlers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Handlers by name.")
    loggers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Loggers by name.")
    root: dict[str, Any] | None = Field(None, description="The root logger: level and handlers.")
    disable_existing_loggers: bool = Field(False, description="Silence loggers made before this config.")
    incremental: bool = Field(False, description="Must stay false.")


# schema name -> the model it is generated from (and the pydantic pass of `validate`)
MODELS: dict[str, type[BaseModel]] = {
    "config": Settings,
    "policy": PolicySettings,
    "probe": ProbeSettings,
    "runtime": RuntimeSettings,
    "scenario": ScenarioSettings,
    "hydra_help": HydraHelpFile,
    "hydra_logging": HydraLoggingFile,
}

_DEFAULTS_LIST = {
    "description": "Hydra defaults list: configs merged before (or after `_self_`) this file.",
    "items": {"anyOf": [{"type": "string"}, {"type": "object"}]},
    "type": "array",
}


def build_schemas() -> dict[str, dict[str, Any]]:
    """Every schema, by name, exactly as `generate` writes it."""
    return {name: _file_schema(name, model) for name, model in MODELS.items()}


def _file_schema(name: str, model: type[BaseModel]) -> dict[str, Any]:
    """The model's schema, opened up for what a Hydra YAML file may carry besides values."""
    schema = model.model_json_schema()
    schema["$schema"] = DIALECT
    schema["title"] = f"distfs_pipeline {name}"
    if name not in ("hydra_help", "hydra_logging"):
        schema["properties"]["defaults"] = _DEFAULTS_LIST
    if name == "config":
        schema["properties"]["hydra"] = {
            "description": "Hydra's own settings (see --hydra-help); not checked here.",
            "type": "object",
        }
    return schema


def render(schema: dict[str, Any]) -> str:
    """Deterministic text of one schema file."""
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def schema_filename(name: str) -> str:
    return f"{name}.schema.json"


def generate(out_dir: Path = SCHEMA_DIR) -> list[Path]:
    """Write every schema into `out_dir`; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in build_schemas().items():
        path = out_dir / schema_filename(name)
        safefile.write_atomic(path, render(schema).encode("utf-8"), durable=False)
        written.append(path)
    return written


def stale_schemas(out_dir: Path = SCHEMA_DIR) -> list[str]:
    """Names whose file in `out_dir` is missing or differs from what the models generate."""
    stale = []
    for name, schema in build_schemas().items():
        path = out_dir / schema_filename(name)
        if not path.is_file() or path.read_text(encoding="utf-8") != render(schema):
            stale.append(name)
    return stale


def schema_name_for(path: Path, text: str) -> str | None:
    """Which of our schemas a YAML file claims or, failing that, where it sits.

    The `$schema` line wins; then the directory (`policy/`, `probe/`, `runtime/`, `scenario/`,
    `hydra/help/`); then the name `config.yaml`. None when nothing tells.
    """
    match = _SCHEMA_LINE.search(text)
    if match:
        base = match.group(1).rsplit("/", 1)[-1]
        return base.removesuffix(".json").removesuffix(".schema")
    parent = path.resolve().parent
    if parent.name in MODELS and parent.name not in ("config", "hydra_help"):
        return parent.name
    if parent.name == "help" and parent.parent.name == "hydra":
        return "hydra_help"
    if parent.name in ("job_logging", "hydra_logging") and parent.parent.name == "hydra":
        return "hydra_logging"
    if path.stem == "config":
        return "config"
    return None


YAML_READ_CAP = 4 * 1024 * 1024  # a config file, not a data set


def validate_file(path: Path, schema_name: str | None = None) -> list[str]:
    """Problems of one YAML file, one line each (`FILE:key: rule`); empty when valid."""
    try:
        text = safefile.read_capped(path, YAML_READ_CAP).decode("utf-8")  # never blocks on a FIFO
    except (OSError, UnicodeDecodeError) as exc:
        return [f"{path}: cannot read: {exc}"]
    name = schema_name or schema_name_for(path, text)
    if name is None:
        return [
            f"{path}: cannot tell which schema applies; add a '# yaml-language-server: $schema=' line "
            f"or pass --schema ({', '.join(MODELS)})"
        ]
    if name not in MODELS:
        return [f"{path}: unknown schema '{name}' (known: {', '.join(MODELS)})"]
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        return [f"{path}: not valid YAML: {' '.join(str(exc).split())}"]
    except RecursionError:  # the parser recurses per nesting level
        return [f"{path}: not valid YAML: nested too deeply to read"]
    data = {} if data is None else data
    if not isinstance(data, dict):
        return [f"{path}: must be a mapping of keys, got {type(data).__name__}"]
    try:
        problems = [f"{path}:{line}" for line in _schema_problems(name, data)]
        return problems or [f"{path}:{line}" for line in _model_problems(name, data)]
    except RecursionError:  # a value nested deeper than any key of ours can be
        return [f"{path}: a value is nested too deeply to check (no key of the schema nests so)"]


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(build_schemas()[name])


def _schema_problems(name: str, data: dict[str, Any]) -> Iterator[str]:
    validator = _validator(name)
    errors = sorted(validator.iter_errors(data), key=lambda e: ([str(p) for p in e.absolute_path], e.message))
    for error in errors:
        key = _json_path(error.absolute_path)
        if error.validator == "additionalProperties":
            known = error.schema.get("properties", {})
            for extra in sorted(str(k) for k in error.instance if k not in known):
                yield f"{key + '.' if key else ''}{extra}: unknown key"
        else:
            yield f"{key or '(top)'}: {_schema_rule(error)}"


def _json_path(parts: Sequence[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _schema_rule(error: SchemaError) -> str:
    """JSON Schema's complaint in the same words the pydantic checks use."""
    got, rule = error.instance, error.validator_value
    words = {
        "minimum": f"must be >= {rule}",
        "exclusiveMinimum": f"must be > {rule}",
        "maximum": f"must be <= {rule}",
        "type": f"must be of type {rule}",
        "enum": f"must be one of {rule}",
    }
    if error.validator == "minLength":
        return "must not be empty"
    alternatives = error.context or []
    if error.validator == "anyOf" and alternatives:
        # The alternative of the right type says what is wrong; if none is, list the types.
        of_right_type = [sub for sub in alternatives if sub.validator != "type"]
        if of_right_type:
            return _schema_rule(of_right_type[0])
        types = " or ".join(str(sub.validator_value) for sub in alternatives)
        return f"must be of type {types} (got {got!r})"
    if error.validator in words:
        return f"{words[str(error.validator)]} (got {got!r})"
    return error.message


def _model_problems(name: str, data: dict[str, Any]) -> Iterator[str]:
    """The pydantic pass: rules no JSON Schema states (max >= base, runtime rules, strict ints).

    A file with its own defaults list gets its other values from elsewhere, so cross-field rules
    are left to composing then (`preflight`).
    """
    has_defaults = bool(data.get("defaults"))
    values = {k: v for k, v in data.items() if k not in ("defaults", "hydra")}
    try:
        MODELS[name].model_validate(values)
    except ModelError as exc:
        for err in exc.errors(include_url=False):
            if has_defaults and err["type"] in CROSS_FIELD_TEMPLATES:
                continue
            yield describe_error_details(err)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "generate":
        return _cmd_generate(Path(args.out), check=args.check)
    return _cmd_validate([Path(f) for f in args.files], args.schema)


def _parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog="python -m distfs_pipeline.schemas", description=__doc__.split("\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write schemas/*.schema.json from the models")
    gen.add_argument("--out", default=str(SCHEMA_DIR), help="output directory (default: %(default)s)")
    gen.add_argument("--check", action="store_true", help="write nothing; exit 1 if any file is stale")
    val = sub.add_parser("validate", help="validate YAML files against the schemas")
    val.add_argument("--schema", choices=sorted(MODELS), help="schema for every FILE (default: per file)")
    val.add_argument("files", nargs="+", metavar="FILE")
    return parser


def _cmd_generate(out_dir: Path, *, check: bool) -> int:
    if check:
        stale = stale_schemas(out_dir)
        for name in stale:
            print(
                f"{out_dir / schema_filename(name)}: stale; run: python -m distfs_pipeline.schemas generate"
            )
        return EXIT_STALE if stale else EXIT_OK
    for path in generate(out_dir):
        print(f"wrote {path}")
    return EXIT_OK


def _cmd_validate(files: list[Path], schema: str | None) -> int:
    status = EXIT_OK
    for path in files:
        problems = validate_file(path, schema)
        for line in problems:
            print(line, file=sys.stderr)
        if problems:
            status = EXIT_INVALID
        else:
            print(f"{path}: ok")
    return status


if __name__ == "__main__":
    sys.exit(main())
