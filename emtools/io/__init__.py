"""The one module that touches files: HDF5 (h5py), TIFF (tifffile) and PNG slices (Pillow).

Volume specs (what users type):

- ``file.h5:/group/dataset`` (also ``.hdf5``, ``.hdf``); ``file.h5`` alone when it holds exactly
  one dataset (reading) or to write the dataset ``/main``.
- ``file.tif`` / ``file.tiff``: a multi-page stack, one page per z section.
- a folder, or a glob such as ``'raw/*.png'``, of 2D ``.png``/``.tif`` slices, read in natural
  sort order (``2.png`` before ``10.png``).

Reading is lazy: :func:`open_volume` returns a :class:`VolumeSource` whose ``read(box)`` loads
only that region (HDF5 hyperslabs; one page or slice file per z section, with a small cache so a
z-ordered sweep decodes each section about once). Writing goes through :class:`VolumeWriter`,
which writes into a temporary file in the destination folder and renames it into place only when
everything succeeded, so an interrupted or failed run leaves the old output or none.

Metadata (see :mod:`emtools.meta`) is stored as HDF5 attributes ``axes``, ``offset_nm``,
``voxel_size_nm``, ``provenance`` (JSON text) plus one attribute per extra key; in TIFF as one JSON
object in the first page's ImageDescription.
"""

from emtools.io.readers import VolumeSource, list_datasets, open_volume, read_volume
from emtools.io.specs import (
    COMPRESSIONS,
    DEFAULT_DATASET,
    H5_SUFFIXES,
    SLICE_SUFFIXES,
    TIFF_SUFFIXES,
    check_output_path,
    describe_formats,
    natural_key,
    output_file,
    output_format,
    split_h5_spec,
)
from emtools.io.writers import AllOrNothing, VolumeWriter, atomic_path, atomic_text, parse_compression, write_png, write_volume

__all__ = [
    "COMPRESSIONS", "DEFAULT_DATASET", "H5_SUFFIXES", "SLICE_SUFFIXES", "TIFF_SUFFIXES",
    "AllOrNothing", "VolumeSource", "VolumeWriter", "atomic_path", "atomic_text", "check_output_path", "describe_formats",
    "list_datasets", "natural_key", "open_volume", "output_file", "output_format",
    "parse_compression", "read_volume", "split_h5_spec", "write_png", "write_volume",
]
