"""examples/slurm under a real single-node Slurm (tests/slurm_cluster.py): the chunked segmentation
as job arrays gives the segmentation of the same steps run one after another, bit for bit, and a
failing chunk cancels the jobs after it instead of leaving them queued. Those two skip, with the
reason, where Slurm and munge are not installed (Debian: slurm-wlm, munge) or their daemons cannot
start; submit.sh's own checks (bad chunking, a failed submission) run everywhere, against stand-ins
for sbatch and scancel."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import run_tool
from emtools import io
from emtools.meta import Metadata
from slurm_cluster import slurm_fixture  # noqa: F401  (the session fixture "slurm")

ROOT = Path(__file__).resolve().parent.parent
SUBMIT = ROOT / "examples" / "slurm" / "submit.sh"
SYNTHETIC = ROOT / "examples" / "make_synthetic.py"
# 4 chunks (1 x 2 x 2) of a volume whose neurons cross the chunk borders
SHAPE_ZYX, CHUNK_ZYX, HALO_ZYX, THRESHOLD = "12,64,96", "12,32,48", "2,8,8", "0.5"
STEPS = ("split", "watershed", "offsets", "edges", "stitch", "relabel", "merge")
ARRAYS = {"watershed", "edges", "relabel"}
JOBS_TIMEOUT_S = 75


def _tools_env(base: dict) -> dict:
    """``base`` with the em-* tools of this interpreter first on PATH, one thread per tool."""
    return dict(base, PATH=f"{Path(sys.executable).parent}{os.pathsep}{base.get('PATH', os.defpath)}",
                OMP_NUM_THREADS="1")


def _make_affinities(folder: Path) -> str:
    done = subprocess.run([sys.executable, str(SYNTHETIC), str(folder / "raw.h5:/image"), str(folder / "gt.h5:/neurons"),
                           "--affinities", str(folder / "affs.h5:/affs"), "--shape", SHAPE_ZYX, "--seed", "3",
                           "--cell-diameter", "300"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return str(folder / "affs.h5") + ":/affs"


def _run(tool, *args, cwd, stdin=None):
    done = run_tool(tool, *args, cwd=cwd, stdin=stdin, timeout=60)
    assert done.returncode == 0, (tool, args, done.stderr)
    return done.stdout


def _plain_loop(affinities: str, work: Path) -> None:
    """The steps of submit.sh, one after another in this process's loop, same relative paths."""
    work.mkdir()
    chunks = _run("tile", "split", affinities, "--chunk", CHUNK_ZYX, "--halo", HALO_ZYX, "-o", "affchunks", "-q",
                  cwd=work).split()
    names = [Path(c).stem for c in chunks]
    for folder in ("frags", "edges", "seg"):
        (work / folder).mkdir()
    for chunk, name in zip(chunks, names):
        _run("watershed", chunk, "-o", f"frags/{name}.h5", "-q", cwd=work)
    _run("agglomerate", "offsets", "-", "-o", "offsets.tsv", "-q", cwd=work,
         stdin="".join(f"frags/{n}.h5\n" for n in names))
    for chunk, name in zip(chunks, names):
        _run("agglomerate", "edges", chunk, "--offsets", "offsets.tsv", "--until", THRESHOLD,
             "-o", f"edges/{name}.tsv", "-q", cwd=work)
    _run("agglomerate", "stitch", *[f"edges/{n}.tsv" for n in names], "--offsets", "offsets.tsv",
         "-t", THRESHOLD, "-o", "lut.tsv", "-q", cwd=work)
    for name in names:
        _run("agglomerate", "relabel", f"frags/{name}.h5", "--offsets", "offsets.tsv", "--lut", "lut.tsv",
             "-t", THRESHOLD, "-o", f"seg/{name}.h5", "-q", cwd=work)
    _run("tile", "merge", *[f"seg/{n}.h5" for n in names], "-o", "seg.h5:/seg", "-q", cwd=work)


