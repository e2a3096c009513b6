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

import cv2
import numpy as np
from PIL import Image

from pipeline.core.draw import (
    _PALETTE,
    contact_sheet,
    num_frames,
    resize_labels,
    save_png,
    write_video,
)


def write_label_png(path: str | Path, labels: np.ndarray) -> None:
    im = Image.fromarray(np.asarray(labels, np.uint8), mode="P")
    im.putpalette(_PALETTE.reshape(-1).tolist())
    im.save(path, optimize=False)


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


def export_synth_split(render_dir: str | Path, out_root: str | Path, count: int | None = None,
                       resolution: str = "480p") -> list[str]:
    """Write a synthetic split as a DAVIS-style dataset folder (lossless PNG frames, palette PNG
    ground truth = the modal label map), so the whole inference pipeline can run and be scored on
    it: ``motionseg dataset use <out_root> --name synthval --protocol multi``. Returns the names."""
    from pipeline.core.store import open_artifact
    from pipeline.synth.dataset import list_split

    out_root = Path(out_root)
    stores = list_split(render_dir)[:count]
    names = []
    for store in stores:
        art = open_artifact(store)
        rgb, gt = art.require("rgb", dtype="uint8", ndim=4), art.require("gt", dtype="uint8", ndim=3)
        name = store.name[:-len(".zarr")] if store.name.endswith(".zarr") else store.name
        fdir, adir = out_root / "JPEGImages" / resolution / name, out_root / "Annotations" / resolution / name
        fdir.mkdir(parents=True, exist_ok=True)
        adir.mkdir(parents=True, exist_ok=True)
        for t in range(rgb.shape[0]):
            cv2.imwrite(str(fdir / f"{t:05d}.png"), cv2.cvtColor(np.asarray(rgb[t]), cv2.COLOR_RGB2BGR))
            write_label_png(adir / f"{t:05d}.png", np.asarray(gt[t]))
        names.append(name)
    (out_root / "sequences.txt").write_text("\n".join(names) + "\n")
    return names
