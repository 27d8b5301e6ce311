"""Generate one man page per tool from its click help, so pages never drift from the code.

``python -m emtools.manpages man/`` (what ``make man``) runs writes ``man/em-<tool>.1`` for every
console script in setup.cfg; ``tests/test_manpages.py`` fails when a committed page is stale.
"""

from __future__ import annotations

import configparser
import importlib
import os
import sys
from pathlib import Path

import click

from emtools import __version__

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def console_scripts(setup_cfg: Path = SETUP_CFG) -> dict[str, str]:
    """``{"em-tile": "emtools.cli.tile:main", ...}`` as registered in setup.cfg."""
    parser = configparser.ConfigParser()
    parser.read(setup_cfg)
    lines = parser.get("options.entry_points", "console_scripts", fallback="").strip().splitlines()
    scripts = {}
    for line in lines:
        name, _, target = line.partition("=")
        scripts[name.strip()] = target.strip()
    return scripts


def load_command(target: str) -> click.Command:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def _escape(text: str) -> str:
    out = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in out.splitlines())


def _paragraphs(text: str) -> list[str]:
    """Split click help text into roff blocks; ``\\b`` blocks stay verbatim (examples)."""
    blocks, out = text.strip().split("\n\n"), []
    for block in blocks:
        if block.strip().startswith("\b"):
            body = block.split("\n", 1)[1] if "\n" in block else ""
            out.append(".nf\n" + _escape(body.rstrip()) + "\n.fi")
        else:
            out.append(_escape(" ".join(block.split())))
    return out


def _options(ctx: click.Context, command: click.Command) -> list[str]:
    lines = []
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option):
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, help_text = record
        lines += [".TP", f"\\fB{_escape(names)}\\fR", _escape(help_text or "")]
    return lines


def _section(ctx: click.Context, command: click.Command, title: str) -> list[str]:
    usage = " ".join(command.collect_usage_pieces(ctx))
    lines = [f".SH {title}" if title else ".PP", f"\\fB{_escape(ctx.command_path)}\\fR {_escape(usage)}"]
    if command.help:
        lines += [".SH DESCRIPTION" if title else ".PP"] + [p + "\n.PP" for p in _paragraphs(command.help)]
    options = _options(ctx, command)
    if options:
        lines += [".SH OPTIONS" if title else ".PP\nOptions:"] + options
    if command.epilog:
        lines += [".SH EXAMPLES" if title else ".PP"] + _paragraphs(command.epilog.replace("Examples:", "", 1))
    return lines


def render(name: str, command: click.Command) -> str:
    """The roff text of ``name``'s man page (deterministic: no dates)."""
    ctx = click.Context(command, info_name=name)
    summary = (command.get_short_help_str(200) or name).rstrip(".")
    lines = [
        f'.TH {name.upper()} 1 "" "emtools {__version__}" "emtools manual"',
        ".SH NAME",
        f"{_escape(name)} \\- {_escape(summary)}",
    ]
    lines += _section(ctx, command, "SYNOPSIS")
    if isinstance(command, click.Group):
        lines.append(".SH COMMANDS")
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            sub_ctx = click.Context(sub, info_name=sub_name, parent=ctx)
            lines.append(f".SS {_escape(name)} {_escape(sub_name)}")
            lines += _section(sub_ctx, sub, "")
    lines += [".SH EXIT STATUS", "0 success; 1 error (one line on stderr); 2 usage error; 130 interrupted."]
    return "\n".join(lines).replace("\n\n", "\n") + "\n"


def write_pages(out_dir: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, target in sorted(console_scripts().items()):
        path = os.path.join(out_dir, f"{name}.1")
        with open(path, "w") as handle:
            handle.write(render(name, load_command(target)))
        written.append(path)
    return written


if __name__ == "__main__":
    # `make man`: the written paths are this command's data, one per line on stdout.
    sys.stdout.write("".join(f"{page}\n" for page in write_pages(sys.argv[1] if len(sys.argv) > 1 else "man")))
