"""Sprites: a shape mask and a texture on a canonical canvas, plus TPS handles."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SUPERSAMPLE = 4
PAD = 3  # canvas margin (px) around the shape so bilinear sampling at the edge is clean


@dataclass
class Sprite:
    mask: np.ndarray          # float32 [h, w] coverage in [0, 1] (anti-aliased)
    texture: np.ndarray       # uint8 [h, w, 3]
    center: np.ndarray        # (x, y) of the shape centre on the canvas
    radius: float             # half of the larger side of the shape's box (canvas px)
    handles: np.ndarray       # [k, 2] TPS control points (canvas coords)
    probe: np.ndarray         # [m, 2] points used to measure per-frame speeds
    kind: str
    info: dict = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


def _polygon_area(p: np.ndarray) -> float:
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def random_polygon(rng: np.random.Generator, n: int, min_spacing: float, min_area: float,
                   p_convex: float, tries: int = 200) -> tuple[np.ndarray, bool]:
    """Vertices [n, 2] of a simple polygon inside the unit disk (max radius 1,
    centred on its bounding box) and whether it is convex by construction.

    Vertices are sorted by angle around the origin, so the polygon never self-
    intersects; convex ones lie on the unit circle, others have radii in
    [0.3, 1] (usually non-convex). Any two vertices are at least
    ``min_spacing`` apart and the area is at least ``min_area * pi``.
    """
    best = None
    for _ in range(tries):
        convex = bool(rng.random() < p_convex)
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = np.ones(n) if convex else rng.uniform(0.3, 1.0, n)
        pts = np.stack([rad * np.cos(ang), rad * np.sin(ang)], -1)
        pts -= (pts.min(0) + pts.max(0)) / 2
        pts /= np.sqrt((pts ** 2).sum(-1)).max()
        d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1)) + np.eye(n) * 9
        area = _polygon_area(pts)
        score = min(d.min() / min_spacing, area / (min_area * np.pi))
        if best is None or score > best[0]:
            best = (score, pts, convex)
        if score >= 1:
            break
    return best[1], best[2]


def rasterize_polygon(pts: np.ndarray, h: int, w: int) -> np.ndarray:
    """Anti-aliased coverage [h, w] of the polygon with canvas-pixel vertices ``pts``."""
    s = SUPERSAMPLE
    shift = 4
    p = (pts + 0.5) * s - 0.5  # canvas pixel centre -> supersampled pixel centre
    p = np.round(p * (1 << shift)).astype(np.int32)
    big = np.zeros((h * s, w * s), np.uint8)
    cv2.fillPoly(big, [p.reshape(-1, 1, 2)], 255, lineType=cv2.LINE_8, shift=shift)
    return cv2.resize(big.astype(np.float32) / 255.0, (w, h), interpolation=cv2.INTER_AREA)


def polygon_sprite(rng: np.random.Generator, radius: float, n_vertices: int, min_spacing: float,
                   min_area: float, p_convex: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """(mask, vertices in canvas coords, info) for a random polygon of the given radius."""
    unit, convex = random_polygon(rng, n_vertices, min_spacing, min_area, p_convex)
    side = int(np.ceil(2 * radius)) + 2 * PAD
    c = (side - 1) / 2.0
    verts = unit * radius + c
    mask = rasterize_polygon(verts, side, side)
    return mask, verts, {"n_vertices": int(n_vertices), "convex": convex}


def bar_vertices(rng: np.random.Generator, radius: float) -> np.ndarray:
    """A pole-like rectangle (unit-free), length 2*radius, random thickness."""
    half_w = radius * rng.uniform(0.08, 0.25)
    return np.array([[-radius, -half_w], [radius, -half_w], [radius, half_w], [-radius, half_w]])


def silhouette_canvas(mask: np.ndarray, radius: float, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Resize a cropped binary mask so its larger side is 2*radius; returns the
    anti-aliased canvas mask and the shape's box (x0, y0, x1, y1) on the canvas."""
    bh, bw = mask.shape
    f = 2 * radius / max(bh, bw)
    nw, nh = max(2, int(round(bw * f))), max(2, int(round(bh * f)))
    m = mask.astype(np.float32)
    if flip:
        m = m[:, ::-1]
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    m = cv2.resize(np.ascontiguousarray(m), (nw, nh), interpolation=interp)
    canvas = np.zeros((nh + 2 * PAD, nw + 2 * PAD), np.float32)
    canvas[PAD:PAD + nh, PAD:PAD + nw] = m
    return canvas, np.array([PAD, PAD, PAD + nw - 1, PAD + nh - 1], np.float64)


def grid_handles(box: np.ndarray, g: int) -> np.ndarray:
    x0, y0, x1, y1 = box
    xs, ys = np.linspace(x0, x1, g), np.linspace(y0, y1, g)
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], -1)


def box_probe(box: np.ndarray, n: int = 5) -> np.ndarray:
    """Points on the boundary and inside of a box, to measure motion speeds."""
    return grid_handles(box, n)
