"""Pacing of wall-clock rounds: a byte-rate limit and a jittered tick, as HDFS's block scanner paces.

Why: an audit shares the disk with the node's real work, and a fleet of nodes started together
(one config management run, one power event) would otherwise audit in lockstep forever. Two
optional knobs, both off by default so the wall clock keeps its plain `tick_ms` grid:

- `probe.max_bytes_per_s`: after a round that read B bytes, the next round starts no earlier than
  B / rate seconds after this one started (HDFS's `dfs.block.scanner.volume.bytes.per.second`).
  What a round read is measured, not estimated: the process's `rchar` from `/proc/self/io` (every
  `read`/`pread` of a blob, a chunk cache or the index, whatever the verify mode or blob codec).
- `runtime.tick_jitter_ms`: each interval is `tick_ms` plus a uniform offset in
  `[-tick_jitter_ms, +tick_jitter_ms]`, so the mean rate is unchanged but phases drift apart.

The virtual clock ignores both: studies keep their deterministic timeline.
"""

from __future__ import annotations

import random

_PROC_IO = "/proc/self/io"


def bytes_read_so_far() -> int | None:
    """Bytes this process has read through system calls so far (`rchar`), None where unknown.

    A procfs file of the kernel, not one of ours: it cannot be planted (it is per process), so a
    plain read suffices; any failure means "not measurable here" and pacing says so once.
    """
    try:
        with open(_PROC_IO, "rb") as handle:
            text = handle.read(4096)
    except OSError:
        return None
    for line in text.splitlines():
        name, _, value = line.partition(b":")
        if name == b"rchar":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class Pacing:
    """When the next wall-clock round may start, given the tick, the jitter and the byte rate."""

    def __init__(self, tick_ms: int, jitter_ms: int = 0, max_bytes_per_s: int = 0, seed: int | None = None):
        self.tick_s = tick_ms / 1000
        self.jitter_s = jitter_ms / 1000
        self.max_bytes_per_s = max_bytes_per_s
        self._rng = random.Random(seed)  # seed None: from the OS, so two nodes never share a phase
        self._round_start: tuple[float, int] | None = None  # (monotonic, bytes read) at a round's start
        self.measurable = max_bytes_per_s == 0 or bytes_read_so_far() is not None

    def interval_s(self) -> float:
        """The next tick interval: `tick_ms`, jittered uniformly by up to `tick_jitter_ms`."""
        if not self.jitter_s:
            return self.tick_s
        return self.tick_s + self._rng.uniform(-self.jitter_s, self.jitter_s)

    def round_started(self, now: float) -> None:
        """Note when a round starts and how much the process had read by then."""
        if self.max_bytes_per_s and self.measurable:
            self._round_start = (now, bytes_read_so_far() or 0)

    def earliest_next_start(self) -> float | None:
        """The monotonic time before which the next round must not start (None: no byte limit).

        The previous round read `B` bytes since it started at `t0`: the next starts at `t0 + B / rate`.
        """
        if self._round_start is None:
            return None
        started, before = self._round_start
        read = max(0, (bytes_read_so_far() or before) - before)
        return started + read / self.max_bytes_per_s
