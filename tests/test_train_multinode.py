"""em-train and em-predict on two torchrun "nodes" (two agents on this machine, c10d rendezvous,
gloo) give what one process gives: training with the same global batch, prediction bit for bit.

Each test starts two ``torchrun --nnodes 2 --nproc-per-node 1`` agents at once, as two machines
would (see test_train_distributed.py and test_cli_predict.py for ``--nproc-per-node=2``).
Every wait has a timeout, so a rendezvous that never completes fails the test.
"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from emtools import io
from emtools.meta import Metadata
from emtools.models.checkpoint import read_checkpoint
from test_cli_predict import VOXEL, WINDOW, _checkpoint, predict
from test_cli_train import TINY, data_args, train, write_data

NODE_TIMEOUT_S = 150  # both agents, start to exit (about 20 s on an idle 2-core machine)
JOIN_TIMEOUT_S = 60  # an agent whose peer never comes gives up after this
# SGD (Adam's first steps hardly depend on the gradient's size) and GroupNorm (no per-rank batch
# statistics); bce on affinities without masks: every sample's loss weights sum the same, so the
# mean of the two ranks' losses is the loss of one batch of both samples.
TRAIN = [*TINY, "model.heads=affinity:3", "train.steps=3", "train.checkpoint_every=2", "train.keep=5",
         "optim.name=sgd", "optim.lr=0.1", "validation.every=0", "data.augment=flip", "-q"]
TIMING = ("samples_per_s", "voxels_per_s")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def two_nodes(module: str, *args) -> list[subprocess.CompletedProcess]:
    """``python -m MODULE ARGS`` on 2 nodes of 1 process each; the agents' results (node 0, node 1)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    port = free_port()
    agents = []
    for node in (0, 1):
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--node-rank", str(node), "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}",
               "--rdzv-id", f"emtools-test-{port}", "--rdzv-conf", f"join_timeout={JOIN_TIMEOUT_S}",
               "-m", module, *[str(a) for a in args]]
        # its own session: a hung agent and its worker are killed together
        agents.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                       start_new_session=True))
    results = []
    try:
        for agent in agents:
            out, err = agent.communicate(timeout=NODE_TIMEOUT_S)
            results.append(subprocess.CompletedProcess(agent.args, agent.returncode, out, err))
    except subprocess.TimeoutExpired:
        for agent in agents:
            if agent.poll() is None:
                os.killpg(agent.pid, signal.SIGKILL)
            agent.communicate()
        pytest.fail(f"the two torchrun nodes did not finish within {NODE_TIMEOUT_S} s")
    for node, result in enumerate(results):
        assert result.returncode == 0, f"node {node}:\n{result.stderr}"
    return results


def _digest(path) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _relative(got: dict, want: dict) -> float:
    """||got - want|| / ||want|| over all tensors together."""
    diff = sum(float((got[k].double() - want[k].double()).square().sum()) for k in want)
    norm = sum(float(want[k].double().square().sum()) for k in want)
    return (diff / norm) ** 0.5


def _momenta(payload) -> dict:
    return {k: v["momentum_buffer"] for k, v in payload["training"]["optimizer"]["state"].items()}


def _metrics(run):
    with open(run / "metrics.jsonl") as handle:
        return [json.loads(line) for line in handle]


