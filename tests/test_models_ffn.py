"""The flood-filling network: spec presets and checks, the module's shapes and parameter count,
the zero-initialised update, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.models.checkpoint import load_model, save_checkpoint
from emtools.models.ffn_spec import FFN_PRESETS, FFNSpec
from emtools.models.spec import spec_from_dict


def test_default_is_google_fib25_model():
    spec = resolve_spec("ffn")
    assert isinstance(spec, FFNSpec) and spec.arch == "ffn"
    assert spec.fov_zyx == (33, 33, 33) and spec.deltas_zyx == (8, 8, 8)
    assert spec.depth == 12 and spec.features == 32 and spec.kernel_zyx == (3, 3, 3)
    model = build_model(spec)
    # entry: 2->32 and 32->32 convs; 11 residual modules of two 32->32 convs; 1x1x1 32->1 output
    conv = 27 * 32 * 32 + 32
    expected = (27 * 2 * 32 + 32) + conv + 11 * 2 * conv + (32 + 1)
    assert sum(p.numel() for p in model.parameters()) == expected == 638_433
    assert spec.convolutions == 24


def test_aniso_and_small_presets():
    aniso = resolve_spec("ffn-aniso")
    assert aniso.fov_zyx == (17, 33, 33) and aniso.deltas_zyx == (4, 8, 8)
    small = resolve_spec("ffn-small", ["depth=3"])
    assert small.depth == 3 and small.features == 16
    assert set(FFN_PRESETS) == {"ffn", "ffn-aniso", "ffn-small"}


def test_same_size_output_and_update_starts_at_zero():
    spec = resolve_spec("ffn", ["depth=2", "features=4", "fov_zyx=9,11,13", "deltas_zyx=2,3,3"])
    model = build_model(spec, seed=0)
    x = torch.randn(3, 2, 9, 11, 13)
    out = model(x)
    assert out.shape == (3, 1, 9, 11, 13)
    # zero-initialised output conv: the map comes back as it went in
    assert torch.equal(out, x[:, 1:2])
    # ... and one optimizer step moves it (the gradient reaches the output conv)
    target = torch.full_like(out, 0.95)
    torch.nn.functional.binary_cross_entropy_with_logits(out, target).backward()
    assert float(model.out.weight.grad.abs().sum()) > 0


def test_flops_per_fov_counts_every_convolution():
    spec = resolve_spec("ffn", ["depth=2", "features=4", "fov_zyx=5", "deltas_zyx=1"])
    # 2->4, 4->4 (entry), 4->4, 4->4 (one residual module), 4->1 (1x1x1); 2 FLOPs per multiply-add
    per_voxel = 2 * 27 * (2 * 4 + 3 * 4 * 4) + 2 * 4
    assert spec.flops_per_fov() == per_voxel * 125


def test_spec_round_trip_and_checkpoint(tmp_path):
    spec = resolve_spec("ffn-aniso", ["depth=2", "features=4"])
    assert spec_from_dict(spec.to_dict()) == spec
    model = build_model(spec, seed=3)
    with torch.no_grad():
        model.out.weight.normal_()
    path = save_checkpoint(str(tmp_path / "ffn.pt"), model, spec, extra={"kind": "ffn"})
    loaded, loaded_spec, extra = load_model(path)
    assert loaded_spec == spec and extra == {"kind": "ffn"}
    x = torch.randn(1, 2, *spec.fov_zyx)
    assert torch.equal(loaded(x), model(x))


def test_same_seed_same_weights():
    spec = resolve_spec("ffn", ["depth=2", "features=4", "fov_zyx=5", "deltas_zyx=1"])
    a = [p.detach().numpy() for p in build_model(spec, seed=5).parameters()]
    b = [p.detach().numpy() for p in build_model(spec, seed=5).parameters()]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("overrides, message", [
    (["fov_zyx=32,33,33"], "must be odd"),
    (["deltas_zyx=16,8,8"], "the z step must lie in 0..15"),
    (["deltas_zyx=0,0,0"], "at least one axis"),
    (["kernel_zyx=2"], "must be odd"),
    (["depth=0"], "at least 1"),
    (["widths=1,2"], "unknown ffn spec key 'widths'"),
])
def test_bad_specs_are_one_line_errors(overrides, message):
    with pytest.raises(EmError, match=message):
        resolve_spec("ffn", overrides)


def test_unknown_model_suggests_ffn():
    with pytest.raises(EmError, match="did you mean 'ffn'"):
        resolve_spec("fnn")
    assert resolve_spec("ffn", ["deltas_zyx=0,8,8"]).deltas_zyx == (0, 8, 8)


def test_an_ffn_name_over_unet_settings_is_refused():
    from emtools.models.spec import spec_from_dict

    unet = resolve_spec("rsunet").to_dict()
    with pytest.raises(EmError, match="flood-filling network, but the other model settings are a U-Net's"):
        spec_from_dict({**unet, "name": "ffn-small"})
