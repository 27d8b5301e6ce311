"""The neuron examples on real data (examples/fib25, gala, isbi2012 and vnc) run end to
end as users run them, with tiny settings: one training step, small held-out blocks in two chunks,
two thresholds. Each: every per-chunk command goes through $(RUN) (a logging launcher, and a dry
run), the outputs and the report's numbers exist, the scores are those of the held-out block
(its ground truth read here from the published files, independently of emtools' readers), training
never sees that block, and a second make does nothing (tests/test_examples.py: check_pipeline).
They skip with the reason where ../shared/data or GNU make is absent."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from scipy import ndimage

from conftest import shared_data
from emtools import io
from test_examples import EXAMPLES, check_pipeline, make_environment

FAST_TRAINING = "data.num_workers=0"
# an explicit patch: em-predict's own choice traces the model first (seconds per process)
COMMON = ["TRAIN_STEPS=1", "TRAIN_MINUTES=none", "THRESHOLDS=0.5 0.7", "PICTURES=no"]
PATCH_3D = "PREDICT_ARGS=--patch 12,96,96 --overlap 0"


@pytest.fixture
def make_env():
    return make_environment()


def _training_command(folder) -> list[str]:
    log = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    (argv,) = [r["argv"] for r in log if r["tool"] == "em-train"]
    return argv


def _scored(folder, region_vx: str, truth: np.ndarray) -> dict:
    """The held-out block was cut where it should be and scored against its own ground truth."""
    gt, _ = io.read_volume(str(folder / "test_gt.h5:/neurons"))
    for spec in ("test.h5:/image", "test_gt.h5:/neurons"):
        with io.open_volume(str(folder / spec)) as block:
            assert block.box.text() == region_vx, spec
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["region_vx"] == region_vx
    # the same objects as the published labels (ids may differ where components were made)
    pairs = np.unique(np.stack([gt.ravel(), truth.ravel()]), axis=1)
    assert len(np.unique(pairs[0])) == len(np.unique(pairs[1])) == pairs.shape[1]
    return scores


def test_fib25_example(tmp_path, make_env):
    bodies = shared_data("fib25", "train", "bodies.h5")
    folder = tmp_path / "fib25"
    folder.mkdir()
    settings = COMMON + ["THRESHOLD=0.7", f"TRAIN_EXTRA=data.patch_zyx=8,64,64 {FAST_TRAINING}",
                         "TEST_REGION=100:108,0:64,0:96", "CHUNK_ZYX=8,64,48", "HALO_ZYX=0,8,8", PATCH_3D]
    report = check_pipeline(EXAMPLES / "fib25" / "Makefile", folder, make_env, settings, ["0.5", "0.7"])
    train = _training_command(folder)
    assert train[train.index("--init") + 1] == "fibsem-affinity" and "data.volumes.0.val_region=100:150,:,:" in train
    with h5py.File(bodies, "r") as f:
        truth = f["bodies"][100:108, 0:64, 0:96]
    scores = _scored(folder, "100:108,0:64,0:96", truth)
    assert scores["gt_objects"] == len(np.unique(truth[truth != 0]))
    assert "FIB-25 (FIB-SEM, 10 nm): the shipped model fine-tuned 1 steps" in report


def test_gala_example(tmp_path, make_env):
    labels = shared_data("gala", "train-gt.lzf.h5")
    folder = tmp_path / "gala"
    folder.mkdir()
    settings = COMMON + ["THRESHOLD=0.7", f"TRAIN_EXTRA={FAST_TRAINING}", "TRAIN_PATCH_ZYX=8,64,64",
                         "TEST_REGION=34:42,0:64,0:96", "CHUNK_ZYX=8,64,48", "HALO_ZYX=0,8,8", PATCH_3D]
    check_pipeline(EXAMPLES / "gala" / "Makefile", folder, make_env, settings, ["0.5", "0.7"])
    train = _training_command(folder)
    assert "data.volumes.0.val_region=34:50,:,:" in train and "data.patch_zyx=8,64,64" in train
    with h5py.File(labels, "r") as f:
        truth = f["stack"][34:42, 0:64, 0:96]
    scores = _scored(folder, "34:42,0:64,0:96", truth)
    assert scores["gt_objects"] == len(np.unique(truth[truth != 0]))


def test_isbi2012_example(tmp_path, make_env):
    labels = shared_data("isbi2012", "label")
    folder = tmp_path / "isbi2012"
    folder.mkdir()
    settings = COMMON + ["THRESHOLD=0.5", "TRAIN_EXTRA=data.patch_zyx=2,128,128 model.widths=4,8,16,32,64 "
                         f"{FAST_TRAINING}", "TEST_REGION=27:29,0:128,0:96", "CHUNK_ZYX=2,128,48", "HALO_ZYX=0,8,8",
                         "PREDICT_ARGS=--patch 1,160,96 --overlap 0"]
    report = check_pipeline(EXAMPLES / "isbi2012" / "Makefile", folder, make_env, settings, ["0.5", "0.7"])
    train = _training_command(folder)
    assert "data.volumes.0.val_region=25:30,:,:" in train and train[train.index("--config") + 1].endswith("train_isbi.yaml")
    from PIL import Image

    interior = np.stack([np.asarray(Image.open(labels / f"{z}.png"))[0:128, 0:96] != 0 for z in (27, 28)])
    truth = np.stack([ndimage.label(section)[0] + 1000 * z for z, section in enumerate(interior)]) * interior
    scores = _scored(folder, "27:29,0:128,0:96", truth)
    # scored section by section, as the challenge scores ssTEM
    assert scores["mode"] == "sections" and [s["z"] for s in scores["sections"]] == [0, 1]
    assert scores["adapted_rand_error"] == pytest.approx(np.mean([s["adapted_rand_error"] for s in scores["sections"]]))
    assert "lowest adapted_rand_error" in report


def test_vnc_example(tmp_path, make_env):
    membranes = shared_data("drosophila_vnc", "stack1", "membranes")
    folder = tmp_path / "vnc"
    folder.mkdir()
    settings = COMMON + ["THRESHOLD=0.5", "TRAIN_EXTRA=data.patch_zyx=2,128,128 model.widths=4,8,16,32,64 "
                         f"{FAST_TRAINING}", "TEST_REGION=17:19,0:128,0:96", "CHUNK_ZYX=2,128,48", "HALO_ZYX=0,8,8",
                         "PREDICT_ARGS=--patch 1,160,96 --overlap 0"]
    check_pipeline(EXAMPLES / "vnc" / "Makefile", folder, make_env, settings, ["0.5", "0.7"])
    train = _training_command(folder)
    assert "data.volumes.0.val_region=15:20,:,:" in train and "data.volumes.0.label_components=none" in train
    # the training labels: each section's components of the non-membrane, over the whole stack
    neurons, meta = io.read_volume(str(folder / "vnc_neurons.h5:/neurons"))
    assert neurons.shape == (20, 1024, 1024) and meta.voxel_size_nm == (50.0, 4.6, 4.6)
    from PIL import Image

    inside = np.stack([np.asarray(Image.open(membranes / f"{z:02d}.png"))[0:128, 0:96] == 0 for z in (17, 18)])
    truth = np.stack([ndimage.label(section)[0] + 1000 * z for z, section in enumerate(inside)]) * inside
    scores = _scored(folder, "17:19,0:128,0:96", truth)
    assert scores["mode"] == "sections" and [s["z"] for s in scores["sections"]] == [0, 1]
