"""em-predict as users run it: outputs and metadata, chunks that merge into the whole-volume
prediction, uint8 maps through em-watershed, torchrun ranks, one-line errors, a full disk."""

import hashlib
import os
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, shared_data, tool_command
from emtools import io
from emtools.meta import Metadata
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import save_checkpoint
from emtools.models.heads import default_heads, heads_to_dict

torch.set_num_threads(1)
VOXEL = (40.0, 4.0, 4.0)
# The same sliding window for every run here: patch 4,24,24 (the training input size; the default
# patch is chosen for speed, see test_default_patch_*), crop auto (0,3,3), half overlap in y,x.
TRAIN_PATCH = ["--patch", "4,24,24"]
WINDOW = [*TRAIN_PATCH, "--overlap", "0,0.5,0.5", "--batch", "4", "--blend", "bump", "-q"]
NORM = {"scale": 1 / 255, "mean": 0.5, "std": 0.25}


def run_inprocess(main, *args, stdin=None):
    from click.testing import CliRunner

    result = CliRunner().invoke(main, [str(a) for a in args], input=stdin)
    result.returncode = result.exit_code
    return result


def predict(*args, stdin=None):
    from emtools.cli.predict import main

    return run_inprocess(main, *args, stdin=stdin)


def run_inprocess_env(env, *args):
    from click.testing import CliRunner

    from emtools.cli.predict import main

    result = CliRunner(env=env).invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def tile(*args, stdin=None):
    from emtools.cli.tile import main

    return run_inprocess(main, *args, stdin=stdin)


