"""Plain U-Nets: 3D (``unet3d``) and per-section 2D (``unet2d``), with concatenated skips.

    input ─ enc0 (conv-norm-act x2) ─────────── cat ─ dec0 ─ head (1x1x1) ─ heads
             └ pool0 ─ enc1 ───── cat ─ dec1 ─┘ up0
                        └ pool1 ... ┘ up1

``unet2d`` takes the same (N, C, Z, Y, X) input as the 3D models and runs every z section on its
own with 2D convolutions (z is folded into the batch), so predictions never mix sections; its
kernels and pools are written as z,y,x triples with z = 1.
"""

from __future__ import annotations

import torch
from torch import nn

from emtools.models import layers
from emtools.models.spec import ModelSpec, Triple


class DoubleConv(nn.Module):
    """(conv-norm-act) twice: the block of Ronneberger et al. / Cicek et al."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: Triple, spec: ModelSpec):
        super().__init__()
        bias = spec.norm == "none"
        self.conv1 = layers.conv(dims, cin, cout, kernel, bias=bias)
        self.norm1 = layers.norm(spec.norm, dims, cout, spec.norm_groups)
        self.act1 = layers.activation(spec.activation)
        self.conv2 = layers.conv(dims, cout, cout, kernel, bias=bias)
        self.norm2 = layers.norm(spec.norm, dims, cout, spec.norm_groups)
        self.act2 = layers.activation(spec.activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act2(self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x))))))


class UNet(nn.Module):
    """A U-Net on (N, C, Z, Y, X); ``spec.arch`` picks 3D or per-section 2D convolutions."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.dims = 2 if spec.arch == "unet2d" else 3
        widths = spec.widths
        self.enc = nn.ModuleList()
        self.pool = nn.ModuleList()
        self.up = nn.ModuleList()
        self.cat = nn.ModuleList()
        self.dec = nn.ModuleList()
        cin = spec.in_channels
        for level, width in enumerate(widths):
            self.enc.append(DoubleConv(self.dims, cin, width, spec.kernels[level], spec))
            cin = width
        for level in range(spec.depth - 1):
            self.pool.append(layers.pool(self.dims, spec.pools[level]))
            self.up.append(layers.upsampler(spec.upsample, self.dims, widths[level + 1], widths[level], spec.pools[level]))
            self.cat.append(layers.Concat())
            self.dec.append(DoubleConv(self.dims, 2 * widths[level], widths[level], spec.kernels[level], spec))
        self.head = layers.conv(self.dims, widths[0], spec.out_channels, (1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, z = x.shape[0], x.shape[1], x.shape[2]
        if self.dims == 2:
            # (N, C, Z, Y, X) -> (N*Z, C, Y, X): each section is one 2D image.
            x = x.transpose(1, 2).reshape(batch * z, x.shape[1], x.shape[3], x.shape[4])
        x = layers.u_path(x, self.enc, self.pool,
                          lambda level, coarse, skip: self.dec[level](self.cat[level](self.up[level](coarse), skip)))
        x = self.head(x)
        if self.dims == 2:
            x = x.reshape(batch, z, x.shape[1], x.shape[2], x.shape[3]).transpose(1, 2)
        return x
