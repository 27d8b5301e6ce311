"""Winograd 3D convolutions (F(2,3) and F(4,3) tiles): forward and every gradient equal a direct convolution."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from conftest import assert_switch_trains_the_same, conv_outputs_and_grads
from torch import nn

from emtools.models import build_model, onednn, resolve_spec, winograd
from emtools.profile import options as opt

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not onednn.available(), reason="this torch is built without oneDNN")


@pytest.fixture
def everywhere(monkeypatch):
    """Switch every 3x3x3 convolution, however thin or small (the defaults skip thin ones)."""
    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)
    monkeypatch.setattr(winograd, "MIN_VOXELS", 1)


def _switched(conv):
    """(the convolution, a Winograd copy of it)."""
    fast = copy.deepcopy(conv)
    winograd.use_winograd(fast)
    return conv, fast


@pytest.mark.parametrize("shape,c_out,bias,channels_last", [
    ((1, 12, 5, 9, 7), 20, True, True),  # odd, unequal sizes: partial tiles on every far border
    ((2, 7, 4, 6, 8), 5, False, False),  # even sizes, batch 2, NCDHW tensors
    ((1, 3, 1, 1, 1), 4, True, False),  # a single voxel: one tile, all padding
    ((1, 16, 3, 10, 2), 16, True, True),
])
def test_forward_and_every_gradient_equal_a_direct_convolution(everywhere, shape, c_out, bias, channels_last):
    torch.manual_seed(0)
    ref = nn.Conv3d(shape[1], c_out, 3, padding=1, bias=bias)
    fast = copy.deepcopy(ref)
    assert winograd.use_winograd(fast) == 1 and type(fast) is winograd.WinogradConv3d
    x = torch.randn(shape)
    if channels_last:
        ref, fast = ref.to(memory_format=torch.channels_last_3d), fast.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    for index, (a, b) in enumerate(zip(conv_outputs_and_grads(ref, x), conv_outputs_and_grads(fast, x))):
        if a is None:
            assert b is None
            continue
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5 * float(a.abs().max())), index
    y = fast(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d if channels_last else torch.contiguous_format)
    assert fast.weight.grad.is_contiguous(memory_format=torch.channels_last_3d if channels_last
                                          else torch.contiguous_format)


@pytest.mark.parametrize("m", [2, 4])
def test_one_axis_transforms_compute_a_correlation(m):
    # A'[(G g) . (B' d)] = the m outputs of a 3-tap correlation of m + 2 inputs: checks the constants
    rng = np.random.default_rng(m)
    mats = winograd._MATRICES[m]
    d, g = rng.standard_normal(m + 2), rng.standard_normal(3)
    got = mats["AT"] @ ((mats["G"] @ g) * (mats["BT"] @ d))
    assert np.allclose(got, [d[i:i + 3] @ g for i in range(m)], atol=1e-5)


def test_the_plan_takes_f43_where_its_products_repay_the_larger_kernel_transform():
    assert winograd.plan((9, 20, 20)) == (2, 4, 4)
    assert winograd.plan((18, 40, 40)) == (2, 4, 4)
    # training: 45 tiles of 144 frequencies cost more than 125 of 64 once the kernel's three
    # transforms per step count; inference keeps the kernel's transform, so fewer products win
    assert winograd.plan((9, 10, 10)) == (2, 2, 2)
    assert winograd.plan((9, 10, 10), weight_cost=0.0) == (2, 4, 4)  # 12 padded: 1.8 products per output against 2
    assert winograd.plan((9, 5, 6)) == (2, 2, 2)
    assert winograd.plan((9, 4, 40)) == (2, 2, 4)  # per axis


@pytest.mark.parametrize("steps", [(2, 2, 2), (2, 4, 4), (4, 4, 2), (4, 4, 4)])
def test_every_tile_plan_gives_the_same_convolution(everywhere, monkeypatch, steps):
    monkeypatch.setattr(winograd, "plan", lambda shape, weight_cost=0.0: steps)
    torch.manual_seed(5)
    ref, fast = _switched(nn.Conv3d(6, 5, 3, padding=1))
    x = torch.randn(2, 6, 7, 5, 9)
    for index, (a, b) in enumerate(zip(conv_outputs_and_grads(ref, x), conv_outputs_and_grads(fast, x))):
        assert torch.allclose(a, b, rtol=1e-4, atol=2e-5 * float(a.abs().max())), (steps, index)


def test_wide_layers_are_exact_to_float_tolerance():
    # the default thresholds: 64 channels and enough tiles, as on rsunet-efficient's lower levels
    torch.manual_seed(1)
    ref = nn.Conv3d(64, 64, 3, padding=1).to(memory_format=torch.channels_last_3d)
    fast = copy.deepcopy(ref)
    assert winograd.use_winograd(fast) == 1
    x = torch.randn(1, 64, 4, 20, 20).contiguous(memory_format=torch.channels_last_3d)
    a, b = conv_outputs_and_grads(ref, x), conv_outputs_and_grads(fast, x)
    for u, v in zip(a, b):
        assert float((u - v).abs().max() / u.abs().max()) < 2e-5


def test_a_non_contiguous_input_and_a_view_of_the_output_gradient(everywhere):
    torch.manual_seed(2)
    ref, fast = _switched(nn.Conv3d(4, 6, 3, padding=1))
    base = torch.randn(1, 4, 6, 5, 7)
    x = base.transpose(3, 4)  # (1, 4, 6, 7, 5), neither layout
    assert torch.allclose(ref(x), fast(x), atol=1e-5)
    grad = torch.randn(1, 6, 6, 7, 5).transpose(2, 4).contiguous().transpose(2, 4)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    ref(xs[0]).backward(grad)
    fast(xs[1]).backward(grad)
    assert torch.allclose(xs[0].grad, xs[1].grad, atol=1e-5)


def test_inference_keeps_the_weight_transform_until_the_weight_changes(everywhere):
    torch.manual_seed(4)
    ref, fast = _switched(nn.Conv3d(5, 6, 3, padding=1))
    x = torch.randn(1, 5, 3, 8, 8)
    with torch.inference_mode():
        assert torch.allclose(ref(x), fast(x), atol=1e-5)
        cached = fast._winograd_u
        fast(x)
        assert fast._winograd_u is cached
    with torch.no_grad():
        ref.weight.mul_(-2.0)
        fast.load_state_dict(ref.state_dict())
        assert torch.allclose(ref(x), fast(x), atol=1e-5)  # the new weights, not the cached transform
    assert "_winograd_u" not in fast.state_dict()


def test_only_wide_same_padded_3x3x3_convolutions_are_switched():
    model = nn.Sequential(nn.Conv3d(128, 128, 3, padding=1), nn.Conv3d(32, 128, 3, padding=1),
                          nn.Conv3d(128, 128, (1, 3, 3), padding=(0, 1, 1)), nn.Conv3d(128, 128, 3, stride=2, padding=1),
                          nn.Conv3d(128, 128, 3, padding=0), nn.Conv3d(128, 128, 5, padding=2),
                          nn.ConvTranspose3d(128, 128, 3, padding=1))
    keys = list(model.state_dict())
    onednn.use_onednn(model)
    assert winograd.use_winograd(model) == 1
    assert [type(m).__name__ for m in model] == ["WinogradConv3d", "OneDNNConv3d", "OneDNNConv3d", "Conv3d",
                                                 "Conv3d", "OneDNNConv3d", "ConvTranspose3d"]
    assert list(model.state_dict()) == keys
    assert winograd.use_winograd(model) == 0  # idempotent
    assert winograd.use_winograd(nn.Conv3d(32, 32, 3, padding=1), min_channels=32) == 1


def test_small_volumes_and_autocast_fall_back_with_the_same_result():
    torch.manual_seed(3)
    ref, fast = _switched(nn.Conv3d(128, 128, 3, padding=1))
    x = torch.randn(1, 128, 2, 6, 6)  # 72 voxels < MIN_VOXELS: the oneDNN path
    assert torch.allclose(ref(x), fast(x), atol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert fast(torch.randn(1, 128, 2, 4, 4)).dtype == torch.bfloat16


def test_a_whole_efficient_model_trains_the_same(everywhere):
    assert_switch_trains_the_same(winograd.use_winograd_and_onednn)


def test_winograd_is_an_execution_option_on_cpu_only():
    cpu = torch.device("cpu")
    assert {"winograd", "channels_last+winograd"} <= set(opt.default_options(cpu, "train"))
    assert opt.parse_options("channels-last-winograd", cpu, "train") == ["eager", "channels_last+winograd"]
    assert "CPU only" in opt.unavailable_reason("winograd", torch.device("cuda"), "train")
    model = build_model(resolve_spec("rsunet-efficient", ["widths=4,128", "norm=group", "norm_groups=2"]), seed=0)
    result = opt.time_option("channels_last+winograd", model, torch.randn(1, 1, 4, 64, 64), "train", repeats=1)
    assert result.status == "ok" and result.seconds > 0
    assert all(type(m) is nn.Conv3d for m in model.modules() if isinstance(m, nn.Conv3d))  # the caller's model is untouched
