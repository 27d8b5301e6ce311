"""The engine: heads and activations, output types, and exactness of blockwise and chunked
prediction against one whole-volume prediction with real (random-weight) models."""

import logging

import numpy as np
import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model, resolve_spec
from emtools.models.geometry import receptive_field
from emtools.models.heads import default_heads, head_spec
from emtools.predict.engine import Predictor, activate, parse_channel_ranges, predict_volume, select_heads
from emtools.predict.windows import exact_halo, make_grid, read_padded
from emtools.tiling.geometry import Box

torch.set_num_threads(1)
HEADS = default_heads([("affinity", 3), ("foreground", 1), ("semantic", 3)])


def test_select_heads():
    all_heads = select_heads(HEADS)
    assert [(s.name, s.start, s.channels) for s in all_heads] == [
        ("affinity", 0, (0, 1, 2)), ("foreground", 3, (0,)), ("semantic", 4, (0, 1, 2))]
    picked = select_heads(HEADS, ["semantic", "affinity"], {"affinity": (1, 3)})
    assert [(s.name, s.start, s.channels) for s in picked] == [("semantic", 4, (0, 1, 2)), ("affinity", 0, (1, 2))]
    assert picked[1].offsets == [[0, -1, 0], [0, 0, -1]]
    with pytest.raises(EmError, match="no head 'boundary' in the model; its heads are affinity, foreground, semantic"):
        select_heads(HEADS, ["boundary"])
    with pytest.raises(EmError, match="head affinity has channels 0:3"):
        select_heads(HEADS, None, {"affinity": (2, 5)})
    with pytest.raises(EmError, match="names a head that is not output"):
        select_heads(HEADS, ["foreground"], {"affinity": (0, 1)})
    assert parse_channel_ranges(["affinity=0:3", " x=1:2"]) == {"affinity": (0, 3), "x": (1, 2)}
    for bad in ("affinity", "affinity=3", "=0:1", "a=x:1"):
        with pytest.raises(EmError, match="write HEAD=FIRST:END"):
            parse_channel_ranges([bad])


def test_joined_affinity_heads_are_one_selection():
    heads = [head_spec("affinity", {"kind": "affinity", "channels": 3}),
             head_spec("long", {"kind": "affinity", "channels": 2, "offsets": [[-3, 0, 0], [0, -9, 0]]}),
             head_spec("foreground", {"kind": "foreground", "channels": 1})]
    (joined,) = select_heads(heads, ["affinity+long"])
    assert (joined.name, joined.start, joined.channels) == ("affinity+long", 0, (0, 1, 2, 3, 4))
    assert joined.offsets == [[-1, 0, 0], [0, -1, 0], [0, 0, -1], [-3, 0, 0], [0, -9, 0]]
    with pytest.raises(EmError, match="must follow each other in the model's order"):
        select_heads(heads, ["long+affinity"])
    with pytest.raises(EmError, match="only affinity heads can be joined"):
        select_heads(heads, ["long+foreground"])
    with pytest.raises(EmError, match="no head 'short'"):
        select_heads(heads, ["affinity+short"])


def test_activations():
    x = torch.tensor([[[[[-2.0]]], [[[0.0]]], [[[3.0]]]]])  # (1, 3, 1, 1, 1)
    assert torch.allclose(activate("affinity", x), torch.sigmoid(x))
    assert torch.allclose(activate("distance", x), torch.tanh(x))
    soft = activate("semantic", x)
    assert torch.allclose(soft.sum(1), torch.ones(1, 1, 1, 1)) and torch.allclose(soft, torch.softmax(x, 1))


def _model(name, norm="batch"):
    spec = resolve_spec(name, ["widths=4,8", "depth=2", f"norm={norm}", "heads=affinity:3,foreground:1"])
    model = build_model(spec, seed=7).eval()
    if norm == "batch":  # non-trivial running statistics, as after training
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return spec, model


