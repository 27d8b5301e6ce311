"""The emtools logger's one set-up: lines on stderr prefixed with the tool's name.

Library code logs to ``logging.getLogger("emtools")`` and never configures it; the tools (and
``python -m emtools.native``) call :func:`setup_logging` once. stdout stays for data.
"""

from __future__ import annotations

import logging
import sys

log = logging.getLogger("emtools")


def setup_logging(tool: str, verbosity: int) -> None:
    """The tool's log on stderr, each line prefixed ``tool:`` (-1: warnings only, 0: info, 1: debug)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"{tool}: %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False
