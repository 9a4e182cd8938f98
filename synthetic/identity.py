"""What identifies a synthetic set: its format name, version and class list."""

from __future__ import annotations

FORMAT = "rimifm-synthetic"
VERSION = 2  # 2: classification/pretraining images redrawn (see _render_single)

CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")
