"""Analytic FLOP counting: hand-computed cases, and agreement with torch's FlopCounterMode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from emtools.models import build_model, resolve_spec
from emtools.profile.flops import (conv_flops, counted_flops, crosscheck_layers, layer_level, per_level_shares,
                                   totals, trace_layers)

torch.set_num_threads(1)


class TwoConvs(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Conv3d(2, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.up = nn.ConvTranspose3d(4, 3, (1, 2, 2), (1, 2, 2))

    def forward(self, x):
        return self.up(self.act(self.first(x)))


def test_hand_computed_counts():
    model = TwoConvs()
    layers = trace_layers(model, (1, 2, 4, 8, 8))
    first, act, up = layers
    # first conv: 2 * (4*8*8 output voxels) * 4 out * 2 in * 27 taps
    assert first.flops_fwd == 2 * 256 * 4 * 2 * 27 == 110592
    assert first.flops_bwd == first.flops_fwd  # input is the data: weight gradient only
    assert not first.input_requires_grad and up.input_requires_grad
    assert act.flops_fwd == 0 and act.activation_bytes == 4 * 256 * 4
    # transposed: every one of the 256 input voxels scatters 4 in x 3 out x 4 taps
    assert up.flops_fwd == 2 * 256 * 4 * 3 * 4 and up.flops_bwd == 2 * up.flops_fwd
    assert up.out_shape == (1, 3, 4, 16, 16)
    assert first.params == 2 * 4 * 27 + 4
    assert conv_flops(model.first, (1, 2, 4, 8, 8), (1, 4, 4, 8, 8)) == 110592
    assert counted_flops(model, (1, 2, 4, 8, 8)) == (totals(layers).flops_fwd, totals(layers).flops_bwd)


@pytest.mark.parametrize("preset, overrides, zyx", [
    ("rsunet", ["widths=4,8,16"], (4, 32, 32)),
    ("rsunet-efficient", ["widths=4,8,16"], (4, 32, 32)),
    ("rsunet", ["widths=4,8", "stride_in=1x2x2", "upsample=bilinear"], (2, 32, 32)),
    ("unet3d", ["widths=4,8,16"], (4, 32, 32)),
    ("unet2d", ["widths=4,8,16"], (3, 32, 32)),
])
def test_analytic_matches_flop_counter_per_layer_and_in_total(preset, overrides, zyx):
    spec = resolve_spec(preset, overrides)
    model = build_model(spec)
    shape = (2, 1, *zyx)
    layers = trace_layers(model, shape)
    total = totals(layers)
    assert counted_flops(model, shape) == (total.flops_fwd, total.flops_bwd)
    rows = crosscheck_layers(model, layers)
    assert rows and all(r[1] == r[2] and r[3] == r[4] for r in rows), rows
    assert total.params == sum(p.numel() for p in model.parameters())


def test_paper_sized_counts_and_ratios():
    """At 18x160x160: the Lee et al. U-Net, strided-only, and strided + balanced (FLOPs per iteration)."""
    shape = (1, 1, 18, 160, 160)
    base = totals(trace_layers(build_model(resolve_spec("rsunet")), shape))
    strided = totals(trace_layers(build_model(resolve_spec("rsunet", ["stride_in=1x2x2", "transposed_out=true"])), shape))
    efficient = totals(trace_layers(build_model(resolve_spec("rsunet-efficient")), shape))
    assert base.flops_train == 378_468_979_200
    # paper: 4.44; 4.0 with a 1x5x5 transposed output conv, 3.98 with the default 1x6x6
    assert abs(base.flops_train / strided.flops_train - 3.98) < 0.01
    assert 200e9 < efficient.flops_train < 230e9  # paper: 211.24 GFLOP


def test_levels_and_shares():
    assert layer_level("enc.3.conv1") == 3 and layer_level("up.0.up.1") == 0
    assert layer_level("embed_in.conv") == 0 and layer_level("pool.2") == 2 and layer_level("out") == 0
    layers = trace_layers(build_model(resolve_spec("rsunet", ["widths=4,8,16"])), (1, 1, 4, 32, 32))
    shares = per_level_shares(layers)
    assert sorted(shares) == [0, 1, 2] and abs(sum(shares.values()) - 1) < 1e-9
    assert [l.index for l in layers] == list(range(len(layers)))
    assert layers[0].name == "embed_in.conv" and layers[-1].name == "out"
