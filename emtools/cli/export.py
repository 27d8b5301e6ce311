"""em-export: image, predictions and segmentations to neuroglancer precomputed, with meshes,
skeletons and the viewer state that opens them; --serve shows them in a local neuroglancer."""

from __future__ import annotations

import json

import click

from emtools import interrupt
from emtools.cli.common import FLOAT_TRIPLE, INT_TRIPLE, contract, emit, log, require_positive, version_option
from emtools.errors import EmError

TOOL = "em-export"
DEFAULT_PORT = 9000

HELP = """Export volumes to the neuroglancer precomputed format in the folder OUTPUT (-o), and
print the neuroglancer URL that opens them all (--json: the viewer state instead).

\b
Layers (each option repeatable, each value [NAME=]SPEC, a volume spec as every em-*
tool reads it: file.h5:/dataset, file.tif, slices, or any other spec of emtools.io):
  --image         raw EM (grey); --prediction: maps (float or uint8, 1 or C channels;
                  3 channels are shown as RGB); both get a pyramid by the block mean
  --segmentation  integer ids (0 = background); its pyramid keeps ids (--seg-downsample
                  mode: the most frequent id of each block, or stride: its first voxel);
                  per segment of at least --min-voxels voxels: a surface mesh (marching
                  cubes and simplification, zmesh) and a skeleton (TEASAR, kimimaro)
A layer is named after its file unless NAME= is given. Voxel size and offset come from
the files (--voxel-size overrides), so layers of different grids line up in nm.

\b
Format: precomputed volumes (info + one file per chunk, raw; segmentations
compressed_segmentation unless --seg-encoding raw) with scales halved until one chunk
holds the volume (anisotropic voxels: the fine axes first); legacy single-resolution
meshes (mesh/<id>:0 + fragment, vertices in nm); precomputed skeletons (skeletons/<id>,
with a radius attribute, nm). Segment ids are stored as uint64 (or --seg-dtype uint32:
ids above 4294967295 are refused); negative or non-integer ids are refused.
OUTPUT also gets state.json (the neuroglancer state) and export.json (what was written).
OUTPUT appears whole or not at all; an existing OUTPUT is an error unless
--overwrite (an em-export folder only) or --skip-existing.

\b
Viewing: the layer sources point at --base-url (default http://127.0.0.1:PORT), where
`em-export --serve -o OUTPUT` serves OUTPUT (on 127.0.0.1 only, with CORS headers) and the
neuroglancer client that the neuroglancer package ships (no internet needed), until Ctrl-C.
Without inputs, --serve serves an existing export. To host OUTPUT elsewhere, give
--base-url where it will be and --viewer-url of a neuroglancer.

\b
Needs the view extra (pip install 'emtools[view]': zmesh, kimimaro, neuroglancer);
--no-meshes / --no-skeletons do without zmesh / kimimaro.

\b
Examples:
  em-export --image raw.h5:/raw --segmentation seg.h5:/seg -o view
  em-export --image raw.h5:/raw --prediction affs.h5:/affs --segmentation seg.h5:/seg -o view --serve
  em-export --serve -o view --port 8080
  em-export --segmentation gt=train-gt.lzf.h5:stack --voxel-size 10,10,10 --min-voxels 1000 -o gt-view
  em-export --image raw.tif --no-meshes --no-skeletons --json -o view | jq .layers
  em-export --image raw.h5 -o /srv/www/view --base-url https://example.org/view \\
      --viewer-url https://example.org/neuroglancer/
"""


@click.command(help=HELP)
@click.option("-o", "--output", required=True, help="The export folder (created; its parent must exist).")
@click.option("--image", "images", multiple=True, metavar="[NAME=]SPEC", help="An image layer (repeatable).")
@click.option("--prediction", "predictions", multiple=True, metavar="[NAME=]SPEC", help="A prediction layer (repeatable).")
@click.option("--segmentation", "segmentations", multiple=True, metavar="[NAME=]SPEC",
              help="A segmentation layer, with meshes and skeletons (repeatable).")
@click.option("--voxel-size", "voxel_size_nm", type=FLOAT_TRIPLE, default=None,
              help="Voxel size z,y,x in nm of every input (overrides the files').")
@click.option("--chunk", "chunk_zyx", type=INT_TRIPLE, default="64,64,64", show_default=True,
              help="Chunk size z,y,x in voxels of every scale.")
@click.option("--scales", "max_scales", type=int, default=None,
              help="At most this many scales (1: no pyramid). Default: halve until one chunk holds the volume.")
@click.option("--seg-downsample", type=click.Choice(["mode", "stride"]), default="mode", show_default=True,
              help="Segmentation pyramid: most frequent id of each block (ties: the smaller), or its first voxel.")
