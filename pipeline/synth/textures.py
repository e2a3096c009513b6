"""Procedural textures (used when no image folder is available) and colour jitter."""

from __future__ import annotations

import cv2
import numpy as np

PROCEDURAL_KINDS = ("noise", "stripes", "checks", "blur", "cells")


def _random_colors(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random RGB colours in [0, 1] with reasonable saturation."""
    hsv = np.stack([rng.uniform(0, 180, n), rng.uniform(60, 255, n), rng.uniform(60, 255, n)], -1)
    rgb = cv2.cvtColor(hsv.astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]
    return rgb.astype(np.float32) / 255.0


def _fractal_noise(rng: np.random.Generator, h: int, w: int, octaves: int = 5,
                   base: float | None = None) -> np.ndarray:
    """Sum of up-sampled white noise octaves in [0, 1], shape [h, w]."""
    base = base if base is not None else rng.uniform(3, 10)
    out = np.zeros((h, w), np.float32)
    amp, tot = 1.0, 0.0
    persistence = rng.uniform(0.4, 0.7)
    for o in range(octaves):
        cells = base * 2 ** o
        gh, gw = max(2, int(round(h / max(h, w) * cells)) + 1), max(2, int(round(w / max(h, w) * cells)) + 1)
        g = rng.random((gh, gw), dtype=np.float32)
        out += amp * cv2.resize(g, (w, h), interpolation=cv2.INTER_CUBIC)
        tot += amp
        amp *= persistence
    out /= tot
    lo, hi = out.min(), out.max()
    return (out - lo) / max(hi - lo, 1e-6)


def _palette_map(rng: np.random.Generator, field: np.ndarray, n_colors: int) -> np.ndarray:
    """Map a scalar field in [0, 1] through a random piecewise-linear colour ramp."""
    cols = _random_colors(rng, n_colors)
    stops = np.linspace(0, 1, n_colors)
    return np.stack([np.interp(field, stops, cols[:, c]) for c in range(3)], -1).astype(np.float32)


def procedural_texture(rng: np.random.Generator, h: int, w: int, kind: str | None = None) -> tuple[np.ndarray, str]:
    """A random RGB texture ``uint8 [h, w, 3]`` and its kind name."""
    kind = kind or PROCEDURAL_KINDS[rng.integers(len(PROCEDURAL_KINDS))]
    if kind == "noise":
        img = _palette_map(rng, _fractal_noise(rng, h, w), int(rng.integers(2, 5)))
    elif kind in ("stripes", "checks"):
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        period = rng.uniform(8, 32)
        ang = rng.uniform(0, np.pi)
        f = np.sin(2 * np.pi * (xx * np.cos(ang) + yy * np.sin(ang)) / period + rng.uniform(0, 2 * np.pi))
        if kind == "checks":
            f = f * np.sin(2 * np.pi * (-xx * np.sin(ang) + yy * np.cos(ang)) / rng.uniform(8, 32)
                           + rng.uniform(0, 2 * np.pi))
        sharp = rng.uniform(1, 6)
        f = 0.5 + 0.5 * np.tanh(sharp * f)
        img = _palette_map(rng, f, 2)
        img *= (0.75 + 0.5 * _fractal_noise(rng, h, w))[..., None]
    elif kind == "blur":
        sigma = rng.uniform(1.0, 5.0)
        img = rng.random((h, w, 3), dtype=np.float32)
        img = cv2.GaussianBlur(img, (0, 0), sigma)
        img = (img - img.min((0, 1))) / np.maximum(img.max((0, 1)) - img.min((0, 1)), 1e-6)
        img = 0.2 + 0.8 * img * _random_colors(rng, 1)[0] + 0.2 * _fractal_noise(rng, h, w)[..., None]
    elif kind == "cells":
        img = np.ones((h, w, 3), np.float32) * _random_colors(rng, 1)[0]
        n = int(rng.integers(15, 60))
        cols = _random_colors(rng, n)
        size = max(h, w)
        for i in range(n):
            c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            r = int(rng.uniform(0.03, 0.15) * size) + 1
            col = tuple(float(v) for v in cols[i])
            if rng.random() < 0.5:
                cv2.circle(img, c, r, col, -1, lineType=cv2.LINE_AA)
            else:
                cv2.rectangle(img, (c[0] - r, c[1] - r), (c[0] + r, c[1] + int(r * rng.uniform(0.3, 1.5))),
                              col, -1, lineType=cv2.LINE_AA)
        img = cv2.GaussianBlur(img, (0, 0), 0.7)
        img *= (0.8 + 0.4 * _fractal_noise(rng, h, w))[..., None]
    else:
        raise ValueError(f"unknown procedural texture kind {kind!r}")
    grain = cv2.GaussianBlur(rng.normal(0, 0.025, img.shape).astype(np.float32), (0, 0), 0.8)
    img = img + grain  # fine (slightly correlated) grain gives flow estimators something to track
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8), kind


def color_jitter(rng: np.random.Generator, img: np.ndarray, strength: float) -> np.ndarray:
    """Random brightness/contrast/saturation change (one draw for the whole array;
    works on [..., 3] uint8 arrays such as a clip [T, H, W, 3])."""
    if strength <= 0:
        return img
    b = np.float32(rng.uniform(-strength, strength))
    c = np.float32(np.exp(rng.uniform(-strength, strength)))
    s = np.float32(np.exp(rng.uniform(-2 * strength, 2 * strength)))
    gains = np.exp(rng.uniform(-strength / 2, strength / 2, 3)).astype(np.float32)
    x = img.astype(np.float32) * np.float32(1 / 255.0)
    gray = x.mean(-1, keepdims=True)
    x = gray + (x - gray) * s
    x = ((x - np.float32(0.5)) * c + (np.float32(0.5) + b)) * gains
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)
