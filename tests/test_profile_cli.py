"""em-profile as a user runs it: data on stdout, one-line errors, exit codes, help with examples."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from conftest import assert_one_line_error, run_tool
from emtools.cli.profile import main
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import save_checkpoint

torch.set_num_threads(1)
TINY = ["rsunet", "widths=4,8", "pools=1x2x2", "--input", "2,16,16"]


class Result:
    """A CliRunner result shaped like a CompletedProcess for assert_one_line_error."""

    def __init__(self, result):
        self.returncode, self.stdout, self.stderr = result.exit_code, result.stdout, result.stderr


def cli(*args: str) -> Result:
    return Result(CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False))


def test_count_only_json_matches_flop_counter():
    result = cli("model", "rsunet", "--input", "18,160,160", "--no-time", "--json", "-q")
    assert result.returncode == 0 and result.stderr == ""
    report = json.loads(result.stdout)
    assert report["totals"]["flops"] == 378_468_979_200
    assert report["crosscheck"]["ok"] and report["crosscheck"]["layers_checked"] == 33
    assert report["geometry"]["downsampling_zyx"] == [2, 16, 16]
    assert abs(sum(level["flops_share"] for level in report["levels"]) - 1) < 1e-9
    assert report["bottlenecks"][0]["name"].startswith(("enc.0", "dec.0"))
    assert "options" not in report and "peak" not in report


def test_measured_table_with_options_and_plot(tmp_path):
    plot = tmp_path / "layers.png"
    result = cli("model", *TINY, "--repeat", "1", "--warmup", "0", "--options", "eager,channels_last,fp16",
                 "--plot", plot)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("# model rsunet") and any(l.startswith("idx") for l in lines)
    assert any(l.startswith("total: ") for l in lines) and any("all match" in l for l in lines)
    assert any(l.startswith("  fp16") and "unavailable: needs a CUDA GPU" in l for l in lines)
    assert lines[-1].startswith("fastest here: ")
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "peak" in result.stderr  # progress on stderr, never on stdout


def test_measured_json_inference(tmp_path):
    result = cli("model", *TINY, "--mode", "infer", "--repeat", "1", "--json", "-q", "--seed", "3")
    report = json.loads(result.stdout)
    assert report["mode"] == "infer" and report["totals"]["flops_bwd"] == 0 and report["seed"] == 3
    assert report["peak"]["peak_gflops"] > 0
    conv = next(l for l in report["layers"] if l["kind"] == "Conv3d")
    assert conv["time_fwd_s"] > 0 and conv["gflops_fwd"] > 0 and conv["time_bwd_s"] is None


def test_spec_from_a_checkpoint(tmp_path):
    spec = resolve_spec("unet2d", ["widths=4,8"])
    path = tmp_path / "m.pt"
    save_checkpoint(str(path), build_model(spec), spec, {})
    result = cli("model", path, "--input", "3,16,16", "--no-time", "--json", "-q")
    assert json.loads(result.stdout)["model"]["arch"] == "unet2d"


@pytest.mark.parametrize("args, fragments", [
    (["model", "rsunett", "--input", "18,160,160"], ["unknown model 'rsunett'", "did you mean 'rsunet'"]),
    (["model", "rsunet", "norm=batchnorm", "--input", "18,160,160"], ["did you mean 'batch'"]),
    (["model", "rsunet", "colour=red", "--input", "18,160,160"], ["unknown spec key 'colour'"]),
    (["model", "rsunet", "depth=4", "widths=8,16", "--input", "18,160,160"], ["depth=4 does not match the 2 widths"]),
    (["model", "rsunet", "--input", "17,160,160"], ["does not fit the pooling", "16,160,160 or 18,160,160"]),
    (["model", "rsunet", "--input", "0,160,160"], ["zero or negative"]),
    (["model", "rsunet", "--input", "18,160,160", "--device", "cuda"], ["no CUDA GPU"]),
    (["model", "rsunet", "--input", "18,160,160", "--device", "tpu"], ["--device tpu"]),
    (["model", "rsunet", "--input", "18,160,160", "--options", "compiled"], ["unknown execution option 'compiled'"]),
    (["model", "rsunet", "--input", "18,160,160", "--options", "eager", "--no-time"], ["--no-time"]),
    (["model", "rsunet", "--input", "18,160,160", "--batch", "0"], ["--batch 0 and --repeat 3 must be at least 1"]),
    (["run", "--log", "x.jsonl"], ["no command given"]),
    (["summary", "missing.jsonl"], ["missing.jsonl"]),
])
def test_bad_input_is_one_line(args, fragments, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_line_error(cli(*args), "profile", *fragments)


def test_bad_spec_files_and_checkpoints(tmp_path):
    bad_yaml = tmp_path / "m.yaml"
    bad_yaml.write_text("name: rsunet\nwidths: [8, 16\n")
    assert_one_line_error(cli("model", bad_yaml, "--input", "2,16,16"), "profile", "not valid YAML")
    bad_json = tmp_path / "m.json"
    bad_json.write_text("{")
    assert_one_line_error(cli("model", bad_json, "--input", "2,16,16"), "profile", "not valid JSON")
    truncated = tmp_path / "m.pt"
    truncated.write_bytes(b"PK\x03\x04 not really a zip")
    assert_one_line_error(cli("model", truncated, "--input", "2,16,16"), "profile", "checkpoint")


def test_run_passes_stdout_through_and_records(tmp_path):
    log = tmp_path / "runs.jsonl"
    result = cli("run", "--log", log, "--voxels", "1000", "--", sys.executable, "-c", "print('data')")
    assert result.returncode == 0
    record = json.loads(log.read_text())
    assert record["voxels"] == 1000 and record["exit_code"] == 0 and record["argv"][1:] == ["-c", "print('data')"]
    failing = cli("run", "--log", log, "--", sys.executable, "-c", "import sys; sys.exit(4)")
    assert failing.returncode == 4 and failing.stdout == ""
    assert [json.loads(l)["exit_code"] for l in log.read_text().splitlines()] == [0, 4]
    table = cli("summary", log)
    assert table.returncode == 0 and table.stdout.splitlines()[0].startswith("tool")
    assert len(table.stdout.splitlines()) == 2  # one tool (python)
    data = json.loads(cli("summary", log, "--json").stdout)
    assert data["tools"][0]["runs"] == 2 and data["tools"][0]["failed"] == 1
    plot = tmp_path / "runs.png"
    assert cli("summary", log, "--plot", plot).returncode == 0 and plot.exists()
    bad = tmp_path / "bad.jsonl"
    bad.write_text("nope\n")
    assert_one_line_error(cli("summary", bad), "profile", "line 1 is not a JSON record")


def test_help_has_examples():
    for args in ([], ["model"], ["run"], ["summary"]):
        result = CliRunner().invoke(main, args + ["--help"])
        assert result.exit_code == 0 and "Example" in result.output, args


def test_as_a_real_process(tmp_path):
    """The installed entry point (or the module): stdout data, stderr one line, exit codes."""
    ok = run_tool("profile", "model", "rsunet-efficient", "--input", "18,160,160", "--no-time", "--json", "-q")
    assert ok.returncode == 0 and ok.stderr == ""
    assert json.loads(ok.stdout)["totals"]["flops"] == 221_720_371_200  # 221_172_940_800 with a 1x5x5 out conv
    assert_one_line_error(run_tool("profile", "model", "rsunet", "--input", "18,150,160", "--no-time"),
                          "profile", "nearest valid sizes 18,144,160 or 18,160,160")
    usage = run_tool("profile", "model", "rsunet", "--input", "1,2")
    assert usage.returncode == 2 and usage.stdout == ""
