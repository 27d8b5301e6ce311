"""Chunking of volumes larger than memory (no torch).

- :mod:`~emtools.tiling.geometry`: pure geometry in global voxels: boxes, the split plan
  (read / responsible regions), coverage checks and blending weights.
- :mod:`~emtools.tiling.chunk_files`: the streaming split of a volume into chunk files and the
  merge of chunk files back into one volume (all file access through :mod:`emtools.io`).

``geometry`` imports nothing of emtools but errors; ``chunk_files`` builds on it and ``io``.
Neither imports torch or ``emtools.cli`` (a test checks it).
"""
