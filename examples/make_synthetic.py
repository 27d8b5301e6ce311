#!/usr/bin/env python
"""Make a synthetic EM volume with ground truth (emtools.synth) and write it as HDF5/TIFF.

Example:
    python examples/make_synthetic.py raw.h5:/image gt.h5:/neurons --shape 32,128,128 --seed 1

IMAGE gets the uint8 EM-like image, LABELS the uint64 neuron ids (0 on membranes); --mitochondria
SPEC also writes the mitochondria instances; --affinities SPEC writes noisy nearest-neighbour
affinities (3, z, y, x) of the labels (emtools.affinities.noisy_affinities: blurred exact
affinities plus smooth and pixel noise), which stand in for a network's prediction. Each carries its voxel size and a provenance record.
The written paths are printed on stdout; errors are one line on stderr (exit 1; 2 for usage
errors). The same arguments give the same bytes.
"""

import argparse
import sys

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata, provenance_record
from emtools.synth import make_synthetic_volume

PROG = "make_synthetic.py"


def comma_triple(kind):
    def parse(text):
        try:
            values = tuple(kind(part) for part in text.split(","))
        except ValueError:
            values = ()
        if len(values) != 3:
            raise argparse.ArgumentTypeError(f"expected 3 comma-separated values z,y,x, got {text!r}")
        return values

    return parse


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", help="output spec for the image, e.g. raw.h5:/image")
    parser.add_argument("labels", help="output spec for the neuron labels, e.g. gt.h5:/neurons")
    parser.add_argument("--mitochondria", metavar="SPEC", help="also write the mitochondria instances here")
    parser.add_argument("--affinities", metavar="SPEC", help="also write noisy affinities (3, z, y, x) here")
    parser.add_argument("--shape", type=comma_triple(int), default=(32, 128, 128), help="z,y,x voxels (default 32,128,128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--voxel-size", type=comma_triple(float), default=(40.0, 4.0, 4.0), help="z,y,x nm (default 40,4,4)")
    parser.add_argument("--cell-diameter", type=float, default=1200.0, help="mean neurite diameter in nm (default 1200)")
    args = parser.parse_args(argv)
    try:
        extra = [spec for spec in (args.mitochondria, args.affinities) if spec]
        for spec in [args.image, args.labels] + extra:
            io.check_output_path(io.output_file(spec))
            io.output_format(spec)
        volume = make_synthetic_volume(
            args.shape, seed=args.seed, voxel_size_nm=args.voxel_size,
            mean_cell_diameter_nm=args.cell_diameter, mitochondria=bool(args.mitochondria),
        )
        params = {"shape_zyx": list(args.shape), "seed": args.seed, "voxel_size_nm": list(args.voxel_size),
                  "cell_diameter_nm": args.cell_diameter}
        meta = Metadata(voxel_size_nm=volume.voxel_size_nm).with_record(provenance_record("make_synthetic", params, []))
        outputs = [(args.image, volume.image), (args.labels, volume.neurons)]
        if args.mitochondria:
            outputs.append((args.mitochondria, volume.mitochondria))
        for spec, array in outputs:
            print(io.write_volume(spec, array, meta))
        if args.affinities:
            from emtools.affinities import noisy_affinities

            affs = noisy_affinities(volume.neurons, seed=args.seed)
            print(io.write_volume(args.affinities, affs, meta.replace(axes="czyx")))
    except EmError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{PROG}: error: {error.strerror or error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
