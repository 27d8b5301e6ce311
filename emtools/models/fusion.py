"""Inference-time rewrites of a model's graph that compute the same maps (to float rounding) in fewer
passes over memory: the ``fuse`` execution option of em-predict and em-profile (``--mode infer``).

Profiled on the shipped FIB-SEM model (rsunet-efficient, a 36x288x288 patch, 2 threads), a third of
the forward pass was not convolution but the element-wise layers around it: each batch norm,
activation and residual sum read one full-resolution tensor and wrote a new one, and every new
72 MB tensor is fresh memory that the kernel maps page by page (an out-of-place ELU took 58 ms, the
same ELU in place 24 ms). :func:`fuse_for_inference` traces the model with ``torch.fx`` and

1. folds each eval-mode batch norm that directly follows a convolution into the convolution's weights
   and bias (the norm disappears);
2. turns a batch norm that follows anything else (the residual sum) into one in-place per-channel
   multiply-add (``addcmul`` written over its input);
3. runs activations and residual sums in place wherever the tensor they overwrite is read by no other
   layer and was made by the layer before (never a view, never the model's input);
4. computes a transposed convolution with stride > 1 (the efficient variant's output layer) as one
   ordinary convolution into stride-many phases followed by a pixel shuffle, where that is exact:
   the transposed kernel has no native oneDNN fast path here and ran at a third of the speed.

Training never sees any of this (batch norm folding needs the running statistics; in-place layers
would break autograd): the option is inference-only, and the model it returns is a new
``torch.fx.GraphModule`` sharing nothing mutable with the original. A model that fx cannot trace is
returned unchanged, with the reason (:class:`NotFusable`).
"""

from __future__ import annotations

import copy
import itertools
import math
import operator
from collections import Counter

import torch
from torch import fx, nn

from emtools.models import layers

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_TRANSPOSED = (nn.ConvTranspose2d, nn.ConvTranspose3d)
_ACTIVATIONS = (nn.ELU, nn.ReLU, nn.LeakyReLU)  # those with an ``inplace`` switch


class NotFusable(Exception):
    """The model cannot be traced or rewritten; it runs as it is."""


class ChannelAffine(nn.Module):
    """``x * scale + shift`` per channel (dim 1), written over ``x``: an eval batch norm in one pass."""

    def __init__(self, scale: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("shift", shift)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view), out=x)


class PhaseConvTranspose(nn.Module):
    """A transposed convolution with stride s computed as a plain convolution into prod(s) x C_out
    channels (one per output phase) and a pixel shuffle; exact where the output is s times the input
    (see :func:`phase_conv`)."""

    def __init__(self, conv: nn.Conv2d | nn.Conv3d, stride: tuple[int, ...], out_channels: int):
        super().__init__()
        self.conv = conv
        self.stride = stride
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)  # channels phase-major: (s_0, ..., s_d-1, c_out)
        n, spatial = y.shape[0], y.shape[2:]
        dims = len(spatial)
        y = y.view(n, *self.stride, self.out_channels, *spatial)
        # (n, s0, s1, s2, c, d0, d1, d2) -> (n, c, d0, s0, d1, s1, d2, s2); in channels-last memory
        # that moves whole runs of c values (phase-major channels keep them together)
        order = [0, 1 + dims] + [i for axis in range(dims) for i in (2 + dims + axis, 1 + axis)]
        out_shape = (n, self.out_channels) + tuple(d * s for d, s in zip(spatial, self.stride))
        last = torch.channels_last_3d if dims == 3 else torch.channels_last
        memory_format = last if x.is_contiguous(memory_format=last) and not x.is_contiguous() else torch.contiguous_format
        out = torch.empty(out_shape, dtype=y.dtype, device=y.device, memory_format=memory_format)
        out.view(n, self.out_channels, *[v for d, s in zip(spatial, self.stride) for v in (d, s)]).copy_(
            y.permute(order))
        return out


