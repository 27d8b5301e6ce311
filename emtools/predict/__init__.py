"""Blockwise inference: a sliding window with blending and test-time augmentation.

    from emtools.predict import Predictor, make_grid, select_heads
    grid = make_grid(patch_zyx=(18, 160, 160), crop=((2, 20, 20), (2, 20, 20)),
                     overlap=("fraction", (0.5, 0.5, 0.5)))
    maps = Predictor(model, heads, grid, tta=8).predict_block(image, image_box, target)

Modules: :mod:`.windows` (the patch grid in global voxel coordinates, reflected reads),
:mod:`.blending` (Gaussian, bump and constant weights), :mod:`.tta` (16 flips/transposes,
their inverses, affinity channel remapping), :mod:`.engine` (batches, heads, blending),
:mod:`.outputs` (output names, types and metadata), :mod:`.sharding` (torchrun ranks),
:mod:`.autopatch` (the default patch: cheapest within a memory budget), :mod:`.pace` (progress
lines without a terminal, the closing Mvoxel/s and FLOP-share line), :mod:`.loading` (a
checkpoint with its heads, normalisation and receptive field, ready to predict, and an input's
header checked against it), :mod:`.scaled` (blocks of a model that works at a coarser voxel size
than its input: averaged in, interpolated back).
They take an ``nn.Module`` and numpy arrays and do no file I/O (:mod:`.loading` reads the
checkpoint and input headers); ``em-predict`` reads and writes.
"""

# Choices the CLI shows without importing torch.
PRECISIONS = ("fp32", "bf16", "fp16")
OUTPUT_DTYPES = ("float32", "float16", "uint8")

from emtools.predict.blending import BLENDS  # noqa: E402, patch_weights
from emtools.predict.windows import PatchGrid  # noqa: E402, exact_halo, make_grid, parse_overlap, read_padded, resolve_crop

__all__ = ["BLENDS", "OUTPUT_DTYPES", "PRECISIONS", "PatchGrid", "exact_halo", "make_grid", "parse_overlap", "patch_weights", "read_padded",
           "resolve_crop", "Predictor", "predict_volume", "select_heads"]


def __getattr__(name):  # the engine imports torch: load it only when asked for
    if name in ("Predictor", "predict_volume", "select_heads"):
        from emtools.predict import engine

        return getattr(engine, name)
    raise AttributeError(name)
