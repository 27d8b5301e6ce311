"""em-profile on flood-filling networks: FLOPs per FOV against the spec's own count, FOV/s per batch
size and execution option, checkpoints, and one-line errors for what an FFN cannot take."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

from conftest import assert_one_line_error
from emtools.cli.profile import main
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import save_checkpoint
from emtools.profile.flops import counted_flops, crosscheck_layers, totals, trace_layers
from emtools.profile.report import format_report, profile_model

torch.set_num_threads(1)
TINY = ["depth=2", "features=4", "fov_zyx=9", "deltas_zyx=2"]


class Result:
    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def cli(*args) -> Result:
    return Result(CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False))


def test_spec_flops_per_fov_by_hand():
    # depth 1: entry1 (2 -> 2) and entry2 (2 -> 2), 3x3x3, then the 1x1x1 out conv (2 -> 1), over 5^3 voxels
    spec = resolve_spec("ffn", ["depth=1", "features=2", "fov_zyx=5", "deltas_zyx=1"])
    per_voxel = 2 * 27 * (2 * 2) + 2 * 27 * (2 * 2) + 2 * 2
    assert spec.flops_per_fov() == per_voxel * 125 == 54_500


@pytest.mark.parametrize("overrides", [
    TINY,
    ["depth=3", "features=3", "fov_zyx=5,9,7", "deltas_zyx=1,2,2"],
    ["depth=2", "features=4", "fov_zyx=7", "deltas_zyx=2", "kernel_zyx=1,3,3"],
])
def test_counted_flops_agree_with_the_spec(overrides):
    """The analytic per-layer count, torch's FlopCounterMode and FFNSpec.flops_per_fov agree (batch 3)."""
    spec = resolve_spec("ffn", overrides)
    model = build_model(spec)
    shape = (3, 2, *spec.fov_zyx)
    layers = trace_layers(model, shape)
    total = totals(layers)
    assert total.flops_fwd == 3 * spec.flops_per_fov()
    assert counted_flops(model, shape) == (total.flops_fwd, total.flops_bwd)
    rows = crosscheck_layers(model, layers)
    assert len(rows) == spec.convolutions + 1 and all(r[1] == r[2] and r[3] == r[4] for r in rows), rows
    assert total.params == sum(p.numel() for p in model.parameters())


def test_count_only_report_of_the_published_model():
    result = cli("model", "ffn", "--no-time", "--json", "-q")
    assert result.returncode == 0 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["kind"] == "ffn" and report["sample"] == "FOV"
    assert report["input_zyx"] == [33, 33, 33] and report["batch"] == 1 and report["batches"] == [1, 2, 4, 8]
    # 2->32 and 32->32 entry convs, 11 residual modules of two 32->32 convs, a 1x1x1 32->1 out conv
    assert report["totals"]["params"] == (2 * 32 * 27 + 32) + 23 * (32 * 32 * 27 + 32) + 33 == 638_433
    spec = resolve_spec("ffn")
    per_voxel = 2 * 27 * (2 * 32 + 23 * 32 * 32) + 2 * 32  # 45.8 GFLOP per FOV, as the FFN paper's ~46
    assert report["totals"]["flops_fwd"] == spec.flops_per_fov() == per_voxel * 33 ** 3 == 45_831_462_336
    assert report["crosscheck"]["ok"] and report["crosscheck"]["spec_agrees"]
    assert report["crosscheck"]["layers_checked"] == 25
    assert report["geometry"] == {"fov_zyx": [33, 33, 33], "fov_voxels": 35937, "deltas_zyx": [8, 8, 8],
                                  "receptive_field_zyx": [49, 49, 49]}
    assert set(report["skipped"]) == {"valid_output", "levels"} and report["levels"] == []
    assert "throughput" not in report and "peak" not in report


