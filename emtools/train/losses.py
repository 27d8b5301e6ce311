"""Losses of the output heads, each a weighted mean over the voxels that count.

With ``l`` the per-voxel loss and ``w`` the per-voxel weight (0 where the target is undefined:
masked, outside the volume after augmentation; else class-balance x border weights)::

    weighted mean = sum(w * l) / sum(w)        (0 when sum(w) = 0)

- ``bce``: binary cross-entropy with logits (sigmoid heads).
- ``dice``: soft Dice, ``1 - (2 sum(w p t) + 1) / (sum(w p) + sum(w t) + 1)`` with ``p`` the
  sigmoid (or, for semantic heads, the softmax per class, averaged over the classes).
- ``mse``, ``l1``: on the head's activation of the output (``tanh`` for the [-1, 1] distance
  target, ``sigmoid`` for the [0, 1] local shape descriptors).
- ``ce``: cross-entropy of the softmax over a semantic head's channels; the target holds class
  indices (as float) in one channel.

A head's loss ``bce+dice`` is the sum of both; the total loss is the sum of the heads' losses
times their weights. Losses are computed in float32 whatever the autocast precision.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F

from emtools.errors import EmError
from emtools.models.heads import ACTIVATIONS
from emtools.train.sampling import HeadTarget

SMOOTH = 1.0


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weighted_mean(F.binary_cross_entropy_with_logits(logits, target, reduction="none"), weight)


def soft_dice(prob: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    overlap = (weight * prob * target).sum()
    return 1.0 - (2.0 * overlap + SMOOTH) / ((weight * prob).sum() + (weight * target).sum() + SMOOTH)


def mse(values: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weighted_mean((values - target).square(), weight)


def l1(values: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return weighted_mean((values - target).abs(), weight)


def _activated(kind: str, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if ACTIVATIONS[kind] == "sigmoid" else torch.tanh(logits)


def _classes(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    classes = target[:, 0].long()
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= logits.shape[1]):
        raise EmError(f"a semantic target holds class {int(classes.max())} but the head has "
                      f"{logits.shape[1]} classes (0..{logits.shape[1] - 1})")
    return classes


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    per_voxel = F.cross_entropy(logits, _classes(logits, target), reduction="none")
    return weighted_mean(per_voxel, weight[:, 0])


def semantic_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    prob = torch.softmax(logits, dim=1)
    onehot = F.one_hot(_classes(logits, target), logits.shape[1]).movedim(-1, 1).to(prob.dtype)
    w = weight[:, :1]
    return torch.stack([soft_dice(prob[:, c], onehot[:, c], w[:, 0]) for c in range(logits.shape[1])]).mean()


def head_loss(head: HeadTarget, logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The loss of one head (``head.loss``, e.g. ``bce+dice``) on a batch, in float32."""
    logits, target, weight = logits.float(), target.float(), weight.float()
    total = logits.new_zeros(())
    for part in head.loss.split("+"):
        if part == "bce":
            total = total + bce(logits, target, weight)
        elif part == "dice":
            if head.kind == "semantic":
                total = total + semantic_dice(logits, target, weight)
            else:
                total = total + soft_dice(torch.sigmoid(logits), target, weight)
        elif part == "mse":
            total = total + mse(_activated(head.kind, logits), target, weight)
        elif part == "l1":
            total = total + l1(_activated(head.kind, logits), target, weight)
        elif part == "ce":
            total = total + cross_entropy(logits, target, weight)
        else:
            raise EmError(f"head {head.name}: unknown loss '{part}'")
    return total


def total_loss(heads: Sequence[HeadTarget], outputs: Mapping[str, torch.Tensor],
               batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(sum of head weight x head loss, {head: its loss}) for a batch of samples."""
    parts = {h.name: head_loss(h, outputs[h.name], batch[f"target.{h.name}"], batch[f"weight.{h.name}"])
             for h in heads}
    total = sum((h.weight * parts[h.name] for h in heads), next(iter(parts.values())).new_zeros(()))
    return total, parts
