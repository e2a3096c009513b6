"""Pictures: the DAVIS palette, mask overlays, contact sheets, the flow colour wheel, overlay videos and per-sequence bar plots (one home for every component's figures)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np


def davis_palette(n: int = 256) -> np.ndarray:
    """The DAVIS / PASCAL-VOC palette: uint8 [n,3]; 0 black, 1 red, 2 green, 3 olive, ..."""
    pal = np.zeros((n, 3), np.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        pal[i] = (r, g, b)
    return pal


_PALETTE = davis_palette()


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    """A label map as a DAVIS palette PNG."""
    from PIL import Image

    im = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    im.putpalette(_PALETTE.reshape(-1).tolist())
    im.save(path, optimize=False)


def overlay(rgb: np.ndarray, labels: np.ndarray, alpha: float = 0.5,
            contour: bool = True) -> np.ndarray:
    """Blend a label map over an RGB frame (both at the same size), with outlines."""
    rgb = np.asarray(rgb, np.uint8)
    labels = np.asarray(labels)
    if labels.shape[:2] != rgb.shape[:2]:
        labels = resize_labels(labels.astype(np.uint8), rgb.shape[:2])
    col = _PALETTE[labels.astype(np.int64) % 256]
    fg = labels > 0
    out = rgb.astype(np.float32)
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    out = out.astype(np.uint8)
    if contour:
        for k in np.unique(labels):
            if k == 0:
                continue
            m = (labels == k).astype(np.uint8)
            cs, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, cs, -1, tuple(int(v) for v in _PALETTE[int(k) % 256]), 1)
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, text, (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return img


def grid(tiles: Sequence[np.ndarray], cols: int, pad: int = 2) -> np.ndarray:
    """Arrange equally sized RGB tiles in a grid with a white gap."""
    if not tiles:
        raise ValueError("grid() needs at least one tile")
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + cols - 1) // cols
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), 255, np.uint8)
    for i, t in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + c * (w + pad)
        out[y:y + h, x:x + w] = t
    return out


def num_frames(frames) -> int:
    """Length of a frame sequence: numpy / zarr arrays (``shape[0]``) or any sequence."""
    shape = getattr(frames, "shape", None)
    return int(shape[0]) if shape is not None else len(frames)


def pick_frames(n: int, count: int) -> list[int]:
    """``count`` frame indices spread evenly over ``n`` frames (first and last included)."""
    if n <= count:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, count)})


def contact_sheet(frames, labels, count: int = 8, cols: int = 4,
                  names: Sequence[str] | None = None, tile_width: int = 320) -> np.ndarray:
    """Overlays of ``count`` evenly spread frames as one RGB image.

    ``frames`` and ``labels`` only need ``len()`` and integer indexing (numpy
    or zarr arrays), so only the picked frames are read.
    """
    idx = pick_frames(num_frames(frames), count)
    tiles = []
    for t in idx:
        fr = np.asarray(frames[t])
        scale = tile_width / fr.shape[1]
        size = (int(round(fr.shape[0] * scale)), tile_width)
        fr = cv2.resize(fr, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        lab = resize_labels(np.asarray(labels[t], np.uint8), size)
        tiles.append(_label(overlay(fr, lab), names[t] if names else f"t={t}"))
    return grid(tiles, cols=min(cols, len(tiles)))


def write_video(path: str | Path, frames, labels=None, fps: float = 10.0,
                max_width: int = 640) -> Path:
    """Write an mp4 (mp4v) of the frames, with label overlays if given; streams frames."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    H, W = np.asarray(frames[0]).shape[:2]
    scale = min(1.0, max_width / W)
    h, w = int(round(H * scale)) // 2 * 2, int(round(W * scale)) // 2 * 2
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not vw.isOpened():
        raise RuntimeError(f"{path}: OpenCV cannot open an mp4 writer")
    try:
        for t in range(num_frames(frames)):
            fr = cv2.resize(np.asarray(frames[t]), (w, h), interpolation=cv2.INTER_AREA)
            if labels is not None:
                fr = overlay(fr, resize_labels(np.asarray(labels[t], np.uint8), (h, w)))
            vw.write(cv2.cvtColor(fr, cv2.COLOR_RGB2BGR))
    finally:
        vw.release()
    return path


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(np.asarray(rgb, np.uint8), cv2.COLOR_RGB2BGR)):
        raise RuntimeError(f"{path}: cannot write PNG")
    return path


# ---------------------------------------------------------------------------------------
# optical flow colour wheel
# ---------------------------------------------------------------------------------------
def _color_wheel() -> np.ndarray:
    """55 hues: red-yellow 15, yellow-green 6, green-cyan 4, cyan-blue 11,
    blue-magenta 13, magenta-red 6 (the usual flow colour coding)."""
    segs = [(15, (255, 0, 0), (255, 255, 0)), (6, (255, 255, 0), (0, 255, 0)),
            (4, (0, 255, 0), (0, 255, 255)), (11, (0, 255, 255), (0, 0, 255)),
            (13, (0, 0, 255), (255, 0, 255)), (6, (255, 0, 255), (255, 0, 0))]
    cols = []
    for n, a, b in segs:
        a, b = np.array(a, float), np.array(b, float)
        for i in range(n):
            cols.append(a + (b - a) * i / n)
    return np.array(cols)


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """uint8 RGB [H,W,3] for a flow field [2,H,W] (or [H,W,2]).

    Hue encodes direction, saturation the magnitude relative to ``max_mag``
    (default: the largest magnitude in this field). Zero flow is white.
    """
    flow = np.asarray(flow, np.float32)
    if flow.ndim == 3 and flow.shape[0] == 2 and flow.shape[-1] != 2:
        u, v = flow[0], flow[1]
    else:
        u, v = flow[..., 0], flow[..., 1]
    bad = ~np.isfinite(u) | ~np.isfinite(v)
    u = np.where(bad, 0, u)
    v = np.where(bad, 0, v)
    mag = np.sqrt(u ** 2 + v ** 2)
    if max_mag is None:
        max_mag = float(mag.max()) if mag.size else 1.0
    max_mag = max(max_mag, 1e-6)
    rad = np.clip(mag / max_mag, 0, 1)
    ang = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    n = len(_WHEEL)
    fk = (ang + 1) / 2 * (n - 1)
    k0 = np.floor(fk).astype(int) % n
    k1 = (k0 + 1) % n
    f = (fk - np.floor(fk))[..., None]
    col = (1 - f) * _WHEEL[k0] + f * _WHEEL[k1]
    col = 255 - rad[..., None] * (255 - col)
    col[bad] = 0
    return np.clip(col, 0, 255).astype(np.uint8)


def plot_per_sequence(rows: Sequence[dict], path: str | Path, title: str = "",
                      keys: Sequence[str] = ("J_mean", "F_mean")) -> Path:
    """Horizontal bar chart of per-sequence J and F (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: (r.get("JF_mean") is None, r.get("JF_mean") or 0))
    names = [r["sequence"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 0.28 * len(rows) + 1.2))
    y = np.arange(len(rows))
    hgt = 0.8 / len(keys)
    for i, k in enumerate(keys):
        vals = [np.nan if r.get(k) is None else r[k] for r in rows]
        ax.barh(y + i * hgt - 0.4 + hgt / 2, vals, height=hgt, label=k.replace("_mean", ""))
    ax.set_yticks(y, names, fontsize=8)
    ax.set_xlim(0, 1)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map [H,W] to (H', W')."""
    h, w = size
    if labels.shape[:2] == (h, w):
        return labels
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)
