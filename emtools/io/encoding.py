"""Metadata on disk: HDF5 attributes and the TIFF ImageDescription JSON (both directions)."""

from __future__ import annotations

import json
from typing import Sequence

import numpy as np

from emtools.errors import EmError
from emtools.meta import Metadata

from emtools.io.specs import KNOWN_ATTRS, OFFSET_ALIASES, VOXEL_ALIASES


def meta_from_attrs(attrs: dict, ndim: int) -> Metadata:
    def values(key):
        v = attrs[key]
        v = v.tolist() if hasattr(v, "tolist") else v
        return [v] * 3 if np.isscalar(v) else list(v)

    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    voxel = offset = None
    if "voxel_size_nm" in attrs:
        voxel = values("voxel_size_nm")
    else:
        for key, scale in VOXEL_ALIASES.items():
            if key in attrs:
                voxel = [float(v) * scale for v in values(key)]
                break
    if "offset_nm" in attrs:
        offset = values("offset_nm")
    else:
        for key, scale in OFFSET_ALIASES.items():
            if key in attrs:
                offset = [float(v) * scale for v in values(key)]
                break
    provenance = json.loads(text(attrs["provenance"])) if "provenance" in attrs else []
    aliases = set(VOXEL_ALIASES) | set(OFFSET_ALIASES)
    extra = {}
    for key, value in attrs.items():
        if key in KNOWN_ATTRS or key in aliases:
            continue
        extra[key] = _attr_to_python(value)
    try:
        return Metadata(
            axes=text(attrs.get("axes", "czyx" if ndim == 4 else "zyx")),
            offset_nm=tuple(offset) if offset is not None else (0.0, 0.0, 0.0),
            voxel_size_nm=tuple(voxel) if voxel is not None else (1.0, 1.0, 1.0),
            provenance=tuple(provenance),
            attrs=extra,
        )
    except EmError as exc:
        raise EmError(f"bad metadata: {exc}") from exc


def _attr_to_python(value):
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value


def _python_to_attr(value):
    """Lists of numbers become arrays (h5ls shows them); anything nested becomes tagged JSON."""
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        dtype = np.int64 if all(isinstance(v, int) for v in value) else np.float64
        return np.asarray(value, dtype=dtype)
    if isinstance(value, (dict, list, tuple, bool)) or value is None:
        return "json:" + json.dumps(value, sort_keys=True)
    return value


