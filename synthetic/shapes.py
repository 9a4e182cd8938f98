"""Shape outlines of the six classes: unit polygons placed, rotated and stretched onto a canvas."""

from __future__ import annotations

import math

import numpy as np

from synthetic.identity import CLASSES


def _unit_shape(cls: int, rng: np.random.Generator) -> np.ndarray:
    """Outline of class `cls` as (n, 2) vertices, centred, farthest point at distance ~1."""
    name = CLASSES[cls]
    if name == "circle":
        t = np.linspace(0.0, 2 * math.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "square":
        t = math.pi / 4 + np.arange(4) * math.pi / 2
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "triangle":
        t = math.pi / 2 + np.arange(3) * 2 * math.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "hexagon":
        t = np.arange(6) * math.pi / 3
        return np.stack([np.cos(t), np.sin(t)], 1)
    if name == "star":
        inner = rng.uniform(0.38, 0.5)
        t = math.pi / 2 + np.arange(10) * math.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    # cross: a plus sign with arms of half-width w
    w = rng.uniform(0.24, 0.34)
    pts = [(w, 1), (w, w), (1, w), (1, -w), (w, -w), (w, -1),
           (-w, -1), (-w, -w), (-1, -w), (-1, w), (-w, w), (-w, 1)]
    return np.asarray(pts, dtype=float)


def _place(unit: np.ndarray, radius: float, angle: float, aspect: float, cx: float, cy: float) -> np.ndarray:
    """Stretch (area-preserving), rotate, scale and move a unit outline into canvas coordinates."""
    pts = unit * np.array([aspect, 1.0 / aspect])
    c, s = math.cos(angle), math.sin(angle)
    pts = pts @ np.array([[c, s], [-s, c]])
    return pts * radius + np.array([cx, cy])


def _random_shape(cls: int, rng: np.random.Generator, radius: float, cx: float, cy: float) -> np.ndarray:
    """A shape of class `cls` with random rotation and a mild random stretch."""
    unit = _unit_shape(cls, rng)
    return _place(unit, radius, rng.uniform(0, 2 * math.pi), rng.uniform(0.9, 1.1), cx, cy)


def _polygon_area(pts: np.ndarray) -> float:
    """Shoelace area of a simple polygon."""
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _xy(pts: np.ndarray) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in pts]
