"""examples/cron/em-cron as cron runs it: a real emtools pipeline under make, one run at a time,
dated logs, the failing stage named in one line, no partial outputs after failures and kills."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EM_CRON = ROOT / "examples" / "cron" / "em-cron"
LOG_NAME = re.compile(r"em-cron-\d{8}-\d{6}(-\d+)?\.log")

pytestmark = pytest.mark.skipif(
    shutil.which("make") is None or shutil.which("flock") is None,
    reason="em-cron needs GNU make and flock (util-linux)",
)

# A small emtools pipeline: synthetic affinities -> em-watershed -> em-agglomerate -> em-eval.
# Every stage first appends its name to ran.txt, so a test sees which stages ran. The
# .DELETE_ON_ERROR line is left out on purpose: em-cron adds it (a failed `> $@` must not stay).
PIPELINE = """\
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-builtin-rules
DATA ?=
SLOW ?= 0
WS_OPTS ?=
GT ?= gt.h5:/neurons

.PHONY: all
all: scores.json

affs.h5 gt.h5 &:
\techo inputs >> ran.txt
\tcp $(DATA)/affs.h5 $(DATA)/gt.h5 .

frags.h5: affs.h5
\techo $@ >> ran.txt
\tsleep $(SLOW)
\tem-watershed affs.h5:/affs $(WS_OPTS) -o $@ -q

seg.h5: frags.h5 affs.h5
\techo $@ >> ran.txt
\tem-agglomerate segment frags.h5 affs.h5:/affs -t 0.5 -o $@:/seg -q

scores.json: seg.h5 gt.h5
\techo $@ >> ran.txt
\tem-eval seg.h5:/seg $(GT) -q > $@
"""

# Shell-only stages for what needs no em-* tool (locks, signals, timeouts): fast.
SHELL_STAGES = """\
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
SLOW ?= 0

quick:
\techo $@ >> ran.txt; touch $@

slow:
\techo $@ >> ran.txt; sleep $(SLOW); touch $@

# writes half its output, then waits: a kill leaves a partial file unless make removes it
half.txt:
\techo $@ >> ran.txt; { echo partial; sleep 30; echo rest; } > $@
"""


def _env():
    bin_dir = Path(sys.executable).parent
    return dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1")


def _cron(workdir, *args, **kwargs):
    return subprocess.run([str(EM_CRON), "-C", str(workdir), *map(str, args)], capture_output=True, text=True,
                          env=_env(), timeout=120, **kwargs)


def _default_signals() -> None:
    # A test run started in the background of a non-interactive shell (`make test &`) inherits
    # SIGINT ignored, and bash cannot trap a signal ignored on entry: em-cron starts as cron or a
    # terminal would start it, with SIGINT and SIGTERM at their defaults.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _start(workdir, *args):
    """em-cron in the background, as the leader of a process group of its own (as under cron)."""
    return subprocess.Popen([str(EM_CRON), "-C", str(workdir), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), start_new_session=True,
                            preexec_fn=_default_signals)


def _ran(workdir):
    path = workdir / "ran.txt"
    return path.read_text().split() if path.exists() else []


def _wait_for_stage(workdir, stage, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while stage not in _ran(workdir):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"stage {stage} never started"
        time.sleep(0.05)


def _wait_until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _waits_for_lock(pid):
    """True once em-cron ``pid`` has a `flock` child (it is waiting for the lock)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            name, ppid = fields[0].split("(", 1)[1], int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and name == "flock":
            return True
    return False


def _logs(workdir):
    return sorted(p for p in (workdir / "logs").iterdir() if p.name != "latest.log")


def _last_line(stderr):
    lines = stderr.strip().splitlines()
    assert lines, "nothing on stderr"
    return lines[-1]


