"""em-train as users run it: outputs, checkpoint contract, one-line errors, NaN stop, kill and resume."""

import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
import yaml

from conftest import ROOT, assert_one_line_error, run_tool, shared_data, tool_command
from emtools import io
from emtools.meta import Metadata
from emtools.models.checkpoint import load_model, read_checkpoint
from emtools.models.heads import heads_from_dict
from emtools.synth import make_synthetic_volume

META = Metadata(voxel_size_nm=(40, 4, 4))
# A tiny model and crop: every test here trains in about a second.
TINY = ["model.widths=4,8", "model.norm=group", "data.patch_zyx=4,32,32", "train.threads=1",
        "optim.warmup_steps=2", "train.log_every=1"]


def write_data(folder, shape=(10, 48, 48), seed=1):
    """Synthetic EM image, neuron ids and mitochondria as HDF5 files; returns their specs."""
    v = make_synthetic_volume(shape, seed=seed, voxel_size_nm=(40, 4, 4), mean_cell_diameter_nm=100,
                              membrane_thickness_nm=8, mitochondria=True)
    specs = {"image": f"{folder}/image.h5:/image", "labels": f"{folder}/gt.h5:/neurons",
             "mito": f"{folder}/mito.h5:/mito"}
    io.write_volume(specs["image"], v.image, META)
    io.write_volume(specs["labels"], v.neurons, META)
    io.write_volume(specs["mito"], v.mitochondria, META)
    return specs


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("train-data"))


def data_args(specs, val="last 3 z"):
    return [f"data.volumes.0.image={specs['image']}", f"data.volumes.0.labels={specs['labels']}",
            f"data.volumes.0.val_region={val}"]


def train(*args):
    from click.testing import CliRunner

    from emtools.cli.train import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


def test_trains_and_writes_the_checkpoint_contract(tmp_path, specs):
    run = tmp_path / "run"
    result = run_tool("train", *data_args(specs), *TINY, "model.heads=affinity:3,foreground:1", "train.steps=4",
                      "train.checkpoint_every=2", "validation.every=2", "data.augment=flip", "-o", run,
                      "--plot", tmp_path / "curves.png")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{run}/last.pt\n{run}/best.pt\n"
    assert sorted(os.listdir(run)) == ["best.pt", "last.pt", "metrics.jsonl", "step_2.pt", "step_4.pt"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    model, spec, extra = load_model(str(run / "last.pt"))
    assert spec.heads == (("affinity", 3), ("foreground", 1)) and spec.widths == (4, 8)
    heads = heads_from_dict(extra["heads"], spec.heads)  # what em-predict reads
    assert [h.kind for h in heads] == ["affinity", "foreground"]
    assert heads[0].offsets == ((-1, 0, 0), (0, -1, 0), (0, 0, -1))
    assert set(extra["normalization"]) == {"scale", "mean", "std"}
    assert extra["normalization"]["scale"] == pytest.approx(1 / 255)
    assert extra["voxel_size_nm"] == [40, 4, 4] and extra["input_size_zyx"] == [4, 32, 32] and extra["step"] == 4
    assert extra["validation"]["affinity.adapted_rand_error"] is not None
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["split"] == "train"]
    assert train_steps == [1, 2, 3, 4]
    val = [r for r in records if r["split"] == "val"]
    assert [r["step"] for r in val] == [2, 4]
    assert {"loss", "affinity.adapted_rand_error", "affinity.voi_split", "foreground.f1"} <= set(val[0])
    training = read_checkpoint(str(run / "last.pt"))["training"]
    assert training["step"] == 4 and training["sampler"]["next_index"] == 4 and len(training["rng"]) == 1
    assert training["config"]["model"]["widths"] == [4, 8]


def test_print_config_prints_the_resolved_yaml_only(tmp_path, specs):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": {"name": "rsunet-efficient"}, "train": {"steps": 7}}))
    result = train("--config", config, *data_args(specs), "train.steps=9", "--print-config")
    assert result.returncode == 0, result.stderr
    printed = yaml.safe_load(result.stdout)
    assert printed["train"]["steps"] == 9 and printed["model"]["stride_in"] == [1, 2, 2]
    from emtools.train.config import resolve

    assert resolve(printed) == printed
    assert not (tmp_path / "run").exists()


