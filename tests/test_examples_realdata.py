"""The real-data example pipelines (examples/mito_vnc, synapses_vnc, self_training) run end to end
as users run them, with tiny settings: a step or two of training, small blocks of the volumes.

Each test: `make -n RUN=echo-launcher` shows every heavy command going through the launcher; make
runs the whole pipeline in a fresh folder with the default data paths (../shared/data beside the
project); the report's numbers exist and lie in their ranges, and the scores were computed on the
held-out block (its ground truth counted independently from the published files); the training
block never holds a scored section; a second make has nothing to do (`make -q` exits 0). They
skip with the reason where ../shared/data or GNU make is absent.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from emtools import io

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TOOLS = ("crop.py", "em-train", "em-predict", "em-watershed", "em-agglomerate", "em-eval", "em-tile")
MAKE_TIMEOUT_S = 300

# tiny settings: blocks with mitochondria and synapses in them, a small 2D U-Net, two steps
VNC_TINY = ["TRAIN_STEPS=2", "TRAIN_REGION=0:14,0:384,0:384", "TEST_REGION=14:20,0:192,256:448",
            "TRAIN_ARGS=data.patch_zyx=2,128,128 model.widths=4,8,16,32,64"]
# a two-step model's maps say little: seeds and growth wherever the map allows, so that the
# decoding and the instance scoring have objects to work on
MITO_TINY = VNC_TINY + ["WATERSHED_ARGS=--seed-foreground 0 --seed-contour 1 --mask-foreground 0"]
SYNAPSE_TINY = VNC_TINY + ["THRESHOLD=0"]
FIB25_TINY = ["TRAIN_STEPS=1", "SELF_STEPS=1", "TTA=1", "TRAIN_REGION=0:24,0:128,0:128",
              "TEST_REGION=100:116,64:160,64:160", "UNLABELLED_REGION=0:8,0:64,0:64",
              "TRAIN_ARGS=data.patch_zyx=8,64,64 train.winograd=false"]


@pytest.fixture
def make_env():
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    bin_dir = Path(sys.executable).parent
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', os.defpath)}")


def _make(example: str, folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", "-f", str(EXAMPLES / example / "Makefile"), "-C", str(folder),
           f"PYTHON={sys.executable}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=MAKE_TIMEOUT_S)


def _run_pipeline(example: str, folder: Path, env: dict, settings: list[str]) -> str:
    """Dry run through a launcher, the real run, the no-op check, `make report`; returns the report."""
    dry = _make(example, folder, env, "-n", "RUN=echo-launcher", *settings)
    assert dry.returncode == 0, dry.stderr
    commands = dry.stdout.replace("\\\n", " ").splitlines()
    heavy = [c.strip() for c in commands if any(re.search(rf"(^|[\s/]){re.escape(t)}\s", c) for t in TOOLS)]
    assert len(heavy) >= 6, commands
    for command in heavy:
        assert command.startswith("echo-launcher "), command
    assert sorted(os.listdir(folder)) == [], "make -n wrote files"
    done = _make(example, folder, env, *settings)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "undefined variable" not in done.stderr
    again = _make(example, folder, env, "-q", *settings)
    assert again.returncode == 0, "a second make would redo work"
    report = _make(example, folder, env, "report", *settings)
    assert report.returncode == 0 and report.stdout == (folder / "report.txt").read_text()
    return report.stdout


def _number(pattern: str, text: str) -> float:
    match = re.search(pattern, text)
    assert match, (pattern, text)
    return float(match.group(1))


def _block(spec: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
    with io.open_volume(spec) as source:
        return source.shape, source.meta.offset_nm


def _vnc_ground_truth(kind: str, region: tuple[slice, ...]) -> np.ndarray:
    """The published mask of the held-out block, read here without emtools' reader."""
    from PIL import Image

    folder = shared_data("drosophila_vnc", "stack1", kind)
    sections = [np.asarray(Image.open(folder / f"{z:02d}.png")) for z in range(region[0].start, region[0].stop)]
    return np.stack([s[region[1], region[2]] != 0 for s in sections])


def _check_vnc_blocks(folder: Path, labels: str) -> None:
    # the training block holds sections 0-13 only; the held-out block lies at z 14 (700 nm)
    assert _block(str(folder / "train_raw.h5:/raw")) == ((14, 384, 384), (0.0, 0.0, 0.0))
    assert _block(str(folder / f"train_{labels}")) == ((14, 384, 384), (0.0, 0.0, 0.0))
    assert _block(str(folder / "test_raw.h5:/raw")) == ((6, 192, 192), (700.0, 0.0, 256 * 4.6))


