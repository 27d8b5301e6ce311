"""The flood-filling network module (spec: :mod:`emtools.models.ffn_spec`).

Input (N, 2, Z, Y, X): channel 0 the normalised image, channel 1 the current object map as logits;
output (N, 1, Z, Y, X): the updated object-map logits (the input logits plus the network's
update), so an untrained update of zero leaves the object map as it was.
"""

from __future__ import annotations

import torch
from torch import nn

from emtools.models.ffn_spec import FFNSpec
from emtools.models.layers import same_padding


class Residual(nn.Module):
    """ReLU, conv, ReLU, conv, plus the input (google/ffn's residual module)."""

    def __init__(self, features: int, kernel: tuple[int, int, int]):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, kernel, padding=same_padding(kernel))
        self.conv2 = nn.Conv3d(features, features, kernel, padding=same_padding(kernel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(torch.relu(self.conv1(torch.relu(x))))


class FFN(nn.Module):
    def __init__(self, spec: FFNSpec):
        super().__init__()
        kernel, width = spec.kernel_zyx, spec.features
        self.spec = spec
        self.entry1 = nn.Conv3d(2, width, kernel, padding=same_padding(kernel))
        self.entry2 = nn.Conv3d(width, width, kernel, padding=same_padding(kernel))
        self.blocks = nn.ModuleList(Residual(width, kernel) for _ in range(spec.depth - 1))
        self.out = nn.Conv3d(width, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = x[:, 1:2]
        y = self.entry2(torch.relu(self.entry1(x)))
        for block in self.blocks:
            y = block(y)
        return logits + self.out(torch.relu(y))


def zero_update(model: FFN) -> None:
    """Start the output conv at zero: the first predictions return the object map they are given,
    so early training refines the seed instead of undoing it with a random update."""
    with torch.no_grad():
        model.out.weight.zero_()
        model.out.bias.zero_()
