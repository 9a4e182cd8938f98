"""Atomic checkpoints holding everything an exact resume needs, loaded safely (weights_only)."""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

FORMAT = "rimifm-pretrain"
FORMAT_VERSION = 1


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """Write to a temporary file in the same folder, then rename over the target.

    A crash (even SIGKILL) at any point leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def rng_state() -> dict:
    """All global RNG states as tensors and plain types (so weights_only loading accepts them)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | os.PathLike, unsafe_legacy_pickle: bool = False) -> dict:
    """Read a checkpoint with torch.load(weights_only=True); a legacy pickle needs the explicit flag."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe_legacy_pickle)
    except pickle.UnpicklingError as exc:
        raise UserError(f"checkpoint {path} holds objects that safe loading refuses ({str(exc).splitlines()[0]}); "
                        "if you trust the file, pass the unsafe legacy-pickle option") from None
    except (RuntimeError, EOFError, ValueError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({str(exc).splitlines()[0]}); "
                        "is it a truncated or non-PyTorch file?") from None


def check_compatible(ckpt: dict, path, method: str, backbone: str) -> None:
    """Refuse to resume a checkpoint of another method or backbone (the weights would not fit)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a pretraining checkpoint of this tool (no format={FORMAT!r})")
    for key, want in (("method", method), ("backbone", backbone)):
        if ckpt.get(key) != want:
            raise UserError(f"cannot resume {path}: it was trained with {key} {ckpt.get(key)!r} but the config "
                            f"asks for {want!r}; use another OUTPUT_DIR or the matching config")
