"""em-profile: where the time of a model, or of any emtools command, goes.

Subcommands: ``model`` (per-layer FLOPs, parameters, memory, measured time and share of this
device's peak, plus a comparison of execution options), ``run`` (time one command and append a
JSON record to a log) and ``summary`` (per-tool table of such a log).
"""

from __future__ import annotations

import json
import sys

import click

from emtools.cli.common import INT_TRIPLE, contract, emit, log, require_positive, version_option
from emtools.errors import EmError
from emtools.models import execution

TOOL = "em-profile"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


@click.group(help="""Profile models and emtools commands.

\b
Examples:
  em-profile model rsunet --input 18,160,160 --no-time
  em-profile model rsunet-efficient --input 18,160,160 --options default --plot layers.png
  em-profile model ffn-small --mode infer
  em-profile run --log runs.jsonl --voxels 1048576 -- em-tile raw.h5 -o tiles
  em-profile summary runs.jsonl --plot runs.png
""")
@version_option(TOOL)
def main() -> None:
    pass


def _load_spec(source: str, overrides: tuple[str, ...]):
    from emtools.models.spec import parse_overrides, resolve_spec, spec_from_dict

    if source.endswith(CHECKPOINT_SUFFIXES):
        from emtools.models.checkpoint import read_checkpoint, saved_spec

        return spec_from_dict({**saved_spec(read_checkpoint(source)), **parse_overrides(overrides)}, where=source)
    return resolve_spec(source, overrides)


# The execution options and what each needs come from their registry (emtools.models.execution).
OPTIONS_TABLE = "\n".join(["\b", "Execution options (--options; any singles join with +, e.g. channels_last+bf16):"]
                          + ["  " + line for line in execution.help_table()])


@main.command("model", help="""Per-layer cost of a model: FLOPs (analytic, checked against
torch's FlopCounterMode), parameters, activation memory, measured forward/backward time,
GFLOP/s and share of this device's measured peak; totals, per-level shares, bottlenecks.

SPEC is a preset (rsunet, rsunet-efficient, unet3d, unet2d; ffn, ffn-aniso, ffn-small), a
YAML/JSON spec file or a checkpoint (.pt), followed by optional key=value overrides. The text
table goes to stdout; --json prints one JSON document instead.

A flood-filling network (ffn*) is profiled on its input, one field of view (N, 2, Z, Y, X) with
Z,Y,X = fov_zyx: --input defaults to the FOV and another size is an error. It reports FLOPs per
FOV (checked against the spec's own count) and a throughput table, FOV/s and voxels/s (FOV
voxels x FOV/s), GFLOP/s and share of the measured peak, for every execution option at batch
sizes 1, 2, 4 and 8 FOVs (--batch changes them), for forward (--mode infer) or training
(--mode train). U-Net sections that do not apply (valid-output crop, per-level shares) are
listed as skipped, with the reason.

--options times each execution option on its own copy of the model; one that cannot run here is
reported as unavailable, with the reason.

""" + OPTIONS_TABLE + """

\b
Examples:
  em-profile model rsunet --input 18,160,160 --no-time
  em-profile model rsunet stride_in=1,2,2 transposed_out=true --input 18,160,160
  em-profile model rsunet-efficient --input 18,160,160 --options default --json > prof.json
  em-profile model ffn --mode infer --options eager,channels_last
  em-profile model ffn-small depth=4 --batch 1,4 --mode train
  em-profile model ffn_run/best.pt --mode infer --json > ffn.json
""")
@click.argument("spec")
@click.argument("overrides", nargs=-1)
@click.option("--input", "input_zyx", type=INT_TRIPLE, default=None,
              help="Input size z,y,x in voxels (required for U-Nets; an FFN's is its FOV).")
@click.option("--batch", "batch_text", default=None,
              help="Batch size, or a comma list (e.g. 1,2,4,8) to time every option at each size "
                   "(samples/s, voxels/s); the per-layer table uses the first. Default 1; for an FFN 1,2,4,8.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:N or auto.")
@click.option("--mode", type=click.Choice(["train", "infer"]), default="train", show_default=True,
              help="train: forward+backward (+Adam step for --options); infer: forward only.")
@click.option("--options", "option_names", default="none", show_default=True,
              help="Execution options to compare: none, default (all that can run here at full speed), or a "
                   f"comma list of {', '.join(['eager'] + execution.singles())} and their combinations with + "
                   "(the table above).")
