"""The default sliding window of em-predict, chosen for throughput within a memory budget.

The models are fully convolutional: any input size that the pooling accepts (multiples of
:func:`emtools.models.geometry.total_downsampling`) gives the same maps away from the patch
borders. A patch's border (the crop, and the overlap with its neighbours) is computed more
than once, so the larger the patch, the fewer times each voxel is computed: the training crop
(e.g. 16x64x64 with 50% overlap) computes every voxel ~19 times, 32x160x160 with 25% ~3.

:func:`choose_patch` tries every valid size per axis from the training input size up to the
one whose kept part covers a block (the volume, when smaller), and takes the cheapest per block
(the FLOPs of all patches, plus a little per patch) among those whose estimated memory fits
``budget_bytes``: for a large volume, the largest patch that fits; for a small one, the fewest
pieces that cover it::

    estimate = batch x patch voxels x (network activations + TTA sums) per voxel    (errs high)
             + the block's buffers: input with context (float32 and raw) and blended outputs

The activations per voxel are every layer output of one forward pass added up (traced on the
meta device, :func:`emtools.profile.flops.trace_layers`): the real peak is lower, since a
forward pass frees most of them as it goes (2-3x lower for rsunet and rsunet-efficient on a CPU).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import weakref
from typing import Callable, Sequence

import numpy as np

from emtools.errors import EmError

Triple = tuple[int, int, int]
GIB = 1 << 30
# The default budget is a fixed size, never the machine's free memory: the patch changes the
# maps (to float tolerance, or more with group norm), and the same command must write the same
# bytes on every machine. The estimate errs 2-3x high, so a run needs about 1.5-3 GiB.
DEFAULT_BUDGET_BYTES = 4 * GIB
# With the auto crop the patch borders are already cut, so the overlap only blends neighbours:
# on FIB-25 (fibsem-affinity, z100-149) overlaps 0, 0.125 and 0.25 scored the same VOI to 0.01,
# and 0.125 costs 1.15x less than 0.25 along a tiled axis.
AUTO_OVERLAP = 0.125
# The work of a patch outside the network (gathering, blending, Python; on a CPU a few ms) in
# FLOPs at ~20 GFLOP/s: it keeps tiny models from being cut into many tiny patches.
PATCH_OVERHEAD_FLOP = 1e8
UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str) -> int:
    """``4G``, ``512M``, ``1.5GiB``, ``2000000000`` (bytes) -> bytes; one-line errors."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text), re.IGNORECASE)
    if not match or (not match.group(2) and str(text).strip().lower().endswith("ib")):
        raise EmError(f"--memory {text!r}: give a size such as 4G, 512M or 1.5GiB (binary units)")
    value = float(match.group(1)) * UNITS[match.group(2).lower()]
    if value < 1:
        raise EmError(f"--memory {text}: the budget must be above zero")
    return int(value)


def format_bytes(count: float) -> str:
    """Bytes as the unit --memory takes back: ``3.2G``, ``640M`` (rounded up, so it is enough)."""
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if count >= size:
            return f"{math.ceil(count / size * 10) / 10:g}{unit}"
    return f"{math.ceil(count)}"


def available_memory_bytes() -> int | None:
    """The memory the kernel could give this process now (MemAvailable), or None where unknown."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget() -> int:
    """The fixed default budget (see :data:`DEFAULT_BUDGET_BYTES`)."""
    return DEFAULT_BUDGET_BYTES


def memory_warning(choice: "Choice", available: int | None = None) -> str | None:
    """A warning when the chosen patch's estimate exceeds the memory available now, else None."""
    available = available_memory_bytes() if available is None else available
    if available is None or choice.estimate_bytes <= available:
        return None
    return (f"the chosen patch may need up to {format_bytes(choice.estimate_bytes)} but only "
            f"{format_bytes(available)} is available; pass a smaller --memory (or --patch) if the run fails")


