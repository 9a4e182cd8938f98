"""The package layout: imports follow a map of what may import what, tools/ stays thin, every console entry
point resolves.

Allowed imports (each package may import itself and these; README.md "Layout" draws the same):

    rimifm      <- synthetic <- pretrain  <- reporting
                             <- detection
    demo: all of them; benchmarks: all but reporting and demo; tools/: thin entry points into any

`pretrain` and `detection` are siblings: neither imports the other (a checkpoint reaches detection as a file,
through tools/convert_to_d2.py). Inside pretrain: data/ and method/ import no other part of it but its top-level
modules (config, optim), evaluation/ imports data/ and method/, training/ all three; nothing imports training/.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest
import tomllib

from tests.helpers import REPO

ALLOWED: dict[str, set[str]] = {
    "rimifm": set(),
    "synthetic": {"rimifm"},
    "pretrain": {"rimifm", "synthetic"},
    "detection": {"rimifm", "synthetic"},
    "reporting": {"rimifm", "synthetic", "pretrain"},
    "demo": {"rimifm", "synthetic", "pretrain", "detection", "reporting"},
    "benchmarks": {"rimifm", "synthetic", "pretrain", "detection"},
}
ORDER = tuple(ALLOWED)
#: inside pretrain: the parts each part may import (besides itself and pretrain's top-level modules)
PRETRAIN_PARTS: dict[str, set[str]] = {
    "data": set(),
    "method": set(),
    "evaluation": {"data", "method"},
    "training": {"data", "method", "evaluation"},
}


def _imports(path) -> set[str]:
    """Every absolute module name a file imports, at top level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path.relative_to(REPO)}: relative import; the layout test reads absolute ones")
    return found


def _imported_top_packages(path) -> set[str]:
    """Every package of the map that a module imports."""
    return {name.split(".")[0] for name in _imports(path)} & set(ALLOWED)


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_what_the_map_allows(package):
    allowed = ALLOWED[package] | {package}
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        other = _imported_top_packages(path) - allowed
        if other:
            bad.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(other))}")
    assert not bad, f"{package} may import only {', '.join(sorted(allowed))}:\n" + "\n".join(bad)


def test_pretrain_and_detection_never_import_each_other():
    assert "detection" not in ALLOWED["pretrain"] and "pretrain" not in ALLOWED["detection"]


@pytest.mark.parametrize("part", PRETRAIN_PARTS)
def test_the_parts_of_pretrain_import_one_way(part):
    allowed = PRETRAIN_PARTS[part] | {part}
    bad = []
    for path in sorted((REPO / "pretrain" / part).rglob("*.py")):
        parts = {name.split(".")[1] for name in _imports(path) if name.startswith("pretrain.")}
        other = (parts & set(PRETRAIN_PARTS)) - allowed
        if other:
            bad.append(f"{path.relative_to(REPO)} imports pretrain.{', pretrain.'.join(sorted(other))}")
    assert not bad, f"pretrain/{part} may import only {', '.join(sorted(allowed))} of pretrain's parts:\n" + \
        "\n".join(bad)
    for top in ("config", "optim"):  # the top-level modules every part may use import none of the parts
        assert not {n.split(".")[1] for n in _imports(REPO / "pretrain" / f"{top}.py")
                    if n.startswith("pretrain.")} & set(PRETRAIN_PARTS), top


def test_importing_the_core_loads_neither_pretrain_nor_detection():
    code = ("import sys, pkgutil, importlib, rimifm\n"
            "for m in pkgutil.walk_packages(rimifm.__path__, 'rimifm.'): importlib.import_module(m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules} & {'pretrain', 'detection', 'synthetic', "
            "'reporting', 'demo'}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_package_module_edits_sys_path():
    offenders = [str(p.relative_to(REPO)) for pkg in ORDER for p in (REPO / pkg).rglob("*.py")
                 if "sys.path" in p.read_text() and p != REPO / "detection" / "train_net.py"]
    assert not offenders, f"only scripts run by path may touch sys.path: {offenders}"


def test_tools_are_thin_entry_points():
    for path in sorted((REPO / "tools").glob("*.py")):
        tree = ast.parse(path.read_text())
        defs = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))]
        assert not defs, f"{path.name} defines {defs}; the logic belongs in a package module"
        assert len(path.read_text().splitlines()) <= 20, f"{path.name} is more than an entry point"


def test_console_scripts_resolve_to_callables():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"rimifm-pretrain", "rimifm-convert-to-d2", "rimifm-train-net", "rimifm-make-tables"} <= set(scripts)
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name



def test_no_source_module_is_a_catch_all():
    """Source modules stay at a size a reader can hold; past ~400 lines one is split by concern."""
    long = {str(p.relative_to(REPO)): n for pkg in ORDER for p in (REPO / pkg).rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long, f"modules over 450 lines: {long}"
