"""Inference fusion (the ``fuse`` execution option): the same maps as the model, fewer layers, inputs untouched."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from emtools.errors import EmError
from emtools.models import build_model, channels_last_input, execution, fusion, resolve_spec, to_channels_last

torch.set_num_threads(1)


def _with_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval mode with running statistics and affine parameters far from the identity, so that a
    wrong fold shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator))
            module.running_var.copy_(torch.rand(n, generator=generator) * 2 + 0.2)
            with torch.no_grad():
                module.weight.copy_(torch.randn(n, generator=generator))
                module.bias.copy_(torch.randn(n, generator=generator))
    return model.eval()


def _fused_and_checked(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """Fuse ``model`` (with statistics) and assert it gives the same output on ``x``; the fused model."""
    model = _with_statistics(model)
    with torch.inference_mode():
        expected = model(x)
        fused = fusion.fuse_for_inference(model)
        got = fused(x)
    assert torch.allclose(got, expected, atol=1e-6)
    return fused


class _Dynamic(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > 0 else x  # control flow on values: fx cannot trace it


MODELS = [
    ("rsunet", ["widths=4,6,8", "heads=affinity:3"], (6, 20, 20)),
    ("rsunet-efficient", ["widths=4,6,8", "heads=affinity:3,foreground:1"], (6, 24, 24)),
    ("rsunet-efficient", ["widths=4,6,8", "activation=relu", "norm=group", "norm_groups=2"], (6, 24, 24)),
    ("rsunet", ["widths=4,6,8", "activation=leaky", "norm=none", "upsample=bilinear"], (6, 20, 20)),
    ("unet3d", ["widths=4,6,8", "heads=affinity:3"], (8, 20, 20)),
    ("unet2d", ["widths=4,6,8", "heads=affinity:2"], (3, 20, 20)),
]


@pytest.mark.parametrize("name,overrides,shape", MODELS)
@pytest.mark.parametrize("channels_last", [False, True])
def test_fused_model_gives_the_same_maps_and_leaves_input_and_model_alone(name, overrides, shape, channels_last):
    torch.manual_seed(0)
    model = _with_statistics(build_model(resolve_spec(name, overrides)))
    x = torch.randn(2, 1, *shape)
    with torch.inference_mode():
        expected = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fusion.fuse_for_inference(model)
    if channels_last:
        x = channels_last_input(x, to_channels_last(fused))
    before = x.clone()
    with torch.inference_mode():
        got = fused(x)
    assert torch.equal(x, before)  # never written in place
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max()) + 1e-6)
    # the original is untouched (the fused model is a copy)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert model.training is False and isinstance(model.enc, nn.ModuleList)


def test_batch_norms_after_convolutions_disappear_and_the_rest_run_in_place():
    model = _with_statistics(build_model(resolve_spec("rsunet-efficient", ["widths=4,6,8"])))
    fused = fusion.fuse_for_inference(model)
    kinds = [type(m) for m in fused.modules()]
    norms_before = sum(isinstance(m, nn.BatchNorm3d) for m in model.modules())
    assert nn.BatchNorm3d not in kinds
    # conv-norm pairs fold; a norm after a residual sum becomes one in-place multiply-add
    affines = sum(k is fusion.ChannelAffine for k in kinds)
    assert 0 < affines < norms_before
    assert all(m.inplace for m in fused.modules() if isinstance(m, nn.ELU))
    assert any(k is fusion.PhaseConvTranspose for k in kinds)  # the 1x6x6 transposed output conv
    assert "_add_" in fused.code


def test_a_shared_tensor_is_never_overwritten():
    class TwoUses(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 2, 3, padding=1)
            self.act = nn.ELU()
            self.bn = nn.BatchNorm3d(2)

        def forward(self, x):
            y = self.conv(x)
            return self.act(y) + self.bn(y) + y  # y is read three times: nothing may write over it

    fused = _fused_and_checked(TwoUses(), torch.randn(1, 1, 3, 5, 5))
    assert not any(getattr(m, "inplace", False) for m in fused.modules())
    assert not any(isinstance(m, fusion.ChannelAffine) for m in fused.modules())  # out-of-place affine instead


def test_modules_called_from_several_places_are_left_alone():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(2, 2, 3, padding=1)
            self.bn = nn.BatchNorm3d(2)
            self.act = nn.ELU()

        def forward(self, x):
            y = self.act(self.bn(self.conv(x)))  # conv, norm and activation each used twice
            return self.act(self.bn(self.conv(y))) + self.conv(x)

    fused = _fused_and_checked(Shared(), torch.randn(1, 2, 3, 6, 6))
    assert isinstance(fused.bn, nn.BatchNorm3d) and not fused.act.inplace  # nothing folded or made in place
    assert not fusion.keep_output_channels(fused, [0])


@pytest.mark.parametrize("kernel,stride,padding,extra", [
    ((1, 6, 6), (1, 2, 2), (0, 2, 2), (0, 0, 0)),  # the efficient model's output conv
    ((3, 4, 4), (1, 2, 2), (1, 1, 1), (0, 0, 0)),
    ((4, 4, 4), (2, 2, 2), (1, 1, 1), (0, 0, 0)),
    ((1, 5, 5), (1, 2, 2), (0, 2, 2), (0, 1, 1)),
    ((1, 7, 7), (1, 3, 3), (0, 2, 2), (0, 0, 0)),
])
@pytest.mark.parametrize("channels_last", [False, True])
def test_transposed_convolution_as_phases_is_exact(kernel, stride, padding, extra, channels_last):
    torch.manual_seed(1)
    ref = nn.ConvTranspose3d(5, 3, kernel, stride, padding, output_padding=extra)
    phases = fusion.phase_conv(ref)
    assert phases is not None
    x = torch.randn(2, 5, 4, 7, 6)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
        phases = phases.to(memory_format=torch.channels_last_3d)
    with torch.no_grad():
        expected, got = ref(x), phases(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-5)
    assert got.is_contiguous(memory_format=torch.channels_last_3d) == channels_last


def test_a_2d_transposed_convolution_as_phases_is_exact():
    torch.manual_seed(2)
    ref = nn.ConvTranspose2d(4, 3, 6, 2, 2)
    phases = fusion.phase_conv(ref)
    x = torch.randn(2, 4, 7, 5)
    with torch.no_grad():
        assert torch.allclose(phases(x), ref(x), atol=1e-5)


@pytest.mark.parametrize("module", [
    nn.ConvTranspose3d(4, 4, (1, 2, 2), (1, 2, 2)),  # kernel = stride: nothing to gain
    nn.ConvTranspose3d(4, 4, 3, 1, 1),  # stride 1
    nn.ConvTranspose3d(4, 4, 4, 2, 0),  # output not 2x the input
    nn.ConvTranspose3d(4, 4, 4, 2, 1, groups=2),
    nn.ConvTranspose3d(4, 4, 3, 2, 1, dilation=2),
])
def test_transposed_convolutions_left_alone_where_not_exact_or_not_worth_it(module):
    assert fusion.phase_conv(module) is None


def test_training_mode_and_untraceable_models_are_refused():
    model = build_model(resolve_spec("rsunet", ["widths=4,6,8"]))
    with pytest.raises(fusion.NotFusable, match="training mode"):
        fusion.fuse_for_inference(model.train())

    with pytest.raises(fusion.NotFusable, match="cannot trace"):
        fusion.fuse_for_inference(_Dynamic().eval())


def test_the_execution_option_fuses_and_falls_back_with_a_warning(caplog):
    model = _with_statistics(build_model(resolve_spec("rsunet", ["widths=4,6,8"])))
    run = execution.apply(model, ["fuse", "channels_last"], "cpu", mode="infer")
    assert isinstance(run.model, torch.fx.GraphModule)
    x = torch.randn(1, 1, 6, 20, 20)
    with torch.inference_mode():
        assert torch.allclose(run(run.input(x)), model(x), atol=1e-5)
    with pytest.raises(EmError, match="inference only"):
        execution.apply(model, ["fuse"], "cpu", mode="train")

    with pytest.raises(EmError, match="execution option 'fuse': torch.fx cannot trace"):
        execution.apply(_Dynamic().eval(), ["fuse"], "cpu", mode="infer")
    run = execution.apply(_Dynamic().eval(), ["fuse"], "cpu", mode="infer", fallback=True)
    assert not isinstance(run.model, torch.fx.GraphModule) and "running the model unfused" in caplog.text


def test_a_copy_of_the_fused_model_runs_the_same():
    model = _with_statistics(build_model(resolve_spec("rsunet-efficient", ["widths=4,6,8"])))
    fused = fusion.fuse_for_inference(model)
    x = torch.randn(1, 1, 6, 24, 24)
    with torch.inference_mode():
        assert torch.equal(copy.deepcopy(fused)(x), fused(x))


@pytest.mark.parametrize("name,overrides,shape", [MODELS[0], MODELS[1], MODELS[4]])
def test_keeping_output_channels_computes_exactly_those(name, overrides, shape):
    torch.manual_seed(0)
    model = _with_statistics(build_model(resolve_spec(name, overrides)))
    x = torch.randn(1, 1, *shape)
    fused = fusion.fuse_for_inference(model)
    with torch.inference_mode():
        full = fused(x)
        assert fusion.keep_output_channels(fused, [0, 2])
        assert torch.allclose(fused(x), full[:, [0, 2]], atol=1e-6)


def test_output_channels_are_left_alone_where_the_output_is_not_a_convolution():
    model = _with_statistics(build_model(resolve_spec("unet2d", ["widths=4,6,8", "heads=affinity:2"])))
    fused = fusion.fuse_for_inference(model)  # its output is reshaped back from sections
    assert not fusion.keep_output_channels(fused, [0])
    assert not fusion.keep_output_channels(model, [0])  # not a fused graph
    rsunet = fusion.fuse_for_inference(_with_statistics(build_model(resolve_spec("rsunet", ["widths=4,6,8"]))))
    assert not fusion.keep_output_channels(rsunet, [2, 0])  # unsorted