def _checkpoint(path, extra_changes=None, spec_words=("heads=affinity:3,foreground:1",)):
    spec = resolve_spec("rsunet", ["widths=4,8", "depth=2", *spec_words])
    model = build_model(spec, seed=11)
    for module in model.modules():  # running statistics as after training
        if isinstance(module, torch.nn.BatchNorm3d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    given = extra_changes or {}
    extra = {"heads": given.get("heads") or heads_to_dict(default_heads(spec.heads)), "normalization": NORM,
             "voxel_size_nm": list(VOXEL), "input_size_zyx": [4, 24, 24], "step": 100}
    for key, value in (extra_changes or {}).items():
        if value is None:
            extra.pop(key)
        else:
            extra[key] = value
    save_checkpoint(str(path), model, spec, extra)
    return str(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ckpt = _checkpoint(root / "model.pt")
    image = np.random.default_rng(0).integers(0, 256, (8, 72, 72), dtype=np.uint8)
    raw = f"{root / 'raw.h5'}:/image"
    io.write_volume(raw, image, Metadata(voxel_size_nm=VOXEL, offset_nm=(80.0, 40.0, 0.0)))
    whole = predict(ckpt, raw, "-o", root / "whole_{head}.h5", *WINDOW)
    assert whole.returncode == 0, whole.output
    return {"root": root, "ckpt": ckpt, "raw": raw, "image": image, "whole_stdout": whole.stdout}


@pytest.fixture(scope="module")
def chunks(data):
    root = data["root"]
    split = tile("split", data["raw"], "--chunk", "8,36,36", "--halo", "0,17,17", "-o", root / "chunks", "-q")
    assert split.returncode == 0, split.output
    paths = split.stdout.split()
    result = predict(data["ckpt"], "-", "-o", f"{root}/pred/", *WINDOW, stdin="\n".join(paths) + "\n")
    assert result.returncode == 0, result.output
    return paths, result.stdout.split()


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_writes_one_map_per_head_with_metadata(data):
    root = data["root"]
    assert data["whole_stdout"].split() == [str(root / "whole_affinity.h5"), str(root / "whole_foreground.h5")]
    affs, meta = io.read_volume(str(root / "whole_affinity.h5"))
    fg, fg_meta = io.read_volume(str(root / "whole_foreground.h5"))
    assert affs.shape == (3, 8, 72, 72) and affs.dtype == np.float32 and meta.axes == "czyx"
    assert fg.shape == (8, 72, 72) and fg_meta.axes == "zyx"
    assert 0 <= affs.min() and affs.max() <= 1 and affs.std() > 1e-3
    assert meta.offset_nm == (80.0, 40.0, 0.0) and meta.voxel_size_nm == VOXEL
    assert meta.attrs["affinity_offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert meta.attrs["value_range"] == [0.0, 1.0] and fg_meta.attrs["head_kind"] == "foreground"
    record = meta.provenance[-1]
    assert record["tool"] == "em-predict" and record["params"]["checkpoint"] == data["ckpt"]
    assert record["params"]["checkpoint_sha256"] == _digest(data["ckpt"])
    assert record["params"]["patch_zyx"] == [4, 24, 24] and record["params"]["crop_lo_zyx"] == [0, 3, 3]
    assert record["params"]["execution"][:2] == ["fuse", "channels_last"]  # em-predict's choice on a CPU
    assert record["inputs"][0]["spec"] == data["raw"]
    assert not [name for name in os.listdir(root) if name.startswith(".")]  # no temporary left


def test_joined_affinity_heads_feed_the_mutex_watershed(tmp_path, data):
    """--heads a+b writes the two affinity heads as one map with their offsets, as em-watershed
    --method mutex reads it; the values are the separate maps, stacked."""
    ckpt = _checkpoint(tmp_path / "lr.pt", spec_words=("heads=affinity:3,long:2",), extra_changes={
        "heads": {"affinity": {"kind": "affinity", "channels": 3},
                  "long": {"kind": "affinity", "channels": 2, "offsets": [[-2, 0, 0], [0, -6, 0]]}}})
    both = predict(ckpt, data["raw"], "--heads", "affinity+long", "-o", tmp_path / "joined.h5:/affs", *WINDOW)
    assert both.returncode == 0, both.output
    apart = predict(ckpt, data["raw"], "-o", tmp_path / "apart_{head}.h5", *WINDOW)
    assert apart.returncode == 0, apart.output
    joined, meta = io.read_volume(f"{tmp_path}/joined.h5:/affs")
    near, _ = io.read_volume(str(tmp_path / "apart_affinity.h5"))
    far, _ = io.read_volume(str(tmp_path / "apart_long.h5"))
    # equal to float rounding: the sigmoid runs on differently strided channel slices
    np.testing.assert_allclose(joined, np.concatenate([near, far]), rtol=1e-5, atol=1e-6)
    assert meta.attrs["affinity_offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-2, 0, 0], [0, -6, 0]]
    from emtools.cli.watershed import main as watershed

    result = run_inprocess(watershed, f"{tmp_path}/joined.h5:/affs", "--method", "mutex", "-o",
                           tmp_path / "seg.h5:/seg", "-q")
    assert result.returncode == 0, result.output
    assert io.read_volume(f"{tmp_path}/seg.h5:/seg")[0].max() >= 1


def test_chunks_merge_into_the_whole_volume_prediction(data, chunks):
    root = data["root"]
    inputs, outputs = chunks
    assert len(inputs) == 4 and len(outputs) == 8
    for name in ("affinity", "foreground"):
        mine = [p for p in outputs if p.endswith(f"_{name}.h5")]
        assert [os.path.basename(p) for p in mine] == [os.path.basename(p)[:-3] + f"_{name}.h5" for p in inputs]
        chunk, meta = io.read_volume(mine[0])
        source, source_meta = io.read_volume(inputs[0])
        assert chunk.shape[-3:] == source.shape and meta.offset_nm == source_meta.offset_nm
        assert meta.attrs["responsible_end_vx"] == source_meta.attrs["responsible_end_vx"]
        merged = tile("merge", *mine, "--blend", "none", "-o", root / f"merged_{name}.h5", "-q")
        assert merged.returncode == 0, merged.output
        values, merged_meta = io.read_volume(str(root / f"merged_{name}.h5"))
        whole, whole_meta = io.read_volume(str(root / f"whole_{name}.h5"))
        assert merged_meta.offset_nm == whole_meta.offset_nm
        assert np.abs(values - whole).max() < 1e-5
        # Blended merging also works on these maps (they cover each chunk with its halo).
        assert tile("merge", *mine, "--blend", "linear", "-o", root / f"blended_{name}.h5", "-q").returncode == 0


def test_uint8_affinities_run_through_watershed(data, chunks):
    from emtools.cli.watershed import main as watershed

    root = data["root"]
    chunk = chunks[0][0]
    out = root / "u8.h5"
    result = predict(data["ckpt"], chunk, "--heads", "affinity", "--dtype", "uint8", "-o", out, *WINDOW)
    assert result.returncode == 0, result.output
    assert result.stdout == f"{out}\n"
    u8, meta = io.read_volume(str(out))
    assert u8.dtype == np.uint8 and meta.attrs["value_range"] == [0.0, 1.0]
    float_affs = io.read_volume([p for p in chunks[1] if "_affinity" in p][0])[0]
    assert np.abs(u8 / 255.0 - float_affs).max() <= 0.5 / 255 + 1e-6
    frags = run_inprocess(watershed, out, "-o", root / "frags.h5", "--min-size", "0", "-q")
    assert frags.returncode == 0, frags.output
    labels, frag_meta = io.read_volume(str(root / "frags.h5"))
    assert labels.shape == (8, 36, 36) and labels.max() >= 1  # cropped to the chunk's responsible region


def _torchrun(*args, cwd=None):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "emtools.cli.predict", *[str(a) for a in args]]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_two_ranks_share_the_chunks_and_match_one_rank(data, chunks):
    root = data["root"]
    inputs, outputs = chunks
    out = root / "ranks"
    out.mkdir()
    result = _torchrun(data["ckpt"], *inputs, "-o", f"{out}/", *WINDOW)
    assert result.returncode == 0, result.stderr
    written = result.stdout.split()
    assert sorted(written) == sorted(str(out / os.path.basename(p)) for p in outputs)  # each once
    for path in outputs:
        assert _digest(path) == _digest(out / os.path.basename(path))
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in outputs)


def test_two_ranks_share_the_blocks_of_one_volume(data):
    root = data["root"]
    result = _torchrun(data["ckpt"], data["raw"], "-o", root / "blocks_{head}.h5", "--block", "8,36,36", *WINDOW)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(root / "blocks_affinity.h5"), str(root / "blocks_foreground.h5")]
    for name in ("affinity", "foreground"):
        values, meta = io.read_volume(str(root / f"blocks_{name}.h5"))
        whole, whole_meta = io.read_volume(str(root / f"whole_{name}.h5"))
        assert np.abs(values - whole).max() < 1e-5 and meta == whole_meta


def test_small_volume_is_padded_with_a_warning(tmp_path, data):
    raw = str(tmp_path / "small.h5")
    io.write_volume(raw, data["image"][:3, :10, :12], Metadata(voxel_size_nm=VOXEL))
    result = predict(data["ckpt"], raw, "--heads", "foreground", "-o", tmp_path / "p.h5", "--overlap", "0",
                     "--precision", "bf16", "--device", "cpu", *TRAIN_PATCH)
    assert result.returncode == 0, result.output
    assert "is smaller than the patch 4,24,24: it is padded by mirroring" in result.stderr
    from emtools.profile.options import cpu_has_bf16_units

    warned = "--precision bf16 on a CPU without bf16 units is emulated" in result.stderr
    assert warned != cpu_has_bf16_units()
    assert io.read_volume(str(tmp_path / "p.h5"))[0].shape == (3, 10, 12)


def test_a_halo_below_the_model_context_is_warned_about(tmp_path, data):
    split = tile("split", data["raw"], "--chunk", "8,36,36", "--halo", "0,4,4", "-o", tmp_path / "c", "-q")
    chunk = split.stdout.split()[0]
    result = predict(data["ckpt"], chunk, "--heads", "foreground", "-o", tmp_path / "p.h5", "--overlap", "0",
                     *TRAIN_PATCH)
    assert result.returncode == 0, result.output
    assert "is below the context of the model (3,17,17 below, 3,17,17 above)" in result.stderr


def test_tta_reduce_per_head():
    from emtools.predict.tta import parse_reduce as _parse_reduce  # em-predict's --tta-reduce

    heads = ["affinity", "foreground"]
    assert _parse_reduce("max", heads) == {"affinity": "max", "foreground": "max"}
    assert _parse_reduce("affinity=min", heads) == {"affinity": "min", "foreground": "mean"}
    assert _parse_reduce("min,foreground=max", heads) == {"affinity": "min", "foreground": "max"}


def test_voxel_size_mismatch_needs_force(tmp_path, data):
    raw = str(tmp_path / "coarse.h5")
    io.write_volume(raw, data["image"][:4, :24, :24], Metadata(voxel_size_nm=(40, 8, 8)))
    out = tmp_path / "p.h5"
    result = predict(data["ckpt"], raw, "--heads", "foreground", "-o", out)
    assert_one_line_error(result, "predict", "voxel size 40,8,8 nm of", "differs from the training voxel size 40,4,4 nm",
                          "--force")
    assert not out.exists()
    result = predict(data["ckpt"], raw, "--heads", "foreground", "-o", out, "--force", "--overlap", "0")
    assert result.returncode == 0 and "(--force: predicting at the input's voxel size)" in result.stderr and out.exists()


def test_finer_input_is_averaged_to_the_model_voxel_size_and_interpolated_back(tmp_path, data):
    """A model trained at 40,8,8 nm on a 40,4,4 nm input: the maps have the input's shape and equal
    em-predict on the averaged input followed by linear interpolation (emtools.resample), whether
    the volume goes in one block, in several, or as chunks from em-tile split."""
    from emtools import resample
    from emtools.tiling.geometry import Box

    ckpt = _checkpoint(tmp_path / "coarse.pt", {"voxel_size_nm": [40, 8, 8]})
    fine = predict(ckpt, data["raw"], "-o", tmp_path / "fine_{head}.h5", *WINDOW)
    assert fine.returncode == 0, fine.output
    small = predict(ckpt, data["raw"], "-o", tmp_path / "blocks_{head}.h5", "--block", "4,20,28", *WINDOW)
    assert small.returncode == 0, small.output
    averaged = resample.downsample_mean(data["image"], (1, 2, 2))  # 8x36x36, float32 0..255
    coarse_raw = f"{tmp_path / 'coarse_raw.h5'}:/image"
    io.write_volume(coarse_raw, averaged, Metadata(voxel_size_nm=(40, 8, 8), offset_nm=(80.0, 40.0, 0.0)))
    coarse = predict(ckpt, coarse_raw, "-o", tmp_path / "coarse_{head}.h5", *WINDOW)
    assert coarse.returncode == 0, coarse.output
    # the halo must hold the model's context in model voxels (and one for the interpolation), in input voxels
    short = tile("split", data["raw"], "--chunk", "8,36,36", "--halo", "0,20,20", "-o", tmp_path / "short", "-q")
    warned = predict(ckpt, short.stdout.split()[0], "-o", f"{tmp_path}/short_pred/", *WINDOW[:-1])
    assert warned.returncode == 0 and "is below the context of the model" in warned.stderr, warned.stderr
    split = tile("split", data["raw"], "--chunk", "8,24,72", "--halo", "0,36,0", "-o", tmp_path / "chunks", "-q")
    assert split.returncode == 0, split.output
    pieces = predict(ckpt, *split.stdout.split(), "-o", f"{tmp_path}/pred/", *WINDOW[:-1])
    assert pieces.returncode == 0 and "below the context" not in pieces.stderr, pieces.output
    for name in ("affinity", "foreground"):
        values, meta = io.read_volume(str(tmp_path / f"fine_{name}.h5"))
        assert values.shape[-3:] == data["image"].shape and meta.voxel_size_nm == VOXEL
        assert meta.provenance[-1]["params"]["averaged_zyx"] == [1, 2, 2]
        low, _ = io.read_volume(str(tmp_path / f"coarse_{name}.h5"))
        box = Box.from_shape(low.shape[-3:])
        expected = resample.upsample_linear(low if low.ndim == 4 else low[None], box, (1, 2, 2),
                                            Box.from_shape(data["image"].shape))
        np.testing.assert_allclose(values if values.ndim == 4 else values[None], expected, atol=2e-5)
        blocks, _ = io.read_volume(str(tmp_path / f"blocks_{name}.h5"))
        assert np.abs(blocks - values).max() < 1e-5
        mine = [p for p in pieces.stdout.split() if p.endswith(f"_{name}.h5")]
        merged = tile("merge", *mine, "--blend", "none", "-o", tmp_path / f"merged_{name}.h5", "-q")
        assert merged.returncode == 0, merged.output
        assert np.abs(io.read_volume(str(tmp_path / f"merged_{name}.h5"))[0] - values).max() < 1e-5
    # two torchrun ranks share the blocks of the volume; rank 0 writes the same maps
    ranked = _torchrun(ckpt, data["raw"], "-o", tmp_path / "ranks_{head}.h5", "--block", "8,36,36", *WINDOW)
    assert ranked.returncode == 0, ranked.stderr
    for name in ("affinity", "foreground"):
        assert np.abs(io.read_volume(str(tmp_path / f"ranks_{name}.h5"))[0]
                      - io.read_volume(str(tmp_path / f"fine_{name}.h5"))[0]).max() < 1e-5
    # a ratio that is not a whole number stays an error; --force predicts at the input's voxel size
    odd = str(tmp_path / "odd.h5")
    io.write_volume(odd, data["image"][:4, :24, :24], Metadata(voxel_size_nm=(40, 3, 3)))
    result = predict(ckpt, odd, "--heads", "foreground", "-o", tmp_path / "odd_p.h5")
    assert_one_line_error(result, "predict", "voxel size 40,3,3 nm of", "is not finer by whole numbers")
    assert not (tmp_path / "odd_p.h5").exists()
    forced = predict(ckpt, data["raw"], "--heads", "foreground", "-o", tmp_path / "forced.h5", "--force", *WINDOW)
    assert forced.returncode == 0 and "(--force: predicting at the input's voxel size)" in forced.stderr
    assert "averaged_zyx" not in io.read_volume(str(tmp_path / "forced.h5"))[1].provenance[-1]["params"]


def _bad_checkpoints(folder, good):
    stranger = folder / "stranger.pt"
    torch.save({"weights": torch.zeros(2)}, stranger)
    # random bytes fail in different places of torch.load; fixed seeds keep the test deterministic
    # and cover the branches: 0 unpickling error, 17 index error, 54 a reader error, 587 an odd
    # pickle protocol torch warns about (the warning must not add a stderr line)
    noises = {f"noise{seed}": (folder / f"noise{seed}.pt", "emtools checkpoint") for seed in (0, 17, 54, 587)}
    for seed in (0, 17, 54, 587):
        noises[f"noise{seed}"][0].write_bytes(np.random.default_rng(seed).bytes(2048))
    truncated = folder / "truncated.pt"
    truncated.write_bytes(open(good, "rb").read()[:3000])
    return {"stranger": (stranger, "not an emtools model checkpoint"),
            **noises,
            "truncated": (truncated, "not a readable emtools checkpoint"),
            "missing": (folder / "none.pt", "checkpoint not found")}


def test_bad_checkpoints_are_one_line_errors(tmp_path, data):
    for name, (path, fragment) in _bad_checkpoints(tmp_path, data["ckpt"]).items():
        result = predict(path, data["raw"], "-o", tmp_path / "out_{head}.h5")
        assert_one_line_error(result, "predict", fragment)
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())
    plain = _checkpoint(tmp_path / "plain.pt", {"normalization": None})
    assert_one_line_error(predict(plain, data["raw"], "-o", tmp_path / "o_{head}.h5"), "predict",
                          "records no input normalisation; pass --normalization SCALE,MEAN,STD")
    blind = _checkpoint(tmp_path / "blind.pt", {"voxel_size_nm": None})
    assert_one_line_error(predict(blind, data["raw"], "-o", tmp_path / "o_{head}.h5"), "predict",
                          "does not record its training voxel size; pass --force")
    sizeless = _checkpoint(tmp_path / "sizeless.pt", {"input_size_zyx": None})
    assert_one_line_error(predict(sizeless, data["raw"], "-o", tmp_path / "o_{head}.h5"), "predict",
                          "records no training input size; pass --patch Z,Y,X")
    assert not any(p.name.startswith("o_") for p in tmp_path.iterdir())


