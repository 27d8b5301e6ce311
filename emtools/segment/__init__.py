"""Segmentation: maps (affinities, boundaries) to fragments, fragments to segments (no torch).

What lives here. Array functions, in pipeline order (numpy in, numpy out, no files):

- :mod:`~emtools.segment.filters`: separable smoothing of maps before seeding.
- :mod:`~emtools.segment.flood`: priority flooding (seeded watershed) on a map.
- :mod:`~emtools.segment.watershed`: supervoxels from affinities or boundaries; BC/BCD instances.
- :mod:`~emtools.segment.mutex`: the mutex watershed: segments straight from long-range affinities.
- :mod:`~emtools.segment.region_graph`: fragments + map -> edges with contact statistics.
- :mod:`~emtools.segment.agglomerate`: merge history over the region graph, segmentations at
  any thresholds.
- :mod:`~emtools.segment.scores`: the registry of agglomeration scores (merge costs) that
  ``--score``, its help and the merge kernel read.
- :mod:`~emtools.segment.stitch`: chunked runs on arrays: fragment offsets, best edge per
  contact, look-up tables by union-find, relabelling.
- :mod:`~emtools.segment.structures`: the one hash table, heap, union-find and label checks
  that all of the above use.

Steps that take paths (what the tools run; each reads, calls the array functions, writes one
output atomically and returns its path):

- :mod:`~emtools.segment.jobs`: whole volumes: ``watershed_volume`` (em-watershed, with its
  ``WatershedSettings``), ``agglomerate_volume`` and ``replay_volume`` (em-agglomerate
  segment, replay).
- :mod:`~emtools.segment.chunked`: chunk by chunk: ``split_map``, ``fragment_offsets_table``,
  ``chunk_edges``, ``stitch_tables``, ``relabel_chunk``, ``merge_labels`` (em-agglomerate
  offsets, edges, stitch, relabel; the ends are em-tile split and merge).
- :mod:`~emtools.segment.tables`: the merge-history, offsets, edge and look-up table formats.
- :mod:`~emtools.segment.files`: reading maps and labels with one-line errors; chunk regions.

What may import what. The array modules import numpy, small compiled libraries (fastremap,
cc3d, edt), :mod:`emtools.native` and each other's *public* names only; never ``emtools.io``
or the path-taking modules. Those add :mod:`emtools.io` (the only place that opens files),
:mod:`emtools.meta` and :mod:`emtools.tiling`. Nothing here imports torch or ``emtools.cli``;
``emtools.cli`` imports this package (``tests/test_layering.py`` and
``tests/test_segment_chunked.py`` check all of it).

To add an agglomeration score: register it in :mod:`~emtools.segment.scores` with
``@score(name, statistic, help)``; ``em-agglomerate --score``, its help and the chunked steps
take it from there (a new compiled statistic also needs a kernel rebuild, see that module).

Compiled kernels are ordinary functions marked ``@kernel``/``@helper`` (see
:mod:`emtools.native`); ``python -m emtools.native build`` finds them by itself.

The chunked pipeline in Python, run in a folder holding ``affs.h5`` (``tests/test_segment_chunked.py``
runs exactly these lines)::

    import os
    from emtools.segment import chunked, jobs

    chunks = chunked.split_map("affs.h5:/affs", "chunks", chunk_zyx=(6, 48, 48), halo_zyx=(2, 12, 12))
    for folder in ("frags", "edges", "seg"):
        os.makedirs(folder, exist_ok=True)
    frags = [jobs.watershed_volume(c, c.replace("chunks/", "frags/")) for c in chunks]
    chunked.fragment_offsets_table(frags, "offsets.tsv")
    edges = [chunked.chunk_edges(c, "offsets.tsv", c.replace("chunks/", "edges/").replace(".h5", ".tsv"))
             for c in chunks]
    chunked.stitch_tables(edges, "offsets.tsv", [0.3, 0.5], "lut.tsv")
    segs = [chunked.relabel_chunk(f, "offsets.tsv", "lut.tsv", 0.5, f.replace("frags/", "seg/")) for f in frags]
    chunked.merge_labels(segs, "seg.h5:/seg")

Every step per chunk (watershed, edges, relabel) is independent: run them in a process pool,
a job array or ``make -j`` (``em-agglomerate --help`` shows the same pipeline as commands).
"""