@click.option("--seg-dtype", type=click.Choice(["uint64", "uint32"]), default="uint64", show_default=True,
              help="Stored segment id type (uint32 halves raw chunks; refuses ids above 4294967295).")
@click.option("--seg-encoding", type=click.Choice(["compressed_segmentation", "raw"]), default="compressed_segmentation",
              show_default=True, help="Chunk encoding of segmentations.")
@click.option("--meshes/--no-meshes", default=True, show_default=True, help="Surface meshes of the segments.")
@click.option("--skeletons/--no-skeletons", default=True, show_default=True, help="Skeletons of the segments.")
@click.option("--min-voxels", type=int, default=100, show_default=True,
              help="Segments smaller than this get no mesh and no skeleton.")
@click.option("--mesh-reduction", type=int, default=10, show_default=True,
              help="Simplify meshes to about 1/N of their triangles (0: no simplification).")
@click.option("--mesh-error", "mesh_error_nm", type=float, default=None,
              help="Simplification moves a vertex at most this far, nm. Default: the finest voxel side.")
@click.option("--skeleton-scale", type=float, default=1.5, show_default=True,
              help="TEASAR: invalidation radius = SCALE * distance to the boundary + CONST.")
@click.option("--skeleton-const", "skeleton_const_nm", type=float, default=300.0, show_default=True,
              help="TEASAR: the CONST of the invalidation radius, nm (smaller: more, shorter branches).")
@click.option("--show", type=int, default=20, show_default=True,
              help="Select the largest N segments of each segmentation in the state (their meshes show).")
@click.option("--json", "as_json", is_flag=True, help="Print the viewer state (one JSON line) instead of the URL.")
@click.option("--base-url", default=None, metavar="URL",
              help="Where OUTPUT will be served (the layer sources). Default: http://127.0.0.1:PORT.")
@click.option("--viewer-url", default=None, metavar="URL",
              help="The neuroglancer the printed URL opens. Default: the one --serve serves.")
@click.option("--serve", is_flag=True, help="Then serve OUTPUT and neuroglancer on 127.0.0.1 until Ctrl-C.")
@click.option("--port", type=int, default=DEFAULT_PORT, show_default=True, help="Port of --serve (0: any free port).")
@click.option("--skip-existing", is_flag=True, help="Keep an existing OUTPUT (print its URL; serve it with --serve).")
@click.option("--overwrite", is_flag=True, help="Replace an existing OUTPUT written by em-export.")
@version_option(TOOL)
@contract(TOOL)
def main(output, images, predictions, segmentations, voxel_size_nm, as_json, base_url, viewer_url, serve, port,
         skip_existing, overwrite, **options):
    from emtools.export.jobs import ExportSettings, export_volumes, layer_inputs
    from emtools.export.serve import CLIENT_TOKEN, ExportServer, client_folder, read_state
    from emtools.export.state import state_url

    if voxel_size_nm is not None:
        require_positive("--voxel-size", voxel_size_nm)
    require_positive("--chunk", options["chunk_zyx"])
    if not 0 <= port <= 65535:
        raise EmError(f"--port must lie in 0..65535, got {port}")
    if skip_existing and overwrite:
        raise EmError("--skip-existing and --overwrite contradict each other; give one")
    layers = layer_inputs(images, predictions, segmentations)
    settings = ExportSettings(base_url=base_url or f"http://127.0.0.1:{port}", **options)
    client = client_folder()
    if serve and client is None and viewer_url is None:
        raise EmError("--serve needs the neuroglancer package (its viewer client): pip install 'emtools[view]', "
                      "or give --viewer-url")

    if layers:
        params = {**options, "voxel_size_nm": voxel_size_nm, "base_url": settings.base_url}
        state = export_volumes(layers, output, settings, voxel_size_nm=voxel_size_nm, skip_existing=skip_existing,
                               overwrite=overwrite, params=params)
    elif serve:
        state = read_state(output)[0]
    else:
        raise EmError("nothing to export: give --image, --prediction or --segmentation (or --serve an export)")

    if not serve:
        viewer = viewer_url or f"http://127.0.0.1:{port}/v/{CLIENT_TOKEN}/"
        emit(json.dumps(state, sort_keys=True) if as_json else state_url(state, viewer))
        return

    state, written_base = read_state(output)
    with ExportServer(output, port=port, client=client, state=state, state_base_url=written_base) as server:
        shown = server.state
        emit(json.dumps(shown, sort_keys=True) if as_json else state_url(shown, viewer_url or server.viewer_url))
        log.info("serving %s at %s (Ctrl-C stops)", output, server.base_url)
        try:
            server.serve_forever()
        except (KeyboardInterrupt, interrupt.Interrupted):
            interrupt.pending = None  # the user's way to stop a server: not a failure
            log.info("stopped")


if __name__ == "__main__":
    main()
