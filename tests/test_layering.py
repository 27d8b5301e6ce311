"""The house rules of emtools' layout, checked on the sources instead of kept by convention.

- ``emtools.cli`` (the click layer) imports the library; nothing in the library imports it.
- The segmentation, evaluation, io and tiling packages (and the value layer) never import
  torch, not even lazily inside a function: the tools built on them start fast.
- No module reaches into another module's private (``_name``) helpers.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "emtools"
TORCH_FREE = ("emtools.segment", "emtools.evaluate", "emtools.io", "emtools.tiling", "emtools.values",
              "emtools.meta", "emtools.errors", "emtools.logs", "emtools.native", "emtools.pictures",
              "emtools.resample", "emtools.shape_descriptors")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(path: Path, module: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import statement, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, [], node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((target, [alias.name for alias in node.names], node.lineno))
    return found


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def test_the_module_scan_sees_the_packages():
    assert {"emtools.segment.watershed", "emtools.evaluate.table", "emtools.tiling.geometry",
            "emtools.cli.common", "emtools.models.spec"} <= set(MODULES)


def test_only_the_cli_layer_imports_emtools_cli():
    offenders = [
        f"{module}:{line} imports {target}"
        for module, path in MODULES.items() if not _in(module, "emtools.cli")
        for target, names, line in _imports(path, module)
        if _in(target, "emtools.cli") or (target == "emtools" and "cli" in names)
    ]
    assert not offenders, "the library must not import the click layer:\n" + "\n".join(offenders)


@pytest.mark.parametrize("package", TORCH_FREE)
def test_torch_free_packages_never_import_torch(package):
    offenders = [
        f"{module}:{line} imports {target}"
        for module, path in MODULES.items() if _in(module, package)
        for target, _, line in _imports(path, module)
        if _in(target, "torch")
    ]
    assert not offenders, f"{package} must not import torch:\n" + "\n".join(offenders)


def test_importing_every_torch_free_module_loads_no_torch():
    names = sorted(m for m in MODULES if any(_in(m, p) for p in TORCH_FREE))
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({n!r})\n" for n in names) + \
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_no_module_imports_another_modules_private_names():
    offenders = []
    for module, path in MODULES.items():
        for target, names, line in _imports(path, module):
            if not _in(target, "emtools") or target == module:
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                offenders.append(f"{module}:{line} imports {', '.join(private)} from {target}")
    assert not offenders, "use the public name in the structure's one home:\n" + "\n".join(offenders)


def test_no_module_reads_another_modules_private_attributes():
    """``from emtools.segment import agglomerate as A; A._find`` is a private import too."""
    offenders = []
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        aliases = {}
        for target, names, _ in _imports(path, module):
            if _in(target, "emtools") and target != module:
                for name in names:
                    if f"{target}.{name}" in MODULES:
                        aliases[name] = f"{target}.{name}"
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if alias.asname and alias.name in aliases:
                        aliases[alias.asname] = aliases[alias.name]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and node.attr.startswith("_") and not node.attr.startswith("__")):
                offenders.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    assert not offenders, "\n".join(offenders)


def test_every_package_has_an_init_and_a_docstring():
    """setup.cfg's ``packages = find:`` ships only folders with ``__init__.py`` (a wheel without
    ``emtools/cli`` has no tools); each package's docstring says what lives there."""
    for folder in sorted({p.parent for p in PACKAGE.rglob("*.py")}):
        if folder.name == "__pycache__" or folder.name.startswith("."):
            continue
        init = folder / "__init__.py"
        assert init.exists(), f"{folder} has modules but no __init__.py"
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init} has no docstring"
