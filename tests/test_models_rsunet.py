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
