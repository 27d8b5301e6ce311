"""em-train's configuration: defaults, YAML, dotted overrides, closest-key errors, regions."""

import pytest
import yaml

from emtools.errors import EmError
from emtools.train import config as cfg

VOLUME = ["data.volumes.0.image=raw.h5:/raw", "data.volumes.0.labels=gt.h5:/gt"]


def resolved(*overrides, path=None):
    return cfg.load_config(path, list(VOLUME) + list(overrides))


def test_defaults_are_filled_in_and_typed():
    c = resolved()
    assert c["train"]["steps"] == 1000 and c["optim"]["lr"] == 1e-3 and c["data"]["patch_zyx"] == [18, 160, 160]
    assert c["model"]["name"] == "rsunet" and c["model"]["heads"] == {"affinity": 3}
    # One target entry per head, the kind taken from the head's name, nearest-neighbour offsets.
    assert c["targets"]["affinity"]["kind"] == "affinity"
    assert c["targets"]["affinity"]["offsets"] == [[-1, 0, 0], [0, -1, 0], [0, 0, -1]]
    assert c["targets"]["affinity"]["loss"] == "bce"
    volume = c["data"]["volumes"][0]
    assert volume["mask"] is None and volume["label_components"] == "none" and volume["weight"] == 1.0


def test_overrides_convert_by_the_type_of_their_key():
    c = resolved("train.steps=2000", "optim.lr=3e-4", "data.patch_zyx=18,160,160", "model=rsunet-efficient",
                 "train.threads=none", "data.augment=flip,rotate", "validation.thresholds=0.4",
                 "model.heads=affinity:3,distance:1", "targets.distance.loss=l1", "train.sync_batchnorm=yes")
    assert c["train"]["steps"] == 2000 and c["optim"]["lr"] == pytest.approx(3e-4)
    assert c["model"]["name"] == "rsunet-efficient" and c["model"]["stride_in"] == [1, 2, 2]
    assert c["train"]["threads"] is None and c["train"]["sync_batchnorm"] is True
    assert [s[0] for s in c["data"]["augment"]] == ["flip", "rotate"]
    assert c["data"]["augment"][0][1]["p"] == 1.0  # options completed by emtools.augment
    assert c["validation"]["thresholds"] == [0.4]
    assert c["targets"]["distance"] == {**c["targets"]["distance"], "kind": "distance", "loss": "l1"}


def test_yaml_file_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "model": "unet2d",
        "data": {"volumes": [{"image": "a.h5", "labels": "b.h5", "val_region": "last 5 z"}],
                 "patch_zyx": [1, 64, 64], "augment": [["elastic", {"p": 0.3}], {"name": "flip", "p": 0.5}]},
        "optim": {"lr": "1e-4", "name": "sgd"},  # YAML 1.1 reads 1e-4 as text: converted by the key's type
        "train": {"steps": 10},
    }))
    c = cfg.load_config(str(path), ["train.steps=20", "data.volumes.1.image=c.h5", "data.volumes.1.labels=d.h5"])
    assert c["model"]["arch"] == "unet2d" and c["optim"]["lr"] == pytest.approx(1e-4) and c["optim"]["name"] == "sgd"
    assert c["train"]["steps"] == 20 and [v["image"] for v in c["data"]["volumes"]] == ["a.h5", "c.h5"]
    assert c["data"]["augment"][0][0] == "elastic" and c["data"]["augment"][0][1]["p"] == 0.3
    assert c["data"]["augment"][1][1]["p"] == 0.5


def test_the_resolved_config_round_trips_through_yaml():
    c = resolved("model.heads=affinity:3,foreground:1", "data.augment=flip,elastic", "model.widths=4,8")
    text = cfg.to_yaml(c)
    assert cfg.resolve(yaml.safe_load(text)) == c
    assert "patch_zyx: [18, 160, 160]" in text  # short lists inline, sections in block style


@pytest.mark.parametrize("override,fragment", [
    ("train.step=5", "did you mean 'train.steps'?"),
    ("optim.learning_rate=1", "did you mean"),
    ("trian.steps=5", "did you mean 'train'?"),
    ("data.volumes.0.lables=x.h5", "did you mean 'data.volumes.0.labels'?"),
    ("targets.affinity.wieght=2", "did you mean 'targets.affinity.weight'?"),
    ("model.widht=4", "did you mean 'widths'?"),
])
def test_unknown_keys_name_the_closest_valid_key(override, fragment):
    with pytest.raises(EmError, match="unknown") as info:
        resolved(override)
    assert fragment in str(info.value)


