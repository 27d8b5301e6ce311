"""emtools.segment.jobs: the em-watershed and em-agglomerate segment/replay jobs as library calls."""

import dataclasses

import numpy as np
import pytest
from conftest import voronoi_cells

from emtools import io
from emtools.affinities import affinities_from_labels
from emtools.errors import EmError
from emtools.meta import Metadata
from emtools.segment import watershed
from emtools.segment.jobs import (
    WatershedSettings,
    agglomerate_volume,
    replay_volume,
    watershed_labels,
    watershed_volume,
)


_cells = voronoi_cells  # Voronoi cells with 0 on the boundaries (tests/conftest.py)


@pytest.fixture
def affs(tmp_path):
    values = (affinities_from_labels(_cells()) * 0.9 + 0.05).astype(np.float32)
    spec = str(tmp_path / "affs.h5:/affs")
    io.write_volume(spec, values, Metadata(axes="czyx", voxel_size_nm=(40, 4, 4)))
    return spec, values


@pytest.mark.parametrize("field, value, message", [
    ("threshold", 1.5, "--threshold must be in [0, 1], got 1.5"),
    ("seed_foreground", -0.1, "--seed-foreground must be in [0, 1], got -0.1"),
    ("seed_contour", 2, "--seed-contour must be in [0, 1], got 2"),
    ("mask_foreground", 1.01, "--mask-foreground must be in [0, 1], got 1.01"),
    ("radius", -1, "--radius must not be negative, got -1"),
    ("min_distance", -1, "--min-distance must not be negative, got -1"),
    ("sigma", -0.5, "--sigma must not be negative, got -0.5"),
    ("min_size", -3, "--min-size must not be negative, got -3"),
    ("min_seed_size", -1, "--min-seed-size must not be negative, got -1"),
    ("mode", "4d", "unknown --mode value '4d'"),
    ("seed_method", "distanse", "did you mean 'distance'?"),
])
def test_settings_validate_with_the_tools_messages(field, value, message):
    assert WatershedSettings().validate() == WatershedSettings()
    with pytest.raises(EmError) as info:
        dataclasses.replace(WatershedSettings(), **{field: value}).validate()
    assert message in str(info.value)


def test_ranges_are_checked_before_the_rest():
    bad = WatershedSettings(threshold=2, radius=-1, mode="4d")
    with pytest.raises(EmError, match="--threshold"):
        bad.validate()


@pytest.mark.parametrize("instance, contour, distance, message", [
    (None, True, False, "--contour and --distance are for --instance bc/bcd"),
    (None, False, True, "--contour and --distance are for --instance bc/bcd"),
    ("bc", False, False, "--instance bc needs --contour"),
    ("bcd", True, False, "--instance bcd needs --distance"),
    ("bc", True, True, "--distance is for --instance bcd"),
])
def test_instance_inputs(instance, contour, distance, message):
    with pytest.raises(EmError, match=message):
        WatershedSettings(instance=instance).check_inputs(contour, distance)
    WatershedSettings(instance="bcd").check_inputs(True, True)
    WatershedSettings().check_inputs(False, False)


def test_mode_and_record():
    settings = WatershedSettings()
    assert settings.resolved_mode((40, 4, 4)) == "2d" and settings.resolved_mode((8, 4, 4)) == "2d"
    assert settings.resolved_mode((6, 4, 4)) == "3d" and WatershedSettings(mode="3d").resolved_mode((40, 4, 4)) == "3d"
    record = settings.record((40, 4, 4), from_affinities=True)
    assert list(record) == ["mode", "voxel_size_nm", "affinity_reduce", "seeds", "threshold", "radius", "min_distance",
                            "sigma", "min_seed_size", "min_size", "small", "invert"]
    assert record["mode"] == "2d" and record["seeds"] == "distance"
    assert "affinity_reduce" not in settings.record((40, 4, 4), from_affinities=False)
    instance = WatershedSettings(instance="bc").record((1, 1, 1), from_affinities=False)
    assert list(instance) == ["mode", "voxel_size_nm", "instance", "seed_foreground", "seed_contour", "seed_distance",
                              "mask_foreground", "mask_distance", "min_seed_size", "min_size", "invert"]


def test_watershed_labels_on_arrays(affs):
    _, values = affs
    settings = WatershedSettings(mode="3d", min_size=5)
    labels = watershed_labels(values, settings, (40, 4, 4))
    boundary = watershed.boundary_from_affinities(values, "mean")
    np.testing.assert_array_equal(labels, watershed_labels(boundary, settings, (40, 4, 4)))
    expected = watershed.fragments(boundary, mode="3d", threshold=0.3, voxel_size_nm=(40, 4, 4), radius=4.0,
                                   min_distance=1.0, sigma=0.0, min_seed_size=1, min_size=5, merge_small=True)
    np.testing.assert_array_equal(labels, expected)