def test_training_throughput_table_in_the_library():
    spec = resolve_spec("ffn", TINY)
    report = profile_model(spec, None, [1, 2], mode="train", options=["eager", "channels_last", "fp16"],
                           repeats=1, warmup=0)
    rows = report["throughput"]
    assert [(r["batch"], r["option"]) for r in rows] == [(b, o) for b in (1, 2) for o in ("eager", "channels_last", "fp16")]
    flops_step = report["totals"]["flops_fwd"] + report["totals"]["flops_bwd"]  # batch 1: one FOV
    assert report["totals"]["flops_per_sample"] == flops_step
    peak = report["peak"]["peak_gflops"]
    for row in rows:
        if row["option"] == "fp16":
            assert row["status"] == "unavailable" and "CUDA" in row["reason"] and row["samples_per_s"] is None
            continue
        assert row["status"] == "ok" and row["seconds"] > 0
        assert math.isclose(row["samples_per_s"], row["batch"] / row["seconds"])
        assert math.isclose(row["voxels_per_s"], 729 * row["samples_per_s"])
        assert math.isclose(row["gflops"], flops_step * row["batch"] / row["seconds"] / 1e9)
        assert math.isclose(row["peak_share"], row["gflops"] / peak)
    assert [r["name"] for r in report["options"]] == ["eager", "channels_last", "fp16"]  # batch 1's
    assert report["fastest_throughput"]["option"] in ("eager", "channels_last")
    text = format_report(report)
    assert text[2].startswith("# FOV 9,9,9 (729 voxels), deltas 2,2,2; receptive field 9,9,9")
    assert any(l.startswith("forward FLOPs per FOV:") and l.endswith("agree") for l in text)
    assert any(l.startswith("skipped levels: an FFN has one resolution") for l in text)
    assert not any(l.startswith("per level") for l in text)
    header = next(i for i, l in enumerate(text) if l.startswith("throughput (train: forward+backward"))
    assert text[header + 1].split() == ["batch", "option", "s/iteration", "FOV/s", "voxels/s", "GFLOP/s", "peak", "speedup"]
    assert len(text) == header + 2 + 6 + 1 and "unavailable: needs a CUDA GPU" in text[header + 4]
    assert text[-1].startswith("fastest here: ") and " at batch " in text[-1]


def test_inference_from_a_checkpoint_with_plot_and_json(tmp_path):
    spec = resolve_spec("ffn", TINY)
    path = tmp_path / "ffn.pt"
    save_checkpoint(str(path), build_model(spec), spec, {"kind": "ffn", "fov_zyx": [9, 9, 9]})
    plot = tmp_path / "layers.png"
    result = cli("model", path, "fov_zyx=7", "--mode", "infer", "--batch", "1,4", "--repeat", "1", "--warmup", "0",
                 "--json", "--plot", plot, "-q")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["model"]["arch"] == "ffn" and report["model"]["features"] == 4 and report["input_zyx"] == [7, 7, 7]
    assert report["totals"]["flops_bwd"] == 0 and report["crosscheck"]["spec_agrees"]
    rows = report["throughput"]
    assert [(r["batch"], r["option"], r["status"]) for r in rows] == [(1, "eager", "ok"), (4, "eager", "ok")]
    assert all(math.isclose(r["gflops"], report["totals"]["flops_fwd"] * r["batch"] / r["seconds"] / 1e9) for r in rows)
    assert "options" not in report  # no --options asked: eager only, in the throughput table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_u_nets_keep_their_report_and_take_a_batch_list():
    report = json.loads(cli("model", "rsunet", "widths=4,8", "pools=1x2x2", "--input", "2,16,16", "--batch", "2,4",
                            "--no-time", "--json", "-q").stdout)
    assert report["kind"] == "unet" and report["batch"] == 2 and report["batches"] == [2, 4]
    assert report["skipped"] == {} and report["levels"] and "valid_output_zyx" in report["geometry"]
    assert report["crosscheck"]["spec_flops_per_sample"] is None and report["crosscheck"]["ok"]
    missing = cli("model", "rsunet", "--no-time")
    assert missing.returncode == 2 and "Missing option '--input'" in missing.stderr and missing.stdout == ""


@pytest.mark.parametrize("args, fragments", [
    (["ffn", "--input", "18,160,160"], ["--input 18,160,160 is not the FOV 33,33,33 of ffn", "fov_zyx="]),
    (["ffn-small", "fov_zyx=32"], ["must be odd"]),
    (["ffn", "depth=0"], ["depth and features must be at least 1"]),
    (["ffn", "colour=red"], ["unknown ffn spec key 'colour'"]),
    (["ffn", "--batch", "1,x"], ["--batch 1,x: give a batch size or a comma list"]),
    (["ffn", "--batch", "0,2"], ["--batch 0,2 and --repeat 3 must be at least 1"]),
])
def test_bad_ffn_input_is_one_line(args, fragments):
    assert_one_line_error(cli("model", *args, "--no-time"), "profile", *fragments)
