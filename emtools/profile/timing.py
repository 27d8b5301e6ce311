"""Measured time: the device's peak (calibration) and per-layer forward/backward times.

Peak is what this device achieves on large, well-shaped work: a 3D convolution (64 -> 64
channels, 3x3x3; best of contiguous and channels_last_3d) and a square matrix product, fp32,
with the current thread count. ``efficiency = achieved FLOP/s / peak``, as in t = FLOP / eff.

Per-layer times come from hooks on every leaf module: a forward pre-hook and a full backward
pre-hook stamp the moment each layer starts, and a layer's time is the segment until the next
layer starts (see :func:`segments`). On a GPU every stamp synchronises. Hooks cost microseconds,
so the sum of layer times is a little above the plain iteration time, which is measured
separately, without hooks.
"""

from __future__ import annotations

import statistics
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from emtools.profile.flops import leaf_modules


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, repeats: int = 3, warmup: int = 1) -> list[float]:
    """Wall seconds of ``fn()`` for each of ``repeats`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


@dataclass
class Peak:
    """FLOP/s this device reaches on large kernels (fp32), and the best of them."""

    device: str
    threads: int
    conv_flops_per_s: float
    matmul_flops_per_s: float

    @property
    def flops_per_s(self) -> float:
        return max(self.conv_flops_per_s, self.matmul_flops_per_s)

    def to_dict(self) -> dict:
        return {"device": self.device, "threads": self.threads, "conv_gflops": self.conv_flops_per_s / 1e9,
                "matmul_gflops": self.matmul_flops_per_s / 1e9, "peak_gflops": self.flops_per_s / 1e9}


def calibrate_peak(device: torch.device, repeats: int = 3, seed: int = 0) -> Peak:
    """Measure the conv and matmul FLOP/s of ``device`` (about 3 s on a 2-core CPU)."""
    generator = torch.Generator().manual_seed(seed)
    big = device.type == "cuda"
    channels, spatial = (128, (32, 128, 128)) if big else (64, (16, 48, 48))
    x = torch.randn((1, channels, *spatial), generator=generator).to(device)
    w = torch.randn((channels, channels, 3, 3, 3), generator=generator).to(device) * 0.01
    conv_flops = 2 * channels * channels * 27 * spatial[0] * spatial[1] * spatial[2]
    best_conv = 0.0
    with torch.no_grad():
        for memory_format in (torch.contiguous_format, torch.channels_last_3d):
            xm, wm = x.contiguous(memory_format=memory_format), w.contiguous(memory_format=memory_format)
            seconds = min(time_call(lambda: torch.nn.functional.conv3d(xm, wm, padding=1), device, repeats))
            best_conv = max(best_conv, conv_flops / seconds)
        n = 8192 if big else 1536
        a = torch.randn((n, n), generator=generator).to(device)
        b = torch.randn((n, n), generator=generator).to(device)
        seconds = min(time_call(lambda: a @ b, device, repeats))
    return Peak(str(device), torch.get_num_threads(), best_conv, 2 * n ** 3 / seconds)


@dataclass
class LayerTimes:
    """Median seconds per layer name, forward and backward, and the hook-free iteration time."""

    forward: dict[str, float]
    backward: dict[str, float]
    iteration_forward_s: float
    iteration_backward_s: float


@contextmanager
def layer_hooks(model: nn.Module, device: torch.device, events: list[tuple[float, str, str]]):
    """Append ``(time, "fwd"|"bwd", layer name)`` to ``events`` when each leaf layer starts.

    A layer's time is then the segment from its start to the next layer's start (or the end of
    the pass): segments add up to the whole pass, glue code included, and a layer whose input
    needs no gradient (the first conv: weight gradient only) still gets its backward time.
    """
    handles = []

    def stamp(phase: str, name: str) -> None:
        synchronize(device)
        events.append((time.perf_counter(), phase, name))

    for name, module in leaf_modules(model).items():
        handles.append(module.register_forward_pre_hook(lambda mod, args, name=name: stamp("fwd", name)))
        handles.append(module.register_full_backward_pre_hook(lambda mod, grad, name=name: stamp("bwd", name)))
    try:
        with warnings.catch_warnings():
            # "Full backward hook is firing when gradients are computed with respect to module
            # outputs": expected for the first layer, whose input is the data.
            warnings.filterwarnings("ignore", message="Full backward hook")
            yield
    finally:
        for handle in handles:
            handle.remove()


def segments(events: list[tuple[float, str, str]], phase: str, end: float) -> dict[str, float]:
    """Seconds per layer: from each ``phase`` event to the next one (the last one: to ``end``)."""
    marks = [(t, name) for t, p, name in events if p == phase]
    out: dict[str, float] = {}
    for (t, name), (t_next, _) in zip(marks, marks[1:] + [(end, "")]):
        out[name] = out.get(name, 0.0) + max(0.0, t_next - t)
    return out


def loss_of(output: torch.Tensor) -> torch.Tensor:
    """A cheap scalar to backpropagate: the mean square of the output (as a regression loss to 0)."""
    return output.float().square().mean()


def measure_layers(model: nn.Module, x: torch.Tensor, repeats: int = 3, warmup: int = 1,
                   backward: bool = True) -> LayerTimes:
    """Median forward (and backward) seconds per leaf layer over ``repeats`` iterations.

    The whole-iteration forward and backward times are measured first, without hooks.
    """
    device = x.device
    fwd: dict[str, list[float]] = {}
    bwd: dict[str, list[float]] = {}
    plain_fwd: list[float] = []
    plain_bwd: list[float] = []

    def iteration(events: list | None) -> tuple[float, float, float]:
        model.zero_grad(set_to_none=True)
        synchronize(device)
        start = time.perf_counter()
        if backward:
            loss = loss_of(model(x))
        else:
            with torch.no_grad():
                model(x)
        synchronize(device)
        middle = time.perf_counter()
        if backward:
            loss.backward()
            synchronize(device)
        return start, middle, time.perf_counter()

    for _ in range(warmup):
        iteration(None)
    for _ in range(repeats):
        start, middle, end = iteration(None)
        plain_fwd.append(middle - start)
        plain_bwd.append(end - middle)
    for _ in range(repeats):
        events: list[tuple[float, str, str]] = []
        with layer_hooks(model, device, events):
            start, middle, end = iteration(events)
        for name, seconds in segments(events, "fwd", middle).items():
            fwd.setdefault(name, []).append(seconds)
        for name, seconds in segments(events, "bwd", end).items():
            bwd.setdefault(name, []).append(seconds)
    return LayerTimes({k: statistics.median(v) for k, v in fwd.items()},
                      {k: statistics.median(v) for k, v in bwd.items()},
                      statistics.median(plain_fwd), statistics.median(plain_bwd) if backward else 0.0)
