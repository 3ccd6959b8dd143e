"""Warnings and logs: one place (stderr, through `logging`), as text for people or JSON for shippers.

Why: the summary table is the only thing on stdout (scripts read it; `| head` may close it), and
an operator running us under systemd reads one stream, journald's, where one JSON object per line
(`runtime.log_format=json`) keeps fields apart. Hydra's own messages ("Launching 3 jobs") go the
same way: `conf/hydra/job_logging/distfs.yaml` and `conf/hydra/hydra_logging/distfs.yaml` route
every logger to `StderrHandler` with the formatter named by `runtime.log_format`.

The live progress line (`summary.Progress`) is drawn only on a terminal and only in text format;
a log line printed while it is shown first clears it, so the two never share a line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER = logging.getLogger("distfs_pipeline")
FORMATS = ("text", "json")


class _Terminal:
    """Whether a progress line is on screen (stderr), so a log line can clear it first."""

    progress_shown = False
    log_format = "text"


TERMINAL = _Terminal()


def warn(message: str) -> None:
    """A warning for the operator (stderr; JSON with `runtime.log_format=json`)."""
    _ensure_handler()
    LOGGER.warning(message)


def set_format(log_format: str) -> None:
    """Remember the configured format (the progress line is text-only)."""
    TERMINAL.log_format = log_format
    _ensure_handler()


def progress_enabled(mode: str, stream: TextIO) -> bool:
    """`always`, or `auto` on a terminal with text logs; never in JSON (it would break the lines)."""
    if mode == "always":
        return True
    return mode == "auto" and TERMINAL.log_format == "text" and _isatty(stream)


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever `sys.stderr` is at the time of the record (pytest, redirections)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        if TERMINAL.progress_shown:
            sys.stderr.write("\r\x1b[K")
        super().emit(record)


class TextFormatter(logging.Formatter):
    """`warning: message` for ours, `[HYDRA] message` for Hydra's, the traceback if any."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.name.startswith("hydra"):
            text = f"[HYDRA] {message}"
        elif record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {message}"
        else:
            text = message
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (RFC 3339, UTC), level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        entry: dict[str, Any] = {
            "time": f"{stamp}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text", level: int = logging.INFO) -> None:
    """Route every logger to stderr in `log_format` (for tools that run outside a Hydra job)."""
    set_format(log_format)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class _CurrentFormatter(logging.Formatter):
    """Text or JSON, whichever `runtime.log_format` is now (the fallback handler's formatter)."""

    def format(self, record: logging.LogRecord) -> str:
        chosen = JsonFormatter() if TERMINAL.log_format == "json" else TextFormatter()
        return chosen.format(record)


def _ensure_handler() -> None:
    """Our records reach stderr even where nobody configured logging for us (a library caller,
    a test): unless the root logger has our handler (Hydra's job logging, `configure`), the
    `distfs_pipeline` logger gets its own and stops propagating, so nothing prints twice."""
    configured = any(isinstance(h, StderrHandler) for h in logging.getLogger().handlers)
    own = [h for h in LOGGER.handlers if isinstance(h, StderrHandler)]
    if configured:
        for handler in own:
            LOGGER.removeHandler(handler)
        LOGGER.propagate = True
    elif not own:
        handler = StderrHandler()
        handler.setFormatter(_CurrentFormatter())
        LOGGER.addHandler(handler)
        LOGGER.propagate = False
        if LOGGER.getEffectiveLevel() > logging.INFO:
            LOGGER.setLevel(logging.INFO)
