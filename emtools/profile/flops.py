"""Per-layer cost of a model, counted analytically, and a cross-check against torch's counter.

FLOPs follow the convention of ``torch.utils.flop_counter.FlopCounterMode`` and of the paper's
table: 2 x multiply-adds of convolutions and matrix products; bias, normalisation, activation,
pooling and sums count 0 (their cost is memory traffic, which the measured time shows).

Per convolution layer (kernel k, C_in -> C_out, groups g, batch N)::

    forward   2 * N * prod(out spatial) * C_out * C_in/g * prod(k)   (transposed: in spatial)
    backward  grad_weight = forward, plus grad_input = forward unless the layer's input is the data

Shapes come from one pass over the model on the ``meta`` device (no memory, no arithmetic), so
any input size and batch can be counted in milliseconds.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
LEVEL_PATTERN = re.compile(r"(?:^|\.)(enc|dec|up|pool|cat)\.(\d+)(?:\.|$)")


@dataclass
class Layer:
    """One leaf operation of a model, in the order the forward pass runs it."""

    index: int
    name: str
    kind: str
    level: int
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    input_requires_grad: bool
    params: int
    flops_fwd: int = 0
    flops_bwd: int = 0
    activation_bytes: int = 0
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = asdict(self)
        out["in_shape"], out["out_shape"] = list(self.in_shape), list(self.out_shape)
        return out


def layer_level(name: str) -> int:
    """The U-Net level a layer belongs to, from its module path (``enc.2.conv1`` -> 2; stem/out -> 0)."""
    match = LEVEL_PATTERN.search(name)
    return int(match.group(2)) if match else 0


def leaf_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules with no children, except ``Identity`` (a switched-off norm is not a layer)."""
    return {name: m for name, m in model.named_modules()
            if not list(m.children()) and not isinstance(m, nn.Identity) and name}


def conv_flops(module: nn.Module, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> int:
    """Forward FLOPs of one convolution (2 x multiply-adds, no bias), as FlopCounterMode counts."""
    weight = module.weight
    if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
        # weight (C_in, C_out/g, k...): every input voxel scatters into C_out/g x prod(k) outputs.
        return 2 * in_shape[0] * math.prod(in_shape[2:]) * weight.numel()
    return 2 * out_shape[0] * math.prod(out_shape[2:]) * weight.numel()


def trace_layers(model: nn.Module, input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32,
                 device: str = "meta", backward: bool = True) -> list[Layer]:
    """Every leaf layer of ``model`` for an input of ``input_shape`` (N, C, Z, Y, X), with its cost.

    Runs a copy of the model on the meta device (no memory, any size; the first call in a process
    costs ~2.5 s while torch sets up its meta kernels) or, for small inputs, on ``device="cpu"``
    with zeros (milliseconds); the model itself is not touched. ``backward=False`` traces without
    autograd (no backward FLOPs; needed for inference-only models whose layers write in place).
    """
    meta = copy.deepcopy(model).to(device)
    leaves = leaf_modules(meta)
    layers: list[Layer] = []
    element = torch.empty((), dtype=dtype).element_size()

    def hook(name: str):
        def record(module, inputs, output):
            first = inputs[0] if inputs else None
            in_shape = tuple(first.shape) if isinstance(first, torch.Tensor) else ()
            out_shape = tuple(output.shape)
            requires_grad = any(isinstance(t, torch.Tensor) and t.requires_grad for t in inputs)
            params = sum(p.numel() for p in module.parameters(recurse=False))
            layer = Layer(len(layers), name, type(module).__name__, layer_level(name), in_shape, out_shape,
                          requires_grad, params, activation_bytes=math.prod(out_shape) * element)
            if isinstance(module, CONV_TYPES):
                layer.flops_fwd = conv_flops(module, in_shape, out_shape)
                weight_grad = module.weight.requires_grad
                layer.flops_bwd = layer.flops_fwd * (int(weight_grad) + int(requires_grad))
            elif isinstance(module, nn.Linear):
                layer.flops_fwd = 2 * math.prod(out_shape[:-1]) * module.weight.numel()
                layer.flops_bwd = layer.flops_fwd * (int(module.weight.requires_grad) + int(requires_grad))
            layers.append(layer)
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in leaves.items()]
    try:
        meta.train(model.training)
        with torch.enable_grad() if backward else torch.no_grad():
            meta(torch.zeros(input_shape, device=device, dtype=dtype) if device != "meta"
                 else torch.empty(input_shape, device="meta", dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return layers


@dataclass
class Totals:
    flops_fwd: int
    flops_bwd: int
    params: int
    activation_bytes: int

    @property
    def flops_train(self) -> int:
        return self.flops_fwd + self.flops_bwd


def totals(layers: list[Layer]) -> Totals:
    return Totals(sum(l.flops_fwd for l in layers), sum(l.flops_bwd for l in layers),
                  sum(l.params for l in layers), sum(l.activation_bytes for l in layers))


def per_level_shares(layers: list[Layer]) -> dict[int, float]:
    """Share (0..1) of forward+backward FLOPs per U-Net level."""
    total = sum(l.flops_fwd + l.flops_bwd for l in layers) or 1
    shares: dict[int, float] = {}
    for layer in layers:
        shares[layer.level] = shares.get(layer.level, 0.0) + (layer.flops_fwd + layer.flops_bwd) / total
    return dict(sorted(shares.items()))


def counted_flops(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(forward, backward) FLOPs of the whole model as ``FlopCounterMode`` counts them (meta device)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = copy.deepcopy(model).to("meta")
    meta.train(model.training)
    x = torch.empty(input_shape, device="meta")
    with FlopCounterMode(display=False) as forward:
        y = meta(x)
    with FlopCounterMode(display=False) as backward:
        y.sum().backward()
    return forward.get_total_flops(), backward.get_total_flops()


def crosscheck_layers(model: nn.Module, layers: list[Layer]) -> list[tuple[str, int, int, int, int]]:
    """Per conv layer: (name, analytic fwd, counted fwd, analytic bwd, counted bwd).

    Each layer is run alone on the meta device under ``FlopCounterMode`` with the input shape
    and requires-grad flag it has inside the model, so backward FLOPs are attributed exactly.
    """
    from torch.utils.flop_counter import FlopCounterMode

    modules = dict(model.named_modules())
    rows = []
    for layer in layers:
        module = modules[layer.name]
        if not isinstance(module, CONV_TYPES + (nn.Linear,)):
            continue
        alone = copy.deepcopy(module).to("meta")
        x = torch.empty(layer.in_shape, device="meta", requires_grad=layer.input_requires_grad)
        with FlopCounterMode(display=False) as forward:
            y = alone(x)
        with FlopCounterMode(display=False) as backward:
            y.sum().backward()
        rows.append((layer.name, layer.flops_fwd, forward.get_total_flops(),
                     layer.flops_bwd, backward.get_total_flops()))
    return rows
