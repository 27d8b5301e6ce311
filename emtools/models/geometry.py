"""Input-size geometry of a model spec: valid sizes, receptive field, valid output crop.

All models here pad their convolutions ('same'), so the output has the input's size; the input
must be divisible by the total downsampling (entry stride x pools) on each axis.

The receptive field is computed with interval arithmetic, per axis: every feature voxel ``o`` at
some resolution depends on the input interval ``[A*o + L, A*o + H]``. Each layer maps its output
index to an interval of its input (conv k/stride s/pad p: ``[s*o - p, s*o - p + k - 1]``; pool p:
``[p*o, p*o + p - 1]``; upsampling by p: ``o/p`` plus the interpolation's reach), maps compose,
and a skip join takes the union of both branches. Fractions keep upsampling exact; the final
bounds are rounded outwards, so the result is a guaranteed (slightly conservative) bound::

    input  |<- margin_lo ->|======= valid output =======|<- margin_hi ->|
           every valid output voxel sees only real input, no zero padding
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

from emtools.errors import EmError
from emtools.models.spec import ModelSpec, Triple, transposed_padding

AXES = "zyx"


def total_downsampling(spec: ModelSpec) -> Triple:
    """The product of the entry stride and every pooling factor, per axis (z,y,x)."""
    factor = list(spec.stride_in) if spec.arch == "rsunet" else [1, 1, 1]
    for pool in spec.pools:
        factor = [f * p for f, p in zip(factor, pool)]
    return tuple(factor)  # type: ignore[return-value]


def nearest_valid_sizes(spec: ModelSpec, size_zyx: Triple) -> tuple[Triple, Triple]:
    """The nearest valid input sizes at or below and at or above ``size_zyx`` (per axis)."""
    factor = total_downsampling(spec)
    below = tuple(max(f, (n // f) * f) for n, f in zip(size_zyx, factor))
    above = tuple(max(f, -(-n // f) * f) for n, f in zip(size_zyx, factor))
    return below, above  # type: ignore[return-value]


def check_input_size(spec: ModelSpec, size_zyx: Triple) -> None:
    """One-line EmError when ``size_zyx`` does not fit the model's pooling, naming valid sizes."""
    text = ",".join(map(str, size_zyx))
    if len(size_zyx) != 3 or min(size_zyx) < 1:
        raise EmError(f"input size {text} must be three positive integers z,y,x")
    factor = total_downsampling(spec)
    if all(n % f == 0 for n, f in zip(size_zyx, factor)):
        return
    below, above = nearest_valid_sizes(spec, size_zyx)
    options = [",".join(map(str, s)) for s in dict.fromkeys([below, above])]
    raise EmError(
        f"input {text} does not fit the pooling of {spec.name}: z,y,x must be multiples of "
        f"{','.join(map(str, factor))}; nearest valid sizes {' or '.join(options)}"
    )


@dataclass(frozen=True)
class AxisMap:
    """Feature voxel ``o`` depends on input ``[scale*o + lo, scale*o + hi]`` (one axis)."""

    scale: Fraction
    lo: Fraction
    hi: Fraction

    def then(self, a: Fraction, lo: Fraction, hi: Fraction) -> "AxisMap":
        """Compose with a layer whose output ``o`` reads its input ``[a*o + lo, a*o + hi]``."""
        return AxisMap(self.scale * a, self.scale * lo + self.lo, self.scale * hi + self.hi)

    def union(self, other: "AxisMap") -> "AxisMap":
        assert self.scale == other.scale, "a join of branches at different resolutions"
        return AxisMap(self.scale, min(self.lo, other.lo), max(self.hi, other.hi))


Maps = tuple[AxisMap, AxisMap, AxisMap]
F = Fraction


