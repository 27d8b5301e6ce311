"""summary_table: em-eval --table, one row per segmentation with the best marked."""

import dataclasses

import pytest

from emtools.errors import EmError
from emtools.evaluate import MODES, EvalSettings, Summary, best_rows, summary_for, summary_table


def report(spec, **metrics):
    return {"segmentation": spec, "ground_truth": "gt.h5", **metrics}


def test_best_rows_marks_every_tie_and_never_a_missing_value():
    assert best_rows([0.5, 0.2, 0.2, None], lower_is_better=True) == [1, 2]
    assert best_rows([0.5, float("nan"), 0.7, None], lower_is_better=False) == [2]
    assert best_rows([None, float("nan")], lower_is_better=True) == []


def test_neuron_table_with_thresholds_is_aligned_and_marks_the_lowest_voi():
    reports = [report("seg_0.3.h5", voi_split=1.2, voi_merge=0.1, voi=1.3, adapted_rand_error=0.25),
               report("seg_0.5.h5", voi_split=0.9, voi_merge=0.2, voi=1.1, adapted_rand_error=0.3),
               report("other.h5", voi_split=2.0, voi_merge=0.0, voi=2.0, adapted_rand_error=0.2)]
    text = summary_table(reports, "neuron", EvalSettings(), [0.3, 0.5, None])
    assert text == "\n".join([
        "# best (*): lowest voi (VOI split + merge, bits); neuron mode against gt.h5",
        "  segmentation  threshold  voi_split  voi_merge     voi  adapted_rand_error",
        "  seg_0.3.h5          0.3     1.2000     0.1000  1.3000              0.2500",
        "* seg_0.5.h5          0.5     0.9000     0.2000  1.1000              0.3000",
        "  other.h5              -     2.0000     0.0000  2.0000              0.2000",
    ])


def test_other_modes_mark_the_highest_score_and_skip_the_threshold_column_when_none_is_known():
    reports = [report("a.h5", ap_50=0.9, ap_75=0.5, ap_50_95=0.4, precision=1.0, recall=0.5, f1=None),
               report("b.h5", ap_50=0.8, ap_75=0.6, ap_50_95=0.45, precision=0.5, recall=1.0, f1=0.6)]
    lines = summary_table(reports, "instance", None, [None, None]).splitlines()
    assert lines[0] == ("# best (*): highest ap_75 (average precision at IoU 0.75, as MitoEM ranks); "
                        "instance mode against gt.h5")
    assert lines[1].split() == ["segmentation", "ap_50", "ap_75", "ap_50_95", "precision", "recall", "f1"]
    assert lines[2].split() == ["a.h5", "0.9000", "0.5000", "0.4000", "1.0000", "0.5000", "-"]
    assert lines[3].startswith("* b.h5")
    per_class = summary_table([report("a.h5", mean_iou=0.5, mean_dice=0.6)], "semantic", EvalSettings(per_class=True))
    assert "highest mean_iou" in per_class and per_class.splitlines()[2].startswith("* a.h5")
    assert summary_for("semantic").best == "iou" and summary_for("synapse").lower_is_better


def test_every_registered_mode_has_a_table():
    for name in MODES:
        summary = summary_for(name)
        assert summary.best in summary.columns, name
    with pytest.raises(EmError, match="unknown eval mode 'mystery'"):
        summary_for("mystery")
    with pytest.raises(EmError, match="has no table columns"):
        dataclasses.replace(MODES["neuron"], table=None).table_for()
    with pytest.raises(ValueError, match="deciding column"):
        Summary(("iou",), "dice", False, "x")
    with pytest.raises(EmError, match="no segmentation"):
        summary_table([], "neuron")
