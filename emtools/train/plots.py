"""Training curves as PNG (matplotlib is imported only here, and only when a plot is asked for).

Left: the training loss (and each head's loss) per logged step, log scale. Right: the validation
metrics per validation: the loss and, where there are any, adapted Rand error / VOI of the
segmentation heads and F1 of the foreground-like heads.
"""

from __future__ import annotations

from typing import Sequence

from emtools.charts import pyplot, save_figure


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list[int], list[float]]:
    points = [(r["step"], r[key]) for r in records if r.get("split") == split and r.get(key) is not None]
    return [p[0] for p in points], [float(p[1]) for p in points]


def write_curves(records: Sequence[dict], path: str, title: str = "") -> str:
    """Write the curves of ``metrics.jsonl`` records to ``path`` (atomically); returns the path."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    train_keys = sorted({k for r in records if r.get("split") == "train" for k in r if k.endswith("loss")})
    for key in train_keys:
        steps, values = _series(records, "train", key)
        if steps and all(v > 0 for v in values):
            left.plot(steps, values, label=key, linewidth=2 if key == "loss" else 1)
    left.set_yscale("log")
    left.set_xlabel("step")
    left.set_title("training loss")
    val_keys = [k for k in dict.fromkeys(k for r in records if r.get("split") == "val" for k in r)
                if k == "loss" or k.endswith((".adapted_rand_error", ".voi", ".f1", ".accuracy"))]
    for key in val_keys:
        steps, values = _series(records, "val", key)
        if steps:
            right.plot(steps, values, marker="o", label=key)
    right.set_xlabel("step")
    right.set_title("validation")
    for axis in (left, right):
        if axis.lines:
            axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        save_figure(fig, path)
    finally:
        plt.close(fig)
    return path
