"""Export and visualisation: DAVIS PNGs, overlays, contact sheets, videos, flow colours.

* :func:`write_label_pngs` writes label maps as DAVIS palette PNGs at the
  original resolution (what the official evaluator and most tools read).
* :func:`overlay` / :func:`contact_sheet` / :func:`write_video` show any mask
  array on top of the frames (PNG grid and mp4).
* :func:`flow_to_color` renders optical flow with the standard colour wheel
  (hue = direction, saturation = magnitude).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from pipeline.core.draw import (
    contact_sheet,
    num_frames,
    resize_labels,
    save_png,
    write_label_png,
    write_video,
)


def write_label_pngs(out_dir: str | Path, labels: Iterable[np.ndarray], names: Sequence[str],
                     size: tuple[int, int] | None = None) -> list[Path]:
    """Write one palette PNG per frame (``<name>.png``), resized to ``size`` (H, W)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for lab, name in zip(labels, names):
        lab = np.asarray(lab, np.uint8)
        if size is not None:
            lab = resize_labels(lab, size)
        p = out_dir / f"{name}.png"
        write_label_png(p, lab)
        paths.append(p)
    return paths


def export_sequence(labels, frames_art, out_dir: str | Path, *, contact_frames: int = 8,
                    video: bool = True, fps: float = 10.0) -> dict:
    """Export one sequence's label maps (any [T,h,w] array, e.g. a store's ``labels``).

    Writes into ``out_dir`` (atomically: a temporary folder renamed at the end):
    ``masks/<frame>.png`` DAVIS palette PNGs at the original resolution,
    ``overlay.png`` a contact sheet of overlays, ``overlay.mp4`` if ``video``.
    ``frames_art`` is the sequence's ``frames`` artifact. Memory: one frame at a time.
    """
    from pipeline.core.runtime import atomic_dir

    names = frames_art.attrs["frame_names"]
    H, W = frames_art.attrs["original_size"]
    n = num_frames(labels)
    if n != len(names):
        raise ValueError(f"{frames_art.path}: {len(names)} frames but the masks have {n}")
    rgb = frames_art["rgb_full"] if "rgb_full" in frames_art else frames_art["rgb"]
    with atomic_dir(out_dir) as tmp:
        write_label_pngs(tmp / "masks", (np.asarray(labels[t]) for t in range(n)), names,
                         size=(H, W))
        save_png(tmp / "overlay.png", contact_sheet(rgb, labels, count=contact_frames, names=names))
        if video:
            write_video(tmp / "overlay.mp4", rgb, labels, fps=fps)
    return {"frames": n, "size": [H, W], "out": str(out_dir)}
