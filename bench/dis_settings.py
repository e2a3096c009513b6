"""Which OpenCV DIS settings? Forward end-point error against the exact flow of the synthetic validation
renders (``data/synth/val/render/*.zarr``: ``gt_flow`` where ``flow_exact``), at their 128 x 224 size.

    python bench/dis_settings.py --out results/synthval/dis_settings.json

Rows: the medium and fast presets, the finest pyramid level (``flow.dis_finest_scale``: the medium preset
computes at half resolution, level 1), more variational refinement, and the frames
upscaled x2 before DIS (``flow.infer_size`` at twice the size). ``calc_s`` is the time of DIS itself
(one thread of the 2-core machine), all pairs. What the motion baseline and the proposals make of a
setting: ``bench/flow_probe.py synthval ... "flow.method=dis;flow.dis_finest_scale=null"``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import zarr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.flow import DisEstimator, resize_flow  # noqa: E402

VARIANTS = {  # name: (preset, finest_scale, extra setters, upscale)
    "medium (preset: finest level 1)": ("medium", None, {}, 1),
    "fast": ("fast", None, {}, 1),
    "medium, finest level 0": ("medium", 0, {}, 1),
    "medium, 20 variational iterations": ("medium", None, {"setVariationalRefinementIterations": 20}, 1),
    "medium, frames x2": ("medium", None, {}, 2),
    "medium, frames x2, finest level 0": ("medium", 0, {}, 2),
}


def epe(stores: list[Path], preset: str, finest: int | None, setters: dict, up: int) -> tuple[float, float]:
    errs, secs = [], 0.0
    for p in stores:
        g = zarr.open_group(str(p), mode="r")
        rgb, gt, exact = np.asarray(g["rgb"]), np.asarray(g["gt_flow"]), np.asarray(g["flow_exact"])
        est = DisEstimator(preset, finest)
        for name, v in setters.items():
            getattr(est._dis, name)(v)
        H, W = rgb.shape[1:3]
        for t in range(len(rgb) - 1):
            a, b = rgb[t], rgb[t + 1]
            if up != 1:
                a = cv2.resize(a, (W * up, H * up), interpolation=cv2.INTER_LINEAR)
                b = cv2.resize(b, (W * up, H * up), interpolation=cv2.INTER_LINEAR)
            t0 = time.perf_counter()
            f = est(a[None], b[None])[0]
            secs += time.perf_counter() - t0
            f = resize_flow(f[None], (H, W))[0]
            if exact[t].any():
                errs.append(float(np.hypot(f[0] - gt[t, 0], f[1] - gt[t, 1])[exact[t]].mean()))
    return float(np.mean(errs)), secs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--renders", type=Path, default=ROOT / "data/synth/val/render")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    stores = sorted(a.renders.glob("*.zarr"))
    if not stores:
        sys.exit(f"error: no render stores in {a.renders} (dvc repro training/dvc.yaml:synth_dataset@val)")
    rows = []
    for name, (preset, finest, setters, up) in VARIANTS.items():
        e, s = epe(stores, preset, finest, setters, up)
        rows.append({"setting": name, "epe_px": round(e, 4), "calc_s": round(s, 2)})
        print(f"{name}: EPE {e:.3f} px, {s:.1f} s", flush=True)
    out = {"data": f"{a.renders.relative_to(ROOT)} ({len(stores)} videos, forward flow, pixels where flow_exact)",
           "size": "128 x 224 (the renders' size; x2 rows: DIS at 256 x 448, flow resized back)", "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