def test_two_nodes_train_like_one_process_with_the_global_batch(tmp_path):
    specs = write_data(tmp_path)
    nodes, one, alone = tmp_path / "nodes", tmp_path / "one", tmp_path / "alone"
    results = two_nodes("emtools.cli.train", *data_args(specs), *TRAIN, "data.batch_size=1", "-o", nodes)
    # c10d ignores --node-rank: either agent's worker may be rank 0; that one alone prints and writes.
    assert sorted(r.stdout for r in results) == ["", f"{nodes}/last.pt\n"]
    single = train(*data_args(specs), *TRAIN, "data.batch_size=2", "-o", one)
    assert single.returncode == 0, single.output
    files = ["last.pt", "metrics.jsonl", "step_2.pt", "step_3.pt"]
    assert sorted(os.listdir(nodes)) == sorted(os.listdir(one)) == files

    for name in ("step_2.pt", "last.pt"):
        got, want = read_checkpoint(str(nodes / name)), read_checkpoint(str(one / name))
        assert got.keys() == want.keys() and got["spec"] == want["spec"]
        # Float rounding only (2e-6 and 4e-4 measured); rank 0's samples alone give 6e-4 and 0.15.
        weights, momenta = _relative(got["state_dict"], want["state_dict"]), _relative(_momenta(got), _momenta(want))
        assert weights < 1e-4 and momenta < 1e-2, (name, weights, momenta)
        extra, extra_want = dict(got["extra"]), dict(want["extra"])
        assert (extra.pop("world_size"), extra_want.pop("world_size")) == (2, 1)
        assert extra.pop("loss") == pytest.approx(extra_want.pop("loss"), rel=1e-4)
        extra.pop("config_sha256"), extra_want.pop("config_sha256")  # the config differs in the batch
        assert extra == extra_want
        training, training_want = dict(got["training"]), dict(want["training"])
        assert training["sampler"] == {**training_want["sampler"], "world_size": 2, "batch_size": 1}
        assert training["sampler"]["next_index"] == 2 * training["step"]  # global: 2 samples a step
        config, config_want = training["config"], training_want["config"]
        assert config["data"].pop("batch_size") == 1 and config_want["data"].pop("batch_size") == 2
        assert (config.pop("run_dir"), config_want.pop("run_dir")) == (str(nodes), str(one))
        assert config == config_want
        assert len(training["rng"]) == 2 and training["rng"][0].keys() == training_want["rng"][0].keys()
        for key, state in training_want["rng"][0].items():  # rank 0's generators: the single process's
            same = torch.equal(training["rng"][0][key], state) if key == "torch" else training["rng"][0][key] == state
            assert same, key
        for key in ("step", "schedule", "scaler", "best", "validation"):
            assert training[key] == training_want[key], key
        optimizer, optimizer_want = training["optimizer"], training_want["optimizer"]
        assert optimizer["param_groups"] == optimizer_want["param_groups"]

    records, records_want = _metrics(nodes), _metrics(one)
    assert [r["step"] for r in records] == [r["step"] for r in records_want] == [1, 2, 3]
    for record, want in zip(records, records_want):
        assert record.keys() == want.keys()
        for key, value in want.items():
            if isinstance(value, float) and key not in TIMING:
                assert record[key] == pytest.approx(value, rel=1e-4), (record["step"], key)
            elif key not in TIMING:
                assert record[key] == value, (record["step"], key)

    # Rank 0's samples alone (one process, batch 1) train other weights: both nodes took part.
    first_rank_only = train(*data_args(specs), *TRAIN, "data.batch_size=1", "-o", alone)
    assert first_rank_only.returncode == 0, first_rank_only.output
    apart = _relative(read_checkpoint(str(alone / "last.pt"))["state_dict"],
                      read_checkpoint(str(one / "last.pt"))["state_dict"])
    assert apart > 1e-4, apart


@pytest.fixture(scope="module")
def model_and_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode-predict")
    ckpt = _checkpoint(root / "model.pt")
    rng = np.random.default_rng(5)
    inputs = []
    for index in range(3):
        spec = f"{root}/in{index}.h5:/image"
        io.write_volume(spec, rng.integers(0, 256, (8, 40, 40), dtype=np.uint8),
                        Metadata(voxel_size_nm=VOXEL, offset_nm=(0.0, 0.0, 40.0 * index)))
        inputs.append(spec)
    return root, ckpt, inputs


def test_two_nodes_share_the_input_files_and_write_what_one_process_writes(tmp_path, model_and_inputs):
    _, ckpt, inputs = model_and_inputs
    nodes, one = tmp_path / "nodes", tmp_path / "one"
    results = two_nodes("emtools.cli.predict", ckpt, *inputs, "-o", f"{nodes}/", *WINDOW)
    single = predict(ckpt, *inputs, "-o", f"{one}/", *WINDOW)
    assert single.returncode == 0, single.output
    expected = sorted(os.listdir(one))
    assert len(expected) == 6  # 3 inputs x 2 heads
    written = [line for r in results for line in r.stdout.split()]
    assert sorted(written) == sorted(str(nodes / name) for name in expected)  # each file once
    assert all(r.stdout for r in results)  # files dealt round-robin: both nodes wrote some
    assert sorted(os.listdir(nodes)) == expected  # no temporary file left behind
    for name in expected:
        assert _digest(nodes / name) == _digest(one / name), name


def test_two_nodes_share_the_blocks_of_one_volume_bit_for_bit(tmp_path, model_and_inputs):
    _, ckpt, inputs = model_and_inputs
    nodes, one = tmp_path / "nodes", tmp_path / "one"
    nodes.mkdir(), one.mkdir()
    block = ["--block", "8,20,20"]  # 4 blocks, 2 for each node; the other node's travel to rank 0
    results = two_nodes("emtools.cli.predict", ckpt, inputs[0], "-o", nodes / "pred_{head}.h5", *block, *WINDOW)
    single = predict(ckpt, inputs[0], "-o", one / "pred_{head}.h5", *block, *WINDOW)
    assert single.returncode == 0, single.output
    names = ["pred_affinity.h5", "pred_foreground.h5"]
    # rank 0 (on either node) alone writes and prints the volume
    assert sorted(r.stdout for r in results) == ["", "".join(f"{nodes / name}\n" for name in names)]
    assert sorted(os.listdir(nodes)) == sorted(os.listdir(one)) == names
    for name in names:
        got, meta = io.read_volume(str(nodes / name))
        want, meta_want = io.read_volume(str(one / name))
        assert got.dtype == want.dtype and np.array_equal(got, want) and meta == meta_want, name
        assert _digest(nodes / name) == _digest(one / name), name
