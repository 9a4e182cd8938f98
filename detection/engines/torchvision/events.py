"""The training log of the torchvision engine, as detectron2 writes it: OUTPUT_DIR/metrics.json (one JSON
per line) and TensorBoard events; on resume the rows after the resume point are dropped.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from rimifm.io import trim_json_lines

logger = logging.getLogger("detection")


class EventLog:
    """OUTPUT_DIR/metrics.json (one JSON per line, rows after a resume point dropped) and TensorBoard."""

    def __init__(self, cfg: Any, start_iter: int, enabled: bool) -> None:
        self.enabled = enabled
        self.path = Path(cfg.OUTPUT_DIR) / "metrics.json"
        self.tb = None
        if not enabled:
            return
        trim_json_lines(self.path, lambda row: row.get("iteration", 0) < start_iter)
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(Path(cfg.OUTPUT_DIR)), purge_step=start_iter or None)
        except ImportError:
            logger.warning("tensorboard is not installed; TensorBoard logging is off")

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, (int, float)) and math.isfinite(value):
                    self.tb.add_scalar(key, value, row["iteration"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
