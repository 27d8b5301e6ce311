#!/usr/bin/env python
"""Plot a threshold sweep's VOI split against VOI merge, from em-eval's JSON lines.

Example:
    em-eval 'seg_*.h5' gt.h5:/neurons > sweep.jsonl
    python examples/scripts/plot_sweep.py sweep.jsonl -o sweep.png --mark 0.7

One point per segmentation, labelled with the threshold em-agglomerate recorded in it (else its
file name), joined in the order given; the lowest VOI (split + merge) is circled, and --mark
THRESHOLD draws that threshold's point as a square (the fixed setting of a recipe). Lower left
is better: up the split axis the segmentation cuts objects apart, along the merge axis it joins
them. Works for the neuron and sections modes (their means). Needs matplotlib (the plot extra).
The written path is printed on stdout; errors are one line on stderr (exit 1).
"""

import argparse
import json
import os
import sys

from emtools.charts import pyplot, save_figure
from emtools.errors import EmError

PROG = "plot_sweep.py"


def read_sweep(path):
    """The em-eval objects of a JSON-lines file, in order; one-line errors for anything else."""
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise EmError(f"line {number} is not JSON ({path})") from None
            if not isinstance(row, dict) or not all(isinstance(row.get(k), (int, float)) for k in ("voi_split", "voi_merge")):
                raise EmError(f"line {number} has no voi_split and voi_merge: not em-eval neuron scores ({path})")
            rows.append(row)
    if not rows:
        raise EmError(f"no scores in {path}")
    return rows


def label_of(row):
    threshold = row.get("segmentation_threshold")
    if isinstance(threshold, (int, float)):
        return f"{threshold:g}"
    return os.path.basename(str(row.get("segmentation", "?")).split(":")[0])


def plot_sweep(rows, output, title="", mark=None):
    plt = pyplot()
    merge = [row["voi_merge"] for row in rows]
    split = [row["voi_split"] for row in rows]
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot(merge, split, "-o", color="#0072b2", markersize=5)
    for row, x, y in zip(rows, merge, split):
        ax.annotate(label_of(row), (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    best = min(range(len(rows)), key=lambda i: split[i] + merge[i])
    ax.plot(merge[best], split[best], "o", markersize=13, markerfacecolor="none", color="#d55e00",
            label=f"lowest VOI {split[best] + merge[best]:.3f} ({label_of(rows[best])})")
    if mark is not None:
        marked = [i for i, row in enumerate(rows) if row.get("segmentation_threshold") == mark]
        for i in marked:
            ax.plot(merge[i], split[i], "s", markersize=9, markerfacecolor="none", color="#009e73",
                    label=f"fixed threshold {mark:g}: VOI {split[i] + merge[i]:.3f}")
    # one scale for both axes (both are bits), from 0; the diagonal: as much split as merge
    top = 1.15 * max(max(merge), max(split)) or 1e-3
    ax.plot([0, top], [0, top], ":", color="#999999", linewidth=1)
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("VOI merge (bits)")
    ax.set_ylabel("VOI split (bits)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(title or "threshold sweep", fontsize=10)
    fig.tight_layout()
    try:
        return save_figure(fig, output)
    finally:
        plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sweep", help="em-eval's JSON lines, one per segmentation")
    parser.add_argument("-o", "--output", required=True, help="PNG to write")
    parser.add_argument("--title", default="", help="title above the plot")
    parser.add_argument("--mark", type=float, help="draw this threshold's point as a square")
    args = parser.parse_args(argv)
    try:
        print(plot_sweep(read_sweep(args.sweep), args.output, args.title, args.mark))
    except EmError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{PROG}: error: {error.strerror or error} ({getattr(error, 'filename', '') or args.sweep})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
