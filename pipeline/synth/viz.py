"""Debug sheets of synthetic videos (RGB, ground-truth flow, modal labels, amodal outlines);
the flow colour wheel is :func:`pipeline.core.draw.flow_to_color`."""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np

from pipeline.core.draw import flow_to_color

PALETTE = np.array([[40, 40, 40], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                    [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.uint8)
OCCLUDER_COLOR = np.array([200, 200, 200], np.uint8)


def label_image(labels: np.ndarray, occluder: np.ndarray | None = None) -> np.ndarray:
    out = PALETTE[np.asarray(labels) % len(PALETTE)].copy()
    if occluder is not None:
        out[occluder] = OCCLUDER_COLOR
    return out


def amodal_outlines(rgb: np.ndarray, amodal: np.ndarray) -> np.ndarray:
    """RGB with each object's amodal contour drawn in its palette colour."""
    out = np.ascontiguousarray(rgb).copy()
    for o in range(amodal.shape[0]):
        m = amodal[o].astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        col = tuple(int(c) for c in PALETTE[(o + 1) % len(PALETTE)])
        cv2.drawContours(out, contours, -1, col, 1)
    return out


def _caption(img: np.ndarray, text: str) -> np.ndarray:
    bar = np.full((14, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text, (2, 11), cv2.FONT_HERSHEY_SIMPLEX, 0.35, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def video_sheet(video: dict, frames: Sequence[int] = (0, 10, 20),
                  flow_to_color: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """uint8 RGB image: one row per frame with RGB, GT forward flow (colour
    wheel), modal labels (occluder in light grey) and amodal outlines on RGB."""
    t_total = video["rgb"].shape[0]
    frames = sorted({min(max(int(f), 0), t_total - 1) for f in frames})
    to_color = flow_to_color or _default_flow_color(video, frames)
    rows = []
    for t in frames:
        tiles = [video["rgb"][t], to_color(video["flow_fwd"][t]),
                 label_image(video["labels"][t], video.get("occluder", None)[t] if "occluder" in video else None),
                 amodal_outlines(video["rgb"][t], video["amodal"][t])]
        sep = np.full((tiles[0].shape[0], 2, 3), 255, np.uint8)
        row = np.concatenate(sum(([x, sep] for x in tiles), [])[:-1], 1)
        rows.append(_caption(row, f"t={t}  |  rgb  |  gt flow t->t+1  |  modal labels  |  amodal outlines"))
    meta = video.get("meta", {})
    head = (f"seed={meta.get('seed')} idx={meta.get('index')} objs={meta.get('num_objects')} "
            f"{meta.get('sprites')} bg={meta.get('background')} tps={meta.get('tps')} "
            f"stat={'y' if meta.get('stationary') else 'n'} occ={'y' if meta.get('occluder') else 'n'}")
    sheet = np.concatenate(rows, 0)
    return _caption(sheet, head)


def _default_flow_color(video: dict, frames: Sequence[int]):
    mags = [np.sqrt((video["flow_fwd"][t] ** 2).sum(0)) for t in frames]
    m = float(max(np.percentile(x, 99) for x in mags)) if mags else 1.0
    return lambda f: flow_to_color(f, max_mag=m)
