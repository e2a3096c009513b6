"""A synthetic split as a DAVIS-style dataset folder, so the inference pipeline can run and be
scored on synthetic video (stage ``synth_dataset``)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.core.draw import write_label_png
from pipeline.core.store import open_artifact
from pipeline.synth.dataset import list_split


def export_synth_split(render_dir: str | Path, out_root: str | Path, count: int | None = None,
                       resolution: str = "480p") -> list[str]:
    """Write a synthetic split as a DAVIS-style dataset folder (lossless PNG frames, palette PNG
    ground truth = the modal label map), so the whole inference pipeline can run and be scored on
    it: ``motionseg dataset use <out_root> --name synthval --protocol multi``. Returns the names."""
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
