"""The embedded default dataset: short deterministic videos with exact masks.

A fresh clone has no external data, so the pipeline's default run generates a
small DAVIS-style dataset (``data/demo/raw``): textured objects moving
independently over a textured background that itself moves (camera motion),
written as JPEG frames plus palette-PNG label maps, exactly like a DAVIS-2017
folder. Everything is drawn from one seed, so the files are the same on every
machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from pipeline.core.draw import davis_palette


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of the demo dataset (``params.yaml: demo``).

    sequences: number of videos. frames: frames per video. height/width:
    frame size in pixels. max_objects: each video has 1..max_objects moving
    objects (video i has ``1 + i % max_objects``). seed: everything derives
    from it. jpeg_quality: quality of the written frames.
    """

    sequences: int = 2
    frames: int = 24
    height: int = 240
    width: int = 427
    max_objects: int = 2
    seed: int = 0
    jpeg_quality: int = 92


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Colourful smooth-noise texture with some high-frequency detail (uint8 RGB)."""
    out = np.zeros((h, w, 3), np.float32)
    for scale, amp in ((32, 1.0), (8, 0.5), (2, 0.25)):
        small = rng.random((max(2, h // scale), max(2, w // scale), 3)).astype(np.float32)
        out += amp * cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    out -= out.min()
    out /= max(out.max(), 1e-6)
    base = rng.random(3) * 0.6 + 0.2
    tint = 0.5 * out + 0.5 * base[None, None, :]
    return np.clip(tint * 255, 0, 255).astype(np.uint8)


def _shape_mask(rng: np.random.Generator, size: int) -> np.ndarray:
    """A random star-ish polygon filled into a size x size canvas."""
    n = int(rng.integers(5, 9))
    ang = np.sort(rng.random(n) * 2 * np.pi)
    rad = (0.30 + 0.18 * rng.random(n)) * size
    c = size / 2
    pts = np.stack([c + rad * np.cos(ang), c + rad * np.sin(ang)], 1).astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillPoly(m, [pts], 1)
    return m


def render_demo_video(cfg: DemoConfig, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Frames uint8 [T,H,W,3] and label maps uint8 [T,H,W] of demo video ``index``."""
    rng = np.random.default_rng([cfg.seed, index])
    T, H, W = cfg.frames, cfg.height, cfg.width
    n_obj = 1 + index % cfg.max_objects
    margin = 40
    bg = _texture(rng, H + 2 * margin, W + 2 * margin)
    cam_v = rng.uniform(-1.0, 1.0, 2)  # px / frame background translation
    cam_zoom = rng.uniform(-0.002, 0.002)
    objs = []
    for k in range(n_obj):
        size = int(rng.integers(int(0.28 * H), int(0.45 * H)))
        tex = _texture(rng, size, size)
        mask = _shape_mask(rng, size)
        pos = np.array([rng.uniform(0.2, 0.8) * W, rng.uniform(0.3, 0.7) * H])
        vel = rng.uniform(2.0, 4.0, 2) * rng.choice([-1, 1], 2)
        rot = rng.uniform(-2.0, 2.0)  # degrees / frame
        objs.append((tex, mask, pos, vel, rot, size))
    frames = np.zeros((T, H, W, 3), np.uint8)
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        s = 1.0 + cam_zoom * t
        A = np.array([[s, 0, margin + cam_v[0] * t - (s - 1) * W / 2],
                      [0, s, margin + cam_v[1] * t - (s - 1) * H / 2]], np.float64)
        img = cv2.warpAffine(bg, A, (W, H), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                             borderMode=cv2.BORDER_REFLECT)
        lab = np.zeros((H, W), np.uint8)
        for k, (tex, mask, pos, vel, rot, size) in enumerate(objs):
            p = pos + vel * t
            # bounce inside the frame so objects stay visible
            for d, lim in ((0, W), (1, H)):
                span = lim - 0.2 * lim
                q = (p[d] - 0.1 * lim) % (2 * span)
                p[d] = 0.1 * lim + (q if q < span else 2 * span - q)
            M = cv2.getRotationMatrix2D((size / 2, size / 2), rot * t, 1.0)
            M[:, 2] += p - size / 2
            m = cv2.warpAffine(mask, M, (W, H), flags=cv2.INTER_NEAREST) > 0
            o = cv2.warpAffine(tex, M, (W, H), flags=cv2.INTER_LINEAR)
            img[m] = o[m]
            lab[m] = k + 1
        frames[t], labels[t] = img, lab
    return frames, labels


def write_demo_dataset(root: str | Path, cfg: DemoConfig) -> list[str]:
    """Write the demo dataset as a DAVIS-style folder; return the sequence names."""
    root = Path(root)
    names = [f"demo-{i + 1:02d}" for i in range(cfg.sequences)]
    pal = davis_palette()
    for i, name in enumerate(names):
        frames, labels = render_demo_video(cfg, i)
        fdir = root / "JPEGImages" / "480p" / name
        adir = root / "Annotations" / "480p" / name
        fdir.mkdir(parents=True, exist_ok=True)
        adir.mkdir(parents=True, exist_ok=True)
        for t in range(cfg.frames):
            bgr = cv2.cvtColor(frames[t], cv2.COLOR_RGB2BGR)
            cv2.imwrite(str(fdir / f"{t:05d}.jpg"), bgr,
                        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
            im = Image.fromarray(labels[t], mode="P")
            im.putpalette(pal.reshape(-1).tolist())
            im.save(adir / f"{t:05d}.png")
    (root / "sequences.txt").write_text("\n".join(names) + "\n")
    return names
