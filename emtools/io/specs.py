"""Volume specs and output paths: parsing, validation, and small shared helpers."""

from __future__ import annotations

import logging
import os
import re
from typing import Sequence


from emtools.errors import EmError

log = logging.getLogger("emtools")

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_DATASET = "main"
COMPRESSIONS = ("gzip", "lzf", "none")
TMP_MARK = ".emtmp-"
KNOWN_ATTRS = {"axes", "offset_nm", "voxel_size_nm", "provenance"}
# Attribute names other tools use for the same things (read only; we always write ours).
VOXEL_ALIASES = {"resolution": 1.0, "voxel_size": 1.0, "element_size_um": 1000.0}
OFFSET_ALIASES = {"offset": 1.0}


def natural_key(path: str) -> list:
    """Sort key that orders ``2.png`` before ``10.png``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", os.path.basename(path))]


def split_h5_spec(spec: str) -> tuple[str, str | None] | None:
    """``file.h5:/a/b`` -> (``file.h5``, ``/a/b``); None when ``spec`` is not an HDF5 spec."""
    match = re.match(r"^(.*?\.(?:h5|hdf5|hdf))(?::(.*))?$", spec, flags=re.IGNORECASE)
    if not match:
        return None
    dataset = match.group(2)
    return match.group(1), (dataset or None)


def is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")

def describe_formats() -> str:
    return "use file.h5:/dataset, file.tif, or a folder or glob of .png/.tif slices"


# --------------------------------------------------------------------------------------------

def check_output_path(path: str) -> None:
    """One-line errors for an output whose folder is missing or not writable (before any work)."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise EmError(f"output folder does not exist: {os.path.dirname(path) or '.'}")
    if not os.path.isdir(folder):
        raise EmError(f"output folder is not a folder: {os.path.dirname(path)}")
    if not os.access(folder, os.W_OK):
        raise EmError(f"output folder is not writable: {os.path.dirname(path) or '.'}")
    if os.path.isdir(path):
        raise EmError(f"output is an existing folder: {path}")


def output_file(spec: str) -> str:
    """The file a write spec names (``a.h5:/x`` -> ``a.h5``)."""
    h5 = split_h5_spec(spec)
    return h5[0] if h5 else spec


def output_format(spec: str) -> str:
    if split_h5_spec(spec) is not None:
        return "h5"
    if spec.lower().endswith(TIFF_SUFFIXES):
        return "tif"
    raise EmError(f"cannot write {spec}: output must be file.h5[:/dataset] or file.tif")

def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160]