def _temporaries(workdir):
    return [p.name for p in workdir.rglob("*") if ".emtmp-" in p.name]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """affs.h5 and gt.h5 of a small synthetic volume (examples/make_synthetic.py), made once."""
    folder = tmp_path_factory.mktemp("synthetic")
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "make_synthetic.py"), str(folder / "raw.h5:/image"),
                           str(folder / "gt.h5:/neurons"), "--affinities", str(folder / "affs.h5:/affs"),
                           "--shape", "8,64,64", "--seed", "1", "--cell-diameter", "200"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return folder


@pytest.fixture
def pipeline(tmp_path, synthetic):
    (tmp_path / "Makefile").write_text(PIPELINE)
    return tmp_path, f"DATA={synthetic}"


@pytest.fixture
def stages(tmp_path):
    (tmp_path / "Makefile").write_text(SHELL_STAGES)
    return tmp_path


def test_help_and_usage_errors(tmp_path):
    shown = subprocess.run([str(EM_CRON), "--help"], capture_output=True, text=True)
    assert shown.returncode == 0 and shown.stderr == ""
    for part in ("Usage: em-cron", "--lock FILE", "--wait SECONDS", "Exit codes:", "75", "crontab: 17 3 * * *"):
        assert part in shown.stdout
    for args, code, fragment in [
        (["--bogus"], 2, "unknown option --bogus (make's own options go after --)"),
        (["--wait", "soon"], 2, "--wait must be a number of seconds, got 'soon'"),
        (["--jobs", "0"], 2, "--jobs must be a positive integer"),
        (["-C", str(tmp_path / "absent")], 1, "cannot change to directory"),
        (["-C", str(tmp_path), "-f", "absent.mk"], 1, f"no such Makefile: absent.mk (relative to {tmp_path})"),
    ]:
        done = subprocess.run([str(EM_CRON), *args], capture_output=True, text=True, env=_env())
        assert done.returncode == code and done.stdout == "", (args, done)
        assert done.stderr.count("\n") == 1 and done.stderr.startswith("em-cron: error: ") and fragment in done.stderr
    assert os.listdir(tmp_path) == []  # nothing created: no lock, no logs


def test_a_run_logs_to_a_dated_file_and_a_second_run_does_nothing(pipeline):
    workdir, data = pipeline
    first = _cron(workdir, data, "-j", "2")
    assert (first.returncode, first.stdout, first.stderr) == (0, "", "")
    assert _ran(workdir) == ["inputs", "frags.h5", "seg.h5", "scores.json"]
    scores = json.loads((workdir / "scores.json").read_text())
    assert scores["voi"] < 1.0 and scores["adapted_rand_error"] < 0.2, scores
    [log] = _logs(workdir)
    assert LOG_NAME.fullmatch(log.name)
    assert os.readlink(workdir / "logs" / "latest.log") == log.name
    text = log.read_text()
    assert f"em-cron: directory: {workdir.resolve()}" in text
    for stage in ("frags.h5", "seg.h5", "scores.json"):  # --trace: what was rebuilt, and why
        assert f"update target '{stage}'" in text or f"target '{stage}' does not exist" in text
    assert "em-watershed affs.h5:/affs" in text and " -j 2 --output-sync=target " in text
    assert text.splitlines()[-1].endswith("exit 0: ok")
    assert f"lock: {workdir.resolve()}/.em-cron.lock (waited 0 s)" in text
    assert _temporaries(workdir) == []

    second = _cron(workdir, data)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert _ran(workdir) == ["inputs", "frags.h5", "seg.h5", "scores.json"]  # no stage reran
    logs = _logs(workdir)
    assert len(logs) == 2 and all(LOG_NAME.fullmatch(p.name) for p in logs)
    newest = (workdir / "logs" / "latest.log").resolve()
    assert newest != log.resolve()
    assert "Nothing to be done for 'all'" in newest.read_text()


