"""em-watershed: affinities or a boundary map to supervoxels (fragments); BC/BCD instances."""

from __future__ import annotations

import os
import time

import click
import numpy as np

from emtools import io
from emtools.cli.common import (
    FLOAT_TRIPLE,
    contract,
    emit,
    log,
    require_positive,
    version_option,
)
from emtools.cli.segment_common import (
    chunk_regions,
    cropped_metadata,
    read_map,
)
from emtools.errors import EmError
from emtools.meta import provenance_record, require_same_region

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

A chunk from `em-tile split` is processed with its halo and the output covers only the
region it is responsible for (ids 1..n per chunk; `em-agglomerate offsets` makes them
globally unique). Float inputs must lie in [0, 1]; uint8 means value / 255.

\b
Examples:
  em-watershed affs.h5:/affs -o fragments.h5:/fragments
  em-watershed probs.h5:/boundary --mode 3d --threshold 0.3 --min-size 50 -o frags.h5
  em-watershed snemi-probabilities.tif --invert --voxel-size 30,6,6 -o frags.h5
  em-watershed chunks/chunk_0-72_0-288_0-288.h5 -o frags/chunk_0-72_0-288_0-288.h5
  em-watershed mito_fg.h5 --instance bc --contour mito_contour.h5 -o mito.h5:/instances
"""


@click.command(help=HELP)
@click.argument("input_spec", metavar="INPUT")
@click.option("-o", "--output", required=True, help="Output labels: file.h5[:/dataset] or file.tif.")
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
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None, help="Voxel size z,y,x in nm (overrides the file's).")
@click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")
@click.option("--skip-existing", is_flag=True, help="Do nothing if OUTPUT exists (resume a batch).")
@version_option(TOOL)
@contract(TOOL)
def main(input_spec, output, seed_method, mode, threshold, radius, min_distance, sigma, min_seed_size, min_size, small,
         affinity_reduce, invert, instance, contour_spec, distance_spec, seed_foreground, seed_contour, seed_distance,
         mask_foreground, mask_distance, voxel_size_nm, compression, skip_existing):
    from emtools.segment import watershed

    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    io.output_format(output)
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    for name, value in (("--threshold", threshold), ("--seed-foreground", seed_foreground),
                        ("--seed-contour", seed_contour), ("--mask-foreground", mask_foreground)):
        if not 0.0 <= value <= 1.0:
            raise EmError(f"{name} must be in [0, 1], got {value:g}")
    for name, value in (("--radius", radius), ("--min-distance", min_distance), ("--sigma", sigma),
                        ("--min-size", min_size), ("--min-seed-size", min_seed_size)):
        if value < 0:
            raise EmError(f"{name} must not be negative, got {value:g}")
    if instance is None and (contour_spec or distance_spec):
        raise EmError("--contour and --distance are for --instance bc/bcd")
    if instance is not None and contour_spec is None:
        raise EmError(f"--instance {instance} needs --contour")
    if instance == "bcd" and distance_spec is None:
        raise EmError("--instance bcd needs --distance")
    if instance == "bc" and distance_spec is not None:
        raise EmError("--distance is for --instance bcd")
    if skip_existing and os.path.exists(io.output_file(output)):
        log.info("exists, skipped: %s", output)
        emit(io.output_file(output))
        return

    started = time.perf_counter()
    if instance is None:
        source = read_map(input_spec, voxel_size_nm, invert=invert)
    else:
        source = read_map(input_spec, voxel_size_nm, invert=invert, kind="boundary")
    meta = source.meta
    data_box, responsible = chunk_regions(meta, source.box)
    voxel = meta.voxel_size_nm
    if mode == "auto":
        mode = "2d" if voxel[0] >= 2.0 * min(voxel[1], voxel[2]) else "3d"
    inputs = [(input_spec, meta)]
    params = {"mode": mode, "voxel_size_nm": list(voxel)}

    if instance is None:
        if source.kind == "affinities":
            boundary = watershed.boundary_from_affinities(source.values, affinity_reduce)
            params["affinity_reduce"] = affinity_reduce
        else:
            boundary = source.values
        del source
        labels = watershed.fragments(
            boundary, seed_method=seed_method, mode=mode, threshold=threshold, voxel_size_nm=voxel,
            radius=radius, min_distance=min_distance, sigma=sigma, min_seed_size=min_seed_size,
            min_size=min_size, merge_small=small == "merge",
        )
        params.update(seeds=seed_method, threshold=threshold, radius=radius, min_distance=min_distance,
                      sigma=sigma, min_seed_size=min_seed_size, min_size=min_size, small=small, invert=invert)
    else:
        foreground = source.values
        contour = read_map(contour_spec, voxel_size_nm, kind="boundary")
        require_same_region((input_spec, meta, source.box), (contour_spec, contour.meta, contour.box))
        inputs.append((contour_spec, contour.meta))
        distance = None
        if distance_spec is not None:
            distance, distance_meta, distance_box = _read_distance(distance_spec, voxel_size_nm)
            require_same_region((input_spec, meta, source.box), (distance_spec, distance_meta, distance_box))
            inputs.append((distance_spec, distance_meta))
        labels = watershed.instance_segmentation(
            foreground, contour.values, distance, seed_foreground=seed_foreground, seed_contour=seed_contour,
            seed_distance=seed_distance, mask_foreground=mask_foreground, mask_distance=mask_distance,
            min_seed_size=min_seed_size, min_size=min_size, mode=mode,
        )
        params.update(instance=instance, seed_foreground=seed_foreground, seed_contour=seed_contour,
                      seed_distance=seed_distance, mask_foreground=mask_foreground, mask_distance=mask_distance,
                      min_seed_size=min_seed_size, min_size=min_size, invert=invert)

    if responsible != data_box:
        labels = _crop_and_renumber(labels, data_box.local(responsible))
    count = int(labels.max()) if labels.size else 0
    out_meta = cropped_metadata(meta, responsible, {"fragment_count": count})
    out_meta = out_meta.with_record(provenance_record(TOOL, params, inputs))
    path = io.write_volume(output, labels, out_meta, compression=compression)
    elapsed = time.perf_counter() - started
    log.info("%d %s, responsible for %s (global voxels z,y,x), %.1f s, %.2f Mvoxel/s",
             count, "instances" if instance else "fragments", responsible.text(), elapsed,
             data_box.size / max(elapsed, 1e-9) / 1e6)
    emit(path)


def _read_distance(spec, voxel_size_nm):
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        if len(source.shape) != 3:
            raise EmError(f"the distance map must be 3D (z, y, x), but {spec} has {len(source.shape)} dimensions")
        return source.read(), source.meta, source.box


def _crop_and_renumber(labels: np.ndarray, local) -> np.ndarray:
    import fastremap

    cropped = np.ascontiguousarray(labels[local])
    cropped, _ = fastremap.renumber(cropped, preserve_zero=True, in_place=True)
    return cropped.astype(np.uint64, copy=False)


if __name__ == "__main__":
    main()