@pytest.mark.parametrize("args,fragments", [
    (["--heads", "boundary"], ["no head 'boundary' in the model; its heads are affinity, foreground"]),
    (["--overlap", "1"], ["--overlap 1: a fraction must be in [0, 1)"]),
    (["--overlap", "-0.25"], ["a fraction must be in [0, 1)"]),
    ([*TRAIN_PATCH, "--overlap", "0,30,30"], ["--overlap of 30 voxels along y is not below the kept patch output (18 voxels)"]),
    (["--patch", "4,25,24"], ["input 4,25,24 does not fit the pooling", "nearest valid sizes 4,24,24 or 4,26,24"]),
    (["--tta", "17"], ["--tta 17: choose 1 (none) to 16 variants"]),
    (["--tta-reduce", "median"], ["'median' is not one of mean, min, max"]),
    (["--precision", "fp16", "--device", "cpu"], ["--precision fp16 needs a GPU"]),
    ([*TRAIN_PATCH, "--crop", "valid"], ["--crop valid removes 6+6 voxels of the 4-voxel patch along z"]),
    (["--normalization", "1,2"], ["give SCALE,MEAN,STD"]),
    (["--channels", "affinity=0:4"], ["head affinity has channels 0:3"]),
    (["--plain", "--onednn"], ["--plain runs without execution options; drop it or --onednn"]),
    (["--heads", "foreground+affinity"], ["only affinity heads can be joined (foreground is foreground)"]),
])
def test_bad_options_are_one_line_errors(tmp_path, data, args, fragments):
    result = predict(data["ckpt"], data["raw"], "-o", tmp_path / "o_{head}.h5", *args)
    assert_one_line_error(result, "predict", *fragments)
    assert list(tmp_path.iterdir()) == []


