"""Volume specs and output paths: parsing, validation, and small shared helpers."""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Sequence


from emtools.errors import EmError
from emtools.tiling.geometry import Box

log = logging.getLogger("emtools")

H5_SUFFIXES = (".h5", ".hdf5", ".hdf")
ZARR_SUFFIX = ".zarr"
TIFF_SUFFIXES = (".tif", ".tiff")
SLICE_SUFFIXES = (".png", ".tif", ".tiff")
DEFAULT_DATASET = "main"
COMPRESSIONS = ("gzip", "lzf", "none")
TMP_MARK = ".emtmp-"
# The prefix of an internal output spec that writes one region into an existing zarr array
# (what --into makes; see into_spec): ``into:store.zarr/array[z0:z1,y0:y1,x0:x1]``.
INTO_PREFIX = "into:"
KNOWN_ATTRS = {"axes", "offset_nm", "voxel_size_nm", "provenance"}
# Attribute names other tools use for the same things (read only; we always write ours).
VOXEL_ALIASES = {"resolution": 1.0, "voxel_size": 1.0, "element_size_um": 1000.0}
OFFSET_ALIASES = {"offset": 1.0}


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` on this host still runs (a temporary named with it is not stale)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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


def split_zarr_spec(spec: str) -> tuple[str, str] | None:
    """``a/store.zarr/g/raw`` -> (``a/store.zarr``, ``g/raw``); ``store.zarr`` -> (``store.zarr``, ``''``).

    The store is the first path component that ends in ``.zarr``; None when there is none.
    """
    match = re.match(r"^(.*?\.zarr)(?:/+(.*?))?/*$", spec, flags=re.IGNORECASE)
    if not match or not match.group(1).strip("/"):
        return None
    return match.group(1), (match.group(2) or "").strip("/")


# ``SPEC[z0:z1,y0:y1,x0:x1]`` (array indices) with an optional ``+H`` or ``+HZ,HY,HX`` halo.
_REGION = re.compile(
    r"^(?P<base>.+)\[\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*,\s*(\d+)\s*:\s*(\d+)\s*\]"
    r"(?:\+(?P<halo>\d+(?:,\d+,\d+)?))?$"
)


def split_region(spec: str) -> tuple[str, Box | None, tuple[int, int, int]]:
    """``raw.zarr/raw[64:128,0:256,0:256]+8,32,32`` -> (``raw.zarr/raw``, the box in array
    indices, halo ``(8, 32, 32)``); a spec without a region -> (spec, None, (0, 0, 0))."""
    match = _REGION.match(spec)
    if not match:
        return spec, None, (0, 0, 0)
    numbers = [int(v) for v in match.groups()[1:7]]
    box = Box(tuple(numbers[0::2]), tuple(numbers[1::2]))
    if any(e <= b for b, e in zip(box.begin, box.end)):
        raise EmError(f"empty region [{box.text()}] in {spec}: each axis needs begin < end")
    halo_text = match.group("halo")
    halo = tuple(int(v) for v in halo_text.split(",")) if halo_text else (0, 0, 0)
    if len(halo) == 1:
        halo = halo * 3
    return match.group("base"), box, halo  # type: ignore[return-value]


def region_spec(base: str, region: Box, halo: Sequence[int] = (0, 0, 0)) -> str:
    """The spec of ``region`` (array indices) of ``base``, read with ``halo`` voxels around it."""
    text = f"{base}[{region.text()}]"
    if any(halo):
        text += "+" + (str(halo[0]) if len(set(halo)) == 1 else ",".join(str(int(h)) for h in halo))
    return text


def split_into(spec: str) -> str | None:
    """The region spec of an ``into:`` output spec, or None when ``spec`` is not one."""
    return spec[len(INTO_PREFIX):] if spec.startswith(INTO_PREFIX) else None


def is_glob(spec: str) -> bool:
    return any(ch in spec for ch in "*?[")

def describe_formats() -> str:
    return ("use file.h5:/dataset, store.zarr/array, file.tif, or a folder or glob of .png/.tif slices "
            "(any of them with a region [z0:z1,y0:y1,x0:x1])")


# --------------------------------------------------------------------------------------------

def check_output_path(path: str) -> None:
    """One-line errors for an output whose folder is missing or not writable (before any work).

    A zarr array path (``store.zarr/array``, or its region for --into) is checked as a zarr
    output: an existing store must be writable and the array must not be a group; a region
    needs the array to exist.
    """
    base, region, _ = split_region(path)
    if split_zarr_spec(base) is not None:
        check_zarr_output(base, region is not None)
        return
    _check_plain_output(path)


def _check_plain_output(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.exists(folder):
        raise EmError(f"output folder does not exist: {os.path.dirname(path) or '.'}")
    if not os.path.isdir(folder):
        raise EmError(f"output folder is not a folder: {os.path.dirname(path)}")
    if not os.access(folder, os.W_OK):
        raise EmError(f"output folder is not writable: {os.path.dirname(path) or '.'}")
    if os.path.isdir(path):
        raise EmError(f"output is an existing folder: {path}")


def zarr_array_dir(spec: str) -> str:
    """The folder of the zarr array a write spec names (``s.zarr`` alone: ``s.zarr/main``)."""
    root, path = split_zarr_spec(spec)  # type: ignore[misc]
    return f"{root}/{path or DEFAULT_DATASET}"


def zarr_node(folder: str) -> str | None:
    """``array``, ``group`` or None: what a folder of a zarr store is (v3 or v2), from its files."""
    v3 = os.path.join(folder, "zarr.json")
    if os.path.isfile(v3):
        try:
            with open(v3) as handle:
                kind = json.load(handle).get("node_type")
        except (OSError, ValueError, AttributeError) as exc:
            raise EmError(f"cannot read {v3}: {short_reason(exc)}") from exc
        return kind if kind in ("array", "group") else None
    if os.path.isfile(os.path.join(folder, ".zarray")):
        return "array"
    if os.path.isfile(os.path.join(folder, ".zgroup")):
        return "group"
    return None


def check_zarr_output(spec: str, into: bool = False) -> None:
    """One-line errors for a zarr output that cannot be written (before any work).

    ``into``: a region goes into an existing array (it must be there); otherwise the array is
    (re)written whole, and the store may be new (its parent folder must exist).
    """
    root, path = split_zarr_spec(spec)  # type: ignore[misc]
    array = zarr_array_dir(spec)
    if into:
        named = array if path else root
        if zarr_node(named) == "group":
            raise EmError(f"{named} is a zarr group, not an array; name the array (e.g. {named}/ARRAY)")
        if zarr_node(array) != "array":
            raise EmError(f"no zarr array {array}: create it first (em-tile create {array} --like VOLUME "
                          "--dtype TYPE --chunk Z,Y,X)")
        if not os.access(array, os.W_OK):
            raise EmError(f"cannot write into {array}: {_not_writable(array)}")
        return
    if os.path.exists(root):
        if not os.path.isdir(root):
            raise EmError(f"output store {root} exists and is not a folder")
        if not os.access(root, os.W_OK):
            raise EmError(f"cannot write into {root}: {_not_writable(root)}")
        if zarr_node(root) == "array":
            raise EmError(f"{root} is a zarr array, not a store with groups; write a new store")
        if os.path.isfile(os.path.join(root, ".zgroup")):
            raise EmError(f"{root} is a zarr v2 store; emtools writes zarr v3 arrays: write a new store")
        parts = array[len(root):].strip("/").split("/")
        for depth in range(1, len(parts)):
            above = "/".join([root.rstrip("/"), *parts[:depth]])
            if zarr_node(above) == "array":
                raise EmError(f"{above} is a zarr array; arrays cannot hold other arrays")
        kind = zarr_node(array)
        if kind == "group":
            raise EmError(f"{array} is a zarr group, not an array; name an array inside it, e.g. {array}/main")
        if kind is None and os.path.exists(array):
            raise EmError(f"{array} exists and is not a zarr array")
        return
    _check_plain_output(root.rstrip("/"))


def _not_writable(path: str) -> str:
    try:
        read_only = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        read_only = False
    return "read-only file system" if read_only else "not writable"


def output_file(spec: str) -> str:
    """The path a write spec names: ``a.h5:/x`` -> ``a.h5``; ``s.zarr/x`` -> ``s.zarr/x`` (the
    array's folder); ``into:s.zarr/x[...]`` -> ``s.zarr/x[...]`` (the region written, a spec)."""
    into = split_into(spec)
    if into is not None:
        return into
    spec = split_region(spec)[0]  # an input's region: the file or array it reads
    h5 = split_h5_spec(spec)
    if h5:
        return h5[0]
    if split_zarr_spec(spec) is not None:
        return zarr_array_dir(spec)
    return spec


def output_format(spec: str) -> str:
    """``h5``, ``tif``, ``zarr`` or ``into`` (a region into an existing zarr array)."""
    if split_into(spec) is not None:
        return "into"
    if split_region(spec)[1] is not None:
        raise EmError(f"cannot write {spec}: a region is not an output; to write one region into an existing "
                      "zarr array, use --into ARRAY")
    if split_h5_spec(spec) is not None:
        return "h5"
    if split_zarr_spec(spec) is not None:
        return "zarr"
    if spec.lower().endswith(TIFF_SUFFIXES):
        return "tif"
    raise EmError(f"cannot write {spec}: output must be file.h5[:/dataset], store.zarr[/array] or file.tif")

def fmt_shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape) if len(shape) else "scalar"


def short_reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:160]
