"""The residual symmetric U-Net of Lee et al. (2017) and its FLOP-balanced efficient variant.

Lee, Zung, Li, Jain, Seung, "Superhuman accuracy on the SNEMI3D connectomics challenge" (2017):
additive skips instead of concatenation, one residual module per level (an anisotropic entry conv
then two convs with a skip around them), (1,2,2) pooling at the upper levels.

    input ─ embed_in (1x5x5, stride stride_in) ─ enc0 ───────────────── add ─ dec0 ─ out ─ heads
                                                  └ pool0 ─ enc1 ─ add ─ dec1 ┘ up0
                                                            └ pool1 ...  ┘ up1

Residual module (Lee et al. 2017)::

    x ─ conv1(entry kernel) ─ norm ─ act ─┬─ conv2 ─ norm ─ act ─ conv3 ─ add ─ norm ─ act
                                          └──────────────────────────────┘

The efficient variant switches on, each separately: a strided entry conv (``stride_in=1x2x2``),
a transposed (fractionally strided) output conv (``transposed_out=true``) and balanced widths
(``widths=24,64,192,192,192``); see :mod:`emtools.models.spec` for the presets.
"""

from __future__ import annotations

import torch
from torch import nn

from emtools.models import layers
from emtools.models.spec import ModelSpec, Triple, transposed_padding


class ResidualModule(nn.Module):
    """conv-norm-act, then two convs with a residual sum around them (one per U-Net level)."""

    def __init__(self, cin: int, cout: int, entry_kernel: Triple, kernel: Triple, spec: ModelSpec, residual: bool):
        super().__init__()
        bias = spec.norm == "none"
        self.residual = residual
        self.conv1 = layers.conv(3, cin, cout, entry_kernel, bias=bias)
        self.norm1 = layers.norm(spec.norm, 3, cout, spec.norm_groups)
        self.act1 = layers.activation(spec.activation)
        self.conv2 = layers.conv(3, cout, cout, kernel, bias=bias)
        self.norm2 = layers.norm(spec.norm, 3, cout, spec.norm_groups)
        self.act2 = layers.activation(spec.activation)
        self.conv3 = layers.conv(3, cout, cout, kernel, bias=bias)
        self.add = layers.Add()
        self.norm3 = layers.norm(spec.norm, 3, cout, spec.norm_groups)
        self.act3 = layers.activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.norm1(self.conv1(x)))
        skip = x
        x = self.act2(self.norm2(self.conv2(x)))
        x = self.conv3(x)
        if self.residual:
            x = self.add(x, skip)
        return self.act3(self.norm3(x))


class UpJoin(nn.Module):
    """Upsample the coarse level, add the skip from the encoder, then norm and activation."""

    def __init__(self, cin: int, cout: int, factor: Triple, spec: ModelSpec):
        super().__init__()
        self.up = layers.upsampler(spec.upsample, 3, cin, cout, factor)
        self.add = layers.Add()
        self.norm = layers.norm(spec.norm, 3, cout, spec.norm_groups)
        self.act = layers.activation(spec.activation)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.add(self.up(x), skip)))


class EmbedIn(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.conv = nn.Conv3d(spec.in_channels, spec.widths[0], spec.embed_kernel, spec.stride_in,
                              layers.same_padding(spec.embed_kernel))
        self.act = layers.activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def output_layer(spec: ModelSpec) -> nn.Module:
    """The last conv: straight to the heads' channels, at full resolution.

    With a strided entry conv the network runs at 1/stride_in resolution; the output either uses a
    transposed conv with that stride (``transposed_out``) or upsamples first and convolves at full
    resolution (the costlier way, kept so that each step of the efficiency table can be measured).
    """
    cin, cout, kernel, stride = spec.widths[0], spec.out_channels, spec.embed_kernel, spec.stride_in
    pad = layers.same_padding(kernel)
    if spec.stride_in == (1, 1, 1):
        return nn.Conv3d(cin, cout, kernel, 1, pad)
    if spec.transposed_out:
        kernel = spec.transposed_kernel
        pad, extra = transposed_padding(kernel, stride)
        return nn.ConvTranspose3d(cin, cout, kernel, stride, pad, output_padding=extra)
    mode = "nearest" if spec.upsample == "nearest" else "trilinear"
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    return nn.Sequential(nn.Upsample(scale_factor=tuple(float(s) for s in stride), mode=mode, **kwargs),
                         nn.Conv3d(cin, cout, kernel, 1, pad))


class RSUNet(nn.Module):
    """Residual symmetric 3D U-Net; input (N, C, Z, Y, X), output (N, sum of head channels, Z, Y, X)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        widths = spec.widths
        self.embed_in = EmbedIn(spec)
        self.enc = nn.ModuleList()
        self.pool = nn.ModuleList()
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = widths[0]
        for level, width in enumerate(widths):
            self.enc.append(ResidualModule(cin, width, spec.entry_kernels[level], spec.kernels[level], spec, spec.residual))
            cin = width
        for level in range(spec.depth - 1):
            self.pool.append(layers.pool(3, spec.pools[level]))
            self.up.append(UpJoin(widths[level + 1], widths[level], spec.pools[level], spec))
            self.dec.append(ResidualModule(widths[level], widths[level], spec.entry_kernels[level],
                                           spec.kernels[level], spec, spec.residual))
        self.out = output_layer(spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = layers.u_path(self.embed_in(x), self.enc, self.pool,
                          lambda level, coarse, skip: self.dec[level](self.up[level](coarse, skip)))
        return self.out(x)
