"""The kernels' two ways of running: compiled ahead of time (``make install``) and numba JIT."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from emtools import native
from emtools.errors import EmError

BUILT = native._load()["module"] is not None
needs_build = pytest.mark.skipif(
    not BUILT, reason="kernels not built ahead of time here (`python -m emtools.native build`, run by make install)"
)


# ----------------------------------------------------------------------------- signatures

def test_signature_split_keeps_array_brackets_whole():
    assert native._split("u8[:,:,::1], b1,i8 , f4[::1]") == ["u8[:,:,::1]", "b1", "i8", "f4[::1]"]


@pytest.mark.parametrize("text", ["u8[::2]", "u8[::1,:]", "float32", "u8[:,:", "c8"])
def test_unsupported_argument_types_are_refused(text):
    with pytest.raises(ValueError):
        native.ArgSpec(text)


def test_array_specs_take_exactly_what_numba_would_type_the_same():
    spec = native.ArgSpec("u8[:,:,::1]")
    good = np.zeros((2, 3, 4), np.uint64)
    assert spec.accepts(good)
    assert not spec.accepts(good.astype(np.uint32))  # another dtype
    assert not spec.accepts(good[0])  # another ndim
    assert not spec.accepts(good[:, :, ::2])  # strided, but the signature says C-contiguous
    assert not spec.accepts(np.asfortranarray(good))
    readonly = good.copy()
    readonly.flags.writeable = False
    assert not spec.accepts(readonly)  # numba types read-only arrays apart
    assert not spec.accepts(good.astype(">u8"))  # big-endian
    assert not spec.accepts([[[0]]])
    strided = native.ArgSpec("u8[:,:,:]")
    assert strided.accepts(good[:, :, ::2])


def test_scalar_specs_follow_numbas_typing_of_python_values():
    i8, u8, f8, f4, b1 = (native.ArgSpec(t) for t in ("i8", "u8", "f8", "f4", "b1"))
    assert i8.accepts(3) and not u8.accepts(3)  # a Python int is int64 to numba
    assert u8.accepts(np.uint64(3)) and not i8.accepts(np.uint64(3))
    assert not i8.accepts(2**63)
    assert f8.accepts(0.5) and not f4.accepts(0.5) and f4.accepts(np.float32(0.5))
    assert b1.accepts(True) and b1.accepts(np.bool_(False)) and not i8.accepts(True)
    assert not f8.accepts(1) and not i8.accepts(1.0) and not i8.accepts("1")


def test_every_kernel_module_declares_its_kernels_and_each_signature_parses():
    kernels = native._import_kernel_modules()
    names = {f"{k.__module__}.{k.__name__}" for k in kernels}
    assert {"emtools.segment.flood._flood_fast", "emtools.segment.region_graph._contacts", "emtools.segment.agglomerate._merge",
            "emtools.evaluate.table._count_pairs", "emtools.segment.filters._box_maximum"} <= names
    # scores holds only a helper (the edge cost that the merge kernel inlines)
    assert {k.__module__ for k in kernels} == set(native.kernel_modules()) - {"emtools.segment.scores"}
    exports = [name for k in kernels for name in k.export_names]
    assert len(exports) == len(set(exports))


def test_bad_mode_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("EMTOOLS_KERNELS", "fast")
    with pytest.raises(EmError, match="EMTOOLS_KERNELS must be one of auto, aot, jit"):
        native.mode()


# ----------------------------------------------------------------------------- loading

def test_out_of_date_or_missing_builds_fall_back_to_jit(monkeypatch, tmp_path):
    monkeypatch.setattr(native, "source_stamp", lambda: "not the stamp of the build")
    state = native._load()
    if BUILT:
        assert state["module"] is None and "out of date" in state["reason"]
    monkeypatch.setattr(native, "STAMP_FILE", tmp_path / "_kernels.json")
    state = native._load()
    assert state["module"] is None and "not built" in state["reason"]
    monkeypatch.setenv("EMTOOLS_KERNELS", "jit")
    assert native._load() == {"module": None, "reason": "EMTOOLS_KERNELS=jit"}


def test_the_stamp_changes_with_any_kernel_source(monkeypatch, tmp_path):
    for name in native.kernel_modules():
        rel = name.split(".", 1)[1].replace(".", "/") + ".py"
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((native.PACKAGE_DIR / rel).read_bytes())
    (tmp_path / "native.py").write_bytes((native.PACKAGE_DIR / "native.py").read_bytes())
    monkeypatch.setattr(native, "PACKAGE_DIR", tmp_path)
    before = native.source_stamp()
    assert before == native.source_stamp()
    assert native.kernel_modules() == tuple(sorted(native.kernel_modules()))
    with open(tmp_path / "segment" / "flood.py", "a") as handle:
        handle.write("\n# an edit\n")
    assert native.source_stamp() != before


@needs_build
def test_the_built_module_has_every_signature_and_a_matching_stamp():
    module = native._load()["module"]
    stamp = json.loads(native.STAMP_FILE.read_text())
    assert stamp["stamp"] == native.source_stamp()
    kernels = native._import_kernel_modules()
    exports = [name for k in kernels for name in k.export_names]
    assert stamp["exports"] == len(exports)
    missing = [name for name in exports if not hasattr(module, name)]
    assert not missing


@needs_build
def test_strict_mode_names_the_call_it_cannot_serve(monkeypatch):
    from emtools.segment.flood import min_max

    monkeypatch.setenv("EMTOOLS_KERNELS", "aot")
    lo, hi = min_max(np.array([0.25, 0.5], np.float32))  # a compiled signature: fine
    assert (lo, hi) == (0.25, 0.5)
    with pytest.raises(EmError, match=r"no compiled signature of emtools.segment.flood.min_max takes \(int16\[1d C\]\)"):
        min_max(np.array([1, 2], np.int16))


# ----------------------------------------------------------------------------- both ways agree

PIPELINE = r"""
import json, sys
import numpy as np
from emtools.segment import agglomerate as A, region_graph as R, watershed as W
from emtools.affinities import noisy_affinities
from emtools.evaluate.neuron import neuron_metrics
from emtools.synth import make_synthetic_volume

