"""Where flood fills start: seed policies and seed-list files (numpy in, lists of z,y,x out).

- :func:`peaks`: google/ffn's PolicyPeaks. The Sobel gradient magnitude of the image is an edge
  map; a voxel is an edge where it exceeds its Gaussian-smoothed neighbourhood (sigma 49/6,
  adaptive thresholding); seeds are the local maxima of the distance transform of the non-edge
  voxels (points far from any edge; the volume's outside counts as an edge), found with a little fixed-seed jitter (1e-4) that breaks
  ties, at least ``min_distance`` apart; in ascending z,y,x order.
- :func:`boundary`: the same peaks, of the distance transform of ``boundary map < threshold``
  (a membrane or boundary probability map, e.g. em-predict's boundary head); deepest first.
- :func:`grid`: every point of a lattice with ``spacing`` (default: the FFN's deltas) whose FOV
  fits in the volume, starting at the first such point, in ascending z,y,x order.
- :func:`inverse`: the origins of a previous run, last object first (google's
  PolicyInvertOrigins): a second run for the oversegmentation consensus.
- :func:`read_seed_file`: ``z y x`` per line (commas allowed), ``#`` comments; a bad line or a
  seed outside the volume is a one-line error naming the line.

Restricted voxels (``restrictor == 0``) hold no seed from a policy.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from emtools.errors import EmError

Triple = tuple[int, int, int]


def _local_maxima(values: np.ndarray, min_distance: int, seed: int) -> np.ndarray:
    """(N, 3) positions where ``values`` (> 0) is the maximum of its (2 min_distance + 1)^3 cube,
    away from the border by ``min_distance``, after a fixed-seed jitter of 1e-4 that breaks ties."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    jittered = values.astype(np.float64) + rng.random(values.shape) * 1e-4
    size = 2 * int(min_distance) + 1
    peaks = (jittered == ndimage.maximum_filter(jittered, size=size, mode="nearest")) & (values > 0)
    if min_distance > 0:
        border = np.zeros_like(peaks)
        border[tuple(slice(min_distance, max(s - min_distance, min_distance)) for s in values.shape)] = True
        peaks &= border
    return np.argwhere(peaks)


def _distance_inside(inside: np.ndarray) -> np.ndarray:
    """Distance transform of ``inside`` with the volume's outside counted as an edge (so that a
    peak never sits on the border, where no FOV can be centred)."""
    from scipy import ndimage

    padded = np.pad(inside, 1, constant_values=False)
    return ndimage.distance_transform_edt(padded)[1:-1, 1:-1, 1:-1].astype(np.float32)


def _as_mask(restrictor: np.ndarray | None, shape) -> np.ndarray | None:
    if restrictor is None:
        return None
    if tuple(restrictor.shape) != tuple(shape):
        raise EmError(f"the restrictor mask is {'x'.join(map(str, restrictor.shape))} but the image "
                      f"{'x'.join(map(str, shape))}")
    return np.asarray(restrictor) != 0


def peaks(image: np.ndarray, restrictor: np.ndarray | None = None, sigma: float = 49.0 / 6.0,
          min_distance: int = 3, seed: int = 42) -> list[Triple]:
    """google/ffn's PolicyPeaks on ``image`` (any numeric ZYX array)."""
    from scipy import ndimage

    image = np.asarray(image, np.float32)
    edges = ndimage.generic_gradient_magnitude(image, ndimage.sobel)
    smooth = ndimage.gaussian_filter(edges, sigma, mode="reflect")
    edge = edges > smooth
    allowed = _as_mask(restrictor, image.shape)
    if allowed is not None:
        edge |= ~allowed  # restricted voxels count as edges (no seed there, no border effect)
    distance = _distance_inside(~edge)
    found = _local_maxima(distance, min_distance, seed)
    return sorted(tuple(int(v) for v in p) for p in found)  # type: ignore[misc]


