"""Winograd convolution for the wide 3D layers, forward and backward (CPU, fp32).

A direct 3x3x3 convolution spends 27 multiply-adds per input channel per output channel per voxel.
Winograd's minimal filtering (Lavin & Gray 2016) computes a block of m outputs along an axis from
m + 2 inputs with m + 2 element-wise products in a transformed domain; applied along z, y and x
(here F(2,3) in z and F(4,3) in y and x: 4x6x6 input tiles for 2x4x4 output blocks), the batched
matrix multiply that does the real work needs 144/32 = 4.5 instead of 27 multiply-adds per output
(F(2,3) on all three axes: 8). The transforms (B' on the input tiles, G on the kernels, A' on the
products) are small numba kernels that read each voxel once and vectorise over channels; the
products are one ``torch.bmm`` of (tiles x C_in) @ (C_in x C_out) matrices per frequency.
:func:`plan` picks F(4,3) or F(2,3) per axis from the layer's size.

It pays on the coarse, wide levels of a 3D U-Net (192 channels at 9x20x20 and 9x10x10 voxels)
and loses on thin, large levels (24 channels at 18x80x80), where the transforms cost more than the
products save. ``use_winograd`` therefore switches only 3x3x3, stride-1, "same"-padded
convolutions with at least ``MIN_CHANNELS`` input and output channels, and a switched layer runs
volumes under ``MIN_VOXELS`` on oneDNN.

Training uses the same algorithm three times:

* forward: y = A'[ (G g G') . (B' d B) ] A per tile (transforms along each of the three axes);
* input gradient: the forward algorithm on the output gradient with the flipped, channel-swapped
  kernel (exact for stride 1 and padding 1);
* weight gradient: the products' adjoint, a bmm of the saved transformed input tiles with the
  output gradient taken back through A', then G' on the frequency axes.

The numba kernels compile on first use (about a minute, once per array layout) and are cached on
disk after that. Numerically it differs from a direct convolution by float32 rounding: relative
error ~3e-6 with F(2,3), ~1e-5 with F(4,3) in two axes, on unit-scale data (tested). Like the
oneDNN path it is an execution option, not part of the model spec: a checkpoint trained with it
loads and runs without it.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from emtools.models.onednn import OneDNNConv3d, use_onednn
from emtools.models.onednn import eligible as stride1_same

MIN_CHANNELS = 128  # below this the transforms cost more than the fewer products save (measured)
MIN_VOXELS = 800  # output voxels per volume; fewer and the products are too small a GEMM to pay

# Lavin & Gray's F(2,3) and F(4,3): B' (input), G (kernel), A' (output) for one axis
_F2 = {"BT": [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]],
       "G": [[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]],
       "AT": [[1, 1, 1, 0], [0, 1, -1, -1]]}
_F4 = {"BT": [[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
              [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
       "G": [[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
             [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
       "AT": [[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]]}
_MATRICES = {m: {k: np.array(v, dtype=np.float32) for k, v in f.items()} for m, f in ((2, _F2), (4, _F4))}
for _mats in _MATRICES.values():  # the adjoints' matrices, contiguous for numba
    _mats["A"], _mats["GT"] = np.ascontiguousarray(_mats["AT"].T), np.ascontiguousarray(_mats["G"].T)


def plan(shape_zyx) -> tuple[int, int, int]:
    """Outputs per tile along z, y, x: F(2,3) in z (few, thick sections: F(4,3) would pad 9 to 12),
    F(4,3) in y and x wherever its 1.5 products per output beat F(2,3)'s 2 after padding to whole
    tiles (F(4,3) is also ~4x less exact: ~1e-5 relative, still far below training noise)."""
    def best(size: int) -> int:
        return 4 if 1.5 * -(-size // 4) * 4 < 2 * -(-size // 2) * 2 else 2
    return 2, best(shape_zyx[1]), best(shape_zyx[2])


def _tiles(shape_zyx, steps) -> tuple[int, int, int]:
    return tuple(-(-s // m) for s, m in zip(shape_zyx, steps))


@njit(cache=True, nogil=True)
def _along(src, mat, axis):
    """``mat`` (p x q) applied along ``axis`` (0, 1 or 2) of ``src`` (q on that axis, channels last):
    a new array with p there. The innermost loop runs over channels, so it vectorises."""
    s0, s1, s2, channels = src.shape
    p, q = mat.shape
    if axis == 0:
        dst = np.zeros((p, s1, s2, channels), dtype=np.float32)
    elif axis == 1:
        dst = np.zeros((s0, p, s2, channels), dtype=np.float32)
    else:
        dst = np.zeros((s0, s1, p, channels), dtype=np.float32)
    for row in range(p):
        for col in range(q):
            c = mat[row, col]
            if c == 0:
                continue
            if axis == 0:
                for j in range(s1):
                    for k in range(s2):
                        for ch in range(channels):
                            dst[row, j, k, ch] += c * src[col, j, k, ch]
            elif axis == 1:
                for i in range(s0):
                    for k in range(s2):
                        for ch in range(channels):
                            dst[i, row, k, ch] += c * src[i, col, k, ch]
            else:
                for i in range(s0):
                    for j in range(s1):
                        for ch in range(channels):
                            dst[i, j, row, ch] += c * src[i, j, col, ch]
    return dst


@njit(cache=True, nogil=True, inline="always")
def _tile(job, tiles_zyx, step_zyx, shift):
    """(volume, z0, y0, x0) of tile ``job``: tiles numbered volume-major, then z, y, x; the origin is
    the tile index times its step, minus ``shift`` (1 for input tiles: the zero padding)."""
    tz, ty, tx = tiles_zyx
    per_vol = tz * ty * tx
    t = job % per_vol
    return (job // per_vol, (t // (ty * tx)) * step_zyx[0] - shift, ((t // tx) % ty) * step_zyx[1] - shift,
            (t % tx) * step_zyx[2] - shift)


@njit(cache=True, nogil=True, inline="always")
def _grid(shape_zyx, step_zyx):
    """Tiles per axis that cover ``shape_zyx`` with blocks of ``step_zyx`` outputs."""
    return ((shape_zyx[0] + step_zyx[0] - 1) // step_zyx[0], (shape_zyx[1] + step_zyx[1] - 1) // step_zyx[1],
            (shape_zyx[2] + step_zyx[2] - 1) // step_zyx[2])


@njit(cache=True, nogil=True)
def _separable(src, mz, my, mx):
    """``mx`` along x, then ``my`` along y, then ``mz`` along z."""
    return _along(_along(_along(src, mx, 2), my, 1), mz, 0)


@njit(parallel=True, cache=True, nogil=True)
def _input_transform(x, out, bz, by, bx, tiles_zyx):
    """x (N, D, H, W, C) -> out (A, N*tiles, C): B' along x, y, z on every tile (stride m, zero
    padding 1)."""
    n_vol, depth, height, width, channels = x.shape
    az, ay, ax = bz.shape[0], by.shape[0], bx.shape[0]
    tiles = (tiles_zyx[0], tiles_zyx[1], tiles_zyx[2])
    for job in prange(n_vol * tiles[0] * tiles[1] * tiles[2]):
        n, z0, y0, x0 = _tile(job, tiles, (az - 2, ay - 2, ax - 2), 1)
        d = np.zeros((az, ay, ax, channels), dtype=np.float32)
        for i in range(az):
            for j in range(ay):
                for k in range(ax):
                    z, y, xx = z0 + i, y0 + j, x0 + k
                    if 0 <= z < depth and 0 <= y < height and 0 <= xx < width:
                        d[i, j, k, :] = x[n, z, y, xx, :]
        v = _separable(d, bz, by, bx).reshape(az * ay * ax, channels)
        for row in range(az * ay * ax):
            out[row, job, :] = v[row]


@njit(parallel=True, cache=True, nogil=True)
def _output_transform(m, bias, y, az_t, ay_t, ax_t):
    """m (A, N*tiles, C) -> y (N, D, H, W, C): A' along x, y, z on every tile, cropped at the far
    borders, + bias (a?_t: the A' matrix of each axis, m outputs x m+2 inputs)."""
    n_vol, depth, height, width, channels = y.shape
    mz, my, mx = az_t.shape[0], ay_t.shape[0], ax_t.shape[0]
    az, ay, ax = az_t.shape[1], ay_t.shape[1], ax_t.shape[1]
    tiles = _grid((depth, height, width), (mz, my, mx))
    for job in prange(n_vol * tiles[0] * tiles[1] * tiles[2]):
        n, z0, y0, x0 = _tile(job, tiles, (mz, my, mx), 0)
        tile = np.empty((az, ay, ax, channels), dtype=np.float32)
        flat = tile.reshape(az * ay * ax, channels)
        for row in range(az * ay * ax):
            flat[row] = m[row, job, :]
        block = _separable(tile, az_t, ay_t, ax_t)
        for o in range(mz):
            for b in range(my):
                for a in range(mx):
                    if z0 + o < depth and y0 + b < height and x0 + a < width:
                        y[n, z0 + o, y0 + b, x0 + a, :] = block[o, b, a] + bias


@njit(parallel=True, cache=True, nogil=True)
def _output_adjoint(gy, out, a_z, a_y, a_x):
    """gy (N, D, H, W, C) -> out (A, N*tiles, C): the adjoint of _output_transform (for dL/dM);
    a_? are the transposed A' matrices (m+2 x m)."""
    n_vol, depth, height, width, channels = gy.shape
    az, ay, ax = a_z.shape[0], a_y.shape[0], a_x.shape[0]
    mz, my, mx = a_z.shape[1], a_y.shape[1], a_x.shape[1]
    tiles = _grid((depth, height, width), (mz, my, mx))
    for job in prange(n_vol * tiles[0] * tiles[1] * tiles[2]):
        n, z0, y0, x0 = _tile(job, tiles, (mz, my, mx), 0)
        g = np.zeros((mz, my, mx, channels), dtype=np.float32)
        for o in range(mz):
            for b in range(my):
                for a in range(mx):
                    if z0 + o < depth and y0 + b < height and x0 + a < width:
                        g[o, b, a, :] = gy[n, z0 + o, y0 + b, x0 + a, :]
        v = _separable(g, a_z, a_y, a_x).reshape(az * ay * ax, channels)
        for row in range(az * ay * ax):
            out[row, job, :] = v[row]


@njit(parallel=True, cache=True, nogil=True)
def _weight_transform(w, out, gz, gy, gx):
    """w (C_in, 3, 3, 3, C_out) -> out (A, C_in, C_out): G g G' along each axis, vectorised over C_out."""
    c_in, c_out = w.shape[0], w.shape[4]
    frequencies = gz.shape[0] * gy.shape[0] * gx.shape[0]
    for ci in prange(c_in):
        u = _separable(np.ascontiguousarray(w[ci]), gz, gy, gx).reshape(frequencies, c_out)
        for row in range(frequencies):
            out[row, ci, :] = u[row]


@njit(parallel=True, cache=True, nogil=True)
def _weight_adjoint(gu, out, g_z, g_y, g_x):
    """gu (A, C_in, C_out) -> out (C_in, 3, 3, 3, C_out): the adjoint of _weight_transform (g_? are
    the transposed G matrices, 3 x m+2)."""
    c_in, c_out = gu.shape[1], gu.shape[2]
    az, ay, ax = g_z.shape[1], g_y.shape[1], g_x.shape[1]
    for ci in prange(c_in):
        tile = np.empty((az, ay, ax, c_out), dtype=np.float32)
        flat = tile.reshape(az * ay * ax, c_out)
        for row in range(az * ay * ax):
            flat[row] = gu[row, ci, :]
        out[ci] = _separable(tile, g_z, g_y, g_x)


def _axes(steps, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(_MATRICES[m][key] for m in steps)


def _last(x: torch.Tensor) -> np.ndarray:
    """(N, C, D, H, W) tensor as an (N, D, H, W, C) C-contiguous numpy view (copy only if needed)."""
    return x.detach().contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1).numpy()


def _frequencies(steps) -> int:
    return int(np.prod([m + 2 for m in steps]))


def _transform_input(x: torch.Tensor, steps) -> torch.Tensor:
    tiles = _tiles(x.shape[2:], steps)
    out = torch.empty((_frequencies(steps), x.shape[0] * int(np.prod(tiles)), x.shape[1]), dtype=torch.float32)
    _input_transform(_last(x), out.numpy(), *_axes(steps, "BT"), np.array(tiles, dtype=np.int64))
    return out


def _transform_output(m: torch.Tensor, bias: torch.Tensor | None, shape, steps) -> torch.Tensor:
    n, c, depth, height, width = shape
    y = torch.empty((n, c, depth, height, width), dtype=torch.float32, memory_format=torch.channels_last_3d)
    bias_np = (bias.detach().float().contiguous().numpy() if bias is not None else np.zeros(c, dtype=np.float32))
    _output_transform(m.numpy(), bias_np, y.permute(0, 2, 3, 4, 1).numpy(), *_axes(steps, "AT"))
    return y


def _transform_weight(weight: torch.Tensor, steps, flipped: bool = False) -> torch.Tensor:
    """(C_out, C_in, 3, 3, 3) -> U (A, C_in, C_out); ``flipped``: the kernel of the input gradient
    (flipped in space, C_in and C_out swapped) -> (A, C_out, C_in)."""
    w = weight.detach()
    w_t = w.flip(2, 3, 4).permute(0, 2, 3, 4, 1) if flipped else w.permute(1, 2, 3, 4, 0)
    w_t = w_t.contiguous()
    out = torch.empty((_frequencies(steps), w_t.shape[0], w_t.shape[4]), dtype=torch.float32)
    _weight_transform(w_t.numpy(), out.numpy(), *_axes(steps, "G"))
    return out


class _WinogradConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, steps):
        tiles_in = _transform_input(x, steps)  # (A, T, C_in)
        u = _transform_weight(weight, steps)  # (A, C_in, C_out)
        y = _transform_output(torch.bmm(tiles_in, u), bias, (x.shape[0], weight.shape[0], *x.shape[2:]), steps)
        ctx.save_for_backward(tiles_in, weight)
        ctx.steps = steps
        ctx.has_bias = bias is not None
        ctx.x_shape = x.shape
        ctx.x_channels_last = x.is_contiguous(memory_format=torch.channels_last_3d)
        return y if ctx.x_channels_last else y.contiguous()

    @staticmethod
    def backward(ctx, grad):
        tiles_in, weight = ctx.saved_tensors
        steps = ctx.steps
        grad = grad.detach().float()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:  # the same algorithm with the flipped, channel-swapped kernel
            u_adjoint = _transform_weight(weight, steps, flipped=True)  # (A, C_out, C_in)
            grad_x = _transform_output(torch.bmm(_transform_input(grad, steps), u_adjoint), None, ctx.x_shape, steps)
            if not ctx.x_channels_last:
                grad_x = grad_x.contiguous()
        if ctx.needs_input_grad[1]:  # the products' adjoint
            tiles_g = torch.empty((tiles_in.shape[0], tiles_in.shape[1], grad.shape[1]), dtype=torch.float32)
            _output_adjoint(_last(grad), tiles_g.numpy(), *_axes(steps, "A"))
            grad_u = torch.bmm(tiles_in.transpose(1, 2), tiles_g)  # (A, C_in, C_out)
            c_in, c_out = grad_u.shape[1:]
            grad_t = torch.empty((c_in, 3, 3, 3, c_out), dtype=torch.float32)
            _weight_adjoint(grad_u.numpy(), grad_t.numpy(), *_axes(steps, "GT"))
            fmt = torch.channels_last_3d if weight.is_contiguous(memory_format=torch.channels_last_3d) else (
                torch.contiguous_format)
            grad_w = grad_t.permute(4, 0, 1, 2, 3).contiguous(memory_format=fmt)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad.sum(dim=(0, 2, 3, 4))
        return grad_x, grad_w, grad_b, None


