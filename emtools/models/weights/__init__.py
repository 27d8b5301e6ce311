"""The checkpoints that ship with emtools (``em-train --init NAME``), one entry per file here.

Torch-free, so that ``--help`` can list them. How they are used and how one is added:
:mod:`emtools.models.pretrained`.
"""

from __future__ import annotations

import dataclasses
import os

WEIGHTS_DIR = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """One shipped checkpoint: its file in this folder and what it is for."""

    file: str
    modality: str
    summary: str


PRETRAINED: dict[str, Pretrained] = {
    "fibsem-affinity": Pretrained(
        "fibsem-affinity.pt", "isotropic FIB-SEM, 10 nm",
        "rsunet-efficient (24,48,96,96,96), nearest and long-range affinities; trained on FIB-25 "
        "z 0-99 (examples/fibsem_pretrain.yaml)"),
    "mito-fibsem": Pretrained(
        "mito-fibsem.pt", "isotropic FIB-SEM mitochondria, 10 nm (5 nm data is averaged 2x2x2)",
        "rsunet-efficient (24,48,96,96,96), foreground and contour heads at 10 nm; trained on Lucchi++ "
        "z 0-109 (examples/mito_lucchi.yaml from scratch)"),
}
"""Name -> shipped checkpoint."""