def phase_conv(module: nn.ConvTranspose2d | nn.ConvTranspose3d) -> PhaseConvTranspose | None:
    """The :class:`PhaseConvTranspose` equal to ``module``, or None where the rewrite is not exact
    (groups, dilation, an output that is not stride times the input, stride 1) or does not pay (a
    kernel no larger than the stride: each output then sees one input, which torch does well).

    Along one axis (stride s, kernel K, padding p) output y = s*i + k - p. Output phase r
    (y = s*m + r) sums input i = m + j over the offsets j with k = r + p - s*j in [0, K); so phase r
    is a correlation with taps w[r + p - s*j] at offsets j, the same offsets window for every phase."""
    stride, kernel, pad = module.stride, module.kernel_size, module.padding
    if (module.groups != 1 or any(d != 1 for d in module.dilation) or all(s == 1 for s in stride)
            or not isinstance(pad, tuple) or module.padding_mode != "zeros"
            or all(k <= s for k, s in zip(kernel, stride))):
        return None
    for s, k, p, extra in zip(stride, kernel, pad, module.output_padding):
        if k - 2 * p + extra != s:  # output = (i-1)s - 2p + k + extra must equal s*i
            return None
    windows = []  # per axis: the offsets j used by any phase
    for s, k, p in zip(stride, kernel, pad):
        offsets = [j for r in range(s) for j in range(-k, k + 1) if 0 <= r + p - s * j < k]
        lo, hi = min(offsets), max(offsets)
        reach = max(-lo, hi)
        windows.append((reach, s, k, p))
    c_in, c_out = module.in_channels, module.out_channels
    taps = tuple(2 * reach + 1 for reach, *_ in windows)
    weight_t = module.weight.detach()  # (c_in, c_out, *kernel)
    weight = torch.zeros(tuple(stride) + (c_out, c_in) + taps, dtype=weight_t.dtype, device=weight_t.device)
    for phase in itertools.product(*(range(s) for s in stride)):
        for offset in itertools.product(*(range(-reach, reach + 1) for reach, *_ in windows)):
            k_index = tuple(r + p - s * j for r, j, (_, s, _, p) in zip(phase, offset, windows))
            if all(0 <= kk < k for kk, (_, _, k, _) in zip(k_index, windows)):
                tap = tuple(j + reach for j, (reach, *_) in zip(offset, windows))
                weight[phase + (slice(None), slice(None)) + tap] = weight_t[(slice(None), slice(None)) + k_index].T
    n_phases = math.prod(stride)
    conv = (nn.Conv3d if len(stride) == 3 else nn.Conv2d)(
        c_in, c_out * n_phases, taps, 1, tuple(reach for reach, *_ in windows), bias=module.bias is not None,
        device=weight_t.device, dtype=weight_t.dtype)
    with torch.no_grad():
        conv.weight.copy_(weight.reshape(c_out * n_phases, c_in, *taps))
        if module.bias is not None:
            conv.bias.copy_(module.bias.detach().repeat(n_phases))
    return PhaseConvTranspose(conv, tuple(stride), c_out)


