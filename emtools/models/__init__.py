"""Segmentation models built from a small spec (see :mod:`emtools.models.spec`).

    from emtools.models import build_model, resolve_spec, split_heads
    spec = resolve_spec("rsunet-efficient", ["heads=affinity:3,foreground:1"])
    model = build_model(spec, seed=0)          # input (N, 1, Z, Y, X) -> (N, 4, Z, Y, X)
    outputs = split_heads(spec, model(x))      # {"affinity": ..., "foreground": ...}

Models: ``rsunet`` (Lee et al. 2017), ``rsunet-efficient`` (strided entry conv, transposed output
conv, FLOP-balanced widths), ``unet3d``, ``unet2d`` (per section), and the flood-filling networks
``ffn``, ``ffn-aniso``, ``ffn-small`` (:mod:`emtools.models.ffn_spec`; one object at a time, see
:mod:`emtools.ffn`). Checkpoints carry their spec:
:func:`emtools.models.checkpoint.load_model` rebuilds a model from the file alone.

How a model runs (channels_last, oneDNN or Winograd convolutions, autocast, torch.compile) is
not part of its spec: :mod:`emtools.models.execution` holds those options, one registry that
em-profile, em-train and em-predict all apply through ``execution.apply``.

To add an execution option: decorate ``def _name(run)`` (it changes the model in place, the
input memory format, the autocast dtype or the compiled runner) with ``@execution_option(name,
summary, stage=..., needs=...)`` in :mod:`emtools.models.execution`; parsing, "did you mean",
em-profile's --options help and its man page follow. To add a model: a preset in
:mod:`emtools.models.spec` and its builder in :func:`build_model`. To ship trained weights
(``em-train --init NAME``): :mod:`emtools.models.pretrained` says how (the registry is
:mod:`emtools.models.weights`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from emtools.models.spec import PRESETS, ModelSpec, resolve_spec, spec_from_dict

if TYPE_CHECKING:  # torch is imported only when a model is built
    import torch

__all__ = ["PRESETS", "ModelSpec", "resolve_spec", "spec_from_dict", "build_model", "split_heads",
           "to_channels_last", "channels_last_input"]


def build_model(spec: ModelSpec, seed: int | None = 0) -> "torch.nn.Module":
    """The torch module for ``spec``, He-initialised from ``seed`` (None: torch's own init)."""
    from emtools.models.layers import init_weights

    if spec.arch == "ffn":
        from emtools.models.ffn import FFN, zero_update

        model = FFN(spec)
        if seed is not None:
            init_weights(model, seed)
            zero_update(model)
        return model
    if spec.arch == "rsunet":
        from emtools.models.rsunet import RSUNet

        model = RSUNet(spec)
    else:
        from emtools.models.unet import UNet

        model = UNet(spec)
    if seed is not None:
        init_weights(model, seed)
    return model


def split_heads(spec: ModelSpec, output: "torch.Tensor") -> dict[str, "torch.Tensor"]:
    """Split a model output (N, sum of head channels, ...) into one tensor per head."""
    out, start = {}, 0
    for name, channels in spec.heads:
        out[name] = output[:, start : start + channels]
        start += channels
    return out


def to_channels_last(model: "torch.nn.Module") -> "torch.memory_format":
    """Put ``model``'s weights in the channels-last memory format of its convolutions, in place:
    channels_last_3d (NDHWC) for 3D models, channels_last (NHWC) for ``unet2d``; returns the format
    (pass it to :func:`channels_last_input`)."""
    import torch
    from torch import nn

    three_d = any(isinstance(m, (nn.Conv3d, nn.ConvTranspose3d)) for m in model.modules())
    fmt = torch.channels_last_3d if three_d else torch.channels_last
    model.to(memory_format=fmt)
    return fmt


def channels_last_input(x: "torch.Tensor", fmt: "torch.memory_format") -> "torch.Tensor":
    """A model input (N, C, Z, Y, X) in ``fmt`` where that applies (3D models; a 2D model takes its
    5D input as it is and works per section)."""
    import torch

    return x.contiguous(memory_format=fmt) if fmt == torch.channels_last_3d and x.dim() == 5 else x
