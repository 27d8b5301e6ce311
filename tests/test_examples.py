"""The example pipeline runs as users run it: make in a fresh folder, then a second make does nothing."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from emtools import io
from emtools.synth import make_synthetic_volume

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "make_synthetic.py"


def _env():
    return dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable)


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
    again = subprocess.run([sys.executable, str(EXAMPLE), *args], capture_output=True, text=True)
    assert again.returncode == 0


@pytest.mark.parametrize("args,code,fragment", [
    (["--shape", "4,32"], 2, "expected 3 comma-separated values"),
    (["--voxel-size", "40,0,4"], 1, "voxel_size_nm"),
])
def test_make_synthetic_bad_arguments(tmp_path, args, code, fragment):
    done = subprocess.run([sys.executable, str(EXAMPLE), str(tmp_path / "r.h5"), str(tmp_path / "g.h5"), *args],
                          capture_output=True, text=True)
    assert done.returncode == code and fragment in done.stderr and done.stdout == ""
    assert os.listdir(tmp_path) == []


def test_example_pipeline_runs_and_a_second_make_does_nothing(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("GNU make is not installed")
    cmd = ["make", "-f", str(ROOT / "examples" / "Makefile"), "-C", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, env=_env())
    assert first.returncode == 0, first.stdout + first.stderr
    assert (tmp_path / "roundtrip.ok").exists()
    # the chunked segmentation of the noisy affinities recovers the neurons
    scores = json.loads((tmp_path / "scores.json").read_text())
    assert scores["voi"] < 0.3 and scores["adapted_rand_error"] < 0.05, scores
    assert len(list((tmp_path / "seg").glob("chunk_*.h5"))) == len(list((tmp_path / "affchunks").glob("chunk_*.h5"))) > 1
    second = subprocess.run(cmd + ["-q"], capture_output=True, text=True, env=_env())
    assert second.returncode == 0, "a second make would redo work"
    # a failing stage leaves no half-written target behind (.DELETE_ON_ERROR)
    (tmp_path / "chunks.txt").unlink()
    broken = subprocess.run(cmd + ["CHUNK_ZYX=0,96,96"], capture_output=True, text=True, env=_env())
    assert broken.returncode != 0 and "chunk size must be positive" in broken.stderr
    assert not (tmp_path / "chunks.txt").exists()
