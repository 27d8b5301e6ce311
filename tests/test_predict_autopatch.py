"""The default patch of em-predict: memory budgets, the cheapest valid patch within one, errors."""

import math

import pytest

from emtools.errors import EmError
from emtools.predict import autopatch
from emtools.predict.autopatch import GIB, MemoryModel, choose_patch, parse_memory
from emtools.predict.windows import crop_margins

RF = ((3, 17, 17), (3, 17, 17))  # margins below and above of a small model
MEMORY = MemoryModel(activation_bytes_per_voxel=500.0, flops_per_voxel=7000.0, in_channels=1, out_channels=4,
                     kept_channels=4)


TRAIN = (4, 24, 24)  # the training input size: the auto crop is 1/8 of it (0,3,3), whatever the patch


def crop_of(axis, size):
    lo, hi = crop_margins("auto", (size,) * 3, *RF, train_zyx=TRAIN)
    return lo[axis], hi[axis]


def choose(extent, volume=None, budget=GIB, overlap=None, **kwargs):
    return choose_patch((1, 2, 2), TRAIN, extent, volume or extent, overlap, MEMORY, budget, 1, extent,
                        crop_of, **kwargs)


@pytest.mark.parametrize("text,expected", [
    ("4G", 4 * GIB), ("4g", 4 * GIB), ("512M", 512 << 20), ("1.5GiB", 3 * GIB // 2), ("64KB", 64 << 10),
    ("2000000", 2_000_000), (" 1T ", 1 << 40),
])
def test_memory_sizes(text, expected):
    assert parse_memory(text) == expected


@pytest.mark.parametrize("text,fragment", [
    ("4X", "--memory '4X': give a size such as 4G, 512M or 1.5GiB (binary units)"),
    ("", "give a size such as 4G"), ("G", "give a size such as 4G"), ("-1G", "give a size such as 4G"),
    ("4 GB extra", "give a size such as 4G"), ("0", "--memory 0: the budget must be above zero"),
])
def test_malformed_memory_sizes(text, fragment):
    with pytest.raises(EmError, match=None) as error:
        parse_memory(text)
    assert fragment in str(error.value)


def test_format_bytes_rounds_up_to_what_memory_takes_back():
    assert autopatch.format_bytes(8 * GIB) == "8G"
    assert autopatch.format_bytes(1.21 * (1 << 20)) == "1.3M"
    assert parse_memory(autopatch.format_bytes(123_456_789)) >= 123_456_789
    assert autopatch.format_bytes(100) == "100"


def test_the_default_budget_is_fixed_and_a_choice_beyond_free_memory_warns():
    # a fixed default, whatever the machine has free: the patch, and so the maps, must not depend on it
    assert autopatch.default_budget() == 4 * GIB
    choice = autopatch.Choice((8, 64, 64), 3 * GIB, 4 * GIB, 1, 1.0, ("fraction", (0.0, 0.0, 0.0)))
    assert autopatch.memory_warning(choice, available=8 * GIB) is None
    assert autopatch.memory_warning(choice, available=2 * GIB) == (
        "the chosen patch may need up to 3G but only 2G is available; pass a smaller --memory (or --patch) "
        "if the run fails")


def test_a_small_volume_is_covered_by_one_patch_without_overlap():
    choice = choose((8, 72, 72))
    assert choice.patch_zyx == (8, 78, 78)  # kept 8,72,72 after the auto crop of 0,3,3 per side
    assert choice.patches == 1 and choice.overlap == ("fraction", (0.0, 0.0, 0.0))
    assert math.isclose(choice.recompute, 8 * 78 * 78 / (8 * 72 * 72))


def _grid_cost(patch, overlap, extent):
    """Patches the real grid computes for a block at the volume's start, and voxels per block voxel."""
    from emtools.predict.windows import make_grid, resolve_crop
    from emtools.tiling.geometry import Box

    grid = make_grid(patch, resolve_crop("auto", patch, *RF, TRAIN), overlap)
    count = grid.count(Box.from_shape(extent))
    return count, count * math.prod(patch) / math.prod(extent)


def test_a_large_volume_gets_the_cheapest_patch_that_fits_with_overlap():
    extent, volume = (32, 512, 512), (500, 5000, 5000)
    roomy = choose(extent, volume=volume, budget=4 * GIB)
    tight = choose(extent, volume=volume, budget=GIB // 4)
    for choice, budget in ((roomy, 4 * GIB), (tight, GIB // 4)):
        assert choice.overlap == ("fraction", (autopatch.AUTO_OVERLAP,) * 3) and choice.estimate_bytes <= budget
        assert all(p % f == 0 and p >= t for p, f, t in zip(choice.patch_zyx, (1, 2, 2), (4, 24, 24)))
        assert (choice.patches, choice.recompute) == pytest.approx(_grid_cost(choice.patch_zyx, choice.overlap, extent))
    def cost(choice):  # what the choice minimises: network FLOPs plus the work per patch
        return (choice.recompute * math.prod(extent) * MEMORY.flops_per_voxel
                + choice.patches * autopatch.PATCH_OVERHEAD_FLOP)

    assert math.prod(tight.patch_zyx) < math.prod(roomy.patch_zyx) and cost(tight) > cost(roomy)
    old = _grid_cost((4, 24, 24), ("fraction", (0.5, 0.5, 0.5)), extent)[1]  # the training crop, half overlap
    assert old > 15 and roomy.recompute < 6


def test_the_estimate_counts_the_batch_and_the_block_buffers():
    patch, block = (4, 24, 24), (8, 72, 72)
    one = MEMORY.total(patch, 1, block)
    assert MEMORY.total(patch, 2, block) - one == pytest.approx(MEMORY.patch_bytes(patch, 1))
    assert MEMORY.block_bytes(block, patch) == 4 * (2 * 12 * 96 * 96 + 5 * 8 * 72 * 72)


def test_an_explicit_overlap_is_kept():
    choice = choose((8, 72, 72), overlap=("fraction", (0.5, 0.5, 0.5)))
    assert choice.overlap == ("fraction", (0.5, 0.5, 0.5))
    assert choice.patch_zyx[0] >= 4


def test_tta_with_transposes_gets_a_square_patch():
    choice = choose((8, 40, 72), square_yx=True)
    assert choice.patch_zyx[1] == choice.patch_zyx[2]


def test_a_budget_below_the_smallest_patch_says_what_is_needed():
    need = MEMORY.total((4, 24, 24), 1, (8, 72, 72))
    with pytest.raises(EmError) as error:
        choose((8, 72, 72), budget=int(need) - 1, budget_label="--memory 1M")
    assert str(error.value) == (
        f"--memory 1M is too small for any patch: the smallest, 4,24,24, needs about {autopatch.format_bytes(need)} "
        "(with the block buffers of 8,72,72 voxels); give --memory "
        f"{autopatch.format_bytes(need)} or more, a smaller --block, or --patch")
    assert choose((8, 72, 72), budget=parse_memory(autopatch.format_bytes(need))).patch_zyx >= (4, 24, 24)


def test_the_memory_model_grows_with_the_voxels():
    import torch

    from emtools.models import build_model, resolve_spec

    torch.manual_seed(0)
    spec = resolve_spec("rsunet", ["widths=4,8", "depth=2", "heads=affinity:3"])
    model = autopatch.memory_model(build_model(spec, seed=0), 1, (1, 2, 2), kept_channels=3)
    assert model.out_channels == 3 and model.activation_bytes_per_voxel > 100 and model.flops_per_voxel > 1000
