"""Flood-fill inference rules (emtools.ffn.inference) and seed policies (emtools.ffn.seeds), with
TEST DOUBLES of the network (test_ffn_movement.OracleFFN / IdentityFFN): batching equals one FOV
at a time, restrictor, min size, a diverging object, kill and resume, seed files."""

import json
import logging

import numpy as np
import pytest

from conftest import voronoi_cells
from emtools.errors import EmError
from emtools.ffn import seeds as policies
from emtools.ffn.inference import FloodOptions, flood_fill, summary_line
from test_ffn_movement import OracleFFN

FOV, DELTAS = (7, 7, 7), (2, 2, 2)


@pytest.fixture(scope="module")
def cells():
    """Voronoi cells 1..8 with 0 on their boundaries; the image is the cell id / 10 (boundaries -1)."""
    labels = voronoi_cells(shape=(14, 40, 40), seed=3, n=8)
    image = np.where(labels > 0, labels.astype(np.float32) / 10, -1).astype(np.float32)
    return labels, image


def _seeds(cells):
    labels, _ = cells
    return policies.grid(labels.shape, FOV, (4, 8, 8))


def _run(cells, double=None, **kw):
    labels, image = cells
    restrictor = kw.pop("restrictor", None)
    state = kw.pop("state_path", None)
    seeds = kw.pop("seeds", None) or _seeds(cells)
    opts = FloodOptions(**{"min_size": 10, **kw})
    return flood_fill(double or OracleFFN(), image, seeds, FOV, DELTAS, opts, restrictor=restrictor, state_path=state)


@pytest.fixture(scope="module")
def sequential(cells):
    return _run(cells, batch=1)


def test_objects_stay_inside_their_cells(cells, sequential):
    labels, _ = cells
    assert sequential.objects >= 6
    assert len(np.unique(labels[sequential.labels > 0])) == sequential.objects  # one object per cell
    for obj in range(1, sequential.objects + 1):
        inside = np.unique(labels[sequential.labels == obj])
        assert len(inside) == 1 and inside[0] > 0  # one cell, never a boundary voxel
    assert "FOV/s" in summary_line(sequential)


@pytest.mark.parametrize("batch", [3, 16])
def test_batched_equals_one_fov_at_a_time(cells, sequential, batch):
    double = OracleFFN()
    result = _run(cells, double, batch=batch)
    np.testing.assert_array_equal(result.labels, sequential.labels)
    assert result.origins == sequential.origins and result.skipped == sequential.skipped
    assert max(double.batches) > 1  # batches did form (disjoint FOVs from the front of the queue)
    assert len(double.batches) < sequential.fovs


def test_restrictor_is_never_segmented(cells, sequential):
    labels, _ = cells
    mask = np.ones(labels.shape, np.uint8)
    mask[:, :, :20] = 0
    result = _run(cells, restrictor=mask, batch=4)
    assert not result.labels[:, :, :20].any()
    assert result.labels[:, :, 20:].any()
    assert all(s[2] >= 20 for s in result.origins.values())
    assert result.skipped > sequential.skipped


