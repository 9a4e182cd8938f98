"""Detection training engines behind one command line (detection/train_net.py).

An engine is a module with `run(args: argparse.Namespace) -> dict | None` that trains and/or
evaluates as the args say and writes the run's record.json. `detectron2` (detectron2/engine.py) is the
reference; `torchvision` (torchvision/engine.py) runs the same configs without detectron2 and is
chosen by `auto` when detectron2 is not installed.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import warnings
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from detection.config import read_config
from rimifm.config import get_dotted
from rimifm.d2_pkl import ARCH_KEY, load_d2_pkl
from rimifm.errors import UserError
from rimifm.resnets import arch_from_metadata

ENGINES = ("auto", "detectron2", "torchvision")
_MODULES = {"detectron2": "detection.engines.detectron2.engine", "torchvision": "detection.engines.torchvision.engine"}

D2_INSTALL_HINT = ("install detectron2 from its repository into this environment (it is not on PyPI): "
                   "pip install --no-build-isolation 'git+https://github.com/facebookresearch/detectron2.git' "
                   "(needs torch installed first and a C++ compiler; see 'Installing detectron2' in docs/getting_started.md)")


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


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def detectron2_backbone_problem(config: str, opts: Sequence[str] = ()) -> str | None:
    """Why detectron2 cannot build this config's backbone, or None.

    detectron2's ResNet has one stem (7x7 stride 2, then a max-pool) and its ResNet-18/34 require 64 res2
    channels, so the CPU-sized backbones (rimifm/resnets.py: resnet_tiny's 16 channels and 3x3 stride-2 stem)
    run on the torchvision engine only. Reads the config, its overrides and the architecture a converted
    MODEL.WEIGHTS names.
    """
    merged = read_config(config)
    overrides = {k: _literal(v) for k, v in zip(opts[0::2], opts[1::2])}

    def get(key: str, default):
        return overrides[key] if key in overrides else get_dotted(merged, key, default)

    problems = []
    if get("RIMIFM.STEM", "imagenet") != "imagenet":
        problems.append(f"RIMIFM.STEM is {get('RIMIFM.STEM', '')!r} (detectron2 builds the imagenet stem only)")
    depth, res2 = get("MODEL.RESNETS.DEPTH", 50), get("MODEL.RESNETS.RES2_OUT_CHANNELS", 256)
    if depth not in (18, 34, 50, 101):
        problems.append(f"MODEL.RESNETS.DEPTH is {depth} (detectron2 builds ResNet-18, 34, 50 and 101)")
    elif depth in (18, 34) and res2 != 64:
        problems.append(f"its ResNet-{depth} requires MODEL.RESNETS.RES2_OUT_CHANNELS 64 (the config says {res2})")
    weights = str(get("MODEL.WEIGHTS", "") or "")
    if weights.endswith(".pkl") and Path(weights).is_file():
        meta = load_d2_pkl(weights).get(ARCH_KEY)
        if isinstance(meta, dict):
            arch = arch_from_metadata(meta, weights)
            if arch.stem != "imagenet" or arch.depth not in (18, 34, 50, 101) or \
                    (arch.depth in (18, 34) and arch.width != 64):
                problems.append(f"MODEL.WEIGHTS {weights} holds {arch.describe()}")
    if not problems:
        return None
    return "detectron2 cannot build this backbone: " + "; ".join(problems)


def select_engine(name: str, config: str | None = None, opts: Sequence[str] = ()) -> tuple[str, ModuleType]:
    """(resolved name, engine module); UserError when that engine cannot run here.

    With `config`, auto picks the torchvision engine (and says why) when detectron2 cannot build the
    config's backbone, and an explicit detectron2 gets one error naming what it cannot build.
    """
    resolved = resolve_engine_name(name)
    if resolved == "detectron2" and config is not None:
        problem = detectron2_backbone_problem(config, opts)
        if problem and name == "auto":
            print(f"note: {problem}; using the torchvision engine")
            resolved = "torchvision"
        elif problem:
            raise UserError(f"--engine detectron2: {problem}. Use --engine torchvision (or auto), which builds it")
    if resolved == "detectron2" and not detectron2_available():
        raise UserError(f"--engine detectron2: detectron2 is not installed; {D2_INSTALL_HINT}")
    return resolved, importlib.import_module(_MODULES[resolved])