def test_bad_inputs_and_outputs_are_one_line_errors(tmp_path, data):
    two = str(tmp_path / "two.h5")
    io.write_volume(two, np.zeros((2, 4, 24, 24), np.uint8), Metadata(axes="czyx", voxel_size_nm=VOXEL))
    assert_one_line_error(predict(data["ckpt"], two, "-o", tmp_path / "o_{head}.h5"), "predict",
                          "has 2 channels but the model takes 1 (in_channels)")
    raw_file = data["raw"].split(":")[0]
    before = _digest(raw_file)
    assert_one_line_error(predict(data["ckpt"], data["raw"], "--heads", "foreground", "-o", f"{raw_file}:/pred"),
                          "predict", "is the same file as the input", "inputs are never modified")
    assert _digest(raw_file) == before
    assert_one_line_error(predict(data["ckpt"], data["raw"], "-o", tmp_path / "o.h5"), "predict",
                          "2 heads (affinity, foreground) need {head} in the output")
    assert_one_line_error(predict(data["ckpt"], data["raw"], two, "-o", tmp_path / "o_{head}.h5"), "predict",
                          "2 inputs need {name} in the output")
    assert_one_line_error(predict(data["ckpt"], data["raw"], "-o", tmp_path / "missing" / "o_{head}.h5"), "predict",
                          "output folder does not exist")
    (tmp_path / "a").mkdir()
    twin = str(tmp_path / "a" / "raw.h5:/image")
    assert_one_line_error(predict(data["ckpt"], data["raw"], twin, "-o", tmp_path / "{name}_{head}.h5"), "predict",
                          f"{data['raw']} (head affinity) and {twin} (head affinity) would both write")
    result = run_inprocess_env({"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"},
                               data["ckpt"], "-", "-o", tmp_path / "{name}_{head}.h5")
    assert_one_line_error(result, "predict", "under torchrun the ranks cannot share stdin")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "two.h5"]


