"""What a model's output channels mean: the contract between em-train and em-predict.

A model spec names its heads and their channel counts (``heads=affinity:3,foreground:1``); the
*head specs* here say what each head predicts, so a checkpoint alone tells em-predict how to turn
raw outputs (logits) into maps and how to describe them in the output metadata. em-train stores
them in the checkpoint's ``extra["heads"]``::

    {"affinity":   {"kind": "affinity", "channels": 3, "offsets": [[-1,0,0],[0,-1,0],[0,0,-1]]},
     "foreground": {"kind": "foreground", "channels": 1},
     "distance":   {"kind": "distance", "channels": 1}}

Kinds, their output activation and the value range of the activated map:

==========  ==========  =======  ==================================================================
kind        activation  range    meaning
==========  ==========  =======  ==================================================================
affinity    sigmoid     [0, 1]   channel c: voxel p and p + offsets[c] (z,y,x) carry the same label
boundary    sigmoid     [0, 1]   high on membranes (z,y,x)
foreground  sigmoid     [0, 1]   binary foreground (mitochondria, nuclei, ...)
contour     sigmoid     [0, 1]   instance contours
cleft       sigmoid     [0, 1]   synaptic cleft mask
distance    tanh        [-1, 1]  signed distance: + inside objects, - outside
semantic    softmax     [0, 1]   one channel per class (class probabilities, summing to 1)
lsd         sigmoid     [0, 1]   local shape descriptors (emtools.shape_descriptors), 10 or 6 (2D)
==========  ==========  =======  ==================================================================

Affinity offsets follow the project's convention: nearest-neighbour channel c links a voxel to
its neighbour one step *back* along axis c, i.e. offsets ``[-1,0,0], [0,-1,0], [0,0,-1]``; long-range
offsets are further steps back (``[0,-3,0]``). This module does not import torch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

from emtools.errors import EmError

ACTIVATIONS = {
    "affinity": "sigmoid",
    "boundary": "sigmoid",
    "foreground": "sigmoid",
    "contour": "sigmoid",
    "cleft": "sigmoid",
    "distance": "tanh",
    "semantic": "softmax",
    "lsd": "sigmoid",
}
VALUE_RANGES = {"sigmoid": (0.0, 1.0), "tanh": (-1.0, 1.0), "softmax": (0.0, 1.0)}
NEAREST_OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1))


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """One head: its name (as in the model spec), kind, channels and affinity offsets."""

    name: str
    kind: str
    channels: int
    offsets: tuple[tuple[int, int, int], ...] = ()

    @property
    def activation(self) -> str:
        return ACTIVATIONS[self.kind]

    @property
    def value_range(self) -> tuple[float, float]:
        return VALUE_RANGES[self.activation]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "channels": self.channels}
        if self.kind == "affinity":
            out["offsets"] = [list(o) for o in self.offsets]
        return out


def head_spec(name: str, values: Mapping[str, Any]) -> HeadSpec:
    """Validate one head description (see the module docstring); one-line errors."""
    if not isinstance(values, Mapping):
        raise EmError(f"head {name}: expected a mapping with kind and channels")
    kind = str(values.get("kind", name))
    if kind not in ACTIVATIONS:
        raise EmError(f"head {name}: unknown kind {kind!r}; choose from {', '.join(ACTIVATIONS)}")
    try:
        channels = int(values.get("channels", 0))
    except (TypeError, ValueError):
        raise EmError(f"head {name}: channels must be an integer") from None
    offsets: tuple[tuple[int, int, int], ...] = ()
    if kind == "affinity":
        raw = values.get("offsets")
        if raw is None:
            raw = NEAREST_OFFSETS[: channels or 3]
        offsets = tuple(_offset(name, o) for o in raw)
        if channels == 0:
            channels = len(offsets)
        if len(offsets) != channels:
            raise EmError(f"head {name}: {channels} channels but {len(offsets)} affinity offsets")
    if channels < 1:
        raise EmError(f"head {name}: needs at least one channel")
    if kind == "semantic" and channels < 2:
        raise EmError(f"head {name}: a semantic head needs at least 2 classes (use foreground for one)")
    return HeadSpec(name, kind, channels, offsets)


def _offset(name: str, value: Any) -> tuple[int, int, int]:
    try:
        offset = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise EmError(f"head {name}: affinity offset {value!r} is not three integers z,y,x") from None
    if len(offset) != 3 or offset == (0, 0, 0):
        raise EmError(f"head {name}: affinity offset {value!r} must be three integers z,y,x, not all 0")
    return offset  # type: ignore[return-value]


def heads_from_dict(values: Mapping[str, Any], model_heads: Sequence[tuple[str, int]] | None = None) -> list[HeadSpec]:
    """Head specs in the model's head order; checks they match the model spec's (name, channels)."""
    if not isinstance(values, Mapping) or not values:
        raise EmError("the head descriptions must be a non-empty mapping of name: {kind, channels}")
    heads = {name: head_spec(name, v) for name, v in values.items()}
    if model_heads is None:
        return list(heads.values())
    names = [n for n, _ in model_heads]
    if set(names) != set(heads):
        raise EmError(f"the model's heads {', '.join(names)} do not match the described heads {', '.join(heads)}")
    out = []
    for name, channels in model_heads:
        if heads[name].channels != channels:
            raise EmError(f"head {name}: the model has {channels} channels, the description {heads[name].channels}")
        out.append(heads[name])
    return out


def heads_to_dict(heads: Sequence[HeadSpec]) -> dict[str, dict[str, Any]]:
    return {h.name: h.to_dict() for h in heads}


def default_heads(model_heads: Sequence[tuple[str, int]]) -> list[HeadSpec]:
    """Head specs for a model whose head names are kinds (``affinity:3`` -> nearest offsets)."""
    return [head_spec(name, {"kind": name, "channels": channels}) for name, channels in model_heads]
