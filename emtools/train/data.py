"""Training volumes: reading and checking them, the train/validation split, the normalisation.

Each configured volume is an image with labels (and optionally a mask of where the labels are
valid), or an image with a predicted probability map (pseudo-labels, for self-training). All are
read into memory once (the DataLoader's workers share them copy-on-write) and checked: same
shape, position and voxel size for an image and its labels, one voxel size for all volumes.

The held-out region (``val_region``) of a volume is given in its local voxels::

    'last 5 z'           the last 5 z sections      'first 64 y'   the first 64 rows
    'z0:z1,y0:y1,x0:x1'  a box (empty bound = the whole axis, e.g. ':,0:128,:')
    'all'                the whole volume is for validation only

Training crops never overlap the held-out region: they are drawn only from start positions whose
crop lies wholly outside it (see :func:`crop_start_boxes`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import numpy as np

from emtools import io
from emtools.errors import EmError
from emtools.meta import Metadata, require_same_grid
from emtools.normalize import dtype_scale, fit_normalization
from emtools.tiling.geometry import Box, uncovered_boxes
from emtools.train.config import parse_region_text

log = logging.getLogger("emtools")

FOREGROUND_KINDS = ("foreground", "cleft", "contour", "distance", "semantic")
SIGMOID_KINDS = ("affinity", "boundary", "foreground", "contour", "cleft")
# Below this foreground fraction a foreground-like target gets rejection sampling automatically.
SPARSE_FOREGROUND = 0.1


@dataclasses.dataclass
class Volume:
    """One training volume in memory (all arrays z,y,x; probabilities c,z,y,x)."""

    name: str
    image: np.ndarray
    labels: np.ndarray | None  # uint64 instance ids or classes, 0 = background
    mask: np.ndarray | None  # uint8, 1 where labelled; None: everywhere
    probabilities: np.ndarray | None  # float32 in [0, 1], pseudo-labels
    pseudo_head: str | None
    confidence: float
    voxel_size_nm: tuple[float, float, float]
    val_box: Box | None  # local voxels; None: no held-out region
    weight: float = 1.0

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(self.image.shape)  # type: ignore[return-value]

    @property
    def validation_only(self) -> bool:
        return self.val_box is not None and self.val_box == Box.from_shape(self.shape_zyx)

    @property
    def train_voxels(self) -> int:
        held = self.val_box.size if self.val_box is not None else 0
        return int(np.prod(self.shape_zyx)) - held


def region_box(text: str, shape_zyx: Sequence[int], where: str) -> Box:
    """The local box of a ``val_region`` text (see the module docstring) in a volume of ``shape_zyx``."""
    parsed = parse_region_text(text, where)
    full = Box.from_shape(shape_zyx)
    if parsed[0] == "all":
        return full
    if parsed[0] == "slab":
        _, side, count, axis = parsed
        if count > shape_zyx[axis]:
            raise EmError(f"{where}: '{text}' is more than the volume's {shape_zyx[axis]} voxels along {'zyx'[axis]}")
        begin, end = list(full.begin), list(full.end)
        if side == "last":
            begin[axis] = shape_zyx[axis] - count
        else:
            end[axis] = count
        return Box(begin, end)
    begin, end = [], []
    for axis, (lo, hi) in enumerate(parsed[1]):
        n = shape_zyx[axis]
        lo = 0 if lo is None else (lo + n if lo < 0 else lo)
        hi = n if hi is None else (hi + n if hi < 0 else hi)
        if not 0 <= lo < hi <= n:
            raise EmError(f"{where}: '{text}' lies outside the volume (shape {_shape(shape_zyx)}) or is empty")
        begin.append(lo)
        end.append(hi)
    return Box(begin, end)


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def crop_start_boxes(shape_zyx: Sequence[int], patch_zyx: Sequence[int], val_box: Box | None) -> list[Box]:
    """Disjoint boxes of crop start positions whose crop lies inside the volume and outside ``val_box``.

    Starts run over ``[0, n - p]`` per axis; a crop at ``s`` overlaps ``val_box`` iff
    ``v0 - p < s < v1`` on every axis, which is one box of starts, so the allowed starts are the
    start range minus that box (a few boxes, sampled by size: uniform over allowed crops).
    """
    if any(p > n for p, n in zip(patch_zyx, shape_zyx)):
        return []
    starts = Box((0, 0, 0), tuple(n - p + 1 for n, p in zip(shape_zyx, patch_zyx)))
    if val_box is None:
        return [starts]
    forbidden = Box(tuple(v - p + 1 for v, p in zip(val_box.begin, patch_zyx)), val_box.end)
    clipped = forbidden.intersect(starts)
    return [starts] if clipped is None else uncovered_boxes(starts, [clipped])


def _open(spec: str, voxel_size_nm) -> tuple[np.ndarray, Metadata, Box]:
    with io.open_volume(spec, voxel_size_nm=voxel_size_nm) as source:
        data = source.read()
        return data, source.meta, source.box


def _as_3d(data: np.ndarray, spec: str, what: str) -> np.ndarray:
    if data.ndim == 4 and data.shape[0] == 1:
        data = data[0]
    if data.ndim != 3:
        raise EmError(f"the {what} must be 3D (z, y, x), but {spec} has shape {_shape(data.shape)}")
    return data


def _check_same(first: tuple[str, Metadata, Box], second: tuple[str, Metadata, Box]) -> None:
    from emtools.meta import require_same_region

    require_same_region(first, second)


def label_components(labels: np.ndarray, mode: str) -> np.ndarray:
    """Instances from a binary mask (non-zero = inside): connected components per section or in 3D."""
    import cc3d

    inside = labels != 0
    if mode == "3d":
        return cc3d.connected_components(inside, connectivity=6).astype(np.uint64)
    out = np.zeros(labels.shape, np.uint64)
    next_id = 0
    for z in range(labels.shape[0]):
        section, count = cc3d.connected_components(inside[z], connectivity=4, return_N=True)
        section = section.astype(np.uint64)
        section[section > 0] += np.uint64(next_id)
        out[z] = section
        next_id += int(count)
    return out


def read_volume(entry: dict, index: int, model_voxel_size_nm: Sequence[float] | None = None) -> Volume:
    """Read and check one ``data.volumes`` entry of a resolved config; with ``model_voxel_size_nm``
    (``data.model_voxel_size_nm``), brought down to that voxel size (:func:`downsample_volume`)."""
    where = f"data.volumes.{index}"
    override = entry["voxel_size_nm"]
    spec = entry["image"]
    image, meta, box = _open(spec, override)
    image = _as_3d(image, spec, "image")
    if image.dtype.kind not in "uf":
        raise EmError(f"the image must be unsigned integers or floats, but {spec} is {image.dtype}")
    labels = mask = probabilities = None
    if entry["labels"] is not None:
        labels, lmeta, lbox = _open(entry["labels"], override)
        labels = _as_3d(labels, entry["labels"], "labels")
        _check_same((spec, meta, box), (entry["labels"], lmeta, lbox))
        if labels.dtype.kind not in "uib":
            raise EmError(f"labels must be integers (uint64 or uint32), but {entry['labels']} is {labels.dtype}")
        if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
            raise EmError(f"labels must not be negative ({entry['labels']})")
        if entry["label_components"] != "none":
            labels = label_components(labels, entry["label_components"])
        labels = labels.astype(np.uint64, copy=False)
    else:
        probabilities, pmeta, pbox = _open(entry["probabilities"], override)
        if probabilities.ndim == 3:
            probabilities = probabilities[None]
        if probabilities.ndim != 4:
            raise EmError(f"a probability map must be (z, y, x) or (c, z, y, x), "
                          f"but {entry['probabilities']} has shape {_shape(probabilities.shape)}")
        _check_same((spec, meta, box), (entry["probabilities"], pmeta, pbox))
        probabilities = _unit_float(probabilities, entry["probabilities"])
    if entry["mask"] is not None:
        mask, mmeta, mbox = _open(entry["mask"], override)
        mask = _as_3d(mask, entry["mask"], "mask")
        _check_same((spec, meta, box), (entry["mask"], mmeta, mbox))
        mask = (mask != 0).astype(np.uint8)
    val_box = None
    if entry["val_region"] is not None:
        val_box = region_box(entry["val_region"], image.shape, f"{where}.val_region")
    volume = Volume(spec, image, labels, mask, probabilities, entry["pseudo_head"], entry["confidence"],
                    meta.voxel_size_nm, val_box, entry["weight"])
    if model_voxel_size_nm is not None:
        volume = downsample_volume(volume, model_voxel_size_nm)
    return volume


def downsample_volume(volume: Volume, model_voxel_size_nm: Sequence[float]) -> Volume:
    """The volume at the model's coarser voxel size (a whole multiple of its own, per axis).

    The image is averaged (integer images rounded back to their type, so the normalisation's scale
    still holds), labels and the mask take the most frequent value of each block
    (:func:`emtools.resample.downsample_mode`), pseudo-label probabilities are averaged. A
    remainder of less than one factor at the far end of an axis is dropped. The held-out region
    grows to every coarse voxel that touches it, so no training crop sees a held-out voxel."""
    from emtools import resample

    f = resample.factors(volume.voxel_size_nm, model_voxel_size_nm)
    if f is None:
        raise EmError(f"{volume.name} has voxel size {_fmt_nm(volume.voxel_size_nm)} nm: the model's "
                      f"{_fmt_nm(model_voxel_size_nm)} nm (data.model_voxel_size_nm; with --init the checkpoint's) is not "
                      "a whole multiple of it along every axis; resample the data, or with --init pass --force to "
                      "train at the data's own voxel size")
    if f == resample.ONE:
        return volume
    shape = tuple(n // s * s for n, s in zip(volume.shape_zyx, f))
    if any(n == 0 for n in shape):
        raise EmError(f"{volume.name} (shape {_shape(volume.shape_zyx)}) is smaller than one voxel of "
                      f"{_fmt_nm(model_voxel_size_nm)} nm (factors {_shape(f)})")
    cut = tuple(slice(0, n) for n in shape)
    image = resample.downsample_mean(volume.image[cut], f)
    if volume.image.dtype.kind in "ui":
        image = np.rint(image).astype(volume.image.dtype)
    labels = None if volume.labels is None else resample.downsample_mode(volume.labels[cut], f)
    mask = None if volume.mask is None else resample.downsample_mode(volume.mask[cut], f)
    probabilities = None if volume.probabilities is None else \
        resample.downsample_mean(volume.probabilities[(slice(None),) + cut], f)
    val_box = None  # also when the held-out voxels all lie in the dropped remainder
    if volume.val_box is not None:
        val_box = resample.coarse_box(volume.val_box, f).intersect(Box.from_shape(image.shape))
    voxel = tuple(v * s for v, s in zip(volume.voxel_size_nm, f))
    log.info("%s: averaged %s down to %s nm (%s voxels)", volume.name, _shape(f), _fmt_nm(voxel), _shape(image.shape))
    return dataclasses.replace(volume, image=image, labels=labels, mask=mask, probabilities=probabilities,
                               voxel_size_nm=voxel, val_box=val_box)


def _fmt_nm(values) -> str:
    return ",".join(f"{float(v):g}" for v in values)


def _unit_float(values: np.ndarray, spec: str) -> np.ndarray:
    if values.dtype == np.uint8:
        return values.astype(np.float32) / np.float32(255.0)
    if values.dtype.kind != "f":
        raise EmError(f"a probability map must be float in [0, 1] or uint8, but {spec} is {values.dtype}")
    values = values.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)):
        raise EmError(f"the probability map contains NaN or Inf ({spec})")
    if values.size and (values.min() < 0.0 or values.max() > 1.0):
        raise EmError(f"the probability map must lie in [0, 1] ({spec})")
    return values


def read_volumes(entries: Sequence[dict], model_voxel_size_nm: Sequence[float] | None = None) -> list[Volume]:
    """Every volume of ``data.volumes`` (at ``model_voxel_size_nm`` when given), checked against
    each other (one voxel size, one dtype family)."""
    if not entries:
        raise EmError("no training data: give data.volumes (image and labels), e.g. "
                      "data.volumes.0.image=raw.h5:/raw data.volumes.0.labels=gt.h5:/labels")
    volumes = [read_volume(entry, i, model_voxel_size_nm) for i, entry in enumerate(entries)]
    require_same_grid([(v.name, Metadata(voxel_size_nm=v.voxel_size_nm)) for v in volumes])
    scales = {dtype_scale(v.image.dtype) for v in volumes}
    if len(scales) > 1:
        raise EmError("the training images mix dtypes of different ranges ("
                      + ", ".join(sorted({str(v.image.dtype) for v in volumes})) + "); convert them to one")
    return volumes


def check_training_data(volumes: Sequence[Volume], patch_zyx: Sequence[int], kinds: Sequence[str],
                        min_foreground: float | None) -> float:
    """One-line errors for data that cannot train; returns the ``min_foreground`` to use.

    Every training volume must hold at least one crop of ``patch_zyx`` outside its held-out
    region. Foreground-like targets need some foreground (label != 0) in the training regions;
    when it is sparse and ``min_foreground`` is not set, crops are rejection-sampled to hold at
    least half the average fraction (with a warning).
    """
    training = [v for v in volumes if not v.validation_only]
    if not training:
        raise EmError("every volume is held out for validation (val_region: all); nothing to train on")
    for v in training:
        if any(p > n for p, n in zip(patch_zyx, v.shape_zyx)):
            raise EmError(f"crop {','.join(map(str, patch_zyx))} is larger than {v.name} "
                          f"(shape {_shape(v.shape_zyx)}); use a smaller data.patch_zyx")
        if not crop_start_boxes(v.shape_zyx, patch_zyx, v.val_box):
            raise EmError(f"no crop {','.join(map(str, patch_zyx))} of {v.name} lies outside its "
                          f"val_region {v.val_box.text()}; hold out less or use a smaller crop")
    if not any(k in FOREGROUND_KINDS for k in kinds):
        return min_foreground or 0.0
    labelled = [v for v in training if v.labels is not None]
    counts = [_foreground_count(v) for v in labelled]
    voxels = sum(v.train_voxels for v in labelled)
    if labelled and sum(counts) == 0:
        names = ", ".join(v.name for v in labelled)
        raise EmError(f"the labels have no foreground (all 0) in the training region of {names}, "
                      f"but a {', '.join(k for k in kinds if k in FOREGROUND_KINDS)} target needs some")
    if min_foreground is not None or not labelled:
        return min_foreground or 0.0
    fraction = sum(counts) / max(voxels, 1)
    if fraction >= SPARSE_FOREGROUND:
        return 0.0
    chosen = fraction / 2.0
    log.warning("warning: sparse foreground (%.3g%% of the training voxels); sampling crops with at least "
                "%.3g%% foreground (set data.min_foreground to choose)", 100 * fraction, 100 * chosen)
    return chosen


def _foreground_count(v: Volume) -> int:
    inside = v.labels != 0
    if v.mask is not None:
        inside &= v.mask != 0
    total = int(np.count_nonzero(inside))
    if v.val_box is not None:
        total -= int(np.count_nonzero(inside[Box.from_shape(v.shape_zyx).local(v.val_box)]))
    return total


def fit_image_normalization(volumes: Sequence[Volume], seed: int) -> dict[str, float]:
    """The normalisation (scale, mean, std) of the training images (:func:`emtools.normalize.fit_normalization`)."""
    return fit_normalization([v.image for v in volumes if not v.validation_only], seed=seed)
