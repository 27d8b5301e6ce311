"""The em-profile model report: per-layer cost table, totals, levels, bottlenecks, options, and
throughput (samples/s and voxels/s per batch size and option; FOV/s for flood-filling networks).

What differs per kind of model (U-Net or FFN: input size, geometry, sections that do not apply)
comes from :mod:`emtools.profile.kinds`.

:func:`profile_model` returns one JSON-ready dict (what ``--json`` prints); :func:`format_report`
renders it as the text table. Both are usable without the CLI.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

from emtools.errors import EmError
from emtools.models import build_model
from emtools.models.spec import ModelSpec
from emtools.profile import flops as flopmod
from emtools.profile.kinds import kind_named, kind_of
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


def profile_model(spec: ModelSpec, input_zyx: tuple[int, int, int] | None = None,
                  batch: int | Sequence[int] | None = None, device: str = "cpu",
                  mode: str = "train", measure: bool = True, options: list[str] | None = None,
                  repeats: int = 3, warmup: int = 1, seed: int = 0,
                  log: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Count, time and compare; see the module docstring. ``measure=False`` counts only.

    ``input_zyx``: the patch size (a U-Net needs one; an FFN's is its FOV). ``batch``: one size or
    several; the per-layer table uses the first, and with several (or for an FFN, whose default is
    1, 2, 4, 8) every option is timed at each size, as samples/s (FOV/s for an FFN) and voxels/s.
    """
    kind = kind_of(spec)
    batches = list(kind.default_batches if batch is None else [batch] if isinstance(batch, int) else batch)
    if not batches or min(batches) < 1:
        raise EmError(f"--batch {','.join(map(str, batches))} must be at least 1")
    if repeats < 1:
        raise EmError(f"--repeat {repeats} must be at least 1")
    input_zyx = kind.input_zyx(spec, None if input_zyx is None else tuple(input_zyx))
    geo = kind.geometry(spec, input_zyx)
    batch = batches[0]
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
    spec_flops = kind.spec_flops_per_sample(spec, input_zyx)
    spec_agrees = spec_flops is None or spec_flops * batch == total.flops_fwd
    report: dict[str, Any] = {
        "model": spec.to_dict(), "spec": spec.describe(), "kind": kind.name, "sample": kind.sample,
        "input_zyx": list(input_zyx), "batch": batch, "batches": batches,
        "device": str(dev), "threads": torch.get_num_threads(), "mode": mode, "seed": seed,
        "geometry": geo, "skipped": dict(kind.skipped),
        "crosscheck": {"flop_counter_fwd": counted_fwd, "flop_counter_bwd": counted_bwd if mode == "train" else 0,
                       "layers_checked": len(checks), "mismatched_layers": mismatches,
                       "spec_flops_per_sample": spec_flops, "spec_agrees": spec_agrees,
                       "ok": not mismatches and counted_fwd == total.flops_fwd and spec_agrees
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
    sample_voxels = math.prod(input_zyx)
    report["totals"].update(flops_fwd_per_sample=total.flops_fwd / batch, flops_per_sample=total.flops_train / batch,
                            sample_voxels=sample_voxels)
    report["levels"] = [] if "levels" in kind.skipped else level_summary(rows, peak_gflops)
    report["bottlenecks"] = _bottlenecks(rows)
    rates = len(batches) > 1 or kind.rates_by_default
    if measure and (options or rates):
        names = options or ["eager"]
        per_sample = total.flops_train / batch if mode == "train" else total.flops_fwd / batch
        table = []
        for size in batches if rates else [batch]:
            x = torch.randn((size, *shape[1:]), generator=torch.Generator().manual_seed(seed)).to(dev)
            if rates:
                log(f"batch {size} ({size} {kind.sample}{'s' if size > 1 else ''})")
            results = compare_options(model, x, names, mode, repeats, warmup, log)
            if size == batch and options:
                report["options"] = [r.to_dict() for r in results]
                best = fastest(results)
                report["fastest"] = best.name if best else None
            table += [_rate_row(r, size, sample_voxels, per_sample, peak_gflops) for r in results]
        if rates:
            report["throughput"] = table
            best_row = max((r for r in table if r["samples_per_s"]), key=lambda r: r["samples_per_s"], default=None)
            report["fastest_throughput"] = ({"option": best_row["option"], "batch": best_row["batch"]}
                                            if best_row else None)
    return report


def _rate_row(result, batch: int, sample_voxels: int, flops_per_sample: float, peak_gflops: float | None) -> dict:
    """One row of the throughput table: an option at a batch size, per sample (FOV or patch) and voxel.

    GFLOP/s counts the model's FLOPs per iteration (forward; in train mode forward + backward, the
    Adam step not counted) over the measured seconds per iteration; its share is of the fp32 peak."""
    seconds = result.seconds if result.status == "ok" else None
    samples = batch / seconds if seconds else None
    gflops = flops_per_sample * batch / seconds / 1e9 if seconds else None
    return {"option": result.name, "batch": batch, "status": result.status, "reason": result.reason,
            "seconds": seconds, "samples_per_s": samples, "voxels_per_s": samples * sample_voxels if samples else None,
            "gflops": gflops, "peak_share": gflops / peak_gflops if gflops and peak_gflops else None,
            "speedup": result.speedup}


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
    kind = kind_named(report.get("kind"))
    lines.append(kind.geometry_line(report["geometry"]))
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
    if c.get("spec_flops_per_sample") is not None:
        per = t["flops_fwd"] / report["batch"]
        lines.append(f"forward FLOPs per {report['sample']}: {per / 1e9:.3f} GFLOP counted, "
                     f"{c['spec_flops_per_sample'] / 1e9:.3f} GFLOP by the spec: "
                     f"{'agree' if c['spec_agrees'] else 'DISAGREE'}")
    if t["time_fwd_s"] is not None:
        lines.append(f"time: layers fwd {t['time_fwd_s']:.3f} s, bwd {_num(t['time_bwd_s'], 1, 3)} s; "
                     f"plain iteration fwd {t['iteration_fwd_s']:.3f} s, bwd {t['iteration_bwd_s']:.3f} s; "
                     f"{_num(t['gflops'], 1, 1)} GFLOP/s = {_pct(t['peak_share'])} of peak")
    for section, reason in report.get("skipped", {}).items():
        lines.append(f"skipped {section.replace('_', ' ')}: {reason}")
    if report["levels"]:
        lines.append("per level: " + "; ".join(
        f"L{l['level']} {_pct(l['flops_share'])} FLOP" + (f", {_pct(l['time_share'])} time, conv {_pct(l['conv_peak_share'])} of peak"
                                                            if l["time_share"] is not None else "")
            for l in report["levels"]))
    lines.append("bottlenecks: " + "; ".join(
        f"{b['name']} ({_pct(b['time_share'])} time, {_pct(b['flops_share'])} FLOP)" if b["time_share"] is not None
        else f"{b['name']} ({_pct(b['flops_share'])} FLOP)" for b in report["bottlenecks"]))
    if report.get("throughput"):
        lines += _throughput_lines(report)
    elif report.get("options"):
        lines.append(f"execution options ({report['mode']}, s per iteration, speedup vs eager fp32):")
        width = max(22, *(len(o["name"]) for o in report["options"]))
        for o in report["options"]:
            if o["status"] == "ok":
                note = f"  ({o['reason']})" if o["reason"] else ""
                lines.append(f"  {o['name']:<{width}} {o['seconds']:.3f} s  x{o['speedup'] or 0:.2f}  "
                             f"first {o['first_s']:.1f} s{note}")
            else:
                lines.append(f"  {o['name']:<{width}} unavailable: {o['reason']}")
        lines.append(f"fastest here: {report.get('fastest')}")
    return lines


def _throughput_lines(report: dict[str, Any]) -> list[str]:
    """The samples/s (FOV/s) table: one row per batch size and execution option."""
    sample, t = report["sample"], report["totals"]
    what = "forward" if report["mode"] == "infer" else "forward+backward+Adam step"
    per = t["flops_fwd_per_sample"] if report["mode"] == "infer" else t["flops_per_sample"]
    lines = [f"throughput ({report['mode']}: {what}; {per / 1e9:.3f} GFLOP and {t['sample_voxels']} voxels per "
             f"{sample}; speedup vs eager fp32 at the same batch; peak share of the fp32 peak):"]
    header = ("batch", "option", "s/iteration", f"{sample}/s", "voxels/s", "GFLOP/s", "peak", "speedup")
    table = [header]
    for r in report["throughput"]:
        if r["status"] != "ok":
            table.append((str(r["batch"]), r["option"], f"unavailable: {r['reason']}"))
            continue
        table.append((str(r["batch"]), r["option"], f"{r['seconds']:.3f}", f"{r['samples_per_s']:.3g}",
                      f"{r['voxels_per_s']:.3g}", _num(r["gflops"], 1, 1), _pct(r["peak_share"]),
                      "-" if r["speedup"] is None else f"x{r['speedup']:.2f}"))
    widths = [max(len(row[i]) for row in table if len(row) == len(header)) for i in range(len(header))]
    for row in table:
        if len(row) != len(header):  # an unavailable option: its reason instead of figures
            lines.append(f"  {row[0].rjust(widths[0])}  {row[1].ljust(widths[1])}  {row[2]}")
            continue
        lines.append("  " + "  ".join(cell.ljust(w) if i == 1 else cell.rjust(w)
                                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip())
    best = report.get("fastest_throughput")
    lines.append(f"fastest here: {best['option']} at batch {best['batch']}" if best else "fastest here: none")
    return lines
