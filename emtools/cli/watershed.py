"""em-watershed: affinities or a boundary map to supervoxels (fragments); BC/BCD instances;
segments from long-range affinities by the mutex watershed (--method mutex)."""

from __future__ import annotations

import os

import click

from emtools.cli.common import FLOAT_TRIPLE, INT_TRIPLE, contract, emit, log, version_option

TOOL = "em-watershed"

HELP = """Make supervoxels (fragments) from INPUT: nearest-neighbour affinities (3, z, y, x)
or a boundary map (z, y, x); write them as uint64 labels 1..n to OUTPUT.

\b
How (see emtools.segment.watershed):
  1. affinities -> boundary map: 1 - the mean (--affinity-reduce mean) or the smallest
     (min) affinity of each voxel's 6 edges. Affinity channel c links a voxel to its
     neighbour one step back along axis c (z, y, x), as waterz and gunpowder store them.
  2. seeds: maxima of the distance transform of (boundary < --threshold), anisotropic
     (voxel size), within --radius voxels (--seeds distance); or connected components of
     (boundary < --threshold) (--seeds components).
  3. seeded watershed on the boundary map, per z section (--mode 2d, for anisotropic
     ssTEM) or in 3D; auto picks 2d when z voxels are >= 2x the in-plane size.
  4. fragments below --min-size voxels merge into a neighbour (or are removed).

Instance mode (--instance bc|bcd) makes mitochondria/nuclei instances as PyTorch
Connectomics' U3D-BC/BCD decoding: INPUT is the foreground probability, --contour (and
--distance for bcd) the other maps; seeds where foreground is high, contour low (and
distance high); the watershed stays inside the foreground.

Mutex watershed (--method mutex; Wolf et al. 2018): segments, not fragments, straight from
affinities with long-range channels (C, z, y, x), no seeds and no agglomeration. The
offsets (z,y,x per channel, steps back; the first three the nearest neighbours) come from
the file's affinity_offsets (em-predict writes them) or --offsets. Edges are visited by
decreasing weight: a nearest-neighbour edge (weight = affinity) merges two clusters unless
a long-range edge keeps them apart; a long-range edge (weight = 1 - affinity + --bias) keeps
two clusters apart unless they are one already. --mode 2d uses only in-plane offsets.
--stride and --long-range-fraction (chosen by --subset-seed) thin the long-range edges for speed;
--min-size and --small act as above. The watershed-only options are refused with it.

A chunk from `em-tile split` is processed with its halo and the output covers only the
region it is responsible for (ids 1..n per chunk; `em-agglomerate offsets` makes them
globally unique). Float inputs must lie in [0, 1]; uint8 means value / 255.

--into ARRAY writes that region straight into one zarr array (made by `em-tile create`
with the split's --chunk) instead of a file: many chunks at once, no merge; each store chunk
is written atomically and the region's done marker last, which --skip-existing checks. The
region spec written goes to stdout.

\b
Examples:
  em-watershed affs.h5:/affs -o fragments.h5:/fragments
  em-watershed probs.h5:/boundary --mode 3d --threshold 0.3 --min-size 50 -o frags.h5
  em-watershed snemi-probabilities.tif --invert --voxel-size 30,6,6 -o frags.h5
  em-watershed chunks/chunk_0-72_0-288_0-288.h5 -o frags/chunk_0-72_0-288_0-288.h5
  em-watershed mito_fg.h5 --instance bc --contour mito_contour.h5 -o mito.h5:/instances
  em-watershed lr_affs.h5:/affs --method mutex --min-size 50 -o seg.h5:/segmentation
  em-watershed affs.h5:/affs -o frags.h5 --preview frags.png
  em-watershed affs9.h5 --method mutex --offsets '[[-1,0,0],[0,-1,0],[0,0,-1],[-3,0,0],[0,-9,0],[0,0,-9]]' -o seg.h5
  em-watershed 'affs.zarr/affs[0:64,0:512,0:512]+8,64,64' --into frags.zarr/frags --skip-existing
"""


@click.command(help=HELP)
@click.argument("input_spec", metavar="INPUT")
@click.option("-o", "--output", default=None, help="Output labels: file.h5[:/dataset], store.zarr/array or file.tif.")
@click.option("--into", "into", default=None, metavar="ARRAY",
              help="Instead of -o: write the region INPUT is responsible for into this existing zarr array "
                   "(store.zarr/array, from em-tile create).")
@click.option("--method", type=click.Choice(["watershed", "mutex"]), default="watershed", show_default=True,
              help="Seeded watershed (fragments), or the mutex watershed on long-range affinities (segments).")
@click.option("--seeds", "seed_method", type=click.Choice(["distance", "components"]), default="distance", show_default=True,
              help="Seeds from distance-transform maxima, or from connected low-boundary regions.")
@click.option("--mode", type=click.Choice(["auto", "2d", "3d"]), default="auto", show_default=True,
              help="Seeds and flooding per z section (2d) or in 3D; auto: 2d when z voxels are >= 2x the in-plane size.")
