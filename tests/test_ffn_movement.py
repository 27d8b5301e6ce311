"""Flood-fill movement on toy volumes with known answers: two objects separated by a membrane,
grown by TEST DOUBLES of a flood-filling network (no network runs here)."""

import numpy as np
import pytest
from scipy import ndimage

from emtools.ffn.inference import FloodOptions, flood_fill
from emtools.ffn.movement import logit

HIGH, LOW = np.float32(logit(0.95)), np.float32(logit(0.05))


class OracleFFN:
    """TEST DOUBLE, not a network: a 'perfect' FFN. In each FOV, the foreground (image > 0)
    components that touch a voxel whose input object logit is >= 0 (p >= 0.5) become the
    object (logit(0.95) less 0.001 x the distance from the FOV centre, so that a face's maximum
    is its middle where the object covers it, as a real network's map peaks inside the object),
    everything else logit(0.05). It records the batch sizes and the image value at each FOV
    centre (tests encode positions in the image to learn where FOVs went)."""

    def __init__(self):
        self.batches = []
        self.centres = []

    def __call__(self, batch):
        batch = np.asarray(batch)
        self.batches.append(len(batch))
        out = np.empty((len(batch), 1, *batch.shape[2:]), np.float32)
        centre = tuple(s // 2 for s in batch.shape[2:])
        for i, (image, logits) in enumerate(batch):
            self.centres.append(float(image[centre]))
            foreground = image > 0
            components, _ = ndimage.label(foreground)
            touched = np.unique(components[(logits >= 0) & foreground])
            obj = np.isin(components, touched[touched > 0])
            out[i, 0] = np.where(obj, HIGH - 0.001 * _distance(image.shape), LOW)
        return out


def _distance(shape):
    grids = np.meshgrid(*[np.arange(s) - s // 2 for s in shape], indexing="ij")
    return np.sqrt(sum(g.astype(np.float32) ** 2 for g in grids))


class IdentityFFN:
    """TEST DOUBLE, not a network: returns the object map it is given (an untrained FFN whose
    update is zero), so nothing ever reaches a FOV face."""

    def __init__(self):
        self.calls = 0

    def __call__(self, batch):
        self.calls += len(batch)
        return np.array(batch[:, 1:2], np.float32)


def test_fill_along_x_visits_the_known_positions_and_stops_at_the_membrane():
    # 7x7x40, membrane plane at x=20; the FOV (7^3) moves along x only (deltas 0,0,2).
    # The image encodes x at each voxel (1 + x/100) so the double can tell where each FOV was.
    shape = (7, 7, 40)
    x = np.arange(40, dtype=np.float32)
    image = np.broadcast_to(1 + x / 100, shape).copy()
    image[:, :, 20] = -1
    double = OracleFFN()
    opts = FloodOptions(min_size=1, batch=1)
    result = flood_fill(double, image, [(3, 3, 10), (3, 3, 30)], (7, 7, 7), (0, 0, 2), opts)
    centres = [int(round((v - 1) * 100)) for v in double.centres]
    # breadth first, best move first (equal scores: the lower offset first), each lattice cell once;
    # x=2 and x=38 cannot centre a FOV; the membrane at 20 stops both objects
    assert centres == [10, 8, 12, 6, 14, 4, 16, 18] + [30, 28, 32, 26, 34, 24, 36, 22]
    expected = np.zeros(shape, np.uint64)
    expected[:, :, 1:20] = 1  # FOVs at x=4..18 cover x=1..21; x=0 is never seen
    expected[:, :, 21:40] = 2
    np.testing.assert_array_equal(result.labels, expected)
    assert result.origins == {1: (3, 3, 10), 2: (3, 3, 30)}
    assert result.fovs == 16 and result.skipped == 0 and result.diverged == []


def _coordinate_image(shape):
    """Foreground voxels hold 1 + (z*10000 + y*100 + x) * 1e-6 (their position); membrane -1."""
    z, y, x = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    return (1 + (z * 10000 + y * 100 + x) * 1e-6).astype(np.float32)


def _decode(value):
    code = int(round((value - 1) * 1e6))
    return code // 10000, code // 100 % 100, code % 100


def test_3d_fill_stays_on_its_side_of_the_membrane_and_covers_what_its_fovs_saw():
    shape, fov, deltas = (13, 26, 21), (7, 7, 7), (2, 2, 2)
    image = _coordinate_image(shape)
    image[:, 12, :] = -1  # the membrane: y = 12
    double = OracleFFN()
    result = flood_fill(double, image, [(6, 5, 10), (6, 19, 10)], fov, deltas, FloodOptions(min_size=1, batch=1))
    centres = [_decode(v) for v in double.centres]
    first = centres[: centres.index((6, 19, 10))]
    second = centres[centres.index((6, 19, 10)):]
    assert first[0] == (6, 5, 10) and all(c[1] < 12 for c in first)
    assert all(c[1] > 12 for c in second)
    assert len(set(first)) == len(first)  # no position twice
    for label, visited, side in ((1, first, np.arange(shape[1]) < 12), (2, second, np.arange(shape[1]) > 12)):
        seen = np.zeros(shape, bool)
        for c in visited:
            seen[tuple(slice(p - f // 2, p + f // 2 + 1) for p, f in zip(c, fov))] = True
        expected = seen & side[None, :, None]
        np.testing.assert_array_equal(result.labels == label, expected)
    # the known answer: FOV centres lie on the seed's lattice (step 2) where a FOV fits, so z 0 and 12,
    # x 0 and 20 and (object 2, centres up to y=21) y=25 are never seen
    known = np.zeros(shape, np.uint64)
    known[1:12, 0:12, 1:20] = 1
    known[1:12, 13:25, 1:20] = 2
    np.testing.assert_array_equal(result.labels, known)


def test_identity_double_grows_nothing_beyond_the_seed():
    image = np.ones((9, 9, 9), np.float32)
    double = IdentityFFN()
    seeds = [(4, 4, 4), (4, 4, 5), (3, 3, 3), (4, 4, 4)]
    result = flood_fill(double, image, seeds, (5, 5, 5), (1, 1, 1), FloodOptions(min_size=1, min_seed_distance_zyx=(0, 0, 0)))
    # each seed keeps only itself (0.95 at the seed, 0.05 elsewhere: no move); the repeated seed is skipped
    assert double.calls == 3 and result.fovs == 3 and result.skipped == 1
    assert result.origins == {1: (4, 4, 4), 2: (4, 4, 5), 3: (3, 3, 3)}
    assert result.labels[4, 4, 4] == 1 and result.labels[4, 4, 5] == 2 and (result.labels > 0).sum() == 3
    # the default min seed distance 1,1,1 skips seeds next to a segment; min_size 2 drops 1-voxel objects
    result = flood_fill(IdentityFFN(), image, seeds, (5, 5, 5), (1, 1, 1), FloodOptions(min_size=1))
    assert result.origins == {1: (4, 4, 4)} and result.skipped == 3
    result = flood_fill(IdentityFFN(), image, seeds, (5, 5, 5), (1, 1, 1), FloodOptions(min_size=2))
    assert not result.labels.any() and result.dropped == 3 and result.skipped == 1  # the repeat: tried


@pytest.mark.parametrize("seed, reason", [((0, 4, 4), "border"), ((4, 4, 9), "outside"), ((-1, 4, 4), "outside")])
def test_seeds_where_no_fov_can_be_centred_are_skipped(seed, reason):
    double = IdentityFFN()
    result = flood_fill(double, np.ones((9, 9, 9), np.float32), [seed], (5, 5, 5), (1, 1, 1), FloodOptions(min_size=1))
    assert result.skipped == 1 and double.calls == 0 and not result.labels.any(), reason


def test_a_seed_that_fades_is_dropped():
    class Fading(IdentityFFN):
        """TEST DOUBLE: lowers the whole object map to p=0.5 (below the segment threshold 0.6)."""

        def __call__(self, batch):
            self.calls += len(batch)
            return np.zeros((len(batch), 1, *batch.shape[2:]), np.float32)

    result = flood_fill(Fading(), np.ones((9, 9, 9), np.float32), [(4, 4, 4)], (5, 5, 5), (1, 1, 1),
                        FloodOptions(min_size=0))
    assert result.objects == 0 and result.dropped == 1 and not result.labels.any()
