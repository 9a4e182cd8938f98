"""What a pretraining checkpoint is: its format tag and the check before resuming from it.

Writing and safe loading are the core's (rimifm.io); the RNG state it holds is rimifm.seeding's.
"""

from __future__ import annotations

from rimifm.errors import UserError
from rimifm.io import PRETRAIN_CHECKPOINT_FORMAT as FORMAT

FORMAT_VERSION = 1


def check_compatible(ckpt: dict, path, method: str, backbone: str) -> None:
    """Refuse to resume a checkpoint of another method or backbone (the weights would not fit)."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise UserError(f"{path} is not a pretraining checkpoint of this tool (no format={FORMAT!r})")
    for key, want in (("method", method), ("backbone", backbone)):
        if ckpt.get(key) != want:
            raise UserError(f"cannot resume {path}: it was trained with {key} {ckpt.get(key)!r} but the config "
                            f"asks for {want!r}; use another OUTPUT_DIR or the matching config")
