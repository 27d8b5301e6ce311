"""Winograd convolution for the wide 3D layers, forward and backward (CPU, fp32).

A direct 3x3x3 convolution spends 27 multiply-adds per input channel per output channel per voxel.
Winograd's minimal filtering (Lavin & Gray 2016) computes a block of m outputs along an axis from
m + 2 inputs with m + 2 element-wise products in a transformed domain; applied along z, y and x
(here F(2,3) in z and F(4,3) in y and x: 4x6x6 input tiles for 2x4x4 output blocks), the batched
matrix multiply that does the real work needs 144/32 = 4.5 instead of 27 multiply-adds per output
(F(2,3) on all three axes: 8). The products are one ``torch.bmm`` of (tiles x C_in) @ (C_in x C_out)
matrices per frequency. All five transforms are two numba kernels: :func:`_gather_transform` (a
block per tile, transformed along x, y, z into frequency-major rows: B' on the input tiles, G on
the kernels, A on the output gradient) and :func:`_scatter_transform` (back: A' on the products,
G' on the kernel gradient). Each job works on a row of tiles with buffers of its own, the channel
loops innermost (they vectorise) and each output value written once.
:func:`plan` picks F(4,3) or F(2,3) per axis from the layer's size.

It pays on the wide levels of a 3D U-Net (fwd+bwd, 2 threads: 192 channels at 9x20x20 voxels 43
against oneDNN's 79 ms, at 9x10x10 18 against 28; 64 channels at 18x40x40 60 against 76) and loses
on thin, large levels (32 channels at 18x80x80: 168 against 79 ms), where the transforms and the
small products cost more than the fewer multiplies save. ``use_winograd`` therefore switches only
3x3x3, stride-1, "same"-padded convolutions with at least ``MIN_CHANNELS`` input and output
channels, and a switched layer runs volumes under ``MIN_VOXELS`` on oneDNN.

Training uses the same algorithm three times:

* forward: y = A'[ (G g G') . (B' d B) ] A per tile (transforms along each of the three axes);
* input gradient: the forward algorithm on the output gradient with the flipped, channel-swapped
  kernel (exact for stride 1 and padding 1);
* weight gradient: the products' adjoint, a bmm of the saved transformed input tiles with the
  output gradient taken back through A', then G' on the frequency axes.

The numba kernels compile on first use (about a minute, once per array layout) and are cached on
disk after that. Numerically it differs from a direct convolution by float32 rounding: relative
error ~3e-6 with F(2,3), ~1e-5 with F(4,3) in two axes, on unit-scale data (tested). Like the
oneDNN path it is an execution option (``winograd`` in :mod:`emtools.models.execution`, pinned to
the torch and numba versions it was tested with), not part of the model spec: a checkpoint trained
with it loads and runs without it.
"""

from __future__ import annotations

import numpy as np
import torch
from numba import njit, prange
from torch import nn

from emtools.models.onednn import OneDNNConv3d, use_onednn
from emtools.models.onednn import eligible as stride1_same

MIN_CHANNELS = 64  # below this the transforms cost more than the fewer products save (measured)
MIN_VOXELS = 800  # output voxels per volume; fewer and the products are too small a GEMM to pay
WEIGHT_COST = 64.0  # a training step's kernel transforms per frequency, in tiles' worth (see plan)

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


def plan(shape_zyx, weight_cost: float = WEIGHT_COST) -> tuple[int, int, int]:
    """Outputs per tile along z, y, x: F(2,3) in z (few, thick sections: F(4,3) would pad 9 to 12),
    and F(4,3) or F(2,3) in y and x, whichever costs least by frequencies x (tiles + ``weight_cost``):
    the products and the tile transforms grow with frequencies x tiles, the kernel's transforms (three
    per training step, memory-bound) with the frequencies alone, worth ``weight_cost`` tiles each.
    So F(4,3) on large planes, F(2,3) where few tiles cannot repay 2.25x the transformed kernel
    (training: 9x10x10 voxels at 192 channels, 17.6 against 22.2 ms per fwd+bwd; 9x20x20, 43 against
    56 ms). Inference keeps the kernel's transform (``weight_cost`` 0). F(4,3) is ~4x less exact than
    F(2,3), ~1e-5 relative, still far below training noise."""
    def cost(steps) -> float:
        return _frequencies(steps) * (int(np.prod(_tiles(shape_zyx, steps))) + weight_cost)
    return min(((2, 4, 4), (2, 2, 4), (2, 4, 2), (2, 2, 2)), key=cost)


