"""Shared test helpers: run a tool as a user would, and find the real data in ../shared."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def tool_command(tool: str) -> list[str]:
    """The command line that runs ``em-<tool>``: the installed script, else its module."""
    script = Path(sys.executable).parent / f"em-{tool}"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", f"emtools.cli.{tool}"]


def run_tool(tool: str, *args: str, stdin: str | None = None, cwd=None, env=None, timeout=600):
    """Run ``em-<tool> ARGS`` in a subprocess; returns the CompletedProcess (text mode)."""
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "1")
    if env:
        full_env.update(env)
    return subprocess.run(
        tool_command(tool) + [str(a) for a in args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )


def assert_one_line_error(result, tool: str, *fragments: str) -> None:
    """Exit 1, nothing on stdout, exactly one stderr line ``em-<tool>: error: ...`` with fragments."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"em-{tool}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def shared_data(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (needs ../shared/data beside the checkout)")
    return path


def conv_outputs_and_grads(conv, x):
    """(output, input gradient, weight gradient, bias gradient or None) of ``conv`` on ``x`` under a
    fixed, non-uniform loss: what an alternative convolution path must reproduce."""
    import torch

    x = x.clone().requires_grad_()
    y = conv(x)
    (y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum().backward()
    return y.detach(), x.grad, conv.weight.grad, None if conv.bias is None else conv.bias.grad


def assert_switch_trains_the_same(switch) -> None:
    """``switch(model)`` (an execution option that swaps a model's convolutions in place) leaves
    every gradient of a small rsunet-efficient equal to float tolerance, and its checkpoints load."""
    import copy

    import torch

    from emtools.models import build_model, resolve_spec

    torch.manual_seed(0)
    model = build_model(resolve_spec("rsunet-efficient", ["widths=4,8,8", "norm=group", "norm_groups=2"]), seed=0)
    fast = copy.deepcopy(model)
    assert switch(fast) > 0
    x = torch.randn(1, 1, 4, 32, 32)
    for m in (model, fast):
        m(x).square().mean().backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters())
    for (name, p), q in zip(model.named_parameters(), fast.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-4 * scale), name
    fast.load_state_dict(model.state_dict())  # checkpoints load either way


def voronoi_cells(shape=(6, 40, 40), seed=0, n=10):
    """uint64 labels 1..n of the Voronoi cells of ``n`` random points, with 0 on every boundary."""
    import numpy as np

    rng = np.random.default_rng(seed)
    points = rng.random((n, 3)) * np.array(shape)
    grid = np.stack(np.meshgrid(*[np.arange(s) for s in shape], indexing="ij"), -1)
    labels = (np.argmin(((grid[..., None, :] - points) ** 2).sum(-1), -1) + 1).astype(np.uint64)
    for axis in range(3):
        diff = np.diff(labels, axis=axis) != 0
        sl = [slice(None)] * 3
        sl[axis] = slice(1, None)
        labels[tuple(sl)][diff] = 0
    return labels
