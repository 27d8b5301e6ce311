"""The eval-mode registry: one registration per mode, and em-eval's choices, help and checks follow."""

import click
import numpy as np
import pytest

from emtools.cli.eval import main
from emtools.errors import EmError
from emtools.evaluate import (
    MODES,
    EvalSettings,
    contingency_table,
    eval_mode,
    get_mode,
)
from emtools.evaluate.modes import check_settings, modes_help, modes_using, objects_help

TODAY = ("neuron", "sections", "instance", "semantic", "synapse")


@pytest.fixture
def toy_mode():
    """A mode registered for one test, removed afterwards (the registry is global)."""

    @eval_mode("count", "voxels counted in the table\n(a toy mode).", skip="gt-zero", inputs="labels",
               uses=("threshold",), objects_help="per pair")
    def count(table, settings, objects, volumes):
        columns = {"gt": table.gt, "seg": table.seg, "count": table.count} if objects else None
        return {"counted": table.counted}, columns

    try:
        yield MODES["count"]
    finally:
        del MODES["count"]


def _help_text():
    return main.get_help(click.Context(main, info_name="em-eval"))


def test_the_registered_modes_are_todays_in_order():
    assert tuple(MODES) == TODAY
    for name, mode in MODES.items():
        assert mode.name == name and mode.help and callable(mode.score)


def test_every_registered_mode_is_a_cli_choice_and_documented_in_help():
    (mode_option,) = [p for p in main.params if p.name == "mode"]
    assert tuple(mode_option.type.choices) == tuple(MODES)
    text = _help_text()
    for name, mode in MODES.items():
        first = mode.help.splitlines()[0]
        assert f"  {name:<10}{first}" in text, name
    assert modes_help() in main.help


def test_option_help_names_the_modes_that_read_each_option():
    helps = {p.name: p.help for p in main.params if isinstance(p, click.Option)}
    assert helps["threshold"].startswith("semantic/synapse: ")
    assert helps["per_class"].startswith("semantic: ")
    assert helps["size_classes"].startswith("instance: ")
    assert helps["gt_zero"].startswith("neuron/sections: ") and helps["pred_zero"].startswith("neuron/sections: ")
    assert helps["distance_nm"].startswith("synapse: ")
    assert objects_help() in helps["csv_path"]
    assert objects_help() == "neuron: per ground-truth object; instance: per object; semantic --per-class: per class"


def test_unknown_mode_names_the_closest_one():
    with pytest.raises(EmError, match=r"^unknown eval mode 'nueron'; did you mean 'neuron'\?$"):
        get_mode("nueron")
    with pytest.raises(EmError, match="choose from neuron, sections, instance, semantic, synapse"):
        get_mode("xyz")


def test_settings_checks_keep_their_one_line_messages():
    neuron, semantic = get_mode("neuron"), get_mode("semantic")
    cases = [
        (neuron, EvalSettings(iou_threshold=0.0), False, "--iou must be in (0, 1], got 0"),
        (neuron, EvalSettings(threshold=0.5), False,
         "--threshold applies to --mode semantic or synapse, and must be a finite number"),
        (semantic, EvalSettings(threshold=float("inf")), False, "--threshold applies to --mode semantic or synapse"),
        (neuron, EvalSettings(per_class=True), False,
         "--per-class applies to --mode semantic with integer class labels (no --threshold)"),
        (semantic, EvalSettings(per_class=True, threshold=0.5), False, "--per-class applies to --mode semantic"),
        (neuron, EvalSettings(size_classes=(1, 2)), False, "--size-classes applies to --mode instance only"),
        (neuron, EvalSettings(distance_nm=-1.0), False, "--distance-threshold must be a finite distance >= 0 nm"),
        (semantic, EvalSettings(), True,
         "--csv writes per-object tables: use it with --mode neuron, instance, or semantic --per-class"),
        (get_mode("synapse"), EvalSettings(), True, "--csv writes per-object tables"),
        (neuron, EvalSettings(gt_zero="ignored"), False, "unknown gt_zero 'ignored'; did you mean 'ignore'?"),
        (neuron, EvalSettings(pred_zero="crem"), False, "unknown pred_zero 'crem'; did you mean 'cremi'?"),
    ]
    for mode, settings, objects, message in cases:
        with pytest.raises(EmError) as caught:
            check_settings(mode, settings, objects)
        assert message in str(caught.value) and "\n" not in str(caught.value), message
    check_settings(semantic, EvalSettings(per_class=True), objects=True)
    check_settings(get_mode("synapse"), EvalSettings(threshold=0.5))


def test_unknown_setting_names_the_closest_one():
    assert EvalSettings.of({"threshold": 0.5}) == EvalSettings(threshold=0.5)
    with pytest.raises(EmError, match="unknown eval setting 'treshold'; did you mean 'threshold'"):
        EvalSettings.of({"treshold": 0.5})


