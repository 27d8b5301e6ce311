"""Training samples: random crops, rejection sampling, augmentation, targets and their weights.

Every sample is a pure function of ``(seed, index)``: its random numbers come from
``numpy.random.default_rng([seed, 0, index, stream])``. ``index`` is global: on ``W`` ranks of
``B`` samples each, step ``s`` (1-based) of rank ``r`` takes samples ``(s-1)*B*W + r*B + j``,
``j < B`` (:func:`make_loader`), so

- the ranks split one global batch of ``B*W`` samples: each draws different crops from the same
  seed, and ``W`` ranks (on one node or several) see the very samples of one process with
  ``data.batch_size = B*W`` (their averaged gradients then equal its gradient up to float
  rounding wherever every sample's loss weights sum the same, e.g. bce or mse heads without
  masks or class balancing; with ``optim.lr_scaling=none``),
- a sample does not depend on which rank or DataLoader worker makes it, nor on ``num_workers``,
- resuming at step ``s`` only needs the next index (``s * B * W``): exact resume.

(The ``0`` in the key held the rank before indices were global; it stays so that the samples of
a single process, and so runs started earlier, are unchanged.)

One sample::

    pick a volume (weight x training voxels) -> pick a crop outside the held-out region
      -> (sparse targets) retry until the crop has >= min_foreground foreground, at most `tries`
      -> image * dtype scale in [0, 1]; labels, mask (ones where labelled) -> emtools.augment
      -> targets from the AUGMENTED labels (geometric consistency), valid = target's valid & mask
      -> weights = valid x class balance x border weights; image -> normalize_image

Pseudo-labelled volumes (a probability map p instead of labels) train one head: the target is
``p >= 0.5`` and it counts where ``max(p, 1 - p) >= confidence``; their other heads get weight 0.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.utils.data

from emtools import targets
from emtools.errors import EmError
from emtools.normalize import dtype_scale, normalize_image
from emtools.tiling.geometry import Box
from emtools.train.data import FOREGROUND_KINDS, SIGMOID_KINDS, Volume, crop_start_boxes


@dataclasses.dataclass(frozen=True)
class HeadTarget:
    """What one output head learns (from the resolved config's ``targets`` entry)."""

    name: str
    kind: str
    channels: int
    offsets: tuple[tuple[int, int, int], ...] = ()
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    loss: str = "bce"
    weight: float = 1.0
    balance: str = "none"
    border_weight: float = 0.0
    border_sigma_vx: float = 5.0
    border_mode: str = "2d"


def head_targets(config: Mapping[str, Any]) -> list[HeadTarget]:
    """The heads of a resolved config, in the model's output order."""
    heads = config["model"]["heads"]
    out = []
    for name, channels in heads.items():
        t = config["targets"][name]
        out.append(HeadTarget(name, t["kind"], int(channels), tuple(tuple(o) for o in t["offsets"] or ()),
                              dict(t["params"]), t["loss"], float(t["weight"]), t["balance"],
                              float(t["border_weight"]), float(t["border_sigma_vx"]), t["border_mode"]))
    return out


# ----------------------------------------------------------------------------- targets

def pair_mask(mask: np.ndarray, offset: Sequence[int]) -> np.ndarray:
    """``mask[p] & mask[p + offset]`` (0 where ``p + offset`` leaves the volume), as uint8."""
    out = np.zeros(mask.shape, np.uint8)
    here, there = [], []
    for o, n in zip(offset, mask.shape):
        if abs(o) >= n:
            return out
        here.append(slice(max(0, -o), n - max(0, o)))
        there.append(slice(max(0, o), n - max(0, -o)))
    out[tuple(here)] = mask[tuple(here)] & mask[tuple(there)]
    return out


def _broadcast(valid: np.ndarray, channels: int, shape) -> np.ndarray:
    valid = np.asarray(valid, dtype=np.float32)
    if valid.ndim == 3:
        valid = valid[None]
    return np.array(np.broadcast_to(valid, (channels,) + tuple(shape)), dtype=np.float32)  # a writable copy


def build_head_targets(heads: Sequence[HeadTarget], labels: np.ndarray, mask: np.ndarray | None,
                       voxel_size_nm: Sequence[float]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head, (target, weight) float32 ``(C, z, y, x)`` from labels and a mask (1 = labelled).

    The weight is 0 wherever the target is undefined (the target's own valid mask, voxels outside
    ``mask`` and, for affinities, edges with either end outside ``mask``), else 1 times the class
    balance and border weights the head asks for.
    """
    shape = labels.shape
    mask = np.ones(shape, np.uint8) if mask is None else (np.asarray(mask) != 0).astype(np.uint8)
    out = {}
    border_cache: dict[tuple, np.ndarray] = {}
    for head in heads:
        target, valid = targets.build_target(head.kind, labels, offsets=[list(o) for o in head.offsets] or None,
                                             voxel_size_nm=tuple(voxel_size_nm), **dict(head.params))
        target = np.asarray(target, dtype=np.float32)
        if target.ndim == 3:
            target = target[None]
        if target.shape != (head.channels,) + tuple(shape):
            raise EmError(f"head {head.name}: the {head.kind} target has {target.shape[0]} channels but the "
                          f"head has {head.channels}")
        valid = _broadcast(valid, head.channels, shape)
        if head.kind == "affinity":
            valid *= np.stack([pair_mask(mask, o) for o in head.offsets])
        else:
            valid *= mask[None]
        out[head.name] = (target, _weights(head, target, valid, labels, voxel_size_nm, border_cache))
    return out


def _weights(head, target, valid, labels, voxel_size_nm, border_cache) -> np.ndarray:
    weight = valid
    if head.balance == "class":
        weight = np.asarray(targets.class_balanced_weights(target, valid), dtype=np.float32)
    if head.border_weight > 0:
        key = (head.border_weight, head.border_sigma_vx, head.border_mode)
        if key not in border_cache:
            border_cache[key] = np.asarray(targets.border_weights(
                labels, w0=head.border_weight, sigma_vx=head.border_sigma_vx, mode=head.border_mode,
                voxel_size_nm=tuple(voxel_size_nm)), dtype=np.float32)
        weight = weight * border_cache[key][None]
    return np.ascontiguousarray(weight, dtype=np.float32)


def check_targets(heads: Sequence[HeadTarget], voxel_size_nm: Sequence[float]) -> None:
    """One-line errors for target parameters, before any work (builds each target on a tiny volume)."""
    labels = np.zeros((3, 3, 3), np.uint64)
    labels[1:, 1:, 1:] = 1
    for head in heads:
        try:
            build_head_targets([head], labels, None, voxel_size_nm)
        except EmError as exc:
            raise EmError(f"targets.{head.name}: {exc}") from None


def pseudo_targets(heads: Sequence[HeadTarget], head_name: str, hard: np.ndarray, confident: np.ndarray,
                   mask: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Targets of a pseudo-labelled crop: ``hard`` (C,z,y,x) where ``confident & mask``; other heads 0."""
    shape = hard.shape[1:]
    out = {}
    for head in heads:
        if head.name == head_name:
            target = hard.astype(np.float32)
            weight = (confident != 0).astype(np.float32) * (mask != 0)[None]
        else:
            target = np.zeros((head.channels,) + shape, np.float32)
            weight = np.zeros_like(target)
        out[head.name] = (target, np.ascontiguousarray(weight))
    return out


def pseudo_head_for(heads: Sequence[HeadTarget], volume: Volume) -> HeadTarget:
    """The head a probability map trains: ``pseudo_head`` or the first voxel-wise sigmoid head."""
    voxelwise = [h for h in heads if h.kind in SIGMOID_KINDS and h.kind != "affinity"]
    if volume.pseudo_head is not None:
        head = next(h for h in heads if h.name == volume.pseudo_head)
        if head not in voxelwise:
            raise EmError(f"pseudo-labels train voxel-wise sigmoid heads (boundary, foreground, contour, "
                          f"cleft); head {head.name} is {head.kind} ({volume.name})")
    elif voxelwise:
        head = voxelwise[0]
    else:
        raise EmError(f"pseudo-labels need a boundary, foreground, contour or cleft head ({volume.name})")
    if volume.probabilities.shape[0] != head.channels:
        raise EmError(f"the probability map {volume.name} has {volume.probabilities.shape[0]} channels but "
                      f"head {head.name} has {head.channels}")
    return head


# ----------------------------------------------------------------------------- sampling

def sample_rng(seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """The generator of (global) sample ``index`` (``stream`` 1 is its augmentation)."""
    return np.random.default_rng([int(seed), 0, int(index), int(stream)])


class PatchSampler:
    """Makes training sample ``index``, the same on every rank (see the module docstring)."""

    def __init__(self, volumes: Sequence[Volume], patch_zyx: Sequence[int], heads: Sequence[HeadTarget],
                 normalization: Mapping[str, float], augment_steps: Sequence = (), seed: int = 0,
                 min_foreground: float = 0.0, tries: int = 20):
        self.volumes = [v for v in volumes if not v.validation_only]
        self.patch_zyx = tuple(int(p) for p in patch_zyx)
        self.heads = list(heads)
        self.norm = {**normalization, "scale": 1.0}  # images are scaled to [0, 1] before augmentation
        self.steps = [(name, dict(params)) for name, params in augment_steps]
        self.seed = int(seed)
        self.min_foreground, self.tries = float(min_foreground), int(tries)
        self.sparse = any(h.kind in FOREGROUND_KINDS for h in self.heads) and self.min_foreground > 0
        self.starts = [crop_start_boxes(v.shape_zyx, self.patch_zyx, v.val_box) for v in self.volumes]
        weights = np.array([v.weight * v.train_voxels for v in self.volumes], dtype=np.float64)
        if not len(weights) or weights.sum() <= 0:
            raise EmError("no training volume has a positive sampling weight")
        self.volume_p = weights / weights.sum()
        self.pseudo = {i: pseudo_head_for(self.heads, v) for i, v in enumerate(self.volumes)
                       if v.probabilities is not None}

    def _crop(self, rng: np.random.Generator, which: int) -> Box:
        boxes = self.starts[which]
        sizes = np.array([b.size for b in boxes], dtype=np.float64)
        box = boxes[int(rng.choice(len(boxes), p=sizes / sizes.sum()))]
        begin = tuple(int(rng.integers(b, e)) for b, e in zip(box.begin, box.end))
        return Box.from_shape(self.patch_zyx, begin)

    def _foreground(self, volume: Volume, crop: Box) -> float:
        sl = Box.from_shape(volume.shape_zyx).local(crop)
        inside = volume.labels[sl] != 0
        if volume.mask is not None:
            inside &= volume.mask[sl] != 0
        return float(np.count_nonzero(inside)) / inside.size

    def choose(self, index: int) -> tuple[int, Box]:
        """The volume and crop of sample ``index`` (after rejection sampling)."""
        rng = sample_rng(self.seed, index)
        which = int(rng.choice(len(self.volumes), p=self.volume_p))
        volume = self.volumes[which]
        crop = self._crop(rng, which)
        if not self.sparse or volume.labels is None:
            return which, crop
        best, best_fraction = crop, self._foreground(volume, crop)
        for _ in range(self.tries - 1):
            if best_fraction >= self.min_foreground:
                break
            candidate = self._crop(rng, which)
            fraction = self._foreground(volume, candidate)
            if fraction > best_fraction:
                best, best_fraction = candidate, fraction
        return which, best

    def sample(self, index: int) -> dict[str, np.ndarray]:
        """``{"image": (1,z,y,x), "target.<head>": (C,z,y,x), "weight.<head>": (C,z,y,x)}`` float32."""
        which, crop = self.choose(index)
        volume = self.volumes[which]
        sl = Box.from_shape(volume.shape_zyx).local(crop)
        image = volume.image[sl].astype(np.float32) * np.float32(dtype_scale(volume.image.dtype))
        mask = np.ones(self.patch_zyx, np.uint8) if volume.mask is None else volume.mask[sl].copy()
        layers: dict[str, np.ndarray] = {"mask": mask}
        if volume.labels is not None:
            layers["labels"] = np.ascontiguousarray(volume.labels[sl])
        else:
            probs = volume.probabilities[(slice(None),) + sl]
            confidence = np.float32(volume.confidence)
            for c in range(probs.shape[0]):
                layers[f"pseudo{c}"] = (probs[c] >= 0.5).astype(np.uint8)
                layers[f"confident{c}"] = (np.maximum(probs[c], 1 - probs[c]) >= confidence).astype(np.uint8)
        if self.steps:
            from emtools import augment

            image, layers = augment.augment(image, layers, self.steps, sample_rng(self.seed, index, 1))
        if volume.labels is not None:
            targets = build_head_targets(self.heads, layers["labels"], layers["mask"], volume.voxel_size_nm)
        else:
            head = self.pseudo[which]
            hard = np.stack([layers[f"pseudo{c}"] for c in range(head.channels)])
            confident = np.stack([layers[f"confident{c}"] for c in range(head.channels)])
            targets = pseudo_targets(self.heads, head.name, hard, confident, layers["mask"])
        out = {"image": normalize_image(image, self.norm)[None]}
        for name, (target, weight) in targets.items():
            out[f"target.{name}"] = target
            out[f"weight.{name}"] = weight
        return out


# ----------------------------------------------------------------------------- torch side

def worker_seed(seed: int, rank: int, worker_id: int) -> int:
    """A 32-bit seed for a DataLoader worker's global RNGs, from the run seed, rank and worker id."""
    return int(np.random.SeedSequence([int(seed), int(rank), int(worker_id), 7]).generate_state(1)[0])


class _WorkerInit:
    """Seeds numpy, random and torch in each worker (picklable, unlike a closure).

    Workers ignore SIGINT and SIGTERM: a signal sent to the whole process group (Ctrl-C, timeout,
    a batch scheduler) is the main process's to handle, which then shuts the workers down.
    """

    def __init__(self, seed: int, rank: int):
        self.seed, self.rank = seed, rank

    def __call__(self, worker_id: int) -> None:
        import random
        import signal

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        value = worker_seed(self.seed, self.rank, worker_id)
        np.random.seed(value)
        random.seed(value)
        torch.manual_seed(value)
        torch.set_num_threads(1)


class PatchDataset(torch.utils.data.Dataset):
    """Sample ``index`` of a :class:`PatchSampler` as torch tensors."""

    def __init__(self, sampler: PatchSampler):
        self.sampler = sampler

    def __getitem__(self, index):
        return {k: torch.from_numpy(v) for k, v in self.sampler.sample(int(index)).items()}


def make_loader(sampler: PatchSampler, batch_size: int, first_step: int, last_step: int, num_workers: int,
                rank: int = 0, world_size: int = 1):
    """Rank ``rank``'s batches for steps ``first_step..last_step`` (1-based): with ``B = batch_size``
    and ``W = world_size``, step s gets the global samples ``(s-1)BW + rB .. (s-1)BW + rB + B-1``."""
    group = batch_size * world_size
    indices = [(s - 1) * group + rank * batch_size + j for s in range(first_step, last_step + 1)
               for j in range(batch_size)]
    return torch.utils.data.DataLoader(
        PatchDataset(sampler), batch_size=batch_size, sampler=indices, num_workers=num_workers,
        worker_init_fn=_WorkerInit(sampler.seed, rank) if num_workers else None, drop_last=False)
