"""A run's metrics log: one JSON object per line plus TensorBoard scalars, cut back to the resume point."""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rimifm.io import trim_json_lines


class JsonLinesLog:
    """Append rows to `path` (one JSON each) and their finite numbers to TensorBoard in `tb_dir` (None: off).

    `step_key` names each row's step; rows from an earlier session at steps >= `first_new` (those the
    resumed run will log again) are dropped on opening, as are lines torn by a kill. `enabled` False
    (a process other than the main one) makes every call a no-op.
    """

    def __init__(self, path: str | os.PathLike, step_key: str, first_new: int, enabled: bool = True,
                 tb_dir: str | os.PathLike | None = None, tag_prefix: str = "", not_scalars: Iterable[str] = ()):
        self.path, self.step_key, self.enabled = Path(path), step_key, enabled
        self.tag_prefix, self.not_scalars = tag_prefix, {step_key, *not_scalars}
        self.tb = None
        if not enabled:
            return
        trim_json_lines(self.path, lambda row: row.get(step_key, 0) < first_new)
        if tb_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(tb_dir), purge_step=first_new or None)
            except ImportError:
                print("warning: tensorboard is not installed; TensorBoard logging is off", file=sys.stderr)

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key not in self.not_scalars and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(self.tag_prefix + key, value, row[self.step_key])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