def _tiles(shape_zyx, steps) -> tuple[int, int, int]:
    return tuple(-(-s // m) for s, m in zip(shape_zyx, steps))


@njit(cache=True, nogil=True, inline="always")
def _along_y(src, my, dst):
    """dst[i, q, p, :] = sum over j of my[q, j] * src[i, j, p, :] (the middle stage of both kernels)."""
    for i in range(dst.shape[0]):
        for q in range(dst.shape[1]):
            dst[i, q] = 0.0
            for j in range(src.shape[1]):
                c = my[q, j]
                if c != 0.0:
                    for p in range(dst.shape[2]):
                        for ch in range(dst.shape[3]):
                            dst[i, q, p, ch] += c * src[i, j, p, ch]


@njit(parallel=True, cache=True, nogil=True)
def _gather_transform(src, out, mz, my, mx, steps_zyx, shift, tiles_zyx):
    """Tiles of ``src`` (N, D, H, W, C) -> ``out`` (RZ*RY*RX, N*tiles, C): each tile is the
    CZ x CY x CX block at (tile index * step - ``shift``) (zero outside ``src``), transformed by ``mx``
    along x, ``my`` along y and ``mz`` along z (R x C matrices); frequency (r, q, p) is row
    (r * RY + q) * RX + p, tile t of volume n is column n * tiles + t (tiles numbered z, y, x).

    The input transform (B', shift 1: the zero padding), the output gradient's adjoint transform
    (A, shift 0) and the kernel transform (G: one 3x3x3 "tile" per input channel) are all this.
    Each job is a row of tiles along x with its own work buffers; the innermost loops run over
    channels (contiguous), so they vectorise, and zero matrix entries are skipped."""
    n_vol, depth, height, width, channels = src.shape
    rz, cz = mz.shape
    ry, cy = my.shape
    rx, cx = mx.shape
    tz, ty, tx = tiles_zyx[0], tiles_zyx[1], tiles_zyx[2]
    for row in prange(n_vol * tz * ty):
        n = row // (tz * ty)
        z0 = ((row // ty) % tz) * steps_zyx[0] - shift
        y0 = (row % ty) * steps_zyx[1] - shift
        along_x = np.empty((cz, cy, rx, channels), dtype=np.float32)
        along_y = np.empty((cz, ry, rx, channels), dtype=np.float32)
        for ix in range(tx):
            x0 = ix * steps_zyx[2] - shift
            job = row * tx + ix
            for i in range(cz):  # along x, straight from the source
                z = z0 + i
                for j in range(cy):
                    y = y0 + j
                    along_x[i, j] = 0.0
                    if z < 0 or z >= depth or y < 0 or y >= height:
                        continue
                    for k in range(cx):
                        xx = x0 + k
                        if xx < 0 or xx >= width:
                            continue
                        for r in range(rx):
                            c = mx[r, k]
                            if c != 0.0:
                                for ch in range(channels):
                                    along_x[i, j, r, ch] += c * src[n, z, y, xx, ch]
            _along_y(along_x, my, along_y)
            for r in range(rz):  # along z, into the output rows
                for q in range(ry):
                    for p in range(rx):
                        a = (r * ry + q) * rx + p
                        out[a, job] = 0.0
                        for i in range(cz):
                            c = mz[r, i]
                            if c != 0.0:
                                for ch in range(channels):
                                    out[a, job, ch] += c * along_y[i, q, p, ch]


@njit(parallel=True, cache=True, nogil=True)
def _scatter_transform(src, bias, dst, mz, my, mx):
    """``src`` (CZ*CY*CX, N*tiles, C) -> ``dst`` (N, D, H, W, C): the inverse layout of
    :func:`_gather_transform`. Each tile's frequencies go through ``mz`` along z, ``my`` along y and
    ``mx`` along x (R x C matrices) into an RZ x RY x RX block of ``dst`` at (tile index * R),
    cropped at the far borders, plus ``bias`` per channel.

    The output transform (A') and the kernel gradient's adjoint transform (G': one 3x3x3 block per
    input channel) are this."""
    n_vol, depth, height, width, channels = dst.shape
    rz, cz = mz.shape
    ry, cy = my.shape
    rx, cx = mx.shape
    tz, ty, tx = (depth + rz - 1) // rz, (height + ry - 1) // ry, (width + rx - 1) // rx
    for row in prange(n_vol * tz * ty):
        n = row // (tz * ty)
        z0 = ((row // ty) % tz) * rz
        y0 = (row % ty) * ry
        along_z = np.empty((rz, cy, cx, channels), dtype=np.float32)
        along_y = np.empty((rz, ry, cx, channels), dtype=np.float32)
        voxel = np.empty(channels, dtype=np.float32)
        for ix in range(tx):
            x0 = ix * rx
            job = row * tx + ix
            for o in range(rz):  # along z, straight from the frequencies
                for j in range(cy):
                    for k in range(cx):
                        along_z[o, j, k] = 0.0
                        for i in range(cz):
                            c = mz[o, i]
                            if c != 0.0:
                                a = (i * cy + j) * cx + k
                                for ch in range(channels):
                                    along_z[o, j, k, ch] += c * src[a, job, ch]
            _along_y(along_z, my, along_y)
            for o in range(rz):  # along x, each output voxel written once
                z = z0 + o
                for b in range(ry):
                    y = y0 + b
                    for a in range(rx):
                        xx = x0 + a
                        if z >= depth or y >= height or xx >= width:
                            continue
                        voxel[:] = bias
                        for k in range(cx):
                            c = mx[a, k]
                            if c != 0.0:
                                for ch in range(channels):
                                    voxel[ch] += c * along_y[o, b, k, ch]
                        dst[n, z, y, xx] = voxel


def _axes(steps, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(_MATRICES[m][key] for m in steps)


def _last(x: torch.Tensor) -> np.ndarray:
    """(N, C, D, H, W) tensor as an (N, D, H, W, C) C-contiguous numpy view (copy only if needed)."""
    return x.detach().contiguous(memory_format=torch.channels_last_3d).permute(0, 2, 3, 4, 1).numpy()


def _frequencies(steps) -> int:
    return int(np.prod([m + 2 for m in steps]))


def _transform_tiles(x: torch.Tensor, steps, key: str, shift: int) -> torch.Tensor:
    """(N, C, D, H, W) -> (A, N*tiles, C): ``key`` "BT" (input tiles, m + 2 wide at stride m,
    zero padding 1) or "A" (the adjoint of the output transform: m-wide blocks)."""
    tiles = _tiles(x.shape[2:], steps)
    out = torch.empty((_frequencies(steps), x.shape[0] * int(np.prod(tiles)), x.shape[1]), dtype=torch.float32)
    _gather_transform(_last(x), out.numpy(), *_axes(steps, key), np.array(steps, dtype=np.int64), shift,
                      np.array(tiles, dtype=np.int64))
    return out


def _transform_input(x: torch.Tensor, steps) -> torch.Tensor:
    return _transform_tiles(x, steps, "BT", 1)


def _transform_output(m: torch.Tensor, bias: torch.Tensor | None, shape, steps) -> torch.Tensor:
    n, c, depth, height, width = shape
    y = torch.empty((n, c, depth, height, width), dtype=torch.float32, memory_format=torch.channels_last_3d)
    bias_np = (bias.detach().float().contiguous().numpy() if bias is not None else np.zeros(c, dtype=np.float32))
    _scatter_transform(m.numpy(), bias_np, y.permute(0, 2, 3, 4, 1).numpy(), *_axes(steps, "AT"))
    return y


def _transform_weight(weight: torch.Tensor, steps, flipped: bool = False) -> torch.Tensor:
    """(C_out, C_in, 3, 3, 3) -> U (A, C_in, C_out); ``flipped``: the kernel of the input gradient
    (flipped in space, C_in and C_out swapped) -> (A, C_out, C_in)."""
    w = weight.detach()
    w_t = w.flip(2, 3, 4).permute(0, 2, 3, 4, 1) if flipped else w.permute(1, 2, 3, 4, 0)
    w_t = w_t.contiguous()
    out = torch.empty((_frequencies(steps), w_t.shape[0], w_t.shape[4]), dtype=torch.float32)
    one = np.ones(3, dtype=np.int64)  # one 3x3x3 "tile" per input channel
    _gather_transform(w_t.numpy(), out.numpy(), *_axes(steps, "G"), 3 * one, 0, one)
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
            tiles_g = _transform_tiles(grad, steps, "A", 0)  # (A, T, C_out)
            grad_u = torch.bmm(tiles_in.transpose(1, 2), tiles_g)  # (A, C_in, C_out)
            c_in, c_out = grad_u.shape[1:]
            grad_t = torch.empty((c_in, 3, 3, 3, c_out), dtype=torch.float32)
            _scatter_transform(grad_u.numpy(), np.zeros(c_out, dtype=np.float32), grad_t.numpy(), *_axes(steps, "GT"))
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
        if torch.is_grad_enabled():
            steps = plan(x.shape[2:])
            return _WinogradConv3d.apply(x, weight, bias, steps)
        # inference: nothing to save for a backward pass, and the weight's transform is kept until
        # the weight changes (its version counter moves on every in-place update, load_state_dict too)
        steps = plan(x.shape[2:], weight_cost=0.0)
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