def test_full_disk_leaves_no_partial_chunk_and_skip_existing_resumes(tmp_path, data):
    """A file-size limit fails the third chunk's write like a full disk; a rerun resumes."""
    split = tile("split", data["raw"], "--chunk", "8,48,48", "--halo", "0,17,17", "-o", tmp_path / "c", "-q")
    by_size = sorted(split.stdout.split(), key=lambda p: io.read_volume(p)[0].size)
    inputs = [by_size[0], by_size[1], by_size[3]]  # 41x41, 41x65 and 65x65 voxels in y,x: 54, 85 and 135 KB
    out = tmp_path / "p"
    out.mkdir()
    args = [data["ckpt"], *inputs, "--heads", "foreground", "--compression", "none", "-o", f"{out}/", *WINDOW]

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (110_000, 110_000))

    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run(tool_command("predict") + [str(a) for a in args], capture_output=True, text=True,
                            preexec_fn=limit, env=env)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("em-predict: error: cannot write") and "file too large" in lines[0]
    names = [os.path.basename(p)[:-3] + "_foreground.h5" for p in inputs]
    assert result.stdout.split() == [str(out / n) for n in names[:2]]
    assert sorted(os.listdir(out)) == sorted(names[:2])  # no partial third map, no temporary
    stamps = [os.stat(out / n).st_mtime_ns for n in names[:2]]
    again = predict(*args[:-1], "--skip-existing", "-v")
    assert again.returncode == 0, again.output
    assert again.stdout.split() == [str(out / n) for n in names]
    assert again.stderr.count("exists, skipped") == 2
    assert [os.stat(out / n).st_mtime_ns for n in names[:2]] == stamps and sorted(os.listdir(out)) == sorted(names)


