"""Route every eligible 3D convolution through oneDNN, forward and backward (CPU, fp32).

PyTorch picks a convolution backend per call with a heuristic tuned for 2D images: at batch 1 it
sends a 3x3 convolution to its native im2col path whenever N*C*D*H <= 20480, which on 3D U-Nets
is every layer at the coarse levels (192 channels at 9x10x10 voxels, for example). That path runs
at a third to a half of oneDNN's speed here. This module forces oneDNN for those layers:

* forward: ``torch.mkldnn_convolution``;
* input gradient: the same oneDNN call on the output gradient with the weight flipped and its
  in/out channels swapped (exact for stride 1 and "same" padding);
* weight and bias gradients: ``convolution_backward`` with only those outputs asked for
  (PyTorch's own choice of path; measured here, its im2col + GEMM weight gradient is no slower
  than a hand-rolled one at these sizes).

Measured at 192 channels, 9x10x10 voxels, 2 threads: forward 33 ms native vs 10 ms oneDNN, input
gradient ~20 vs 11 ms. How much a whole training iteration gains depends on the share of the
coarse levels (about a fifth of the efficient U-Net's time); em-profile measures it.

``use_onednn(model)`` switches a model over in place, keeping its parameters and state-dict keys;
it is the ``onednn`` execution option (:mod:`emtools.models.execution`), not part of the model
spec: the results equal the default path's to float tolerance. ``torch.mkldnn_convolution`` and
``aten.convolution_backward`` are not public API, so the option is pinned to the torch versions it
was tested with (the registry refuses others unless EMTOOLS_ALLOW_UNTESTED=1).
"""

from __future__ import annotations

import torch
from torch import nn


def eligible(conv: nn.Module) -> bool:
    """Stride 1, no dilation, one group, odd kernels with "same" zero padding: the exact cases."""
    return (type(conv) in (nn.Conv3d, OneDNNConv3d) and conv.stride == (1, 1, 1) and conv.dilation == (1, 1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
            and all(k % 2 == 1 and p == k // 2 for k, p in zip(conv.kernel_size, conv.padding)))


def available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch, "mkldnn_convolution")


class _OneDNNConv3d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        ctx.save_for_backward(x, weight)
        ctx.padding = padding
        ctx.has_bias = bias is not None
        return torch.mkldnn_convolution(x, weight, bias, padding, [1, 1, 1], [1, 1, 1], 1)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        padding = ctx.padding
        grad = grad.contiguous(memory_format=torch.channels_last_3d) if x.is_contiguous(
            memory_format=torch.channels_last_3d) else grad.contiguous()
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            # The adjoint of a stride-1 "same" convolution is the convolution with the flipped,
            # channel-transposed kernel and the same padding.
            flipped = weight.flip(2, 3, 4).transpose(0, 1)
            flipped = flipped.contiguous(memory_format=torch.channels_last_3d) if weight.is_contiguous(
                memory_format=torch.channels_last_3d) else flipped.contiguous()
            grad_x = torch.mkldnn_convolution(grad, flipped, None, padding, [1, 1, 1], [1, 1, 1], 1)
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            _, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, [weight.shape[0]] if ctx.has_bias else None, [1, 1, 1], padding, [1, 1, 1],
                False, [0, 0, 0], 1, [False, bool(ctx.needs_input_grad[1]), bool(ctx.has_bias and ctx.needs_input_grad[2])])
        return grad_x, grad_w, grad_b, None


class OneDNNConv3d(nn.Conv3d):
    """An ``nn.Conv3d`` that always runs on oneDNN on CPU fp32 (falls back to the default elsewhere)."""

    def _conv_forward(self, x, weight, bias):
        if x.device.type != "cpu" or x.dtype != torch.float32 or torch.is_autocast_enabled("cpu"):
            return super()._conv_forward(x, weight, bias)
        return _OneDNNConv3d.apply(x, weight, bias, list(self.padding))


def use_onednn(model: nn.Module) -> int:
    """Switch every eligible ``nn.Conv3d`` of ``model`` to :class:`OneDNNConv3d`; returns how many."""
    switched = 0
    for module in model.modules():
        if type(module) is nn.Conv3d and eligible(module):
            module.__class__ = OneDNNConv3d  # same parameters and state-dict keys
            switched += 1
    return switched