def test_instances_on_arrays():
    z, y, x = np.ogrid[:12, :24, :40]
    fg = (((z - 6) ** 2 + (y - 12) ** 2 + (x - 10) ** 2 <= 36) | ((z - 6) ** 2 + (y - 12) ** 2 + (x - 29) ** 2 <= 36))
    labels = watershed_labels(fg.astype(np.float32), WatershedSettings(instance="bc", min_size=20),
                              contour=np.zeros(fg.shape, np.float32))
    assert labels.max() == 2 and not labels[~fg].any()


def test_watershed_volume_writes_and_skips(tmp_path, affs):
    spec, values = affs
    out = str(tmp_path / "f.h5:/frags")
    settings = WatershedSettings(min_size=5)
    assert watershed_volume(spec, out, settings) == str(tmp_path / "f.h5")
    labels, meta = io.read_volume(out)
    np.testing.assert_array_equal(labels, watershed_labels(values, settings, (40, 4, 4)))
    assert meta.attrs["fragment_count"] == labels.max()
    assert meta.provenance[-1]["tool"] == "em-watershed"
    assert meta.provenance[-1]["params"] == settings.record((40.0, 4.0, 4.0), from_affinities=True)
    before = (tmp_path / "f.h5").stat().st_mtime_ns
    assert watershed_volume(spec, out, WatershedSettings(mode="3d"), skip_existing=True) == str(tmp_path / "f.h5")
    assert (tmp_path / "f.h5").stat().st_mtime_ns == before


def test_watershed_volume_checks_everything_before_reading(tmp_path):
    missing = str(tmp_path / "nope.h5")  # never opened: the arguments fail first
    with pytest.raises(EmError, match="unknown compression"):
        watershed_volume(missing, str(tmp_path / "o.h5"), compression="zip")
    with pytest.raises(EmError, match="output folder does not exist"):
        watershed_volume(missing, str(tmp_path / "no" / "o.h5"))
    with pytest.raises(EmError, match="--voxel-size"):
        watershed_volume(missing, str(tmp_path / "o.h5"), voxel_size_nm=(0, 1, 1))
    with pytest.raises(EmError, match="--radius"):
        watershed_volume(missing, str(tmp_path / "o.h5"), WatershedSettings(radius=-1))
    with pytest.raises(EmError, match="needs --contour"):
        watershed_volume(missing, str(tmp_path / "o.h5"), WatershedSettings(instance="bc"))
    with pytest.raises(EmError, match="no such file"):
        watershed_volume(missing, str(tmp_path / "o.h5"))


def test_agglomerate_and_replay(tmp_path, affs):
    spec, _ = affs
    frags = watershed_volume(spec, str(tmp_path / "f.h5"), WatershedSettings(min_size=5))
    seen = []
    written = agglomerate_volume(frags, spec, "0.2,0.6", str(tmp_path / "s_{threshold}.h5"),
                                 history_path=str(tmp_path / "h.tsv"), on_written=seen.append)
    assert written == seen == [str(tmp_path / "s_0.2.h5"), str(tmp_path / "s_0.6.h5"), str(tmp_path / "h.tsv")]
    segs = [io.read_volume(p)[0] for p in written[:2]]
    assert len(np.unique(segs[0])) > len(np.unique(segs[1]))
    replayed = replay_volume(frags, str(tmp_path / "h.tsv"), [0.6], str(tmp_path / "r.h5"))
    assert replayed == [str(tmp_path / "r.h5")]
    np.testing.assert_array_equal(io.read_volume(replayed[0])[0], segs[1])
    meta = io.read_volume(replayed[0])[1]
    assert meta.attrs["threshold"] == 0.6 and "fragment_count" not in meta.attrs
    with pytest.raises(EmError, match="rerun the agglomeration"):
        replay_volume(frags, str(tmp_path / "h.tsv"), 0.7, str(tmp_path / "x.h5"))
    with pytest.raises(EmError, match="--bins must be in 1..65536"):
        agglomerate_volume(frags, spec, 0.5, str(tmp_path / "x.h5"), score="quantile", bins=0)


# ----------------------------------------------------------------------------- mutex watershed

LONG_OFFSETS = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -5, 0), (0, 0, -5))


