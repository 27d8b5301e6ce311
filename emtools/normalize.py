"""Image normalisation shared by training and prediction (it travels in the checkpoint).

A normalisation is a small dict, stored in the checkpoint's ``extra["normalization"]``::

    {"scale": 0.00392156862745098, "mean": 0.5, "std": 0.25}

meaning ``x = (raw * scale - mean) / std`` in float32. ``scale`` brings the stored integers to
[0, 1] (1/255 for uint8, 1/65535 for uint16, 1 for float data already in [0, 1]); ``mean`` and
``std`` are measured on the training images after scaling (:func:`fit_normalization`). The same
dict applied by em-predict gives the network exactly the inputs it was trained on.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

from emtools.errors import EmError

__all__ = ["dtype_scale", "fit_normalization", "normalize_image", "check_normalization"]


def dtype_scale(dtype) -> float:
    """The factor that maps the full range of an integer dtype to [0, 1] (1 for floats)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "u":
        return 1.0 / float(np.iinfo(dtype).max)
    if dtype.kind == "f":
        return 1.0
    if dtype == np.bool_:
        return 1.0
    raise EmError(f"images must be unsigned integers or floats, got {dtype}")


def check_normalization(norm: Mapping[str, Any]) -> dict[str, float]:
    """A validated copy of ``norm`` (keys scale, mean, std; std > 0)."""
    if not isinstance(norm, Mapping):
        raise EmError("a normalisation must be a mapping with scale, mean and std")
    try:
        out = {key: float(norm[key]) for key in ("scale", "mean", "std")}
    except KeyError as exc:
        raise EmError(f"the normalisation lacks {exc.args[0]!r} (needs scale, mean, std)") from None
    except (TypeError, ValueError):
        raise EmError("the normalisation's scale, mean and std must be numbers") from None
    if not all(np.isfinite(list(out.values()))) or out["std"] <= 0 or out["scale"] <= 0:
        raise EmError(f"the normalisation needs finite values and positive scale and std, got {out}")
    return out


def fit_normalization(images: Iterable[np.ndarray], max_samples: int = 1 << 22, seed: int = 0) -> dict[str, float]:
    """Mean and std of the scaled images (a fixed random subsample of at most ``max_samples``).

    All images must share one dtype family (the scale is that of the first image's dtype).
    """
    images = [np.asarray(im) for im in images]
    if not images or any(im.size == 0 for im in images):
        raise EmError("cannot fit a normalisation to no (or empty) images")
    scale = dtype_scale(images[0].dtype)
    rng = np.random.default_rng(seed)
    total = sum(im.size for im in images)
    samples = []
    for im in images:
        flat = im.reshape(-1)
        take = max(1, int(round(max_samples * flat.size / total)))
        if take < flat.size:
            flat = flat[rng.integers(0, flat.size, take)]
        samples.append(flat.astype(np.float64) * scale)
    values = np.concatenate(samples)
    if not np.all(np.isfinite(values)):
        raise EmError("the training images contain NaN or Inf")
    std = float(values.std())
    return {"scale": scale, "mean": float(values.mean()), "std": std if std > 1e-8 else 1.0}


def normalize_image(image: np.ndarray, norm: Mapping[str, Any]) -> np.ndarray:
    """``(image * scale - mean) / std`` as a new float32 array."""
    n = check_normalization(norm)
    out = np.asarray(image, dtype=np.float32) * np.float32(n["scale"])
    out -= np.float32(n["mean"])
    out *= np.float32(1.0 / n["std"])
    return out
