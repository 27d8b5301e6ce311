"""Segmentation: maps (affinities, boundaries) to fragments, fragments to segments (no torch, no I/O).

What lives here, in pipeline order:

- :mod:`~emtools.segment.filters`: separable smoothing of maps before seeding.
- :mod:`~emtools.segment.flood`: priority flooding (seeded watershed) on a map.
- :mod:`~emtools.segment.watershed`: supervoxels from affinities or boundaries; BC/BCD instances.
- :mod:`~emtools.segment.region_graph`: fragments + map -> edges with contact statistics.
- :mod:`~emtools.segment.agglomerate`: merge history over the region graph, segmentations at
  any thresholds.
- :mod:`~emtools.segment.stitch`: chunked runs: fragment offsets, edge tables, look-up tables.
- :mod:`~emtools.segment.structures`: the one hash table, heap, union-find and label checks
  that all of the above use.

Compiled kernels are ordinary functions marked ``@kernel``/``@helper`` (see
:mod:`emtools.native`); ``python -m emtools.native build`` finds them by itself. Modules here
import numpy, scipy-free helpers and each other's *public* names only; they never import torch,
``emtools.cli`` or ``emtools.io`` (a test checks it).
"""
