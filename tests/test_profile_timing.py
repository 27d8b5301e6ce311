"""Per-layer timing, and the execution-option comparison (on a tiny model, eager options only)."""

from __future__ import annotations

import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.profile import options as opt
from emtools.profile.flops import leaf_modules
from emtools.profile.timing import measure_layers, segments

torch.set_num_threads(1)
CPU = torch.device("cpu")


def tiny():
    return build_model(resolve_spec("rsunet", ["widths=4,8", "pools=1x2x2"]), seed=0), torch.randn(1, 1, 2, 16, 16)


def test_segments_split_a_pass_between_layer_starts():
    events = [(1.0, "fwd", "a"), (1.5, "fwd", "b"), (2.0, "bwd", "b"), (2.25, "fwd", "a"), (3.0, "bwd", "a")]
    assert segments(events, "fwd", 4.0) == {"a": 0.5 + 1.75, "b": 0.75}
    assert segments(events, "bwd", 3.5) == {"b": 1.0, "a": 0.5}


def test_every_layer_gets_forward_and_backward_time():
    model, x = tiny()
    times = measure_layers(model, x, repeats=2, warmup=1)
    names = set(leaf_modules(model))
    assert set(times.forward) == names and set(times.backward) == names
    assert all(t >= 0 for t in times.forward.values())
    assert times.iteration_forward_s > 0 and times.iteration_backward_s > 0
    # the first conv's input is the data; it still gets its weight-gradient time
    assert times.backward["embed_in.conv"] > 0
    # hooks leave nothing behind
    assert all(not m._forward_pre_hooks and not m._backward_pre_hooks for m in model.modules())
    inference = measure_layers(model.eval(), x, repeats=1, warmup=0, backward=False)
    assert inference.backward == {} and inference.iteration_backward_s == 0.0


def test_parse_options():
    assert opt.parse_options("none", CPU, "train") == []
    assert opt.parse_options("channels-last,compile", CPU, "train") == ["eager", "channels_last", "compile"]
    default = opt.parse_options("default", CPU, "infer")
    assert default[0] == "eager" and "jit_freeze" in default and "fp16" not in default
    assert ({"bf16", "channels_last+bf16"} <= set(default)) == opt.cpu_has_bf16_units()
    assert opt.parse_options("channels-last-bf16", CPU, "train") == ["eager", "channels_last+bf16"]
    with pytest.raises(EmError, match="unknown execution option 'chanels_last'; did you mean 'channels_last'"):
        opt.parse_options("chanels_last", CPU, "train")


@pytest.mark.skipif(not opt.cpu_has_bf16_units(), reason="this CPU has no bf16 units (emulated bf16 is ~80x slower)")
def test_channels_last_bf16_trains_in_bf16_on_ndhwc_weights():
    model, x = tiny()
    runner, xin, autocast = opt._prepare("channels_last+bf16", model, x, "train")
    conv = next(m for m in runner.modules() if isinstance(m, torch.nn.Conv3d) and m.in_channels > 1)
    assert conv.weight.is_contiguous(memory_format=torch.channels_last_3d) and not conv.weight.is_contiguous()
    with autocast():
        assert runner(xin).dtype == torch.bfloat16
    result = opt.time_option("channels_last+bf16", model, x, "train", repeats=1)
    assert result.status == "ok" and result.seconds > 0


def test_unavailable_options_are_reported_not_raised():
    model, x = tiny()
    for name, fragment in (("fp16", "needs a CUDA GPU"), ("cudnn_benchmark", "needs a CUDA GPU"),
                           ("jit_freeze", "inference only")):
        result = opt.time_option(name, model, x, "train", repeats=1)
        assert result.status == "unavailable" and fragment in result.reason


def test_a_failing_option_becomes_unavailable(monkeypatch):
    model, x = tiny()

    def broken_compile(module, *args, **kwargs):
        raise RuntimeError("no compiler today\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    result = opt.time_option("compile", model, x, "train", repeats=1)
    assert result.status == "unavailable" and result.reason == "RuntimeError: no compiler today"


def test_compare_eager_options_and_pick_the_fastest():
    model, x = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    results = opt.compare_options(model, x, ["eager", "channels_last", "fp16"], "train", repeats=1, warmup=0)
    assert [r.name for r in results] == ["eager", "channels_last", "fp16"]
    assert results[0].speedup == pytest.approx(1.0)
    assert results[1].status == "ok" and results[1].speedup > 0
    assert results[2].status == "unavailable"
    assert opt.fastest(results).name in ("eager", "channels_last")
    # each option trains its own copy: the model itself is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    frozen = opt.compare_options(model, x, ["eager", "jit_freeze"], "infer", repeats=1, warmup=0)
    assert frozen[1].status == "ok", frozen[1].reason