def _conv(maps: Maps, kernel: Triple, stride: Triple = (1, 1, 1)) -> Maps:
    return tuple(m.then(F(s), F(-(k // 2)), F(k - 1 - k // 2)) for m, k, s in zip(maps, kernel, stride))  # type: ignore


def _pool(maps: Maps, factor: Triple) -> Maps:
    return tuple(m.then(F(p), F(0), F(p - 1)) for m, p in zip(maps, factor))  # type: ignore


def _upsample(maps: Maps, factor: Triple, mode: str, kernel: Triple | None = None) -> Maps:
    out = []
    pads = transposed_padding(kernel, factor)[0] if kernel is not None else (0, 0, 0)
    for m, p, k, pad in zip(maps, factor, kernel or factor, pads):
        if p == 1 and (kernel is None or k == 1):
            out.append(m)
        elif mode == "transposed":
            # Fine o reads coarse i with p*i - pad <= o <= p*i - pad + k - 1.
            out.append(m.then(F(1, p), F(pad - k + 1, p), F(pad, p)))
        elif mode == "nearest":
            out.append(m.then(F(1, p), F(1 - p, p), F(0)))
        else:  # linear, align_corners=False: coarse coordinate (o + 0.5)/p - 0.5, floor and floor+1
            centre = F(1, 2 * p) - F(1, 2)
            out.append(m.then(F(1, p), centre - 1, centre + 1))
    return tuple(out)  # type: ignore[return-value]


def _identity() -> Maps:
    return tuple(AxisMap(F(1), F(0), F(0)) for _ in range(3))  # type: ignore[return-value]


def _union(a: Maps, b: Maps) -> Maps:
    return tuple(x.union(y) for x, y in zip(a, b))  # type: ignore[return-value]


def output_maps(spec: ModelSpec) -> Maps:
    """Per axis, the input interval that one output voxel depends on (see the module docstring)."""
    maps = _identity()
    if spec.arch == "rsunet":
        maps = _conv(maps, spec.embed_kernel, spec.stride_in)
    skips = []
    rsunet = spec.arch == "rsunet"

    def module(maps: Maps, level: int) -> Maps:
        # rsunet: entry conv then two convs (the residual sum adds a sub-interval); unet: two convs.
        first = spec.entry_kernels[level] if rsunet else spec.kernels[level]
        maps = _conv(_conv(maps, first), spec.kernels[level])
        return _conv(maps, spec.kernels[level]) if rsunet else maps

    for level in range(spec.depth):
        maps = module(maps, level)
        if level < spec.depth - 1:
            skips.append(maps)
            maps = _pool(maps, spec.pools[level])
    for level in range(spec.depth - 2, -1, -1):
        maps = module(_union(_upsample(maps, spec.pools[level], spec.upsample), skips[level]), level)
    if spec.arch == "rsunet":
        if spec.stride_in == (1, 1, 1):
            maps = _conv(maps, spec.embed_kernel)
        elif spec.transposed_out:
            maps = _upsample(maps, spec.stride_in, "transposed", spec.transposed_kernel)
        else:
            mode = "nearest" if spec.upsample == "nearest" else "bilinear"
            maps = _conv(_upsample(maps, spec.stride_in, mode), spec.embed_kernel)
    return maps


@dataclass(frozen=True)
class Geometry:
    """Receptive field and valid output crop of a model for one input size (z,y,x voxels)."""

    input_zyx: Triple
    downsampling_zyx: Triple
    receptive_field_zyx: Triple
    margin_lo_zyx: Triple
    margin_hi_zyx: Triple
    valid_output_zyx: Triple

    def to_dict(self) -> dict:
        return {k: list(v) for k, v in self.__dict__.items()}


def receptive_field(spec: ModelSpec) -> tuple[Triple, Triple, Triple]:
    """(receptive field size, margin below, margin above) per axis, rounded outwards."""
    maps = output_maps(spec)
    lo = tuple(-math.floor(m.lo) for m in maps)
    hi = tuple(math.ceil(m.hi) for m in maps)
    size = tuple(a + b + 1 for a, b in zip(lo, hi))
    return size, lo, hi  # type: ignore[return-value]


def geometry(spec: ModelSpec, size_zyx: Triple) -> Geometry:
    """Check ``size_zyx`` against the pooling, then report the receptive field and valid crop."""
    check_input_size(spec, size_zyx)
    size, lo, hi = receptive_field(spec)
    valid = tuple(max(0, n - a - b) for n, a, b in zip(size_zyx, lo, hi))
    return Geometry(tuple(size_zyx), total_downsampling(spec), size, lo, hi, valid)  # type: ignore[arg-type]
