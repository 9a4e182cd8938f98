"""Atomic checkpoints holding everything an exact resume needs, loaded safely (weights_only)."""

from __future__ import annotations

import os
import pickle
import random
import re
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


def load_checkpoint(path: str | os.PathLike, unsafe_legacy_pickle: bool = False,
                    unsafe_flag: str | None = "--unsafe-legacy-pickle") -> dict:
    """torch.load with weights_only=True; a legacy pickle of Python objects needs the explicit unsafe flag.

    `unsafe_flag` names, in the error message, the option that sets `unsafe_legacy_pickle` (None: the
    caller has no such option, as when resuming, which only takes checkpoints this tool wrote).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=not unsafe_legacy_pickle)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg:
            found = re.search(r"GLOBAL (\S+)", msg)
            detail = f" such as {found.group(1)}" if found else ""
            advice = (f"If you trust where the file came from, rerun with {unsafe_flag} (loads with "
                      "weights_only=False, which can execute code)" if unsafe_flag else
                      "Only checkpoints written by this tool can be used here")
            raise UserError(f"{path} is a legacy pickle holding Python objects{detail} besides tensors; safe "
                            f"loading refuses it. {advice}") from None
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({_first_line(msg)})") from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, ... on non-checkpoints
        raise UserError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                        f"{_first_line(str(exc))})") from None


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0] if lines else ""


def check_compatible(ckpt: dict, path, method: str, backbone: str) -> None:
    """Refuse to resume a checkpoint of another method or backbone (the weights would not fit)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a pretraining checkpoint of this tool (no format={FORMAT!r})")
    for key, want in (("method", method), ("backbone", backbone)):
        if ckpt.get(key) != want:
            raise UserError(f"cannot resume {path}: it was trained with {key} {ckpt.get(key)!r} but the config "
                            f"asks for {want!r}; use another OUTPUT_DIR or the matching config")
