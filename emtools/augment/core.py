"""The machinery every augmentation shares: the registry, option checking, and resampling.

An augmentation is a function ``f(image, labels, rng, **options) -> (image, labels)`` registered
with :func:`augmentation`, which declares its options (default, kind, bounds) once. The
registered wrapper fills in defaults, checks the options (one-line :class:`EmError` naming the
valid ones), checks the arrays, and calls the body with every option resolved. The body never
modifies its inputs and keeps every shape.

Resampling (:func:`resample`, compiled loops in :mod:`emtools.augment.kernels`) follows one
rule for all geometric transforms: the image is sampled (bi/trilinear) with symmetric
reflection at the borders; label-like arrays take the value of the nearest source voxel, or 0
where that voxel lies outside the volume (so a "mask" entry becomes 0 there and losses ignore
those voxels). Labels are gathered by integer index, never interpolated or converted to float,
so uint64 ids survive exactly.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from emtools import values
from emtools.errors import EmError

Labels = dict[str, np.ndarray]
AUGMENTATIONS: dict[str, Callable] = {}


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of an augmentation.

    ``kind`` (a key of :data:`KINDS`, each a converter of :mod:`emtools.values`): ``range`` (a pair
    lo <= hi of numbers drawn uniformly; a single number means that fixed value), ``int_range``
    (the same with integers, both ends included), ``float``, ``int``, ``bool``, ``choice`` (one of
    ``choices``), ``text``, ``axes`` (letters of z, y, x, e.g. ``yx``) or ``object`` (anything, e.g.
    an array, not checked here). ``lo``/``hi`` bound numbers (inclusive). Options are Python
    values (from code or YAML), never text: ``"3"`` is not a number here.
    """

    default: Any
    kind: str
    help: str
    lo: float | None = None
    hi: float | None = None
    choices: tuple[str, ...] = ()


SECTIONS = Option((1, 2), "int_range", "how many sections are affected (distinct, at random)", lo=0)


def closest(name: str, valid: Sequence[str]) -> str:
    """`` (did you mean X?)`` for the valid name closest to ``name``, or ''."""
    return values.OPTIONS.suggest(name, valid)


def augmentation(name: str, summary: str, **options: Option):
    """Register ``body(image, labels, rng, **resolved_options)`` as augmentation ``name``
    (``summary``: what it does, in a few words, for --help)."""

    def register(body):
        @functools.wraps(body)
        def run(image, labels, rng, **params):
            resolved = resolve_options(name, params)
            image, labels = check_arrays(name, image, labels)
            check_rng(name, rng)
            return body(image, labels, rng, **resolved)

        run.options = options  # type: ignore[attr-defined]
        run.summary = summary  # type: ignore[attr-defined]
        run.augmentation_name = name  # type: ignore[attr-defined]
        AUGMENTATIONS[name] = run
        return run

    return register


def options_of(name: str) -> dict[str, Option]:
    return AUGMENTATIONS[name].options  # type: ignore[attr-defined]


