"""EM-specific data augmentation on numpy arrays, used online by em-train and by em-augment.

    from emtools import augment
    rng = np.random.default_rng(seed)
    steps = [("flip", {}), ("rotate", {"angle_deg": (-30, 30)}), ("elastic", {"p": 0.5})]
    image, labels = augment.augment(image, {"labels": ids, "mask": valid}, steps, rng)

``image`` is float32 (z, y, x) in [0, 1]; ``labels`` a dict of label-like integer volumes of the
image's shape (may be empty), only ever moved by nearest-neighbour sampling. ``rng`` is the only
source of randomness. Every step keeps the shapes; voxels that a geometric step brings in from
outside get reflected image values and label 0 (so a ``mask`` entry is 0 there); the inputs are
never modified and the outputs never share memory with them.

Each step is ``(name, params)``; ``params`` holds the augmentation's options and ``p``, the
probability of applying it (default 1). Unknown names or options raise a one-line
:class:`EmError` that names the valid ones. :func:`check_steps` validates steps up front and
returns them with every option resolved (what em-augment records as provenance).

Families: :mod:`~emtools.augment.geometry` (flip, rotate, rescale, elastic),
:mod:`~emtools.augment.intensity` (grayscale, motion_blur, defocus, cut_blur, cut_noise),
:mod:`~emtools.augment.sections` (missing_section, missing_parts, misalign),
:mod:`~emtools.augment.mixing` (copy_paste, mixup). Anisotropic volumes: in-plane steps never
mix sections; only ``elastic mode=3d`` and ``cut_blur mode=3d`` are explicitly 3D.

To add an augmentation: write ``body(image, labels, rng, **options)`` in the family module it
belongs to and decorate it with ``@augmentation(name, summary, option=Option(default, kind, help))``
(:mod:`emtools.augment.core`); em-augment's --aug, its help, em-train's ``data.augment`` and the
option checks follow.

Compared with PyTorch Connectomics' augmentors (the feature peer): the same families, but
rotations take any angle, each step is a plain function of (image, labels, rng), and every
random choice comes from the one generator passed in.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

# Importing the families registers their augmentations, in this order (as --help lists them).
from emtools.augment import geometry  # noqa: F401,I001
from emtools.augment import sections  # noqa: F401
from emtools.augment import intensity  # noqa: F401
from emtools.augment import mixing  # noqa: F401
from emtools.augment.core import (
    AUGMENTATIONS,
    Labels,
    Option,
    check_arrays,
    check_rng,
    closest,
    options_of,
    resolve_options,
)
from emtools.errors import EmError

__all__ = ["AUGMENTATIONS", "Option", "apply", "augment", "check_steps", "options_of", "summary"]


def _split(name: str, params: Mapping[str, Any] | None) -> tuple[float, dict[str, Any]]:
    if name not in AUGMENTATIONS:
        raise EmError(f"unknown augmentation {name!r}{closest(str(name), list(AUGMENTATIONS))}; "
                      f"choose from {', '.join(AUGMENTATIONS)}")
    params = dict(params or {})
    p = params.pop("p", 1.0)
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) or not 0.0 <= p <= 1.0:
        raise EmError(f"{name}.p must be a probability in [0, 1], got {p!r}")
    return float(p), params


def check_steps(steps: Sequence) -> list[tuple[str, dict[str, Any]]]:
    """Steps with every option resolved (defaults filled in) and ``p``; one-line errors."""
    out = []
    for step in _steps(steps):
        name, params = step
        p, options = _split(name, params)
        resolved = resolve_options(name, options)
        out.append((name, {"p": p, **resolved}))
    return out


def _steps(steps: Sequence) -> list[tuple[str, Mapping]]:
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence):
        raise EmError("augmentation steps must be a list of (name, params) pairs")
    out = []
    for step in steps:
        if isinstance(step, str):
            step = (step, {})
        if not isinstance(step, Sequence) or len(step) != 2 or not isinstance(step[0], str) or \
                not isinstance(step[1] or {}, Mapping):
            raise EmError(f"an augmentation step must be a (name, params) pair, got {step!r}")
        out.append((step[0], step[1] or {}))
    return out


def _run(name: str, image, labels, rng, params) -> tuple[np.ndarray, Labels]:
    p, options = _split(name, params)
    check_rng(name, rng)
    if p < 1.0:
        resolve_options(name, options)  # a skipped step still fails on bad options
        if not rng.random() < p:
            return check_arrays(name, image, labels)
    return AUGMENTATIONS[name](image, labels, rng, **options)


def _unshared(image, labels, inputs: Sequence[np.ndarray]) -> tuple[np.ndarray, Labels]:
    """Copy any output that shares memory with an input, so callers may modify outputs freely."""
    def own(array):
        return array.copy() if any(np.may_share_memory(array, x) for x in inputs) else array

    return own(image), {key: own(value) for key, value in labels.items()}


def _inputs(image, labels) -> list[np.ndarray]:
    return [a for a in [image, *(labels or {}).values()] if isinstance(a, np.ndarray)]


def apply(name: str, image, labels, rng: np.random.Generator, **params) -> tuple[np.ndarray, Labels]:
    """Apply one augmentation (with probability ``params["p"]``, default 1)."""
    image_out, labels_out = _run(name, image, labels, rng, params)
    return _unshared(image_out, labels_out, _inputs(image, labels))


def augment(image, labels, steps: Sequence, rng: np.random.Generator) -> tuple[np.ndarray, Labels]:
    """Apply ``steps`` (a list of (name, params)) in order; see the module docstring."""
    steps = _steps(steps)
    out_image, out_labels = image, labels
    for name, params in steps:
        out_image, out_labels = _run(name, out_image, out_labels, rng, params)
    if not steps:
        out_image, out_labels = check_arrays("augment", image, labels)
    return _unshared(out_image, out_labels, _inputs(image, labels))


def summary(name: str) -> str:
    """What augmentation ``name`` does, in a few words."""
    return AUGMENTATIONS[name].summary