def _mismatched(tmp_path, specs):
    image, _ = io.read_volume(specs["image"])
    io.write_volume(f"{tmp_path}/short.h5:/x", np.ones((10, 48, 40), np.uint64), META)
    io.write_volume(f"{tmp_path}/fine.h5:/x", np.ones(image.shape, np.uint64), Metadata(voxel_size_nm=(40, 2, 2)))
    io.write_volume(f"{tmp_path}/empty.h5:/x", np.zeros(image.shape, np.uint64), META)


@pytest.mark.parametrize("case,args,fragments", [
    ("shape", ["data.volumes.0.labels={tmp}/short.h5:/x"], ["shape 10x48x40", "does not match 10x48x48"]),
    ("voxel", ["data.volumes.0.labels={tmp}/fine.h5:/x"], ["voxel sizes differ"]),
    ("empty", ["data.volumes.0.labels={tmp}/empty.h5:/x", "model.heads=foreground:1"], ["no foreground"]),
    ("crop", ["data.patch_zyx=12,32,32"], ["crop 12,32,32 is larger than"]),
    ("pooling", ["data.patch_zyx=4,31,32"], ["does not fit the pooling", "nearest valid sizes 4,30,32 or 4,32,32"]),
    ("key", ["train.stepz=3"], ["unknown config key 'train.stepz'; did you mean 'train.steps'?"]),
    ("fp16", ["train.precision=fp16"], ["fp16 needs a GPU"]),
    ("cuda", ["train.device=cuda"], ["no CUDA device"]),
    ("val", ["data.volumes.0.val_region=all"], ["nothing to train on"]),
    ("model voxel", ["data.model_voxel_size_nm=40,6,6"], ["has voxel size 40,4,4 nm: the model's 40,6,6 nm"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, specs, case, args, fragments):
    _mismatched(tmp_path, specs)
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("a CUDA device is available here")
    run = tmp_path / "run"
    extra = [a.replace("{tmp}", str(tmp_path)) for a in args]
    result = train(*data_args(specs), *TINY, "train.steps=1", *extra, "-o", run)
    assert_one_line_error(result, "train", *fragments)
    assert not run.exists()


def test_bf16_on_a_cpu_without_bf16_units_is_refused(tmp_path, specs):
    from emtools.profile.options import cpu_has_bf16_units

    result = train(*data_args(specs), *TINY, "train.steps=1", "train.precision=bf16", "train.device=cpu",
                   "-o", tmp_path / "run")
    if cpu_has_bf16_units():
        assert result.returncode == 0, result.stderr
    else:
        assert_one_line_error(result, "train", "emulated and ~80x slower")


def test_an_existing_run_is_not_overwritten_and_resume_checks_the_model(tmp_path, specs):
    run = tmp_path / "run"
    assert train(*data_args(specs), *TINY, "train.steps=2", "validation.every=0", "-o", run, "-q").returncode == 0
    before = (run / "last.pt").read_bytes()
    assert_one_line_error(train(*data_args(specs), *TINY, "train.steps=2", "-o", run), "train",
                          "already holds a run", "--resume")
    result = train("-o", run, "--resume", "model.widths=4,16")
    assert_one_line_error(result, "train", "different model (widths: [4,8] vs [4,16])")
    assert_one_line_error(train("-o", tmp_path / "none", "--resume"), "train", "no checkpoint to resume from")
    assert (run / "last.pt").read_bytes() == before
    # Resuming a finished run with more steps continues it.
    result = train("-o", run, "--resume", "train.steps=3", "-q")
    assert result.returncode == 0, result.stderr
    assert read_checkpoint(str(run / "last.pt"))["training"]["step"] == 3


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, specs):
    run = tmp_path / "run"
    result = train(*data_args(specs), *TINY, "train.steps=10", "optim.name=sgd", "optim.lr=1e30",
                   "optim.schedule=constant", "optim.warmup_steps=0", "train.checkpoint_every=1",
                   "validation.every=0", "-o", run, "-q")
    assert_one_line_error(result, "train", "loss is NaN at step 2", f"last good checkpoint is {run}/last.pt (step 1)")
    assert read_checkpoint(str(run / "last.pt"))["extra"]["step"] == 1
    load_model(str(run / "last.pt"))


def _poll_and_signal(process, path, sig, timeout=120):
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    process.send_signal(sig)
    return process.wait(timeout=60)


def _state(path):
    payload = read_checkpoint(str(path))
    return payload["state_dict"], (payload.get("training") or {}).get("optimizer", {}).get("state")


def test_a_killed_run_resumes_to_the_same_weights(tmp_path, specs):
    args = [*data_args(specs), *TINY, "model.heads=affinity:3,foreground:1", "data.augment=flip,grayscale",
            "optim.grad_clip=0.5",
            "data.num_workers=1", "train.steps=24", "train.checkpoint_every=4", "train.keep=2", "validation.every=8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = run_tool("train", *args, "-o", tmp_path / "whole", "-q")
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "killed"
    command = tool_command("train") + [str(a) for a in args] + ["-o", str(run), "-q"]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _poll_and_signal(first, run / "step_8.pt", signal.SIGTERM) == 143
    assert "em-train: error: terminated" in first.stderr.read()
    assert read_checkpoint(str(run / "last.pt"))["training"]["step"] < 24
    second = subprocess.Popen(tool_command("train") + ["-o", str(run), "--resume", "-q"], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert _poll_and_signal(second, run / "step_16.pt", signal.SIGKILL) == -signal.SIGKILL
    assert read_checkpoint(str(run / "last.pt"))["training"]["step"] < 24
    resumed = run_tool("train", "-o", run, "--resume", "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout == f"{run}/last.pt\n{run}/best.pt\n"

    weights, moments = _state(tmp_path / "whole" / "last.pt")
    weights_resumed, moments_resumed = _state(run / "last.pt")
    assert weights.keys() == weights_resumed.keys()
    assert all(torch.equal(weights[k], weights_resumed[k]) for k in weights)
    assert all(torch.equal(moments[i]["exp_avg"], moments_resumed[i]["exp_avg"]) for i in moments)
    best, best_resumed = _state(tmp_path / "whole" / "best.pt")[0], read_checkpoint(str(run / "best.pt"))["state_dict"]
    assert all(torch.equal(best[k], best_resumed[k]) for k in best)

    def log(folder, split, key):
        return [r[key] for r in map(json.loads, open(folder / "metrics.jsonl")) if r["split"] == split]

    assert log(run, "train", "loss") == log(tmp_path / "whole", "train", "loss") and len(log(run, "train", "loss")) == 24
    assert log(run, "val", "loss") == log(tmp_path / "whole", "val", "loss") and log(run, "val", "step") == [8, 16, 24]
    assert not [n for n in os.listdir(run) if n.startswith(".")]  # no temporaries left by the kills


def test_self_training_fine_tunes_on_confident_pseudo_labels(tmp_path, specs):
    """Stage 1 trains a boundary head; its prediction on 'unlabelled' data becomes pseudo-labels."""
    from emtools.normalize import normalize_image
    from emtools.train.validate import predict

    stage1 = tmp_path / "stage1"
    assert train(*data_args(specs), *TINY, "model.heads=boundary:1", "train.steps=3", "validation.every=0",
                 "-o", stage1, "-q").returncode == 0
    model, spec, extra = load_model(str(stage1 / "last.pt"))
    unlabelled = write_data(tmp_path, shape=(6, 48, 48), seed=5)["image"]
    image, _ = io.read_volume(unlabelled)
    logits = predict(model, normalize_image(image, extra["normalization"]), 1, [4, 32, 32], [1, 8, 8], torch.device("cpu"))
    probabilities = (1 / (1 + np.exp(-logits))).astype(np.float32)
    io.write_volume(f"{tmp_path}/pseudo.h5:/p", probabilities, Metadata(axes="czyx", voxel_size_nm=(40, 4, 4)))
    stage2 = tmp_path / "stage2"
    result = train(*data_args(specs), *TINY, "model.heads=boundary:1", "train.steps=2", "validation.every=0",
                   f"train.init_from={stage1}/last.pt", f"data.volumes.1.image={unlabelled}",
                   f"data.volumes.1.probabilities={tmp_path}/pseudo.h5:/p", "data.volumes.1.confidence=0.6",
                   "-o", stage2, "-q")
    assert result.returncode == 0, result.stderr
    tuned = read_checkpoint(str(stage2 / "last.pt"))
    assert tuned["extra"]["normalization"] == extra["normalization"]  # the stage-1 inputs, unchanged
    assert any(not torch.equal(tuned["state_dict"][k], v) for k, v in model.state_dict().items())
    result = train(*data_args(specs), *TINY, "model.heads=boundary:1", "model.widths=4,16", "train.steps=1",
                   f"train.init_from={stage1}/last.pt", "-o", tmp_path / "stage3")
    assert_one_line_error(result, "train", "another architecture (widths: [4,8] vs [4,16])")


def test_init_fine_tunes_with_the_checkpoints_model_and_new_heads(tmp_path, specs):
    """--init takes the checkpoint's model, targets and crop; a head it lacks starts fresh."""
    base = tmp_path / "base"
    targets = ["targets.long.kind=affinity", "targets.long.offsets=[[-2,0,0],[0,-3,0],[0,0,-3]]"]
    assert train(*data_args(specs), *TINY, "model.heads=affinity:3,long:3", *targets, "train.steps=2",
                 "validation.every=0", "-o", base, "-q").returncode == 0
    tuned = tmp_path / "tuned"
    result = train(*data_args(specs), "--init", base / "last.pt", "train.steps=1", "train.threads=1",
                   "validation.every=0", "--print-config")
    printed = yaml.safe_load(result.stdout)
    assert printed["model"]["widths"] == [4, 8] and printed["data"]["patch_zyx"] == [4, 32, 32]
    assert printed["targets"]["long"]["offsets"] == [[-2, 0, 0], [0, -3, 0], [0, 0, -3]]
    result = train(*data_args(specs), "--init", base / "last.pt", "model.heads=affinity:3,foreground:1",
                   "train.steps=1", "train.threads=1", "optim.lr=0", "optim.warmup_steps=0",
                   "validation.every=0", "-o", tuned)
    assert result.returncode == 0, result.output
    assert "heads foreground start from fresh weights" in result.stderr
    before, after = read_checkpoint(str(base / "last.pt")), read_checkpoint(str(tuned / "last.pt"))
    assert list(after["extra"]["targets"]) == ["affinity", "foreground"]
    assert torch.equal(after["state_dict"]["out.weight"][:3], before["state_dict"]["out.weight"][:3])
    assert torch.equal(after["state_dict"]["enc.0.conv1.weight"], before["state_dict"]["enc.0.conv1.weight"])


def test_trains_local_shape_descriptors_beside_affinities(tmp_path, specs):
    """An lsd head learns (its loss falls) and em-predict writes its map in [0, 1]."""
    run = tmp_path / "run"
    lsd = ["model.heads=affinity:3,lsd:6", "targets.lsd.params={mode: 2d, sigma_nm: 24}", "targets.lsd.weight=2"]
    result = train(*data_args(specs), *TINY, *lsd, "train.steps=30", "optim.lr=0.01", "validation.every=0",
                   "-o", run)
    assert result.returncode == 0, result.output
    losses = [r["lsd.loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "lsd.loss" in r]
    assert len(losses) == 30 and np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    payload = read_checkpoint(str(run / "last.pt"))
    assert payload["extra"]["heads"]["lsd"] == {"kind": "lsd", "channels": 6}
    out = tmp_path / "maps_{head}.h5"
    predicted = run_tool("predict", run / "last.pt", specs["image"], "-o", out, "--heads", "lsd")
    assert predicted.returncode == 0, predicted.stderr
    maps, meta = io.read_volume(str(out).replace("{head}", "lsd"))
    assert maps.shape[0] == 6 and 0 <= maps.min() and maps.max() <= 1 and meta.attrs["head_kind"] == "lsd"
    assert meta.attrs["channel_names"] == ["offset_y", "offset_x", "var_yy", "var_xx", "cov_yx", "size"]
    wrong = train(*data_args(specs), *TINY, "model.heads=affinity:3,lsd:10", "targets.lsd.params={mode: 2d}",
                  "train.steps=1", "-o", tmp_path / "wrong")
    assert_one_line_error(wrong, "train", "targets.lsd: head lsd: the lsd target has 6 channels but the head has 10")
    assert not (tmp_path / "wrong").exists()


@pytest.mark.parametrize("case,args,fragments", [
    ("name", ["--init", "fibsem-afinity"], ["neither a checkpoint file nor a shipped model",
                                            "did you mean 'fibsem-affinity'?"]),
    ("arch", ["--init", "{base}", "model.widths=4,16"], ["another architecture (widths: [4,8] vs [4,16])"]),
    ("voxel", ["--init", "{base}", "data.volumes.0.voxel_size_nm=40,8,8"],
     ["has voxel size 40,8,8 nm: the model's 40,4,4 nm (data.model_voxel_size_nm; with --init the checkpoint's) "
      "is not a whole multiple", "--force"]),
    ("resume", ["--init", "{base}", "--resume"], ["use one"]),
])
def test_init_bad_input_is_one_line_and_writes_nothing(tmp_path, specs, case, args, fragments):
    base = tmp_path / "base" / "last.pt"
    assert train(*data_args(specs), *TINY, "train.steps=1", "validation.every=0", "-o", base.parent,
                 "-q").returncode == 0
    run = tmp_path / "run"
    result = train(*data_args(specs), "train.steps=1", "train.threads=1",
                   *[a.replace("{base}", str(base)) for a in args], "-o", run)
    assert_one_line_error(result, "train", *fragments)
    assert not run.exists()


def test_a_time_budget_stops_the_run_and_ends_its_schedule(tmp_path, specs):
    """train.minutes: the run stops when the budget is spent (last.pt at that step), however many
    steps were asked for, and the cosine follows the time spent."""
    run = tmp_path / "run"
    result = train(*data_args(specs), *TINY, "train.steps=100000", "train.minutes=0.0001", "optim.warmup_steps=0",
                   "validation.every=0", "-o", run)
    assert result.returncode == 0, result.output
    assert "time budget of 0.0001 minutes spent at step 1 of 100000" in result.stderr
    payload = read_checkpoint(str(run / "last.pt"))
    assert payload["extra"]["step"] == 1 and payload["training"]["step"] == 1
    records = [json.loads(line) for line in open(run / "metrics.jsonl")]
    assert [r["step"] for r in records] == [1]


def test_the_schedule_follows_the_time_spent_when_it_is_ahead():
    from emtools.train.optim import Schedule

    schedule = Schedule("warmup_cosine", 1.0, 1000, warmup_steps=10, min_lr_ratio=0.0)
    assert schedule.lr(5) == 0.5 and schedule.lr(505) == pytest.approx(0.5)
    schedule.time_fraction = 0.5
    assert schedule.lr(5) == 0.5  # warm-up is counted in steps
    assert schedule.lr(20) == pytest.approx(0.5)  # half the time spent: half-way down the cosine
    assert schedule.lr(800) < 0.5  # the steps are ahead: they decide
    schedule.time_fraction = 1.0
    assert schedule.lr(20) == pytest.approx(0.0)


def test_init_force_accepts_another_voxel_size(tmp_path, specs):
    base = tmp_path / "base"
    assert train(*data_args(specs), *TINY, "train.steps=1", "validation.every=0", "-o", base, "-q").returncode == 0
    result = train(*data_args(specs), "--init", base / "last.pt", "--force", "data.volumes.0.voxel_size_nm=40,8,8",
                   "train.steps=1", "train.threads=1", "validation.every=0", "-o", tmp_path / "run")
    assert result.returncode == 0, result.output
    assert "trained at 40,4,4 nm, the data is 40,8,8 nm (--force)" in result.stderr


def test_a_model_at_a_coarser_voxel_size_trains_and_predicts_at_the_data_s(tmp_path, specs):
    """data.model_voxel_size_nm=40,8,8 on 40,4,4 nm data: the checkpoint says 40,8,8 nm and em-predict
    on the 4 nm image writes maps of the image's shape (averaged in, interpolated back)."""
    run = tmp_path / "run"
    result = train(*data_args(specs), *TINY, "data.model_voxel_size_nm=40,8,8", "data.patch_zyx=4,16,16",
                   "model.heads=foreground:1", "targets.foreground.kind=foreground", "train.steps=2",
                   "validation.every=2", "-o", run)
    assert result.returncode == 0, result.output
    assert "averaged 1x2x2 down to 40,8,8 nm (10x24x24 voxels)" in result.stderr
    _, _, extra = load_model(str(run / "last.pt"))
    assert extra["voxel_size_nm"] == [40, 8, 8] and extra["input_size_zyx"] == [4, 16, 16]
    out = tmp_path / "fg.h5"
    predicted = run_tool("predict", run / "last.pt", specs["image"], "-o", out)
    assert predicted.returncode == 0, predicted.stderr
    values, meta = io.read_volume(str(out))
    assert values.shape == (10, 48, 48) and meta.voxel_size_nm == (40, 4, 4)
    assert "blocks of 1x2x2 input voxels are averaged" in predicted.stderr
    # --init takes the checkpoint's voxel size as data.model_voxel_size_nm: the 4 nm data is averaged again
    tuned = train(*data_args(specs), "--init", run / "last.pt", "train.steps=1", "train.threads=1",
                  "validation.every=0", "-o", tmp_path / "tuned")
    assert tuned.returncode == 0, tuned.output
    assert "averaged 1x2x2 down to 40,8,8 nm" in tuned.stderr
    assert load_model(str(tmp_path / "tuned" / "last.pt"))[2]["voxel_size_nm"] == [40, 8, 8]


@pytest.mark.parametrize("example", ["train_isbi.yaml", "train_gala.yaml", "fibsem_pretrain.yaml",
                                     "fibsem_finetune.yaml", "mito_lucchi.yaml"])
def test_example_configs_resolve_and_read_their_real_data(example, monkeypatch):
    """The example configs point at ../shared/data (relative to the project root) and pass every
    check; the fine-tuning ones with the shipped model's settings (em-train --init)."""
    from emtools.models import pretrained
    from emtools.train.config import load_config
    from emtools.train.loop import prepare

    shared_data()
    monkeypatch.chdir(ROOT)
    base = None
    init = {"fibsem_finetune.yaml": "fibsem-affinity", "mito_lucchi.yaml": "mito-fibsem"}.get(example)
    if init is not None:
        path = pretrained.resolve(init)
        base = pretrained.config_base(read_checkpoint(path))
        base["train"] = {"init_from": path}
    prepared = prepare(load_config(f"examples/{example}", ["train.device=cpu"], base=base))
    assert prepared.volumes[0].val_box is not None and prepared.volumes[0].labels.max() > 1
    assert prepared.init is not None or base is None


def test_trains_on_isbi_png_slices(tmp_path, monkeypatch):
    """Real ssTEM: PNG folders, a voxel size override, binary labels -> per-section instances."""
    shared_data("isbi2012")
    monkeypatch.chdir(ROOT)
    run = tmp_path / "isbi"
    result = train("--config", "examples/train_isbi.yaml", "model.widths=4,8", "data.patch_zyx=1,64,64",
                   "data.num_workers=0", "train.steps=2", "validation.every=2", "validation.thresholds=0.5",
                   "-o", run, "-q")
    assert result.returncode == 0, result.stderr
    val = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert val["split"] == "val" and 0.0 <= val["boundary.adapted_rand_error"] <= 1.0
    assert read_checkpoint(str(run / "last.pt"))["extra"]["voxel_size_nm"] == [50, 4, 4]


@pytest.mark.parametrize("option", ["onednn", "winograd", "channels_last"])
def test_execution_options_train_to_the_same_weights(tmp_path, specs, monkeypatch, option):
    from emtools.models import to_channels_last, winograd

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)  # this tiny model's layers are all thin and small
    monkeypatch.setattr(winograd, "MIN_VOXELS", 1)
    from emtools.models import execution

    models = []  # em-train applies its options through models.execution, like em-predict and em-profile
    monkeypatch.setattr(execution, "to_channels_last", lambda model: models.append(model) or to_channels_last(model))
    weights = []
    for flag in ("false", "true"):
        run = tmp_path / f"run-{flag}"
        result = train(*data_args(specs), *TINY, "model=rsunet-efficient", "model.widths=4,8,8", "train.steps=3",
                       "validation.every=0", "data.augment=flip", f"train.{option}={flag}",
                       # SGD: Adam would blow the float noise of gradients that are zero in exact
                       # arithmetic (biases just before a norm) up to full-size steps
                       "optim.name=sgd", "optim.lr=0.05", "-q", "-o", run)
        assert result.returncode == 0, result.output
        weights.append(read_checkpoint(str(run / "last.pt"))["state_dict"])
    assert list(weights[0]) == list(weights[1])
    for name, value in weights[0].items():
        if value.is_floating_point():
            assert torch.allclose(value, weights[1][name], atol=1e-4), name
    if option == "channels_last":  # the option took effect: the model trained with NDHWC weights
        conv = models[-1].enc[1].conv2.weight
        assert len(models) == 1 and conv.is_contiguous(memory_format=torch.channels_last_3d) and not conv.is_contiguous()