def tiff_description(meta: Metadata, shape: Sequence[int]) -> str:
    return json.dumps(
        {
            "emtools": 1,
            "shape": list(shape),
            "axes": meta.axes,
            "offset_nm": list(meta.offset_nm),
            "voxel_size_nm": list(meta.voxel_size_nm),
            "provenance": list(meta.provenance),
            "attrs": meta.attrs,
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def meta_from_description(description: str) -> tuple[Metadata, tuple[int, ...]] | None:
    try:
        data = json.loads(description)
    except (ValueError, TypeError):
        return None
    if not isinstance(data, dict) or data.get("emtools") != 1:
        return None
    meta = Metadata(
        axes=data["axes"],
        offset_nm=tuple(data["offset_nm"]),
        voxel_size_nm=tuple(data["voxel_size_nm"]),
        provenance=tuple(data.get("provenance", [])),
        attrs=data.get("attrs", {}),
    )
    return meta, tuple(data["shape"])


# --------------------------------------------------------------------------------------------

def meta_to_attrs(meta: Metadata) -> dict:
    attrs = {
        "axes": meta.axes,
        "offset_nm": np.asarray(meta.offset_nm, dtype=np.float64),
        "voxel_size_nm": np.asarray(meta.voxel_size_nm, dtype=np.float64),
        "provenance": json.dumps(list(meta.provenance), sort_keys=True, separators=(",", ":")),
    }
    for key, value in meta.attrs.items():
        if key in attrs:
            raise EmError(f"internal: metadata attribute {key} is reserved")
        attrs[key] = _python_to_attr(value)
    return attrs


# ---------------------------------------------------------------------------- zarr (JSON attributes)

# OME-NGFF axis units we understand, as nanometres per unit (the others are ignored, with a warning).
OME_UNITS_NM = {"nanometer": 1.0, "micrometer": 1000.0, "angstrom": 0.1, "picometer": 0.001,
                "millimeter": 1e6}


def jsonable(value):
    """Numpy scalars and arrays, tuples and nested containers as plain JSON values."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    return value


def meta_to_json(meta: Metadata) -> dict:
    """The array attributes of a zarr array: our keys as plain JSON (no text-encoded values)."""
    attrs = {
        "axes": meta.axes,
        "offset_nm": [float(v) for v in meta.offset_nm],
        "voxel_size_nm": [float(v) for v in meta.voxel_size_nm],
        "provenance": jsonable(list(meta.provenance)),
    }
    for key, value in meta.attrs.items():
        if key in attrs:
            raise EmError(f"internal: metadata attribute {key} is reserved")
        attrs[key] = jsonable(value)
    return attrs


def meta_from_json(attrs: dict, ndim: int, ome: tuple | None = None) -> Metadata:
    """Metadata from a zarr array's attributes; ``ome`` (voxel size, offset, from the OME-Zarr
    multiscales of the group above) fills in what the attributes lack."""
    attrs = dict(attrs)
    attrs.pop("_ARRAY_DIMENSIONS", None)  # xarray's dimension names (zarr v2)
    if isinstance(attrs.get("provenance"), list):
        attrs["provenance"] = json.dumps(attrs["provenance"])
    has_voxel = "voxel_size_nm" in attrs or any(k in attrs for k in VOXEL_ALIASES)
    has_offset = "offset_nm" in attrs or any(k in attrs for k in OFFSET_ALIASES)
    if ome is not None:
        if not has_voxel:
            attrs["voxel_size_nm"] = list(ome[0])
        if not has_offset:
            attrs["offset_nm"] = list(ome[1])
    return meta_from_attrs(attrs, ndim)


def ome_axes(ndim: int) -> list[dict]:
    space = [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"]
    return ([{"name": "c", "type": "channel"}] if ndim == 4 else []) + space


def ome_multiscale(name: str, meta: Metadata, ndim: int) -> dict:
    """One OME-NGFF ``multiscales`` entry for array ``name`` (one scale level): axes (c,)z,y,x
    in nanometres, its voxel size as ``scale`` and its offset as ``translation``."""
    lead = [1.0] if ndim == 4 else []
    lead_offset = [0.0] if ndim == 4 else []
    return {
        "name": name,
        "axes": ome_axes(ndim),
        "datasets": [{
            "path": name,
            "coordinateTransformations": [
                {"type": "scale", "scale": lead + [float(v) for v in meta.voxel_size_nm]},
                {"type": "translation", "translation": lead_offset + [float(v) for v in meta.offset_nm]},
            ],
        }],
    }


def ome_multiscales(group_attrs: dict) -> list:
    """The ``multiscales`` list of a group: OME-NGFF 0.5 (``ome.multiscales``, zarr v3) or 0.4."""
    ome = group_attrs.get("ome")
    if isinstance(ome, dict) and isinstance(ome.get("multiscales"), list):
        return ome["multiscales"]
    found = group_attrs.get("multiscales")
    return found if isinstance(found, list) else []


def ome_scale_offset(group_attrs: dict, name: str) -> tuple[tuple, tuple] | None:
    """(voxel size nm, offset nm), z,y,x, of array ``name`` from the OME multiscales of the group
    above it (dataset transformations, then the multiscale's own), or None when absent or in
    units we do not know."""
    for entry in ome_multiscales(group_attrs):
        datasets = [d for d in entry.get("datasets", []) if isinstance(d, dict) and d.get("path") == name]
        if not datasets:
            continue
        axes = entry.get("axes") or []
        names = [a.get("name") if isinstance(a, dict) else a for a in axes]
        if names[-3:] != ["z", "y", "x"]:
            return None
        units = [a.get("unit", "nanometer") if isinstance(a, dict) else "nanometer" for a in axes[-3:]]
        if any(u not in OME_UNITS_NM for u in units):
            return None
        scale = [1.0] * len(names)
        offset = [0.0] * len(names)
        for transforms in (datasets[0].get("coordinateTransformations", []), entry.get("coordinateTransformations", [])):
            for t in transforms or []:
                if t.get("type") == "scale" and len(t.get("scale", [])) == len(names):
                    offset = [o * s for o, s in zip(offset, t["scale"])]
                    scale = [a * s for a, s in zip(scale, t["scale"])]
                elif t.get("type") == "translation" and len(t.get("translation", [])) == len(names):
                    offset = [o + d for o, d in zip(offset, t["translation"])]
        factors = [OME_UNITS_NM[u] for u in units]
        return (tuple(s * f for s, f in zip(scale[-3:], factors)), tuple(o * f for o, f in zip(offset[-3:], factors)))
    return None
