"""em-tile: cut volumes into overlapping chunks with global offsets, and assemble them back."""

from __future__ import annotations

import json
import os

import click

from emtools import io
from emtools.cli.common import (
    FLOAT_TRIPLE,
    INT_TRIPLE,
    contract,
    emit,
    expand_stdin_specs,
    log,
    progress,
    require_positive,
    version_option,
)
from emtools.errors import EmError
from emtools.meta import provenance_record
from emtools.tiling.chunk_files import chunk_path, convert_volume, inspect_chunks, merge_chunks, split_volume
from emtools.tiling.geometry import plan_chunks

TOOL = "em-tile"
SPECS_HELP = (
    "Volume specs: file.h5:/dataset (.h5/.hdf5/.hdf), file.tif (multi-page stack), or a folder "
    "or quoted glob of 2D .png/.tif slices (natural sort order)."
)


def _volume_options(func):
    func = click.option(
        "--offset", "offset_nm", type=FLOAT_TRIPLE, default=None,
        help="World offset z,y,x in nm of the input's first voxel (overrides the file's).",
    )(func)
    func = click.option(
        "--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
        help="Voxel size z,y,x in nm (overrides the file's; slices and plain TIFFs have none).",
    )(func)
    return func


def _compression_option(func):
    return click.option(
        "--compression", default="gzip", show_default=True,
        help="gzip[:LEVEL] (default level 1), lzf (HDF5 only) or none.",
    )(func)


def _check_overrides(voxel_size_nm, offset_nm) -> None:
    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)


def _warn_missing_voxel_size(source, voxel_size_nm) -> None:
    if voxel_size_nm is None and source.meta.voxel_size_nm == (1.0, 1.0, 1.0):
        log.warning("%s records no voxel size; using 1,1,1 nm (set --voxel-size)", source.spec)


@click.group(
    epilog="Examples:\n\n\b\n"
    "  em-tile split 'isbi/image/*.png' --voxel-size 50,4,4 --chunk 10,256,256 --halo 2,32,32 -o chunks/\n"
    "  em-tile merge chunks/*.h5 -o merged.h5:/image\n"
    "  em-tile convert isbi/image -o isbi.h5:/image --voxel-size 50,4,4\n"
)
@version_option(TOOL)
def main():
    """Cut volumes into overlapping chunks with global offsets, and assemble chunks back.

    Every chunk file records its offset (nm), the voxel box of its data (read region), the box it
    is responsible for (read region minus halo) and the whole volume's box, so chunks can be
    processed independently (em-predict, em-watershed) and merged back without seams.
    """


