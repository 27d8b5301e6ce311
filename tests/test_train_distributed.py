"""Data-parallel training: 2 gloo ranks step like one process on both samples (ranks: test_ranks.py)."""

import os
import subprocess
import sys

import torch

from emtools.models import build_model, split_heads
from emtools.models.checkpoint import read_checkpoint
from emtools.models.spec import spec_from_dict
from emtools.train.data import read_volumes
from emtools.train.losses import total_loss
from emtools.train.sampling import PatchSampler, head_targets
from test_cli_train import TINY, data_args, write_data


def test_two_gloo_ranks_step_like_one_process_on_both_samples(tmp_path):
    """After one SGD step, DDP's weights equal a single process's step on the mean of both ranks' losses.

    SGD (not Adam, whose first step hardly depends on the gradient's size) and GroupNorm (no
    per-rank batch statistics), so the comparison is exact up to float rounding.
    """
    specs = write_data(tmp_path)
    run = tmp_path / "run"
    # lr_scaling=linear: the peak rate is 2 x 0.25 on two workers.
    args = [*data_args(specs), *TINY, "model.heads=affinity:3,foreground:1", "train.steps=1", "optim.name=sgd",
            "optim.lr=0.25", "optim.lr_scaling=linear", "optim.schedule=constant", "optim.warmup_steps=0",
            "validation.every=0", "data.augment=flip", "-o", str(run), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "emtools.cli.train", *args], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{run}/last.pt\n"  # only rank 0 writes and prints
    payload = read_checkpoint(str(run / "last.pt"))
    config = payload["training"]["config"]
    assert len(payload["training"]["rng"]) == 2 and payload["extra"]["world_size"] == 2
    assert payload["training"]["schedule"]["peak_lr"] == 0.5

    spec = spec_from_dict(config["model"])
    heads = head_targets(config)
    volumes = read_volumes(config["data"]["volumes"])
    norm = payload["extra"]["normalization"]
    model = build_model(spec, seed=config["seed"])
    start = {k: v.clone() for k, v in model.state_dict().items()}
    batches = []
    for rank in (0, 1):
        sampler = PatchSampler(volumes, config["data"]["patch_zyx"], heads, norm, config["data"]["augment"],
                               config["seed"], 0.0, 1)
        # step 1 of rank r (batch 1 on 2 ranks) is global sample r (emtools.train.sampling)
        batches.append({k: torch.from_numpy(v)[None] for k, v in sampler.sample(rank).items()})
    assert not torch.equal(batches[0]["image"], batches[1]["image"])  # each rank its own crop
    losses = [total_loss(heads, split_heads(spec, model(b["image"])), b)[0] for b in batches]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    ((losses[0] + losses[1]) / 2).backward()
    optimizer.step()
    reference = model.state_dict()
    trained = payload["state_dict"]
    moved = [k for k in trained if not torch.equal(start[k], trained[k])]
    assert moved, "the step changed nothing"
    for key in trained:
        torch.testing.assert_close(trained[key], reference[key], rtol=1e-5, atol=1e-6, msg=key)
    # Rank 0's sample alone gives different weights: the test sees whether both ranks took part.
    alone = build_model(spec, seed=config["seed"])
    sgd = torch.optim.SGD(alone.parameters(), lr=0.5, momentum=0.9)
    total_loss(heads, split_heads(spec, alone(batches[0]["image"])), batches[0])[0].backward()
    sgd.step()
    assert any(not torch.allclose(alone.state_dict()[k], trained[k], rtol=1e-5, atol=1e-6) for k in moved)
