"""Metadata that travels with every array, and the provenance records that tools append to it.

Conventions (documented in the README, checked by tests):

- ``axes`` is ``"zyx"`` for scalar volumes or ``"czyx"`` for multi-channel maps (channel first).
- ``offset_nm`` is the world position of voxel (0, 0, 0), in nm, z,y,x order.
- ``voxel_size_nm`` is the voxel pitch in nm, z,y,x order.
- ``provenance`` is a list of records, oldest first, one per tool that produced the array:
  ``{"tool", "version", "params", "inputs": [{"spec", "provenance_sha256"}]}``. Records hold no
  time stamps or host names, so the same inputs and arguments give byte-identical files.
- ``attrs`` holds any other JSON-able metadata a tool needs (chunk regions, affinity offsets).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from emtools import __version__
from emtools.errors import EmError

if TYPE_CHECKING:  # a type only: meta stays free of the tiling import at run time
    from emtools.tiling.geometry import Box

AXES_CHOICES = ("zyx", "czyx")
# More input specs than this in one record are summarised by a digest (HDF5 attributes must stay small).
MAX_LISTED_INPUTS = 64


def _triple(name: str, values: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != 3:
        raise EmError(f"{name} needs 3 values z,y,x, got {len(values)}")
    return values  # type: ignore[return-value]


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What is known about an array besides its values."""

    axes: str = "zyx"
    offset_nm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    voxel_size_nm: tuple[float, float, float] = (1.0, 1.0, 1.0)
    provenance: tuple[dict, ...] = ()
    attrs: dict = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if self.axes not in AXES_CHOICES:
            raise EmError(f"axes must be one of {', '.join(AXES_CHOICES)}, got {self.axes!r}")
        object.__setattr__(self, "offset_nm", _triple("offset", self.offset_nm))
        voxel = _triple("voxel size", self.voxel_size_nm)
        if any(v <= 0 for v in voxel):
            raise EmError(f"voxel size must be positive, got {','.join(f'{v:g}' for v in voxel)}")
        object.__setattr__(self, "voxel_size_nm", voxel)
        object.__setattr__(self, "provenance", tuple(self.provenance))

    def replace(self, **changes) -> "Metadata":
        return dataclasses.replace(self, **changes)

    @property
    def origin_vx(self) -> tuple[int, int, int]:
        """Offset in whole voxels (global voxel coordinates of voxel 0); errors if not whole."""
        out = []
        for axis, off, size in zip("zyx", self.offset_nm, self.voxel_size_nm):
            steps = off / size
            if abs(steps - round(steps)) > 1e-6:
                raise EmError(
                    f"offset {off:g} nm along {axis} is not a multiple of the voxel size {size:g} nm"
                )
            out.append(int(round(steps)))
        return tuple(out)  # type: ignore[return-value]

    def with_record(self, record: dict) -> "Metadata":
        return self.replace(provenance=self.provenance + (record,))


def provenance_digest(meta: Metadata) -> str:
    """sha256 of an input's provenance: identifies where the input came from, cheaply."""
    text = json.dumps(list(meta.provenance), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalar
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def provenance_record(tool: str, params: dict, inputs: Iterable[tuple[str, Metadata]]) -> dict:
    """One provenance record: the tool, its version, its resolved parameters and its inputs."""
    inputs = list(inputs)
    listed = [{"spec": spec, "provenance_sha256": provenance_digest(meta)} for spec, meta in inputs]
    record: dict = {"tool": tool, "version": __version__, "params": _jsonable(params)}
    if len(listed) <= MAX_LISTED_INPUTS:
        record["inputs"] = listed
    else:
        text = json.dumps(listed, sort_keys=True, separators=(",", ":"))
        record["inputs_summary"] = {
            "count": len(listed),
            "first": listed[0]["spec"],
            "last": listed[-1]["spec"],
            "sha256": hashlib.sha256(text.encode()).hexdigest(),
        }
    return record


def require_same_grid(metas: Sequence[tuple[str, Metadata]]) -> None:
    """Refuse, in one line, to combine arrays whose voxel sizes differ."""
    if not metas:
        return
    ref_spec, ref = metas[0]
    for spec, meta in metas[1:]:
        if any(abs(a - b) > 1e-9 * max(abs(a), 1.0) for a, b in zip(meta.voxel_size_nm, ref.voxel_size_nm)):
            raise EmError(
                f"voxel sizes differ: {_fmt(ref.voxel_size_nm)} nm in {ref_spec} but "
                f"{_fmt(meta.voxel_size_nm)} nm in {spec}"
            )


def _fmt(values: Sequence[float]) -> str:
    return ",".join(f"{v:g}" for v in values)


def require_same_region(first: tuple[str, Metadata, Box], second: tuple[str, Metadata, Box]) -> None:
    """One-line errors when two inputs differ in voxel size, shape or position."""
    require_same_grid([(first[0], first[1]), (second[0], second[1])])
    if first[2].shape != second[2].shape:
        raise EmError(
            f"shape {_shape_text(second[2].shape)} of {second[0]} does not match {_shape_text(first[2].shape)} of {first[0]}"
        )
    if first[2] != second[2]:
        raise EmError(f"{second[0]} covers {second[2].text()} but {first[0]} covers {first[2].text()} (voxels)")


def _shape_text(shape) -> str:
    return "x".join(str(int(n)) for n in shape)