@main.command()
@click.argument("volume")
@click.option("-o", "--output", "out_dir", required=True, help="Folder for the chunk files (created if its parent exists).")
@click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, required=True, help="Chunk size z,y,x in voxels (one number: all axes).")
@click.option("--halo", "halo_zyx", type=INT_TRIPLE, default="0", show_default=True, help="Overlap z,y,x in voxels added on each side.")
@click.option("--format", "fmt", type=click.Choice(["h5", "tif"]), default="h5", show_default=True, help="Chunk file format.")
@click.option("--prefix", default="chunk_", show_default=True, help="File name prefix; names end in z0-z1_y0-y1_x0-x1 of the data's global box.")
@click.option("--list", "list_only", is_flag=True, help="Print the plan (path, read box, responsible box; tab-separated) and write nothing.")
@click.option("--skip-existing", is_flag=True, help="Keep chunk files that already exist and open (resume an interrupted run).")
@_compression_option
@_volume_options
@contract(TOOL)
def split(volume, out_dir, chunk_zyx, halo_zyx, fmt, prefix, list_only, skip_existing, compression, voxel_size_nm, offset_nm):
    """Cut VOLUME into chunks of --chunk voxels with a --halo; print each chunk file's path.

    Edge chunks are shorter when the volume is not a multiple of the chunk size. Chunks are
    written in z-major order, so slice folders are decoded about once.

    \b
    Examples:
      em-tile split raw.h5:/main --chunk 64,512,512 --halo 8,32,32 -o chunks/
      em-tile split 'isbi/image/*.png' --voxel-size 50,4,4 --chunk 10,256,256 -o chunks/ --list
    """
    _check_overrides(voxel_size_nm, offset_nm)
    io.parse_compression(compression)
    if fmt == "tif" and compression.startswith("lzf"):
        raise EmError("lzf compression exists only for HDF5; use gzip or none for TIFF chunks")
    if not list_only:
        _check_folder(out_dir)
    with io.open_volume(volume, voxel_size_nm=voxel_size_nm, offset_nm=offset_nm) as source:
        _warn_missing_voxel_size(source, voxel_size_nm)
        chunks = plan_chunks(source.box, chunk_zyx, halo_zyx)
        log.info(
            "%s: %s voxels %s, %d chunks of %s (+ halo %s)",
            volume, "x".join(map(str, source.shape)), source.dtype, len(chunks),
            ",".join(map(str, chunk_zyx)), ",".join(map(str, halo_zyx)),
        )
        if list_only:
            for chunk in chunks:
                emit(f"{chunk_path(out_dir, prefix, chunk, fmt)}\t{chunk.read.text()}\t{chunk.responsible.text()}")
            return
        _prepare_folder(out_dir)
        params = {
            "chunk_zyx": list(chunk_zyx), "halo_zyx": list(halo_zyx), "format": fmt, "compression": compression,
            "voxel_size_nm": list(source.meta.voxel_size_nm), "offset_nm": list(source.meta.offset_nm),
        }
        record = provenance_record("em-tile split", params, [(volume, source.meta)])
        written = split_volume(
            source, out_dir, chunk_zyx, halo_zyx, prefix=prefix, fmt=fmt, compression=compression,
            record=record, skip_existing=skip_existing,
        )
        for path in progress(written, "split", length=len(chunks)):
            emit(path)


def _check_folder(out_dir: str) -> None:
    """One-line errors for a chunk folder that cannot be used, before any work is done."""
    if os.path.isdir(out_dir):
        if not os.access(out_dir, os.W_OK):
            raise EmError(f"output folder is not writable: {out_dir}")
        return
    if os.path.exists(out_dir):
        raise EmError(f"output exists and is not a folder: {out_dir}")
    parent = os.path.dirname(os.path.abspath(out_dir))
    if not os.path.isdir(parent):
        raise EmError(f"output folder's parent does not exist: {os.path.dirname(out_dir.rstrip('/')) or '.'}")
    if not os.access(parent, os.W_OK):
        raise EmError(f"cannot create the output folder in {parent}: not writable")


def _prepare_folder(out_dir: str) -> None:
    _check_folder(out_dir)
    if not os.path.isdir(out_dir):
        os.mkdir(out_dir)


