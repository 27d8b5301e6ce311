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
from emtools.meta import Metadata, provenance_record
from emtools.tiling.chunk_files import (
    chunk_path,
    convert_volume,
    inspect_chunks,
    merge_chunks,
    require_distinct_names,
    split_volume,
)
from emtools.tiling.geometry import plan_chunks

TOOL = "em-tile"
SPECS_HELP = (
    "Volume specs: file.h5:/dataset (.h5/.hdf5/.hdf), store.zarr/array (zarr v2 or v3; v3 written, with "
    "OME-Zarr metadata), file.tif (multi-page stack), or a folder or quoted glob of 2D .png/.tif slices "
    "(natural sort order); any of them with a region 'SPEC[z0:z1,y0:y1,x0:x1]' (array indices) and an "
    "optional halo '+H' or '+HZ,HY,HX', read as a chunk."
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
    "  em-tile convert isbi.h5:/image -o isbi.zarr/image --chunk 10,256,256\n"
    "\n\b\n"
    "Many workers writing one zarr store, no merge (each line one job, in any order, at once):\n"
    "  em-tile split affs.zarr/affs --chunk 64,512,512 --halo 8,64,64 --format region > regions.txt\n"
    "  em-tile create out.zarr/frags --like affs.zarr/affs --dtype uint64 --chunk 64,512,512\n"
    "  xargs -P 8 -I R em-watershed R --into out.zarr/frags --skip-existing < regions.txt\n"
)
@version_option(TOOL)
def main():
    """Cut volumes into overlapping chunks with global offsets, and assemble chunks back.

    Every chunk file records its offset (nm), the voxel box of its data (read region), the box it
    is responsible for (read region minus halo) and the whole volume's box, so chunks can be
    processed independently (em-predict, em-watershed) and merged back without seams.

    A chunk can also be a region spec, 'raw.zarr/raw[64:128,0:512,0:512]+8,64,64' (the region in
    array indices, read with its halo straight from the volume), and the per-chunk tools can write
    their region straight into one zarr array (--into) that em-tile create made with the split's
    --chunk as its store chunks: no chunk files, no merge.
    """


@main.command()
@click.argument("volume")
@click.option("-o", "--output", "out_dir", default=None,
              help="Folder for the chunk files (created if its parent exists); not with --format region.")
@click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, required=True, help="Chunk size z,y,x in voxels (one number: all axes).")
@click.option("--halo", "halo_zyx", type=INT_TRIPLE, default="0", show_default=True, help="Overlap z,y,x in voxels added on each side.")
@click.option("--format", "fmt", type=click.Choice(["h5", "tif", "region"]), default="h5", show_default=True,
              help="Chunk file format; region: write nothing and print one region spec per chunk, "
                   "VOLUME[z0:z1,y0:y1,x0:x1]+HALO, that the tools read straight from VOLUME.")
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

    With --format region nothing is copied: each printed line is a region spec (the region a
    chunk is responsible for, in array indices, and the halo) that every tool reads as that chunk
    straight from VOLUME, best a zarr store that many workers read at once. Region specs carry
    no --voxel-size/--offset: VOLUME must record them (em-tile convert sets them).

    \b
    Examples:
      em-tile split raw.h5:/main --chunk 64,512,512 --halo 8,32,32 -o chunks/
      em-tile split 'isbi/image/*.png' --voxel-size 50,4,4 --chunk 10,256,256 -o chunks/ --list
      em-tile split raw.zarr/raw --chunk 64,512,512 --halo 8,32,32 --format region
    """
    _check_overrides(voxel_size_nm, offset_nm)
    if fmt == "region":
        _split_regions(volume, chunk_zyx, halo_zyx, out_dir, voxel_size_nm, offset_nm)
        return
    if out_dir is None:
        raise click.UsageError("em-tile split needs -o FOLDER for the chunk files (or --format region)")
    io.parse_compression(compression)
    if fmt == "tif" and compression.startswith("lzf"):
        raise EmError("lzf compression exists only for HDF5; use gzip or none for TIFF chunks")
    if not list_only:
        _check_folder(out_dir)
    with io.open_volume(volume, voxel_size_nm=voxel_size_nm, offset_nm=offset_nm) as source:
        _warn_missing_voxel_size(source, voxel_size_nm)
        chunks = plan_chunks(source.box, chunk_zyx, halo_zyx)
        require_distinct_names(chunks, halo_zyx)
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


def _split_regions(volume, chunk_zyx, halo_zyx, out_dir, voxel_size_nm, offset_nm) -> None:
    """Print one region spec per planned chunk of ``volume``; write nothing."""
    if out_dir is not None:
        raise click.UsageError("--format region writes no files: drop -o (the region specs go to stdout)")
    if voxel_size_nm is not None or offset_nm is not None:
        raise EmError("--format region reads VOLUME's own voxel size and offset: set them in the file "
                      "(em-tile convert --voxel-size ... -o store.zarr/array), not here")
    if io.split_region(volume)[1] is not None:
        raise EmError(f"{volume} is a region already; split the whole array")
    with io.open_volume(volume) as source:
        _warn_missing_voxel_size(source, None)
        origin = source.box.begin
        chunks = plan_chunks(source.box, chunk_zyx, halo_zyx)
        log.info("%s: %s voxels %s, %d regions of %s (+ halo %s)", volume, "x".join(map(str, source.shape)),
                 source.dtype, len(chunks), ",".join(map(str, chunk_zyx)), ",".join(map(str, halo_zyx)))
    for chunk in chunks:
        emit(io.region_spec(volume, chunk.responsible.shift(tuple(-o for o in origin)), halo_zyx))


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
@click.option("-o", "--output", required=True,
              help="Output volume: file.h5[:/dataset] or store.zarr/array (streamed), or file.tif.")
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
      em-tile merge seg/*.h5 -o seg.zarr/seg
      ls chunks/*.h5 | em-tile merge - -o probs.h5:/boundary --blend gaussian
    """
    specs = expand_stdin_specs(chunks)
    io.parse_compression(compression)
    io.check_output_path(io.output_file(output))
    io.output_format(output)
    if skip_existing and io.output_exists(output):
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
@click.option("-o", "--output", required=True,
              help="Output volume: file.h5[:/dataset], store.zarr/array (zarr v3 + OME-Zarr metadata) or file.tif.")
