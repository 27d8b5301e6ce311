"""The demo (examples/Makefile, `make demo`) runs as users run it: make in a fresh folder does the
whole job (synthetic volumes, fine-tuning the shipped model, chunked prediction and segmentation,
scores, sweep, report), every per-chunk command goes through $(RUN), and a second make does nothing.
The helpers here are shared with tests/test_examples_neurons.py (the real-data examples)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emtools import io
from emtools.meta import Metadata
from emtools.synth import make_synthetic_volume

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
EXAMPLE = EXAMPLES / "make_synthetic.py"
MAKE_TIMEOUT_S = 400
# the per-chunk commands of examples/pipeline.mk, each of which must start with $(RUN)
PER_CHUNK = (r"em-predict\s", r"em-watershed\s", r"em-agglomerate edges\s", r"em-agglomerate relabel\s")
SCORE_KEYS = ("voi_split", "voi_merge", "voi", "adapted_rand_error")

# tiny settings: two chunks of a 16x96x96 test volume, one step of fine-tuning on a small crop, a
# patch given (em-predict's own choice traces the model first, seconds per process)
DEMO_TINY = ["TRAIN_STEPS=1", "TRAIN_SHAPE_ZYX=16,96,96", "TRAIN_PATCH_ZYX=8,64,64", "TEST_SHAPE_ZYX=16,96,96",
             "CHUNK_ZYX=16,96,48", "HALO_ZYX=4,8,8", "PREDICT_ARGS=--patch 20,128,96 --overlap 0", "THRESHOLDS=0.3 0.7",
             "THRESHOLD=0.7", "DEMO_TRAIN_ARGS=optim.warmup_steps=0 data.num_workers=0"]


def make_environment() -> dict:
    """The environment the examples run in (this Python's em-* tools first on PATH); skips the
    test where GNU make is absent."""
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture
def make_env():
    return make_environment()


def launcher(folder: Path) -> Path:
    """A stand-in for a cluster launcher (srun): logs its command line, then runs it."""
    path = folder / "launch"
    path.write_text('#!/bin/sh\nprintf "%s\\n" "$*" >> "$(dirname "$0")/launched.log"\nexec "$@"\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def run_make(makefile: Path, folder: Path, env: dict, *args: str) -> subprocess.CompletedProcess:
    cmd = ["make", "--no-print-directory", "-f", str(makefile), "-C", str(folder), f"PYTHON={sys.executable}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=MAKE_TIMEOUT_S)


def chunk_names(folder: Path) -> list[str]:
    return sorted(Path(line).stem for line in (folder / "chunks.txt").read_text().split())


def check_pipeline(makefile: Path, folder: Path, env: dict, settings: list[str], thresholds: list[str]) -> str:
    """Run an example pipeline in ``folder`` through a logging launcher and check what every
    example must do; returns the report."""
    run = launcher(folder.parent)
    first = run_make(makefile, folder, env, "-j2", f"RUN={run}", *settings)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    assert "warning: undefined variable" not in first.stderr, first.stderr
    names = chunk_names(folder)
    assert len(names) >= 2, names
    # every per-chunk command ran through the launcher, once per chunk (and threshold), and
    # nothing else did
    launched = (folder.parent / "launched.log").read_text().splitlines()
    per_stage = {stage: [line for line in launched if re.search(stage, line)] for stage in PER_CHUNK}
    for stage, lines in per_stage.items():
        per = len(thresholds) if "relabel" in stage else 1
        assert len(lines) == per * len(names), (stage, lines)
    assert len(launched) == sum(len(lines) for lines in per_stage.values()), launched
    # the outputs, and a report whose numbers are the scores
    for name in names:
        for path in (f"pred/{name}.h5", f"frags/{name}.h5", f"edges/{name}.tsv",
                     *(f"seg_{t}/{name}.h5" for t in thresholds)):
            assert (folder / path).is_file(), path
    for path in ("model/last.pt", "lut.tsv", "scores.json", "sweep.jsonl", "sweep.txt", "sweep.png", "report.txt",
                 "runs.jsonl", *(f"seg_{t}.h5" for t in thresholds)):
        assert (folder / path).is_file(), path
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    scores = json.loads((folder / "scores.json").read_text())
    report = (folder / "report.txt").read_text()
    assert first.stdout.rstrip().endswith(report.rstrip()), "make ends by printing the report"
    line = re.search(r"voi_split (\S+)  voi_merge (\S+)  voi (\S+)  adapted_rand_error (\S+)", report)
    assert line, report
    for key, text in zip(SCORE_KEYS, line.groups()):
        assert float(text) == pytest.approx(scores[key], abs=5e-5) and scores[key] >= 0
    sweep = [json.loads(row) for row in (folder / "sweep.jsonl").read_text().splitlines()]
    assert [row["segmentation_threshold"] for row in sweep] == [float(t) for t in thresholds]
    table = (folder / "sweep.txt").read_text()
    assert table in report and len(re.findall(r"^\*? +seg_[0-9.]+\.h5 +[0-9.]+ +[0-9.]+", table, re.M)) == len(thresholds)
    for stage in ("em-train", "em-tile split", "em-predict", "em-watershed", "em-agglomerate edges",
                  "em-agglomerate stitch", "em-agglomerate relabel", "em-tile merge", "em-eval"):
        assert re.search(rf"^  {stage} +\d+ +0 +[0-9.]+ ", report, re.M), stage
    # a second make does nothing (through the launcher or not), and a dry run lists every
    # per-chunk command behind $(RUN)
    again = run_make(makefile, folder, env, "-q", f"RUN={run}", *settings)
    assert again.returncode == 0, "a second make would redo work"
    dry = run_make(makefile, folder, env, "-n", "-W", "model/last.pt", "RUN=echo-launcher", *settings)
    assert dry.returncode == 0, dry.stderr
    commands = [c.strip() for c in dry.stdout.replace("\\\n", " ").splitlines()]
    listed = [c for c in commands if any(re.search(rf"(^|\s){stage}", c) for stage in PER_CHUNK)]
    assert len(listed) == (3 + len(thresholds)) * len(names), commands
    assert all(c.startswith("echo-launcher ") for c in listed), listed
    return report


@pytest.mark.parametrize("args,code,fragment", [
    (["--shape", "4,32"], 2, "expected 3 comma-separated values"),
    (["--voxel-size", "40,0,4"], 1, "voxel_size_nm"),
])
def test_make_synthetic_bad_arguments(tmp_path, args, code, fragment):
    done = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "r.h5"), str(tmp_path / "g.h5"), *args],
                          capture_output=True, text=True)
    assert done.returncode == code and fragment in done.stderr and done.stdout == ""
    assert os.listdir(tmp_path) == []


def test_make_synthetic_writes_hdf5_with_metadata(tmp_path):
    args = [str(tmp_path / "raw.h5:/image"), str(tmp_path / "gt.h5:/neurons"), "--shape", "4,32,48", "--seed", "1",
            "--cell-diameter", "150", "--mitochondria", str(tmp_path / "mito.tif")]
    done = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / n) for n in ("raw.h5", "gt.h5", "mito.tif")]
    expected = make_synthetic_volume((4, 32, 48), seed=1, mean_cell_diameter_nm=150.0)
    image, meta = io.read_volume(str(tmp_path / "raw.h5:/image"))
    np.testing.assert_array_equal(image, expected.image)
    np.testing.assert_array_equal(io.read_volume(str(tmp_path / "gt.h5"))[0], expected.neurons)
    assert meta.voxel_size_nm == (40, 4, 4) and meta.provenance[0]["params"]["seed"] == 1


@pytest.mark.parametrize("script,args,fragment", [
    ("crop.py", ["{data}", "-o", "{out}/c.h5:/x", "--region", "4:2,:,:"], "--region: '4:2,:,:' lies outside the volume"),
    ("crop.py", ["{data}", "-o", "{out}/c.tif"], "the output must be HDF5"),
    ("plot_sweep.py", ["{data}", "-o", "{out}/p.png"], "line 1 is not JSON"),
    ("report.py", ["--model", "m/last.pt", "--scores", "{data}", "--threshold", "0.5", "--sweep", "{data}",
                   "--log", "{out}/none.jsonl", "-o", "{out}/r.txt"], "not an em-eval JSON object"),
])
def test_example_scripts_refuse_bad_input_in_one_line(tmp_path, script, args, fragment):
    data = tmp_path / "in"
    if script == "crop.py":
        io.write_volume(f"{data}.h5:/x", np.zeros((3, 4, 5), np.uint8), Metadata())
        data = f"{data}.h5:/x"
    else:
        data.write_text("no JSON here\n")
    out = tmp_path / "out"
    out.mkdir()
    argv = [a.format(data=data, out=out) for a in args]
    done = subprocess.run([sys.executable, str(EXAMPLES / "scripts" / script), *argv], capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == "", (done.stdout, done.stderr)
    assert done.stderr.startswith(f"{script}: error: ") and fragment in done.stderr and len(done.stderr.splitlines()) == 1
    assert os.listdir(out) == []


def test_demo_does_the_whole_job_and_a_second_make_does_nothing(tmp_path, make_env):
    folder = tmp_path / "demo"
    folder.mkdir()
    report = check_pipeline(EXAMPLES / "Makefile", folder, make_env, DEMO_TINY, ["0.3", "0.7"])
    # it fine-tuned the shipped model, one step, on the training volume only
    log = [json.loads(line) for line in (folder / "runs.jsonl").read_text().splitlines()]
    train = [r["argv"] for r in log if r["tool"] == "em-train"]
    assert len(train) == 1 and train[0][train[0].index("--init") + 1] == "fibsem-affinity"
    assert "data.volumes.0.image=train.h5:/image" in train[0] and "train.steps=1" in train[0]
    assert "model: model/last.pt (trained 1 steps" in report
    # the scores are those of the test volume's own ground truth, over all of it
    truth = make_synthetic_volume((16, 96, 96), seed=2, voxel_size_nm=(10, 10, 10), mean_cell_diameter_nm=400.0)
    np.testing.assert_array_equal(io.read_volume(str(folder / "test_gt.h5:/neurons"))[0], truth.neurons)
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["region_vx"] == "0:16,0:96,0:96" and scores["gt_objects"] == int(truth.neurons.max())
    # the chunks were stitched: segments cross the seam between the two chunks, and merging
    # more (0.7) leaves no more segments than 0.3; the shipped model barely changed by one step
    # already segments this volume well at the sweep's best threshold
    seg = {t: io.read_volume(str(folder / f"seg_{t}.h5:/seg"))[0] for t in ("0.3", "0.7")}
    assert seg["0.3"].shape == (16, 96, 96)
    assert np.intersect1d(seg["0.7"][:, :, 47], seg["0.7"][:, :, 48]).size > 0
    assert len(np.unique(seg["0.7"])) <= len(np.unique(seg["0.3"]))
    sweep = [json.loads(row) for row in (folder / "sweep.jsonl").read_text().splitlines()]
    assert min(row["adapted_rand_error"] for row in sweep) < 0.2, sweep
    # pictures from the tools themselves, listed in the report
    for picture in ("errors.png", "sweep_errors.png", *(f"pred/{n}.png" for n in chunk_names(folder)),
                    *(f"frags/{n}.png" for n in chunk_names(folder))):
        assert (folder / picture).is_file(), picture
    assert "errors.png: " in report and "pred/*.png (2 files)" in report
    # a changed setting reruns exactly the stages that use it: another fixed threshold is scored
    # again, nothing is trained, predicted or segmented again
    other = run_make(EXAMPLES / "Makefile", folder, make_env, *DEMO_TINY, "THRESHOLD=0.3")
    assert other.returncode == 0, other.stderr
    ran = re.findall(r"^em-profile run .*? -- (\S+)", other.stdout, re.M)
    assert ran == ["em-eval"] * 3, other.stdout
    assert json.loads((folder / "scores.json").read_text())["segmentation"].startswith("seg_0.3.h5")
    assert run_make(EXAMPLES / "Makefile", folder, make_env, "-q", *DEMO_TINY, "THRESHOLD=0.3").returncode == 0
    assert run_make(EXAMPLES / "Makefile", folder, make_env, "-q", *DEMO_TINY).returncode == 1


def test_demo_stops_at_a_failing_stage_without_a_partial_output(tmp_path, make_env):
    # the test volume's chunk list fails to be made: nothing half-written is left behind
    bad = run_make(EXAMPLES / "Makefile", tmp_path, make_env, "chunks.txt", *DEMO_TINY, "CHUNK_ZYX=0,96,96")
    assert bad.returncode != 0 and "chunk size must be positive" in bad.stderr
    assert (tmp_path / "test.h5").is_file() and not (tmp_path / "chunks.txt").exists()


@pytest.mark.parametrize("args,message", [
    (["DATA=nothing"], "DATA=nothing: no examples/nothing/data.mk; choose synthetic, "),
    (["DATA=fib25", "SHARED_DATA=/no/such/folder"], "FIB-25 is not in /no/such/folder/fib25/train"),
    (["THRESHOLD=0.6"], "THRESHOLD (0.6) must be one of THRESHOLDS (0.3 0.5 0.7 0.9)"),
])
def test_demo_refuses_bad_settings_in_one_line(tmp_path, make_env, args, message):
    done = run_make(EXAMPLES / "Makefile", tmp_path, make_env, *args)
    assert done.returncode != 0 and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and os.listdir(tmp_path) == []


def test_demo_on_fib25_is_the_fib25_example_with_the_demo_training(tmp_path, make_env):
    from conftest import shared_data

    shared_data("fib25", "train", "bodies.h5")
    # a dry run makes the test block and its chunk list (make remakes its included chunks.mk
    # first), then lists the rest: the demo's short fine-tuning on FIB-25 outside z 100-149
    dry = run_make(EXAMPLES / "Makefile", tmp_path, make_env, "-n", "DATA=fib25", "RUN=echo-launcher",
                   "TEST_REGION=100:108,0:64,0:64", "CHUNK_ZYX=8,32,64", "HALO_ZYX=0,8,8")
    assert dry.returncode == 0, dry.stderr
    train = next(line for line in dry.stdout.replace("\\\n", " ").splitlines() if " em-train " in line)
    assert "--init fibsem-affinity" in train and "train.steps=30 train.minutes=none" in train
    assert "data.volumes.0.val_region=100:150,:,:" in train and "fib25/train/bodies.h5:bodies" in train
    names = chunk_names(tmp_path)
    assert len(names) == 2 and all(name.startswith("chunk_100-108_") for name in names), names
    with io.open_volume(str(tmp_path / "test.h5:/image")) as block:
        assert block.shape == (8, 64, 64) and block.meta.offset_nm == (1000.0, 0.0, 0.0)
