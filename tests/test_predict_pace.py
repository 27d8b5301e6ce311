"""Progress lines for logs without a terminal, and em-predict's closing summary."""

import logging

import pytest

from emtools.predict import pace


@pytest.fixture
def clock(monkeypatch):
    now = [100.0]
    monkeypatch.setattr(pace, "clock", lambda: now[0])
    return now


def test_a_heartbeat_line_every_interval(clock, caplog):
    caplog.set_level(logging.INFO, logger="emtools")
    beat = pace.Heartbeat("raw.h5", total_voxels=4_000_000, total_blocks=4, enabled=True)
    clock[0] += 10
    beat.advance(1_000_000)  # 10 s < 30 s: quiet
    assert caplog.messages == []
    clock[0] += 30
    beat.advance(1_000_000)
    assert caplog.messages == ["raw.h5: 2/4 blocks, 2.00/4.00 Mvoxel (50%), 0.050 Mvoxel/s, about 40 s left"]
    clock[0] += 5
    beat.advance(1_000_000)  # 5 s after the last line: quiet
    clock[0] += 100
    beat.advance(1_000_000)  # the last block: the summary says the rest
    assert len(caplog.messages) == 1


def test_no_heartbeat_when_disabled(clock, caplog):
    caplog.set_level(logging.INFO, logger="emtools")
    beat = pace.Heartbeat("raw.h5", 10, 3, enabled=False)
    clock[0] += 1000
    beat.advance(5)
    assert caplog.messages == [] and beat.voxels == 5


@pytest.mark.parametrize("seconds,text", [(5, "5 s"), (59.6, "1 min 00 s"), (125, "2 min 05 s"), (7300, "2 h 01 min")])
def test_durations(seconds, text):
    assert pace.duration_text(seconds) == text


def test_summary_lines():
    assert pace.summary(2_000_000, 4.0) == "done: 2000000 voxels in 4.0 s, 0.500 Mvoxel/s"
    line = pace.summary(2_000_000, 4.0, flops=4e10, model_flops_per_voxel=5000.0, peak_flops_per_s=5e10)
    assert line == ("done: 2000000 voxels in 4.0 s, 0.500 Mvoxel/s; 10.00 GFLOP/s (the model's 5 kFLOP/voxel x 4.00 "
                    "for overlap, crop and TTA), 20% of the measured peak 50.0 GFLOP/s")
    assert pace.summary(2_000_000, 4.0, flops=4e10, model_flops_per_voxel=5000.0).endswith(
        "; the share of the peak is measured on runs of 30 s or more")
    # a model at a coarser voxel size sees 1/8 of the input's voxels: the recompute factor is per model voxel
    averaged = pace.summary(2_000_000, 4.0, flops=4e10, model_flops_per_voxel=5000.0, model_voxels=250_000)
    assert "(the model's 5 kFLOP/voxel x 32.00 for overlap, crop and TTA, on 1/8 of the input's voxels (averaged))" \
        in averaged


@pytest.mark.parametrize("name,overrides,patch_zyx", [
    ("rsunet-efficient", ["widths=4,6,8"], (8, 48, 48)),
    ("rsunet", ["widths=4,6,8"], (6, 40, 40)),
    ("unet3d", ["widths=4,6,8"], (8, 24, 40)),
    ("unet2d", ["widths=4,6,8"], (3, 40, 24)),
])
def test_flops_per_patch_scaled_from_a_small_trace_equal_the_full_count(name, overrides, patch_zyx):
    """Counted on the CPU at the smallest size and scaled by the voxels: the same as tracing the
    whole patch on the meta device (which costs seconds at its first use in a process)."""
    from emtools.models import build_model, resolve_spec
    from emtools.profile.flops import totals, trace_layers

    spec = resolve_spec(name, overrides)
    model = build_model(spec).eval()
    full = totals(trace_layers(model, (1, spec.in_channels, *patch_zyx))).flops_fwd
    assert pace.flops_per_patch_of(model, spec, patch_zyx) == full > 0