def eligible(conv: nn.Module, min_channels: int | None = None) -> bool:
    """3x3x3, stride 1, padding 1, and wide enough that the transforms pay (see module docstring)."""
    min_channels = MIN_CHANNELS if min_channels is None else min_channels
    return (stride1_same(conv) and tuple(conv.kernel_size) == (3, 3, 3)
            and min(conv.in_channels, conv.out_channels) >= min_channels)


class WinogradConv3d(OneDNNConv3d):
    """An ``nn.Conv3d`` (3x3x3, same padding) computed by Winograd F(2,3) on CPU fp32."""

    def _conv_forward(self, x, weight, bias):
        if (x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu")
                or x.shape[2] * x.shape[3] * x.shape[4] < MIN_VOXELS):
            return super()._conv_forward(x, weight, bias)  # oneDNN on CPU fp32, PyTorch's choice elsewhere
        steps = plan(x.shape[2:])
        if torch.is_grad_enabled():
            return _WinogradConv3d.apply(x, weight, bias, steps)
        # inference: nothing to save for a backward pass, and the weight's transform is kept until
        # the weight changes (its version counter moves on every in-place update, load_state_dict too)
        key = (weight.data_ptr(), weight._version, steps)
        if getattr(self, "_winograd_key", None) != key:
            self._winograd_u, self._winograd_key = _transform_weight(weight, steps), key
        y = _transform_output(torch.bmm(_transform_input(x, steps), self._winograd_u), bias,
                              (x.shape[0], weight.shape[0], *x.shape[2:]), steps)
        return y if x.is_contiguous(memory_format=torch.channels_last_3d) else y.contiguous()


def use_winograd_and_onednn(model: nn.Module) -> int:
    """The ``winograd`` execution option: Winograd for the wide layers, oneDNN for the other stride-1
    3D convolutions; returns how many went to Winograd."""
    use_onednn(model)
    return use_winograd(model)


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

