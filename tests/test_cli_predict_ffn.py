"""em-predict with a flood-filling network checkpoint: labels with metadata, the library's result,
resume after SIGKILL, and one-line errors that leave no output behind."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, tool_command, voronoi_cells
from emtools import io
from emtools.meta import Metadata
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import save_checkpoint

torch.set_num_threads(1)
VOXEL = (10.0, 10.0, 10.0)
NORM = {"scale": 1.0, "mean": 128.0, "std": 33.0}


def predict(*args):
    from click.testing import CliRunner

    from emtools.cli.predict import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def ffn_checkpoint(path, bias=6.0, **extra_changes):
    """A tiny random FFN (contract-conforming extra). The output bias lifts every prediction by
    ``bias`` logits, so that its objects grow (an untrained FFN returns its input map)."""
    spec = resolve_spec("ffn", ["depth=2", "features=4", "fov_zyx=9", "deltas_zyx=2"])
    model = build_model(spec, seed=7)
    with torch.no_grad():
        model.out.bias.fill_(bias)
    extra = {"kind": "ffn", "normalization": NORM, "voxel_size_nm": list(VOXEL), "fov_zyx": [9, 9, 9],
             "deltas_zyx": [2, 2, 2], "seed_pad": {"pad": 0.05, "seed": 0.95}, "move_threshold": 0.9, "step": 0,
             "config_sha256": "0" * 64, "loss": 0.0, "validation": None, "world_size": 1}
    extra.update(extra_changes)
    save_checkpoint(str(path), model, spec, extra)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ffn")
    labels = voronoi_cells(shape=(14, 36, 36), seed=2, n=6)
    image = np.where(labels > 0, 190, 40).astype(np.uint8)
    io.write_volume(str(root / "raw.h5:/raw"), image, Metadata(voxel_size_nm=VOXEL))
    mask = np.ones(image.shape, np.uint8)
    mask[:, :, :12] = 0
    io.write_volume(str(root / "mask.h5"), mask, Metadata(voxel_size_nm=VOXEL))
    (root / "seeds.txt").write_text("# z y x\n7 18 18\n7 10 28\n4 28 8\n")
    return {"root": root, "image": image, "mask": mask, "ckpt": ffn_checkpoint(root / "ffn.pt")}


def _files(folder):
    return sorted(os.listdir(folder))


def test_labels_metadata_probabilities_and_the_library_result(data, tmp_path):
    out, prob = tmp_path / "seg.h5", tmp_path / "prob.h5"
    result = predict(data["ckpt"], f"{data['root']}/raw.h5:/raw", "-o", out, "--seeds", data["root"] / "seeds.txt",
                     "--min-size", 20, "--probabilities", prob, "--threads", 1, "-q")
    assert result.returncode == 0, result.output
    assert result.stdout.splitlines() == [str(out), str(prob)]
    labels, meta = io.read_volume(str(out))
    assert labels.dtype == np.uint64 and labels.shape == data["image"].shape
    assert meta.voxel_size_nm == VOXEL
    record = meta.provenance[-1]
    assert record["tool"] == "em-predict" and len(record["params"]["checkpoint_sha256"]) == 64
    assert record["params"]["options"]["min_size"] == 20 and record["params"]["seeds"].startswith("file")
    origins = meta.attrs["ffn_origins"]
    assert [o[0] for o in origins] == sorted(np.unique(labels[labels > 0]).tolist()) and len(origins) >= 1
    probabilities, _ = io.read_volume(str(prob))
    assert probabilities.dtype == np.uint8
    assert (probabilities[labels > 0] >= 153).all() and not probabilities[labels == 0].any()  # >= 0.6 where labelled

    # the same as the library on the same inputs
    from emtools.ffn import inference, seeds
    from emtools.models.checkpoint import load_model

    model, spec, _ = load_model(data["ckpt"])
    image = (data["image"].astype(np.float32) - 128) / 33
    lib = inference.flood_fill(inference.model_runner(model), image, seeds.read_seed_file(str(data["root"] / "seeds.txt")),
                               spec.fov_zyx, spec.deltas_zyx, inference.FloodOptions(min_size=20))
    np.testing.assert_array_equal(labels, lib.labels)

    # a restrictor: nothing where the mask is 0
    masked = tmp_path / "masked.h5"
    result = predict(data["ckpt"], f"{data['root']}/raw.h5", "-o", masked, "--seeds", "grid", "--min-size", 20,
                     "--restrictor", data["root"] / "mask.h5", "--batch", 4, "-q")
    assert result.returncode == 0, result.output
    restricted, _ = io.read_volume(str(masked))
    assert restricted.any() and not restricted[data["mask"] == 0].any()


def test_resume_after_sigkill_gives_the_labels_of_an_unbroken_run(data, tmp_path):
    args = [data["ckpt"], f"{data['root']}/raw.h5", "--seeds", "grid", "--min-size", 20, "--threads", 1]
    whole = tmp_path / "whole.h5"
    assert predict(*args, "-o", whole, "-q").returncode == 0
    out, state = tmp_path / "seg.h5", tmp_path / "canvas.npz"
    command = tool_command("predict") + [str(a) for a in args] + ["-o", str(out), "--state", str(state),
                                                                  "--state-every", "0", "-q"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline, killed_inside = time.monotonic() + 60, False
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists():
                try:
                    with np.load(state) as saved:
                        meta = json.loads(bytes(saved["meta"]).decode())
                except (OSError, ValueError, KeyError):
                    continue
                if meta["current"] is not None and meta["seed_index"] > 0:
                    proc.send_signal(signal.SIGKILL)
                    killed_inside = True
                    break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
        proc.stdout.close()
        proc.stderr.close()
    assert killed_inside, "the run ended before the test could kill it mid-object"
    assert not out.exists()  # no partial output
    resumed = predict(*args, "-o", out, "--state", state, "--state-every", "0.05", "-v")
    assert resumed.returncode == 0, resumed.output
    assert "resuming the flood fill" in resumed.stderr and "inside the object of seed" in resumed.stderr
    np.testing.assert_array_equal(io.read_volume(str(out))[0], io.read_volume(str(whole))[0])
    assert not state.exists()  # the state goes once the output is written
    assert not [f for f in _files(tmp_path) if f.startswith(".")]


def test_bad_inputs_one_line_and_no_output(data, tmp_path):
    root = data["root"]
    raw = f"{root}/raw.h5"
    out = tmp_path / "seg.h5"

    def refused(case, files=()):
        args, fragments = case
        result = predict(*args, "-o", out)
        assert_one_line_error(result, "predict", *fragments)
        assert _files(tmp_path) == sorted(files), _files(tmp_path)

    small = tmp_path / "small.h5"
    io.write_volume(str(small), data["image"][:5], Metadata(voxel_size_nm=VOXEL))
    refused(([data["ckpt"], small], ["FOV 9x9x9", "larger than"]), files=["small.h5"])
    os.remove(small)
    seeds = tmp_path / "bad.txt"
    seeds.write_text("1 2 3\n# fine\n4 5\n")
    refused(([data["ckpt"], raw, "--seeds", seeds], ["line 3 of", "three integers"]), files=["bad.txt"])
    seeds.write_text("7 18 18\n7 18 99\n")
    refused(([data["ckpt"], raw, "--seeds", seeds], ["line 2 of", "outside the volume 14x36x36"]), files=["bad.txt"])
    seeds.write_text("7 18 18\n7 18 3\n")
    refused(([data["ckpt"], raw, "--seeds", seeds, "--restrictor", root / "mask.h5"], ["line 2 of", "background"]),
            files=["bad.txt"])
    os.remove(seeds)
    refused(([data["ckpt"], raw, "--seeds", "peeks"], ["--seeds peeks", "not a policy"]))
    refused(([data["ckpt"], raw, "--tta", 4], ["--tta is for U-Net checkpoints", "an FFN"]))
    refused(([data["ckpt"], raw, "--patch", "8,8,8"], ["--patch is for U-Net"]))
    refused(([data["ckpt"], raw, "--segment-threshold", 1.2], ["segment-threshold", "between 0 and 1"]))
    refused(([data["ckpt"], raw, raw], ["one INPUT"]))
    odd = tmp_path / "odd.h5"
    io.write_volume(str(odd), data["image"], Metadata(voxel_size_nm=(8.0, 8.0, 8.0)))
    refused(([data["ckpt"], odd], ["voxel size 8,8,8", "differs", "--force"]), files=["odd.h5"])
    forced = predict(data["ckpt"], odd, "-o", out, "--force", "--seeds", root / "seeds.txt", "-q")
    assert forced.returncode == 0 and out.exists()
    os.remove(out)
    os.remove(odd)
    # a U-Net checkpoint given an FFN-only option
    unet_spec = resolve_spec("rsunet", ["widths=4,8", "depth=2", "heads=affinity:3"])
    unet = str(tmp_path / "unet.pt")
    save_checkpoint(unet, build_model(unet_spec, seed=1), unet_spec, {"normalization": {"scale": 1 / 255, "mean": 0.5,
                                                                                        "std": 0.25}})
    refused(([unet, raw, "--seeds", "peaks"], ["--seeds is for flood-filling networks", "a U-Net (arch rsunet"]),
            files=["unet.pt"])
    os.remove(unet)
    # a state of another run
    state = tmp_path / "canvas.npz"
    assert predict(data["ckpt"], raw, "-o", tmp_path / "a.h5", "--seeds", "grid", "--min-size", 20, "--state", state,
                   "--state-every", 0).returncode == 0
    assert not state.exists()
    from emtools.ffn.inference import FloodOptions, flood_fill
    from test_ffn_movement import IdentityFFN

    flood_fill(IdentityFFN(), np.zeros((14, 36, 36), np.float32), [(7, 18, 18)], (9, 9, 9), (2, 2, 2),
               FloodOptions(), state_path=str(state))
    refused(([data["ckpt"], raw, "--state", state], ["from another run"]), files=["a.h5", "canvas.npz"])


def test_consensus_equals_the_library_and_is_agglomerate_fragments(data, tmp_path):
    from emtools.ffn import seeds as policies
    from emtools.ffn.consensus import flood_consensus
    from emtools.ffn.inference import FloodOptions, model_runner
    from emtools.models.checkpoint import load_model
    from emtools.normalize import normalize_image

    out = tmp_path / "frags.h5"
    result = predict(data["ckpt"], f"{data['root']}/raw.h5:/raw", "-o", out, "--seeds", data["root"] / "seeds.txt",
                     "--min-size", 20, "--consensus", "--consensus-offset", "0,1,1", "--threads", 1, "-q")
    assert result.returncode == 0, result.output
    labels, meta = io.read_volume(str(out))
    model, spec, _ = load_model(data["ckpt"])
    seeds = policies.read_seed_file(str(data["root"] / "seeds.txt"), data["image"].shape)
    expected = flood_consensus(model_runner(model), normalize_image(data["image"], NORM), seeds, spec.fov_zyx,
                               spec.deltas_zyx, FloodOptions(min_size=20), fov_offset_zyx=(0, 1, 1)).labels
    assert labels.max() > 0 and np.array_equal(labels, expected)
    assert meta.attrs["fragment_count"] == int(labels.max())
    assert meta.provenance[-1]["params"]["consensus"] is True


def test_chunks_stitch_and_a_rerun_reuses_them(data, tmp_path):
    out, work = tmp_path / "seg.h5", tmp_path / "work"
    args = [data["ckpt"], f"{data['root']}/raw.h5:/raw", "-o", out, "--seeds", data["root"] / "seeds.txt",
            "--min-size", 20, "--chunk", "14,20,20", "--halo", "0,9,9", "--work", work, "--threads", 1]
    first = predict(*args)
    assert first.returncode == 0, first.output
    labels, meta = io.read_volume(str(out))
    assert labels.shape == data["image"].shape and labels.max() > 0
    assert meta.attrs["fragment_count"] == int(labels.max())
    assert len(os.listdir(work / "chunks")) == 4
    os.remove(out)
    again = predict(*args)
    assert again.returncode == 0 and "0 chunks segmented, 4 reused" in again.output
    assert np.array_equal(io.read_volume(str(out))[0], labels)


@pytest.mark.parametrize("extra, message", [
    (["--halo", "1,1,1"], "--halo needs --chunk"),
    (["--consensus-offset", "0,1,1"], "--consensus-offset needs --consensus"),
    (["--consensus", "--probabilities", "p.h5"], "--probabilities is for a single fill"),
    (["--chunk", "14,20,20", "--state", "s.npz"], "--state is for a single volume"),
    (["--chunk", "14,20,20", "--stitch-threshold", "2"], "--stitch-threshold must lie in"),
])
def test_combined_options_bad_input(data, tmp_path, extra, message):
    result = predict(data["ckpt"], f"{data['root']}/raw.h5:/raw", "-o", tmp_path / "seg.h5", *extra)
    assert result.returncode != 0 and message in result.output, result.output
    assert not (tmp_path / "seg.h5").exists()


def test_chunks_shared_by_two_torchrun_ranks_equal_one_process(data, tmp_path):
    import sys

    args = [data["ckpt"], f"{data['root']}/raw.h5:/raw", "--seeds", data["root"] / "seeds.txt", "--min-size", 20,
            "--chunk", "14,20,20", "--halo", "0,9,9", "--threads", 1]
    alone = predict(*args, "-o", tmp_path / "alone.h5", "--work", tmp_path / "alone.work", "-q")
    assert alone.returncode == 0, alone.output
    env = dict(os.environ, OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "emtools.cli.predict", *map(str, args), "-o", str(tmp_path / "ranks.h5"),
                           "--work", str(tmp_path / "ranks.work")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(tmp_path / "ranks.h5")  # rank 0 writes (and prints) the labels
    assert "rank done: 2 chunks segmented" in done.stderr
    np.testing.assert_array_equal(io.read_volume(str(tmp_path / "ranks.h5"))[0],
                                  io.read_volume(str(tmp_path / "alone.h5"))[0])
