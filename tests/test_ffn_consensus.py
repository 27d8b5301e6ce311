"""emtools.ffn.consensus: the oversegmentation consensus of two segmentations, on hand-made
volumes and against a slow reference (scipy); two flood-fill runs through it; the result taken
as fragments by em-agglomerate."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from conftest import run_tool
from emtools import io
from emtools.errors import EmError
from emtools.ffn.consensus import ONE_RUN_CHOICES, consensus, flood_consensus, fragments_metadata, remove_states
from emtools.meta import Metadata

SIX = ndimage.generate_binary_structure(3, 1)


def vol(*rows_per_z):
    """A (z, y, x) volume from nested lists."""
    return np.array(rows_per_z, dtype=np.uint64)


def first_appearance(labels: np.ndarray) -> np.ndarray:
    """``labels`` renumbered 1..n in raster order of first appearance (0 stays 0)."""
    flat = labels.reshape(-1)
    ids, first = np.unique(flat[flat != 0], return_index=True)
    order = ids[np.argsort(first)]
    lut = {int(v): i + 1 for i, v in enumerate(order)}
    return np.vectorize(lambda v: lut.get(int(v), 0), otypes=[np.uint64])(labels).reshape(labels.shape)


def reference(a, b, min_size, one_run):
    """Slow reference: every distinct kept pair, its 6-connected components by scipy, dust."""
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    keep = {"drop": (a != 0) & (b != 0), "keep": (a != 0) | (b != 0), "first": a != 0}[one_run]
    out = np.zeros(a.shape, np.int64)
    next_id = 1
    for pa, pb in sorted(set(zip(a[keep].tolist(), b[keep].tolist()))):
        comp, n = ndimage.label(keep & (a == pa) & (b == pb), structure=SIX)
        for i in range(1, n + 1):
            where = comp == i
            if where.sum() >= min_size:
                out[where] = next_id
                next_id += 1
    return first_appearance(out)


# ----------------------------------------------------------------------------- hand-made cases

def test_a_split_in_either_run_splits_the_result():
    one = vol([[7, 7, 7, 7, 7, 7]])
    split = vol([[3, 3, 3, 9, 9, 9]])
    expected = vol([[1, 1, 1, 2, 2, 2]])
    assert np.array_equal(consensus(one, split), expected)
    assert np.array_equal(consensus(split, one), expected)


def test_where_the_runs_agree_the_object_stays_whole_whatever_its_ids():
    a = vol([[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]], [[1, 1, 0, 2, 2], [1, 1, 0, 2, 2]])
    b = np.where(a == 1, 50, np.where(a == 2, 40, 0)).astype(np.uint64)
    out = consensus(a, b)
    assert out.dtype == np.uint64
    assert np.array_equal(out, a)  # numbered in raster order: the left object first


def test_the_module_docstring_example():
    a = vol([[1, 1, 1, 1, 2, 2]])
    b = vol([[5, 5, 6, 6, 6, 6]])
    assert consensus(a, b).tolist() == [[[1, 1, 2, 2, 3, 3]]]


def test_one_pair_in_two_places_gives_two_segments():
    a = vol([[4, 4, 4, 4, 4]])
    b = vol([[8, 8, 2, 8, 8]])  # b's 8 occurs on both sides of its 2
    assert consensus(a, b).tolist() == [[[1, 1, 2, 3, 3]]]


def test_connectivity_is_six_neighbours():
    a = vol([[1, 0], [0, 1]])  # diagonal neighbours only
    assert consensus(a, a).tolist() == [[[1, 0], [0, 2]]]


def test_min_size_drops_small_pieces():
    a = vol([[1, 1, 1, 1, 1, 1, 1]])
    b = vol([[2, 2, 2, 3, 2, 2, 2]])
    assert consensus(a, b, min_size=2).tolist() == [[[1, 1, 1, 0, 2, 2, 2]]]
    assert consensus(a, b, min_size=4).tolist() == [[[0, 0, 0, 0, 0, 0, 0]]]
    assert consensus(a, b, min_size=1).tolist() == consensus(a, b).tolist() == [[[1, 1, 1, 2, 3, 3, 3]]]


def test_voxels_of_one_run_only():
    a = vol([[1, 1, 1, 0, 0, 0]])
    b = vol([[0, 0, 2, 2, 2, 0]])
    assert consensus(a, b, one_run="drop").tolist() == [[[0, 0, 1, 0, 0, 0]]]
    assert consensus(a, b, one_run="keep").tolist() == [[[1, 1, 2, 3, 3, 0]]]
    assert consensus(a, b, one_run="first").tolist() == [[[1, 1, 2, 0, 0, 0]]]
    assert consensus(b, a, one_run="first").tolist() == [[[0, 0, 1, 2, 2, 0]]]


def test_inputs_are_not_modified_and_any_label_type_works():
    a = vol([[5, 5, 6]]).astype(np.uint16)
    b = np.array([[[1, 2, 2]]], np.int32)
    a0, b0 = a.copy(), b.copy()
    assert consensus(a, b).tolist() == [[[1, 2, 3]]]
    assert np.array_equal(a, a0) and np.array_equal(b, b0)
    huge = np.array([[[2**63 + 5, 2**63 + 5, 1]]], np.uint64)
    assert consensus(huge, huge).tolist() == [[[1, 1, 2]]]


def test_empty_and_unlabelled_volumes():
    assert consensus(np.zeros((0, 3, 3), np.uint8), np.zeros((0, 3, 3), np.uint8)).shape == (0, 3, 3)
    z = np.zeros((2, 3, 4), np.uint32)
    out = consensus(z, z, min_size=5)
    assert out.dtype == np.uint64 and not out.any()


@pytest.mark.parametrize("one_run", ONE_RUN_CHOICES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_the_scipy_reference_on_random_volumes(one_run, seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, size=(5, 7, 9)).astype(np.uint32)
    b = ndimage.zoom(rng.integers(0, 3, size=(3, 4, 5)), (5 / 3, 7 / 4, 9 / 5), order=0)[:5, :7, :9]
    b = np.ascontiguousarray(b).astype(np.uint8)
    min_size = int(rng.integers(1, 4))
    assert np.array_equal(consensus(a, b, min_size, one_run=one_run), reference(a, b, min_size, one_run))


def test_numbering_does_not_depend_on_the_input_ids_or_memory_order():
    rng = np.random.default_rng(5)
    a = rng.integers(0, 5, size=(6, 6, 6)).astype(np.uint64)
    b = rng.integers(0, 3, size=(6, 6, 6)).astype(np.uint64)
    out = consensus(a, b, 2)
    perm_a = np.array([0, 40, 7, 1000, 3], np.uint64)[a]
    perm_b = np.array([0, 9, 2], np.uint64)[b]
    assert np.array_equal(consensus(perm_a, perm_b, 2), out)
    assert np.array_equal(consensus(np.asfortranarray(a), np.asfortranarray(b), 2), out)


def test_bad_input():
    a = np.ones((2, 3, 4), np.uint8)
    with pytest.raises(EmError, match="differ in shape"):
        consensus(a, np.ones((2, 3, 5), np.uint8))
    with pytest.raises(EmError, match="float"):
        consensus(a.astype(np.float32), a)
    with pytest.raises(EmError, match="negative"):
        consensus(a, -a.astype(np.int8))
    with pytest.raises(EmError, match="3D"):
        consensus(a[0], a[0])
    with pytest.raises(EmError, match="unknown one_run 'both'"):
        consensus(a, a, one_run="both")
    with pytest.raises(EmError, match="min_size"):
        consensus(a, a, min_size=-1)


# ----------------------------------------------------------------------------- two flood-fill runs

@dataclasses.dataclass
class DoubleResult:  # the fields of emtools.ffn.inference.FloodResult that the consensus reads
    labels: np.ndarray
    origins: dict
    fovs: int = 0
    seconds: float = 0.0


class GreedyBallFlood:
    """TEST DOUBLE for flood_fill (same signature; no network): each seed, in order, claims the
    unclaimed foreground (image > 0) voxels within ``radius`` (max-norm) of itself. Seed order
    decides who gets the voxels between two close seeds, as in a real flood fill."""

    def __init__(self, radius: int):
        self.radius = radius
        self.calls = []

    def __call__(self, predict_fovs, image_norm, seeds, fov_zyx, deltas_zyx, options, *, restrictor=None,
                 state_path=None, want_probabilities=False, progress=None):
        image = np.asarray(image_norm)
        seeds = [tuple(s) for s in seeds]
        self.calls.append({"seeds": seeds, "shape": image.shape, "state_path": state_path})
        labels = np.zeros(image.shape, np.uint64)
        origins = {}
        for seed in seeds:
            if labels[seed] or image[seed] <= 0:
                continue
            box = tuple(slice(max(c - self.radius, 0), c + self.radius + 1) for c in seed)
            claim = (image[box] > 0) & (labels[box] == 0)
            if restrictor is not None:
                claim &= restrictor[box] != 0
            label = len(origins) + 1
            labels[box][claim] = label
            origins[label] = seed
        return DoubleResult(labels, origins, fovs=len(origins), seconds=0.0)


def test_flood_consensus_splits_where_seed_order_matters():
    image = np.zeros((3, 3, 12), np.float32)
    image[:, :, 1:11] = 1.0  # one rod along x
    flood = GreedyBallFlood(radius=4)
    result = flood_consensus(None, image, [(1, 1, 2), (1, 1, 8)], (3, 3, 3), (1, 1, 1), None, min_size=1,
                             flood=flood)
    assert flood.calls[1]["seeds"] == [(1, 1, 8), (1, 1, 2)]  # inverse: last origin first
    first, second = result.first.labels[1, 1], result.second.labels[1, 1]
    assert first.tolist() == [0, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 0]  # seed 2 reaches x=6, seed 8 the rest
    assert second.tolist() == [0, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1, 0]  # seed 8 first reaches down to x=4
    # the disputed voxels x=4..6 are a piece of their own: no run's growth survives there
    assert result.labels[1, 1].tolist() == [0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3, 0]
    assert result.fovs == 4


def test_flood_consensus_with_a_shifted_fov_lattice_reports_in_volume_coordinates():
    image = np.zeros((4, 6, 10), np.float32)
    image[1:3, 1:5, 1:9] = 1.0
    flood = GreedyBallFlood(radius=20)
    result = flood_consensus(None, image, [(2, 2, 3)], (3, 3, 3), (2, 2, 2), None, min_size=1, flood=flood,
                             second_seeds="reverse", fov_offset_zyx=(1, 0, 3))
    assert flood.calls[1]["shape"] == (5, 6, 13)  # one z and three x sections of context added
    assert flood.calls[1]["seeds"] == [(3, 2, 6)]
    assert result.second.labels.shape == image.shape
    assert result.second.origins == {1: (2, 2, 3)}
    assert np.array_equal(result.labels, (image > 0).astype(np.uint64))
    with pytest.raises(EmError, match="FOV offset"):
        flood_consensus(None, image, [(2, 2, 3)], (3, 3, 3), (2, 2, 2), None, flood=flood, fov_offset_zyx=(4, 0, 0))


def test_flood_consensus_runs_the_real_flood_fill(tmp_path):
    """The real flood_fill twice, with a TEST DOUBLE network: it marks the foreground component
    of each FOV that touches the current object map (a perfect network, no training)."""
    from emtools.ffn.inference import FloodOptions

    image = np.full((11, 14, 14), -1.0, np.float32)
    image[1:10, 2:12, 2:6] = 1.0  # two slabs separated by a membrane at x = 6..7
    image[1:10, 2:12, 8:12] = 1.0
    options = FloodOptions(min_size=10, batch=2, checkpoint_every_s=0.0)
    state = str(tmp_path / "canvas")
    result = flood_consensus(oracle_network, image, [(5, 6, 3), (5, 6, 9)], (7, 7, 7), (2, 2, 2), options,
                             fov_offset_zyx=(0, 1, 1), state_path=state)
    truth = np.zeros(image.shape, np.uint64)
    truth[1:10, 2:12, 2:6] = 1
    truth[1:10, 2:12, 8:12] = 2
    assert sorted(result.first.origins) == [1, 2]
    assert np.array_equal(result.first.labels, truth)
    assert np.array_equal(result.labels, truth)
    assert result.fovs > 2
    remove_states(state)
    assert not list(tmp_path.iterdir())


def oracle_network(batch: np.ndarray) -> np.ndarray:
    """TEST DOUBLE for a trained FFN: per FOV, positive logits (4 at the centre, a little less
    further out, so that a face's maximum lies near its middle) on the foreground (image > 0)
    component connected to where the object map is already positive, -4 elsewhere."""
    import cc3d

    shape = batch.shape[2:]
    grid = np.indices(shape).astype(np.float32)
    distance = np.sqrt(sum((g - s // 2) ** 2 for g, s in zip(grid, shape)))
    out = np.empty((batch.shape[0], 1) + shape, np.float32)
    for i, (image, object_map) in enumerate(batch):
        components = cc3d.connected_components(image > 0, connectivity=6)
        touched = np.unique(components[(object_map > 0) & (components > 0)])
        out[i, 0] = np.where(np.isin(components, touched) & (components > 0), 4.0 - 0.1 * distance, -4.0)
    return out


# ----------------------------------------------------------------------------- as fragments

def test_em_agglomerate_takes_the_consensus_as_fragments(tmp_path):
    # two cells (x < 6, x >= 6) with a membrane between them; each run splits one cell
    cells = np.zeros((4, 8, 12), np.uint64)
    cells[:, :, :6], cells[:, :, 6:] = 1, 2
    a, b = cells.copy(), cells.copy()
    a[:, :, 9:] = 4  # run a splits the right cell along x
    b[:, :4, :6] = 3  # run b splits the left cell along y
    frags = consensus(a, b, min_size=4)
    assert frags.max() == 4
    meta = Metadata("zyx", (40.0, 16.0, 16.0), (40.0, 8.0, 8.0))
    out_meta = fragments_metadata(meta, frags, {"min_size": 4, "one_run": "drop"})
    assert out_meta.attrs["fragment_count"] == 4
    assert out_meta.provenance[-1]["tool"] == "em-predict ffn consensus"
    io.write_volume(str(tmp_path / "frags.h5"), frags, out_meta)
    boundary = np.zeros(a.shape, np.float32)
    boundary[:, :, 5:7] = 1.0
    io.write_volume(str(tmp_path / "boundary.h5"), boundary, meta)

    result = run_tool("agglomerate", "segment", tmp_path / "frags.h5", tmp_path / "boundary.h5", "-t", "0.5",
                      "-o", tmp_path / "seg.h5", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "seg.h5")
    seg, seg_meta = io.read_volume(str(tmp_path / "seg.h5"))
    assert seg_meta.voxel_size_nm == (40.0, 8.0, 8.0)
    # the runs' splits inside each cell are undone, the membrane keeps the cells apart
    assert np.array_equal(first_appearance(seg), cells)

    result = run_tool("agglomerate", "offsets", tmp_path / "frags.h5", "-o", tmp_path / "offsets.tsv", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\t0\t4" in (tmp_path / "offsets.tsv").read_text()
