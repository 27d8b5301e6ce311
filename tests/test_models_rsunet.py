"""Model construction: output shapes for every option, heads, determinism, per-section 2D."""

from __future__ import annotations

import pytest
import torch

from emtools.models import build_model, resolve_spec, split_heads
from emtools.models.layers import Add, Concat

torch.set_num_threads(1)

SMALL = ["widths=4,8,12", "pools=1x2x2,2x2x2"]


def run(spec, zyx=(4, 16, 16), batch=2, eval_mode=False):
    model = build_model(spec, seed=0)
    model.train(not eval_mode)
    x = torch.randn(batch, spec.in_channels, *zyx, generator=torch.Generator().manual_seed(1))
    return model, model(x)


@pytest.mark.parametrize("overrides", [
    [],
    ["stride_in=1x2x2", "transposed_out=true"],
    ["stride_in=1x2x2"],  # upsample + conv at full resolution
    ["stride_in=2x2x2", "transposed_out=true"],
    ["upsample=bilinear", "norm=group", "activation=relu"],
    ["upsample=nearest", "norm=instance", "activation=leaky"],
    ["norm=none", "residual=false"],
    ["in_channels=2", "heads=affinity:6,foreground:1,contour:1"],
])
def test_rsunet_output_has_the_input_size(overrides):
    spec = resolve_spec("rsunet", SMALL + overrides)
    model, out = run(spec, zyx=(4, 32, 32))
    assert out.shape == (2, spec.out_channels, 4, 32, 32)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_rsunet_uses_additive_skips_and_residual_modules():
    model = build_model(resolve_spec("rsunet", SMALL))
    adds = [m for m in model.modules() if isinstance(m, Add)]
    # one residual sum per module (3 encoder + 2 decoder) and one skip sum per join (2)
    assert len(adds) == 7
    assert not any(isinstance(m, Concat) for m in model.modules())


def test_efficient_model_strided_in_and_transposed_out():
    spec = resolve_spec("rsunet-efficient", ["widths=4,8,16", "pools=2x2x2,1x2x2"])
    model, out = run(spec, zyx=(4, 32, 32), batch=1)
    assert out.shape == (1, 3, 4, 32, 32)
    assert model.embed_in.conv.stride == (1, 2, 2)
    assert isinstance(model.out, torch.nn.ConvTranspose3d) and model.out.stride == (1, 2, 2)


@pytest.mark.parametrize("stride, out_kernel, expected", [
    ("1x2x2", None, (1, 6, 6)),   # embed 1x5x5 rounded up to the stride
    ("1x2x2", "1x5x5", (1, 5, 5)),
    ("1x2x2", "1x4x4", (1, 4, 4)),
    ("1x3x3", None, (1, 6, 6)),
    ("1x3x3", "1x7x7", (1, 7, 7)),
    ("2x2x2", None, (2, 6, 6)),
    ("2x2x2", "3x6x6", (3, 6, 6)),
])
def test_transposed_out_is_exactly_stride_times_larger(stride, out_kernel, expected):
    extra = [f"out_kernel={out_kernel}"] if out_kernel else []
    spec = resolve_spec("rsunet", ["widths=4,8", "pools=1x2x2", f"stride_in={stride}", "transposed_out=true", *extra])
    assert spec.transposed_kernel == expected
    model, out = run(spec, zyx=(4, 36, 36), batch=1)
    assert model.out.kernel_size == expected and out.shape == (1, 3, 4, 36, 36)


def test_default_transposed_out_has_no_checkerboard():
    """Constant coarse features through all-ones weights: every fine voxel away from the border reads
    the same number of taps with the default kernel (a multiple of the stride); 1x5x5 alternates."""
    def interior(out_kernel):
        spec = resolve_spec("rsunet-efficient", ["widths=4,8", "pools=1x2x2", *out_kernel])
        layer = build_model(spec, seed=0).out
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.bias.zero_()
            fine = layer(torch.ones(1, 4, 2, 12, 12))
        return fine[0, 0, :, 6:-6, 6:-6]
    flat = interior([])
    assert torch.equal(flat, torch.full_like(flat, flat[0, 0, 0].item()))
    legacy = interior(["out_kernel=1x5x5"])
    assert set(legacy.unique().tolist()) == {4 * 4.0, 4 * 6.0, 4 * 9.0}  # 2x2, 2x3 and 3x3 taps


@pytest.mark.parametrize("preset, zyx", [("unet3d", (4, 16, 16)), ("unet2d", (3, 32, 32))])
def test_plain_unets(preset, zyx):
    spec = resolve_spec(preset, ["widths=4,8,16", "norm=group", "heads=semantic:5"])
    model, out = run(spec, zyx=zyx)
    assert out.shape == (2, 5, *zyx)
    assert any(isinstance(m, Concat) for m in model.modules())
    conv = torch.nn.Conv2d if preset == "unet2d" else torch.nn.Conv3d
    assert any(isinstance(m, conv) for m in model.modules())


def test_unet2d_keeps_sections_apart():
    spec = resolve_spec("unet2d", ["widths=4,8"])
    model = build_model(spec, seed=0).eval()
    x = torch.randn(1, 1, 3, 16, 16)
    y = x.clone()
    y[:, :, 1] = 5.0  # change section 1 only
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :, 0], b[:, :, 0]) and torch.equal(a[:, :, 2], b[:, :, 2])
    assert not torch.equal(a[:, :, 1], b[:, :, 1])


def test_split_heads_and_seeded_init_is_deterministic():
    spec = resolve_spec("rsunet", SMALL + ["heads=affinity:3,foreground:1,distance:2"])
    a, b = build_model(spec, seed=7), build_model(spec, seed=7)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    c = build_model(spec, seed=8)
    assert not torch.equal(a.out.weight, c.out.weight)
    x = torch.randn(1, 1, 4, 16, 16)
    heads = split_heads(spec, a.eval()(x))
    assert list(heads) == ["affinity", "foreground", "distance"]
    assert [t.shape[1] for t in heads.values()] == [3, 1, 2]


def test_channels_last_gives_the_same_result():
    spec = resolve_spec("rsunet", SMALL)
    model = build_model(spec, seed=0).eval()
    x = torch.randn(1, 1, 4, 16, 16)
    with torch.no_grad():
        reference = model(x)
        fast = model.to(memory_format=torch.channels_last_3d)(x.contiguous(memory_format=torch.channels_last_3d))
    assert torch.allclose(reference, fast, atol=1e-4)
