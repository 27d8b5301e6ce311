"""Winograd F(2x2x2, 3x3x3) convolution for the wide 3D layers, forward and backward (CPU, fp32).

A direct 3x3x3 convolution spends 27 multiply-adds per input channel per output channel per voxel.
Winograd's minimal filtering (Lavin & Gray 2016, in 3D) computes each 2x2x2 block of outputs from
its 4x4x4 input tile with 64 element-wise products in a transformed domain, so the batched matrix
multiply that does the real work needs 64/8 = 8 instead of 27 multiply-adds: 3.4x fewer FLOPs.
The transforms are additions only and are done here by small numba kernels that read each voxel
once; the products are one ``torch.bmm`` of 64 (tiles x C_in) @ (C_in x C_out) matrices, which runs
near this CPU's GEMM peak when the channel counts are large.

It pays on the coarse, wide levels of a 3D U-Net (192 channels at 9x20x20 voxels, forward +
backward, 2 threads: 130-150 ms oneDNN vs 74-85 ms here; at 9x10x10 51 vs 32-35 ms) and loses on
thin, large levels (24 channels at 18x80x80: 3-4x slower), where the transforms cost more than the
products save; at 64 channels it breaks even. ``use_winograd`` therefore switches only 3x3x3,
stride-1, "same"-padded convolutions with at least ``min_channels`` input and output channels.

Training uses the same algorithm three times:

* forward: y = A'[ (G g G') . (B' d B) ] A per tile (transforms along each of the three axes);
* input gradient: the forward algorithm on the output gradient with the flipped, channel-swapped
  kernel, whose transform is the forward one with frequencies 0 and 3 swapped on every axis;
* weight gradient: the products' adjoint, a bmm of the saved transformed input tiles with the
  output gradient taken back through A', then G' on the 4x4x4 frequency axes.

The numba kernels compile on first use (about half a minute, once per array layout) and are
cached on disk after that. Numerically it differs from a direct convolution by a few float32 ulps (relative error ~3e-6 on
unit-scale data, tested). Like the oneDNN path it is an execution option, not part of the model
spec: a checkpoint trained with it loads and runs without it.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from emtools.models.onednn import OneDNNConv3d
from emtools.models.onednn import eligible as stride1_same

MIN_CHANNELS = 128  # below this the transforms cost more than the 3.4x fewer products save (measured)
MIN_TILES = 100  # 2x2x2 output blocks per volume; fewer and the products are too small a GEMM to pay

# flipping a 3-tap kernel swaps frequencies 0 and 3 of its transform (rows of G); on three axes:
_FLIP = torch.tensor([((3 - i if i in (0, 3) else i) * 16 + (3 - j if j in (0, 3) else j) * 4
                       + (3 - k if k in (0, 3) else k)) for i in range(4) for j in range(4) for k in range(4)])


@njit(parallel=True, cache=True, nogil=True)
def _input_transform(x, out, tiles_zyx):
    """x (N, D, H, W, C) -> out (64, N*tiles, C): B' on every 4x4x4 tile (stride 2, zero padding 1).

    B' rows are (d0 - d2, d1 + d2, d2 - d1, d1 - d3); applied along x, then y, then z, each stage
    into its own buffer so that the loops over channels vectorise.
    """
    n_vol, depth, height, width, channels = x.shape
    tz, ty, tx = tiles_zyx
    per_vol = tz * ty * tx
    for job in prange(n_vol * per_vol):
        n, t = job // per_vol, job % per_vol
        z0, y0, x0 = 2 * (t // (ty * tx)) - 1, 2 * ((t // tx) % ty) - 1, 2 * (t % tx) - 1
        d = np.zeros((64, channels), dtype=np.float32)
        for i in range(4):
            z = z0 + i
            if z < 0 or z >= depth:
                continue
            for j in range(4):
                y = y0 + j
                if y < 0 or y >= height:
                    continue
                for k in range(4):
                    xx = x0 + k
                    if 0 <= xx < width:
                        d[i * 16 + j * 4 + k, :] = x[n, z, y, xx, :]
        e = np.empty((64, channels), dtype=np.float32)
        for r in range(16):  # along x: rows 4r .. 4r+3
            for ch in range(channels):
                d0, d1, d2, d3 = d[4 * r, ch], d[4 * r + 1, ch], d[4 * r + 2, ch], d[4 * r + 3, ch]
                e[4 * r, ch] = d0 - d2
                e[4 * r + 1, ch] = d1 + d2
                e[4 * r + 2, ch] = d2 - d1
                e[4 * r + 3, ch] = d1 - d3
        for i in range(4):  # along y: rows 16i + 4j + k
            for k in range(4):
                base = i * 16 + k
                for ch in range(channels):
                    d0, d1, d2, d3 = e[base, ch], e[base + 4, ch], e[base + 8, ch], e[base + 12, ch]
                    d[base, ch] = d0 - d2
                    d[base + 4, ch] = d1 + d2
                    d[base + 8, ch] = d2 - d1
                    d[base + 12, ch] = d1 - d3
        for r in range(16):  # along z: rows 16i + r, straight to the output
            for ch in range(channels):
                d0, d1, d2, d3 = d[r, ch], d[16 + r, ch], d[32 + r, ch], d[48 + r, ch]
                out[r, job, ch] = d0 - d2
                out[16 + r, job, ch] = d1 + d2
                out[32 + r, job, ch] = d2 - d1
                out[48 + r, job, ch] = d1 - d3


@njit(parallel=True, cache=True, nogil=True)
def _weight_transform(w, out):
    """w (C_out, C_in, 3, 3, 3) -> out (64, C_in, C_out): G g G' per kernel, G rows
    (g0, (g0 + g1 + g2) / 2, (g0 - g1 + g2) / 2, g2) along each axis."""
    c_out, c_in = w.shape[0], w.shape[1]
    for ci in prange(c_in):
        a = np.empty((3, 3, 4), dtype=np.float32)
        b = np.empty((3, 4, 4), dtype=np.float32)
        for co in range(c_out):
            for i in range(3):
                for j in range(3):
                    g0, g1, g2 = w[co, ci, i, j, 0], w[co, ci, i, j, 1], w[co, ci, i, j, 2]
                    a[i, j, 0], a[i, j, 1], a[i, j, 2], a[i, j, 3] = g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2
            for i in range(3):
                for k in range(4):
                    g0, g1, g2 = a[i, 0, k], a[i, 1, k], a[i, 2, k]
                    b[i, 0, k], b[i, 1, k], b[i, 2, k], b[i, 3, k] = g0, 0.5 * (g0 + g1 + g2), 0.5 * (g0 - g1 + g2), g2
            for j in range(4):
                for k in range(4):
                    g0, g1, g2 = b[0, j, k], b[1, j, k], b[2, j, k]
                    f = j * 4 + k
                    out[f, ci, co] = g0
                    out[16 + f, ci, co] = 0.5 * (g0 + g1 + g2)
                    out[32 + f, ci, co] = 0.5 * (g0 - g1 + g2)
                    out[48 + f, ci, co] = g2


@njit(parallel=True, cache=True, nogil=True)
def _weight_adjoint(gu, out):
    """gu (64, C_in, C_out) -> out (C_out, C_in, 3, 3, 3): the adjoint of _weight_transform (G' per axis)."""
    c_in, c_out = gu.shape[1], gu.shape[2]
    for ci in prange(c_in):
        a = np.empty((3, 4, 4), dtype=np.float32)
        b = np.empty((3, 3, 4), dtype=np.float32)
        for co in range(c_out):
            for f in range(16):
                u0, u1, u2, u3 = gu[f, ci, co], gu[16 + f, ci, co], gu[32 + f, ci, co], gu[48 + f, ci, co]
                j, k = f // 4, f % 4
                a[0, j, k] = u0 + 0.5 * (u1 + u2)
                a[1, j, k] = 0.5 * (u1 - u2)
                a[2, j, k] = 0.5 * (u1 + u2) + u3
            for i in range(3):
                for k in range(4):
                    u0, u1, u2, u3 = a[i, 0, k], a[i, 1, k], a[i, 2, k], a[i, 3, k]
                    b[i, 0, k] = u0 + 0.5 * (u1 + u2)
                    b[i, 1, k] = 0.5 * (u1 - u2)
                    b[i, 2, k] = 0.5 * (u1 + u2) + u3
            for i in range(3):
                for j in range(3):
                    u0, u1, u2, u3 = b[i, j, 0], b[i, j, 1], b[i, j, 2], b[i, j, 3]
                    out[co, ci, i, j, 0] = u0 + 0.5 * (u1 + u2)
                    out[co, ci, i, j, 1] = 0.5 * (u1 - u2)
                    out[co, ci, i, j, 2] = 0.5 * (u1 + u2) + u3


@njit(parallel=True, cache=True, nogil=True)
def _output_transform(m, bias, y):
    """m (64, N*tiles, C) -> y (N, D, H, W, C): A' on every tile, cropped at the far borders, + bias."""
    n_vol, depth, height, width, channels = y.shape
    tz, ty, tx = (depth + 1) // 2, (height + 1) // 2, (width + 1) // 2
    per_vol = tz * ty * tx
    for job in prange(n_vol * per_vol):
        n, t = job // per_vol, job % per_vol
        z0, y0, x0 = 2 * (t // (ty * tx)), 2 * ((t // tx) % ty), 2 * (t % tx)
        a = np.empty((32, channels), dtype=np.float32)  # after x: (4 z, 4 y, 2 x)
        for r in range(16):
            for ch in range(channels):
                m1, m2 = m[4 * r + 1, job, ch], m[4 * r + 2, job, ch]
                a[2 * r, ch] = m[4 * r, job, ch] + m1 + m2
                a[2 * r + 1, ch] = m1 - m2 - m[4 * r + 3, job, ch]
        b = np.empty((16, channels), dtype=np.float32)  # after y: (4 z, 2 y, 2 x)
        for i in range(4):
            for k in range(2):
                for ch in range(channels):
                    m1, m2 = a[i * 8 + 2 + k, ch], a[i * 8 + 4 + k, ch]
                    b[i * 4 + k, ch] = a[i * 8 + k, ch] + m1 + m2
                    b[i * 4 + 2 + k, ch] = m1 - m2 - a[i * 8 + 6 + k, ch]
        for r in range(4):  # after z: (2 z, 2 y, 2 x), written straight to y
            jj, kk = r // 2, r % 2
            if y0 + jj >= height or x0 + kk >= width:
                continue
            for ii in range(2):
                if z0 + ii >= depth:
                    continue
                for ch in range(channels):
                    m1, m2 = b[4 + r, ch], b[8 + r, ch]
                    value = b[r, ch] + m1 + m2 if ii == 0 else m1 - m2 - b[12 + r, ch]
                    y[n, z0 + ii, y0 + jj, x0 + kk, ch] = value + bias[ch]


@njit(parallel=True, cache=True, nogil=True)
def _output_adjoint(gy, out):
    """gy (N, D, H, W, C) -> out (64, N*tiles, C): the adjoint of A' on every tile (for dL/dM)."""
    n_vol, depth, height, width, channels = gy.shape
    tz, ty, tx = (depth + 1) // 2, (height + 1) // 2, (width + 1) // 2
    per_vol = tz * ty * tx
    for job in prange(n_vol * per_vol):
        n, t = job // per_vol, job % per_vol
        z0, y0, x0 = 2 * (t // (ty * tx)), 2 * ((t // tx) % ty), 2 * (t % tx)
        g = np.zeros((8, channels), dtype=np.float32)
        for ii in range(2):
            for jj in range(2):
                for kk in range(2):
                    if z0 + ii < depth and y0 + jj < height and x0 + kk < width:
                        g[ii * 4 + jj * 2 + kk, :] = gy[n, z0 + ii, y0 + jj, x0 + kk, :]
        b = np.empty((16, channels), dtype=np.float32)  # z: 2 -> 4 (rows 0..3 of A, adjoint of A')
        for r in range(4):
            for ch in range(channels):
                g0, g1 = g[r, ch], g[4 + r, ch]
                b[r, ch] = g0
                b[4 + r, ch] = g0 + g1
                b[8 + r, ch] = g0 - g1
                b[12 + r, ch] = -g1
        a = np.empty((32, channels), dtype=np.float32)  # y: 2 -> 4, layout (4 z, 4 y, 2 x)
        for i in range(4):
            for k in range(2):
                for ch in range(channels):
                    g0, g1 = b[i * 4 + k, ch], b[i * 4 + 2 + k, ch]
                    a[i * 8 + k, ch] = g0
                    a[i * 8 + 2 + k, ch] = g0 + g1
                    a[i * 8 + 4 + k, ch] = g0 - g1
                    a[i * 8 + 6 + k, ch] = -g1
        for r in range(16):  # x: 2 -> 4, written to out
            for ch in range(channels):
                g0, g1 = a[2 * r, ch], a[2 * r + 1, ch]
                out[4 * r, job, ch] = g0
                out[4 * r + 1, job, ch] = g0 + g1
                out[4 * r + 2, job, ch] = g0 - g1
                out[4 * r + 3, job, ch] = -g1


def _tiles(shape_zyx) -> tuple[int, int, int]:
    return tuple((s + 1) // 2 for s in shape_zyx)


def _last(x: torch.Tensor) -> np.ndarray:
    """(N, C, D, H, W) tensor as an (N, D, H, W, C) C-contiguous numpy view (copy only if needed)."""
    return x.detach().contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1).numpy()


def _transform_input(x: torch.Tensor) -> torch.Tensor:
    tiles = _tiles(x.shape[2:])
    out = torch.empty((64, x.shape[0] * tiles[0] * tiles[1] * tiles[2], x.shape[1]), dtype=torch.float32)
    _input_transform(_last(x), out.numpy(), np.array(tiles, dtype=np.int64))
    return out


def _transform_output(m: torch.Tensor, bias: torch.Tensor | None, shape: torch.Size) -> torch.Tensor:
    n, c, depth, height, width = shape
    y = torch.empty((n, c, depth, height, width), dtype=torch.float32, memory_format=torch.channels_last_3d)
    bias_np = (bias.detach().contiguous().numpy() if bias is not None else np.zeros(c, dtype=np.float32))
    _output_transform(m.numpy(), bias_np, y.permute(0, 2, 3, 4, 1).numpy())
    return y


def _transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """(C_out, C_in, 3, 3, 3) -> U (64, C_in, C_out)."""
    out = torch.empty((64, weight.shape[1], weight.shape[0]), dtype=torch.float32)
    _weight_transform(weight.detach().numpy(), out.numpy())
    return out


class _WinogradConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        tiles_in = _transform_input(x)  # (64, T, C_in)
        u = _transform_weight(weight)  # (64, C_in, C_out)
        y = _transform_output(torch.bmm(tiles_in, u), bias, (x.shape[0], weight.shape[0], *x.shape[2:]))
        ctx.save_for_backward(tiles_in, u, weight)
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        ctx.x_channels_last = x.is_contiguous(memory_format=torch.channels_last_3d)
        return y if ctx.x_channels_last else y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        tiles_in, u, weight = ctx.saved_tensors
        grad = grad.detach().float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            u_adjoint = u.index_select(0, _FLIP).transpose(1, 2)  # flipped kernel, C_in <-> C_out
            grad_x = _transform_output(torch.bmm(_transform_input(grad), u_adjoint), None, ctx.x_shape)
            if not ctx.x_channels_last:
                grad_x = grad_x.contiguous()
        if ctx.needs_input_grad[1]:
            tiles_g = torch.empty((64, tiles_in.shape[1], grad.shape[1]), dtype=torch.float32)
            _output_adjoint(_last(grad), tiles_g.numpy())
            grad_u = torch.bmm(tiles_in.transpose(1, 2), tiles_g)  # (64, C_in, C_out)
            fmt = torch.channels_last_3d if weight.is_contiguous(memory_format=torch.channels_last_3d) else (
                torch.contiguous_format)
            grad_w = torch.empty(weight.shape, dtype=torch.float32, memory_format=fmt)
            _weight_adjoint(grad_u.numpy(), grad_w.numpy())
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b


def eligible(conv: nn.Module, min_channels: int | None = None) -> bool:
    """3x3x3, stride 1, padding 1, and wide enough that the transforms pay (see module docstring)."""
    min_channels = MIN_CHANNELS if min_channels is None else min_channels
    return (stride1_same(conv) and tuple(conv.kernel_size) == (3, 3, 3)
            and min(conv.in_channels, conv.out_channels) >= min_channels)


class WinogradConv3d(OneDNNConv3d):
    """An ``nn.Conv3d`` (3x3x3, same padding) computed by Winograd F(2,3) on CPU fp32."""

    def _conv_forward(self, x, weight, bias):
        tiles = np.prod(_tiles(x.shape[2:]))
        if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or tiles < MIN_TILES):
            return super()._conv_forward(x, weight, bias)  # oneDNN on CPU fp32, PyTorch's choice elsewhere
        if torch.is_grad_enabled():
            return _WinogradConv3d.apply(x, weight, bias)
        # inference: nothing to save for a backward pass, and the weight's transform is kept until
        # the weight changes (its version counter moves on every in-place update, load_state_dict too)
        key = (weight.data_ptr(), weight._version)
        if getattr(self, "_winograd_key", None) != key:
            self._winograd_u, self._winograd_key = _transform_weight(weight), key
        y = _transform_output(torch.bmm(_transform_input(x), self._winograd_u), bias,
                              (x.shape[0], weight.shape[0], *x.shape[2:]))
        return y if x.is_contiguous(memory_format=torch.channels_last_3d) else y.contiguous()


def use_winograd(model: nn.Module, min_channels: int | None = None) -> int:
    """Switch every eligible 3D convolution of ``model`` to :class:`WinogradConv3d`; returns how many.

    Combine with :func:`emtools.models.onednn.use_onednn` for the convolutions this leaves alone.
    """
    switched = 0
    for module in model.modules():
        if type(module) in (nn.Conv3d, OneDNNConv3d) and eligible(module, min_channels):
            module.__class__ = WinogradConv3d
            switched += 1
    return switched