@dataclasses.dataclass(frozen=True)
class MemoryModel:
    """Estimated bytes of predicting one block with a given patch (see the module docstring), and
    the model's forward FLOPs per voxel."""

    activation_bytes_per_voxel: float  # every layer output of one forward pass, per input voxel
    flops_per_voxel: float
    in_channels: int
    out_channels: int  # all channels the model outputs (the TTA sums hold them)
    kept_channels: int  # the channels blended into the block

    def patch_bytes(self, patch_zyx: Sequence[int], batch: int) -> float:
        per_voxel = self.activation_bytes_per_voxel + 2 * 4 * self.out_channels + 4 * self.in_channels
        return batch * math.prod(patch_zyx) * per_voxel

    def block_bytes(self, block_zyx: Sequence[int], patch_zyx: Sequence[int]) -> float:
        context = math.prod(b + p for b, p in zip(block_zyx, patch_zyx))
        return 4 * (2 * self.in_channels * context + (self.kept_channels + 1) * math.prod(block_zyx))

    def total(self, patch_zyx: Sequence[int], batch: int, block_zyx: Sequence[int]) -> float:
        return self.patch_bytes(patch_zyx, batch) + self.block_bytes(block_zyx, patch_zyx)


def memory_model(model, in_channels: int, factor_zyx: Sequence[int], kept_channels: int) -> MemoryModel:
    """Trace ``model`` once at a small valid size (:func:`small_trace`); activations and FLOPs grow
    with the voxels exactly (every layer pads to 'same', so each level holds patch / its
    downsampling)."""
    total, out_channels, voxels = small_trace(model, in_channels, factor_zyx)
    return MemoryModel(total.activation_bytes / voxels, total.flops_fwd / voxels, in_channels,
                       int(out_channels or kept_channels), kept_channels)


_TRACES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def small_trace(model, in_channels: int, factor_zyx: Sequence[int]):
    """(totals, output channels or None, voxels) of ``model`` traced at twice its downsampling
    (on the CPU: milliseconds, where the meta device's first use in a process costs seconds);
    remembered per model, since em-predict asks twice (the memory model and the FLOP count)."""
    from emtools.profile.flops import totals, trace_layers

    key = (int(in_channels), tuple(int(f) for f in factor_zyx))
    known = _TRACES.setdefault(model, {})
    if key not in known:
        size = tuple(2 * f for f in key[1])
        layers = trace_layers(model, (1, in_channels, *size), device="cpu", backward=False)
        out_channels = layers[-1].out_shape[1] if layers and len(layers[-1].out_shape) > 1 else None
        known[key] = (totals(layers), out_channels, math.prod(size))
    return known[key]


@dataclasses.dataclass(frozen=True)
class Choice:
    patch_zyx: Triple
    estimate_bytes: float
    budget_bytes: int
    patches: int  # per block of ``extent_zyx``
    recompute: float  # input voxels computed per voxel of the block (overlap, crop, border)
    overlap: tuple[str, tuple]  # as parse_overlap returns it: the given one, or the automatic one

    def overlap_text(self) -> str:
        kind, values = self.overlap
        return ",".join(f"{v:g}" for v in dict.fromkeys(values)) if len(set(values)) == 1 else \
            ",".join(f"{v:g}" for v in values)


