"""em-train model=ffn: FOV movement during training, the checkpoint contract, exact resume, 2 ranks, bad input."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import assert_one_line_error

from emtools import io
from emtools.ffn.examples import Example, ExampleSettings, ExampleSource
from emtools.ffn.flights import FovPolicy, Slots, fov_batch, grow_examples, write_back
from emtools.meta import Metadata
from emtools.models.checkpoint import load_model, read_checkpoint
from emtools.synth import make_synthetic_volume
from emtools.train.data import read_volumes

# A tiny FFN: FOV 9^3, deltas 2 -> training patch 13^3; a step takes well under a second.
TINY = ["model=ffn", "model.depth=2", "model.features=4", "model.fov_zyx=9,9,9", "model.deltas_zyx=2,2,2",
        "ffn.min_object_size=100", "train.threads=1", "train.log_every=1", "optim.warmup_steps=2"]
# Below the seed pad (0.05), so that every move is taken: examples span several FOVs from the start.
MOVING = ["ffn.move_threshold=0.04"]


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ffn-data")
    v = make_synthetic_volume((32, 40, 40), seed=1, voxel_size_nm=(10, 10, 10), mean_cell_diameter_nm=150,
                              membrane_thickness_nm=15, mitochondria=False)
    meta = Metadata(voxel_size_nm=(10, 10, 10))
    out = {"image": f"{folder}/image.h5:/image", "labels": f"{folder}/gt.h5:/gt", "probs": f"{folder}/p.h5:/p"}
    io.write_volume(out["image"], v.image, meta)
    io.write_volume(out["labels"], v.neurons, meta)
    io.write_volume(out["probs"], (v.neurons > 0).astype(np.float32), meta)
    return out


def data_args(specs, val="last 13 z"):
    return [f"data.volumes.0.image={specs['image']}", f"data.volumes.0.labels={specs['labels']}",
            f"data.volumes.0.val_region={val}"]


def train(*args):
    from click.testing import CliRunner

    from emtools.cli.train import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    result.returncode = result.exit_code
    return result


# ----------------------------------------------------------------------------- FOV movement

def identity_double(inputs):
    """TEST DOUBLE, not a network: returns the object map it is given (channel 1), unchanged."""
    return inputs[:, 1:2].copy()


def fill_double(inputs):
    """TEST DOUBLE, not a network: marks as object (logit 5) every voxel where the image channel is
    positive, else returns the object map it is given."""
    out = inputs[:, 1:2].copy()
    out[inputs[:, 0:1] > 0] = 5.0
    return out


def half_space_example():
    """A 13^3 patch whose image is positive where x >= 6 (the centre's column and beyond)."""
    image = np.where(np.arange(13)[None, None, :] >= 6, 1.0, -1.0) * np.ones((13, 13, 13))
    target = np.where(image > 0, 0.95, 0.05)
    return Example(image.astype(np.float32), target.astype(np.float32), 0, (6, 6, 6), 13, 1)


def test_fixed_policy_takes_the_shifts_that_the_written_back_object_map_reaches():
    policy = FovPolicy("fixed", (9, 9, 9), (2, 2, 2), (13, 13, 13), 0.9, shuffle=False)
    flights, fovs = grow_examples(fill_double, [half_space_example()], policy, batch=1, seed=0)
    # the centre's prediction fills x >= 6, so every shift but the one to x = 4 starts on the object
    assert flights[0].positions == [(6, 6, 6), (4, 6, 6), (8, 6, 6), (6, 4, 6), (6, 8, 6), (6, 6, 8)] and fovs == 6
    assert flights[0].canvas[6, 6, 10] == 5.0 and flights[0].canvas[6, 6, 1] < 0  # predictions written back
    flights, fovs = grow_examples(identity_double, [half_space_example()], policy, batch=1, seed=0)
    assert flights[0].positions == [(6, 6, 6)] and fovs == 1  # only the seed voxel reaches 0.9
    strict = FovPolicy("fixed", (9, 9, 9), (2, 2, 2), (13, 13, 13), 0.99, shuffle=False)  # above the seed's 0.95
    assert grow_examples(identity_double, [half_space_example()], strict, 1, 0)[0][0].positions == [(6, 6, 6)]
    # shuffled per example, deterministically from the seed
    shuffled = FovPolicy("fixed", (9, 9, 9), (2, 2, 2), (13, 13, 13), 0.9, shuffle=True)
    orders = {tuple(grow_examples(fill_double, [half_space_example()], shuffled, 1, seed)[0][0].positions)
              for seed in range(6)}
    assert len(orders) > 1 and all(o[0] == (6, 6, 6) and len(o) == 6 for o in orders)


def test_max_pred_moves_follow_the_object_inside_the_patch():
    policy = FovPolicy("max_pred_moves", (9, 9, 9), (2, 2, 2), (13, 13, 13), 0.9)
    flights, fovs = grow_examples(fill_double, [half_space_example()], policy, batch=4, seed=0)
    positions = flights[0].positions
    assert positions[0] == (6, 6, 6) and fovs == len(positions) > 3
    assert all(p[2] >= 6 for p in positions)  # never towards the background (x < 6)
    assert all(all(4 <= c <= 8 for c in p) for p in positions)  # the FOV stays in the patch
    limited = FovPolicy("max_pred_moves", (9, 9, 9), (2, 2, 2), (13, 13, 13), 0.9, max_moves=3)
    assert grow_examples(fill_double, [half_space_example()], limited, 1, 0)[0][0].positions == positions[:3]


def test_every_slot_stays_busy_and_takes_its_next_example_when_done(specs):
    from emtools.train.config import load_config

    config = load_config(None, [*data_args(specs), *TINY])
    from emtools.models.spec import spec_from_dict

    settings = ExampleSettings.from_config(config, spec_from_dict(config["model"]))
    source = ExampleSource(read_volumes(config["data"]["volumes"]), settings,
                           {"scale": 1.0, "mean": 128.0, "std": 33.0}, seed=0)
    policy = FovPolicy("fixed", (9, 9, 9), (2, 2, 2), settings.patch_zyx, 0.9)
    slots = Slots(source, policy, 0, 0.05, 0.95)
    slots.fill(4, 3)  # global slots 4, 5, 6 (e.g. rank 2 of batch 2... any first slot)
    done = []
    for step in range(4):
        positions = slots.next_positions(done.append)
        assert [f.slot for f in slots.flights] == [4, 5, 6] and [f.k for f in slots.flights] == [step] * 3
        assert positions == [(6, 6, 6)] * 3
        inputs, targets = fov_batch(slots.flights, positions, (9, 9, 9))
        assert inputs.shape == (3, 2, 9, 9, 9) and targets.shape == (3, 1, 9, 9, 9)
        write_back(slots.flights, positions, identity_double(inputs), policy)
    # identity predictions never reach a shift: each example is one FOV, then the slot refills
    assert len(done) == 9 and [f.fovs for f in done] == [1] * 9
    assert len({f.example.centre_zyx for f in done}) > 3  # different examples


# ----------------------------------------------------------------------------- em-train model=ffn

EXTRA_KEYS = {"kind", "normalization", "voxel_size_nm", "fov_zyx", "deltas_zyx", "seed_pad", "move_threshold",
              "step", "config_sha256", "loss", "validation", "world_size"}
TRAIN_KEYS = {"step", "split", "loss", "lr", "accuracy", "precision", "recall", "f1", "examples", "fovs_per_s"}


def test_trains_via_the_cli_and_writes_the_ffn_checkpoint_contract(tmp_path, specs):
    run = tmp_path / "run"
    result = train(*data_args(specs), *TINY, *MOVING, "data.batch_size=2", "train.steps=4", "train.checkpoint_every=2",
                   "validation.every=2", "ffn.val_examples=3", "data.augment=grayscale", "-o", run)
    assert result.returncode == 0, result.output
    assert result.stdout == f"{run}/last.pt\n{run}/best.pt\n"
    assert sorted(os.listdir(run)) == ["best.pt", "last.pt", "metrics.jsonl", "step_2.pt", "step_4.pt"]
    model, spec, extra = load_model(str(run / "last.pt"))
    assert spec.arch == "ffn" and spec.fov_zyx == (9, 9, 9) and spec.depth == 2
    assert set(extra) == EXTRA_KEYS and extra["kind"] == "ffn"
    assert extra["normalization"] == {"scale": 1.0, "mean": 128.0, "std": 33.0}  # google/ffn's uint8 default
    assert extra["fov_zyx"] == [9, 9, 9] and extra["deltas_zyx"] == [2, 2, 2] and extra["voxel_size_nm"] == [10, 10, 10]
    assert extra["seed_pad"] == {"pad": 0.05, "seed": 0.95} and extra["move_threshold"] == 0.04
    assert extra["step"] == 4 and extra["world_size"] == 1 and np.isfinite(extra["loss"])
    assert set(extra["validation"]) >= {"loss", "accuracy", "precision", "recall", "f1"}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_records = [r for r in records if r["split"] == "train"]
    assert [r["step"] for r in train_records] == [1, 2, 3, 4]
    assert all(TRAIN_KEYS <= set(r) for r in train_records)
    assert all(0 <= r["accuracy"] <= 1 and r["fovs_per_s"] > 0 for r in train_records)
    # every move is taken: an example spans several FOVs (7 with the fixed policy), so 8 FOVs finish
    # at most one example per slot; the finished ones carry whole-patch scores
    finished = sum(r["examples"] for r in train_records)
    assert finished <= 2
    assert [r["step"] for r in records if r["split"] == "val"] == [2, 4]
    training = read_checkpoint(str(run / "last.pt"))["training"]
    slots = training["ffn"]["slots"]
    assert len(slots) == 1 and [s["slot"] for s in slots[0]] == [0, 1]
    assert all(s["fovs"] == 4 and s["canvas"].shape == (13, 13, 13) for s in slots[0])
    # --init starts a new run from these weights (and their normalisation)
    tuned = tmp_path / "tuned"
    result = train("--init", run / "last.pt", *data_args(specs), "train.steps=1", "train.threads=1",
                   "ffn.min_object_size=100", "validation.every=0", "optim.lr=0", "-o", tuned, "-q")
    assert result.returncode == 0, result.output
    tuned_weights = read_checkpoint(str(tuned / "last.pt"))["state_dict"]
    assert all(torch.equal(tuned_weights[k], v) for k, v in model.state_dict().items())  # lr 0: unchanged


def _state(path):
    payload = read_checkpoint(str(path))
    return payload["state_dict"], payload["training"]


def test_resume_continues_exactly_like_an_unbroken_run(tmp_path, specs):
    # every move is taken, so each example takes exactly 4 FOVs: at step 3 every slot is mid-example
    args = [*data_args(specs), *TINY, *MOVING, "ffn.fov_policy=max_pred_moves", "ffn.max_moves=4",
            "data.batch_size=2", "data.augment=flip", "train.steps=6", "train.checkpoint_every=3", "train.keep=2",
            "validation.every=3", "ffn.val_examples=2", "-q"]
    whole = tmp_path / "whole"
    assert train(*args, "-o", whole).returncode == 0
    # a run stopped after step 3: its last.pt is the unbroken run's step_3.pt
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    shutil.copy(whole / "step_3.pt", stopped / "last.pt")
    resumed = train("-o", stopped, "--resume", "-q")
    assert resumed.returncode == 0, resumed.output
    weights, training = _state(whole / "last.pt")
    weights_r, training_r = _state(stopped / "last.pt")
    assert training_r["step"] == 6
    assert all(torch.equal(weights[k], weights_r[k]) for k in weights)
    moments = training["optimizer"]["state"]
    assert all(torch.equal(moments[i]["exp_avg"], training_r["optimizer"]["state"][i]["exp_avg"]) for i in moments)
    for a, b in zip(training["ffn"]["slots"][0], training_r["ffn"]["slots"][0]):
        assert (a["slot"], a["k"], a["fovs"], a["state"], a["positions"]) == (b["slot"], b["k"], b["fovs"], b["state"],
                                                                               b["positions"])
        assert torch.equal(a["canvas"], b["canvas"])
    assert any(s["k"] > 0 for s in training["ffn"]["slots"][0])  # examples finished and slots refilled

    def logged(folder):
        return [{k: v for k, v in r.items() if k != "fovs_per_s"} for r in map(json.loads, open(folder / "metrics.jsonl"))
                if r["split"] == "train"]

    assert logged(stopped) == logged(whole)[3:]
    assert logged(stopped)[1]["examples"] == 2 and "patch.f1" in logged(stopped)[1]  # step 5: both finished
    assert read_checkpoint(str(stopped / "last.pt"))["extra"]["validation"] == \
        read_checkpoint(str(whole / "last.pt"))["extra"]["validation"]


def test_two_gloo_ranks_step_like_one_process_with_both_ranks_examples(tmp_path, specs):
    """Batch 1 on 2 ranks (lr_scaling=linear: 2 x 0.25) equals batch 2 on one process (lr 0.5): the
    ranks hold global slots 0 and 1, the examples one process with both slots draws. SGD, two steps
    (the first moves only the zero-initialised output conv)."""
    common = [*data_args(specs), *TINY, *MOVING, "train.steps=2", "optim.name=sgd", "optim.schedule=constant",
              "optim.warmup_steps=0", "validation.every=0", "data.augment=flip", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    ranks = tmp_path / "ranks"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "emtools.cli.train", *common, "data.batch_size=1", "optim.lr=0.25",
                           "optim.lr_scaling=linear", "-o", str(ranks)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{ranks}/last.pt\n"  # only rank 0 writes and prints
    one = tmp_path / "one"
    assert train(*common, "data.batch_size=2", "optim.lr=0.5", "-o", one).returncode == 0
    weights, training = _state(ranks / "last.pt")
    weights_one, training_one = _state(one / "last.pt")
    assert training["schedule"]["peak_lr"] == 0.5 and len(training["rng"]) == 2
    assert read_checkpoint(str(ranks / "last.pt"))["extra"]["world_size"] == 2
    for key in weights:
        torch.testing.assert_close(weights[key], weights_one[key], rtol=1e-5, atol=1e-6, msg=key)
    from emtools.models import build_model
    from emtools.models.spec import spec_from_dict

    initial = build_model(spec_from_dict(training["config"]["model"]), seed=0).state_dict()
    assert not torch.equal(weights["entry1.weight"], initial["entry1.weight"])  # step 2 reached the first layer
    # rank r holds global slot r: the same examples and object maps as the one process's slots 0 and 1
    per_rank = [s for rank in training["ffn"]["slots"] for s in rank]
    assert [s["slot"] for s in per_rank] == [0, 1] == [s["slot"] for s in training_one["ffn"]["slots"][0]]
    for a, b in zip(per_rank, training_one["ffn"]["slots"][0]):
        assert a["positions"] == b["positions"]
        torch.testing.assert_close(a["canvas"], b["canvas"], rtol=1e-5, atol=1e-5)
    assert not torch.equal(per_rank[0]["canvas"], per_rank[1]["canvas"])  # each rank its own example


@pytest.mark.parametrize("args,fragments", [
    (["model.fov_zyx=41,41,41"], ["training patch 45x45x45", "is larger than", "shape 32x40x40"]),
    (["data.volumes.0.labels=none"], ["needs exactly one of labels or probabilities"]),
    (["data.volumes.0.labels=none", "data.volumes.0.probabilities={probs}", "data.volumes.0.val_region=none"],
     ["FFN training needs instance labels"]),
    (["targets.affinity.kind=affinity"], ["flood-filling network without heads"]),
    (["ffn.move_threshold=1.5"], ["ffn.move_threshold must lie strictly between 0 and 1"]),
    (["ffn.min_object_size=100000"], ["no FFN training example"]),
    (["data.volumes.0.val_region=last 5 z"], ["no FFN validation example"]),
    (["validation.best_metric=voi"], ["an FFN run scores loss, accuracy"]),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, specs, args, fragments):
    run = tmp_path / "run"
    extra = [a.replace("{probs}", specs["probs"]) for a in args]
    result = train(*data_args(specs), *TINY, "train.steps=1", *extra, "-o", run)
    assert_one_line_error(result, "train", *fragments)
    assert not run.exists()


def test_ffn_settings_are_ignored_with_a_warning_by_other_models(tmp_path, specs):
    run = tmp_path / "run"
    result = train(*data_args(specs), "model.widths=4,8", "model.norm=group", "data.patch_zyx=8,32,32",
                   "train.threads=1", "train.steps=1", "validation.every=0", "ffn.fov_policy=max_pred_moves",
                   "-o", run)
    assert result.returncode == 0, result.output
    assert "the ffn.* settings are for flood-filling networks" in result.stderr
    assert "kind" not in read_checkpoint(str(run / "last.pt"))["extra"]


def test_a_non_finite_loss_stops_with_one_line(tmp_path, specs):
    run = tmp_path / "run"
    result = train(*data_args(specs), *TINY, *MOVING, "train.steps=6", "optim.name=sgd", "optim.lr=1e30",
                   "optim.schedule=constant", "optim.warmup_steps=0", "ffn.grad_clip=0", "train.checkpoint_every=1",
                   "validation.every=0", "-o", run, "-q")
    assert_one_line_error(result, "train", "loss is", "stopped", f"last good checkpoint is {run}/last.pt")
    assert read_checkpoint(str(run / "last.pt"))["extra"]["kind"] == "ffn"
