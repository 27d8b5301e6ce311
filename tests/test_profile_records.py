"""Run records: measuring a command, voxel hints, concurrent appends, the per-tool summary."""

from __future__ import annotations

import json
import multiprocessing
import sys

import pytest

from emtools.errors import EmError
from emtools.profile.records import append_record, read_hints, read_records, run_command, summarize, write_hint

HINTING = ("import json, os\n"
           "for n in (1000, 24):\n"
           "    open(os.environ['EMTOOLS_PROFILE_HINTS'], 'a').write(json.dumps({'voxels': n}) + '\\n')\n"
           "open(os.environ['EMTOOLS_PROFILE_HINTS'], 'a').write('{\"gpu_peak_bytes\": 77}\\nnot json\\n')\n")


def test_run_command_measures_and_reads_hints():
    record = run_command([sys.executable, "-c", HINTING])
    assert record["exit_code"] == 0 and record["voxels"] == 1024 and record["gpu_peak_bytes"] == 77
    assert record["wall_s"] > 0 and record["cpu_s"] >= 0 and record["peak_rss_bytes"] > 1_000_000
    assert record["voxels_per_s"] == pytest.approx(1024 / record["wall_s"])
    assert record["tool"] == "python" or record["tool"].startswith("python")


def test_user_voxels_win_and_exit_codes_are_kept():
    record = run_command([sys.executable, "-c", "import sys; sys.exit(3)"], voxels=10)
    assert record["exit_code"] == 3 and record["voxels"] == 10 and record["gpu_peak_bytes"] is None
    with pytest.raises(EmError, match="command not found"):
        run_command(["/no/such/command"])
    with pytest.raises(EmError, match="no command given"):
        run_command([])


def test_write_hint_is_silent_outside_em_profile(monkeypatch, tmp_path):
    monkeypatch.delenv("EMTOOLS_PROFILE_HINTS", raising=False)
    write_hint(voxels=5)  # nothing to write to: no error
    target = tmp_path / "hints.jsonl"
    monkeypatch.setenv("EMTOOLS_PROFILE_HINTS", str(target))
    write_hint(voxels=5)
    write_hint(voxels=6, gpu_peak_bytes=3)
    assert read_hints(str(target)) == {"voxels": 11, "gpu_peak_bytes": 3}


def _append_many(path, worker):
    for i in range(50):
        append_record(path, {"tool": f"em-{worker}", "wall_s": 1.0, "pad": "x" * 3000, "i": i})


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = str(tmp_path / "log.jsonl")
    workers = [multiprocessing.Process(target=_append_many, args=(path, w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    records = read_records(path)
    assert len(records) == 200 and all(len(r["pad"]) == 3000 for r in records)


def test_summary_and_bad_logs(tmp_path):
    path = str(tmp_path / "log.jsonl")
    for tool, wall, voxels, code in (("em-a", 2.0, 100, 0), ("em-a", 4.0, 100, 1), ("em-b", 1.0, None, 0)):
        append_record(path, {"tool": tool, "wall_s": wall, "cpu_s": 1.0, "voxels": voxels, "exit_code": code,
                             "voxels_per_s": voxels / wall if voxels else None, "peak_rss_bytes": 5})
    rows = summarize(read_records(path))
    assert [r["tool"] for r in rows] == ["em-a", "em-b"]
    a = rows[0]
    assert a["runs"] == 2 and a["failed"] == 1 and a["wall_s_total"] == 6.0 and a["wall_s_median"] == 3.0
    assert a["voxels_total"] == 200 and a["voxels_per_s_median"] == pytest.approx(37.5)
    assert rows[1]["voxels_per_s_median"] is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"tool": "x", "wall_s": 1}) + "\n{oops\n")
    with pytest.raises(EmError, match="line 2 is not a JSON record"):
        read_records(str(bad))
    other = tmp_path / "other.jsonl"
    other.write_text("[1, 2]\n")
    with pytest.raises(EmError, match="line 1 is not an em-profile run record"):
        read_records(str(other))
