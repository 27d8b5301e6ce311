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