def test_min_size_drops_small_segments_and_their_voxels_hold_no_seed(cells, sequential):
    sizes = np.bincount(sequential.labels.ravel().astype(np.int64))[1:]
    cut = int(np.sort(sizes)[len(sizes) // 2]) + 1  # about half the objects fall under it
    result = _run(cells, min_size=cut, batch=4)
    kept = np.bincount(result.labels.ravel().astype(np.int64))[1:]
    assert len(kept) and kept.min() >= cut and result.dropped > 0
    assert result.objects < sequential.objects
    # a seed placed in a dropped segment is skipped (its voxels are tried)
    small = int(np.argmin(sizes)) + 1
    where = tuple(int(v) for v in np.argwhere(sequential.labels == small)[len(np.argwhere(sequential.labels == small)) // 2])
    again = _run(cells, min_size=cut, seeds=_seeds(cells) + [where])
    assert again.skipped == result.skipped + 1


def test_a_diverging_object_is_reported_and_skipped(cells, sequential, caplog):
    labels, _ = cells
    victim = int(labels[tuple(sequential.origins[1])])

    class Diverging(OracleFFN):
        """TEST DOUBLE: NaN in every FOV centred in the victim cell."""

        def __call__(self, batch):
            out = super().__call__(batch)
            for i, fov in enumerate(batch):
                if abs(fov[0][3, 3, 3] - victim / 10) < 1e-6:
                    out[i, 0, 1, 1, 1] = np.nan
            return out

    with caplog.at_level(logging.WARNING, logger="emtools"):
        result = _run(cells, Diverging(), batch=1)
    assert result.diverged and all(labels[s] == victim for s in result.diverged)
    lines = [r for r in caplog.records if "diverged" in r.getMessage()]
    assert len(lines) == len(result.diverged) and "NaN/Inf" in lines[0].getMessage()
    # every other cell is segmented as before; the victim's voxels stay 0
    assert not result.labels[labels == victim].any()
    assert (result.labels > 0).sum() == (sequential.labels[labels != victim] > 0).sum()


class Killer(OracleFFN):
    """TEST DOUBLE: the oracle, interrupted (KeyboardInterrupt, as Ctrl-C) at its call number ``at``."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def __call__(self, batch):
        if len(self.batches) + 1 == self.at:
            raise KeyboardInterrupt
        return super().__call__(batch)


@pytest.mark.parametrize("batch", [1, 4])
def test_killed_run_resumes_mid_object_with_the_same_labels(tmp_path, batch):
    labels = voronoi_cells(shape=(10, 24, 24), seed=5, n=4)
    small = (labels, np.where(labels > 0, labels.astype(np.float32) / 10, -1).astype(np.float32))
    unbroken = _run(small, batch=batch)
    assert unbroken.objects >= 3
    state = str(tmp_path / "canvas.npz")
    mid_object = 0
    for at in (2, 5, 17, 18):
        with pytest.raises(KeyboardInterrupt):
            _run(small, Killer(at), batch=batch, state_path=state, checkpoint_every_s=0)
        with np.load(state) as data:
            meta = json.loads(bytes(data["meta"]).decode())
        mid_object += meta["current"] is not None
    assert mid_object >= 3  # the kills fell inside objects, and the state held them
    resumed = _run(small, batch=batch, state_path=state, checkpoint_every_s=0)
    np.testing.assert_array_equal(resumed.labels, unbroken.labels)
    assert resumed.origins == unbroken.origins and resumed.skipped == unbroken.skipped
    # a finished state gives the result again without predicting
    idle = OracleFFN()
    again = _run(small, idle, batch=batch, state_path=state)
    assert idle.batches == [] and np.array_equal(again.labels, unbroken.labels)


def test_state_of_another_run_is_refused(cells, tmp_path):
    state = str(tmp_path / "canvas.npz")
    _run(cells, state_path=state)
    with pytest.raises(EmError, match="from another run"):
        _run(cells, state_path=state, seeds=_seeds(cells)[::-1])
    (tmp_path / "bad.npz").write_text("not a state")
    with pytest.raises(EmError, match="cannot read the flood-fill state"):
        _run(cells, state_path=str(tmp_path / "bad.npz"))


def test_bad_inputs(cells):
    _, image = cells
    with pytest.raises(EmError, match="larger than the volume"):
        flood_fill(OracleFFN(), image[:5], [(2, 20, 20)], FOV, DELTAS)
    with pytest.raises(EmError, match="segment-threshold"):
        flood_fill(OracleFFN(), image, [], FOV, DELTAS, FloodOptions(segment_threshold=1.5))
    with pytest.raises(EmError, match="restrictor"):
        flood_fill(OracleFFN(), image, [], FOV, DELTAS, restrictor=np.ones((2, 2, 2)))


# ----------------------------------------------------------------------------- seeds

def test_peaks_lie_inside_cells_far_from_edges_and_are_deterministic(cells):
    labels, image = cells
    found = policies.peaks(image)
    assert found == policies.peaks(image) and found == sorted(found)
    inside = [labels[s] for s in found]
    assert sum(v > 0 for v in inside) >= 0.9 * len(found)
    assert len({v for v in inside if v > 0}) >= 6  # most cells hold a seed
    mask = np.ones(labels.shape, bool)
    mask[:, :, :20] = False
    assert all(s[2] >= 20 for s in policies.peaks(image, mask))


def test_boundary_policy_grid_and_inverse(cells):
    labels, _ = cells
    membrane = (labels == 0).astype(np.float32)
    found = policies.boundary(membrane)
    assert found and all(labels[s] > 0 for s in found)
    from scipy import ndimage

    depth = ndimage.distance_transform_edt(np.pad(membrane < 0.5, 1))[1:-1, 1:-1, 1:-1]  # outside: an edge
    assert [depth[s] for s in found] == sorted((depth[s] for s in found), reverse=True)  # deepest first
    assert policies.boundary((membrane * 255).astype(np.uint8)) == found
    grid = policies.grid((14, 40, 40), FOV, (4, 8, 8))
    assert grid[0] == (3, 3, 3) and grid[-1] == (7, 35, 35) and len(grid) == 2 * 5 * 5
    assert policies.grid((7, 9, 9), (7, 7, 7), (0, 2, 2)) == [(3, 3, 3), (3, 3, 5), (3, 5, 3), (3, 5, 5)]
    assert policies.inverse({1: (1, 2, 3), 3: (7, 8, 9), 2: (4, 5, 6)}) == [(7, 8, 9), (4, 5, 6), (1, 2, 3)]


def test_seed_file(tmp_path):
    path = tmp_path / "seeds.txt"
    path.write_text("# z y x\n1 2 3\n\n4,5,6  # a comment\n 7\t8 9\n")
    assert policies.read_seed_file(str(path), (10, 10, 10)) == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    path.write_text("1 2 3\n4 5\n")
    with pytest.raises(EmError, match=r"line 2 of .*seeds.txt: expected three integers"):
        policies.read_seed_file(str(path))
    path.write_text("1 2 3\n# c\n1 2 x\n")
    with pytest.raises(EmError, match="line 3 of"):
        policies.read_seed_file(str(path))
    path.write_text("1 2 3\n1 2 10\n")
    with pytest.raises(EmError, match="line 2 of .* outside the volume 10x10x10"):
        policies.read_seed_file(str(path), (10, 10, 10))
    path.write_text("# nothing\n")
    with pytest.raises(EmError, match="holds no seeds"):
        policies.read_seed_file(str(path))
