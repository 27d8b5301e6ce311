"""The one module that touches files: HDF5 (h5py), zarr (zarr-python 3), TIFF (tifffile) and PNG
slices (Pillow).

Volume specs (what users type):

- ``file.h5:/group/dataset`` (also ``.hdf5``, ``.hdf``); ``file.h5`` alone when it holds exactly
  one dataset (reading) or to write the dataset ``/main``.
- ``store.zarr/group/array``: an array in a zarr store (v2 or v3 to read; v3 is written, with
  OME-Zarr ``multiscales`` on the group above); ``store.zarr`` alone when it holds exactly one
  array (reading) or to write the array ``main``. See :mod:`emtools.io.zarrs`.
- ``file.tif`` / ``file.tiff``: a multi-page stack, one page per z section.
- a folder, or a glob such as ``'raw/*.png'``, of 2D ``.png``/``.tif`` slices, read in natural
  sort order (``2.png`` before ``10.png``).

- any of these with a region, ``SPEC[z0:z1,y0:y1,x0:x1]`` (array indices) and an optional halo
  ``+H`` or ``+HZ,HY,HX``: read as a chunk of SPEC, without copying it out (``em-tile split
  --format region`` prints them). See :mod:`emtools.io.regions`.

Reading is lazy: :func:`open_volume` returns a :class:`VolumeSource` whose ``read(box)`` loads
only that region (HDF5 hyperslabs; one page or slice file per z section, with a small cache so a
z-ordered sweep decodes each section about once). Writing goes through :class:`VolumeWriter`,
which writes into a temporary file in the destination folder and renames it into place only when
everything succeeded, so an interrupted or failed run leaves the old output or none. An output
spec made by :func:`into_spec` writes one region into an existing zarr array instead, from one
of many workers at once (``--into``), each store chunk atomically, with a done marker last.

Metadata (see :mod:`emtools.meta`) is stored as HDF5 attributes ``axes``, ``offset_nm``,
``voxel_size_nm``, ``provenance`` (JSON text) plus one attribute per extra key; in zarr as the same
keys in plain JSON; in TIFF as one JSON object in the first page's ImageDescription.
"""

from emtools.io.readers import VolumeSource, list_datasets, open_volume, read_volume
from emtools.io.regions import into_chunk, into_spec, region_is_done, regions_done
from emtools.io.specs import (
    COMPRESSIONS,
    DEFAULT_DATASET,
    H5_SUFFIXES,
    SLICE_SUFFIXES,
    TIFF_SUFFIXES,
    ZARR_SUFFIX,
    check_output_path,
    describe_formats,
    natural_key,
    output_file,
    output_format,
    region_spec,
    split_h5_spec,
    split_region,
    split_zarr_spec,
)
from emtools.io.zarrs import ZarrArrayInfo, create_array
from emtools.io.writers import AllOrNothing, VolumeWriter, atomic_path, atomic_text, parse_compression, write_png, write_volume

__all__ = [
    "COMPRESSIONS", "DEFAULT_DATASET", "H5_SUFFIXES", "SLICE_SUFFIXES", "TIFF_SUFFIXES", "ZARR_SUFFIX",
    "AllOrNothing", "VolumeSource", "VolumeWriter", "ZarrArrayInfo", "atomic_path", "atomic_text", "check_output_path",
    "create_array", "describe_formats", "into_chunk", "into_spec", "list_datasets", "natural_key", "open_volume", "output_exists",
    "output_file", "output_format", "parse_compression", "read_volume", "region_is_done", "region_spec", "regions_done",
    "split_h5_spec", "split_region", "split_zarr_spec", "write_png", "write_volume",
]


def output_exists(spec: str) -> bool:
    """Whether an output spec's result is there: its file, zarr array, or (``into:``) the region's
    done marker. What ``--skip-existing`` asks."""
    import os

    if output_format(spec) == "into":
        return region_is_done(spec)
    return os.path.exists(output_file(spec))