def test_each_mode_scores_its_table():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 3, (3, 8, 8)).astype(np.uint8)
    seg = rng.integers(0, 3, (3, 8, 8)).astype(np.uint8)
    neuron = get_mode("neuron")
    settings = EvalSettings(gt_zero="label")
    metrics, columns = neuron.score(contingency_table(gt, seg, neuron.skip_for(settings)), settings, True, None)
    assert metrics["gt_zero"] == "label" and metrics["counted_voxels"] == gt.size
    assert list(columns["gt_id"]) == [0, 1, 2]
    assert neuron.skip_for(EvalSettings()) == "gt-zero"
    semantic = get_mode("semantic")
    assert semantic.inputs_for(EvalSettings()) == "foreground"
    assert semantic.inputs_for(EvalSettings(per_class=True)) == "classes"
    table = contingency_table(gt, seg, "none")
    metrics, columns = semantic.score(table, EvalSettings(per_class=True), True, None)
    assert set(metrics["classes"]) == {"1", "2"} and list(columns["class"]) == [1, 2]
    assert not semantic.has_objects(EvalSettings()) and semantic.has_objects(EvalSettings(per_class=True))
    assert get_mode("synapse").whole_volume and not neuron.whole_volume


def test_sections_mode_scores_each_section_on_its_own(tmp_path):
    """Per-section scores equal neuron scores of each 2D section; their means are the result;
    sections without labelled voxels are left out."""
    from emtools import io
    from emtools.evaluate import evaluate_files, neuron_metrics
    from emtools.meta import Metadata

    rng = np.random.default_rng(3)
    gt = rng.integers(1, 4, (4, 16, 16)).astype(np.uint32)
    gt[2] = 0
    seg = gt.copy()
    seg[0, :8] += 10  # section 0 split, section 1 exact, section 3 merged
    seg[3] = 1
    seg[1] = gt[1] * 7  # the same partition under other ids
    meta = Metadata(voxel_size_nm=(50, 4, 4))
    io.write_volume(f"{tmp_path}/gt.h5:/gt", gt, meta)
    io.write_volume(f"{tmp_path}/seg.h5:/seg", seg, meta)
    report = evaluate_files(f"{tmp_path}/seg.h5:/seg", f"{tmp_path}/gt.h5:/gt", "sections")
    assert report["sections_scored"] == 3 and [r["z"] for r in report["sections"]] == [0, 1, 3]
    expected = [neuron_metrics(seg[z], gt[z]) for z in (0, 1, 3)]
    for row, want in zip(report["sections"], expected):
        assert row["adapted_rand_error"] == pytest.approx(want["adapted_rand_error"])
        assert row["voi_split"] == pytest.approx(want["voi_split"])
    assert report["sections"][1]["adapted_rand_error"] == pytest.approx(0.0, abs=1e-12)
    assert report["sections"][0]["voi_split"] > 0 and report["sections"][2]["voi_merge"] > 0
    assert report["adapted_rand_error"] == pytest.approx(np.mean([w["adapted_rand_error"] for w in expected]))
    assert report["voi"] == pytest.approx(np.mean([w["voi"] for w in expected]))


def test_a_new_mode_is_one_registration(toy_mode):
    assert "count" in MODES and modes_using("threshold") == ["semantic", "synapse", "count"]
    assert "  count     voxels counted in the table\n            (a toy mode)." in modes_help()
    assert "count: per pair" in objects_help()
    with pytest.raises(EmError, match="--mode neuron, instance, semantic --per-class, or count"):
        check_settings(get_mode("semantic"), EvalSettings(), objects=True)
    with pytest.raises(EmError, match="--threshold applies to --mode semantic, synapse, or count"):
        check_settings(get_mode("neuron"), EvalSettings(threshold=0.5))
    gt = np.array([[[0, 1, 1, 2]]], np.uint8)
    metrics, _ = toy_mode.score(contingency_table(gt, gt, toy_mode.skip_for(EvalSettings())), EvalSettings(),
                                False, None)
    assert metrics == {"counted": 3}


def test_registration_mistakes_fail_at_import_time():
    def body(table, settings, objects, volumes):
        return {}, None

    with pytest.raises(ValueError, match="registered twice"):
        eval_mode("neuron", "x", skip="none", inputs="labels")(body)
    with pytest.raises(ValueError, match="skip"):
        eval_mode("bad", "x", skip="everything", inputs="labels")(body)
    with pytest.raises(ValueError, match="inputs"):
        eval_mode("bad", "x", skip="none", inputs="floats")(body)
    with pytest.raises(ValueError, match="unknown settings"):
        eval_mode("bad", "x", skip="none", inputs="labels", uses=("colour",))(body)
    assert "bad" not in MODES