def test_a_failing_stage_is_named_and_leaves_no_partial_output(pipeline):
    workdir, data = pipeline
    # a real tool fails: em-watershed refuses the threshold
    failed = _cron(workdir, data, "WS_OPTS=--threshold 1.5")
    assert failed.returncode == 1 and failed.stdout == ""
    log = (workdir / "logs" / "latest.log").resolve()
    assert _last_line(failed.stderr) == f"em-cron: stage 'frags.h5' failed (exit 1); log: {log}"
    assert failed.stderr.count("\n") == 1
    assert "em-watershed: error: --threshold must be in [0, 1], got 1.5" in log.read_text()
    assert not (workdir / "frags.h5").exists() and _temporaries(workdir) == []
    assert (workdir / "affs.h5").exists()  # what was done stays done

    # `em-eval ... > scores.json` fails after the shell created scores.json: without
    # .DELETE_ON_ERROR (this Makefile has none; em-cron adds it) the empty file would look done
    failed = _cron(workdir, data, "GT=gt.h5:/nope", "--tail", "3")
    assert failed.returncode == 1
    log = (workdir / "logs" / "latest.log").resolve()
    assert _last_line(failed.stderr) == f"em-cron: stage 'scores.json' failed (exit 1); log: {log}"
    assert "em-eval: error: no dataset /nope in gt.h5" in failed.stderr  # --tail 3 shows the cause
    assert not (workdir / "scores.json").exists()
    assert (workdir / "seg.h5").exists()

    fixed = _cron(workdir, data)
    assert (fixed.returncode, fixed.stderr) == (0, "")
    # inputs once; frags.h5 failed once then ran; scores.json failed once then ran; nothing else again
    assert _ran(workdir) == ["inputs", "frags.h5", "frags.h5", "seg.h5", "scores.json", "scores.json"]
    assert json.loads((workdir / "scores.json").read_text())["mode"] == "neuron"
    assert len(_logs(workdir)) == 3


