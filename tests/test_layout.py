"""The package layout: imports run one way, tools/ stays thin, every console entry point resolves.

Direction (a package may import only those to its left):
    rimifm <- synthetic <- pretrain <- detection <- reporting <- demo
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest
import tomllib

from tests.helpers import REPO

ORDER = ("rimifm", "synthetic", "pretrain", "detection", "reporting", "demo")


def _imported_top_packages(path) -> set[str]:
    """Every package of ORDER that a module imports, at top level or inside a function."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path.relative_to(REPO)}: relative import; the layout test reads absolute ones")
    return found & set(ORDER)


@pytest.mark.parametrize("package", ORDER)
def test_a_package_imports_only_packages_below_it(package):
    allowed = set(ORDER[: ORDER.index(package) + 1])
    bad = []
    for path in sorted((REPO / package).rglob("*.py")):
        upward = _imported_top_packages(path) - allowed
        if upward:
            bad.append(f"{path.relative_to(REPO)} imports {', '.join(sorted(upward))}")
    assert not bad, f"{package} may import only {', '.join(sorted(allowed))}:\n" + "\n".join(bad)


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