@click.option("--no-time", is_flag=True, help="Count only (FLOPs, parameters, memory, geometry); measure nothing.")
@click.option("--repeat", type=int, default=3, show_default=True, help="Timed iterations (median reported).")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed iterations first.")
@click.option("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for weights and input.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the per-layer chart as PNG.")
@contract(TOOL)
def model_command(spec, overrides, input_zyx, batch_text, device, mode, option_names, no_time, repeat, warmup,
                  threads, seed, as_json, plot) -> None:
    if input_zyx is not None:
        require_positive("--input", input_zyx)
    if threads is not None:
        if threads < 1:
            raise EmError(f"--threads {threads} must be at least 1")
    if warmup < 0:
        raise EmError(f"--warmup {warmup} must not be negative")
    batches = None if batch_text is None else _batch_sizes(batch_text)
    if (batches and min(batches) < 1) or repeat < 1:
        raise EmError(f"--batch {batch_text} and --repeat {repeat} must be at least 1")
    import torch

    from emtools.profile.options import parse_options
    from emtools.profile.report import format_report, profile_model, resolve_device

    if threads is not None:
        torch.set_num_threads(threads)
    model_spec = _load_spec(spec, overrides)
    dev = resolve_device(device)
    names = parse_options(option_names, dev, mode)
    if no_time and names:
        raise EmError("--no-time measures nothing, so it cannot compare --options; drop one of them")
    from emtools.profile.kinds import kind_of

    kind = kind_of(model_spec)
    if input_zyx is None and kind.needs_input:
        raise click.UsageError("Missing option '--input' (a U-Net's patch size z,y,x, e.g. --input 18,160,160).")
    input_zyx = kind.input_zyx(model_spec, input_zyx)  # before any output: a bad size is one line
    log.info(f"{model_spec.describe()}")
    report = profile_model(model_spec, input_zyx, batches, str(dev), mode, measure=not no_time,
                           options=names, repeats=repeat, warmup=warmup, seed=seed, log=log.info)
    if plot:
        from emtools.profile.plots import layer_chart

        layer_chart(report, plot)
        log.info(f"wrote {plot}")
    if as_json:
        emit(json.dumps(report, sort_keys=True))
    else:
        for line in format_report(report):
            emit(line)


def _batch_sizes(text: str) -> list[int]:
    """``--batch 4`` or ``--batch 1,2,4,8``; a one-line error for anything else."""
    try:
        sizes = [int(part) for part in text.split(",")]
    except ValueError:
        raise EmError(f"--batch {text}: give a batch size or a comma list of them, e.g. 1,2,4,8") from None
    return list(dict.fromkeys(sizes))


@main.command("run", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
              help="""Run CMD and append one JSON record to LOG: wall and CPU time, peak memory (RSS;
GPU from hints), voxels processed and voxels/second. CMD's stdin, stdout and stderr pass through;
em-profile exits with CMD's exit code.

Voxels: --voxels N, or the command reports them by appending {"voxels": N} lines to the file
named in $EMTOOLS_PROFILE_HINTS (emtools.profile.records.write_hint does it); otherwise null.

\b
Example:
  em-profile run --log runs.jsonl --voxels 134217728 -- em-tile raw.h5 -o tiles
""")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), required=True, help="JSON-lines log to append to.")
@click.option("--voxels", type=int, default=None, help="Voxels the command processes (for voxels/second).")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@contract(TOOL)
def run_command(log_path, voxels, command) -> None:
    from emtools.profile.records import append_record, run_command as run

    if voxels is not None and voxels < 0:
        raise EmError(f"--voxels {voxels} must not be negative")
    argv = list(command)
    if argv and argv[0] == "--":
        argv = argv[1:]
    record = run(argv, voxels)
    append_record(log_path, record)
    rate = f", {record['voxels_per_s']:.3g} voxels/s" if record["voxels_per_s"] else ""
    log.info(f"{record['tool']}: {record['wall_s']:.2f} s wall, {record['cpu_s']:.2f} s CPU, "
             f"peak RSS {record['peak_rss_bytes'] / 1e6:.0f} MB{rate}, exit {record['exit_code']} (recorded in {log_path})")
    if record["exit_code"] != 0:
        sys.exit(record["exit_code"] if 0 < record["exit_code"] < 256 else 1)


@main.command("summary", help="""Summarise an em-profile run log per tool: runs, failures, wall and
CPU time, peak memory, voxels/second. Text table on stdout, or --json.

\b
Example:
  em-profile summary runs.jsonl --plot runs.png
""")
@click.argument("log_file", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document instead of the table.")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write a PNG chart per tool.")
@contract(TOOL)
def summary_command(log_file, as_json, plot) -> None:
    from emtools.profile.records import read_records, summarize

    rows = summarize(read_records(log_file))
    if not rows:
        raise EmError(f"no records in the log ({log_file})")
    if plot:
        from emtools.profile.plots import summary_chart

        summary_chart(rows, plot)
        log.info(f"wrote {plot}")
    if as_json:
        emit(json.dumps({"tools": rows}, sort_keys=True))
        return
    header = ("tool", "runs", "failed", "wall s total", "wall s median", "CPU s total", "peak RSS MB",
              "GPU peak MB", "voxels", "voxels/s median")

    def mb(value):
        return "-" if value is None else f"{value / 1e6:.0f}"

    table = [header] + [(r["tool"], str(r["runs"]), str(r["failed"]), f"{r['wall_s_total']:.2f}",
                         f"{r['wall_s_median']:.2f}", f"{r['cpu_s_total']:.2f}", mb(r["peak_rss_bytes"]),
                         mb(r["gpu_peak_bytes"]), "-" if r["voxels_total"] is None else str(r["voxels_total"]),
                         "-" if r["voxels_per_s_median"] is None else f"{r['voxels_per_s_median']:.3g}")
                        for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        emit("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))).rstrip())


if __name__ == "__main__":
    main()