def test_a_run_killed_mid_stage_leaves_nothing_partial_and_the_next_run_finishes_it(pipeline):
    workdir, data = pipeline
    proc = _start(workdir, data, "SLOW=60")
    _wait_for_stage(workdir, "frags.h5", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the wrapper's whole process group, as a cron daemon or systemd would
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143 and out == ""
    log = (workdir / "logs" / "latest.log").resolve()
    assert _last_line(err) == f"em-cron: interrupted by SIGTERM during stage 'frags.h5'; log: {log}"
    text = log.read_text()
    assert "received SIGTERM; stopping make" in text and text.splitlines()[-1].endswith(
        "exit 143: interrupted by SIGTERM during stage 'frags.h5'")
    assert not (workdir / "frags.h5").exists() and _temporaries(workdir) == []
    assert (workdir / "affs.h5").exists()

    # the lock is free at once (no stage process lives on), and only what is missing reruns
    again = _cron(workdir, data)
    assert (again.returncode, again.stderr) == (0, ""), again.stderr
    assert _ran(workdir) == ["inputs", "frags.h5", "frags.h5", "seg.h5", "scores.json"]
    assert json.loads((workdir / "scores.json").read_text())["mode"] == "neuron"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_wrapper_alone_is_forwarded(stages, sig):
    """kill PID (or Ctrl-C): em-cron stops make, make removes the half-written target, and the
    `sleep` the recipe's shell left behind is stopped too (else it would keep the lock)."""
    proc = _start(stages, "half.txt")
    _wait_for_stage(stages, "half.txt", proc)
    half = stages / "half.txt"
    _wait_until(lambda: half.exists() and half.read_text() == "partial\n", "half.txt half written")
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    name = signal.Signals(sig).name
    assert proc.returncode == 128 + sig and out == ""
    assert _last_line(err).startswith(f"em-cron: interrupted by {name} during stage 'half.txt'; log: ")
    assert not (stages / "half.txt").exists()
    assert "Deleting file 'half.txt'" in (stages / "logs" / "latest.log").read_text()
    quick = _cron(stages, "quick")  # --wait 0: would exit 75 if anything still held the lock
    assert (quick.returncode, quick.stderr) == (0, "")


def test_overlapping_runs_wait_or_exit_75(stages):
    first = _start(stages, "slow", "SLOW=4")
    _wait_for_stage(stages, "slow", first)
    logs_before = _logs(stages)

    busy = _cron(stages, "slow")
    assert busy.returncode == 75 and busy.stdout == ""
    assert busy.stderr.count("\n") == 1, busy.stderr  # one line, naming the run that holds the lock
    assert busy.stderr.startswith(f"em-cron: error: another run holds the lock {stages.resolve()}/.em-cron.lock "
                                  f"(pid {first.pid} on ")
    assert busy.stderr.endswith(f", log {logs_before[0].resolve()}); not starting\n")
    assert _logs(stages) == logs_before  # a run that did not start writes no log

    quiet = _cron(stages, "slow", "--quiet-if-locked")
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (75, "", "")

    short = _cron(stages, "slow", "--wait", "0.3")
    assert short.returncode == 75 and "still holds the lock" in short.stderr and "after 0.3 s" in short.stderr

    stopped = _start(stages, "slow", "--wait", "60")  # a waiting run can be stopped while it waits
    _wait_until(lambda: _waits_for_lock(stopped.pid), "the second run to wait for the lock")
    stopped.send_signal(signal.SIGTERM)
    out, err = stopped.communicate(timeout=30)
    assert stopped.returncode == 143 and out == ""
    assert err == f"em-cron: interrupted by SIGTERM while waiting for the lock {stages.resolve()}/.em-cron.lock\n"
    assert first.poll() is None  # that was before the first run ended

    waiter = _cron(stages, "slow", "--wait", "60")  # blocks until the first run ends
    assert first.wait(timeout=60) == 0
    assert (waiter.returncode, waiter.stderr) == (0, "")
    assert _ran(stages) == ["slow"]  # the waiting run found the work done
    waited = int(re.search(r"waited (\d+) s", (stages / "logs" / "latest.log").read_text()).group(1))
    assert waited >= 1


def test_a_killed_wrapper_leaves_make_holding_the_lock(stages):
    """SIGKILL cannot be caught: make (a process group of its own) finishes its stage while it
    keeps the lock, so no second run starts beside it."""
    proc = _start(stages, "slow", "SLOW=60")
    _wait_for_stage(stages, "slow", proc)
    log = stages / "logs" / "latest.log"
    started = re.compile(r"make runs as pid \d+, process group (\d+)")
    _wait_until(lambda: started.search(log.read_text()), "em-cron to log make's process group")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    make_group = int(started.search(log.read_text()).group(1))
    try:
        busy = _cron(stages, "quick")
        assert busy.returncode == 75 and "another run holds the lock" in busy.stderr
    finally:
        os.killpg(make_group, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while _cron(stages, "quick").returncode == 75:
        assert time.monotonic() < deadline, "the lock was never released"
        time.sleep(0.1)
    assert not (stages / "slow").exists()  # the stage never finished


def test_timeout_stops_the_run(stages):
    done = _cron(stages, "slow", "SLOW=60", "--timeout", "2")
    assert done.returncode == 124
    assert _last_line(done.stderr).startswith("em-cron: timed out after 2 s during stage 'slow'; log: ")
    assert not (stages / "slow").exists()
    assert _cron(stages, "quick").returncode == 0  # and nothing of it still holds the lock


def test_a_make_error_without_a_stage_and_log_pruning(stages):
    for _ in range(3):
        missing = _cron(stages, "no-such-target", "--keep", "2")
        assert missing.returncode == 1
        log = (stages / "logs" / "latest.log").resolve()
        assert _last_line(missing.stderr) == (
            f"em-cron: make failed (exit 2): No rule to make target 'no-such-target'; log: {log}")
    assert len(_logs(stages)) == 2 and log in _logs(stages)
    dry = _cron(stages, "quick", "-n")
    assert dry.returncode == 0 and "echo quick >> ran.txt" in dry.stdout and _ran(stages) == []
    assert len(_logs(stages)) == 2