def useful_limit(factor_zyx: Sequence[int], extent_zyx: Sequence[int],
                 crop_of: Callable[[int, int], tuple[int, int]]) -> Triple:
    """Per axis, the smallest valid patch whose kept part (patch minus crop) covers ``extent``:
    a larger one would compute mirrored padding only."""
    out = []
    for axis, (f, n) in enumerate(zip(factor_zyx, extent_zyx)):
        p = f * max(1, -(-n // f))
        while p - sum(crop_of(axis, p)) < n:
            p += f
        out.append(p)
    return tuple(out)  # type: ignore[return-value]


def _axis_options(axis: int, factor: int, smallest: int, limit: int, extent: int,
                  overlap_of: Callable[[int, int], int], crop_of: Callable[[int, int], tuple[int, int]]
                  ) -> list[tuple[int, int]]:
    """(patch size, patches along the axis) for the valid sizes of one axis, ``smallest`` to ``limit``.

    Patches along an axis of ``extent`` voxels, the grid anchored at its first voxel, kept size K
    and stride S: those whose kept part [k*S, k*S + K) meets [0, extent), as the grid computes them.
    Above 64 sizes, every few percent is enough.
    """
    sizes = list(range(min(smallest, limit), limit + 1, factor))
    if len(sizes) > 64:
        thinned, last = [], 0.0
        for size in sizes:
            if size == sizes[-1] or size >= last * 1.03:
                thinned.append(size)
                last = size
        sizes = thinned
    out = []
    for size in sizes:
        kept = size - sum(crop_of(axis, size))
        if kept < 1:
            continue
        stride = kept - overlap_of(axis, kept)
        if stride < 1:
            continue
        out.append((size, (extent - 1) // stride - (-kept) // stride))
    return out


def choose_patch(factor_zyx: Sequence[int], train_zyx: Sequence[int], extent_zyx: Sequence[int],
                 volume_zyx: Sequence[int], overlap: tuple[str, tuple] | None,
                 memory: MemoryModel, budget_bytes: int, batch: int, block_extent_zyx: Sequence[int],
                 crop_of: Callable[[int, int], tuple[int, int]], square_yx: bool = False,
                 budget_label: str | None = None) -> Choice:
    """The valid patch that costs the least for a block, within the memory budget.

    Per block of ``extent_zyx`` voxels (the block, at most the volume), every valid size from
    the training input size ``train_zyx`` (the size the model was validated at: smaller patches
    see less context and lose more to the crop) up to the one whose kept part covers the extent
    is tried on each axis; the cost is the FLOPs all patches compute (patches x patch voxels x
    the model's FLOPs per voxel) plus ``PATCH_OVERHEAD_FLOP`` per patch, ties going to fewer,
    then larger patches. ``overlap``: as :func:`~.windows.parse_overlap`
    returns it, or None for the automatic one: none along an axis where the patch covers the
    whole ``volume_zyx`` (no seam to blend: the cheapest by far, since with an overlap the grid
    also computes the neighbours reaching in from beyond both ends), else ``AUTO_OVERLAP``; ``block_extent_zyx``: the block buffers' size; ``crop_of(axis, patch)``: (lo, hi)
    voxels cut from a patch output; ``square_yx``: equal y and x (TTA with transposes). Raises a
    one-line EmError naming the memory needed when not even the smallest patch fits
    (``budget_label``: how the budget was given, e.g. ``--memory 1M``).
    """
    limit = useful_limit(factor_zyx, extent_zyx, crop_of)
    if square_yx:
        limit = (limit[0], max(limit[1:]), max(limit[1:]))
    if overlap is None:
        def overlap_of(axis: int, kept: int) -> int:
            return 0 if kept >= volume_zyx[axis] else int(round(AUTO_OVERLAP * kept))
    else:
        def overlap_of(axis: int, kept: int) -> int:
            value = overlap[1][axis]
            return int(round(value * kept)) if overlap[0] == "fraction" else int(value)
    options = [_axis_options(a, f, t, lim, n, overlap_of, crop_of)
               for a, (f, t, lim, n) in enumerate(zip(factor_zyx, train_zyx, limit, extent_zyx))]
    if not all(options):
        raise EmError("no patch size fits the model's pooling with this --crop and --overlap; "
                      "give --patch, or a smaller --crop or --overlap")
    sizes = [np.array([o[0] for o in opts], dtype=np.float64) for opts in options]
    counts = [np.array([o[1] for o in opts], dtype=np.float64) for opts in options]
    pz, py, px = np.meshgrid(*sizes, indexing="ij")
    nz, ny, nx = np.meshgrid(*counts, indexing="ij")
    need = memory.total((pz, py, px), batch, [float(b) for b in block_extent_zyx])  # elementwise
    patches = nz * ny * nx
    cost = nz * pz * ny * py * nx * px * memory.flops_per_voxel + patches * PATCH_OVERHEAD_FLOP
    ok = need <= budget_bytes
    if square_yx:
        ok &= py == px
    if not ok.any():
        smallest = np.unravel_index(np.argmin(np.where(py == px, need, np.inf) if square_yx else need), need.shape)
        patch = tuple(int(s[i]) for s, i in zip(sizes, smallest))
        label = budget_label or f"--memory {format_bytes(budget_bytes)}"
        raise EmError(f"{label} is too small for any patch: the smallest, {','.join(map(str, patch))}, needs about "
                      f"{format_bytes(need[smallest])} (with the block buffers of {','.join(map(str, block_extent_zyx))} "
                      f"voxels); give --memory {format_bytes(need[smallest])} or more, a smaller --block, or --patch")
    order = np.lexsort((-(pz * py * px)[ok], patches[ok], cost[ok]))
    best = tuple(int(i[order[0]]) for i in np.nonzero(ok))
    patch = tuple(int(s[i]) for s, i in zip(sizes, best))
    computed = math.prod(int(n[best]) * p for n, p in zip((nz, ny, nx), patch))
    if overlap is None:
        kept = [p - sum(crop_of(a, p)) for a, p in enumerate(patch)]
        overlap = ("fraction", tuple(0.0 if k >= v else AUTO_OVERLAP for k, v in zip(kept, volume_zyx)))
    return Choice(patch, float(need[best]), budget_bytes, int(patches[best]),  # type: ignore[arg-type]
                  computed / math.prod(extent_zyx), overlap)


def choose_for_inputs(module, spec, train_zyx: Sequence[int], rf: tuple[Sequence[int], Sequence[int]],
                      kept_channels: int, crop: str, overlap: tuple[str, tuple] | None, block_zyx: Sequence[int],
                      batch: int, file_shapes: Sequence[Sequence[int]], volume_shapes: Sequence[Sequence[int]],
                      budget_bytes: int | None = None, budget_label: str | None = None,
                      square_yx: bool = False) -> Choice:
    """:func:`choose_patch` for a model (``module`` and its spec) and the inputs of one run.

    One patch serves every input: it is fitted to the largest. ``file_shapes``: what each input
    file holds (the block buffers); ``volume_shapes``: the volume each belongs to (a chunk's
    whole volume), so that every chunk of a volume gets the patch of a whole-volume run and the
    chunk predictions merge exactly (the grid is global). ``rf``: the receptive-field margins
    below and above; ``crop``: as --crop; ``budget_bytes`` None: :func:`default_budget`.
    """
    from emtools.models.geometry import total_downsampling
    from emtools.predict.windows import crop_margins, fit_block

    volume = tuple(max(v[a] for v in volume_shapes) for a in range(3))
    largest_file = tuple(max(f[a] for f in file_shapes) for a in range(3))
    extent = tuple(min(b, v) for b, v in zip(fit_block(block_zyx, volume), volume))
    block_extent = tuple(min(b, f) for b, f in zip(fit_block(block_zyx, largest_file), largest_file))
    factor = total_downsampling(spec)
    memory = memory_model(module, spec.in_channels, factor, kept_channels)

    def crop_of(axis: int, size: int) -> tuple[int, int]:
        lo, hi = crop_margins(crop, (size,) * 3, *rf, train_zyx=train_zyx)
        return lo[axis], hi[axis]

    if budget_bytes is None:
        budget_bytes = default_budget()
        budget_label = f"the default memory budget {format_bytes(budget_bytes)}"
    return choose_patch(factor, train_zyx, extent, volume, overlap, memory, budget_bytes, batch, block_extent, crop_of,
                        square_yx=square_yx, budget_label=budget_label)
