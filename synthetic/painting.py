"""Pixel painting: colours, textures, backgrounds, clutter, textured polygons and the final downscale."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from synthetic.shapes import _xy


def _colour(c: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(np.rint(c), 0, 255))  # type: ignore[return-value]


def _random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None, min_dist: float = 0.0) -> np.ndarray:
    """A uniform random RGB colour, redrawn a few times if it is too close to `avoid`."""
    c = rng.uniform(0, 255, 3)
    if avoid is not None:
        for _ in range(15):
            if float(np.linalg.norm(c - avoid)) >= min_dist:
                break
            c = rng.uniform(0, 255, 3)
    return c


def _smooth_noise(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """Low-frequency noise in [0, 1] of shape (h, w): a small random grid, bilinearly upsampled."""
    k = int(rng.integers(3, 7))
    grid = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8))
    return np.asarray(grid.resize((w, h), Image.BILINEAR), dtype=np.float32) / 255.0


def _texture(rng: np.random.Generator, box: tuple[int, int, int, int], scale: float,
             c1: np.ndarray, c2: np.ndarray) -> np.ndarray:
    """Fill for the region `box` (x0, y0, x1, y1): solid, stripes, checkerboard or noise mixing c1 and c2.

    `scale` (the object's diameter in canvas pixels) sets the pattern period, so patterns look alike
    at every image size.
    """
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    kind = rng.choice(4, p=[0.25, 0.3, 0.2, 0.25])
    if kind == 0:
        mix = np.zeros((h, w), dtype=np.float32)
    elif kind == 3:
        mix = np.clip((_smooth_noise(rng, w, h) - 0.5) * 3.0 + 0.5, 0.0, 1.0)
    else:
        period = max(2.0, scale * rng.uniform(0.12, 0.35))
        a = rng.uniform(0, math.pi)
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        u = (xs * math.cos(a) + ys * math.sin(a)) / period
        if kind == 1:
            mix = ((u % 1.0) < rng.uniform(0.35, 0.65)).astype(np.float32)
        else:
            v = (-xs * math.sin(a) + ys * math.cos(a)) / period
            mix = ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    tex = c1[None, None, :] * (1.0 - mix[..., None]) + c2[None, None, :] * mix[..., None]
    return np.clip(np.rint(tex), 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, side: int) -> tuple[Image.Image, np.ndarray]:
    """A random two-colour gradient with low-frequency blotches; returns the image and its mean colour."""
    c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
    a = rng.uniform(0, 2 * math.pi)
    ramp = np.arange(side, dtype=np.float32) / max(side - 1, 1)
    t = ramp[None, :] * math.cos(a) + ramp[:, None] * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0[None, None, :] + (c1 - c0)[None, None, :] * t[..., None]
    blotch = (_smooth_noise(rng, side, side) - 0.5) * rng.uniform(20, 60)
    img = img + blotch[..., None]
    arr = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB"), (c0 + c1) / 2.0


def _clutter(draw: ImageDraw.ImageDraw, rng: np.random.Generator, side: int, ss: int,
             n_lines: int, n_blobs: int, blob_radius: tuple[float, float]) -> None:
    """Random line segments and small ellipses (radii as fractions of the side) in random colours."""
    for _ in range(n_lines):
        p = rng.uniform(-0.1 * side, 1.1 * side, 4)
        width = max(1, int(round(rng.uniform(0.5, 1.6) * ss)))
        draw.line([(p[0], p[1]), (p[2], p[3])], fill=_colour(rng.uniform(0, 255, 3)), width=width)
    for _ in range(n_blobs):
        cx, cy = rng.uniform(0, side, 2)
        rx, ry = rng.uniform(*blob_radius, 2) * side
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=_colour(rng.uniform(0, 255, 3)))


def _paste_shape(canvas: Image.Image, rng: np.random.Generator, pts: np.ndarray, scale: float,
                 c1: np.ndarray, c2: np.ndarray) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """Paint a textured polygon; returns its (clipped) box and boolean mask there, or None if off-canvas."""
    side_w, side_h = canvas.size
    x0 = max(0, int(math.floor(pts[:, 0].min())))
    y0 = max(0, int(math.floor(pts[:, 1].min())))
    x1 = min(side_w, int(math.ceil(pts[:, 0].max())) + 1)
    y1 = min(side_h, int(math.ceil(pts[:, 1].max())) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    box = (x0, y0, x1, y1)
    mask = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(mask).polygon(_xy(pts - np.array([x0, y0])), fill=255)
    tex = Image.fromarray(_texture(rng, box, scale, c1, c2), "RGB")
    canvas.paste(tex, (x0, y0), mask)
    return box, np.asarray(mask) > 127


def _finish(canvas: Image.Image, rng: np.random.Generator, ss: int) -> Image.Image:
    """Box-filter down to the output size and add pixel noise."""
    small = canvas.reduce(ss) if ss > 1 else canvas
    arr = np.asarray(small, dtype=np.float32)
    arr = arr + rng.normal(0.0, rng.uniform(2.0, 10.0), arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "RGB")
