"""detection/train_net.py as users run it, with detectron2 hidden: once by path in a child process, the
other checks through its main() in this process (no second start-up of torch per check)."""

from __future__ import annotations

import importlib.abc
import os
import subprocess
import sys

import pytest

from tests.helpers import REPO, run_main

# Runs train_net.py as __main__ with `import detectron2` failing, whether or not it is installed.
_NO_D2 = """
import importlib.abc, runpy, sys
class _HideDetectron2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError("detectron2 hidden by the test")
        return None
sys.meta_path.insert(0, _HideDetectron2())
sys.argv = ["detection/train_net.py"] + sys.argv[1:]
runpy.run_path("detection/train_net.py", run_name="__main__")
"""


def _run(*args: str, hide_d2: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", _NO_D2, *args] if hide_d2 else [sys.executable, "detection/train_net.py", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)


class _HideDetectron2(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "detectron2" or name.startswith("detectron2."):
            raise ImportError("detectron2 hidden by the test")
        return None


@pytest.fixture
def run_here(monkeypatch, capsys):
    """train_net's main(ARGS) in this process with `import detectron2` failing (and no detectron2 module
    already imported): (returncode, stdout, stderr)."""
    from detection.train_net import main

    for name in [m for m in sys.modules if m == "detectron2" or m.startswith("detectron2.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(sys, "meta_path", [_HideDetectron2(), *sys.meta_path])

    return lambda *args: run_main(main, list(args), capsys)


def _assert_clean_error(proc, *fragments: str) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr
    for frag in fragments:
        assert frag in lines[0], lines[0]
    return lines[0]


def test_help_works_without_detectron2() -> None:
    proc = _run("--help")
    assert proc.returncode == 0, proc.stderr
    assert "--engine" in proc.stdout and "voc_r50.yaml" in proc.stdout and "KEY VALUE" in proc.stdout


@pytest.mark.parametrize("engine", ["torchvision", "auto"])
def test_torchvision_engine_runs_without_detectron2_and_checks_its_input(engine: str, run_here) -> None:
    proc = run_here("--config", "voc_r50.yaml", "--engine", engine)
    _assert_clean_error(proc, "voc_r50.yaml needs the backbone to fine-tune", "MODEL.WEIGHTS path/to/backbone.pkl")


def test_torchvision_engine_lists_every_value_it_cannot_honour(run_here) -> None:
    proc = run_here("--config", "voc_r50.yaml", "--engine", "torchvision", "MODEL.MASK_ON", "True",
                "MODEL.RESNETS.DEFORM_ON_PER_STAGE", "[False, False, True, True]", "MODEL.META_ARCHITECTURE", "X")
    line = _assert_clean_error(proc, "cannot honour 3 config value(s)", "MODEL.MASK_ON", "DEFORM_ON_PER_STAGE",
                               "MODEL.META_ARCHITECTURE")
    assert "--engine detectron2" in line


def test_detectron2_engine_without_detectron2_is_a_clear_error(run_here) -> None:
    proc = run_here("--config", "voc_r50.yaml", "--engine", "detectron2")
    _assert_clean_error(proc, "detectron2 is not installed", "github.com/facebookresearch/detectron2")


def test_unknown_config_is_a_clear_error_before_any_engine(run_here) -> None:
    proc = run_here("--config", "no_such_config.yaml", "--engine", "torchvision")
    _assert_clean_error(proc, "'no_such_config.yaml' not found", "voc_r50.yaml")
