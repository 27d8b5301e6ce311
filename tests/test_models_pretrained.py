"""Fine-tuning from a checkpoint: weights carried over head by head, checks, shipped files."""

import os

import numpy as np
import pytest
import torch

from emtools.errors import EmError
from emtools.models import build_model
from emtools.models import pretrained
from emtools.models.checkpoint import load_model, read_checkpoint, save_checkpoint
from emtools.models.spec import spec_from_dict
from emtools.models.weights import PRETRAINED, WEIGHTS_DIR

SPECS = {  # one with a transposed output conv (channels on axis 1), one plain head conv (axis 0)
    "efficient": {"name": "rsunet-efficient", "widths": [4, 8, 8], "pools": [[1, 2, 2], [1, 2, 2]]},
    "unet3d": {"name": "unet3d", "widths": [4, 8], "pools": [[1, 2, 2]], "kernels": [[1, 3, 3]] * 2},
}


def _saved(tmp_path, base, heads, seed=1):
    spec = spec_from_dict({**base, "heads": heads})
    model = build_model(spec, seed=seed)
    path = save_checkpoint(str(tmp_path / "base.pt"), model, spec, {"voxel_size_nm": [10, 10, 10]})
    return model, read_checkpoint(path), path


@pytest.mark.parametrize("arch", list(SPECS))
def test_shared_heads_keep_their_channels_and_new_heads_start_fresh(tmp_path, arch):
    old, payload, _ = _saved(tmp_path, SPECS[arch], {"affinity": 3, "long": 2, "boundary": 1})
    new = build_model(spec_from_dict({**SPECS[arch], "heads": {"boundary": 1, "foreground": 1, "affinity": 3}}),
                      seed=7)
    untouched = {k: v.clone() for k, v in new.state_dict().items()}
    fresh = pretrained.load_for_finetuning(new, payload)
    assert fresh == ["foreground"]
    out = "out" if arch == "efficient" else "head"
    axis = 1 if arch == "efficient" else 0
    old_w, new_w = old.state_dict()[f"{out}.weight"], new.state_dict()[f"{out}.weight"]
    assert torch.equal(new_w.narrow(axis, 0, 1), old_w.narrow(axis, 5, 1))  # boundary
    assert torch.equal(new_w.narrow(axis, 2, 3), old_w.narrow(axis, 0, 3))  # affinity
    assert torch.equal(new_w.narrow(axis, 1, 1), untouched[f"{out}.weight"].narrow(axis, 1, 1))  # fresh
    assert torch.equal(new.state_dict()[f"{out}.bias"][2:], old.state_dict()[f"{out}.bias"][:3])
    for key, value in old.state_dict().items():
        if not key.startswith(out):
            assert torch.equal(new.state_dict()[key], value), key


def test_same_heads_load_exactly(tmp_path):
    old, payload, _ = _saved(tmp_path, SPECS["efficient"], {"affinity": 3})
    new = build_model(spec_from_dict({**SPECS["efficient"], "heads": {"affinity": 3}}), seed=3)
    assert pretrained.load_for_finetuning(new, payload) == []
    assert all(torch.equal(new.state_dict()[k], v) for k, v in old.state_dict().items())


def test_another_backbone_is_refused_in_one_line(tmp_path):
    _, payload, path = _saved(tmp_path, SPECS["efficient"], {"affinity": 3})
    other = spec_from_dict({**SPECS["efficient"], "widths": [4, 8, 16], "heads": {"affinity": 3}})
    with pytest.raises(EmError, match=r"another architecture \(widths: \[4,8,8\] vs \[4,8,16\]\)"):
        pretrained.check_compatible(payload, other, path)
    renamed_heads = spec_from_dict({**SPECS["efficient"], "heads": {"boundary": 1}})
    pretrained.check_compatible(payload, renamed_heads, path)  # heads may differ


def test_voxel_size_must_match_within_five_percent_unless_forced(tmp_path, caplog):
    _, payload, path = _saved(tmp_path, SPECS["efficient"], {"affinity": 3})
    pretrained.check_voxel_size(payload, (10.4, 9.7, 10), path)
    with pytest.raises(EmError, match="trained at voxel size 10,10,10 nm but the data is 40,4,4 nm"):
        pretrained.check_voxel_size(payload, (40, 4, 4), path)
    pretrained.check_voxel_size(payload, (40, 4, 4), path, force=True)
    assert "(--force)" in caplog.text