def boundary(boundary_map: np.ndarray, threshold: float = 0.5, restrictor: np.ndarray | None = None,
             min_distance: int = 3, seed: int = 42) -> list[Triple]:
    """Peaks of the distance transform of ``boundary_map < threshold``; the deepest first.

    Integer maps are read as ``value / dtype max`` (uint8 255 = 1.0)."""
    values = np.asarray(boundary_map)
    if values.ndim != 3:
        raise EmError(f"a boundary map for seeds must be z,y,x (one channel), got {values.ndim} dimensions")
    if values.dtype.kind in "ui":
        values = values.astype(np.float32) / float(np.iinfo(values.dtype).max)
    inside = values < threshold
    allowed = _as_mask(restrictor, values.shape)
    if allowed is not None:
        inside &= allowed
    distance = _distance_inside(inside)
    found = _local_maxima(distance, min_distance, seed)
    order = sorted(found.tolist(), key=lambda p: (-float(distance[tuple(p)]), tuple(p)))
    return [tuple(int(v) for v in p) for p in order]  # type: ignore[misc]


def grid(shape: Sequence[int], fov_zyx: Sequence[int], spacing_zyx: Sequence[int],
         restrictor: np.ndarray | None = None) -> list[Triple]:
    """Lattice points ``fov // 2 + k * spacing`` whose FOV fits in ``shape`` (spacing 0 along an axis: 1)."""
    axes = []
    for size, fov, step in zip(shape, fov_zyx, spacing_zyx):
        step = max(int(step), 1)
        axes.append(range(fov // 2, size - fov // 2, step))
    allowed = _as_mask(restrictor, shape)
    out = []
    for z in axes[0]:
        for y in axes[1]:
            for x in axes[2]:
                if allowed is None or allowed[z, y, x]:
                    out.append((z, y, x))
    return out


def inverse(origins: Mapping[int, Sequence[int]]) -> list[Triple]:
    """The seeds of a previous run's objects, highest id (last grown) first."""
    return [tuple(int(v) for v in origins[k]) for k in sorted(origins, reverse=True)]  # type: ignore[misc]


_NUMBER = re.compile(r"^[+-]?\d+$")


def parse_seed_lines(lines: Sequence[str], where: str, shape: Sequence[int] | None = None) -> list[Triple]:
    """Seeds from ``z y x`` lines (spaces, tabs or commas between; ``#`` starts a comment)."""
    out = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        parts = [p for p in re.split(r"[\s,]+", text) if p]
        if len(parts) != 3 or not all(_NUMBER.match(p) for p in parts):
            raise EmError(f"line {number} of {where}: expected three integers 'z y x', got {text[:60]!r}")
        pos = tuple(int(p) for p in parts)
        if shape is not None and any(p < 0 or p >= s for p, s in zip(pos, shape)):
            raise EmError(f"line {number} of {where}: seed {','.join(parts)} lies outside the volume "
                          f"{'x'.join(str(int(s)) for s in shape)} (z,y,x voxels)")
        out.append(pos)
    return out  # type: ignore[return-value]


def read_seed_file(path: str, shape: Sequence[int] | None = None) -> list[Triple]:
    """Seeds from a text file of ``z y x`` lines (voxel indices of the volume read)."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except UnicodeDecodeError:
        raise EmError(f"seed file {path} is not text ('z y x' per line)") from None
    except OSError as exc:
        raise EmError(f"cannot read the seed file {path}: {exc.strerror or exc}") from None
    seeds = parse_seed_lines(lines, path, shape)
    if not seeds:
        raise EmError(f"seed file {path} holds no seeds ('z y x' per line)")
    return seeds


def write_seed_lines(seeds: Sequence[Sequence[int]]) -> str:
    """The text of a seed file: one ``z y x`` line per seed."""
    return "".join(f"{int(z)} {int(y)} {int(x)}\n" for z, y, x in seeds)
