"""Detection training engines behind one command line (detection/train_net.py).

An engine is a module with `run(args: argparse.Namespace) -> dict | None` that trains and/or
evaluates as the args say and writes the run's record.json. `detectron2` (detectron2/engine.py) is the
reference; `torchvision` (torchvision/engine.py) runs the same configs without detectron2 and is
chosen by `auto` when detectron2 is not installed.
"""

from __future__ import annotations

import importlib
import importlib.util
import warnings
from types import ModuleType

from rimifm.errors import UserError

ENGINES = ("auto", "detectron2", "torchvision")
_MODULES = {"detectron2": "detection.engines.detectron2.engine", "torchvision": "detection.engines.torchvision.engine"}

D2_INSTALL_HINT = ("install detectron2 from its repository into this environment (it is not on PyPI): "
                   "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                   "(needs torch installed first and a C++ compiler; see 'Installing detectron2' in README.md)")


def detectron2_available() -> bool:
    """True when `import detectron2` works."""
    try:
        if importlib.util.find_spec("detectron2") is None:
            return False
        with warnings.catch_warnings():  # torch deprecation notices raised by detectron2's imports
            warnings.simplefilter("ignore", FutureWarning)
            importlib.import_module("detectron2")
    except ImportError:
        return False
    return True


def resolve_engine_name(name: str) -> str:
    """'auto' -> 'detectron2' when it imports, else 'torchvision'; other names are checked."""
    if name not in ENGINES:
        raise UserError(f"unknown engine {name!r}; choose one of {', '.join(ENGINES)}")
    if name == "auto":
        return "detectron2" if detectron2_available() else "torchvision"
    return name


def select_engine(name: str) -> tuple[str, ModuleType]:
    """(resolved name, engine module); UserError when that engine cannot run here."""
    resolved = resolve_engine_name(name)
    if resolved == "detectron2" and not detectron2_available():
        raise UserError(f"--engine detectron2: detectron2 is not installed; {D2_INSTALL_HINT}")
    return resolved, importlib.import_module(_MODULES[resolved])
