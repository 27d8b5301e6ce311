"""Export volumes to neuroglancer: precomputed layers, meshes, skeletons, a viewer state, a server.

What lives here (no torch; zmesh, kimimaro and neuroglancer come with the ``view`` extra and are
imported only by the steps that need them):

Array and format modules (numpy in, bytes or dicts out, no files unless the name says write):

- :mod:`~emtools.export.downsample`: which scales a pyramid has; one 2x step by ``mean``
  (images, maps), ``mode`` or ``stride`` (segmentations), aligned to the world grid.
- :mod:`~emtools.export.precomputed`: the precomputed volume ``info``, chunk names, the raw
  encoding, and :func:`~emtools.export.precomputed.write_scale`.
- :mod:`~emtools.export.compressed_segmentation`: neuroglancer's compressed_segmentation encoder.
- :mod:`~emtools.export.meshes`: per-segment meshes (zmesh marching cubes + simplification) in
  the legacy single-resolution mesh format.
- :mod:`~emtools.export.skeletons`: per-segment TEASAR skeletons (kimimaro) in the precomputed
  skeleton format, with their radius.
- :mod:`~emtools.export.state`: the neuroglancer state (JSON) that opens the layers, its URL.

Steps that take paths:

- :mod:`~emtools.export.jobs`: ``export_volumes`` (what ``em-export`` runs): volume specs in,
  one export folder out, atomically.
- :mod:`~emtools.export.serve`: ``ExportServer``: the folder and neuroglancer's bundled client
  over HTTP on 127.0.0.1 (``em-export --serve``).

To add a downsampling method: a function in :data:`emtools.export.downsample.METHODS`; to add a
layer kind: :data:`emtools.export.jobs.KINDS`, its export function there, and its look in
:mod:`~emtools.export.state`.
"""