def fold_norm(conv: nn.Conv1d | nn.Conv2d | nn.Conv3d, norm: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    """A copy of ``conv`` that computes ``norm(conv(x))`` (eval statistics)."""
    scale, shift = _affine(norm)
    fused = copy.deepcopy(conv)
    with torch.no_grad():
        fused.weight.mul_(scale.view((-1,) + (1,) * (fused.weight.dim() - 1)))
        bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(scale)
        if fused.bias is None:
            fused.bias = nn.Parameter(bias * scale + shift)
        else:
            fused.bias.copy_(bias * scale + shift)
    return fused


def _affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    if norm.running_mean is None or norm.running_var is None:
        raise NotFusable("a batch norm without running statistics")
    inv = torch.rsqrt(norm.running_var.detach().float() + norm.eps)
    scale = inv * (norm.weight.detach().float() if norm.weight is not None else 1.0)
    shift = (norm.bias.detach().float() if norm.bias is not None else 0.0) - norm.running_mean.detach().float() * scale
    return scale.to(norm.running_var.dtype), shift.to(norm.running_var.dtype)


def fuse_for_inference(model: nn.Module) -> fx.GraphModule:
    """``model`` (in eval mode) rewritten as the module docstring says; raises :class:`NotFusable`."""
    if model.training:
        raise NotFusable("the model is in training mode (fusing needs eval statistics)")
    try:
        graph_module = fx.symbolic_trace(copy.deepcopy(model))
    except Exception as exc:  # fx raises many kinds on dynamic control flow
        raise NotFusable(f"torch.fx cannot trace it ({type(exc).__name__}: {str(exc)[:120]})") from exc
    _drop_identities(graph_module)
    _fold_norms(graph_module)
    _transposed_as_phases(graph_module)
    _in_place(graph_module)
    graph_module.graph.lint()
    graph_module.delete_all_unused_submodules()
    graph_module.recompile()
    return graph_module


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    """The module ``node`` calls, where that module is called from this node only: a module shared
    by several call sites is left as it is (folding or running it in place at one site would change
    the others)."""
    if node.op != "call_module":
        return None
    calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
    return gm.get_submodule(node.target) if calls[node.target] == 1 else None


def _set_module(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _drop_identities(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        if isinstance(_module(gm, node), nn.Identity):
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)


def _fold_norms(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        norm = _module(gm, node)
        if not isinstance(norm, _NORMS):
            continue
        source = node.args[0]
        conv = _module(gm, source) if isinstance(source, fx.Node) else None
        if isinstance(conv, _CONVS) and len(source.users) == 1:
            _set_module(gm, source.target, fold_norm(conv, norm))
            node.replace_all_uses_with(source)
            gm.graph.erase_node(node)
        else:
            _set_module(gm, node.target, ChannelAffine(*_affine(norm)))


def _transposed_as_phases(gm: fx.GraphModule) -> None:
    for node in gm.graph.nodes:
        module = _module(gm, node)
        if isinstance(module, _TRANSPOSED):
            replacement = phase_conv(module)
            if replacement is not None:
                _set_module(gm, node.target, replacement)


def _makes_new_tensor(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node``'s output is a tensor of its own (not the input, a view, or a shared buffer)."""
    module = _module(gm, node)
    if module is not None:
        return isinstance(module, _CONVS + _TRANSPOSED + _ACTIVATIONS + (
            ChannelAffine, _OutOfPlaceAffine, PhaseConvTranspose, layers.Add, layers.Concat, nn.MaxPool3d, nn.MaxPool2d,
            nn.Upsample, nn.GroupNorm, nn.InstanceNorm2d, nn.InstanceNorm3d))
    if node.op == "call_function":
        return node.target in (operator.add, torch.add, torch.cat, _add_)
    return False


def _add_(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a.add_(b)


def _in_place(gm: fx.GraphModule) -> None:
    """Activations, batch-norm affines and residual sums in place where their input is theirs alone.
    ChannelAffine already writes over its input, so its input must be free too (else a plain one)."""
    for node in list(gm.graph.nodes):
        module = _module(gm, node)
        first = node.args[0] if node.args else None
        free = isinstance(first, fx.Node) and len(first.users) == 1 and _makes_new_tensor(gm, first)
        if isinstance(module, ChannelAffine) and not free:
            _set_module(gm, node.target, _OutOfPlaceAffine(module))
        elif isinstance(module, _ACTIVATIONS) and free:
            in_place = copy.copy(module)
            in_place.inplace = True
            _set_module(gm, node.target, in_place)
        elif (isinstance(module, layers.Add) or (node.op == "call_function" and node.target is operator.add)) \
                and len(node.args) == 2 and all(isinstance(a, fx.Node) for a in node.args):
            a, b = node.args
            if len(a.users) != 1 or not _makes_new_tensor(gm, a):
                if len(b.users) == 1 and _makes_new_tensor(gm, b):
                    a, b = b, a  # the sum is symmetric: overwrite whichever operand is free
                else:
                    continue
            with gm.graph.inserting_after(node):
                replacement = gm.graph.call_function(_add_, (a, b))
            node.replace_all_uses_with(replacement)
            gm.graph.erase_node(node)


class _OutOfPlaceAffine(nn.Module):
    def __init__(self, affine: ChannelAffine):
        super().__init__()
        self.scale, self.shift = affine.scale, affine.shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        view = (1, -1) + (1,) * (x.dim() - 2)
        return torch.addcmul(self.shift.view(view), x, self.scale.view(view))


def keep_output_channels(model: nn.Module, channels: list[int]) -> bool:
    """Make a fused model compute only output ``channels`` (sorted indices), in that order: em-predict
    writes only the heads it is asked for, so the rest of the last convolution is work thrown away
    (the shipped FIB-SEM model's six long-range channels when only ``affinity`` is written). Works
    where the model's output comes straight from a convolution (plain, transposed or phased); returns
    whether it changed the model. The weights keep their memory format, so it may run after the
    layout and kernel options."""
    if not isinstance(model, fx.GraphModule) or not channels or list(channels) != sorted(set(channels)):
        return False
    output = next(node for node in model.graph.nodes if node.op == "output")
    source = output.args[0]
    if not isinstance(source, fx.Node) or source.op != "call_module" or len(source.users) != 1:
        return False
    module = _module(model, source)
    if isinstance(module, PhaseConvTranspose):
        count = module.out_channels
        rows = [phase * count + c for phase in range(math.prod(module.stride)) for c in channels]
        _keep_rows(module.conv, rows, dim=0)
        module.out_channels = len(channels)
    elif isinstance(module, _CONVS):
        _keep_rows(module, list(channels), dim=0)
    elif isinstance(module, _TRANSPOSED) and module.groups == 1:
        _keep_rows(module, list(channels), dim=1)
    else:
        return False
    return True


def _keep_rows(conv: nn.Module, rows: list[int], dim: int) -> None:
    weight = conv.weight.detach()
    index = torch.tensor(rows, dtype=torch.long, device=weight.device)
    last = torch.channels_last_3d if weight.dim() == 5 else torch.channels_last
    kept = torch.index_select(weight, dim, index)
    if weight.dim() in (4, 5) and weight.is_contiguous(memory_format=last) and not weight.is_contiguous():
        kept = kept.contiguous(memory_format=last)
    conv.weight = nn.Parameter(kept, requires_grad=False)
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.index_select(conv.bias.detach(), 0, index), requires_grad=False)
    conv.out_channels = len(rows)
