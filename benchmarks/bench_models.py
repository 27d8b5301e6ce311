"""Speed of the Lee et al. U-Net variants per training iteration, beside the paper's table.

All variants run in one process on the same input (batch 1, 18x160x160, seed 0); eager
iterations are interleaved round-robin so that load from other processes hits all variants alike.

1. FLOPs per iteration (forward + backward, analytic and checked against FlopCounterMode).
2. Eager fp32 forward+backward+Adam step: baseline, strided-only, strided + balanced (and the
   balanced widths with the baseline's pooling, for transparency; and the geometry the efficient
   model is trained with on ssTEM, whose accuracy bench_train (d)/(f) compares).
3. The efficient model under each execution option (em-profile's comparison); the fastest one.
4. The baseline under that fastest option too (the fair comparison), unless --skip-baseline-best.
5. The goal, head to head: the eager fp32 baseline and the efficient model under its fastest
   options (except compile, whose caches a round-robin would thrash), interleaved round-robin for
   --final-rounds rounds, so that the 5x ratio comes from times taken side by side; the ssTEM
   geometry joins under the fastest of those options and the fastest fp32 one. Each geometry's
   ratio is reported for its fastest option and, where that is bf16 (CPUs with bf16 units, such as
   AMX), for its fastest fp32 option too.
6. Per-level convolution GFLOP/s of the efficient model as a share of the measured peak (eager,
   channels_last, channels_last+onednn, channels_last+winograd).

Usage:  python benchmarks/bench_models.py [--input 18,160,160] [--repeat 5] [--json out.json] [--out DIR] [--quick]

Times are the minimum over the repeats (the JSON keeps every one): on a shared machine other
processes only ever add time, so the minimum is the closest to the uncontended cost.
Results go to stdout; progress to stderr. Takes 15-30 minutes on a 2-core CPU (mostly
torch.compile's compilation).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

from emtools.models import build_model, onednn, resolve_spec, winograd
from emtools.profile import flops as flopmod
from emtools.profile.options import (
    option_dtype,
    compare_options,
    cpu_has_bf16_units,
    default_options,
    fastest,
    make_step,
    time_option,
)
from emtools.profile.report import level_summary
from emtools.profile.timing import calibrate_peak, loss_of, measure_layers

PAPER = {  # Lee et al. U-Net efficiency table, TITAN X, per training iteration
    "baseline": {"gflop": 430.66, "seconds": 0.71},
    "strided": {"gflop": 97.02, "seconds": 0.16},
    "strided+balanced": {"gflop": 211.24, "seconds": 0.21},
    "tuned kernels": {"gflop": 211.24, "seconds": 0.13},
}
SSTEM = "strided+balanced, ssTEM"  # its pools and widths below
VARIANTS = {
    "baseline": ("rsunet", []),
    "strided": ("rsunet", ["stride_in=1x2x2", "transposed_out=true"]),
    "strided+balanced": ("rsunet-efficient", []),
    # The same widths with the baseline's pooling (z halved at the bottom, not the top): shows how
    # much of the balance depends on spending the one z-halving of 18 slices early.
    "strided+balanced, Lee pools": ("rsunet-efficient", ["pools=1x2x2,1x2x2,1x2x2,2x2x2"]),
    # The efficient model as trained on ssTEM (50 nm sections) for the accuracy comparison in
    # benchmarks/bench_train.py (d)/(f): z halved one level lower, 32 channels at level 0. Its
    # speed counts as much as the preset's.
    SSTEM: ("rsunet-efficient", ["pools=1x2x2,2x2x2,1x2x2,1x2x2", "widths=32,64,192,192,192"]),
}


def say(text: str) -> None:
    print(f"bench_models: {text}", file=sys.stderr, flush=True)


def eager_round_robin(models: dict, x: torch.Tensor, repeats: int) -> dict[str, list[float]]:
    """Median-ready times of fwd+bwd+Adam per variant, interleaved A B C A B C ..."""
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=1e-4) for name, m in models.items()}

    def step(name: str) -> float:
        model, optimizer = models[name], optimizers[name]
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_of(model(x)).backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {name: [] for name in models}
    for name in models:  # warm-up
        say(f"warm-up {name}: {step(name):.2f} s")
    for round_ in range(repeats):
        for name in models:
            times[name].append(step(name))
            say(f"round {round_ + 1} {name}: {times[name][-1]:.2f} s")
    return times


def bf16_probe(x_shape=(1, 24, 18, 80, 80)) -> float | None:
    """How many times slower one bf16-autocast conv3d is than fp32 here (None on error)."""
    try:
        conv = torch.nn.Conv3d(24, 24, 3, padding=1)
        x = torch.randn(x_shape)
        with torch.no_grad():
            conv(x)
            start = time.perf_counter()
            conv(x)
            fp32 = time.perf_counter() - start
            with torch.autocast("cpu", dtype=torch.bfloat16):
                conv(x)
                start = time.perf_counter()
                conv(x)
                bf16 = time.perf_counter() - start
        return bf16 / fp32
    except RuntimeError:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--input", default="18,160,160", help="z,y,x (default 18,160,160, the paper's)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write all figures to this JSON file")
    parser.add_argument("--out", default=None, help="write bench_models.txt and .json to this folder (make bench)")
    parser.add_argument("--quick", action="store_true", help="a small input (8,64,64) and 2 repeats, to check the script")
    parser.add_argument("--skip-baseline-best", action="store_true")
    parser.add_argument("--options", default=None, help="comma list of options for the efficient model")
    parser.add_argument("--final-rounds", type=int, default=6, help="rounds of the head-to-head goal comparison")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.input, args.repeat = "8,64,64", 2
        args.options = args.options or "eager,channels_last"
    zyx = tuple(int(v) for v in args.input.split(","))
    shape = (1, 1, *zyx)
    device = torch.device("cpu")
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    out: dict = {"input_zyx": list(zyx), "threads": torch.get_num_threads(), "torch": torch.__version__}

    say("calibrating peak")
    peak = calibrate_peak(device)
    out["peak"] = peak.to_dict()
    say(f"peak {peak.flops_per_s / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")

    models, flops = {}, {}
    for name, (preset, overrides) in VARIANTS.items():
        spec = resolve_spec(preset, overrides)
        models[name] = build_model(spec, seed=0).train()
        layers = flopmod.trace_layers(models[name], shape)
        total = flopmod.totals(layers)
        counted = flopmod.counted_flops(models[name], shape)
        assert counted == (total.flops_fwd, total.flops_bwd), (name, counted, total)
        flops[name] = {"fwd": total.flops_fwd, "bwd": total.flops_bwd, "total": total.flops_train,
                       "params": total.params, "spec": spec.describe()}
    out["flops"] = flops

    times = eager_round_robin(models, x, args.repeat)
    eager = {name: min(t) for name, t in times.items()}
    out["eager_s"] = eager
    out["eager_times"] = times

    names = (args.options.split(",") if args.options else default_options(device, "train"))
    say("execution options on the efficient model: " + ", ".join(names))
    results = compare_options(models["strided+balanced"], x, names, "train", args.repeat, 1, say)
    for r in results:  # minimum instead of median, as for the eager variants
        if r.status == "ok" and r.times:
            r.seconds = min(r.times)
    for r in results:
        r.speedup = results[0].seconds / r.seconds if r.seconds and results[0].seconds else None
    best = fastest(results)
    out["options"] = [r.to_dict() for r in results]
    out["best_option"] = best.name if best else None
    if not cpu_has_bf16_units():
        out["bf16_slowdown_one_conv"] = bf16_probe()

    baseline_best = None
    if best and best.name != "eager" and not args.skip_baseline_best:
        say(f"baseline under {best.name}")
        baseline_best = time_option(best.name, models["baseline"], x, "train", args.repeat, 1)
        if baseline_best.times:
            baseline_best.seconds = min(baseline_best.times)
        out["baseline_best"] = baseline_best.to_dict()

    # The goal, head to head: baseline eager vs the efficient model's best non-compile options, interleaved.
    contenders = [r.name for r in sorted((r for r in results if r.status == "ok" and r.seconds
                                          and not r.name.startswith("compile") and r.name != "eager"),
                                         key=lambda r: r.seconds)[:3]]
    steps = {"baseline eager": make_step("eager", models["baseline"], x, "train")}
    steps.update({f"efficient {name}": make_step(name, models["strided+balanced"], x, "train") for name in contenders})
    # the ssTEM geometry under the preset's fastest option and its fastest fp32 one (the two differ
    # on CPUs with bf16 units: both figures matter, since not every CPU has them)
    fp32 = [name for name in contenders if option_dtype(name) is None]
    sstem_options = list(dict.fromkeys(contenders[:1] + fp32[:1]))
    sstem_steps = [f"efficient ssTEM {name}" for name in sstem_options]
    for name, step_name in zip(sstem_options, sstem_steps):
        steps[step_name] = make_step(name, models[SSTEM], x, "train")
    say("head to head (round-robin): " + ", ".join(steps))
    final = {name: [] for name in steps}
    for name, step in steps.items():
        step()  # warm-up
    for round_ in range(args.final_rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            final[name].append(time.perf_counter() - start)
        say(f"head to head round {round_ + 1}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in final.items()))
    out["head_to_head_times"] = final
    del steps

    say("per-layer profile of the efficient model (eager, channels_last, channels_last+onednn, channels_last+winograd)")
    level_rows = {}
    formats = [("eager", torch.contiguous_format, False), ("channels_last", torch.channels_last_3d, False)]
    if onednn.available():
        formats.append(("channels_last+onednn", torch.channels_last_3d, True))
        formats.append(("channels_last+winograd", torch.channels_last_3d, True))
    for fmt_name, fmt, forced in formats:
        model = build_model(resolve_spec("rsunet-efficient"), seed=0).train().to(memory_format=fmt)
        if "winograd" in fmt_name:
            winograd.use_winograd_and_onednn(model)
        elif forced:
            onednn.use_onednn(model)
        xin = x.contiguous(memory_format=fmt)
        layer_list = flopmod.trace_layers(model, shape)
        measured = measure_layers(model, xin, repeats=2, warmup=1)
        rows = []
        for layer in layer_list:
            row = layer.to_dict()
            row["time_fwd_s"] = measured.forward.get(layer.name)
            row["time_bwd_s"] = measured.backward.get(layer.name)
            rows.append(row)
        level_rows[fmt_name] = level_summary(rows, peak.flops_per_s / 1e9)
        total_s = sum((r["time_fwd_s"] or 0) + (r["time_bwd_s"] or 0) for r in rows)
        level_rows[fmt_name + "_gflops"] = flops["strided+balanced"]["total"] / total_s / 1e9
    out["efficient_levels"] = level_rows

    # ---- report ----
    lines: list[str] = []

    def emit(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    base_s, base_f = eager["baseline"], flops["baseline"]["total"]
    emit(f"# bench_models: input {'x'.join(map(str, zyx))}, batch 1, fwd+bwd+Adam per iteration (min of {args.repeat}), "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    emit(f"# measured peak {peak.flops_per_s / 1e9:.1f} GFLOP/s (conv3d {peak.conv_flops_per_s / 1e9:.1f}, "
          f"matmul {peak.matmul_flops_per_s / 1e9:.1f})")
    emit("# the paper's FLOPs are for its own input size; ours are at the input above, so absolute")
    emit("# FLOPs differ where the sizes differ; compare the ratios.")
    emit(f"{'variant':<42}{'GFLOP':>9}{'paper':>9}{'FLOP ratio':>12}{'paper':>8}"
          f"{'s/iter':>9}{'speedup':>9}{'paper':>8}{'GFLOP/s':>9}{'of peak':>9}")
    paper_base = PAPER["baseline"]

    def line(label, gflop, seconds, paper_key):
        paper = PAPER.get(paper_key, {})
        rate = gflop / seconds
        paper_gflop = f"{paper['gflop']:.1f}" if paper else ""
        paper_flop_ratio = f"{paper_base['gflop'] / paper['gflop']:.2f}" if paper else ""
        paper_speedup = f"{paper_base['seconds'] / paper['seconds']:.2f}" if paper else ""
        emit(f"{label:<42}{gflop:>9.1f}{paper_gflop:>9}{base_f / 1e9 / gflop:>12.2f}{paper_flop_ratio:>8}"
              f"{seconds:>9.2f}{base_s / seconds:>9.2f}{paper_speedup:>8}"
              f"{rate:>9.1f}{rate / (peak.flops_per_s / 1e9):>9.0%}")

    for name in VARIANTS:
        line(f"{name} (eager fp32)", flops[name]["total"] / 1e9, eager[name], name)
    eff_f = flops["strided+balanced"]["total"] / 1e9
    for r in results:
        if r.status == "ok" and r.name != "eager":
            line(f"efficient {r.name}", eff_f, r.seconds, "tuned kernels" if r is best else "")
        elif r.status != "ok":
            emit(f"{'efficient ' + r.name:<42} unavailable: {r.reason}")
    if "bf16_slowdown_one_conv" in out:
        probe = out["bf16_slowdown_one_conv"]
        emit(f"{'efficient bf16':<42} not run: no bf16 units on this CPU (one conv is "
              f"{probe:.0f}x slower in bf16)" if probe else f"{'efficient bf16':<42} not run: no bf16 units")
    if baseline_best and baseline_best.seconds:
        emit(f"{'baseline ' + baseline_best.name:<42}{base_f / 1e9:>9.1f}{'':>9}{1.0:>12.2f}{'':>8}"
              f"{baseline_best.seconds:>9.2f}{base_s / baseline_best.seconds:>9.2f}")
    if best:
        speed = base_s / best.seconds
        emit(f"sequential: efficient + best option ({best.name}) vs eager fp32 baseline: {speed:.2f}x "
              f"(the baseline and each option timed in turn)")
        if baseline_best and baseline_best.seconds:
            emit(f"same option on both: baseline {baseline_best.name} / efficient {best.name}: "
                  f"{baseline_best.seconds / best.seconds:.2f}x")
    base_h2h = min(final["baseline eager"])
    emit(f"head to head, {args.final_rounds} interleaved rounds (min / median s per iteration, ratio to the eager baseline):")
    for name, t in final.items():
        emit(f"  {name:<40}{min(t):>7.2f}{statistics.median(t):>7.2f}   {base_h2h / min(t):.2f}x (min)  "
             f"{statistics.median(final['baseline eager']) / statistics.median(t):.2f}x (median)")
    base_median = statistics.median(final["baseline eager"])
    for label, names in (("preset", [n for n in final if n.startswith("efficient ") and n not in sstem_steps]),
                         ("ssTEM geometry", sstem_steps)):
        # the fastest option overall, and the fastest in fp32 where that is another one
        ranked = sorted(names, key=lambda n: min(final[n]))
        shown = list(dict.fromkeys(ranked[:1] + [n for n in ranked if option_dtype(n) is None][:1]))
        for name in shown:
            speed, median = base_h2h / min(final[name]), base_median / statistics.median(final[name])
            emit(f"goal ({label}{', fp32' if name != ranked[0] else ''}): {name} vs eager fp32 baseline, head to "
                 f"head: {speed:.2f}x min, {median:.2f}x median ({'met' if speed >= 5 else 'NOT met'}: goal 5x; "
                 "paper 0.71/0.13 = 5.5x)")
    emit("# GFLOP/s count a direct convolution's FLOPs; Winograd does fewer, so its shares can pass 100%")
    for fmt_name in (name for name, _, _ in formats):
        levels = level_rows[fmt_name]
        emit(f"efficient {fmt_name}: fwd+bwd {level_rows[fmt_name + '_gflops']:.1f} GFLOP/s overall = "
              f"{level_rows[fmt_name + '_gflops'] / (peak.flops_per_s / 1e9):.0%} of peak; conv share of peak "
              "per level: " + ", ".join(f"L{l['level']} {l['conv_peak_share'] or 0:.0%} ({l['flops_share']:.0%} FLOP)"
                                        for l in levels))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "bench_models.txt"), "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        args.json = args.json or os.path.join(args.out, "bench_models.json")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=1, sort_keys=True, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