@main.command()
@click.argument("chunks", nargs=-1, required=True)
@click.option("-o", "--output", required=True, help="Output volume: file.h5[:/dataset] (streamed) or file.tif.")
@click.option(
    "--blend", type=click.Choice(["auto", "none", "linear", "gaussian"]), default="auto", show_default=True,
    help="How overlaps combine: none = each chunk's responsible region only (labels); linear/gaussian "
    "= weighted mean over the halos (float maps). auto = none for integer data, linear for floats.",
)
@click.option("--fill", type=float, default=None, help="Value for regions no chunk covers (default: refuse to merge with holes).")
@click.option("--skip-existing", is_flag=True, help="Do nothing when the output file exists already.")
@_compression_option
@contract(TOOL)
def merge(chunks, output, blend, fill, skip_existing, compression):
    """Assemble CHUNKS (paths, or - to read paths from stdin) into one volume.

    Chunks must share voxel size, data type and channels, and tile their volume without holes
    (unless --fill). Memory stays a small multiple of one chunk: the output is built one
    responsible region at a time. The write is atomic: an interrupted merge leaves the previous
    output, or none.

    \b
    Examples:
      em-tile merge chunks/*.h5 -o merged.h5:/main
      ls chunks/*.h5 | em-tile merge - -o probs.h5:/boundary --blend gaussian
    """
    specs = expand_stdin_specs(chunks)
    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    io.output_format(output)
    if skip_existing and os.path.exists(io.output_file(output)):
        log.info("exists, skipped: %s", output)
        emit(io.output_file(output))
        return
    for spec in specs:
        _refuse_same_file(spec, output)
    infos = inspect_chunks(specs)
    params = {"blend": blend, "fill": fill, "compression": compression, "chunks": len(specs)}
    record = provenance_record("em-tile merge", params, [(i.spec, i.meta) for i in infos])

    def writer_factory(volume_box, dtype, channels, meta):
        shape = ((channels,) if channels else ()) + volume_box.shape
        return io.VolumeWriter(output, shape, dtype, meta, compression=compression)

    path = merge_chunks(
        infos, writer_factory, blend=blend, fill=fill, record=record, progress=lambda tiles: progress(tiles, "merge")
    )
    emit(path)


@main.command()
@click.argument("volume")
@click.option("-o", "--output", required=True, help="Output volume: file.h5[:/dataset] or file.tif.")
@click.option("--slab", default=16, show_default=True, help="Sections read and written at a time.")
@_compression_option
@_volume_options
@contract(TOOL)
def convert(volume, output, slab, compression, voxel_size_nm, offset_nm):
    """Copy VOLUME into another format, a slab of sections at a time (how data is imported).

    \b
    Examples:
      em-tile convert isbi2012/image -o isbi.h5:/image --voxel-size 50,4,4
      em-tile convert stack.h5:/main -o stack.tif
    """
    _check_overrides(voxel_size_nm, offset_nm)
    if slab <= 0:
        raise EmError(f"--slab must be positive, got {slab}")
    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    with io.open_volume(volume, voxel_size_nm=voxel_size_nm, offset_nm=offset_nm) as source:
        _warn_missing_voxel_size(source, voxel_size_nm)
        _refuse_same_file(volume, output)
        params = {"compression": compression, "voxel_size_nm": list(source.meta.voxel_size_nm), "offset_nm": list(source.meta.offset_nm)}
        meta = source.meta.with_record(provenance_record("em-tile convert", params, [(volume, source.meta)]))
        with io.VolumeWriter(output, source.shape, source.dtype, meta, compression=compression) as writer:
            convert_volume(source, writer, slab)
    emit(writer.path)


def _refuse_same_file(volume: str, output: str) -> None:
    src = io.output_file(volume) if io.split_h5_spec(volume) else volume
    if os.path.exists(src) and os.path.abspath(src) == os.path.abspath(io.output_file(output)):
        raise EmError(f"output {output} would replace the input file {src}")


@main.command()
@click.argument("volumes", nargs=-1, required=True)
@contract(TOOL)
def info(volumes):
    """Print shape, dtype and metadata of each volume as one JSON object per line.

    \b
    Example:
      em-tile info chunks/*.h5 | jq .read_box
    """
    for spec in expand_stdin_specs(volumes):
        with io.open_volume(spec) as source:
            meta = source.meta
            emit(json.dumps({
                "spec": spec, "shape": list(source.shape), "dtype": str(source.dtype), "axes": meta.axes,
                "offset_nm": list(meta.offset_nm), "voxel_size_nm": list(meta.voxel_size_nm),
                "box_vx": [list(source.box.begin), list(source.box.end)],
                "attrs": meta.attrs, "provenance": list(meta.provenance),
            }, sort_keys=True))


if __name__ == "__main__":
    main(prog_name=TOOL)
