#!/usr/bin/env python
"""Write a region of a volume to HDF5, keeping where it lies (the world offset) and its voxel size.

Example:
    python examples/scripts/crop.py '../shared/data/fib25/train/image' --voxel-size 10,10,10 \\
        --region 100:150,:,: -o test.h5:/image

The examples cut their held-out test blocks with it. --region takes em-train's val_region
forms: 'z0:z1,y0:y1,x0:x1' (empty bounds: the whole axis; negative: from the end), 'last 5 z',
'first 64 y' or 'all'. --invert makes a mask's zero voxels the inside (membrane masks such as
the VNC stack's). --components 2d|3d turns a binary mask (non-zero = inside a cell, as ISBI
2012's label PNGs) into instances: connected components per z section or in 3D, the ground
truth em-train's label_components makes. --dtype converts the values (e.g. uint64 labels).
The written path is printed on stdout; errors are one line on stderr (exit 1; 2 for usage
errors); the output is written atomically, the input only read.
"""

import argparse
import sys

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata, provenance_record

PROG = "crop.py"


def comma_triple(text):
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected 3 comma-separated values z,y,x, got {text!r}")
    return values


def crop(spec, output, region="all", voxel_size_nm=None, components=None, dtype=None, invert=False) -> str:
    """Write ``region`` of the volume ``spec`` to ``output`` (HDF5 spec); returns the path written."""
    from emtools.train.data import label_components, region_box

    io.check_output_path(io.output_file(output))
    if io.output_format(output) != "h5":
        raise EmError(f"the output must be HDF5 (file.h5:/dataset), got {output}")
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"{spec} has channels (shape {'x'.join(map(str, source.shape))}); a 3D volume is needed")
        box = region_box(region, source.shape_zyx, "--region")
        data = source.read(box)
        meta = source.meta
    if invert:
        data = (data == 0).astype("uint8")
    if components:
        data = label_components(data, components)
    if dtype:
        data = data.astype(dtype)
    offset = tuple(o + b * v for o, b, v in zip(meta.offset_nm, box.begin, meta.voxel_size_nm))
    params = {"region": region, "box": box.text(), "invert": invert, "components": components, "dtype": dtype}
    out_meta = Metadata(voxel_size_nm=meta.voxel_size_nm, offset_nm=offset, provenance=meta.provenance)
    return io.write_volume(output, data, out_meta.with_record(provenance_record("crop", params, [(spec, meta)])))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("volume", help="input volume spec (file.h5:/dataset, file.tif, a folder or glob of slices)")
    parser.add_argument("-o", "--output", required=True, help="output spec, file.h5:/dataset")
    parser.add_argument("--region", default="all", help="'z0:z1,y0:y1,x0:x1', 'last N z', 'first N y' or 'all' (default)")
    parser.add_argument("--voxel-size", type=comma_triple, help="z,y,x nm (overrides the input's; slices have none)")
    parser.add_argument("--invert", action="store_true", help="a mask's zero voxels are the inside (membrane masks)")
    parser.add_argument("--components", choices=("2d", "3d"), help="label the connected components of a binary mask")
    parser.add_argument("--dtype", choices=("uint8", "uint16", "uint32", "uint64"), help="convert the values")
    args = parser.parse_args(argv)
    try:
        print(crop(args.volume, args.output, args.region, args.voxel_size, args.components, args.dtype, args.invert))
    except EmError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{PROG}: error: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
