"""The flood-filling network spec (Januszewski et al. 2018): torch-free, like :mod:`emtools.models.spec`.

A flood-filling network (FFN) takes two channels, the image and its own current object map (as
logits), over one field of view (FOV), and returns an updated object map of the same size::

    [image, object logits] -> conv, ReLU, conv -> (depth - 1) x residual [ReLU, conv, ReLU, conv]
                           -> ReLU, 1x1x1 conv -> + object logits

Presets: ``ffn`` (google/ffn's FIB-25 model: depth 12, 32 features, FOV 33^3, deltas 8,8,8),
``ffn-aniso`` (ssTEM: FOV 17x33x33 z,y,x, deltas 4,8,8) and ``ffn-small`` (a CPU budget: depth 6,
16 features, same FOV and deltas as ``ffn``). Keys: ``fov_zyx`` (odd), ``deltas_zyx`` (the FOV's
step when it moves; each below half the FOV), ``depth``, ``features``, ``kernel_zyx`` (odd).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Mapping

from emtools.errors import EmError
from emtools.values import did_you_mean, format_triple, to_int, to_triple

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class FFNSpec:
    """Everything needed to build a flood-filling network."""

    name: str = "ffn"
    arch: str = "ffn"
    fov_zyx: Triple = (33, 33, 33)
    deltas_zyx: Triple = (8, 8, 8)
    depth: int = 12
    features: int = 32
    kernel_zyx: Triple = (3, 3, 3)

    # The generic code paths (config resolution, em-profile) ask every spec for these.
    heads: tuple = ()
    in_channels: int = 2

    @property
    def out_channels(self) -> int:
        return 1

    @property
    def convolutions(self) -> int:
        """3D convolutions of kernel ``kernel_zyx``: two in the input module, two per residual module."""
        return 2 + 2 * (self.depth - 1)

    def flops_per_fov(self) -> float:
        """Multiply-adds x 2 of one forward pass over one FOV (same padding: every output voxel)."""
        voxels = self.fov_zyx[0] * self.fov_zyx[1] * self.fov_zyx[2]
        taps = self.kernel_zyx[0] * self.kernel_zyx[1] * self.kernel_zyx[2]
        per_voxel = 2 * taps * (2 * self.features + (self.convolutions - 1) * self.features * self.features)
        per_voxel += 2 * self.features  # the 1x1x1 output conv
        return float(per_voxel * voxels)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict that :func:`ffn_spec_from_dict` reads back."""
        out = dataclasses.asdict(self)
        out.pop("heads")
        out.pop("in_channels")
        return json.loads(json.dumps(out))

    def describe(self) -> str:
        return (f"{self.name} (ffn); FOV {format_triple(self.fov_zyx)}, deltas {format_triple(self.deltas_zyx)}, "
                f"depth {self.depth}, {self.features} features, kernel {format_triple(self.kernel_zyx)}")


FFN_PRESETS: dict[str, dict[str, Any]] = {
    "ffn": {},
    "ffn-aniso": {"fov_zyx": (17, 33, 33), "deltas_zyx": (4, 8, 8)},
    "ffn-small": {"depth": 6, "features": 16},
}
FIELDS = ("name", "arch", "fov_zyx", "deltas_zyx", "depth", "features", "kernel_zyx")


def is_ffn(values: Mapping[str, Any]) -> bool:
    """Whether a spec mapping describes a flood-filling network."""
    return str(values.get("name", "")) in FFN_PRESETS or str(values.get("arch", "")).lower() == "ffn"


def ffn_spec_from_dict(values: Mapping[str, Any], where: str = "spec") -> FFNSpec:
    """Build and validate an FFN spec; ``name`` picks the preset it starts from."""
    values = dict(values)
    name = str(values.get("name", "ffn"))
    arch = str(values.get("arch", "ffn")).lower()
    if arch != "ffn":  # e.g. model=ffn over the keys of a U-Net checkpoint given to --init
        raise EmError(f"model {name} is a flood-filling network, but the other model settings are a U-Net's "
                      f"(arch {arch}): the two cannot share settings or weights (--init with a U-Net checkpoint?) "
                      f"({where})")
    base = FFN_PRESETS.get(name, {})
    full: dict[str, Any] = {"name": name, "arch": "ffn", **base}
    for key, value in values.items():
        if key not in FIELDS:
            raise EmError(f"unknown ffn spec key '{key}'{did_you_mean(key, FIELDS)} ({where})")
        if key in ("name", "arch"):
            continue
        if key in ("fov_zyx", "deltas_zyx", "kernel_zyx"):
            full[key] = to_triple(value, key, allow_x=True, positive=key != "deltas_zyx", example="33,33,33")
        else:
            full[key] = to_int(value, key)
    spec = FFNSpec(**full)
    _validate(spec, where)
    return spec


def _validate(spec: FFNSpec, where: str) -> None:
    if spec.arch != "ffn":
        raise EmError(f"arch={spec.arch} is not ffn ({where})")
    if spec.depth < 1 or spec.features < 1:
        raise EmError(f"depth and features must be at least 1 (depth={spec.depth}, features={spec.features}) ({where})")
    if any(f < 1 or f % 2 == 0 for f in spec.fov_zyx):
        raise EmError(f"fov_zyx {format_triple(spec.fov_zyx)} must be odd in every axis, so that the FOV "
                      f"has a centre voxel (e.g. 33,33,33) ({where})")
    if any(k < 1 or k % 2 == 0 for k in spec.kernel_zyx):
        raise EmError(f"kernel_zyx {format_triple(spec.kernel_zyx)} must be odd ({where})")
    for axis, delta, fov in zip("zyx", spec.deltas_zyx, spec.fov_zyx):
        if delta < 0 or (delta > 0 and delta > fov // 2 - 1):
            raise EmError(f"deltas_zyx {format_triple(spec.deltas_zyx)}: the {axis} step must lie in "
                          f"0..{max(fov // 2 - 1, 0)} (below half the FOV {fov}) ({where})")
    if not any(spec.deltas_zyx):
        raise EmError(f"deltas_zyx {format_triple(spec.deltas_zyx)}: the FOV must be able to move along "
                      f"at least one axis ({where})")