volume = make_synthetic_volume((8, 96, 96), seed=3, voxel_size_nm=(40, 8, 8), mean_cell_diameter_nm=300)
affs = noisy_affinities(volume.neurons, seed=3)
boundary = W.boundary_from_affinities(affs)
out = {}
for mode, seeds in (("2d", "distance"), ("3d", "components")):
    frags = W.fragments(boundary, seed_method=seeds, mode=mode, threshold=0.3, voxel_size_nm=(40, 8, 8), min_size=10)
    segs, history = A.agglomerate(frags, affinities=affs, thresholds=[0.3, 0.6], score="quantile", quantile=0.5)
    out[mode] = {"frags": int(frags.max()), "digest": [int(np.sum(s * np.arange(s.size).reshape(s.shape) % 997))
                                                       for s in [frags] + segs],
                 "merges": len(history), "voi": neuron_metrics(segs[-1], volume.neurons)["voi"]}
exact = W.seeded_watershed(boundary, frags, exact=True)
out["exact"] = int(np.sum(exact % 991))
print(json.dumps(out))
print("numba imported" if "numba" in sys.modules else "numba not imported", file=sys.stderr)
"""


def _run_pipeline(mode: str) -> tuple[dict, str]:
    env = dict(os.environ, EMTOOLS_KERNELS=mode, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", PIPELINE], check=False, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout), proc.stderr


@needs_build
def test_compiled_and_jit_kernels_give_identical_segmentations_and_only_jit_imports_numba():
    aot, aot_log = _run_pipeline("aot")  # strict: every call of this pipeline is compiled ahead of time
    jit, jit_log = _run_pipeline("jit")
    assert aot == jit
    assert aot["2d"]["frags"] > 20 and aot["2d"]["merges"] > 0
    assert "numba not imported" in aot_log
    assert "numba imported" in jit_log


def test_a_failed_build_warns_in_one_line_and_leaves_the_jit_path(monkeypatch, capsys):
    def broken(**_):
        raise RuntimeError("gcc: command not found\nerror: command 'gcc' failed")

    monkeypatch.setattr(native, "build", broken)
    assert native.main(["build"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "cannot compile the kernels ahead of time (RuntimeError: error: command 'gcc' failed)" in err[0]
    assert "JIT" in err[0]


def test_status_prints_one_json_line(capsys):
    assert native.main(["status"]) == 0
    state = json.loads(capsys.readouterr().out)
    assert state["kernels"] in ("aot", "jit") and state["reason"]


# ----------------------------------------------------------------------------- pins and CI

@pytest.mark.skipif(os.environ.get("CI", "").lower() not in ("1", "true", "yes"),
                    reason="CI only: a developer's checkout may run JIT on purpose")
def test_ci_runs_the_ahead_of_time_kernels():
    """`make install` must have built the kernels: a silent JIT fallback in CI fails here."""
    status = native.status()
    assert status["kernels"] == "aot", f"the AOT kernel build is not in use in CI: {status['reason']}"


@pytest.mark.parametrize("version, ok", [("0.68.1", True), ("0.68.0rc1", True), ("0.67.2", False),
                                         ("0.69.0", False), ("1.0", False), ("dev", False)])
def test_the_build_is_pinned_to_the_tested_numba(monkeypatch, version, ok):
    monkeypatch.delenv("EMTOOLS_ALLOW_UNTESTED", raising=False)
    if ok:
        native.check_numba_version(version)
    else:
        with pytest.raises(EmError, match=rf"numba {version} is outside the releases the kernel build is tested with"):
            native.check_numba_version(version)
        monkeypatch.setenv("EMTOOLS_ALLOW_UNTESTED", "1")
        native.check_numba_version(version)


def test_an_untested_numba_leaves_the_jit_path_with_one_warning(monkeypatch, tmp_path, capsys):
    import numba

    monkeypatch.delenv("EMTOOLS_ALLOW_UNTESTED", raising=False)
    monkeypatch.setattr(numba, "__version__", "0.99.0")
    monkeypatch.setattr(native, "STAMP_FILE", tmp_path / "_kernels.json")
    assert native.main(["build"]) == 0
    err = capsys.readouterr().err
    assert "numba 0.99.0 is outside the releases the kernel build is tested with" in err
    assert err.count("\n") == 1 and not (tmp_path / "_kernels.json").exists()