def test_mitochondria_pipeline(tmp_path, make_env):
    shared_data("drosophila_vnc", "stack1")
    report = _run_pipeline("mito_vnc", tmp_path, make_env, MITO_TINY)
    _check_vnc_blocks(tmp_path, "mito.h5:/mito")
    region = (slice(14, 20), slice(0, 192), slice(256, 448))
    truth = _vnc_ground_truth("mitochondria", region)
    semantic = json.loads((tmp_path / "semantic.json").read_text())
    instance = json.loads((tmp_path / "instance.json").read_text())
    assert semantic["region_vx"] == instance["region_vx"] == "14:20,0:192,256:448"
    assert semantic["tp"] + semantic["fn"] == int(truth.sum()) > 0
    import cc3d

    assert instance["gt_objects"] == sum(cc3d.connected_components(s, connectivity=4, return_N=True)[1] for s in truth)
    assert instance["pred_objects"] > 0
    assert _number(r"\((\d+) steps\)", report) == 2
    for name in ("IoU", "Dice", "precision", "recall", "AP50", "AP75", "AP50:95", "F1"):
        assert 0 <= _number(rf"\b{re.escape(name)} ([0-9.]+)", report) <= 1, name
    assert _number(r"IoU ([0-9.]+)", report) == pytest.approx(semantic["iou"], abs=5e-4)
    assert _number(r"AP50 ([0-9.]+)", report) == pytest.approx(instance["ap_50"], abs=5e-4)


def test_synapse_pipeline(tmp_path, make_env):
    shared_data("drosophila_vnc", "stack1")
    report = _run_pipeline("synapses_vnc", tmp_path, make_env, SYNAPSE_TINY)
    _check_vnc_blocks(tmp_path, "syn.h5:/synapses")
    truth = _vnc_ground_truth("synapses", (slice(14, 20), slice(0, 192), slice(256, 448)))
    scores = json.loads((tmp_path / "synapse.json").read_text())
    assert scores["mode"] == "synapse" and scores["region_vx"] == "14:20,0:192,256:448"
    assert scores["tp"] + scores["fn"] == int(truth.sum()) > 0
    # THRESHOLD=0: every voxel is predicted cleft, so no cleft voxel is missed
    assert scores["fn"] == 0 and scores["adgt_nm"] == 0 and scores["fn_count"] == 0
    for name in ("IoU", "Dice", "precision", "recall"):
        assert 0 <= _number(rf"\b{name} ([0-9.]+)", report) <= 1, name
    cremi = _number(r"cleft score ([0-9.]+) nm", report)
    assert math.isfinite(cremi) and cremi == pytest.approx(scores["cremi_cleft_score"], abs=0.05) and cremi > 0
    assert _number(r"ADF ([0-9.]+) nm", report) == pytest.approx(2 * cremi, abs=0.1)
    # a failing stage leaves no half-written output (.DELETE_ON_ERROR): at a threshold no
    # probability reaches, em-eval finds no predicted cleft and stops after its stdout was opened
    (tmp_path / "synapse.json").unlink()
    failed = _make("synapses_vnc", tmp_path, make_env, *SYNAPSE_TINY[:-1], "THRESHOLD=1")
    assert failed.returncode != 0 and "has no cleft voxel" in failed.stderr
    assert "Deleting file 'synapse.json'" in failed.stderr and not (tmp_path / "synapse.json").exists()


def test_self_training_pipeline(tmp_path, make_env):
    shared_data("fib25", "unlabelled", "image")
    bodies = shared_data("fib25", "train", "bodies.h5")
    report = _run_pipeline("self_training", tmp_path, make_env, FIB25_TINY)
    # the scored block (z 100-115) lies beyond every training block; the pseudo-labels cover the
    # unlabelled block
    assert _block(str(tmp_path / "train_raw.h5:/raw")) == ((24, 128, 128), (0.0, 0.0, 0.0))
    assert _block(str(tmp_path / "test_raw.h5:/raw")) == ((16, 96, 96), (1000.0, 640.0, 640.0))
    assert _block(str(tmp_path / "pseudo.h5:/boundary")) == ((8, 64, 64), (0.0, 0.0, 0.0))
    import h5py

    with h5py.File(bodies, "r") as f:
        gt = f["bodies"][100:116, 64:160, 64:160]
    rows = []
    for folder, head in (("shipped", "affinity"), ("finetuned", "affinity"), ("selftrained", "affinity"),
                         ("finetuned", "boundary"), ("selftrained", "boundary")):
        scores = json.loads((tmp_path / folder / f"{head}_scores.json").read_text())
        assert scores["region_vx"] == "100:116,64:160,64:160", folder
        assert scores["gt_objects"] == len(np.unique(gt[gt != 0])), folder
        rows.append((folder, head, scores))
    assert (tmp_path / "finetuned" / "last.pt").exists() and (tmp_path / "selftrained" / "last.pt").exists()
    lines = [line for line in report.splitlines() if re.search(r"\d\.\d{3}\s*$", line)]
    assert len(lines) == 5, report
    for line, (folder, head, scores) in zip(lines, rows):
        assert f" {head} " in line, (line, head)
        split, merge, voi, arand = (float(v) for v in line.split()[-4:])
        assert 0 <= split and 0 <= merge and voi == pytest.approx(split + merge, abs=2e-3) and 0 <= arand <= 1
        assert voi == pytest.approx(scores["voi"], abs=5e-4)
        assert arand == pytest.approx(scores["adapted_rand_error"], abs=5e-4)
    assert "(1 steps)" in lines[1] and "(1 steps)" in lines[2]
    assert 0 <= _number(r"pseudo-labels: ([0-9.]+)% of", report) <= 100
