"""Flood-filling networks (Januszewski et al., Nature Methods 2018): one object at a time.

A flood-filling network (model: :mod:`emtools.models.ffn`) sees the image and its own current
object map over a field of view (FOV) and returns an updated object map. Starting from a seed,
the FOV moves to where the object reaches the FOV's faces (:mod:`emtools.ffn.movement`) until no
move is left; the voxels the object map holds become one segment.

- :mod:`emtools.ffn.movement`: the movement rule shared by training and inference.
- :mod:`emtools.ffn.examples`: training examples (partitions, centre sampling, soft targets).
- :mod:`emtools.ffn.flights`, :mod:`emtools.ffn.training`: ``em-train model=ffn`` (examples in flight,
  FOV movement during training).
- :mod:`emtools.ffn.seeds`, :mod:`emtools.ffn.inference`: seed policies and the flood-fill canvas
  behind ``em-predict FFN.pt``.
- :mod:`emtools.ffn.consensus`, :mod:`emtools.ffn.chunked`: oversegmentation consensus and large
  volumes in overlapping subvolumes.
"""