@pytest.mark.parametrize("override,fragment", [
    ("train.steps=ten", "train.steps='ten' is not an integer"),
    ("train.steps=0", "must be at least 1"),
    ("optim.name=adan", "did you mean 'adam'?"),
    ("data.patch_zyx=1,2", "not a z,y,x triple"),
    ("data.augment=flop", "flop"),
    ("targets.segments.weight=1", "the model has no head 'segments'"),
    ("targets.affinity.loss=mse", "'mse' does not fit a affinity head"),
    (("model.heads=affinity:3,lsd:10", "targets.lsd.loss=bce"), "'bce' does not fit a lsd head; use mse, l1"),
    (("model.heads=affinity:3,lsd:10", "targets.lsd.balance=class"), "balance=class is for binary heads"),
    ("model.heads=mito:1", "set targets.mito.kind"),
    ("targets.affinity.offsets=[[-1,0,0]]", "3 channels but 1 affinity offsets"),
    ("data.volumes.0.val_region=the end", "cannot read 'the end'"),
    ("optim.betas=0.9,1.5", "optim.betas"),
    ("train.steps", "is not key=value"),
    ("data.volumes.5.image=x.h5", "not an index"),
])
def test_bad_values_are_one_line_errors(override, fragment):
    with pytest.raises(EmError) as info:
        resolved(*(override if isinstance(override, tuple) else (override,)))
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_volumes_need_an_image_and_labels_or_probabilities():
    with pytest.raises(EmError, match="needs exactly one of labels or probabilities"):
        cfg.load_config(None, ["data.volumes.0.image=a.h5"])
    with pytest.raises(EmError, match="data.volumes.0.image needs a value"):
        cfg.load_config(None, ["data.volumes.0.labels=a.h5"])
    c = cfg.load_config(None, ["data.volumes.0.image=a.h5", "data.volumes.0.probabilities=p.h5",
                               "model.heads=boundary:1", "data.volumes.0.pseudo_head=boundary"])
    assert c["data"]["volumes"][0]["confidence"] == 0.9
    with pytest.raises(EmError, match="pseudo_head 'boundry' is not a head"):
        cfg.load_config(None, ["data.volumes.0.image=a.h5", "data.volumes.0.probabilities=p.h5",
                               "model.heads=boundary:1", "data.volumes.0.pseudo_head=boundry"])


def test_shape_descriptor_heads_regress_with_mse_by_default():
    c = resolved("model.heads=affinity:3,lsd:10", "targets.lsd.weight=0.5")
    assert c["targets"]["lsd"]["loss"] == "mse" and c["targets"]["affinity"]["loss"] == "bce"
    assert resolved("model.heads=affinity:3,lsd:10", "targets.lsd.loss=l1")["targets"]["lsd"]["loss"] == "l1"


def test_a_custom_head_name_routes_to_a_kind():
    c = resolved("model.heads=neurons:3,mito:1", "targets.neurons.kind=affinity", "targets.mito.kind=foreground",
                 "targets.mito.loss=bce+dice", "targets.mito.weight=0.5", "targets.mito.balance=class")
    assert c["targets"]["neurons"]["kind"] == "affinity" and len(c["targets"]["neurons"]["offsets"]) == 3
    assert c["targets"]["mito"] == {**c["targets"]["mito"], "loss": "bce+dice", "weight": 0.5, "balance": "class"}


def test_digest_ignores_the_run_folder_but_not_the_settings():
    a = resolved("run_dir=a")
    assert cfg.digest(a) == cfg.digest(resolved("run_dir=b"))
    assert cfg.digest(a) != cfg.digest(resolved("train.steps=5"))


@pytest.mark.parametrize("text,parsed", [
    ("all", ("all",)),
    ("last 5 z", ("slab", "last", 5, 0)),
    ("last 5 z sections", ("slab", "last", 5, 0)),
    ("first 64 y", ("slab", "first", 64, 1)),
    ("0:4,:,10:20", ("box", [(0, 4), (None, None), (10, 20)])),
])
def test_region_texts(text, parsed):
    assert cfg.parse_region_text(text) == parsed
