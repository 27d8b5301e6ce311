"""What em-predict writes: output names from a template, and the metadata of each head's map.

One file per head and input. ``-o`` is a template with ``{name}`` (the input's file name without
its suffix: ``chunk_0-72_0-288_0-288`` for a chunk from ``em-tile split``) and ``{head}`` (the
head's name); ``{name}`` is needed for several inputs, ``{head}`` for several heads. A folder
(an existing one, or a path ending in ``/``) means ``FOLDER/{name}_{head}.h5``.

The metadata of a map: the input's offset and voxel size (the map lines up with the input in
world coordinates), its chunk attributes (so ``em-tile merge`` and ``em-watershed`` see the
chunk's read and responsible regions), ``head``/``head_kind``/``activation``, ``value_range``
[lo, hi] (uint8 maps store ``round((value - lo) / (hi - lo) * 255)``), the kept ``channels``
of the head, ``affinity_offsets`` for affinities (axes ``czyx``), and the provenance record.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.io.specs import H5_SUFFIXES, SLICE_SUFFIXES, is_glob, output_file, split_h5_spec, split_region
from emtools.meta import Metadata
from emtools.shape_descriptors import channel_names, lsd_channels
from emtools.predict import OUTPUT_DTYPES
from emtools.tiling.chunk_files import CHUNK_ATTRS

if TYPE_CHECKING:  # the engine imports torch
    from emtools.predict.engine import Selection


def input_name(spec: str) -> str:
    """The ``{name}`` of an input spec: its file (or folder) name without the suffix; a region
    spec adds its region (``raw.zarr/raw[0:8,0:64,0:64]`` -> ``raw_0-8_0-64_0-64``)."""
    base, region, _ = split_region(spec)
    if region is not None:
        return f"{input_name(base)}_{region.name()}"
    h5 = split_h5_spec(spec)
    path = (h5[0] if h5 else spec).rstrip("/")
    if is_glob(path):
        path = os.path.dirname(path)
    base = os.path.basename(path) or "volume"
    stem, suffix = os.path.splitext(base)
    return stem if suffix.lower() in H5_SUFFIXES + SLICE_SUFFIXES else base


def output_specs(template: str, inputs: Sequence[str], heads: Sequence[str]) -> list[dict[str, str]]:
    """For every input, {head: output spec}; one-line errors for templates that would collide."""
    if template.endswith("/") or os.path.isdir(template):
        template = os.path.join(template, "{name}_{head}.h5")
    if len(heads) > 1 and "{head}" not in template:
        raise EmError(f"{len(heads)} heads ({', '.join(heads)}) need {{head}} in the output, e.g. -o 'pred_{{head}}.h5'")
    if len(inputs) > 1 and "{name}" not in template:
        raise EmError(f"{len(inputs)} inputs need {{name}} in the output, e.g. -o 'pred/{{name}}_{{head}}.h5'")
    out, seen = [], {}
    for spec in inputs:
        name = input_name(spec)
        specs = {}
        for head in heads:
            target = template.replace("{name}", name).replace("{head}", head)
            key = os.path.realpath(output_file(target))
            if key in seen:
                raise EmError(f"{seen[key]} and {spec} (head {head}) would both write {output_file(target)}; "
                              "put {name} and {head} in the file name of -o")
            seen[key] = f"{spec} (head {head})"
            specs[head] = target
        out.append(specs)
    return out


def output_metadata(input_meta: Metadata, selection: "Selection", dtype: str, record: dict) -> Metadata:
    """Metadata of one head's map over the input's region (see the module docstring)."""
    head = selection.head
    attrs = {k: input_meta.attrs[k] for k in CHUNK_ATTRS if k in input_meta.attrs}
    attrs.update(head=head.name, head_kind=head.kind, activation=head.activation,
                 value_range=list(head.value_range), channels=list(selection.channels), dtype=dtype)
    if head.kind == "affinity":
        attrs["affinity_offsets"] = selection.offsets
    if head.kind == "lsd" and head.channels in (lsd_channels("3d"), lsd_channels("2d")):
        names = channel_names("3d" if head.channels == lsd_channels("3d") else "2d")
        attrs["channel_names"] = [names[c] for c in selection.channels]
    return Metadata(axes=output_axes(selection), offset_nm=input_meta.offset_nm,
                    voxel_size_nm=input_meta.voxel_size_nm, provenance=input_meta.provenance + (record,), attrs=attrs)


def output_axes(selection: "Selection") -> str:
    """``czyx`` for affinities and multi-channel maps, ``zyx`` for one-channel maps."""
    return "czyx" if selection.head.kind == "affinity" or len(selection.channels) > 1 else "zyx"


def output_shape(selection: "Selection", shape_zyx: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape_zyx)
    return ((len(selection.channels),) + shape) if output_axes(selection) == "czyx" else shape


def encode(values: np.ndarray, dtype: str, value_range: Sequence[float]) -> np.ndarray:
    """float32, float16, or uint8 with the head's value range [lo, hi] mapped to 0..255."""
    if dtype == "float32":
        return values.astype(np.float32, copy=False)
    if dtype == "float16":
        return values.astype(np.float16)
    if dtype != "uint8":
        raise EmError(f"unknown output type {dtype!r}; choose one of {', '.join(OUTPUT_DTYPES)}")
    lo, hi = float(value_range[0]), float(value_range[1])
    scaled = (values.astype(np.float32, copy=False) - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled).astype(np.uint8)
