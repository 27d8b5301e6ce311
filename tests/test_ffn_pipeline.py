"""A flood-filling network end to end: em-train model=ffn learns a small synthetic volume, then
em-predict fills an object from a seed and stops at its membranes."""

import numpy as np
import pytest
import torch

from emtools import io
from emtools.meta import Metadata

VOXEL = (10.0, 10.0, 10.0)


def run(main, *args):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def slabs(tmp_path_factory):
    """Six cells: three slabs along x (12 voxels wide, membranes 3 voxels) cut in two along y by a
    2-voxel membrane; bright noisy cytoplasm, dark membranes."""
    folder = tmp_path_factory.mktemp("ffn-slabs")
    labels = np.zeros((30, 30, 45), np.uint64)
    for k in range(3):
        labels[:, :, k * 15 + 2: k * 15 + 14] = k + 1
    labels[:, 14:16, :] = 0
    labels[:, 16:, :] += (labels[:, 16:, :] > 0).astype(np.uint64) * np.uint64(3)
    rng = np.random.default_rng(0)
    image = np.clip(np.where(labels > 0, 180, 50) + rng.normal(0, 15, labels.shape), 0, 255).astype(np.uint8)
    meta = Metadata(voxel_size_nm=VOXEL)
    io.write_volume(f"{folder}/image.h5:/image", image, meta)
    io.write_volume(f"{folder}/gt.h5:/gt", labels, meta)
    return folder, labels


def test_a_trained_small_ffn_fills_its_object_and_stops_at_the_membranes(slabs, tmp_path):
    from emtools.cli.predict import main as predict
    from emtools.cli.train import main as train

    folder, labels = slabs
    torch.set_num_threads(1)
    run(train, f"data.volumes.0.image={folder}/image.h5:/image", f"data.volumes.0.labels={folder}/gt.h5:/gt",
        "model=ffn", "model.depth=3", "model.features=8", "model.fov_zyx=9,9,9", "model.deltas_zyx=2,2,2",
        "ffn.min_object_size=100", "train.threads=1", "train.steps=800", "data.batch_size=4", "optim.lr=0.003",
        "optim.warmup_steps=10", "validation.every=0", "train.checkpoint_every=100000", "-o", tmp_path / "run", "-q")
    # one seed in the middle of each of two cells (the first slab's far half, the third slab's near half)
    (tmp_path / "seeds.txt").write_text("15 23 8\n15 6 38\n")
    run(predict, tmp_path / "run" / "last.pt", f"{folder}/image.h5:/image", "-o", tmp_path / "seg.h5",
        "--seeds", tmp_path / "seeds.txt", "--min-size", 100, "--threads", 1, "-q")
    seg, meta = io.read_volume(str(tmp_path / "seg.h5"))
    assert [origin[1:] for origin in meta.attrs["ffn_origins"]] == [[15, 23, 8], [15, 6, 38]]
    for label, cell in ((1, labels[15, 23, 8]), (2, labels[15, 6, 38])):
        filled, truth = seg == label, labels == cell
        overlap = int((filled & truth).sum())
        assert overlap / truth.sum() > 0.9, f"segment {label} covers {overlap / truth.sum():.2f} of cell {cell}"
        assert overlap / filled.sum() > 0.95, f"segment {label} leaks: {1 - overlap / filled.sum():.2f} outside cell {cell}"
        # nothing of another cell: the fill stopped at the membranes
        others = np.unique(labels[filled & ~truth])
        assert int((filled & (labels > 0) & ~truth).sum()) < 0.02 * truth.sum(), others
