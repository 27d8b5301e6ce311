"""The compiled kernels of the segmentation tools: ahead-of-time when built, numba JIT otherwise.

Why: a numba-JIT kernel costs every process about 1.2 s before it runs (importing numba, then
setting up its code generator on the first call, even with an on-disk cache). em-watershed,
em-agglomerate and em-eval run once per chunk in Make rules and job arrays, so that fixed cost
would dominate small chunks. ``make install`` therefore compiles the kernels once, ahead of
time, into the extension module ``emtools._kernels`` (numba's ``pycc``); a process that finds
it never imports numba.

The kernels stay ordinary numba-compatible Python functions, marked in their modules:

- ``@kernel("u8[:,:,::1]", "b1", ...)``: an entry point called from Python; each signature
  lists its argument types (numba's spelling; ``::1`` = C-contiguous) and is compiled ahead
  of time. A call whose arguments match none of them (another dtype, a read-only or strided
  array) runs the JIT version instead, so every call works; only start-up time differs.
- ``@helper``: a function that kernels call (inlined into them); never called from Python.

The module is used only when it was built from exactly these sources (a hash of the kernel
modules, numpy's and Python's versions, stored beside it in ``_kernels.json``); otherwise, or
with ``EMTOOLS_KERNELS=jit``, everything runs JIT as before. ``EMTOOLS_KERNELS=aot`` makes a
call that the module cannot serve an error (tests and benchmarks use it to prove coverage).

Build: ``python -m emtools.native build`` (what ``make install`` runs; about a minute).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import sys
from pathlib import Path

import numpy as np

from emtools.errors import EmError

log = logging.getLogger("emtools")
PACKAGE_DIR = Path(__file__).resolve().parent
MODULE_NAME = "_kernels"
STAMP_FILE = PACKAGE_DIR / f"{MODULE_NAME}.json"
# A module takes part when its source marks a function ``@kernel(`` or ``@helper``: found by
# reading the package's sources (no import), so adding a kernel module needs no list to edit.
_MARK = re.compile(r"^@(?:kernel\(|helper\b)", re.MULTILINE)
MODES = ("auto", "aot", "jit")
# numba's pycc, which the build uses, is deprecated upstream, so the build is pinned to the numba
# releases it was tested with ([low, high)); a later numba may change or drop pycc. Outside them
# the build is skipped with one warning and the kernels run JIT, which works with any numba.
# EMTOOLS_ALLOW_UNTESTED=1 tries the build anyway.
AOT_TESTED_NUMBA = ((0, 68), (0, 69))

_KERNELS: list[Kernel] = []
_HELPERS: dict[object, str] = {}  # python function -> qualified name
_jit_enabled = False
_aot_state: dict | None = None  # {"module": module or None, "reason": str}

_DTYPES = {
    "b1": np.dtype(np.bool_), "u1": np.dtype(np.uint8), "u2": np.dtype(np.uint16),
    "u4": np.dtype(np.uint32), "u8": np.dtype(np.uint64), "i1": np.dtype(np.int8),
    "i2": np.dtype(np.int16), "i4": np.dtype(np.int32), "i8": np.dtype(np.int64),
    "f4": np.dtype(np.float32), "f8": np.dtype(np.float64),
}
_ARG = re.compile(r"^(b1|u1|u2|u4|u8|i1|i2|i4|i8|f4|f8)(?:\[([:, 1]*)\])?$")


def mode() -> str:
    value = os.environ.get("EMTOOLS_KERNELS", "auto").strip().lower() or "auto"
    if value not in MODES:
        raise EmError(f"EMTOOLS_KERNELS must be one of {', '.join(MODES)}, got {value!r}")
    return value


# ----------------------------------------------------------------------------- argument specs

class ArgSpec:
    """One argument type of a signature, checked against a Python value without numba."""

    def __init__(self, text: str):
        match = _ARG.match(text.replace(" ", ""))
        if not match:
            raise ValueError(f"unsupported kernel argument type {text!r}")
        self.text = text.replace(" ", "")
        self.dtype = _DTYPES[match.group(1)]
        dims = match.group(2)
        if dims is None:
            self.ndim = 0
            self.contiguous = False
        else:
            parts = dims.split(",")
            self.ndim = len(parts)
            self.contiguous = parts[-1] == "::1"
            if any(p != ":" for p in parts[:-1]) or parts[-1] not in (":", "::1"):
                raise ValueError(f"unsupported kernel array layout {text!r}")

    def accepts(self, value) -> bool:
        # Exactly numba's typing of the value, so the AOT and JIT versions compute the same.
        if self.ndim:
            return (
                isinstance(value, np.ndarray)
                and value.ndim == self.ndim
                and value.dtype == self.dtype
                and value.dtype.isnative
                and value.flags.writeable  # numba types read-only arrays separately
                and (not self.contiguous or value.flags.c_contiguous)
            )
        if isinstance(value, (bool, np.bool_)):
            return self.dtype.kind == "b"
        if isinstance(value, np.generic):
            return value.dtype == self.dtype
        if isinstance(value, int):
            return self.dtype == np.int64 and -(2**63) <= value < 2**63
        if isinstance(value, float):
            return self.dtype == np.float64
        return False


# ----------------------------------------------------------------------------- decorators

def helper(func):
    """Mark a function that kernels call; compiled with them (JIT or into the module)."""
    if _jit_enabled:
        return _njit(func)
    _HELPERS[func] = f"{func.__module__}.{func.__qualname__}"
    return func


def kernel(*signatures: str):
    """Mark an entry point called from Python; ``signatures``: comma lists of argument types."""
    def wrap(func):
        k = Kernel(func, signatures)
        _KERNELS.append(k)
        return k
    return wrap


class Kernel:
    """A kernel: its ahead-of-time versions (one per signature) and a lazily made JIT version."""

    def __init__(self, func, signatures):
        self.py_func = func
        self.__name__ = func.__name__
        self.__qualname__ = func.__qualname__
        self.__module__ = func.__module__
        self.__doc__ = func.__doc__
        self.signatures = tuple(tuple(ArgSpec(a) for a in _split(s)) for s in signatures)
        self._aot: list | None = None
        self._jit = None

    @property
    def export_names(self) -> list[str]:
        short = self.__module__.rsplit(".", 1)[-1]
        return [f"{short}__{self.__name__}__{i}" for i in range(len(self.signatures))]

    def __call__(self, *args):
        if self._aot is None:
            self._aot = self._bind()
        for specs, fn in self._aot:
            if len(specs) == len(args) and all(s.accepts(a) for s, a in zip(specs, args)):
                return fn(*args)
        if self._aot and mode() == "aot":
            raise EmError(
                f"EMTOOLS_KERNELS=aot: no compiled signature of {self.__module__}.{self.__name__} "
                f"takes ({', '.join(_describe(a) for a in args)})"
            )
        return self.jit(*args)

    def _bind(self) -> list:
        module = aot_module()
        if module is None:
            return []
        return [(specs, getattr(module, name)) for specs, name in zip(self.signatures, self.export_names)
                if hasattr(module, name)]

    @property
    def jit(self):
        """The numba dispatcher of this kernel (imports numba on first use)."""
        if self._jit is None:
            enable_jit()
            self._jit = _njit(self.py_func)
        return self._jit


def _split(signature: str) -> list[str]:
    """Split 'u8[:,:,::1], b1, i8' at the commas outside brackets."""
    out, depth, start = [], 0, 0
    for i, ch in enumerate(signature):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(signature[start:i].strip())
            start = i + 1
    tail = signature[start:].strip()
    if tail:
        out.append(tail)
    return out


def _describe(value) -> str:
    if isinstance(value, np.ndarray):
        layout = "C" if value.flags.c_contiguous else "strided"
        ro = ", read-only" if not value.flags.writeable else ""
        return f"{value.dtype}[{value.ndim}d {layout}{ro}]"
    return type(value).__name__


def _njit(func):
    import numba

    return numba.njit(cache=True, nogil=True)(func)


def enable_jit() -> None:
    """Import numba and turn every helper, wherever it is bound, into its JIT dispatcher.

    Kernels look their helpers up in their module's globals when they compile, and modules
    import helpers from each other by name, so every emtools module's globals are updated.
    """
    global _jit_enabled
    if _jit_enabled:
        return
    dispatchers = {func: _njit(func) for func in _HELPERS}
    for name, module in list(sys.modules.items()):
        if not (name == "emtools" or name.startswith("emtools.")) or module is None:
            continue
        namespace = vars(module)
        for key, value in list(namespace.items()):
            try:
                replacement = dispatchers.get(value)
            except TypeError:  # unhashable module attributes
                continue
            if replacement is not None:
                namespace[key] = replacement
    _jit_enabled = True


# ----------------------------------------------------------------------------- the module

def _kernel_sources() -> list[tuple[str, Path]]:
    """(dotted module name, source path) of each emtools module marking kernels or helpers."""
    found = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        if _MARK.search(path.read_text(encoding="utf-8")):
            parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
            found.append((".".join(parts[:-1] if parts[-1] == "__init__" else parts), path))
    return sorted(found)


def kernel_modules() -> tuple[str, ...]:
    """Dotted names of the emtools modules that define kernels or helpers, sorted."""
    return tuple(name for name, _ in _kernel_sources())


def source_stamp() -> str:
    """Hash of what the compiled module depends on: kernel sources, numpy and Python versions."""
    digest = hashlib.sha256()
    for name, path in _kernel_sources():
        digest.update(name.encode())
        digest.update(path.read_bytes())
    digest.update(Path(__file__).read_bytes())
    digest.update(f"numpy {np.__version__} python {sys.version_info[:3]}".encode())
    return digest.hexdigest()


def aot_module():
    """The compiled module when it is usable (built from these sources), else None."""
    global _aot_state
    if _aot_state is None:
        _aot_state = _load()
        if _aot_state["module"] is None and mode() == "aot":
            raise EmError(f"EMTOOLS_KERNELS=aot but {_aot_state['reason']}")
    return _aot_state["module"]


def _load() -> dict:
    if mode() == "jit":
        return {"module": None, "reason": "EMTOOLS_KERNELS=jit"}
    try:
        stamp = json.loads(STAMP_FILE.read_text())
    except (OSError, ValueError):
        return {"module": None, "reason": f"the kernels are not built ({STAMP_FILE.name} missing): "
                                          "run `python -m emtools.native build`"}
    if stamp.get("stamp") != source_stamp():
        return {"module": None, "reason": "the built kernels are out of date with the sources: "
                                          "run `python -m emtools.native build`"}
    try:
        import importlib

        module = importlib.import_module(f"emtools.{MODULE_NAME}")
    except ImportError as exc:
        return {"module": None, "reason": f"the built kernels do not load ({exc})"}
    return {"module": module, "reason": "built kernels in use"}


def status() -> dict:
    """Which kernels a process uses and why (for em-profile records and --version-like output)."""
    module = None
    try:
        module = aot_module()
    except EmError:
        pass
    state = _aot_state or {"reason": ""}
    return {"kernels": "aot" if module is not None else "jit", "reason": state["reason"]}


def _import_kernel_modules() -> list[Kernel]:
    import importlib

    for name in kernel_modules():
        importlib.import_module(name)
    return list(_KERNELS)


def check_numba_version(version: str) -> None:
    """EmError unless ``version`` lies in :data:`AOT_TESTED_NUMBA` (or EMTOOLS_ALLOW_UNTESTED=1)."""
    match = re.match(r"(\d+)\.(\d+)", version)
    release = (int(match.group(1)), int(match.group(2))) if match else None
    low, high = AOT_TESTED_NUMBA
    if release is not None and low <= release < high:
        return
    if os.environ.get("EMTOOLS_ALLOW_UNTESTED", "") == "1":
        log.warning("WARNING: numba %s is outside the releases the kernel build was tested with; "
                    "building anyway (EMTOOLS_ALLOW_UNTESTED=1)", version)
        return
    raise EmError(f"numba {version} is outside the releases the kernel build is tested with "
                  f"(>={low[0]}.{low[1]},<{high[0]}.{high[1]}); set EMTOOLS_ALLOW_UNTESTED=1 to try")


def build(output_dir: Path | None = None, target_cpu: str = "", verbose: bool = False) -> Path:
    """Compile every kernel signature into ``emtools/_kernels*.so`` (atomically) and stamp it."""
    import tempfile
    import time
    import warnings

    import numba
    from numba.core import types

    check_numba_version(numba.__version__)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from numba.pycc import CC

    out_dir = Path(output_dir) if output_dir is not None else PACKAGE_DIR
    kernels = _import_kernel_modules()
    enable_jit()
    namespace = {k: getattr(types, k) for k in dir(types) if not k.startswith("_")}
    cc = CC(MODULE_NAME)
    cc.target_cpu = target_cpu
    cc.verbose = verbose
    started = time.time()
    n = 0
    for k in kernels:
        for specs, name in zip(k.signatures, k.export_names):
            argtypes = tuple(eval(s.text, {}, namespace) for s in specs)
            # the JIT infers the return type, which an export needs spelled out
            dispatcher = k.jit
            dispatcher.compile(argtypes)
            signature = dispatcher.overloads[argtypes].signature
            cc.export(name, signature)(k.py_func)
            n += 1
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".kernels-build-") as tmp:
        cc.output_dir = tmp
        cc.compile()
        built = Path(tmp) / cc.output_file
        final = out_dir / cc.output_file
        os.replace(built, final)
        stamp = {"stamp": source_stamp(), "exports": n, "numba": numba.__version__,
                 "target_cpu": target_cpu or "generic", "file": final.name}
        tmp_stamp = Path(tmp) / "stamp.json"
        tmp_stamp.write_text(json.dumps(stamp, indent=1) + "\n")
        os.replace(tmp_stamp, out_dir / STAMP_FILE.name)
    log.info("built %s (%d kernel signatures, %.0f s)", final, n, time.time() - started)
    return final


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m emtools.native", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="compile the kernels ahead of time (what `make install` runs)")
    b.add_argument("--target-cpu", default="", help="LLVM CPU name (default: generic, runs on any x86-64)")
    b.add_argument("--verbose", action="store_true")
    sub.add_parser("status", help="print which kernels this installation uses (JSON)")
    args = parser.parse_args(argv)
    from emtools.logs import setup_logging

    setup_logging("emtools.native", 0)
    if args.command == "build":
        try:
            build(target_cpu=args.target_cpu, verbose=args.verbose)
        except Exception as exc:  # noqa: BLE001 (no pycc, no C compiler, ...): the JIT path still works
            detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
            log.warning("WARNING: cannot compile the kernels ahead of time (%s: %s); every tool still works, "
                        "JIT-compiling its kernels (about 1.2 s more per process)", type(exc).__name__, detail)
        return 0
    sys.stdout.write(json.dumps(status()) + "\n")  # data on stdout, as every tool
    return 0


if __name__ == "__main__":
    # run the imported module's main, so that the kernels register in the same registry
    from emtools.native import main as _main

    sys.exit(_main())