@click.option("--slab", default=16, show_default=True,
              help="Sections read and written at a time (zarr: rounded up to whole store chunks).")
@click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, default=None,
              help="Chunks z,y,x of the output (HDF5 chunks or zarr store chunks; default 32,128,128). For "
                   "--into, the zarr chunks must be the em-tile split --chunk.")
@_compression_option
@_volume_options
@contract(TOOL)
def convert(volume, output, slab, chunk_zyx, compression, voxel_size_nm, offset_nm):
    """Copy VOLUME into another format, a slab of sections at a time (how data is imported).

    Between HDF5, zarr, TIFF stacks and slice folders, any direction (slices: as input). The
    voxel size, offset and provenance go along (zarr: as array attributes, plus OME-Zarr
    multiscales on the group above the array).

    \b
    Examples:
      em-tile convert isbi2012/image -o isbi.h5:/image --voxel-size 50,4,4
      em-tile convert stack.h5:/main -o stack.tif
      em-tile convert raw.h5:/raw -o raw.zarr/raw --chunk 64,512,512
      em-tile convert raw.zarr/raw -o raw.h5:/raw
    """
    _check_overrides(voxel_size_nm, offset_nm)
    if slab <= 0:
        raise EmError(f"--slab must be positive, got {slab}")
    if chunk_zyx is not None:
        require_positive("--chunk", chunk_zyx)
    io.parse_compression(compression)
    io.output_format(output)
    io.check_output_path(io.output_file(output))
    with io.open_volume(volume, voxel_size_nm=voxel_size_nm, offset_nm=offset_nm) as source:
        _warn_missing_voxel_size(source, voxel_size_nm)
        _refuse_same_file(volume, output)
        params = {"compression": compression, "voxel_size_nm": list(source.meta.voxel_size_nm), "offset_nm": list(source.meta.offset_nm)}
        meta = source.meta.with_record(provenance_record("em-tile convert", params, [(volume, source.meta)]))
        if io.output_format(output) == "zarr":  # whole store chunks per slab: no chunk is written twice
            depth = min(chunk_zyx[0] if chunk_zyx else 32, source.shape_zyx[0])
            slab = -(-slab // depth) * depth
        with io.VolumeWriter(output, source.shape, source.dtype, meta, compression=compression,
                             chunks_zyx=chunk_zyx) as writer:
            convert_volume(source, writer, slab)
    emit(writer.path)


@main.command()
@click.argument("array_spec", metavar="ARRAY")
@click.option("--like", "like", required=True,
              help="A volume (or a chunk or region of it) whose whole extent, offset and voxel size the array takes.")
@click.option("--dtype", "dtype", required=True,
              help="Data type of what the workers write: uint64 (em-watershed, em-agglomerate relabel), "
                   "float32, float16 or uint8 (em-predict --dtype).")
@click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, required=True,
              help="Store chunks z,y,x: the em-tile split --chunk, so that each worker's region is whole chunks.")