@pytest.fixture
def long_range(tmp_path):
    from emtools.targets import affinity_target

    labels = _cells()
    values, _ = affinity_target(labels, LONG_OFFSETS)
    values = (values * 0.9 + 0.05).astype(np.float32)
    spec = str(tmp_path / "lr.h5:/affs")
    attrs = {"affinity_offsets": [list(o) for o in LONG_OFFSETS]}
    io.write_volume(spec, values, Metadata(axes="czyx", voxel_size_nm=(8, 8, 8), attrs=attrs))
    return spec, values, labels


@pytest.mark.parametrize("changes, message", [
    ({"method": "mutx"}, "unknown --method value 'mutx'"),
    ({"method": "mutex", "bias": 1.5}, "--bias must be in [-1, 1], got 1.5"),
    ({"method": "mutex", "stride": (1, 0, 2)}, "--stride must be three positive integers z,y,x, got 1,0,2"),
    ({"method": "mutex", "long_range_fraction": 0.0}, "--long-range-fraction must be in (0, 1], got 0"),
    ({"method": "mutex", "offsets": ((-1, 0, 0), (0, -1, 0))}, "--offsets: the first three offsets must be"),
    ({"method": "mutex", "offsets": ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (0, -3))}, "is not three integers"),
    ({"bias": 0.2}, "--bias is for --method mutex"),
    ({"offsets": LONG_OFFSETS}, "--offsets is for --method mutex"),
    ({"subset_seed": 3}, "--subset-seed is for --method mutex"),
    ({"method": "mutex", "threshold": 0.5}, "--threshold is for --method watershed"),
    ({"method": "mutex", "invert": True}, "--invert is for --method watershed"),
    ({"method": "mutex", "instance": "bc"}, "--instance is for --method watershed"),
])
def test_mutex_settings_are_validated(changes, message):
    with pytest.raises(EmError) as info:
        WatershedSettings(**changes).validate()
    assert message in str(info.value)
    WatershedSettings(method="mutex", offsets=LONG_OFFSETS, bias=-0.2, stride=(1, 2, 2),
                      long_range_fraction=0.5, subset_seed=4).validate()


def test_mutex_record():
    settings = WatershedSettings(method="mutex", stride=(1, 2, 2))
    record = settings.record((8, 8, 8), from_affinities=True, offsets=[list(o) for o in LONG_OFFSETS])
    assert list(record) == ["mode", "voxel_size_nm", "method", "offsets", "bias", "stride", "long_range_fraction",
                            "subset_seed", "min_size", "small"]
    assert record["method"] == "mutex" and record["stride"] == [1, 2, 2] and record["offsets"][3] == [-2, 0, 0]
    assert "method" not in WatershedSettings().record((8, 8, 8), from_affinities=True)  # unchanged default


def test_mutex_labels_on_arrays(long_range):
    from emtools.segment.mutex import mutex_watershed

    _, values, cells = long_range
    settings = WatershedSettings(method="mutex", offsets=LONG_OFFSETS, mode="3d", min_size=5)
    labels = watershed_labels(values, settings)
    np.testing.assert_array_equal(labels, mutex_watershed(values, LONG_OFFSETS, mode="3d", min_size=5))
    # clean affinities: each cell is one segment of its own (membrane voxels, label 0, aside)
    per_cell = [np.unique(labels[cells == c]) for c in range(1, int(cells.max()) + 1)]
    assert all(ids.size == 1 for ids in per_cell) and len({int(ids[0]) for ids in per_cell}) == len(per_cell)
    with pytest.raises(EmError, match="needs the affinity offsets"):
        watershed_labels(values, WatershedSettings(method="mutex"))


def test_mutex_volume_reads_the_offsets_from_the_file(tmp_path, long_range):
    spec, values, _ = long_range
    settings = WatershedSettings(method="mutex", min_size=5)
    out = watershed_volume(spec, str(tmp_path / "s.h5:/seg"), settings)
    labels, meta = io.read_volume(out + ":/seg")
    resolved = WatershedSettings(method="mutex", offsets=LONG_OFFSETS, min_size=5)
    np.testing.assert_array_equal(labels, watershed_labels(values, resolved, (8, 8, 8)))
    assert meta.attrs["fragment_count"] == labels.max() and meta.axes == "zyx"
    assert meta.provenance[-1]["params"] == settings.record((8.0, 8.0, 8.0), True, [list(o) for o in LONG_OFFSETS])
    # the same offsets given again are fine; other ones are refused before any work
    watershed_volume(spec, str(tmp_path / "t.h5"), resolved)
    other = WatershedSettings(method="mutex", offsets=LONG_OFFSETS[:5] + ((0, 0, -7),))
    with pytest.raises(EmError, match="differ from the affinity_offsets"):
        watershed_volume(spec, str(tmp_path / "u.h5"), other)
    assert not (tmp_path / "u.h5").exists()
