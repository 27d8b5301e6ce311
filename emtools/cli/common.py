"""What every em-* tool shares: the CLI contract in one place.

- stdout carries data only (paths, JSON); logs go to stderr through ``logging``.
- Exit codes: 0 ok; 1 with exactly one line ``em-<tool>: error: <what>``; 2 usage (click);
  130 on Ctrl-C (SIGINT), 143 on SIGTERM. ``--debug`` shows the traceback instead.
- Shared option decorators (``-q/-v/--debug``) and click types over :mod:`emtools.values`
  (:class:`ValueType`; comma triples) so no tool copies them.

This module must stay light: it is imported by tools that never load torch.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import click

from emtools import __version__, interrupt, values
from emtools.cpus import prefer_huge_pages
from emtools.errors import EmError
from emtools.logs import setup_logging  # noqa: F401 (the tools import it from here)

T = TypeVar("T")
log = logging.getLogger("emtools")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _exit(code: int) -> None:
    """Exit with ``code``; skip interpreter clean-up when HDF5 is in a state that crashes it."""
    writers = sys.modules.get("emtools.io.writers")
    if writers is not None and getattr(writers, "hdf5_unstable", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def run_tool(tool: str, body: Callable[[], T], debug: bool) -> T:
    """Run ``body`` under the CLI contract: map failures to one line on stderr and exit codes."""
    prefer_huge_pages()  # before any tool imports torch
    previous = {sig: signal.signal(sig, interrupt.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        result = body()
        interrupt.check()  # a signal whose exception was swallowed still stops the run
        return result
    except EmError as exc:
        if debug:
            raise
        click.echo(f"{tool}: error: {_one_line(exc)}", err=True)
        _exit(1)
    except (KeyboardInterrupt, interrupt.Interrupted) as exc:
        terminated = getattr(exc, "signum", signal.SIGINT) == signal.SIGTERM
        click.echo(f"{tool}: error: {'terminated' if terminated else 'interrupted'}", err=True)
        _exit(143 if terminated else 130)
    except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException, SystemExit):
        raise
    except BrokenPipeError:
        # Downstream closed the pipe (e.g. `| head`): not our failure, and nothing to report.
        sys.stderr.close()
        sys.exit(1)
    except MemoryError:
        if debug:
            raise
        click.echo(f"{tool}: error: out of memory (use smaller chunks)", err=True)
        _exit(1)
    except OSError as exc:
        if debug:
            raise
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        reason = exc.strerror or str(exc)
        click.echo(f"{tool}: error: {_one_line(reason)}{where}", err=True)
        _exit(1)
    except Exception as exc:  # an unexpected failure still gets one line, not a traceback
        if debug:
            raise
        click.echo(
            f"{tool}: error: internal error: {type(exc).__name__}: {_one_line(exc)} "
            "(rerun with --debug for the traceback)",
            err=True,
        )
        _exit(1)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def contract(tool: str):
    """Decorate a click command callback with ``-q/-v/--debug`` and the error contract.

    The decorated callback does not receive ``quiet``/``verbose``/``debug``; logging is set up
    before it runs. Use it directly under ``@click.command()``.
    """

    def decorate(func):
        @click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
        @click.option("-v", "--verbose", count=True, help="More detail on stderr (repeatable).")
        @click.option("--debug", is_flag=True, help="Show the full traceback on failure.")
        @functools.wraps(func)
        def wrapper(*args, quiet: bool, verbose: int, debug: bool, **kwargs):
            setup_logging(tool, -1 if quiet else min(verbose, 1))
            return run_tool(tool, lambda: func(*args, **kwargs), debug)

        return wrapper

    return decorate


def version_option(tool: str):
    return click.version_option(__version__, "--version", prog_name=tool, message="%(prog)s %(version)s")


class ValueType(click.ParamType):
    """A click type over a converter of :mod:`emtools.values` (which words the message, in its
    :data:`~emtools.values.CLICK` form): a bad value is a usage error, exit 2, like any click type.

    ``ValueType("Q", lambda text: values.to_fraction(text, percent=True, say=values.CLICK))``
    """

    def __init__(self, name: str, convert: Callable[[str], object], converted: tuple[type, ...] = ()):
        self.name = name
        self._convert = convert
        self._converted = converted  # values that are already converted (defaults given in code)

    def convert(self, value, param, ctx):
        if self._converted and isinstance(value, self._converted):
            return value
        try:
            return self._convert(value)
        except EmError as exc:
            self.fail(str(exc), param, ctx)


class IntTriple(ValueType):
    """``z,y,x`` integers (a single integer means all three axes), e.g. ``--chunk 64,512,512``.

    Only the syntax is checked here (exit 2 on bad syntax); ranges are the command's business,
    so that out-of-range values get the one-line exit-1 error of the contract.
    """

    def __init__(self):
        super().__init__("Z,Y,X", lambda text: values.to_triple(
            text, positive=False, example="64,512,512", say=values.CLICK), converted=(tuple,))


class FloatTriple(ValueType):
    """``z,y,x`` numbers (a single number means all three axes), e.g. ``--voxel-size 40,4,4``."""

    def __init__(self):
        super().__init__("Z,Y,X", lambda text: values.to_triple(
            text, integer=False, positive=False, example="40,4,4", say=values.CLICK), converted=(tuple,))


INT_TRIPLE = IntTriple()
FLOAT_TRIPLE = FloatTriple()


def require_positive(name: str, values: Sequence[float], allow_zero: bool = False) -> None:
    """One-line EmError when any of ``values`` is negative (or zero unless ``allow_zero``)."""
    bad = [v for v in values if (v < 0 if allow_zero else v <= 0)]
    if bad:
        what = "negative" if allow_zero else "zero or negative"
        raise EmError(f"{name} {','.join(str(v) for v in values)} has {what} values")


def expand_stdin_specs(specs: Iterable[str]) -> list[str]:
    """Replace each ``-`` with the non-empty lines of stdin (one spec per line)."""
    out: list[str] = []
    for spec in specs:
        if spec == "-":
            out.extend(line.strip() for line in sys.stdin if line.strip())
        else:
            out.append(spec)
    return out


def progress(items: Iterable[T], label: str, length: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar on stderr, only when stderr is a terminal and not ``-q``."""
    if not sys.stderr.isatty() or log.level > logging.INFO:
        yield from items
        return
    with click.progressbar(items, label=label, length=length, file=sys.stderr) as bar:
        yield from bar


def emit(line: str) -> None:
    """Write one line of data to stdout (and flush, so pipelines see it at once)."""
    click.echo(line)
    sys.stdout.flush()
