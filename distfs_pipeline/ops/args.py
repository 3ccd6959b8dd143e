"""argparse in the project's error style, for the helper commands (status, index adopt, schemas, sweep).

Why a module of its own: the operator commands must not import the Hydra pipeline just to parse
their arguments, and every command should fail the same way (one line, exit status 2).
"""

from __future__ import annotations

import argparse
from typing import NoReturn


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse for our helper commands (`schemas`, `sweep`) in the project's error style: one line
    `<prog>: error: <message> (see --help)` and exit status 2, not the usage block first."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")