def test_resolve_names_paths_and_typos(tmp_path):
    _, _, path = _saved(tmp_path, SPECS["efficient"], {"affinity": 3})
    assert pretrained.resolve(path) == path
    with pytest.raises(EmError, match="did you mean 'fibsem-affinity'"):
        pretrained.resolve("fibsem_affinity")
    with pytest.raises(EmError, match="neither a checkpoint file nor a shipped model"):
        pretrained.resolve(str(tmp_path / "missing.pt"))


def test_package_halves_the_file_and_records_provenance(tmp_path):
    model, _, path = _saved(tmp_path, SPECS["efficient"], {"affinity": 3})
    dest = pretrained.package(path, str(tmp_path / "shipped.pt"), "demo", {"trained_on": "x", "scores": {"voi": 1}})
    loaded, spec, extra = load_model(dest)
    assert extra["pretrained"] == {"name": "demo", "trained_on": "x", "scores": {"voi": 1}}
    assert extra["voxel_size_nm"] == [10, 10, 10]
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            assert loaded.state_dict()[key].dtype == torch.float32
            assert torch.allclose(loaded.state_dict()[key], value, rtol=1e-3, atol=1e-4), key
    assert "training" not in read_checkpoint(dest)


@pytest.mark.parametrize("name", list(PRETRAINED))
def test_every_shipped_model_is_installed_loads_and_records_where_it_came_from(name):
    path = os.path.join(WEIGHTS_DIR, PRETRAINED[name].file)
    assert os.path.exists(path), f"{name}: {path} is missing"
    assert os.path.getsize(path) < 16 * 2**20  # small enough to ship in the package
    model, spec, extra = load_model(pretrained.resolve(name))
    record = extra["pretrained"]
    assert record["name"] == name
    for key in ("config", "trained_on", "held_out", "scores", "train_minutes"):
        assert key in record, key
    assert extra["normalization"] and extra["voxel_size_nm"] and extra["heads"]
    x = torch.zeros((1, 1, *extra["input_size_zyx"]))
    with torch.no_grad():
        assert model.eval()(x).shape[1] == spec.out_channels


def test_em_predict_takes_a_shipped_model_by_its_name(tmp_path):
    from click.testing import CliRunner

    from emtools import io
    from emtools.cli.predict import main
    from emtools.meta import Metadata

    image = np.random.default_rng(0).integers(0, 256, (24, 64, 64), dtype=np.uint8)
    io.write_volume(f"{tmp_path}/raw.h5:/image", image, Metadata(voxel_size_nm=(10, 10, 10)))
    result = CliRunner().invoke(main, ["fibsem-affinity", f"{tmp_path}/raw.h5:/image", "--heads", "affinity",
                                       "--patch", "24,64,64", "--overlap", "0", "--threads", "1", "-o", f"{tmp_path}/affs.h5:/affs", "-q"])
    assert result.exit_code == 0, result.output
    affs, meta = io.read_volume(f"{tmp_path}/affs.h5:/affs")
    assert affs.shape == (3, 24, 64, 64)
    assert meta.provenance[-1]["params"]["checkpoint"] == pretrained.resolve("fibsem-affinity")


def test_the_shipped_mitochondria_model_segments_held_out_lucchi_at_5_nm(tmp_path):
    """mito-fibsem (10 nm) on a 5 nm block it never saw (Lucchi++ z 110-125): em-predict averages the
    input, interpolates the maps back to 5 nm, and the foreground matches the masks (IoU 0.87 with
    the whole block as context when it was packaged)."""
    from click.testing import CliRunner

    from conftest import shared_data
    from emtools import io
    from emtools.cli.predict import main
    from emtools.meta import Metadata
    from emtools.tiling.geometry import Box

    folder = shared_data("lucchi_pp", "train")
    box = Box((110, 256, 512), (126, 512, 768))
    with io.open_volume(str(folder / "image"), voxel_size_nm=(5, 5, 5)) as source:
        image = source.read(box)
    with io.open_volume(str(folder / "label"), voxel_size_nm=(5, 5, 5)) as source:
        mask = source.read(box) != 0
    io.write_volume(f"{tmp_path}/raw.h5:/image", image, Metadata(voxel_size_nm=(5, 5, 5)))
    result = CliRunner().invoke(main, ["mito-fibsem", f"{tmp_path}/raw.h5:/image", "--heads", "foreground",
                                       "--threads", "2", "-o", f"{tmp_path}/fg.h5:/fg"])
    assert result.exit_code == 0, result.output
    foreground, meta = io.read_volume(f"{tmp_path}/fg.h5:/fg")
    assert foreground.shape == image.shape and meta.voxel_size_nm == (5, 5, 5)
    inside = foreground > 0.5
    iou = (inside & mask).sum() / (inside | mask).sum()
    assert 0.05 < mask.mean() and iou > 0.75, iou
