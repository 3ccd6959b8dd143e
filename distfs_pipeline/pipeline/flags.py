"""Upstream's `--reward-distfs-*` flags (SPEC 3.1), rewritten into Hydra overrides.

Operators' scripts pass the 13 flags of the upstream node; we accept them, in `--flag value` and
`--flag=value` form, mixed in any order with overrides and Hydra's own flags. `rewrite_argv`
returns an argv Hydra's parser accepts: Hydra 1.3.8 refuses overrides on both sides of a flag such
as `--cfg job`, so Hydra's flags come first, then every override in the order given, with each
legacy flag converted to `key=value` (a repeated flag: the last value wins, at its last position).

Values are parsed as Rust's `str::parse::<u32|i64>` does (optional `+`, ASCII digits, range
checked) and must pass upstream's predicate; a failure is a `UsageError` in upstream's words,
naming the flag. Unlike upstream's newest CLI we also refuse backoff max < base (SPEC section 0).
No Hydra import here: the Hydra flag names below are checked against Hydra's parser by a test.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Literal

from distfs_pipeline.core.errors import UsageError
from distfs_pipeline.core.models import I64_MAX, I64_MIN, U32_MAX

LEGACY_PREFIX = "--reward-distfs-"


@dataclass(frozen=True)
class LegacyFlag:
    """One upstream flag: its config key, integer type and predicate (> 0 or >= 0)."""

    name: str
    key: str
    integer: Literal["u32", "i64"]
    positive: bool

    @property
    def requirement(self) -> str:
        """Upstream's wording of the rule, used verbatim in the error."""
        return "a positive integer" if self.positive else "a non-negative integer"

    def parse(self, text: str | None) -> int:
        """The value as upstream would accept it, or `UsageError` naming this flag."""
        value = parse_rust_int(text, self.integer) if text is not None else None
        if value is None or value < (1 if self.positive else 0):
            got = "nothing" if text is None else repr(text)
            raise UsageError(f"{self.name} requires {self.requirement} (got {got})")
        return value


def _flag(suffix: str, key: str, integer: Literal["u32", "i64"], positive: bool) -> LegacyFlag:
    return LegacyFlag(LEGACY_PREFIX + suffix, key, integer, positive)


LEGACY_FLAGS: dict[str, LegacyFlag] = {
    f.name: f
    for f in (
        _flag("probe-max-sample-bytes", "probe.max_sample_bytes", "u32", True),
        _flag("probe-per-tick", "probe.challenges_per_tick", "u32", True),
        _flag("probe-ttl-ms", "probe.challenge_ttl_ms", "i64", True),
        _flag("probe-allowed-clock-skew-ms", "probe.allowed_clock_skew_ms", "i64", False),
        _flag("adaptive-max-checks-per-round", "policy.max_checks_per_round", "u32", True),
        _flag("adaptive-backoff-base-ms", "policy.backoff_base_ms", "i64", False),
        _flag("adaptive-backoff-max-ms", "policy.backoff_max_ms", "i64", False),
        _flag("adaptive-multiplier-hash-mismatch", "policy.backoff_multiplier_hash_mismatch", "u32", True),
        _flag("adaptive-multiplier-missing-sample", "policy.backoff_multiplier_missing_sample", "u32", True),
        _flag("adaptive-multiplier-timeout", "policy.backoff_multiplier_timeout", "u32", True),
        _flag("adaptive-multiplier-read-io-error", "policy.backoff_multiplier_read_io_error", "u32", True),
        _flag(
            "adaptive-multiplier-signature-invalid",
            "policy.backoff_multiplier_signature_invalid",
            "u32",
            True,
        ),
        _flag("adaptive-multiplier-unknown", "policy.backoff_multiplier_unknown", "u32", True),
    )
}
BASE_FLAG = LEGACY_PREFIX + "adaptive-backoff-base-ms"
MAX_FLAG = LEGACY_PREFIX + "adaptive-backoff-max-ms"

