"""Keyed seeds and the global RNG state, so that a resumed run replays exactly the same draws."""

from __future__ import annotations

import random

import numpy as np

#: the random streams of one training step; each gets its own keyed seed
STREAM_RIM, STREAM_IFM, STREAM_DETECTION = 1, 2, 7


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """An independent seed for one random stream at one step on one rank.

    It is a function of its arguments only, so a run resumed at `step` draws what the uninterrupted
    run drew there, whatever happened before.
    """
    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1)[0])


def rng_state() -> dict:
    """All global RNG states as tensors and plain types (so weights_only loading accepts them)."""
    import torch

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
    """Restore what rng_state() saved (CUDA states only when the same number of GPUs is visible)."""
    import torch

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
