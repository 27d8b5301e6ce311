"""oneDNN-forced 3D convolutions: exact forward and gradients, same parameters, the right layers."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import assert_switch_trains_the_same, conv_outputs_and_grads
from torch import nn

from emtools.models import build_model, onednn, resolve_spec
from emtools.profile import options as opt

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch is built without oneDNN")


@pytest.mark.parametrize("kernel,bias,channels_last,batch", [
    ((3, 3, 3), False, True, 1), ((1, 3, 3), True, True, 1), ((3, 3, 3), True, False, 2), ((1, 5, 5), False, False, 1),
])
def test_forward_and_every_gradient_equal_the_default_path(kernel, bias, channels_last, batch):
    torch.manual_seed(0)
    ref = nn.Conv3d(12, 20, kernel, padding=tuple(k // 2 for k in kernel), bias=bias)
    fast = copy.deepcopy(ref)
    assert onednn.use_onednn(fast) == 1 and type(fast) is onednn.OneDNNConv3d
    x = torch.randn(batch, 12, 5, 9, 7)  # odd, unequal sizes catch a wrong flip or padding
    if channels_last:
        ref, fast = ref.to(memory_format=torch.channels_last_3d), fast.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    for a, b in zip(conv_outputs_and_grads(ref, x), conv_outputs_and_grads(fast, x)):
        if a is None:
            assert b is None
            continue
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max())), kernel


def test_only_exact_cases_are_switched_and_state_dict_keys_stay():
    model = nn.Sequential(nn.Conv3d(2, 4, 3, padding=1), nn.Conv3d(4, 4, 3, stride=2, padding=1),
                          nn.Conv3d(4, 4, 3, padding=2, dilation=2), nn.Conv3d(4, 4, 3, padding=1, groups=2),
                          nn.Conv3d(4, 4, 3, padding=0), nn.Conv3d(4, 4, 2, padding="same"),
                          nn.ConvTranspose3d(4, 4, 3, padding=1))
    keys = list(model.state_dict())
    assert onednn.use_onednn(model) == 1
    assert [type(m).__name__ for m in model] == ["OneDNNConv3d", "Conv3d", "Conv3d", "Conv3d", "Conv3d", "Conv3d",
                                                 "ConvTranspose3d"]
    assert list(model.state_dict()) == keys
    assert onednn.use_onednn(model) == 0  # idempotent


def test_a_whole_efficient_model_trains_the_same():
    assert_switch_trains_the_same(onednn.use_onednn)


def test_autocast_falls_back_to_the_default_path():
    conv = nn.Conv3d(3, 3, 3, padding=1)
    onednn.use_onednn(conv)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(torch.randn(1, 3, 2, 4, 4))
    assert y.dtype == torch.bfloat16


def test_onednn_is_an_execution_option_on_cpu_only():
    cpu = torch.device("cpu")
    assert {"onednn", "channels_last+onednn"} <= set(opt.default_options(cpu, "train"))
    assert opt.parse_options("channels-last-onednn", cpu, "train") == ["eager", "channels_last+onednn"]
    assert "CPU only" in opt.unavailable_reason("onednn", torch.device("cuda"), "train")
    model = build_model(resolve_spec("rsunet", ["widths=4,8", "pools=1x2x2"]), seed=0)
    result = opt.time_option("channels_last+onednn", model, torch.randn(1, 1, 2, 16, 16), "train", repeats=1)
    assert result.status == "ok" and result.seconds > 0
    assert all(type(m) is nn.Conv3d for m in model.modules() if isinstance(m, nn.Conv3d))  # the caller's model is untouched
