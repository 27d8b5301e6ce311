"""em-agglomerate: merge supervoxels hierarchically; whole volumes or chunk by chunk.

Each command maps its options to one library call: :mod:`emtools.segment.jobs` (segment,
replay) and :mod:`emtools.segment.chunked` (offsets, edges, stitch, relabel).
"""

from __future__ import annotations

import click

from emtools.cli.common import FLOAT_TRIPLE, contract, emit, expand_stdin_specs, version_option
from emtools.segment.scores import score_help

TOOL = "em-agglomerate"

SCORE_HELP = score_help()  # one clause per score of the registry (emtools.segment.scores)


@click.group(
    epilog="Examples:\n\n\b\n"
    "  em-agglomerate segment frags.h5 affs.h5:/affs -t 0.1,0.3,0.5 -o 'seg_{threshold}.h5:/seg'\n"
    "  em-agglomerate replay frags.h5 --history merges.tsv -t 0.35 -o seg_0.35.h5\n"
    "  em-agglomerate offsets frags/*.h5 -o offsets.tsv\n"
)
@version_option(TOOL)
def main():
    """Merge supervoxels (from em-watershed) into segments, several thresholds in one pass.

    Costs are 1 - a statistic of the affinities along each contact (waterz's convention): a
    pair merges at threshold t when its cost is below t; higher thresholds merge more.
    Affinities (3, z, y, x) or a boundary map (z, y, x; a contact's affinity is 1 - the larger
    boundary value of its two voxels) give the contacts their values.

    \b
    Chunk by chunk (each step one command per chunk, so make -j or a job array runs them):
      em-tile split affs.h5:/affs --chunk 64,512,512 --halo 8,64,64 -o chunks/
      em-watershed chunks/C.h5 -o frags/C.h5                      # per chunk
      em-agglomerate offsets frags/*.h5 -o offsets.tsv            # global ids
      em-agglomerate edges chunks/C.h5 --offsets offsets.tsv -o edges/C.tsv   # per chunk
      em-agglomerate stitch edges/*.tsv --offsets offsets.tsv -t 0.3,0.5 -o lut.tsv
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 -o seg/C.h5
      em-tile merge seg/*.h5 -o seg.h5:/seg

    \b
    Or the last two steps into one zarr array, all chunks at once, no merge:
      em-tile create seg.zarr/seg --like affs.h5:/affs --dtype uint64 --chunk 64,512,512
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 --into seg.zarr/seg
    """


def _score_option(func):
    return click.option("--score", default="mean", show_default=True, help=SCORE_HELP)(func)


def _map_options(func):
    func = click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
                        help="Voxel size z,y,x in nm (overrides the files').")(func)
    func = click.option("--invert", is_flag=True, help="The map is high inside cells: use 1 - map.")(func)
    func = click.option("--bins", type=int, default=256, show_default=True,
                        help="Histogram bins per edge for quantile scores (memory: 4 bytes x bins per edge).")(func)
    return func


def _compression_option(func):
    return click.option("--compression", default="gzip", show_default=True, help="gzip[:LEVEL], lzf (HDF5 only) or none.")(func)


def _preview_option(background: str):
    return click.option("--preview", default=None, metavar="FILE.png",
                        help="Also draw a few z sections: one row per output, each segment in its own colour (the same "
                             f"id, the same colour, every run) over {background}.")


def _check_preview(preview, *others) -> None:
    """Before any work: a bad --preview path leaves no segmentation either."""
    if preview is not None:
        from emtools.pictures import check_picture_path

        check_picture_path(preview, "--preview", others)


def _draw_preview(preview, output, written, labels, background_spec=None, voxel_size_nm=None) -> None:
    """Draw the segmentation files ``labels`` (one row each); if that fails, none of ``written``
    (every output of the run, the history too) remain. Then the paths go to stdout, the preview's last."""
    if preview is not None:
        from emtools.io import split_h5_spec
        from emtools.pictures import labels_picture, write_picture

        dataset = (split_h5_spec(output) or (None, None))[1]  # the files hold the template's dataset
        specs = [f"{path}:{dataset}" if dataset else path for path in labels]
        write_picture(preview, lambda: labels_picture(specs, background_spec, voxel_size_nm=voxel_size_nm), written)
        written = [*written, preview]
    for path in written:
        emit(path)


# ----------------------------------------------------------------------------- segment

