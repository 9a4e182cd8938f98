"""detectron2's backbone weights file: a pickle `{"model": {name: numpy array}, "__author__",
"matching_heuristics": True}` (plus ARCH_KEY in ours), written atomically and read without running code."""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rimifm.errors import UserError, first_line
from rimifm.io import atomic_pickle

AUTHOR = "rimifm"

#: the key of a converted .pkl that names its architecture (rimifm.resnets.arch_metadata): the stem's stride
#: is not in the weights. detectron2 ignores it; our loaders read it.
ARCH_KEY = "rimifm_arch"



def save_d2_pkl(model: Mapping[str, np.ndarray], path: str | os.PathLike, author: str = AUTHOR,
                arch: Mapping[str, Any] | None = None) -> None:
    """Write `{"model", "__author__", "matching_heuristics"}` (and ARCH_KEY when `arch` is known) atomically
    (temp file in the folder, then rename)."""
    payload = {"model": dict(model), "__author__": author, "matching_heuristics": True}
    if arch is not None:
        payload[ARCH_KEY] = dict(arch)
    atomic_pickle(payload, path)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds numpy arrays and plain containers, so a .pkl cannot run code."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("collections", "OrderedDict"), ("builtins", "bytearray"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def load_d2_pkl(path: str | os.PathLike) -> dict:
    """Read a detectron2-style weights pickle (ours or MoCo's) without executing arbitrary code.

    Returns the whole dict; its "model" entry maps detectron2 names to numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {path} does not exist")
    try:
        data = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
    except Exception as exc:
        raise UserError(f"{path} is not a detectron2 weights pickle ({first_line(str(exc), type(exc).__name__)})") \
            from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), Mapping):
        raise UserError(f"{path} is not a detectron2 weights pickle (no 'model' dict)")
    return data


__all__ = ["ARCH_KEY", "AUTHOR", "load_d2_pkl", "save_d2_pkl"]