@click.option("--threshold", type=float, default=0.3, show_default=True, help="Boundary value below which a voxel is inside a cell (for the seeds).")
@click.option("--radius", type=float, default=4.0, show_default=True, help="Seeds are distance maxima within this many (finest-axis) voxels.")
@click.option("--min-distance", type=float, default=1.0, show_default=True, help="Smallest distance to the boundary of a seed (finest-axis voxels).")
@click.option("--sigma", type=float, default=0.0, show_default=True, help="Gaussian smoothing of the distance transform before finding maxima (voxels).")
@click.option("--min-seed-size", type=int, default=1, show_default=True, help="Smallest seed (voxels) for --seeds components.")
@click.option("--min-size", type=int, default=20, show_default=True, help="Fragments below this many voxels merge into a neighbour (0: keep all).")
@click.option("--small", type=click.Choice(["merge", "remove"]), default="merge", show_default=True, help="What happens to fragments below --min-size.")
@click.option("--affinity-reduce", type=click.Choice(["mean", "min"]), default="mean", show_default=True,
              help="Boundary from affinities: 1 - mean or 1 - min of a voxel's 6 edge affinities.")
@click.option("--invert", is_flag=True, help="INPUT is high inside cells (e.g. a cell-interior probability): use 1 - INPUT.")
@click.option("--instance", type=click.Choice(["bc", "bcd"]), default=None, help="Instance mode: INPUT is the foreground probability.")
@click.option("--contour", "contour_spec", default=None, help="Contour probability map (instance modes).")
@click.option("--distance", "distance_spec", default=None, help="Signed distance map in [-1, 1] (float) or uint8 (bcd).")
@click.option("--seed-foreground", type=float, default=0.9, show_default=True, help="Instance seeds: foreground above this.")
@click.option("--seed-contour", type=float, default=0.8, show_default=True, help="Instance seeds: contour below this.")
@click.option("--seed-distance", type=float, default=0.5, show_default=True, help="Instance seeds: distance above this (bcd).")
@click.option("--mask-foreground", type=float, default=0.85, show_default=True, help="Instances grow where foreground is above this.")
@click.option("--mask-distance", type=float, default=0.0, show_default=True, help="... and distance above this (bcd).")
@click.option("--offsets", default=None, metavar="JSON",
              help="Mutex: affinity offsets z,y,x per channel as JSON, if the file has no affinity_offsets.")
@click.option("--bias", type=float, default=0.0, show_default=True,
              help="Mutex: added to the long-range (repulsive) weights 1 - affinity, in [-1, 1]; positive splits more.")
@click.option("--stride", type=INT_TRIPLE, default="1,1,1", show_default=True,
              help="Mutex: long-range edges only from voxels on this z,y,x grid (faster).")
@click.option("--long-range-fraction", type=float, default=1.0, show_default=True,
              help="Mutex: keep this fraction of the long-range edges, chosen by --subset-seed (deterministic).")
@click.option("--subset-seed", type=int, default=0, show_default=True,
              help="Mutex: which long-range edges --long-range-fraction keeps.")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None, help="Voxel size z,y,x in nm (overrides the file's).")
@click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")
@click.option("--skip-existing", is_flag=True, help="Do nothing if OUTPUT exists (resume a batch).")
@click.option("--preview", default=None, metavar="FILE.png",
              help="Also draw a few z sections: each label in its own colour (the same id, the same colour, every "
                   "run) over INPUT in grey (affinities: the mean of the first three channels).")
@version_option(TOOL)
@contract(TOOL)
def main(input_spec, output, into, voxel_size_nm, compression, skip_existing, contour_spec, distance_spec, offsets,
         preview, **settings):
    # every other option is a field of WatershedSettings, which validates them
    from emtools.segment.jobs import WatershedSettings, watershed_volume
    from emtools.segment.mutex import parse_offsets

    if offsets is not None:
        settings["offsets"] = tuple(tuple(o) for o in parse_offsets(offsets))

    if (output is None) == (into is None):
        raise click.UsageError("give -o OUTPUT or --into ARRAY (one of them)")
    if into is not None:  # the region INPUT is responsible for, in the existing array (checked now)
        from emtools import io

        output = io.into_chunk(into, input_spec, voxel_size_nm)
        if skip_existing and io.output_exists(output):
            log.info("done already, skipped: %s", io.output_file(output))
            emit(io.output_file(output))
            return
    if preview is not None:  # before any work: a bad path leaves no labels either
        from emtools.pictures import check_picture_path

        check_picture_path(preview, "--preview", [output, input_spec, contour_spec, distance_spec])
    from emtools.io import output_file

    existed = skip_existing and os.path.exists(output_file(output))
    path = watershed_volume(input_spec, output, WatershedSettings(**settings), contour_spec=contour_spec,
                            distance_spec=distance_spec, voxel_size_nm=voxel_size_nm, compression=compression,
                            skip_existing=skip_existing)
    if preview is not None and not (skip_existing and os.path.exists(preview)):
        from emtools.pictures import labels_picture, write_picture

        write_picture(preview, lambda: labels_picture([output], input_spec, voxel_size_nm=voxel_size_nm),
                      written=[] if existed else [output])
    emit(path)
    if preview is not None:
        emit(preview)


if __name__ == "__main__":
    main()
