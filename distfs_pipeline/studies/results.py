"""The result files a study job and the sweep summary share: `result.json` and how jobs are named.

Why a module of its own: the job (`study`) writes `result.json` and the sweep callback (`sweep`)
reads and completes it; both need the same file name, the same atomic write and the same job
identity, and neither should import the other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distfs_pipeline.core import safefile

RESULT_FILE = "result.json"
READ_CAP = 16 * 1024 * 1024


def write_json_atomic(path: Path, data: Any) -> None:
    """Readers (the sweep driver, another job) never see half a file; a planted link is refused."""
    path.parent.mkdir(parents=True, exist_ok=True)
    safefile.write_atomic(path, (json.dumps(data, indent=2, default=str) + "\n").encode(), durable=False)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from `path`, or None if it is missing, unreadable or not ours (never raises)."""
    try:
        data = safefile.loads_strict(safefile.read_capped(path, READ_CAP))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def job_identity(hydra: DictConfig) -> dict[str, Any]:
    """Job number, overrides and config-group choices from a job's `hydra` node (Hydra's own
    groups left out), as they appear in `result.json` and the summary."""
    choices = OmegaConf.to_container(hydra.runtime.choices) or {}
    assert isinstance(choices, dict)
    return {
        "job": OmegaConf.select(hydra, "job.num", default=None),
        "overrides": list(hydra.overrides.task),
        "choices": {k: v for k, v in choices.items() if not str(k).startswith("hydra")},
    }
