"""The em-profile model report: per-layer cost table, totals, levels, bottlenecks, options.

:func:`profile_model` returns one JSON-ready dict (what ``--json`` prints); :func:`format_report`
renders it as the text table. Both are usable without the CLI.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from emtools.errors import EmError
from emtools.models import build_model
from emtools.models.geometry import geometry
from emtools.models.spec import ModelSpec
from emtools.profile import flops as flopmod
from emtools.profile.options import compare_options, fastest
from emtools.profile.timing import calibrate_peak, measure_layers


def resolve_device(name: str) -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto``; one-line error for a GPU that is not there."""
    name = name.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EmError(f"--device {name} is not a device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise EmError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise EmError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) here")
    elif device.type != "cpu":
        raise EmError(f"--device {name} is not supported; use cpu, cuda, cuda:N or auto")
    return device


def _rate(flop: int, seconds: float | None) -> float | None:
    return flop / seconds / 1e9 if seconds and flop else None


def profile_model(spec: ModelSpec, input_zyx: tuple[int, int, int], batch: int = 1, device: str = "cpu",
                  mode: str = "train", measure: bool = True, options: list[str] | None = None,
                  repeats: int = 3, warmup: int = 1, seed: int = 0,
                  log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Count, time and compare; see the module docstring. ``measure=False`` counts only."""
    if batch < 1:
        raise EmError(f"--batch {batch} must be at least 1")
    if repeats < 1:
        raise EmError(f"--repeat {repeats} must be at least 1")
    geo = geometry(spec, tuple(input_zyx))
    dev = resolve_device(device)
    torch.manual_seed(seed)
    model = build_model(spec, seed=seed)
    model.train(mode == "train")
    shape = (batch, spec.in_channels, *input_zyx)
    layers = flopmod.trace_layers(model, shape)
    if mode != "train":
        for layer in layers:
            layer.flops_bwd = 0
    counted_fwd, counted_bwd = flopmod.counted_flops(model, shape)
    checks = flopmod.crosscheck_layers(model, layers)
    mismatches = [r[0] for r in checks if r[1] != r[2] or (mode == "train" and r[3] != r[4])]
    total = flopmod.totals(layers)
    report: dict[str, Any] = {
        "model": spec.to_dict(), "spec": spec.describe(), "input_zyx": list(input_zyx), "batch": batch,
        "device": str(dev), "threads": torch.get_num_threads(), "mode": mode, "seed": seed,
        "geometry": geo.to_dict(),
        "crosscheck": {"flop_counter_fwd": counted_fwd, "flop_counter_bwd": counted_bwd if mode == "train" else 0,
                       "layers_checked": len(checks), "mismatched_layers": mismatches,
                       "ok": not mismatches and counted_fwd == total.flops_fwd
                       and (mode != "train" or counted_bwd == total.flops_bwd)},
    }
    times = None
    if measure:
        log("calibrating this device's peak (large conv3d and matmul, fp32)")
        peak = calibrate_peak(dev, seed=seed)
        report["peak"] = peak.to_dict()
        log(f"peak {peak.flops_per_s / 1e9:.1f} GFLOP/s; timing layers ({repeats} iterations)")
        model = model.to(dev)
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dev)
        times = measure_layers(model, x, repeats, warmup, backward=mode == "train")
    peak_gflops = report.get("peak", {}).get("peak_gflops")
    rows = []
    for layer in layers:
        row = layer.to_dict()
        fwd_s = times.forward.get(layer.name) if times else None
        bwd_s = times.backward.get(layer.name) if times and mode == "train" else None
        row.update(time_fwd_s=fwd_s, time_bwd_s=bwd_s, gflops_fwd=_rate(layer.flops_fwd, fwd_s),
                   gflops_bwd=_rate(layer.flops_bwd, bwd_s))
        row["peak_share_fwd"] = row["gflops_fwd"] / peak_gflops if row["gflops_fwd"] and peak_gflops else None
        row["peak_share_bwd"] = row["gflops_bwd"] / peak_gflops if row["gflops_bwd"] and peak_gflops else None
        rows.append(row)
    report["layers"] = rows
    time_fwd = sum(r["time_fwd_s"] or 0 for r in rows) if times else None
    time_bwd = sum(r["time_bwd_s"] or 0 for r in rows) if times and mode == "train" else None
    time_all = (time_fwd or 0) + (time_bwd or 0)
    report["totals"] = {
        "flops_fwd": total.flops_fwd, "flops_bwd": total.flops_bwd, "flops": total.flops_train,
        "params": total.params, "activation_bytes": total.activation_bytes,
        "time_fwd_s": time_fwd, "time_bwd_s": time_bwd,
        "iteration_fwd_s": times.iteration_forward_s if times else None,
        "iteration_bwd_s": times.iteration_backward_s if times else None,
        "gflops_fwd": _rate(total.flops_fwd, time_fwd), "gflops_bwd": _rate(total.flops_bwd, time_bwd),
        "gflops": _rate(total.flops_train, time_all),
    }
    report["totals"]["peak_share"] = (report["totals"]["gflops"] / peak_gflops
                                      if report["totals"]["gflops"] and peak_gflops else None)
    report["levels"] = level_summary(rows, peak_gflops)
    report["bottlenecks"] = _bottlenecks(rows)
    if measure and options:
        x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dev)
        results = compare_options(model, x, options, mode, repeats, warmup, log)
        report["options"] = [r.to_dict() for r in results]
        best = fastest(results)
        report["fastest"] = best.name if best else None
    return report


def level_summary(rows: list[dict], peak_gflops: float | None) -> list[dict]:
    flop_total = sum(r["flops_fwd"] + r["flops_bwd"] for r in rows) or 1
    time_total = sum((r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0) for r in rows)
    out = []
    for level in sorted({r["level"] for r in rows}):
        mine = [r for r in rows if r["level"] == level]
        flop = sum(r["flops_fwd"] + r["flops_bwd"] for r in mine)
        seconds = sum((r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0) for r in mine)
        conv_s = sum((r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0) for r in mine if r["flops_fwd"])
        rate = _rate(flop, conv_s)
        out.append({"level": level, "flops": flop, "flops_share": flop / flop_total,
                    "time_s": seconds if time_total else None,
                    "time_share": seconds / time_total if time_total else None,
                    "conv_gflops": rate, "conv_peak_share": rate / peak_gflops if rate and peak_gflops else None})
    return out


def _bottlenecks(rows: list[dict], count: int = 5) -> list[dict]:
    time_total = sum((r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0) for r in rows)
    flop_total = sum(r["flops_fwd"] + r["flops_bwd"] for r in rows) or 1
    if time_total:
        key = lambda r: (r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0)  # noqa: E731
    else:
        key = lambda r: r["flops_fwd"] + r["flops_bwd"]  # noqa: E731
    out = []
    for row in sorted(rows, key=key, reverse=True)[:count]:
        seconds = (row["time_fwd_s"] or 0) + (row["time_bwd_s"] or 0)
        out.append({"name": row["name"], "time_s": seconds if time_total else None,
                    "time_share": seconds / time_total if time_total else None,
                    "flops_share": (row["flops_fwd"] + row["flops_bwd"]) / flop_total})
    return out


def _num(value: float | None, scale: float = 1.0, digits: int = 2) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.0f}%"


def format_report(report: dict[str, Any]) -> list[str]:
    """The text table of a report, one string per line."""
    zyx = "x".join(map(str, report["input_zyx"]))
    lines = [f"# model {report['spec']}",
             f"# input {zyx} batch {report['batch']}, {report['mode']}, device {report['device']} "
             f"({report['threads']} threads)"]
    geo = report["geometry"]
    lines.append(f"# receptive field {','.join(map(str, geo['receptive_field_zyx']))}; valid output "
                 f"{','.join(map(str, geo['valid_output_zyx']))} (margins {','.join(map(str, geo['margin_lo_zyx']))}"
                 f" / {','.join(map(str, geo['margin_hi_zyx']))})")
    if "peak" in report:
        p = report["peak"]
        lines.append(f"# peak {p['peak_gflops']:.1f} GFLOP/s (conv3d {p['conv_gflops']:.1f}, matmul {p['matmul_gflops']:.1f})")
    header = ("idx", "layer", "kind", "lvl", "out shape", "params", "GFLOP fwd", "GFLOP bwd", "act MB",
              "ms fwd", "ms bwd", "GFLOP/s fwd", "GFLOP/s bwd", "peak fwd", "peak bwd")
    table = [header]
    for r in report["layers"]:
        table.append((str(r["index"]), r["name"], r["kind"], str(r["level"]), "x".join(map(str, r["out_shape"][1:])),
                      str(r["params"]), _num(r["flops_fwd"], 1e-9, 3), _num(r["flops_bwd"], 1e-9, 3),
                      _num(r["activation_bytes"], 1e-6, 1), _num(r["time_fwd_s"], 1e3, 1), _num(r["time_bwd_s"], 1e3, 1),
                      _num(r["gflops_fwd"], 1, 1), _num(r["gflops_bwd"], 1, 1),
                      _pct(r["peak_share_fwd"]), _pct(r["peak_share_bwd"])))
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        lines.append("  ".join(cell.ljust(w) if i in (1, 2, 4) else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    t = report["totals"]
    lines.append(f"total: {t['flops'] / 1e9:.2f} GFLOP (fwd {t['flops_fwd'] / 1e9:.2f}, bwd {t['flops_bwd'] / 1e9:.2f}), "
                 f"{t['params']} parameters, {t['activation_bytes'] / 1e6:.0f} MB activations")
    c = report["crosscheck"]
    lines.append(f"FlopCounterMode: fwd {c['flop_counter_fwd'] / 1e9:.2f}, bwd {c['flop_counter_bwd'] / 1e9:.2f} GFLOP; "
                 f"{c['layers_checked']} conv layers checked: {'all match' if c['ok'] else 'MISMATCH ' + ','.join(c['mismatched_layers'])}")
    if t["time_fwd_s"] is not None:
        lines.append(f"time: layers fwd {t['time_fwd_s']:.3f} s, bwd {_num(t['time_bwd_s'], 1, 3)} s; "
                     f"plain iteration fwd {t['iteration_fwd_s']:.3f} s, bwd {t['iteration_bwd_s']:.3f} s; "
                     f"{_num(t['gflops'], 1, 1)} GFLOP/s = {_pct(t['peak_share'])} of peak")
    lines.append("per level: " + "; ".join(
        f"L{l['level']} {_pct(l['flops_share'])} FLOP" + (f", {_pct(l['time_share'])} time, conv {_pct(l['conv_peak_share'])} of peak"
                                                            if l["time_share"] is not None else "")
        for l in report["levels"]))
    lines.append("bottlenecks: " + "; ".join(
        f"{b['name']} ({_pct(b['time_share'])} time, {_pct(b['flops_share'])} FLOP)" if b["time_share"] is not None
        else f"{b['name']} ({_pct(b['flops_share'])} FLOP)" for b in report["bottlenecks"]))
    if report.get("options"):
        lines.append(f"execution options ({report['mode']}, s per iteration, speedup vs eager fp32):")
        for o in report["options"]:
            if o["status"] == "ok":
                note = f"  ({o['reason']})" if o["reason"] else ""
                lines.append(f"  {o['name']:<22} {o['seconds']:.3f} s  x{o['speedup'] or 0:.2f}  first {o['first_s']:.1f} s{note}")
            else:
                lines.append(f"  {o['name']:<22} unavailable: {o['reason']}")
        lines.append(f"fastest here: {report.get('fastest')}")
    return lines