def _whole_and_grid(spec, model, image, patch, overlap=0.5, tta=1):
    _, lo, hi = receptive_field(spec)
    crop = (tuple(min(a, p // 8) for a, p in zip(lo, patch)), tuple(min(a, p // 8) for a, p in zip(hi, patch)))
    grid = make_grid(patch, crop, ("fraction", (0.0, overlap, overlap)))
    heads = default_heads(spec.heads)
    predictor = Predictor(model, heads, grid, batch=4, tta=tta, blend="bump")
    box = Box.from_shape(image.shape)
    need = grid.input_box(box)
    whole = predictor.predict_block(read_padded(lambda b: image[box.local(b)], need, box), need, box)
    return predictor, grid, whole, (lo, hi)


@pytest.mark.parametrize("name,norm", [("rsunet", "batch"), ("rsunet-efficient", "instance")])
def test_blocks_equal_the_whole_volume(name, norm):
    """Blocks read the same patch inputs as the whole volume: exact, even with instance norm."""
    spec, model = _model(name, norm)
    image = np.random.default_rng(0).standard_normal((10, 40, 36)).astype(np.float32)
    predictor, grid, whole, _ = _whole_and_grid(spec, model, image, (4, 16, 16))
    box = Box.from_shape(image.shape)
    for block in (Box((0, 0, 0), (6, 23, 36)), Box((6, 23, 5), (10, 40, 20))):
        need = grid.input_box(block)
        out = predictor.predict_block(read_padded(lambda b: image[box.local(b)], need, box), need, block)
        for head in whole:
            assert np.abs(out[head] - whole[head][(slice(None),) + box.local(block)]).max() < 1e-5


@pytest.mark.parametrize("tta", [1, 4])
def test_a_chunk_with_the_exact_halo_equals_the_whole_volume(tta):
    """Only a chunk's data (mirrored beyond it) is used: with the exact halo its responsible
    region matches the whole-volume prediction; with too small a halo it does not."""
    spec, model = _model("rsunet")
    image = np.random.default_rng(1).standard_normal((6, 56, 56)).astype(np.float32)
    predictor, grid, whole, (lo, hi) = _whole_and_grid(spec, model, image, (4, 24, 24), tta=tta)
    need_lo, need_hi = exact_halo(grid, lo, hi)
    volume = Box.from_shape(image.shape)
    responsible = Box((0, 18, 17), (6, 40, 38))
    for shrink, exact in ((0, True), (3, False)):
        read = Box(tuple(max(r - h + shrink, 0) for r, h in zip(responsible.begin, need_lo)),
                   tuple(min(r + h - shrink, n) for r, h, n in zip(responsible.end, need_hi, image.shape)))
        chunk = image[volume.local(read)]
        need = grid.input_box(read)
        out = predictor.predict_block(read_padded(lambda b: chunk[read.local(b)], need, read), need, read)
        diff = max(np.abs(out[h][(slice(None),) + read.local(responsible)] - whole[h][(slice(None),) + volume.local(responsible)]).max()
                   for h in whole)
        assert (diff < 1e-5) == exact, (shrink, diff)


def test_batch_size_channels_last_onednn_winograd_and_bf16_agree(monkeypatch):
    from emtools.models import winograd

    monkeypatch.setattr(winograd, "MIN_CHANNELS", 1)  # the test model is thin and small
    monkeypatch.setattr(winograd, "MIN_VOXELS", 1)
    spec, model = _model("rsunet-efficient")
    image = np.random.default_rng(2).standard_normal((4, 24, 24)).astype(np.float32)
    heads = default_heads(spec.heads)
    kwargs = dict(patch_zyx=(4, 16, 16), overlap=("fraction", (0.0, 0.5, 0.5)))
    base = predict_volume(model, image, heads, batch=1, **kwargs)
    # onednn and winograd last: they switch the model's convolutions over in place
    for extra in ({"batch": 3}, {"channels_last": True}, {"channels_last": True, "onednn": True}):
        out = predict_volume(model, image, heads, **kwargs, **extra)
        assert max(np.abs(out[h] - base[h]).max() for h in base) < 1e-5, extra
    # Winograd's F(4,3) tiles round differently: ~1e-5 relative, so a looser bound than the rest
    out = predict_volume(model, image, heads, **kwargs, channels_last=True, winograd=True)
    assert max(np.abs(out[h] - base[h]).max() for h in base) < 1e-4
    out = predict_volume(model, image, heads, precision="bf16", **kwargs)  # autocast: close, not equal
    assert 0 < max(np.abs(out[h] - base[h]).mean() for h in base) < 0.02


@pytest.mark.parametrize("name", ["rsunet", "rsunet-efficient"])
@pytest.mark.parametrize("wanted", [["foreground"], ["affinity"], ["foreground", "affinity"]])
def test_fused_model_computes_only_the_heads_asked_for(name, wanted):
    """With fuse, the last convolution is cut down to the selected heads' channels (remapped in
    the raw output); the maps equal the unfused model's, in any selection order."""
    spec, model = _model(name)
    image = np.random.default_rng(4).standard_normal((4, 24, 24)).astype(np.float32)
    heads = default_heads(spec.heads)
    selection = select_heads(heads, wanted)
    kwargs = dict(patch_zyx=(4, 16, 16), overlap=("fraction", (0.0, 0.5, 0.5)), selection=selection)
    base = predict_volume(model, image, heads, **kwargs)
    out = predict_volume(model, image, heads, fuse=True, channels_last=True, **kwargs)
    assert set(out) == set(wanted)
    assert max(np.abs(out[h] - base[h]).max() for h in base) < 1e-5
    grid = make_grid((4, 16, 16), ((0, 0, 0), (0, 0, 0)), ("fraction", (0.0, 0.5, 0.5)))
    predictor = Predictor(model, heads, grid, selection=selection, fuse=True)
    keep = sorted(c for s in selection for c in range(s.start, s.start + s.head.channels))
    assert predictor.forward.model.out.out_channels == len(keep)  # 4 channels in all: cut unless both
    assert predictor.raw_start == {s.name: keep.index(s.start) for s in selection}


def test_a_2d_model_predicts_the_same_in_channels_last():
    # unet2d has 4D weights: channels_last (NHWC), not the 3D format (which would fail on them)
    spec, model = _model("unet2d")
    image = np.random.default_rng(3).standard_normal((3, 32, 32)).astype(np.float32)
    heads = default_heads(spec.heads)
    kwargs = dict(patch_zyx=(1, 32, 32), overlap=("fraction", (0.0, 0.0, 0.0)))
    base = predict_volume(model, image, heads, **kwargs)
    out = predict_volume(model, image, heads, channels_last=True, **kwargs)
    assert max(np.abs(out[h] - base[h]).max() for h in base) < 1e-5


def test_fp16_needs_a_gpu():
    grid = make_grid((4, 8, 8), ((0, 0, 0), (0, 0, 0)), ("fraction", (0.0,) * 3))
    with pytest.raises(EmError, match="--precision fp16 needs a GPU"):
        Predictor(torch.nn.Identity(), [head_spec("foreground", {"channels": 1})], grid, precision="fp16")
    with pytest.raises(EmError, match="--batch 0 must be at least 1"):
        Predictor(torch.nn.Identity(), [head_spec("foreground", {"channels": 1})], grid, batch=0)


def test_compile_failure_falls_back_with_a_warning(monkeypatch, caplog):
    def broken_compile(model):
        def run(x):
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    image = np.random.default_rng(3).standard_normal((4, 8, 8)).astype(np.float32)
    heads = [head_spec("distance", {"channels": 1})]
    with caplog.at_level(logging.WARNING, logger="emtools"):
        out = predict_volume(torch.nn.Identity(), image, heads, patch_zyx=(4, 8, 8), compile=True)
    assert np.allclose(out["distance"][0], np.tanh(image), atol=1e-6)
    assert [r.getMessage() for r in caplog.records] == [
        "torch.compile failed (no compiler here); running the model uncompiled"]


def test_predict_volume_at_a_coarser_voxel_size():
    """averaged_zyx: the image (mirrored to whole blocks) averaged down, predicted, and the maps
    interpolated back to the image's shape."""
    from emtools import resample

    spec, model = _model("rsunet")
    image = np.random.default_rng(5).standard_normal((4, 27, 30)).astype(np.float32)
    heads = default_heads(spec.heads)
    kwargs = dict(patch_zyx=(4, 16, 16), overlap=("fraction", (0.0, 0.5, 0.5)))
    got = predict_volume(model, image, heads, averaged_zyx=(1, 2, 2), **kwargs)
    fine = Box.from_shape(image.shape)
    coarse = resample.coarse_box(fine, (1, 2, 2))  # 4x14x15: y 27 is mirrored to 28
    padded = read_padded(lambda part: image[fine.local(part)], resample.fine_box(coarse, (1, 2, 2)), fine)
    low = predict_volume(model, resample.downsample_mean(padded, (1, 2, 2)), heads, **kwargs)
    for name, values in low.items():
        assert got[name].shape == (values.shape[0], *image.shape)
        np.testing.assert_array_equal(got[name], resample.upsample_linear(values, coarse, (1, 2, 2), fine))
