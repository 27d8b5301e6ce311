"""Small building blocks shared by the models: one leaf module per operation.

Every operation that costs time (conv, norm, activation, pooling, upsampling, the skip sums) is
its own leaf module, so a profiler can hook each one and report it as a layer.
"""

from __future__ import annotations

import torch
from torch import nn

from emtools.models.spec import Triple


class Add(nn.Module):
    """``a + b`` as a module, so the residual and skip sums show up as layers in a profile."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a + b


class Concat(nn.Module):
    """Channel concatenation (plain U-Net skips) as a module."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.cat([a, b], dim=1)


def same_padding(kernel: Triple) -> Triple:
    return tuple(k // 2 for k in kernel)  # type: ignore[return-value]


def conv(dims: int, cin: int, cout: int, kernel: Triple, stride: Triple = (1, 1, 1), bias: bool = True) -> nn.Module:
    """A 'same'-padded convolution; for ``dims == 2`` the z entry of the triples (always 1) is dropped."""
    if dims == 2:
        return nn.Conv2d(cin, cout, kernel[1:], stride[1:], same_padding(kernel)[1:], bias=bias)
    return nn.Conv3d(cin, cout, kernel, stride, same_padding(kernel), bias=bias)


def norm(kind: str, dims: int, channels: int, groups: int = 8) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        # The largest group count <= groups that divides the channels (GroupNorm needs a divisor).
        g = max(d for d in range(1, min(groups, channels) + 1) if channels % d == 0)
        return nn.GroupNorm(g, channels)
    return nn.Identity()


def activation(kind: str) -> nn.Module:
    # Never in place: full backward hooks (the profiler) and autograd both need the inputs intact.
    if kind == "relu":
        return nn.ReLU()
    if kind == "leaky":
        return nn.LeakyReLU(0.1)
    return nn.ELU()


def pool(dims: int, factor: Triple) -> nn.Module:
    return nn.MaxPool2d(factor[1:]) if dims == 2 else nn.MaxPool3d(factor)


def upsampler(mode: str, dims: int, cin: int, cout: int, factor: Triple) -> nn.Module:
    """Coarse -> fine by ``factor``, ``cin`` -> ``cout`` channels.

    ``transposed``: one transposed conv with kernel = stride = factor (each fine voxel sees one
    coarse voxel). ``bilinear``/``nearest``: interpolation then a 1x1x1 conv to change channels.
    """
    if mode == "transposed":
        if dims == 2:
            return nn.ConvTranspose2d(cin, cout, factor[1:], factor[1:])
        return nn.ConvTranspose3d(cin, cout, factor, factor)
    interp = "nearest" if mode == "nearest" else ("bilinear" if dims == 2 else "trilinear")
    scale = tuple(float(f) for f in (factor[1:] if dims == 2 else factor))
    kwargs = {} if interp == "nearest" else {"align_corners": False}
    one = (1, 1, 1)
    return nn.Sequential(nn.Upsample(scale_factor=scale, mode=interp, **kwargs), conv(dims, cin, cout, one))


def init_weights(model: nn.Module, seed: int | None = None) -> None:
    """He (MSRA) init for convolutions, zero biases; deterministic when ``seed`` is given."""
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)):
            if isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
                # Each output voxel sees cin * prod(kernel / stride) inputs.
                fan_in = module.weight.shape[0] * module.weight[0, 0].numel()
                for s in module.stride:
                    fan_in /= s
            else:
                fan_in = module.weight[0].numel()
            std = (2.0 / max(fan_in, 1)) ** 0.5
            with torch.no_grad():
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()


def u_path(x: torch.Tensor, enc: nn.ModuleList, pool: nn.ModuleList, decode) -> torch.Tensor:
    """The U of every model here: encoder levels going down through the pools, then back up.

    ``decode(level, coarse, skip)`` joins the coarser result with that level's encoder output.
    """
    skips = []
    for level in range(len(enc) - 1):
        x = enc[level](x)
        skips.append(x)
        x = pool[level](x)
    x = enc[-1](x)
    for level in range(len(enc) - 2, -1, -1):
        x = decode(level, x, skips[level])
    return x

