"""Upstream's exponential backoff formula (SPEC 2.10), alone.

Why a module of its own: both the node-wide scheduler (`scheduler`) and the per-blob schedule of the
precise policy (`precision`) compute the same backoff; here, below both, neither imports the other.
"""

from __future__ import annotations

from distfs_pipeline.core.models import I64_MAX, I64_MIN

MAX_BACKOFF_EXPONENT = 16


def _sat_i64(value: int) -> int:
    """Clamp to i64, as Rust's `saturating_mul` on i64 times does."""
    return min(max(value, I64_MIN), I64_MAX)


def compute_backoff(base_ms: int, max_ms: int, rounds: int, multiplier: int) -> int:
    """Exponential backoff for the `rounds`-th consecutive failure round, scaled by the reason.

    `min(base * 2^min(rounds-1, 16) * multiplier, max)`; 0 when backoff is disabled (base or max
    not positive) or there is no failure streak. Python ints never overflow, so clamping to
    i64::MAX reproduces upstream's saturating multiply.
    """
    if base_ms <= 0 or max_ms <= 0 or rounds <= 0:
        return 0
    exponent = min(rounds - 1, MAX_BACKOFF_EXPONENT)
    return min(_sat_i64(base_ms * (1 << exponent) * multiplier), max_ms)