@main.command()
@click.argument("fragments_spec", metavar="FRAGMENTS")
@click.argument("map_spec", metavar="AFFINITIES_OR_BOUNDARY")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds in [0, 1].")
@click.option("-o", "--output", required=True, help="Output spec; with several thresholds it must contain {threshold}.")
@click.option("--history", "history_path", default=None, help="Also write the merge history (TSV) here, for em-agglomerate replay.")
@_score_option
@_map_options
@_compression_option
@_preview_option("the map in grey (affinities: the mean of the first three channels)")
@contract(TOOL)
def segment(fragments_spec, map_spec, thresholds_text, output, history_path, score, bins, invert, voxel_size_nm, compression,
            preview):
    """Agglomerate FRAGMENTS with AFFINITIES_OR_BOUNDARY; write one segmentation per threshold.

    The merge history is computed once up to the largest threshold; each output is the
    history's prefix at its threshold (as waterz's thresholds). Segment ids are the smallest
    fragment id they contain. Prints each written path.

    \b
    Examples:
      em-agglomerate segment frags.h5 affs.h5:/affs -t 0.1,0.2,0.3,0.4,0.5 -o 'seg_{threshold}.h5:/seg'
      em-agglomerate segment frags.h5 probs.h5:/boundary --score quantile:50 -t 0.5 -o seg.h5 --history merges.tsv
      em-agglomerate segment frags.h5 affs.h5:/affs -t 0.2,0.4 -o 'seg_{threshold}.h5' --preview seg.png
    """
    from emtools.segment.jobs import agglomerate_volume

    _check_preview(preview, output, fragments_spec, map_spec, history_path)
    written = []
    segmentations = agglomerate_volume(
        fragments_spec, map_spec, thresholds_text, output, history_path=history_path, score=score, bins=bins,
        invert=invert, voxel_size_nm=voxel_size_nm, compression=compression,
        on_written=emit if preview is None else written.append)
    labels = [path for path in segmentations if path != history_path]  # the history comes last
    _draw_preview(preview, output, written, labels, map_spec, voxel_size_nm)


# ----------------------------------------------------------------------------- replay

@main.command()
@click.argument("fragments_spec", metavar="FRAGMENTS")
@click.option("--history", "history_path", required=True, help="Merge history from em-agglomerate segment --history.")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds.")
@click.option("-o", "--output", required=True, help="Output spec; with several thresholds it must contain {threshold}.")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None, help="Voxel size z,y,x in nm.")
@_compression_option
@_preview_option("neutral grey")
@contract(TOOL)
def replay(fragments_spec, history_path, thresholds_text, output, voxel_size_nm, compression, preview):
    """Segment FRAGMENTS at new thresholds from a saved merge history: no affinities, no rerun.

    Thresholds may not exceed the one the history was computed up to.

    \b
    Examples:
      em-agglomerate replay frags.h5 --history merges.tsv -t 0.35,0.45 -o 'seg_{threshold}.h5'
      em-agglomerate replay frags.h5 --history merges.tsv -t 0.35 -o seg.h5 --preview seg.png
    """
    from emtools.segment.jobs import replay_volume

    _check_preview(preview, output, fragments_spec, history_path)
    written = []
    segmentations = replay_volume(fragments_spec, history_path, thresholds_text, output, voxel_size_nm=voxel_size_nm,
                                  compression=compression, on_written=emit if preview is None else written.append)
    _draw_preview(preview, output, written, segmentations, None, voxel_size_nm)


# ----------------------------------------------------------------------------- chunked

@main.command()
@click.argument("fragment_chunks", nargs=-1, required=True, metavar="FRAGMENT_CHUNKS...")
@click.option("-o", "--output", required=True, help="Offsets table (TSV) to write.")
@contract(TOOL)
def offsets(fragment_chunks, output):
    """Give each chunk's fragments a global id range (reads only the files' metadata).

    Chunk k's fragment i becomes offset_k + i; offsets follow the chunks' positions (z-major),
    so the same chunks give the same table however they are listed. Pass - to read paths from
    stdin.

    \b
    Example:
      em-agglomerate offsets frags/*.h5 -o offsets.tsv
    """
    from emtools.segment.chunked import fragment_offsets_table

    emit(fragment_offsets_table(expand_stdin_specs(fragment_chunks), output))