def _submit(slurm, affinities: str, work: Path) -> dict[str, str]:
    """Run submit.sh; {step: job id}."""
    env = _tools_env(slurm.env)
    env.update(CHUNK_ZYX=CHUNK_ZYX, HALO_ZYX=HALO_ZYX, THRESHOLD=THRESHOLD)
    done = subprocess.run(["bash", str(SUBMIT), affinities, str(work)], capture_output=True, text=True, env=env,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    ids = done.stdout.split()
    assert len(ids) == len(STEPS) and all(i.isdigit() for i in ids), done.stdout
    return dict(zip(STEPS, ids))


def _states(slurm, job_id: str) -> list[str]:
    """JobState of the job, or of each task of a job array."""
    return [record.get("JobState", "?") for record in slurm.job_records(job_id)]


def test_job_arrays_give_the_plain_loops_segmentation_bit_for_bit(slurm, tmp_path):
    affinities = _make_affinities(tmp_path)
    jobs = _submit(slurm, affinities, tmp_path / "slurm")
    _plain_loop(affinities, tmp_path / "loop")  # meanwhile: the jobs wait for each other anyway
    slurm.wait_for_jobs(jobs.values(), timeout=JOBS_TIMEOUT_S)

    chunks = (tmp_path / "loop" / "affchunks").glob("*.h5")
    n_chunks = len(list(chunks))
    assert n_chunks == 4
    for step, job_id in jobs.items():
        states = _states(slurm, job_id)
        assert states == ["COMPLETED"] * (n_chunks if step in ARRAYS else 1), (step, states, slurm.logs())
    work = tmp_path / "slurm"
    # every array task ran its own chunk and logged it
    for step in ARRAYS:
        logs = sorted((work / "logs").glob(f"em-{step}-{jobs[step]}_*.out"))
        assert len(logs) == n_chunks, (step, os.listdir(work / "logs"))
        assert all(f"chunks.sbatch: {step} chunk" in log.read_text() for log in logs)

    loop_seg, loop_meta = io.read_volume(str(tmp_path / "loop" / "seg.h5:/seg"))
    slurm_seg, slurm_meta = io.read_volume(str(work / "seg.h5:/seg"))
    assert slurm_seg.dtype == loop_seg.dtype and slurm_seg.shape == loop_seg.shape == (12, 64, 96)
    assert np.array_equal(slurm_seg, loop_seg)
    assert slurm_meta == loop_meta  # voxel size, offset, axes and the same provenance chain
    for table in ["offsets.tsv", "lut.tsv"] + [f"edges/{p.name}" for p in (tmp_path / "loop" / "edges").iterdir()]:
        assert (work / table).read_bytes() == (tmp_path / "loop" / table).read_bytes(), table
    # HDF5 written without time stamps: the files themselves are the same bytes
    assert (work / "seg.h5").read_bytes() == (tmp_path / "loop" / "seg.h5").read_bytes()
    # a real stitched segmentation: several segments, some across the chunk borders (y 32, x 48)
    assert len(np.unique(loop_seg[loop_seg > 0])) > 3
    assert _across(loop_seg, 1, 32).size > 0 and _across(loop_seg, 2, 48).size > 0


def _across(seg: np.ndarray, axis: int, at: int) -> np.ndarray:
    """The non-zero ids found on both sides of index ``at`` along ``axis``."""
    before, after = np.split(seg, [at], axis=axis)
    both = np.intersect1d(np.unique(before), np.unique(after))
    return both[both > 0]


def test_a_failing_chunk_cancels_the_jobs_after_it(slurm, tmp_path):
    affinities = _make_affinities(tmp_path)
    affs, meta = io.read_volume(affinities)
    affs[:, 0, 0, 0] = 2.0  # out of [0, 1]: em-watershed refuses the first chunk
    io.write_volume(str(tmp_path / "bad.h5:/affs"), affs, meta)
    work = tmp_path / "slurm"
    jobs = _submit(slurm, str(tmp_path / "bad.h5:/affs"), work)
    slurm.wait_for_jobs(jobs.values(), timeout=JOBS_TIMEOUT_S)

    assert _states(slurm, jobs["split"]) == ["COMPLETED"]
    watershed = _states(slurm, jobs["watershed"])
    assert sorted(watershed) == ["COMPLETED", "COMPLETED", "COMPLETED", "FAILED"], watershed
    for step in STEPS[2:]:
        # cancelled (--kill-on-invalid-dep), never run; their records may already be purged
        assert set(_states(slurm, jobs[step])) <= {"CANCELLED"}, (step, _states(slurm, jobs[step]))
    assert not (work / "offsets.tsv").exists() and not (work / "seg.h5").exists()
    failed = (work / "logs" / f"em-watershed-{jobs['watershed']}_1.out").read_text().strip().splitlines()
    assert failed[-1].startswith("em-watershed: error: affinities must lie in [0, 1]"), failed


# submit.sh's own checks, with stand-ins for sbatch and scancel: these run without Slurm

FAKE_SBATCH = """#!/bin/bash
echo "sbatch $*" >> "{log}"
n=$(grep -c '^sbatch' "{log}")
[[ $n -lt {fail_at} ]] || {{ echo "sbatch: error: Batch job submission failed" >&2; exit 1; }}
echo "10$n"
"""


def _fake_slurm(folder: Path, fail_at: int) -> tuple[dict, Path]:
    """An environment whose sbatch prints job ids 101, 102, ... and fails at call ``fail_at``;
    every sbatch and scancel call is appended to the returned log."""
    bin_dir, log = folder / "fakebin", folder / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH.format(log=log, fail_at=fail_at))
    (bin_dir / "scancel").write_text(f'#!/bin/bash\necho "scancel $*" >> "{log}"\n')
    for script in bin_dir.iterdir():
        script.chmod(0o755)
    env = _tools_env(dict(os.environ))
    env.update(PATH=f"{bin_dir}{os.pathsep}{env['PATH']}", CHUNK_ZYX="4,32,32", HALO_ZYX="1,4,4")
    return env, log