# Hydra 1.3.8's own flags (hydra._internal.utils.get_args_parser), by how many values they take.
HYDRA_SWITCHES = frozenset(
    {"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r", "--multirun", "-m"}
    | {"--shell-completion", "-sc"}
)
HYDRA_VALUE_FLAGS = frozenset(
    {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn"}
    | {"--config-dir", "-cd", "--experimental-rerun"}
)
HYDRA_OPTIONAL_VALUE_FLAGS = frozenset({"--info", "-i"})
HYDRA_INFO_CHOICES = frozenset({"all", "config", "defaults", "defaults-tree", "plugins", "searchpath"})

_DIGITS = re.compile(r"[0-9]+")
_RANGES = {"u32": (0, U32_MAX), "i64": (I64_MIN, I64_MAX)}


def parse_rust_int(text: str, integer: Literal["u32", "i64"]) -> int | None:
    """Rust's `str::parse`: optional `+` (or `-` for i64), then ASCII digits only, in range.

    No whitespace, no `_`, no `-` for u32 (so `-0` fails); None when Rust would return Err.
    """
    low, high = _RANGES[integer]
    sign, digits = 1, text
    if digits[:1] == "+":
        digits = digits[1:]
    elif digits[:1] == "-" and low < 0:
        sign, digits = -1, digits[1:]
    if not _DIGITS.fullmatch(digits):
        return None
    value = sign * int(digits)
    return value if low <= value <= high else None


@dataclass
class _Split:
    """argv sorted into Hydra's flags and the overrides (legacy flags as (flag, value) pairs)."""

    hydra: list[str]
    overrides: list[str | tuple[LegacyFlag, int]]


def rewrite_argv(argv: list[str]) -> list[str]:
    """Hydra flags first, then overrides and converted legacy flags in order (last repeat wins).

    `argv` excludes the program name. Raises `UsageError` for a bad or missing flag value, an
    unknown `--reward-distfs-*` flag (with the closest known one suggested) or backoff max < base.
    """
    split = _split(argv)
    final = {flag.name: value for flag, value in _legacy_items(split)}
    _check_max_not_below_base(final)
    last_index = {item[0].name: i for i, item in enumerate(split.overrides) if isinstance(item, tuple)}
    out = list(split.hydra)
    for i, item in enumerate(split.overrides):
        if isinstance(item, str):
            out.append(item)
        elif last_index[item[0].name] == i:
            out.append(f"{item[0].key}={final[item[0].name]}")
    return out


def _split(argv: list[str]) -> _Split:
    split = _Split(hydra=[], overrides=[])
    i = 0
    while i < len(argv):
        token = argv[i]
        name, has_inline, inline = token.partition("=")
        if token.startswith(LEGACY_PREFIX):
            flag = _legacy_flag(name)
            value_text = inline if has_inline else (argv[i + 1] if i + 1 < len(argv) else None)
            split.overrides.append((flag, flag.parse(value_text)))
            i += 1 if has_inline else 2
        elif _takes_next(token, argv[i + 1 : i + 2]):
            split.hydra.extend(argv[i : i + 2])
            i += 2
        elif token in HYDRA_SWITCHES or name in HYDRA_VALUE_FLAGS | HYDRA_OPTIONAL_VALUE_FLAGS:
            split.hydra.append(token)
            i += 1
        else:
            split.overrides.append(token)
            i += 1
    return split


def _takes_next(token: str, following: list[str]) -> bool:
    """Whether a Hydra flag consumes the next token as its value (`--cfg job`, `--info defaults`)."""
    if token in HYDRA_VALUE_FLAGS:
        return True
    return token in HYDRA_OPTIONAL_VALUE_FLAGS and bool(following) and following[0] in HYDRA_INFO_CHOICES


def _legacy_flag(name: str) -> LegacyFlag:
    """The flag called `name`, or `UsageError` suggesting the closest known flag."""
    if name in LEGACY_FLAGS:
        return LEGACY_FLAGS[name]
    # Compare what follows the shared prefix, or every name would look close.
    suffixes = {flag.removeprefix(LEGACY_PREFIX): flag for flag in LEGACY_FLAGS}
    close = difflib.get_close_matches(name.removeprefix(LEGACY_PREFIX), list(suffixes), n=1, cutoff=0.6)
    hint = f" (did you mean {suffixes[close[0]]}?)" if close else ""
    raise UsageError(f"unknown option: {name}{hint}")


def _legacy_items(split: _Split) -> list[tuple[LegacyFlag, int]]:
    return [item for item in split.overrides if isinstance(item, tuple)]


def _check_max_not_below_base(final: dict[str, int]) -> None:
    """The old viewer-live parser's check, with its message; the newest upstream CLI lost it."""
    base, high = final.get(BASE_FLAG), final.get(MAX_FLAG)
    if base is not None and high is not None and high < base:
        raise UsageError(f"{MAX_FLAG} must be >= {BASE_FLAG} ({high} < {base})")