def resolve_options(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """All options of ``name`` with defaults filled in and values checked and normalised."""
    options = options_of(name)
    unknown = sorted(set(params) - set(options))
    if unknown:
        valid = ", ".join(sorted(options)) or "none"
        raise EmError(f"{name} has no option {unknown[0]!r}{closest(unknown[0], list(options))}; "
                      f"its options: {valid} (and p)")
    return {key: _coerce(name, key, opt, params.get(key, opt.default)) for key, opt in options.items()}


# kind -> convert(value, "name.option", option); values.OPTIONS words the errors
KINDS: dict[str, Callable[[Any, str, Option], Any]] = {
    "object": lambda value, where, opt: value,
    "range": lambda value, where, opt: values.to_range(value, where, lo=opt.lo, hi=opt.hi),
    "int_range": lambda value, where, opt: values.to_range(value, where, integer=True, lo=opt.lo, hi=opt.hi),
    "float": lambda value, where, opt: values.to_float(value, where, lo=opt.lo, hi=opt.hi, text=False,
                                                       say=values.OPTIONS),
    "int": lambda value, where, opt: values.to_int(value, where, lo=opt.lo, hi=opt.hi, text=False,
                                                   say=values.OPTIONS),
    "bool": lambda value, where, opt: values.to_bool(value, where, text=False, say=values.OPTIONS),
    "choice": lambda value, where, opt: values.to_choice(value, where, opt.choices, fold_case=False,
                                                         say=values.OPTIONS),
    "text": lambda value, where, opt: values.to_text(value, where),
    "axes": lambda value, where, opt: values.to_axes(value, where),
}


def _coerce(name: str, key: str, opt: Option, value: Any) -> Any:
    return KINDS[opt.kind](value, f"{name}.{key}", opt)


def check_rng(name: str, rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise EmError(f"{name}: rng must be a numpy.random.Generator, got {type(rng).__name__}")


def check_arrays(name: str, image, labels) -> tuple[np.ndarray, Labels]:
    """The image as float32 (z, y, x) and the labels as a dict of same-shape integer arrays."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise EmError(f"{name}: the image must be 3D (z, y, x), got shape {image.shape}")
    if image.dtype.kind != "f":
        raise EmError(f"{name}: the image must be float in [0, 1] (scale uint8 by 1/255), got {image.dtype}")
    if image.dtype != np.float32:
        image = image.astype(np.float32)
    if labels is None:
        labels = {}
    if not isinstance(labels, Mapping):
        raise EmError(f"{name}: labels must be a dict of name -> array, got {type(labels).__name__}")
    checked: Labels = {}
    for key, value in labels.items():
        value = np.asarray(value)
        if value.shape != image.shape:
            raise EmError(f"{name}: labels[{key!r}] has shape {value.shape}, the image {image.shape}")
        if value.dtype.kind not in "uib":
            raise EmError(f"{name}: labels[{key!r}] must be integer (label-like), got {value.dtype}")
        checked[key] = value
    return image, checked


# ----------------------------------------------------------------------------- random draws

def draw(rng: np.random.Generator, pair: tuple[float, float], size=None):
    """Uniform in [lo, hi] (float pairs)."""
    return rng.uniform(pair[0], pair[1], size)


def draw_int(rng: np.random.Generator, pair: tuple[int, int], most: int | None = None) -> int:
    """An integer in [lo, hi] (both included), at most ``most``."""
    value = int(rng.integers(pair[0], pair[1] + 1))
    return value if most is None else min(value, most)


def pick_sections(rng: np.random.Generator, depth: int, count: tuple[int, int]) -> np.ndarray:
    """Sorted distinct section indices, how many drawn from ``count`` (at most ``depth``)."""
    k = draw_int(rng, count, depth)
    return np.sort(rng.choice(depth, size=k, replace=False)) if k else np.zeros(0, np.intp)


def random_box(rng: np.random.Generator, shape: Sequence[int], fraction: tuple[float, float]) -> tuple[slice, ...]:
    """A box whose side along each axis is a random fraction of that axis, at a random place."""
    out = []
    for n in shape:
        side = int(np.clip(round(draw(rng, fraction) * n), 1, n))
        start = int(rng.integers(0, n - side + 1))
        out.append(slice(start, start + side))
    return tuple(out)


# ----------------------------------------------------------------------------- resampling

def resample(image: np.ndarray, labels: Labels, coords: Sequence[np.ndarray]) -> tuple[np.ndarray, Labels]:
    """Sample ``image`` and ``labels`` at source coordinates (voxels), keeping the shape.

    ``coords`` has one float array per sampled axis, all of one shape:

    - two arrays (y, x) of shape (Y, X): the same in-plane map for every section;
    - two arrays (y, x) of shape (Z, Y, X): one in-plane map per section (never mixes sections);
    - three arrays (z, y, x) of shape (Z, Y, X): a 3D map.

    The image is interpolated linearly along the sampled axes with symmetric reflection
    outside; labels take the nearest source voxel, 0 where it lies outside.
    """
    from emtools.augment import kernels

    coords = [np.ascontiguousarray(c, dtype=np.float64) for c in coords]
    if coords[0].ndim == 2:
        coords = [c[None] for c in coords]
    image = np.ascontiguousarray(image, dtype=np.float32)
    out_image = np.empty_like(image)
    if len(coords) == 2:
        kernels.bilinear_sections(image, *coords, out_image)
    else:
        kernels.trilinear(image, *coords, out_image)
    if not labels:
        return out_image, {}
    # One nearest-voxel index map serves every labels entry.
    if len(coords) == 2:
        index = kernels.nearest_index_sections(*coords, image.shape[1], image.shape[2])
        index = index.reshape(index.shape[0], -1)
        rows = image.shape[0]
    else:
        index = kernels.nearest_index_3d(*coords).reshape(1, -1)
        rows = 1
    out_labels = {}
    for key, array in labels.items():
        moved = np.empty_like(array)
        values = kernels.as_unsigned(np.ascontiguousarray(array)).reshape(rows, -1)
        kernels.gather(values, index, kernels.as_unsigned(moved).reshape(rows, -1))
        out_labels[key] = moved
    return out_image, out_labels


def plane_grid(shape_yx: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Voxel coordinates (y, x) of a section, float64, each of shape (Y, X) (real arrays, not
    broadcast views: arithmetic on those is several times slower)."""
    y, x = np.meshgrid(np.arange(shape_yx[0], dtype=np.float64), np.arange(shape_yx[1], dtype=np.float64),
                       indexing="ij")
    return y, x


def affine_plane_coords(shape_yx: Sequence[int], matrix: np.ndarray, shift_yx=(0.0, 0.0)) -> tuple[np.ndarray, np.ndarray]:
    """Source coordinates of ``source = matrix @ (p - centre) + centre + shift`` for a section."""
    y, x = plane_grid(shape_yx)
    cy, cx = (shape_yx[0] - 1) / 2.0, (shape_yx[1] - 1) / 2.0
    dy, dx = y - cy, x - cx
    src_y = matrix[0, 0] * dy + matrix[0, 1] * dx + cy + shift_yx[0]
    src_x = matrix[1, 0] * dy + matrix[1, 1] * dx + cx + shift_yx[1]
    return src_y, src_x


def rotation_matrix(angle_deg: float) -> np.ndarray:
    """Source-from-output rotation of a section; +90 degrees matches ``np.rot90(a, 1, axes=(1, 2))``."""
    t = np.deg2rad(angle_deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, s], [-s, c]])


def copy_labels(labels: Labels) -> Labels:
    return {key: value.copy() for key, value in labels.items()}
