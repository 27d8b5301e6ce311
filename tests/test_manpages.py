"""Every tool is documented: a man page per console script, generated from --help and fresh."""

from pathlib import Path

import click
import pytest

from emtools.manpages import console_scripts, load_command, render

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(console_scripts().items())


def test_tools_are_registered():
    assert "em-tile" in dict(SCRIPTS)
    for name, target in SCRIPTS:
        assert name.startswith("em-") and isinstance(load_command(target), click.Command)


@pytest.mark.parametrize("name,target", SCRIPTS)
def test_man_page_is_fresh(name, target):
    page = ROOT / "man" / f"{name}.1"
    assert page.exists(), f"{page} is missing: run `make man`"
    assert page.read_text() == render(name, load_command(target)), f"{page} is stale: run `make man`"


@pytest.mark.parametrize("name,target", SCRIPTS)
def test_every_command_has_an_example_and_the_contract_options(name, target):
    command = load_command(target)
    commands = [command]
    if isinstance(command, click.Group):
        ctx = click.Context(command)
        commands = [command.get_command(ctx, sub) for sub in command.list_commands(ctx)]
    for cmd in commands:
        assert "Example" in (cmd.help or "") + (cmd.epilog or ""), f"{name} {cmd.name}: --help has no example"
        options = {opt for p in cmd.params for opt in getattr(p, "opts", [])}
        assert {"-q", "-v", "--debug"} <= options, f"{name} {cmd.name} lacks -q/-v/--debug"


def test_render_escapes_roff():
    @click.command()
    def tool():
        """Line one.

        .dangerous start and a-dash\\back
        """

    page = render("em-x", tool)
    assert "\\&.dangerous" in page and "a\\-dash" in page and "\\\\back" in page


@pytest.mark.parametrize("name,target", SCRIPTS)
def test_checkout_wrapper_runs_each_tool(name, target):
    """bin/em-<tool> runs the tool from a checkout, the same module the console script runs."""
    import subprocess

    wrapper = ROOT / "bin" / name
    assert wrapper.exists() and wrapper.stat().st_mode & 0o111, f"{wrapper} is missing or not executable"
    module = target.split(":")[0]
    assert f"-m {module} " in wrapper.read_text()
    done = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().startswith(name)
