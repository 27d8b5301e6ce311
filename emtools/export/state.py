"""The neuroglancer viewer state (JSON) that opens an export's layers, and its URL.

A state is a plain dict (what neuroglancer keeps after ``#!`` in its URL)::

    {"dimensions": {"x": [4e-09, "m"], "y": [4e-09, "m"], "z": [4e-08, "m"]},
     "position": [x, y, z],                  # the centre of the first layer, in those units
     "layers": [{"type": "image", "name": "raw", "source": "precomputed://http://.../raw"},
                {"type": "segmentation", "name": "seg", "source": "precomputed://http://.../seg",
                 "segments": ["17", "3"]}],   # shown (with meshes, skeletons) at first
     "layout": "4panel"}

Layer sources are ``precomputed://BASE/NAME``: BASE is where the export folder is served
(``em-export --serve`` serves it at ``http://127.0.0.1:PORT``).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Sequence

__all__ = ["LayerView", "change_base_url", "layer_source", "state_url", "viewer_state"]

# What neuroglancer's own ``to_url`` leaves unquoted: the state stays readable in the URL.
_SAFE = "~@#$&()*!+=:;,.?/'"


@dataclasses.dataclass(frozen=True)
class LayerView:
    """One layer as the viewer shows it: ``kind`` is image, prediction or segmentation."""

    name: str
    kind: str
    voxel_size_nm: tuple[float, float, float]
    offset_nm: tuple[float, float, float]
    shape_zyx: tuple[int, int, int]
    num_channels: int = 1
    segments: tuple[int, ...] = ()


def layer_source(base_url: str, name: str) -> str:
    return f"precomputed://{base_url.rstrip('/')}/{name}"


def _layer(view: LayerView, base_url: str) -> dict:
    layer: dict = {"type": "segmentation" if view.kind == "segmentation" else "image",
                   "name": view.name, "source": layer_source(base_url, view.name)}
    if view.kind == "segmentation":
        layer["segments"] = [str(s) for s in view.segments]
    elif view.kind == "prediction":
        layer["opacity"] = 0.5
        if view.num_channels == 3:  # affinities or three maps: one colour channel each
            layer["shader"] = ("void main() {\n  emitRGB(vec3(toNormalized(getDataValue(0)), "
                               "toNormalized(getDataValue(1)), toNormalized(getDataValue(2))));\n}\n")
    return layer


def viewer_state(views: Sequence[LayerView], base_url: str) -> dict:
    """The state that shows ``views`` in order, centred on the first, in its voxel units."""
    if not views:
        return {"layers": [], "layout": "4panel"}
    first = views[0]
    voxel_zyx = first.voxel_size_nm
    dimensions = {axis: [float(v) * 1e-9, "m"] for axis, v in zip("xyz", reversed(voxel_zyx))}
    centre_nm = [o + s * v / 2 for o, s, v in zip(first.offset_nm, first.shape_zyx, voxel_zyx)]
    position = [c / v for c, v in zip(reversed(centre_nm), reversed(voxel_zyx))]
    extent = [s * v / min(voxel_zyx) for s, v in zip(first.shape_zyx, voxel_zyx)]
    return {
        "dimensions": dimensions,
        "position": position,
        # units (finest voxels) per screen pixel: the first layer's largest side fits a ~500 px panel
        "crossSectionScale": max(extent) / 500,
        # the 3D view's height, in the same units: the whole first layer fits with a margin
        "projectionScale": 1.5 * max(extent),
        # the 3D view from above and a little aside (a quaternion x,y,z,w), so meshes show depth
        "projectionOrientation": [-0.2936, 0.2064, 0.0651, 0.9311],
        "layers": [_layer(v, base_url) for v in views],
        "layout": "4panel",
    }


def change_base_url(state: dict, old_base: str, new_base: str) -> dict:
    """A copy of ``state`` whose layer sources under ``old_base`` point under ``new_base``."""
    state = json.loads(json.dumps(state))
    old_prefix = layer_source(old_base, "")
    for layer in state.get("layers", []):
        source = layer.get("source")
        if isinstance(source, str) and source.startswith(old_prefix):
            layer["source"] = layer_source(new_base, source[len(old_prefix):])
    return state


def state_url(state: dict, viewer_url: str) -> str:
    """``VIEWER#!{state}``: the URL that opens ``state`` in the neuroglancer at ``viewer_url``."""
    text = json.dumps(state, separators=(",", ":"), sort_keys=True)
    return viewer_url.split("#", 1)[0] + "#!" + urllib.parse.quote(text, safe=_SAFE)