def test_real_isbi_slices_through_predict_and_watershed(tmp_path):
    """PNG slices of ISBI 2012 (a glob, voxel size given) to uint8 affinities to fragments."""
    from emtools.cli.watershed import main as watershed

    folder = shared_data("isbi2012", "image")
    ckpt = _checkpoint(tmp_path / "isbi.pt", {"voxel_size_nm": [50, 4, 4], "input_size_zyx": [2, 64, 64]})
    result = predict(ckpt, f"{folder}/[0-1].png", "--voxel-size", "50,4,4", "--heads", "affinity", "--dtype", "uint8",
                     "--overlap", "0", "--batch", "8", "-o", f"{tmp_path}/", "-q")
    assert result.returncode == 0, result.output
    assert result.stdout == f"{tmp_path}/image_affinity.h5\n"
    affs, meta = io.read_volume(f"{tmp_path}/image_affinity.h5")
    assert affs.shape == (3, 2, 512, 512) and affs.dtype == np.uint8 and meta.voxel_size_nm == (50.0, 4.0, 4.0)
    frags = run_inprocess(watershed, f"{tmp_path}/image_affinity.h5", "-o", tmp_path / "frags.h5", "-q")
    assert frags.returncode == 0, frags.output


def _patch_of(path):
    return io.read_volume(str(path))[1].provenance[-1]["params"]


