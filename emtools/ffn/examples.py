"""FFN training examples (google/ffn's recipe, numpy only): partitions, centre sampling, soft targets.

Partitions (google/ffn's ``compute_partitions``): each labelled voxel gets the fraction of voxels
of its own object within a box of radius ``lom_radius`` (default: half the FOV plus the deltas)
around it, binned by the thresholds (``t_0 < t_1 < ...``)::

    fraction <  t_0          -> partition 1   (thin processes, object borders)
    t_{i-1} <= fraction < t_i -> partition i + 1
    fraction >= t_last       -> partition len(thresholds) + 1   (object interiors)

Partition 0 is excluded: background (label 0), objects under ``min_object_size`` voxels, and
centres whose training patch (``fov + 2 x deltas x fov_moves``) would leave the volume, enter the
held-out region or contain unlabelled voxels (mask 0). Centres are drawn by first picking a
non-empty partition uniformly (pooled over the volumes), then a voxel of it uniformly, so thin
processes are trained on as often as interiors.

One example (:meth:`ExampleSource.draw`), a pure function of ``(seed, key)``::

    centre -> patch of image and labels around it -> data.augment steps (em-augment; labels move
      with the image) -> axis permutation (axes whose FOV, deltas and voxel size are equal) and
      reflection -> targets: 1 - s on the seed object (the centre's label), s elsewhere (s = 0.05)
      -> image normalised as the checkpoint says

The object map of an example starts as ``seed_value`` (0.95) at the centre and ``seed_pad``
(0.05) elsewhere, stored as logits (:func:`initial_object_map`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Sequence

import numpy as np

from emtools.errors import EmError
from emtools.normalize import dtype_scale, normalize_image

Triple = tuple[int, int, int]

DEFAULT_THRESHOLDS = (0.025, 0.05, 0.075, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
UINT8_NORMALIZATION = {"scale": 1.0, "mean": 128.0, "std": 33.0}  # google/ffn's FIB-25 image mean / std


# ----------------------------------------------------------------------------- geometry

def patch_shape(fov_zyx: Sequence[int], deltas_zyx: Sequence[int], fov_moves: int) -> Triple:
    """The training patch around a centre: the FOV plus ``fov_moves`` steps of the deltas each way."""
    return tuple(int(f) + 2 * int(d) * int(fov_moves) for f, d in zip(fov_zyx, deltas_zyx))  # type: ignore[return-value]


def default_lom_radius(fov_zyx: Sequence[int], deltas_zyx: Sequence[int]) -> Triple:
    """Radius of the box the partition fraction counts in: half the FOV plus one step."""
    return tuple(int(f) // 2 + int(d) for f, d in zip(fov_zyx, deltas_zyx))  # type: ignore[return-value]


def box_counts(inside: np.ndarray, radius_zyx: Sequence[int]) -> np.ndarray:
    """For every voxel, how many ``inside`` voxels lie in the box of ``radius_zyx`` around it
    (voxels beyond the array count as outside). Summed-volume table: O(voxels), any radius."""
    inside = np.asarray(inside, dtype=bool)
    r = [int(v) for v in radius_zyx]
    shape = inside.shape
    padded_shape = tuple(n + 2 * k for n, k in zip(shape, r))
    dtype = np.int32 if int(np.prod(padded_shape)) < 2**31 - 1 else np.int64
    table = np.zeros(tuple(n + 1 for n in padded_shape), dtype)
    table[1:, 1:, 1:] = np.pad(inside, [(k, k) for k in r]).astype(dtype).cumsum(0).cumsum(1).cumsum(2)
    out = np.zeros(shape, dtype)
    for corner in range(8):
        sel, sign = [], 1
        for axis in range(3):
            high = (corner >> axis) & 1
            start = 2 * r[axis] + 1 if high else 0
            sel.append(slice(start, start + shape[axis]))
            if not high:
                sign = -sign
        # inclusion-exclusion: + for the all-high corner, the sign flips with each low axis
        out += sign * table[tuple(sel)]
    return out


def partition_map(labels: np.ndarray, radius_zyx: Sequence[int], thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
                  min_object_size: int = 0, allowed: np.ndarray | None = None) -> np.ndarray:
    """uint8 partitions of ``labels`` (see the module docstring); 0 where excluded or not ``allowed``.

    Each object is processed within its bounding box (its voxels all lie there, so the counts
    need nothing beyond it)."""
    from scipy import ndimage

    thresholds = np.asarray(sorted(float(t) for t in thresholds), dtype=np.float64)
    if len(thresholds) > 250:
        raise EmError("ffn.partition_thresholds: at most 250 thresholds")
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, np.uint8)
    ids, compact, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    compact = compact.reshape(labels.shape)
    box_volume = float(np.prod([2 * int(k) + 1 for k in radius_zyx]))
    boxes = ndimage.find_objects(compact + 1)
    for index, (label, size) in enumerate(zip(ids, sizes)):
        if label == 0 or size < min_object_size or boxes[index] is None:
            continue
        where = boxes[index]
        obj = compact[where] == index
        fraction = box_counts(obj, radius_zyx)[obj] / box_volume
        part = out[where]
        part[obj] = (np.searchsorted(thresholds, fraction, side="right") + 1).astype(np.uint8)
    if allowed is not None:
        out[~np.asarray(allowed, dtype=bool)] = 0
    return out


def allowed_centres(shape_zyx: Sequence[int], patch_zyx: Sequence[int], val_box=None, mask: np.ndarray | None = None,
                    inside_val: bool = False) -> np.ndarray:
    """bool (z, y, x): centres whose patch lies inside the volume, has no unlabelled voxel (mask 0)
    and stays out of ``val_box`` (``inside_val``: lies wholly inside it instead)."""
    half = [int(p) // 2 for p in patch_zyx]
    out = np.zeros(tuple(int(n) for n in shape_zyx), bool)
    fits = tuple(slice(h, n - h) for h, n in zip(half, out.shape))
    if any(n - 2 * h <= 0 for h, n in zip(half, out.shape)):
        return out
    out[fits] = True
    if val_box is not None:
        if inside_val:
            keep = np.zeros_like(out)
            sel = tuple(slice(b + h, e - h) for b, e, h in zip(val_box.begin, val_box.end, half))
            if all(s.stop > s.start for s in sel):
                keep[sel] = True
            out &= keep
        else:
            # the patch [c - h, c + h] meets [b, e) iff b - h <= c <= e - 1 + h
            sel = tuple(slice(max(b - h, 0), max(e + h, 0)) for b, e, h in zip(val_box.begin, val_box.end, half))
            out[sel] = False
    elif inside_val:
        out[:] = False
    if mask is not None and out.any():
        out &= box_counts(np.asarray(mask) == 0, half) == 0
    return out


def permutable_axes(fov_zyx: Sequence[int], deltas_zyx: Sequence[int], voxel_size_nm: Sequence[float]) -> tuple[int, ...]:
    """The axes that may be swapped: those with the same FOV, deltas and voxel size (at least two)."""
    groups: dict[tuple, list[int]] = {}
    for axis in range(3):
        key = (int(fov_zyx[axis]), int(deltas_zyx[axis]), round(float(voxel_size_nm[axis]), 6))
        groups.setdefault(key, []).append(axis)
    best = max(groups.values(), key=len)
    return tuple(best) if len(best) >= 2 else ()


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def initial_object_map(patch_zyx: Sequence[int], seed_pad: float = 0.05, seed_value: float = 0.95) -> np.ndarray:
    """The object map (logits, float32) an example starts from: ``seed_value`` at the centre."""
    canvas = np.full(tuple(int(p) for p in patch_zyx), logit(seed_pad), np.float32)
    canvas[tuple(int(p) // 2 for p in patch_zyx)] = logit(seed_value)
    return canvas


def soft_targets(labels: np.ndarray, seed_label: int, softening: float = 0.05) -> np.ndarray:
    """float32: ``1 - softening`` on the seed object, ``softening`` elsewhere (label 0 included)."""
    obj = (labels == np.asarray(seed_label, labels.dtype)) & (labels != 0)
    return np.where(obj, np.float32(1.0 - softening), np.float32(softening)).astype(np.float32)


def default_normalization(images: Sequence[np.ndarray], seed: int, mean: float | None = None,
                          std: float | None = None) -> dict[str, float]:
    """google/ffn's mean 128 / std 33 on raw uint8 values; ``mean``/``std`` (raw units) if given;
    else fitted (other dtypes)."""
    if mean is not None or std is not None:
        if mean is None or std is None:
            raise EmError("give both ffn.image_mean and ffn.image_std (raw image units), or neither")
        if not std > 0:
            raise EmError(f"ffn.image_std must be positive, got {std}")
        return {"scale": 1.0, "mean": float(mean), "std": float(std)}
    if all(np.asarray(im).dtype == np.uint8 for im in images):
        return dict(UINT8_NORMALIZATION)
    from emtools.normalize import fit_normalization

    return fit_normalization(list(images), seed=seed)


# ----------------------------------------------------------------------------- settings

@dataclasses.dataclass(frozen=True)
class ExampleSettings:
    """What shapes an example (from the resolved config's ``ffn`` section and the model spec)."""

    fov_zyx: Triple
    deltas_zyx: Triple
    fov_moves: int = 1
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    lom_radius_zyx: Triple | None = None
    min_object_size: int = 1000
    label_softening: float = 0.05
    permute: bool = True
    reflect: bool = True
    augment_steps: tuple = ()

    @property
    def patch_zyx(self) -> Triple:
        return patch_shape(self.fov_zyx, self.deltas_zyx, self.fov_moves)

    @property
    def radius_zyx(self) -> Triple:
        return self.lom_radius_zyx or default_lom_radius(self.fov_zyx, self.deltas_zyx)

    @classmethod
    def from_config(cls, config: Mapping[str, Any], spec) -> "ExampleSettings":
        f = config["ffn"]
        check_ffn_section(f)
        radius = f["lom_radius_zyx"]
        return cls(tuple(spec.fov_zyx), tuple(spec.deltas_zyx), int(f["fov_moves"]),
                   tuple(float(t) for t in f["partition_thresholds"]),
                   tuple(int(r) for r in radius) if radius is not None else None,
                   int(f["min_object_size"]), float(f["label_softening"]), bool(f["permute"]), bool(f["reflect"]),
                   tuple((name, dict(params)) for name, params in config["data"]["augment"]))


def check_ffn_section(f: Mapping[str, Any]) -> None:
    """One-line errors for values of the ``ffn`` config section that cannot work."""
    for key in ("move_threshold", "seed_pad", "seed_value"):
        if not 0.0 < float(f[key]) < 1.0:
            raise EmError(f"ffn.{key} must lie strictly between 0 and 1, got {f[key]}")
    if not 0.0 <= float(f["label_softening"]) < 0.5:
        raise EmError(f"ffn.label_softening must lie in [0, 0.5), got {f['label_softening']}")
    thresholds = list(f["partition_thresholds"])
    if not thresholds or any(not 0.0 < t <= 1.0 for t in thresholds) or sorted(set(thresholds)) != thresholds:
        raise EmError("ffn.partition_thresholds must be increasing fractions in (0, 1], e.g. 0.025,0.05,0.1,0.5,0.9")
    if f["lom_radius_zyx"] is not None and any(int(r) < 0 for r in f["lom_radius_zyx"]):
        raise EmError("ffn.lom_radius_zyx must not be negative")


# ----------------------------------------------------------------------------- examples

@dataclasses.dataclass
class Example:
    """One training example: the normalised image patch, its soft targets and where it came from."""

    image: np.ndarray  # float32 patch (z, y, x), normalised
    target: np.ndarray  # float32 patch: 1 - s on the seed object, s elsewhere
    volume: int
    centre_zyx: Triple  # in the volume's local voxels
    partition: int
    label: int


class ExampleSource:
    """Draws examples from the training part (``split="train"``) or the held-out regions
    (``split="val"``) of labelled volumes; every draw is a pure function of ``(seed, key)``."""

    def __init__(self, volumes: Sequence, settings: ExampleSettings, normalization: Mapping[str, float],
                 seed: int = 0, split: str = "train", partitions: Sequence[np.ndarray] | None = None):
        """``partitions``: the volumes' :func:`partition_map` (without ``allowed``) when already computed."""
        self.settings, self.seed, self.split = settings, int(seed), split
        self.norm = dict(normalization)
        self.volumes = list(volumes)
        patch = settings.patch_zyx
        self.patch_zyx = patch
        maps = []
        for index, v in enumerate(self.volumes):
            if v.labels is None:
                raise EmError(f"FFN training needs instance labels; {v.name} has a probability map")
            if split == "train":
                allowed = (allowed_centres(v.shape_zyx, patch, v.val_box, v.mask)
                           if not v.validation_only else np.zeros(v.shape_zyx, bool))
            else:
                allowed = (allowed_centres(v.shape_zyx, patch, v.val_box, v.mask, inside_val=True)
                           if v.val_box is not None else np.zeros(v.shape_zyx, bool))
            pmap = np.zeros(v.shape_zyx, np.uint8)
            if allowed.any():
                if partitions is not None:
                    pmap = np.where(allowed, partitions[index], np.uint8(0))
                else:
                    pmap = partition_map(v.labels, settings.radius_zyx, settings.thresholds,
                                         settings.min_object_size, allowed)
            maps.append(pmap)
        count = len(settings.thresholds) + 1
        self.by_partition: dict[int, list[np.ndarray]] = {}
        for p in range(1, count + 1):
            per_volume = [np.flatnonzero(pmap == p) for pmap in maps]
            if sum(len(a) for a in per_volume):
                self.by_partition[p] = per_volume
        self.counts = {p: [len(a) for a in arrays] for p, arrays in self.by_partition.items()}
        self.permutable = permutable_axes(settings.fov_zyx, settings.deltas_zyx,
                                          self.volumes[0].voxel_size_nm) if settings.permute and self.volumes else ()

    @property
    def empty(self) -> bool:
        return not self.by_partition

    def choose(self, rng: np.random.Generator) -> tuple[int, int, Triple]:
        """(partition, volume, centre): a partition uniformly, then a voxel of it uniformly."""
        names = sorted(self.by_partition)
        partition = names[int(rng.integers(len(names)))]
        counts = np.array(self.counts[partition], dtype=np.int64)
        pick = int(rng.integers(int(counts.sum())))
        which = int(np.searchsorted(np.cumsum(counts), pick, side="right"))
        flat = self.by_partition[partition][which][pick - int(counts[:which].sum())]
        centre = tuple(int(c) for c in np.unravel_index(int(flat), self.volumes[which].shape_zyx))
        return partition, which, centre  # type: ignore[return-value]

    def draw(self, key: Sequence[int], augment: bool = True) -> Example:
        """The example of ``key`` (e.g. ``(stream, slot, k)``); the same on every rank and run."""
        if self.empty:
            raise EmError("no training example: no labelled object reaches ffn.min_object_size voxels with a "
                          "whole patch inside the labelled training region")
        rng = np.random.default_rng([self.seed, *[int(k) for k in key]])
        partition, which, centre = self.choose(rng)
        return self.cut(which, centre, rng if augment else None, partition)

    def draw_plain(self, key: Sequence[int]) -> Example:
        """The example of ``key`` without augmentation (validation)."""
        return self.draw(key, augment=False)

    def cut(self, which: int, centre_zyx: Sequence[int], rng: np.random.Generator | None = None,
            partition: int = 0) -> Example:
        """The (augmented when ``rng`` is given) example centred at ``centre_zyx`` of volume ``which``."""
        volume = self.volumes[which]
        sl = tuple(slice(int(c) - p // 2, int(c) + p // 2 + 1) for c, p in zip(centre_zyx, self.patch_zyx))
        labels = np.ascontiguousarray(volume.labels[sl])
        seed_label = int(labels[tuple(p // 2 for p in self.patch_zyx)])
        raw = volume.image[sl]
        if rng is not None and self.settings.augment_steps:
            from emtools import augment

            scale = np.float32(dtype_scale(raw.dtype))
            image01 = raw.astype(np.float32) * scale
            image01, layers = augment.augment(image01, {"labels": labels}, list(self.settings.augment_steps), rng)
            labels = layers["labels"]
            image = normalize_image(image01 / scale, self.norm)
        else:
            image = normalize_image(raw, self.norm)
        target = soft_targets(labels, seed_label, self.settings.label_softening)
        if rng is not None:
            image, target = self.transform(image, target, rng)
        return Example(np.ascontiguousarray(image, np.float32), np.ascontiguousarray(target, np.float32), which,
                       tuple(int(c) for c in centre_zyx), int(partition), seed_label)  # type: ignore[arg-type]

    def transform(self, image: np.ndarray, target: np.ndarray, rng: np.random.Generator):
        """Axis permutation (among :func:`permutable_axes`) and reflection, the same for both."""
        order = [0, 1, 2]
        if len(self.permutable) >= 2:
            shuffled = [self.permutable[i] for i in rng.permutation(len(self.permutable))]
            for axis, new in zip(self.permutable, shuffled):
                order[axis] = new
        flips = [bool(rng.integers(2)) for _ in range(3)] if self.settings.reflect else [False] * 3
        out = []
        for array in (image, target):
            array = np.transpose(array, order)
            flip_axes = tuple(a for a in range(3) if flips[a])
            if flip_axes:
                array = np.flip(array, flip_axes)
            out.append(array)
        return out[0], out[1]
