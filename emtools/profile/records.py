"""Run records: time, CPU, memory and throughput of one command, as one JSON line in a log.

``em-profile run --log LOG [--voxels N] -- CMD ...`` runs CMD (its stdin/stdout/stderr pass
through untouched, so it still composes in a pipeline) and appends one record to LOG::

    {"tool": "em-tile", "argv": [...], "exit_code": 0, "wall_s": 12.3, "cpu_s": 20.1,
     "peak_rss_bytes": 512000000, "gpu_peak_bytes": null, "voxels": 134217728,
     "voxels_per_s": 1.09e7, "started": "2026-01-01T12:00:00Z", "host": "...", "emtools_version": "0.1.0"}

Voxels processed: ``--voxels N`` when given. Otherwise the command may report them itself: it is
started with ``EMTOOLS_PROFILE_HINTS=<file>`` in its environment, and any process may append JSON
lines such as ``{"voxels": 1000000, "gpu_peak_bytes": 123}`` to that file (see :func:`write_hint`;
voxels add up, GPU peaks take the maximum). A command that reports nothing gets ``null``.

Peak RSS is the largest resident set of the command and of any child it waited for
(``getrusage(RUSAGE_CHILDREN)``); GPU peak memory only comes from hints (another process's GPU
allocations cannot be read portably). Each record is appended with a single ``write`` on a file
opened with ``O_APPEND``, so concurrent runs may share one log without tearing lines.
"""

from __future__ import annotations

import datetime
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterable, Sequence

from emtools import __version__
from emtools.errors import EmError

HINTS_ENV = "EMTOOLS_PROFILE_HINTS"


def write_hint(**fields: Any) -> None:
    """For tools: report e.g. ``voxels=`` or ``gpu_peak_bytes=`` to an enclosing ``em-profile run``.

    Does nothing when not run under ``em-profile run``. One ``O_APPEND`` write per call.
    """
    path = os.environ.get(HINTS_ENV)
    if not path:
        return
    line = (json.dumps(fields, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def read_hints(path: str) -> dict[str, Any]:
    """Sum of ``voxels`` and maximum of ``gpu_peak_bytes`` over the hint lines (bad lines ignored)."""
    voxels, gpu = None, None
    if not os.path.exists(path):
        return {"voxels": None, "gpu_peak_bytes": None}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                hint = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(hint, dict):
                if isinstance(hint.get("voxels"), (int, float)):
                    voxels = (voxels or 0) + int(hint["voxels"])
                if isinstance(hint.get("gpu_peak_bytes"), (int, float)):
                    gpu = max(gpu or 0, int(hint["gpu_peak_bytes"]))
    return {"voxels": voxels, "gpu_peak_bytes": gpu}


def run_command(argv: Sequence[str], voxels: int | None = None) -> dict[str, Any]:
    """Run ``argv`` to completion and measure it; returns the record (not yet written)."""
    if not argv:
        raise EmError("no command given: write it after '--' (e.g. em-profile run --log runs.jsonl -- em-tile ...)")
    handle, hints = tempfile.mkstemp(prefix="emtools-hints-", suffix=".jsonl")
    os.close(handle)
    env = dict(os.environ, **{HINTS_ENV: hints})
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    start = time.perf_counter()
    try:
        try:
            process = subprocess.Popen(list(argv), env=env)
        except FileNotFoundError:
            raise EmError(f"command not found ({argv[0]})") from None
        except PermissionError:
            raise EmError(f"command is not executable ({argv[0]})") from None
        try:
            exit_code = process.wait()
        except KeyboardInterrupt:
            process.wait()
            raise
        wall = round(time.perf_counter() - start, 6)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        hinted = read_hints(hints)
    finally:
        os.unlink(hints)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    count = voxels if voxels is not None else hinted["voxels"]
    return {
        "tool": os.path.basename(argv[0]),
        "argv": list(argv),
        "exit_code": exit_code,
        "wall_s": wall,
        "cpu_s": round(cpu, 6),
        "peak_rss_bytes": after.ru_maxrss * 1024 if sys.platform != "darwin" else after.ru_maxrss,
        "gpu_peak_bytes": hinted["gpu_peak_bytes"],
        "voxels": count,
        "voxels_per_s": (count / wall) if count is not None and wall > 0 else None,
        "started": started,
        "host": socket.gethostname(),
        "emtools_version": __version__,
    }


def append_record(path: str, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line with one ``write`` (safe for concurrent appenders)."""
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        written = os.write(fd, line)
    finally:
        os.close(fd)
    if written != len(line):  # pragma: no cover - a full disk
        raise EmError(f"short write appending a record ({path})")


def read_records(path: str) -> list[dict[str, Any]]:
    """All records of a log, with a one-line error naming the first bad line."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise EmError(f"line {number} is not a JSON record ({path})") from None
            if not isinstance(record, dict) or "tool" not in record or "wall_s" not in record:
                raise EmError(f"line {number} is not an em-profile run record ({path})")
            records.append(record)
    return records


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per tool: runs, failures, wall and CPU time, peak memory, voxels per second."""
    by_tool: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_tool.setdefault(str(record["tool"]), []).append(record)
    rows = []
    for tool, runs in sorted(by_tool.items()):
        walls = [float(r["wall_s"]) for r in runs]
        rates = [float(r["voxels_per_s"]) for r in runs if r.get("voxels_per_s")]
        rss = [int(r["peak_rss_bytes"]) for r in runs if r.get("peak_rss_bytes") is not None]
        gpu = [int(r["gpu_peak_bytes"]) for r in runs if r.get("gpu_peak_bytes") is not None]
        voxels = [int(r["voxels"]) for r in runs if r.get("voxels") is not None]
        rows.append({
            "tool": tool,
            "runs": len(runs),
            "failed": sum(1 for r in runs if r.get("exit_code", 0) != 0),
            "wall_s_total": sum(walls),
            "wall_s_median": statistics.median(walls),
            "cpu_s_total": sum(float(r.get("cpu_s") or 0) for r in runs),
            "peak_rss_bytes": max(rss) if rss else None,
            "gpu_peak_bytes": max(gpu) if gpu else None,
            "voxels_total": sum(voxels) if voxels else None,
            "voxels_per_s_median": statistics.median(rates) if rates else None,
        })
    return rows