@main.command()
@click.argument("chunk_spec", metavar="CHUNK")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("-o", "--output", required=True, help="Edge table (TSV) to write.")
@click.option("--until", type=float, default=1.0, show_default=True, help="Agglomerate up to this threshold (the highest one stitch may ask for).")
@_score_option
@_map_options
@contract(TOOL)
def edges(chunk_spec, offsets_path, output, until, score, bins, invert, voxel_size_nm):
    """Agglomerate one CHUNK (affinities or boundary map with its halo, from em-tile split) and
    write the edge table of the contacts it owns: u, v, score, area.

    Fragments over the chunk and its halo come from the fragment chunks of the offsets table
    (global ids). score = the threshold at which this chunk's agglomeration joined u and v
    (inf: never below --until); area = contacts of u and v whose voxel further along the
    axis lies in the chunk's responsible region, so every contact belongs to one chunk.

    \b
    Example:
      em-agglomerate edges chunks/chunk_0-72_0-288_0-288.h5 --offsets offsets.tsv -o edges/chunk_0-72_0-288_0-288.tsv
    """
    from emtools.segment.chunked import chunk_edges

    emit(chunk_edges(chunk_spec, offsets_path, output, until=until, score=score, bins=bins, invert=invert,
                     voxel_size_nm=voxel_size_nm))


@main.command()
@click.argument("edge_tables", nargs=-1, required=True, metavar="EDGE_TABLES...")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("-t", "--thresholds", "thresholds_text", required=True, help="Comma-separated increasing thresholds.")
@click.option("-o", "--output", required=True, help="Look-up table (TSV) to write.")
@contract(TOOL)
def stitch(edge_tables, offsets_path, thresholds_text, output):
    """Join the chunks' edge tables: one look-up table (fragment -> segment) per threshold.

    An edge seen by several chunks is decided by the chunk that owns most of its contact.
    Union-find over the edges with score < t; a segment takes its smallest fragment id.

    \b
    Example:
      em-agglomerate stitch edges/*.tsv --offsets offsets.tsv -t 0.3,0.5 -o lut.tsv
    """
    from emtools.segment.chunked import stitch_tables

    emit(stitch_tables(expand_stdin_specs(edge_tables), offsets_path, thresholds_text, output))


@main.command()
@click.argument("fragments_spec", metavar="FRAGMENT_CHUNK")
@click.option("--offsets", "offsets_path", required=True, help="Offsets table from em-agglomerate offsets.")
@click.option("--lut", "lut_path", required=True, help="Look-up table from em-agglomerate stitch.")
@click.option("-t", "--threshold", type=float, required=True, help="One of the look-up table's thresholds.")
@click.option("-o", "--output", default=None, help="Output segmentation chunk.")
@click.option("--into", "into", default=None, metavar="ARRAY",
              help="Instead of -o: write the chunk's region into this existing zarr array (from em-tile create).")
@click.option("--skip-existing", is_flag=True, help="Do nothing if the output exists (--into: the region is done).")
@_compression_option
@_preview_option("neutral grey")
@contract(TOOL)
def relabel(fragments_spec, offsets_path, lut_path, threshold, output, into, skip_existing, compression, preview):
    """Relabel one fragment chunk through the stitched look-up table at --threshold.

    The output keeps the chunk's region, so em-tile merge assembles the volume; or --into
    writes the region straight into one zarr array (em-tile create ... --dtype uint64 with the
    split's --chunk) that all chunks share, with no merge.

    \b
    Examples:
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 -o seg/C.h5
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 -o seg/C.h5 --preview C.png
      em-agglomerate relabel frags/C.h5 --offsets offsets.tsv --lut lut.tsv -t 0.5 --into seg.zarr/seg --skip-existing
    """
    from emtools import io
    from emtools.segment.chunked import relabel_chunk

    if (output is None) == (into is None):
        raise click.UsageError("give -o OUTPUT or --into ARRAY (one of them)")
    if into is not None:
        output = io.into_chunk(into, fragments_spec)
    if skip_existing and io.output_exists(output):
        emit(io.output_file(output))
        return
    _check_preview(preview, output, fragments_spec, offsets_path, lut_path)
    path = relabel_chunk(fragments_spec, offsets_path, lut_path, threshold, output, compression=compression)
    _draw_preview(preview, output, [path], [path])


if __name__ == "__main__":
    main()