def test_default_patch_is_chosen_for_speed_and_matches_an_explicit_run(tmp_path, data, monkeypatch):
    """Without --patch: a valid patch larger than the training input (4,24,24), logged; no overlap
    along axes one patch covers, AUTO_OVERLAP elsewhere; the maps equal an explicit run with that window."""
    from emtools.predict import autopatch

    monkeypatch.setattr(autopatch, "available_memory_bytes", lambda: 64 << 30)
    out = tmp_path / "auto_{head}.h5"
    result = predict(data["ckpt"], data["raw"], "-o", out, "--block", "8,36,36")
    assert result.returncode == 0, result.output
    params = _patch_of(tmp_path / "auto_affinity.h5")
    patch = params["patch_zyx"]
    assert all(p >= t and p % f == 0 for p, t, f in zip(patch, (4, 24, 24), (1, 2, 2))) and patch != [4, 24, 24]
    lines = result.stderr.splitlines()
    # the auto crop is 1/8 of the training input 4,24,24 (0,3,3), however large the patch
    assert patch == [8, 26, 26] and lines[0] == (
        "em-predict: patch 8,26,26, crop 0,3,3/0,3,3, kept 8,20,20, stride 8,18,18, overlap 0,0.125,0.125, batch 1: "
        "chosen within the default memory budget 4G (about 3.6M); 9 patches per block, each voxel computed 4.7 times")
    assert lines[-1].startswith("em-predict: done: 41472 voxels in ") and "Mvoxel/s; " in lines[-1]
    assert params["patch_chosen_for_memory_bytes"] > 0
    explicit = predict(data["ckpt"], data["raw"], "-o", tmp_path / "explicit_{head}.h5", "--block", "8,36,36",
                       "--patch", ",".join(map(str, patch)), "--overlap", "0,0.125,0.125", "-q")
    assert explicit.returncode == 0, explicit.output
    for head in ("affinity", "foreground"):
        assert np.array_equal(io.read_volume(str(tmp_path / f"auto_{head}.h5"))[0],
                              io.read_volume(str(tmp_path / f"explicit_{head}.h5"))[0])
    whole = predict(data["ckpt"], data["raw"], "-o", tmp_path / "one_{head}.h5", "-q")  # one block: one patch
    assert whole.returncode == 0, whole.output
    one = _patch_of(tmp_path / "one_affinity.h5")
    assert one["patch_zyx"] == [8, 78, 78] and one["stride_zyx"] == [8, 72, 72]  # kept 8,72,72 covers it


def test_a_memory_budget_bounds_the_default_patch(tmp_path, data):
    result = predict(data["ckpt"], data["raw"], "-o", tmp_path / "p_{head}.h5", "--memory", "6M")
    assert result.returncode == 0, result.output
    patch = _patch_of(tmp_path / "p_affinity.h5")["patch_zyx"]
    assert patch != [10, 94, 94] and all(p >= t for p, t in zip(patch, (4, 24, 24)))
    assert "chosen within --memory 6M (about " in result.stderr


def test_progress_lines_without_a_terminal(tmp_path, data, monkeypatch):
    from emtools.predict import pace

    ticks = iter(range(0, 10_000, 31))
    monkeypatch.setattr(pace, "clock", lambda: float(next(ticks)))
    result = predict(data["ckpt"], data["raw"], "-o", tmp_path / "p_{head}.h5", *TRAIN_PATCH, "--block", "8,36,36")
    assert result.returncode == 0, result.output
    beats = [line for line in result.stderr.splitlines() if " Mvoxel (" in line]
    assert beats == [
        "em-predict: raw.h5: 1/4 blocks, 0.01/0.04 Mvoxel (25%), 0.000 Mvoxel/s, about 1 min 33 s left",
        "em-predict: raw.h5: 2/4 blocks, 0.02/0.04 Mvoxel (50%), 0.000 Mvoxel/s, about 1 min 02 s left",
        "em-predict: raw.h5: 3/4 blocks, 0.03/0.04 Mvoxel (75%), 0.000 Mvoxel/s, about 31 s left",
    ]
    quiet = predict(data["ckpt"], data["raw"], "-o", tmp_path / "q_{head}.h5", *TRAIN_PATCH, "--block", "8,36,36",
                    "-q")
    assert quiet.returncode == 0 and quiet.stderr == ""


