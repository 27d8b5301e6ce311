"""Interrupts (Ctrl-C, SIGTERM) that cannot get lost.

Python raises the exception of a signal handler wherever the main thread happens to be; inside a
weakref or ``__del__`` callback it is printed and dropped, and the run would go on to finish. So
the CLI's handler also records the signal here, and long loops and writers call :func:`check`,
which raises again; a writer checks once more before renaming its output into place.
"""

from __future__ import annotations

import signal

pending: int | None = None


class Interrupted(BaseException):
    """A run stopped by a signal (a BaseException, so ``except Exception`` does not swallow it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def handler(signum, frame) -> None:
    global pending
    pending = signum
    raise Interrupted(signum)


def check() -> None:
    """Raise :class:`Interrupted` if a signal arrived (even if its first exception was lost)."""
    if pending is not None:
        raise Interrupted(pending)
