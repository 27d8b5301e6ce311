"""PNG charts for em-profile; matplotlib is imported here only, and only when ``--plot`` is used.

``layer_chart``: three stacked panels per layer, forward and backward side by side, like the
figure of the efficiency analysis: FLOP per layer, achieved GFLOP/s per layer (with the measured
peak as a line), time per layer. ``summary_chart``: voxels/s and median wall time per tool.
Writes go to a temporary file in the destination folder and are renamed into place.
"""

from __future__ import annotations

from typing import Any

from emtools.charts import pyplot, save_figure


def layer_chart(report: dict[str, Any], path: str) -> str:
    """The per-layer chart of a ``profile_model`` report (only layers with FLOPs or >1% time)."""
    plt = pyplot()
    layers = report["layers"]
    total_time = sum((l["time_fwd_s"] or 0) + (l["time_bwd_s"] or 0) for l in layers) or 1.0
    shown = [l for l in layers if l["flops_fwd"] > 0 or ((l["time_fwd_s"] or 0) + (l["time_bwd_s"] or 0)) > 0.01 * total_time]
    names = [l["name"] for l in shown]
    index = list(range(len(shown)))
    width = 0.42
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 0.28 * len(shown) + 2), 10), sharex=True)
    panels = [
        ("GFLOP", lambda l, d: l[f"flops_{d}"] / 1e9),
        ("GFLOP/s", lambda l, d: (l[f"gflops_{d}"] or 0)),
        ("time (s)", lambda l, d: (l[f"time_{d}_s"] or 0)),
    ]
    for axis, (label, value) in zip(axes, panels):
        for offset, direction, colour in ((-width / 2, "fwd", "tab:blue"), (width / 2, "bwd", "tab:orange")):
            axis.bar([i + offset for i in index], [value(l, direction) for l in shown], width,
                     label="forward" if direction == "fwd" else "backward", color=colour)
        axis.set_ylabel(label)
        axis.grid(axis="y", alpha=0.3)
    peak = report.get("peak", {}).get("peak_gflops")
    if peak:
        axes[1].axhline(peak, color="k", linestyle="--", linewidth=1, label=f"measured peak {peak:.0f}")
    axes[0].legend(loc="upper right")
    axes[1].legend(loc="upper right")
    axes[2].set_xticks(index)
    axes[2].set_xticklabels(names, rotation=90, fontsize=7)
    title = f"{report['model']['name']} input {'x'.join(map(str, report['input_zyx']))} batch {report['batch']} on {report['device']}"
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def summary_chart(rows: list[dict[str, Any]], path: str) -> str:
    """Bar charts of median voxels/s and median wall time per tool."""
    plt = pyplot()
    tools = [r["tool"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(tools) + 4), 4.5))
    axes[0].bar(tools, [(r["voxels_per_s_median"] or 0) / 1e6 for r in rows], color="tab:green")
    axes[0].set_ylabel("Mvoxels/s (median)")
    axes[1].bar(tools, [r["wall_s_median"] for r in rows], color="tab:purple")
    axes[1].set_ylabel("wall time per run (s, median)")
    for axis in axes:
        axis.tick_params(axis="x", rotation=45)
        axis.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
