#!/usr/bin/env python
"""Write the short report that ends an example pipeline (examples/pipeline.mk): what was trained,
the scores at the fixed threshold, the sweep table, the time of every stage and the pictures.

Example (in a pipeline's folder):
    python examples/scripts/report.py --title demo --model model/last.pt --scores scores.json \\
        --threshold 0.7 --sweep sweep.txt --log runs.jsonl -o report.txt

Time per stage comes from the em-profile run records in --log: one stage per tool, and per
subcommand for em-tile and em-agglomerate (split, merge, edges, ...), in the order the stages
first ran. When a command was run more than once (a stage redone after a change), only its
latest run counts. Pictures are the pipeline's PNGs found in the folder. Errors are one line on
stderr (exit 1); the report is written atomically.
"""

import argparse
import glob
import json
import os
import sys

from emtools import io
from emtools.errors import EmError
from emtools.profile.records import read_records, summarize

PROG = "report.py"
WITH_SUBCOMMAND = ("em-tile", "em-agglomerate", "em-profile")
# the pictures a pipeline folder may hold, with what they show
PICTURES = (
    ("errors.png", "split (vermillion) and merge (blue) errors at the fixed threshold, over the image (em-eval --plot)"),
    ("sweep_errors.png", "the same errors, one row per threshold of the sweep (em-eval --table --plot)"),
    ("sweep.png", "VOI split against VOI merge over the threshold sweep (scripts/plot_sweep.py)"),
    ("pred/*.png", "the model's maps, per chunk (em-predict --preview)"),
    ("frags/*.png", "supervoxels, per chunk (em-watershed --preview)"),
)
SCORES = ("voi_split", "voi_merge", "voi", "adapted_rand_error")


def stage_of(argv):
    """'em-agglomerate edges' for subcommand tools, a script's file name for python scripts."""
    tool = os.path.basename(argv[0])
    if tool in WITH_SUBCOMMAND and len(argv) > 1:
        return f"{tool} {argv[1]}"
    if tool.startswith("python") and len(argv) > 1:
        return os.path.basename(argv[1])
    return tool


def stage_rows(log):
    """Per-stage summaries (emtools.profile.records.summarize) of each command's latest run."""
    latest = {}
    for record in read_records(log):
        latest.pop(json.dumps(record["argv"]), None)  # re-insert: keeps the latest, in run order
        latest[json.dumps(record["argv"])] = record
    renamed = [{**record, "tool": stage_of(record["argv"])} for record in latest.values()]
    rows = {row["tool"]: row for row in summarize(renamed)}
    return [rows[stage] for stage in dict.fromkeys(record["tool"] for record in renamed)]


def training_line(model):
    """What the model folder says about the run: steps and last loss (metrics.jsonl), no torch."""
    metrics = os.path.join(os.path.dirname(model), "metrics.jsonl")
    last = None
    if os.path.exists(metrics):
        with open(metrics, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(row, dict) and row.get("split") == "train":
                    last = row
    if last is None:
        return f"model: {model}"
    return f"model: {model} (trained {last['step']} steps; last training loss {last['loss']:.4f})"


def report(title, model, scores_path, threshold, sweep_path, log):
    with open(scores_path, encoding="utf-8") as handle:
        try:
            scores = json.loads(handle.read())
        except json.JSONDecodeError:
            raise EmError(f"not an em-eval JSON object ({scores_path})") from None
    missing = [k for k in SCORES if not isinstance(scores.get(k), (int, float))]
    if missing:
        raise EmError(f"no {', '.join(missing)} in {scores_path}")
    with open(sweep_path, encoding="utf-8") as handle:
        sweep = handle.read().rstrip("\n")
    lines = [f"# {title}", "", training_line(model), ""]
    where = f"{scores.get('segmentation', '?')} against {scores.get('ground_truth', '?')}"
    lines += [f"scores at the fixed threshold {threshold} ({where}; lower is better):",
              "  " + "  ".join(f"{k} {scores[k]:.4f}" for k in SCORES), "",
              f"threshold sweep ({sweep_path}; the best marked *, chosen on this volume, so an upper bound):",
              sweep, ""]
    rows = stage_rows(log) if os.path.exists(log) else []
    if rows:
        lines += [f"time per stage ({log}; `em-profile summary {log}` per tool):",
                  f"  {'stage':<28} {'runs':>4} {'failed':>6} {'wall s':>8} {'median s':>8} {'cpu s':>8} {'peak MB':>8}"]
        for row in rows:
            peak = f"{row['peak_rss_bytes'] / 2**20:8.0f}" if row["peak_rss_bytes"] is not None else f"{'-':>8}"
            lines.append(f"  {row['tool']:<28} {row['runs']:>4} {row['failed']:>6} {row['wall_s_total']:>8.1f} "
                         f"{row['wall_s_median']:>8.1f} {row['cpu_s_total']:>8.1f} {peak}")
        total = sum(row["wall_s_total"] for row in rows)
        lines += [f"  {'all stages, one after another':<28} {sum(r['runs'] for r in rows):>4} "
                  f"{sum(r['failed'] for r in rows):>6} {total:>8.1f}", ""]
    pictures = [(pattern, what, sorted(glob.glob(pattern))) for pattern, what in PICTURES]
    pictures = [(pattern, what, found) for pattern, what, found in pictures if found]
    if pictures:
        lines.append("pictures:")
        for pattern, what, found in pictures:
            shown = found[0] if len(found) == 1 else f"{pattern} ({len(found)} files)"
            lines.append(f"  {shown}: {what}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--title", default="emtools example")
    parser.add_argument("--model", required=True, help="the checkpoint used (its folder's metrics.jsonl is read)")
    parser.add_argument("--scores", required=True, help="em-eval's JSON object at the fixed threshold")
    parser.add_argument("--threshold", required=True, help="the fixed threshold")
    parser.add_argument("--sweep", required=True, help="em-eval --table of the sweep")
    parser.add_argument("--log", required=True, help="em-profile run log (JSON lines)")
    parser.add_argument("-o", "--output", required=True, help="report to write")
    args = parser.parse_args(argv)
    try:
        text = report(args.title, args.model, args.scores, args.threshold, args.sweep, args.log)
        with io.atomic_text(args.output) as handle:
            handle.write(text)
    except EmError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"{PROG}: error: {error.strerror or error} ({error.filename})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
