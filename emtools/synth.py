"""Synthetic EM-like volumes with exact ground truth, for tests, demos and benchmarks.

All arrays are indexed ``[z, y, x]``; physical sizes are in nanometres (nm) and given in zyx
order; voxel i spans [i, i + 1) * v nm along its axis. Intensities are built on a 0..1 scale
and returned as uint8. Everything is drawn from ``numpy.random.default_rng`` seeded by the
caller: the same arguments give the same bytes (on one platform and set of library versions;
BLAS rounding and numpy's streams may differ elsewhere).

How a volume is made (each step is a private helper below)::

    voxel centre p (nm) --smooth warp--> p + D(p) --rotate, squash along neurite axis u--> s
    power (weighted Voronoi) diagram of jittered seeds in s       -> cell index per voxel
    multi-label EDT: open cells (round corners), cut membranes    -> neurons = 0 there
    separate cells touching across sections/corners; cc3d        -> one id per 6-connected piece
    ellipsoids well inside one cell                               -> mitochondria
    class map -> grey levels + cell tint + smooth shading + grain -> in-section PSF blur
              -> per-section gain/offset/ramp -> shot-like noise  -> uint8

The warp's gradient is mostly well below 1, so it is one-to-one and the convex power cells stay
whole after warping; squashing s along ``u`` makes cells ELONGATION times longer along ``u``
(neurites), which is tilted at most MAX_TILT_DEG from z so processes run through many sections.
Not modelled: synapses, vesicles, glia, section defects (folds, missing sections).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cc3d
import edt
import fastremap
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from emtools.checks import check_number, check_positive_triple, check_seed, check_shape
from emtools.cpus import usable_cpus
from emtools.errors import EmError

__all__ = ["SyntheticVolume", "make_synthetic_volume"]

# Shape of the cells. Neurites are ELONGATION times longer than wide; the axis is tilted from z
# by up to MAX_TILT_DEG so that xy sections cut them roughly across, as in most ssTEM stacks.
ELONGATION = 5.0
MAX_TILT_DEG = 35.0
# Calibrated so that the mean equivalent-circle diameter of cell profiles in xy sections
# (measured membrane-centre to membrane-centre on large volumes) is about mean_cell_diameter_nm.
_SEED_SPACING_PER_DIAMETER = 1.18
# Radius (per mean diameter) of the ball that rounds cell corners, see _carve_membranes.
_ROUNDING = 0.05
# Largest volume accepted: ids, cKDTree indices and cc3d labels are kept in uint32.
_MAX_VOXELS = 2**31 - 1
_MAX_SEEDS = 100_000
# Voxels per slab for the slab-wise steps; bounds the float32 temporaries to ~100 MB.
_SLAB_VOXELS = 2**21
# Grey levels on the 0..1 scale, and how strongly each tissue class replaces the cytoplasm
# underneath it (alpha < 1 keeps some of the cell's own tint and shading).
_CYTOPLASM, _MEMBRANE, _GRAZING, _MITO_MATRIX, _MITO_OUTLINE, _CRISTA = range(6)
_CLASS_LEVEL = np.array([0.0, 0.16, 0.16, 0.40, 0.20, 0.29], np.float32)
_CLASS_ALPHA = np.array([0.0, 1.0, 1.0, 0.85, 1.0, 0.9], np.float32)
_CYTOPLASM_LEVEL = 0.64
_PSF_SIGMA_NM = 4.0  # Gaussian point-spread of the microscope, in the section plane only


@dataclass(frozen=True)
class SyntheticVolume:
    """A synthetic EM volume and its ground truth; all arrays have the same zyx shape.

    image:         uint8 grey values, membranes dark, cytoplasm mid-grey.
    neurons:       uint64 cell ids 1..N (dense), 0 exactly where ``membranes`` is True. Each
                   id is one 6-connected (hence also 26-connected) component, and voxels of
                   different ids never touch, not even across a corner (26-neighbourhood).
    membranes:     bool, True on membranes, including the small dark gaps where cells meet;
                   exactly ``neurons == 0``.
    mitochondria:  uint64 instance ids 1..M (dense), 0 = none; each inside a single neuron and
                   never on a membrane voxel; each id 6-connected.
    voxel_size_nm: (z, y, x) voxel size in nm.
    """

    image: np.ndarray
    neurons: np.ndarray
    membranes: np.ndarray
    mitochondria: np.ndarray
    voxel_size_nm: tuple


def make_synthetic_volume(shape_zyx, seed=0, voxel_size_nm=(40.0, 4.0, 4.0),
                          mean_cell_diameter_nm=1200.0, membrane_thickness_nm=24.0,
                          mitochondria=True, noise_sigma=0.08) -> SyntheticVolume:
    """Make an EM-like volume of neurites with membranes, mitochondria and ground truth.

    shape_zyx:              (z, y, x) size in voxels; any positive sizes, including 1.
    seed:                   non-negative int; same arguments and seed give identical arrays.
                            The neuron layout does not depend on ``mitochondria`` or
                            ``noise_sigma``, so those can be toggled without moving cells.
    voxel_size_nm:          (z, y, x) voxel size in nm; cells are laid out in nm, so
                            anisotropic voxels give correspondingly stretched cells in voxels.
    mean_cell_diameter_nm:  typical neurite calibre: the mean equivalent-circle diameter of
                            cell profiles in xy sections, in nm (to ~10% on large volumes).
    membrane_thickness_nm:  membrane thickness t in nm. Across a membrane running along z it
                            is ``2 * floor(t / (2 * v) + 1/2)`` voxels of size v (6 for 24 nm
                            at 4 nm), and at least 1 voxel wherever two cells would touch,
                            also across sections and corners.
    mitochondria:           add mitochondria (dark ellipsoids with darker outline and cristae).
    noise_sigma:            std of the noise at grey 0.5 on the 0..1 scale; it scales with the
                            square root of the intensity, like shot noise. 0 disables it.

    Time and memory: ~8 s for 64x512x512 on 2 cores; peak memory about 20 bytes per voxel
    (2.6 GB for 512^3), mostly the uint64 outputs.
    Raises EmError with a one-line message for invalid arguments.
    """
    shape = check_shape(shape_zyx, _MAX_VOXELS)
    voxel = check_positive_triple(voxel_size_nm, "voxel_size_nm")
    seed = check_seed(seed)
    diameter = check_number(mean_cell_diameter_nm, "mean_cell_diameter_nm")
    thickness = check_number(membrane_thickness_nm, "membrane_thickness_nm")
    noise_sigma = check_number(noise_sigma, "noise_sigma", allow_zero=True)
    if not isinstance(mitochondria, (bool, np.bool_)):
        raise EmError(f"mitochondria must be True or False, got {mitochondria!r}")
    if diameter < 4.0 * thickness:
        raise EmError(f"mean_cell_diameter_nm ({diameter:g}) must be at least 4x "
                      f"membrane_thickness_nm ({thickness:g})")
    if diameter < 4.0 * max(voxel[1], voxel[2]):
        raise EmError(f"mean_cell_diameter_nm ({diameter:g}) must span at least 4 voxels in "
                      f"y and x (voxel size {voxel[1]:g}x{voxel[2]:g} nm)")

    # Independent streams, so that switching mitochondria off leaves the cells unchanged and
    # the noise is the only difference between two noise levels.
    layout_seq, mito_seq, image_seq, noise_seq = np.random.SeedSequence(seed).spawn(4)
    geometry = _CellGeometry(shape, voxel, diameter, np.random.default_rng(layout_seq))
    labels = geometry.label_volume()
    neurons, tissue = _carve_membranes(labels, voxel, thickness, _ROUNDING * diameter)
    del labels
    mito = np.zeros(shape, np.uint64)
    if mitochondria:
        _place_mitochondria(neurons, tissue, mito, voxel, diameter, thickness, geometry.axis,
                            np.random.default_rng(mito_seq))
    image = _render(neurons, tissue, voxel, thickness, diameter, noise_sigma,
                    np.random.default_rng(image_seq), np.random.default_rng(noise_seq))
    return SyntheticVolume(image=image, neurons=neurons, membranes=neurons == 0,
                           mitochondria=mito, voxel_size_nm=voxel)


# ----------------------------------------------------------------------------- smooth fields

def _bspline_basis(n, voxel_nm, knot_nm):
    """(n, K) float32 cubic B-spline weights at voxel centres for knots spaced knot_nm apart.

    Knots reach two spacings past both ends so every voxel has full support; the weights of a
    row sum to 1 and are >= 0, so the field never exceeds its largest coefficient.
    """
    centres = (np.arange(n) + 0.5) * voxel_nm
    count = math.ceil(n * voxel_nm / knot_nm) + 5
    t = np.abs(centres[:, None] / knot_nm + 2.0 - np.arange(count)[None, :])
    weights = np.where(t < 1.0, 2.0 / 3.0 - t * t + 0.5 * t ** 3,
                       np.where(t < 2.0, (2.0 - t) ** 3 / 6.0, 0.0))
    return weights.astype(np.float32)


class _SmoothField:
    """A random C2-smooth field (``components`` values per voxel) evaluated slab by slab.

    Separable evaluation (z, then y, then x by matrix products on the small coefficient grid)
    costs a few flops per voxel and never holds more than one slab at full size.
    """

    def __init__(self, shape, voxel, knot_nm, amplitude, components, rng):
        self.basis = [_bspline_basis(n, v, knot_nm) for n, v in zip(shape, voxel)]
        grid = (components,) + tuple(b.shape[1] for b in self.basis)
        self.coef = (rng.standard_normal(grid) * amplitude).astype(np.float32)
        self.bound = float(np.abs(self.coef).max(initial=0.0))
        self.basis_x_t = np.ascontiguousarray(self.basis[2].T)

    def slab(self, z0, z1):
        """Field values for sections z0..z1-1 as float32 (components, z1 - z0, Y, X)."""
        bz, by, bx_t = self.basis[0], self.basis[1], self.basis_x_t
        along_z = np.einsum("zk,ckyx->czyx", bz[z0:z1], self.coef)  # small: knots in y, x
        along_zy = np.matmul(by, along_z)  # (c, nz, Y, Kx)
        # One large GEMM against a contiguous matrix (a transposed view would not use BLAS).
        full = along_zy.reshape(-1, bx_t.shape[0]) @ bx_t
        return full.reshape(along_zy.shape[:3] + (bx_t.shape[1],))


def _slab_ranges(shape, voxels=_SLAB_VOXELS):
    """Yield (z0, z1) slabs of about `voxels` voxels (at least one section)."""
    step = max(1, voxels // max(1, shape[1] * shape[2]))
    for z0 in range(0, shape[0], step):
        yield z0, min(shape[0], z0 + step)


# ----------------------------------------------------------------------------- cell layout

class _CellGeometry:
    """Where the cells are: warp, neurite axis and weighted seeds, all in nm."""

    def __init__(self, shape, voxel, diameter, rng):
        self.shape, self.voxel = shape, voxel
        spacing = _SEED_SPACING_PER_DIAMETER * diameter
        # Neurite axis u, tilted from z; (u, a, b) is an orthonormal zyx basis.
        tilt = math.radians(MAX_TILT_DEG) * math.sqrt(rng.uniform())
        azimuth = rng.uniform(0.0, 2.0 * math.pi)
        u = np.array([math.cos(tilt), math.sin(tilt) * math.sin(azimuth),
                      math.sin(tilt) * math.cos(azimuth)])
        a = np.cross(u, [0.0, 0.0, 1.0] if abs(u[2]) < 0.9 else [0.0, 1.0, 0.0])
        a /= np.linalg.norm(a)
        b = np.cross(u, a)
        self.axis = u
        # s = M @ (p + D(p)): squashing along u turns round power cells into long neurites.
        self.matrix = (np.diag([1.0 / ELONGATION, 1.0, 1.0]) @ np.stack([u, a, b])).astype(
            np.float32)
        # Refuse absurd cell counts before allocating warp grids that grow with them.
        self._seed_grid(2.0 * spacing, spacing)
        # Three warps: a coarse one bends neurites, finer ones curve and roughen their outlines.
        # Their typical gradients (~amplitude / knot spacing: 0.2, 0.23, 0.19) sum to below 1,
        # so p -> p + D(p) is one-to-one almost everywhere and warped power cells stay whole
        # (a rare piece cut off where it is not becomes a cell of its own, see cc3d).
        self.warps = [_SmoothField(shape, voxel, 1.5 * spacing, 0.3 * spacing, 3, rng),
                      _SmoothField(shape, voxel, 0.6 * spacing, 0.14 * spacing, 3, rng),
                      _SmoothField(shape, voxel, 0.27 * spacing, 0.05 * spacing, 3, rng)]
        self.seeds, self.tree = self._seed_tree(spacing, rng)
        # Labels are looked up exactly only near cell borders: first on a grid every `step`
        # pixels, then inside the grid squares whose corners disagree. `step` stays well below
        # a cell width so only slivers thinner than ~step pixels could be missed.
        self.step = int(np.clip(diameter / (10.0 * max(voxel[1], voxel[2])), 1, 8))

    def _seed_grid(self, pad, spacing):
        """Origin and size of the seed grid in s-space covering the volume grown by pad nm."""
        extent = np.array(self.shape) * np.array(self.voxel)
        corners = np.array([[z, y, x] for z in (-pad, extent[0] + pad)
                            for y in (-pad, extent[1] + pad) for x in (-pad, extent[2] + pad)])
        s_corners = corners @ self.matrix.T.astype(np.float64)
        low = s_corners.min(axis=0) - 2.0 * spacing
        counts = np.ceil((s_corners.max(axis=0) + 2.0 * spacing - low) / spacing).astype(int)
        if np.prod(counts, dtype=float) > _MAX_SEEDS:
            raise EmError(f"mean_cell_diameter_nm is too small for this volume (about "
                          f"{int(np.prod(counts, dtype=float))} cells, at most {_MAX_SEEDS})")
        return low, counts

    def _seed_tree(self, spacing, rng):
        low, counts = self._seed_grid(sum(w.bound for w in self.warps) + spacing, spacing)
        # A jittered grid keeps cell sizes moderate; random power weights then vary the
        # calibre from cell to cell (a power diagram's cells are still convex).
        grid = np.stack(np.meshgrid(*[np.arange(c) for c in counts], indexing="ij"), -1)
        grid = grid.reshape(-1, 3).astype(np.float64)
        seeds = low + (grid + 0.5 + rng.uniform(-0.4, 0.4, grid.shape)) * spacing
        weights = (0.8 * spacing) ** 2 * rng.uniform(0.0, 1.0, len(seeds)) ** 2
        # Power distance |x - s|^2 - w equals a plain distance in 4D with the seed lifted by
        # sqrt(W - w): that lets an ordinary k-d tree find the power cell.
        lifted = np.sqrt(weights.max(initial=0.0) - weights)
        return seeds, cKDTree(np.column_stack([seeds, lifted]))

    def _s_coords(self, z0, z1):
        """s-space coordinates (3, nz, Y, X) float32 of the voxel centres of sections z0..z1-1."""
        warp = self.warps[0].slab(z0, z1)
        for finer in self.warps[1:]:
            warp += finer.slab(z0, z1)
        _, ny, nx = self.shape
        centres = [(np.arange(z0, z1, dtype=np.float32) + 0.5) * self.voxel[0],
                   (np.arange(ny, dtype=np.float32) + 0.5) * self.voxel[1],
                   (np.arange(nx, dtype=np.float32) + 0.5) * self.voxel[2]]
        warp[0] += centres[0][:, None, None]
        warp[1] += centres[1][None, :, None]
        warp[2] += centres[2][None, None, :]
        return np.tensordot(self.matrix, warp, axes=(1, 0))

    def _nearest(self, s_points):
        """Cell index + 1 (uint32) for s-space points given as (3, n)."""
        lifted = np.zeros((s_points.shape[1], 4))
        lifted[:, :3] = s_points.T
        _, index = self.tree.query(lifted, workers=-1)
        return (index + 1).astype(np.uint32)

    def label_volume(self):
        """uint32 cell index (1-based, sparse) for every voxel; no zeros, no membranes yet."""
        labels = np.empty(self.shape, np.uint32)
        for z0, z1 in _slab_ranges(self.shape):
            labels[z0:z1] = self._label_slab(z0, z1)
        return labels

    def _label_slab(self, z0, z1):
        s = self._s_coords(z0, z1)
        nz, ny, nx = s.shape[1:]
        step = self.step
        if step == 1 or ny <= 2 * step or nx <= 2 * step:
            return self._nearest(s.reshape(3, -1)).reshape(nz, ny, nx)
        ys = np.unique(np.r_[0:ny:step, ny - 1])
        xs = np.unique(np.r_[0:nx:step, nx - 1])
        coarse = self._nearest(s[:, :, ys][:, :, :, xs].reshape(3, -1)).reshape(nz, ys.size,
                                                                                xs.size)
        same = ((coarse[:, :-1, :-1] == coarse[:, 1:, :-1]) & (coarse[:, :-1, :-1] ==
                coarse[:, :-1, 1:]) & (coarse[:, :-1, :-1] == coarse[:, 1:, 1:]))
        block_y = np.minimum(np.searchsorted(ys, np.arange(ny), side="right") - 1, ys.size - 2)
        block_x = np.minimum(np.searchsorted(xs, np.arange(nx), side="right") - 1, xs.size - 2)
        labels = coarse[:, block_y][:, :, block_x]
        exact = ~same[:, block_y][:, :, block_x]
        labels[exact] = self._nearest(s[:, exact])
        return labels


# ----------------------------------------------------------------------------- membranes

def _carve_membranes(labels, voxel, thickness, rounding):
    """Cut membranes into a partition; returns (uint64 neurons, uint8 tissue class map).

    Membrane voxels are those within thickness/2 (+ half a voxel, i.e. measured from the
    interface between voxel centres) of another cell, then one more voxel wherever two cells
    would still touch through a face, edge or corner (e.g. across a 40 nm section, thicker
    than the membrane). Those extra voxels are marked _GRAZING: in ssTEM a membrane lying in
    the section plane shows as a faint smear, not a dark line.

    Cells are first opened with a ball of radius `rounding` nm: partition cells have sharp
    polyhedral corners, real neurites are rounded, with small dark gaps at junctions. Cells
    with no voxel deeper than `rounding` near the slab (thin ones) are left as they are, so
    thin processes are not erased.
    """
    shape = labels.shape
    reach = thickness / 2.0 + min(voxel[1], voxel[2]) / 2.0
    # Deciding whether a voxel survives the opening needs labels up to 2 * rounding away.
    halo = math.ceil(max(reach, 2.0 * rounding) / voxel[0]) + 1
    tissue = np.zeros(shape, np.uint8)
    threads = usable_cpus()
    deep_cells = np.zeros(int(labels.max(initial=0)) + 1, bool)
    for z0, z1 in _slab_ranges(shape, 4 * _SLAB_VOXELS):
        lo, hi = max(0, z0 - halo), min(shape[0], z1 + halo)
        part = labels[lo:hi]
        # Multi-label EDT: distance (nm) from each voxel to the nearest voxel of another cell.
        # black_border=False: the volume edge is not a membrane, cells continue outside it.
        dist = edt.edt(part, anisotropy=voxel, black_border=False, parallel=threads)
        core = dist > rounding
        membrane = dist[z0 - lo:z1 - lo] <= reach
        del dist
        if core.any():
            # Opening = voxels within `rounding` of the eroded core (the core voxels nearest
            # to a voxel always belong to its own cell, as cores are 2 * rounding apart).
            # (uint8 rather than bool input: same result, faster in edt)
            near_core = edt.edt((~core).view(np.uint8), anisotropy=voxel, black_border=False,
                                parallel=threads)[z0 - lo:z1 - lo] <= rounding
            deep_cells[:] = False
            deep_cells[part[core]] = True
            central = labels[z0:z1]
            membrane |= ~near_core & deep_cells[central]
        tissue[z0:z1][membrane] = _MEMBRANE
    neurons = np.where(tissue == _MEMBRANE, np.uint32(0), labels)

    # Separate cells that still touch through a face, edge or corner. Offsets no longer than
    # `reach` are already separated by the EDT band (both voxels of such a pair are within
    # reach of the other cell), so the first pass skips them.
    long_offsets = [o for o in _half_neighbourhood()
                    if math.dist((0, 0, 0), np.multiply(o, voxel)) > reach]
    _separate_touching(neurons, tissue, long_offsets)

    # Membranes and the volume border can cut a cell into pieces: give each 6-connected piece
    # its own id. Two pieces of one cell may still meet at an edge or corner; separating them
    # can split a piece again, so repeat until nothing touches (one or two rounds in practice).
    while True:
        pieces, count = cc3d.connected_components(neurons, connectivity=6, return_N=True,
                                                  out_dtype=np.uint32)
        del neurons
        if not _separate_touching(pieces, tissue, _half_neighbourhood()):
            break
        neurons = pieces
    # Tiny pieces pinched off inside the volume (slivers at junctions) would not look like a
    # neurite profile, so they become membrane; pieces touching the volume border are kept
    # whatever their size, as they are cells continuing outside the crop.
    ids, counts = fastremap.unique(pieces, return_counts=True)  # much faster than bincount
    sizes = np.zeros(count + 1, np.int64)
    sizes[ids] = counts
    min_voxels = max(2, int((2.0 * thickness) ** 3 / math.prod(voxel)))
    keep = sizes >= min_voxels
    for axis in range(3):
        for index in (0, -1):
            keep[np.take(pieces, index, axis=axis)] = True
    keep[0] = False
    lut = np.zeros(count + 1, np.uint64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint64)
    neurons = lut[pieces]
    if not keep[1:].all():
        tissue[(pieces != 0) & (neurons == 0)] = _MEMBRANE
    return neurons, tissue


def _separate_touching(labels, tissue, offsets):
    """Zero one voxel of every pair of different nonzero labels that are `offsets` apart.

    The voxel of the lower id is zeroed (one-sided, so the added membrane is one voxel thick)
    and marked in `tissue`. Works in place, slab by slab; returns whether anything changed.
    """
    changed = False
    for z0, z1 in _slab_ranges(labels.shape):
        for offset in offsets:
            # Pairs (z, z + dz) with z in this slab.
            stop = min(labels.shape[0], z1 + offset[0])
            here, there = _offset_views(labels[z0:stop], offset)
            touching = (here != there) & (here != 0) & (there != 0)
            if not touching.any():
                continue
            changed = True
            drop_here = touching & (here < there)
            drop_there = touching & (there < here)
            here[drop_here] = 0
            there[drop_there] = 0
            # Across sections this is a membrane seen flat (grazing); within a section it is
            # an ordinary one that the EDT band was too thin to close.
            kind = _GRAZING if offset[0] else _MEMBRANE
            tissue_here, tissue_there = _offset_views(tissue[z0:stop], offset)
            tissue_here[drop_here] = kind
            tissue_there[drop_there] = kind
    return changed


def _half_neighbourhood():
    """One offset of each +-pair in the 26-neighbourhood (13 offsets)."""
    return [(dz, dy, dx) for dz in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
            if (dz, dy, dx) > (0, 0, 0)]


def _offset_views(array, offset):
    """Views (here, there) of `array` with there[i] == array[i + offset]."""
    here = tuple(slice(0, -d) if d > 0 else slice(-d, None) for d in offset)
    there = tuple(slice(d, None) if d >= 0 else slice(0, d) for d in offset)
    return array[here], array[there]


# ----------------------------------------------------------------------------- mitochondria

def _place_mitochondria(neurons, tissue, mito, voxel, diameter, thickness, axis, rng):
    """Add ellipsoidal mitochondria in place (``mito`` ids, ``tissue`` classes).

    Each is accepted only if the ellipsoid grown by a margin lies in a single cell and clear
    of other mitochondria, so none touches a membrane or another mitochondrion. They are
    aligned with the neurite axis, as mitochondria in axons and dendrites are.
    """
    shape = neurons.shape
    voxel_arr = np.array(voxel)
    radius = min(100.0, 0.12 * diameter)  # cross-section radius, nm
    margin = max(0.5 * thickness, min(voxel[1], voxel[2]))
    outline = max(0.75 * thickness, min(voxel[1], voxel[2]))
    mean_volume = 4.0 / 3.0 * math.pi * radius ** 3 * 0.9 * 2.75
    cell_volume = float(np.count_nonzero(neurons)) * math.prod(voxel)
    target = round(0.04 * cell_volume / mean_volume)
    next_id = 1
    for _ in range(6 * target):
        if next_id > target:
            break
        centre_vx = np.array([rng.integers(n) for n in shape])
        r = radius * float(np.clip(rng.normal(1.0, 0.2), 0.6, 1.4))
        semi = np.array([r * rng.uniform(1.5, 4.0), r, r * rng.uniform(0.75, 1.0)])
        long_axis = axis + rng.normal(0.0, 0.3, 3)
        rotation = _frame(long_axis / np.linalg.norm(long_axis), rng)
        crista_phase = rng.uniform(0.0, 2.0 * math.pi)
        cell = neurons[tuple(centre_vx)]
        if cell == 0:
            continue
        centre_nm = (centre_vx + 0.5) * voxel_arr
        # Axis-aligned bounding box of the grown ellipsoid, in voxels, clipped to the volume.
        half = np.sqrt(((rotation * (semi + margin)[:, None]) ** 2).sum(axis=0))
        low = np.maximum(0, np.floor((centre_nm - half) / voxel_arr).astype(int))
        high = np.minimum(shape, np.ceil((centre_nm + half) / voxel_arr).astype(int) + 1)
        box = tuple(slice(a, b) for a, b in zip(low, high))
        rel = [(np.arange(a, b) + 0.5) * v - c for a, b, v, c in zip(low, high, voxel, centre_nm)]
        # q_j: coordinate along ellipsoid axis j; rho = 1 on the surface.
        q = [rel[0][:, None, None] * rotation[j, 0] + rel[1][None, :, None] * rotation[j, 1]
             + rel[2][None, None, :] * rotation[j, 2] for j in range(3)]
        grown = sum((q[j] / (semi[j] + margin)) ** 2 for j in range(3)) <= 1.0
        if np.any(neurons[box][grown] != cell) or np.any(mito[box][grown] != 0):
            continue
        rho = np.sqrt(sum((q[j] / semi[j]) ** 2 for j in range(3)))
        inside = rho <= 1.0
        if inside.any():
            # A thin, tilted ellipsoid can digitise into pieces: keep the largest 6-connected.
            pieces = cc3d.connected_components(inside, connectivity=6)
            inside = pieces == np.argmax(np.bincount(pieces.ravel())[1:]) + 1
        if np.count_nonzero(inside) < 4:
            continue
        # Distance to the surface to first order, (1 - rho) / |grad rho|, in nm.
        grad = [sum(q[j] / semi[j] ** 2 * rotation[j, k] for j in range(3)) for k in range(3)]
        grad_norm = np.sqrt(sum(g * g for g in grad)) / np.maximum(rho, 1e-6)
        depth = (1.0 - rho) / np.maximum(grad_norm, 1e-12)
        period = max(3.0 * min(voxel[1], voxel[2]), 0.45 * r)
        crista = np.cos(2.0 * math.pi * q[0] / period + crista_phase) > 0.6
        classes = np.where(depth <= outline, _MITO_OUTLINE,
                           np.where(crista & (depth > 1.5 * outline), _CRISTA, _MITO_MATRIX))
        mito[box][inside] = next_id
        tissue[box][inside] = classes[inside]
        next_id += 1


def _frame(first, rng):
    """Rows: `first` and two random unit vectors completing an orthonormal basis."""
    other = rng.normal(size=3)
    other -= other @ first * first
    norm = np.linalg.norm(other)
    if norm < 1e-6:
        other = np.cross(first, [1.0, 0.0, 0.0] if abs(first[0]) < 0.9 else [0.0, 1.0, 0.0])
        norm = np.linalg.norm(other)
    other /= norm
    return np.stack([first, other, np.cross(first, other)])


# ----------------------------------------------------------------------------- image

def _gaussian_kernel(sigma):
    radius = max(1, int(4.0 * sigma + 0.5))
    x = np.arange(-radius, radius + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _render(neurons, tissue, voxel, thickness, diameter, noise_sigma, rng, noise_rng):
    """uint8 image from the label and tissue-class maps, slab by slab in float32."""
    shape = neurons.shape
    nz, ny, nx = shape
    # A section's membranes lying in the section plane are only thickness/section_thickness
    # as dark as membranes seen edge-on.
    alpha = _CLASS_ALPHA.copy()
    alpha[_GRAZING] = float(np.clip(thickness / voxel[0], 0.35, 1.0))
    # Per-cell cytoplasm tint, slow shading across the tissue, per-section gain/offset and an
    # illumination ramp: the variations a segmentation model must ignore in real ssTEM.
    n_cells = int(neurons.max(initial=0))
    tint = np.zeros(n_cells + 1, np.float32)
    tint[1:] = rng.normal(0.0, 0.035, n_cells)
    shading = _SmoothField(shape, voxel, max(1.2 * diameter, 400.0), 0.04, 1, rng)
    gain = rng.normal(1.0, 0.06, nz).astype(np.float32)
    offset = rng.normal(0.0, 0.03, nz).astype(np.float32)
    ramp = rng.normal(0.0, 0.02, (nz, 2)).astype(np.float32)
    ramp_y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)
    ramp_x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)
    # Cytoplasmic grain: white noise smoothed over ~8 nm, scaled to unit std before use.
    grain_sigma = [max(0.3, 8.0 / v) for v in voxel[1:]]
    grain_scale = 1.0 / math.sqrt(sum(_gaussian_kernel(grain_sigma[0]) ** 2)
                                  * sum(_gaussian_kernel(grain_sigma[1]) ** 2))
    psf_sigma = [max(0.3, _PSF_SIGMA_NM / v) for v in voxel[1:]]

    image = np.empty(shape, np.uint8)
    for z0, z1 in _slab_ranges(shape):
        classes = tissue[z0:z1]
        value = _CYTOPLASM_LEVEL + tint[neurons[z0:z1]] + shading.slab(z0, z1)[0]
        value += alpha[classes] * (_CLASS_LEVEL[classes] - value)
        grain = rng.standard_normal(value.shape, dtype=np.float32)
        grain = ndimage.gaussian_filter(grain, (0.0, *grain_sigma), truncate=4.0)
        value += (0.045 * grain_scale) * grain
        # EM point-spread: blur within each section only; sections are imaged separately.
        value = ndimage.gaussian_filter(value, (0.0, *psf_sigma), truncate=3.0)
        value -= 0.5
        value *= gain[z0:z1, None, None]
        value += 0.5 + offset[z0:z1, None, None]
        value += ramp[z0:z1, 0, None, None] * ramp_y[None, :, None]
        value += ramp[z0:z1, 1, None, None] * ramp_x[None, None, :]
        if noise_sigma > 0:
            # Shot-like: std noise_sigma at grey 0.5, growing with sqrt(intensity).
            std = np.sqrt(np.clip(value, 0.01, None) * 2.0)
            std *= noise_sigma
            std *= noise_rng.standard_normal(value.shape, dtype=np.float32)
            value += std
        np.clip(value * 255.0 + 0.5, 0.0, 255.0, out=value)
        image[z0:z1] = value.astype(np.uint8)
    return image
