"""What a pretraining checkpoint is: its format tag, what it holds, the check before resuming from it, and
putting a run back where the checkpoint left it.

Writing and safe loading are the core's (rimifm.io); the RNG state it holds is rimifm.seeding's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pretrain.config import config_hash
from rimifm.errors import UserError
from rimifm.io import PRETRAIN_CHECKPOINT_FORMAT as FORMAT
from rimifm.resnets import arch_metadata
from rimifm.seeding import rng_state, set_rng_state

FORMAT_VERSION = 1


@dataclass
class Progress:
    """What a checkpoint carries forward besides the weights: position, time, images and the metrics so far."""

    step: int = 0
    elapsed_s: float = 0.0  # wall time of earlier sessions of this run (resumes)
    images_seen: int = 0
    history: dict = field(default_factory=dict)


def checkpoint_state(run: Any) -> dict:
    """Everything an exact resume of a PretrainRun needs, and what readers of the weights need to know."""
    cfg, p = run.cfg, run.progress
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "method": cfg.METHOD, "backbone": cfg.MODEL.BACKBONE, "cifar_stem": cfg.MODEL.CIFAR_STEM,
        "cifar_stem_padding": cfg.MODEL.CIFAR_STEM_PADDING, "arch": arch_metadata(run.model.backbone.arch),
        "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(), "scaler": run.scaler.state_dict(),
        "step": p.step, "epoch": p.step // run.steps_per_epoch, "steps_per_epoch": run.steps_per_epoch,
        "elapsed_s": run.wall_time(), "images_seen": p.images_seen,
        "rng": rng_state(), "config": cfg.dump(), "config_hash": config_hash(cfg), "history": p.history,
        "code_version": run.code_version,
    }


def restore(run: Any, ckpt: dict, path: Path) -> dict:
    """Put a PretrainRun where checkpoint `ckpt` (read from `path`) left it; returns the checkpoint."""
    cfg = run.cfg
    check_compatible(ckpt, path, cfg.METHOD, cfg.MODEL.BACKBONE)
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise UserError(f"cannot resume {path}: its weights do not fit this model "
                        f"({str(exc).splitlines()[0]}); check MODEL.* against the checkpoint's config") from None
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.progress = Progress(ckpt["step"], ckpt["elapsed_s"], ckpt["images_seen"], dict(ckpt.get("history", {})))
    set_rng_state(ckpt["rng"])
    return ckpt


def check_compatible(ckpt: dict, path, method: str, backbone: str) -> None:
    """Refuse to resume a checkpoint of another method or backbone (the weights would not fit)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a pretraining checkpoint of this tool (no format={FORMAT!r})")
    for key, want in (("method", method), ("backbone", backbone)):
        if ckpt.get(key) != want:
            raise UserError(f"cannot resume {path}: it was trained with {key} {ckpt.get(key)!r} but the config "
                            f"asks for {want!r}; use another OUTPUT_DIR or the matching config")