def _small_affinities(folder: Path) -> str:
    spec = str(folder / "affs.h5") + ":/affs"
    io.write_volume(spec, np.full((3, 4, 64, 64), 0.5, np.float32), Metadata(axes="czyx", voxel_size_nm=(40, 4, 4)))
    return spec


def test_submit_checks_the_chunking_before_anything_is_queued(tmp_path):
    env, log = _fake_slurm(tmp_path, fail_at=99)
    env["CHUNK_ZYX"] = "0,32,32"
    done = subprocess.run(["bash", str(SUBMIT), _small_affinities(tmp_path), str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().splitlines() == ["em-tile: error: chunk size must be positive, got 0 along z"]
    assert not log.exists() and not (tmp_path / "work").exists()


def test_a_failed_submission_cancels_the_jobs_it_queued(tmp_path):
    env, log = _fake_slurm(tmp_path, fail_at=3)
    done = subprocess.run(["bash", str(SUBMIT), _small_affinities(tmp_path), str(tmp_path / "work")],
                          capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 1 and done.stdout.split() == ["101", "102"]
    assert done.stderr.strip().splitlines()[-1] == "submit.sh: error: sbatch failed for em-offsets; cancelled 101 102"
    calls = log.read_text().splitlines()
    assert len(calls) == 4 and calls[-1] == "scancel 101 102"
    # the split runs first, the array of 4 chunks waits for it
    assert "--job-name=em-split" in calls[0] and "--dependency" not in calls[0]
    assert "--array=1-4" in calls[1] and "--dependency=afterok:101" in calls[1] and "--kill-on-invalid-dep=yes" in calls[1]
