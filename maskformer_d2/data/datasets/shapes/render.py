"""Shapes drawing: one seeded random scene (image, segments and void pixels) per call."""
from typing import List, Tuple

import cv2
import numpy as np

from .spec import CLASSES, HUE_SPREAD, STUFF_CLASSES, THING_CLASSES


def _stuff_layout(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) contiguous stuff ids: 1-3 wavy bands, horizontal or (30%) vertical."""
    num_bands = int(rng.integers(1, 4))
    classes = rng.permutation(len(STUFF_CLASSES))[:num_bands] + len(THING_CLASSES)
    coord = np.arange(size, dtype=np.float32)
    layout = np.full((size, size), classes[0], dtype=np.uint8)
    cuts = np.sort(rng.uniform(0.2, 0.8, num_bands - 1)) * size
    for cls, cut in zip(classes[1:], cuts):
        amp, freq, phase = rng.uniform(0, 0.08 * size), rng.uniform(0.5, 3.0), rng.uniform(0, 6.3)
        boundary = cut + amp * np.sin(2 * np.pi * freq * coord / size + phase)  # along x
        layout[coord[:, None] >= boundary[None, :]] = cls
    return layout.T.copy() if rng.random() < 0.3 else layout


def _noise(rng: np.random.Generator, shape: Tuple[int, ...], sigma: float) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma)


def _stuff_texture(rng: np.random.Generator, cls: int, size: int) -> np.ndarray:
    """(S, S, 3) float32 texture of one stuff class, with per-image colour jitter."""
    jitter = rng.uniform(-20, 20, 3).astype(np.float32)
    name = CLASSES[cls]
    if name == "sky":  # vertical gradient, little noise
        y = np.arange(size, dtype=np.float32)[:, None, None] / size
        tex = (np.array([90, 150, 230], np.float32) + jitter) * (1.15 - 0.35 * y)
        return tex + _noise(rng, (size, size, 3), 3)
    if name == "grass":  # noisy green with vertical streaks
        tex = np.array([60, 150, 50], np.float32) + jitter + _noise(rng, (size, size, 1), 14)
        return tex + _noise(rng, (1, size, 1), 16)
    # wall: bricks with light mortar lines
    tex = np.empty((size, size, 3), np.float32)
    tex[:] = np.array([150, 75, 55], np.float32) + jitter
    bh = max(4, size // 16)
    bw = 2 * bh
    rows, cols = np.mgrid[0:size, 0:size]
    mortar = (rows % bh == 0) | ((cols + (rows // bh % 2) * (bw // 2)) % bw == 0)
    tex[mortar] = [205, 200, 195]
    return tex + _noise(rng, (size, size, 3), 6)


def _thing_polygon(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a square / triangle / star centred at (cx, cy) with radius r."""
    name = CLASSES[cls]
    if name == "square":
        theta = angle + np.pi / 4 + np.arange(4) * np.pi / 2
        radii = np.full(4, r)
    elif name == "triangle":
        theta = angle + np.arange(3) * 2 * np.pi / 3
        radii = np.full(3, r)
    else:  # star
        theta = angle + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
    return np.stack([cx + radii * np.cos(theta), cy + radii * np.sin(theta)], axis=1)


def _thing_mask(cls: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    canvas = np.zeros((size, size), dtype=np.uint8)
    if CLASSES[cls] == "circle":
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1, cv2.LINE_8)
    else:
        pts = np.round(_thing_polygon(cls, cx, cy, r, angle)).astype(np.int32)
        cv2.fillPoly(canvas, [pts], 1, cv2.LINE_8)
    return canvas.astype(bool)


def _random_color(rng: np.random.Generator, cls: int) -> np.ndarray:
    """A saturated colour in the hue family of thing class ``cls`` (centres 45 units apart)."""
    hue = (cls * 180 // len(THING_CLASSES) + rng.integers(-HUE_SPREAD, HUE_SPREAD + 1)) % 180
    hsv = np.array([[[hue, rng.integers(150, 256), rng.integers(140, 256)]]], dtype=np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def render_scene(rng: np.random.Generator, size: int = 128
                 ) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]], np.ndarray]:
    """Draw one image.

    Returns:
        image: (S, S, 3) uint8 RGB.
        segments: [(contiguous class id, (S, S) bool mask)], things (in drawing order) then stuff;
            masks are disjoint and non-empty.
        void: (S, S) bool, the pixels of no segment.
    """
    stuff = _stuff_layout(rng, size)
    image = np.zeros((size, size, 3), dtype=np.float32)
    for cls in np.unique(stuff):
        sel = stuff == cls
        image[sel] = _stuff_texture(rng, int(cls), size)[sel]

    void = np.zeros((size, size), dtype=bool)
    if rng.random() < 0.3:  # a checkered blob nobody labelled
        blob = np.zeros((size, size), dtype=np.uint8)
        center = tuple(int(v) for v in rng.integers(0, size, 2))
        axes = tuple(int(v) for v in rng.integers(size // 32 + 1, size // 10 + 2, 2))
        cv2.ellipse(blob, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1, cv2.LINE_8)
        void = blob.astype(bool)
        rows, cols = np.mgrid[0:size, 0:size]
        checker = ((rows // 3 + cols // 3) % 2).astype(bool)
        greys = rng.integers(40, 220, 2)
        image[void & checker] = greys[0]
        image[void & ~checker] = greys[1]

    owner = np.full((size, size), -1, dtype=np.int32)  # which thing shows at each pixel
    thing_classes = []
    for k in range(int(rng.integers(2, 7))):
        cls = int(rng.integers(len(THING_CLASSES)))
        r = rng.uniform(0.1, 0.22) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        mask = _thing_mask(cls, cx, cy, r, rng.uniform(0, 2 * np.pi), size)
        color = _random_color(rng, cls)
        ys, xs = np.nonzero(mask)
        shade = 1.0 + 0.15 * (2 * xs.astype(np.float32) / size - 1)  # light from the right
        image[ys, xs] = color * shade[:, None] + _noise(rng, (len(ys), 3), 4)
        owner[mask] = k
        thing_classes.append(cls)

    min_area = max(8, (size * size) // 1024)
    segments: List[Tuple[int, np.ndarray]] = []
    for k, cls in enumerate(thing_classes):
        visible = owner == k
        if visible.sum() >= min_area:
            segments.append((cls, visible))
        else:  # too small to annotate: void
            void |= visible
    background = (owner < 0) & ~void
    for cls in np.unique(stuff):
        mask = background & (stuff == cls)
        if mask.any():
            segments.append((int(cls), mask))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    return image, segments, void