@click.option("--channels", type=int, default=None,
              help="A (c, z, y, x) array with this many channels (em-predict heads with several channels, e.g. 3 affinities).")
@click.option("--skip-existing", is_flag=True, help="Keep an existing array of the same shape, type and chunks.")
@_compression_option
@contract(TOOL)
def create(array_spec, like, dtype, chunk_zyx, channels, skip_existing, compression):
    """Create an empty zarr array ARRAY (store.zarr/path) for workers that write into it (--into).

    Its extent, offset and voxel size are those of the whole volume of --like; its store chunks
    are --chunk, the chunk size of em-tile split, so that the region each chunk is responsible
    for is a set of whole store chunks and no two workers ever write the same chunk file. Create
    it once, before the workers start (a Make rule or the first job of a job array).

    \b
    Examples:
      em-tile create out.zarr/frags --like raw.zarr/raw --dtype uint64 --chunk 64,512,512
      em-tile create out.zarr/affs --like chunks/chunk_0-72_0-576_0-576.h5 --dtype uint8 --channels 3 --chunk 64,512,512
    """
    import numpy as np

    from emtools.tiling.chunk_files import volume_box

    require_positive("--chunk", chunk_zyx)
    if channels is not None and channels < 1:
        raise EmError(f"--channels must be at least 1, got {channels}")
    try:
        data_type = np.dtype(dtype)
    except TypeError:
        raise EmError(f"unknown --dtype {dtype!r}; e.g. uint64, float32, uint8") from None
    if data_type.kind not in "uif" or data_type.itemsize > 8:
        raise EmError(f"--dtype {dtype}: give an integer or float type (e.g. uint64, float32, uint8)")
    name, level = io.parse_compression(compression)
    if io.output_format(array_spec) != "zarr":
        raise EmError(f"em-tile create makes zarr arrays: give store.zarr/array, not {array_spec}")
    io.check_output_path(io.output_file(array_spec))
    with io.open_volume(like) as source:
        meta = source.meta
        volume = volume_box(meta.attrs) or source.box
    shape = ((channels,) if channels else ()) + volume.shape
    folder = io.output_file(array_spec)
    if os.path.exists(folder):
        if not skip_existing:
            raise EmError(f"{folder} exists already (--skip-existing keeps it if it matches)")
        info = io.ZarrArrayInfo(folder)
        want_chunks = tuple(min(c, s) for c, s in zip(chunk_zyx, volume.shape))
        if info.shape != shape or info.dtype != data_type or info.chunks[-3:] != want_chunks or info.box != volume:
            raise EmError(f"{folder} exists with another shape, type, chunks or offset ({_fmt_shape(info.shape)} "
                          f"{info.dtype_text}, chunks {_fmt_shape(info.chunks)}); remove it first")
        log.info("exists, kept: %s", folder)
        emit(folder)
        return
    offset = tuple(b * v for b, v in zip(volume.begin, meta.voxel_size_nm))
    params = {"like": like, "dtype": str(data_type), "chunk_zyx": list(chunk_zyx), "channels": channels,
              "compression": compression}
    new_meta = Metadata(axes="czyx" if channels else "zyx", offset_nm=offset, voxel_size_nm=meta.voxel_size_nm)
    new_meta = new_meta.with_record(provenance_record("em-tile create", params, [(like, meta)]))
    emit(io.create_array(array_spec, shape, data_type, new_meta, chunk_zyx, (name, level)))


def _fmt_shape(shape) -> str:
    return "x".join(str(int(v)) for v in shape)


def _refuse_same_file(volume: str, output: str) -> None:
    volume = io.split_region(volume)[0]
    src = io.output_file(volume) if io.split_h5_spec(volume) or io.split_zarr_spec(volume) else volume
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
            record = {
                "spec": spec, "shape": list(source.shape), "dtype": str(source.dtype), "axes": meta.axes,
                "offset_nm": list(meta.offset_nm), "voxel_size_nm": list(meta.voxel_size_nm),
                "box_vx": [list(source.box.begin), list(source.box.end)],
                "attrs": meta.attrs, "provenance": list(meta.provenance),
            }
            base = io.split_region(spec)[0]
            if io.split_zarr_spec(base) is not None and io.split_region(spec)[1] is None:
                folder = getattr(source, "folder", io.output_file(base))
                zarr_info = io.ZarrArrayInfo(folder)
                record["zarr"] = {"format": zarr_info.zarr_format, "chunks": list(zarr_info.chunks),
                                  "regions_done": io.regions_done(folder)}
            emit(json.dumps(record, sort_keys=True))


if __name__ == "__main__":
    main(prog_name=TOOL)