@pytest.mark.parametrize("args,message", [
    (["--memory", "4X"], "em-predict: error: --memory '4X': give a size such as 4G, 512M or 1.5GiB (binary units)"),
    (["--memory", "1M"], "em-predict: error: --memory 1M is too small for any patch: the smallest, 4,24,24, needs "
                         "about 2.9M (with the block buffers of 8,72,72 voxels); give --memory 2.9M or more, a smaller "
                         "--block, or --patch"),
    (["--patch", "5,25,23"], "em-predict: error: input 5,25,23 does not fit the pooling of rsunet: z,y,x must be "
                             "multiples of 1,2,2; nearest valid sizes 5,24,22 or 5,26,24"),
])
def test_bad_memory_and_patch_are_one_line_errors(tmp_path, data, args, message):
    result = predict(data["ckpt"], data["raw"], "-o", tmp_path / "o_{head}.h5", *args)
    assert_one_line_error(result, "predict")
    assert result.stderr.strip() == message
    assert list(tmp_path.iterdir()) == []


def test_default_patch_chunks_merge_into_the_default_whole_volume_prediction(tmp_path, data, chunks):
    """A chunk counts as its whole volume when the patch is chosen: every chunk gets the patch of
    a whole-volume run, so the merged chunk maps equal it (the halo covers the model's context)."""
    whole = predict(data["ckpt"], data["raw"], "--heads", "foreground", "-o", tmp_path / "whole.h5", "-q")
    assert whole.returncode == 0, whole.output
    inputs = chunks[0]
    result = predict(data["ckpt"], *inputs, "--heads", "foreground", "-o", f"{tmp_path}/c/", "-q")
    assert result.returncode == 0, result.output
    outputs = result.stdout.split()
    assert {tuple(_patch_of(p)["patch_zyx"]) for p in outputs} == {tuple(_patch_of(tmp_path / "whole.h5")["patch_zyx"])}
    merged = tile("merge", *outputs, "--blend", "none", "-o", tmp_path / "merged.h5", "-q")
    assert merged.returncode == 0, merged.output
    values = io.read_volume(str(tmp_path / "merged.h5"))[0]
    assert np.abs(values - io.read_volume(str(tmp_path / "whole.h5"))[0]).max() < 1e-5


def test_preview_shows_the_input_above_its_maps_and_a_bad_path_predicts_nothing(tmp_path, data):
    from PIL import Image

    png = tmp_path / "p.png"
    result = predict(data["ckpt"], data["raw"], "-o", tmp_path / "o_{head}.h5", "--preview", png, *WINDOW)
    assert result.returncode == 0, result.output
    assert result.stdout.split() == [str(tmp_path / "o_affinity.h5"), str(tmp_path / "o_foreground.h5"), str(png)]
    with Image.open(png) as image:
        picture = np.asarray(image)
    # rows: the image, the affinities (RGB), the foreground (grey); four of the eight sections, 72x72
    assert picture.shape == (3 * 72 + 2 * 4, 4 * 72 + 3 * 4, 3)
    affs = io.read_volume(str(tmp_path / "o_affinity.h5"))[0]
    fg = io.read_volume(str(tmp_path / "o_foreground.h5"))[0]
    for column, z in enumerate((0, 2, 5, 7)):
        x = column * 76
        np.testing.assert_array_equal(picture[:72, x:x + 72, 0], data["image"][z])
        np.testing.assert_array_equal(picture[76:148, x:x + 72], (np.moveaxis(affs[:, z], 0, -1) * 255 + 0.5).astype(np.uint8))
        np.testing.assert_array_equal(picture[152:, x:x + 72, 1], (fg[z] * 255 + 0.5).astype(np.uint8))
    for bad, fragment in ((tmp_path / "no" / "p.png", "output folder does not exist"), (tmp_path / "p.gif", ".png")):
        failed = predict(data["ckpt"], data["raw"], "-o", tmp_path / "n_{head}.h5", "--preview", bad, *WINDOW)
        assert_one_line_error(failed, "predict", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o_affinity.h5", "o_foreground.h5", "p.png"]
