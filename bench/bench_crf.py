"""Timing of pipeline.crf.refine_sequence (dense CRF, the paper setting) on this CPU.

Usage:
    python bench/bench_crf.py [--store data/davis2016/frames/bear.zarr] [--frames 4] [--small-frames 20]

Two cases, K = 3 object slots with random smooth probabilities (bicubic upsampling
of an 8 x 14 random grid, float16, at the working resolution 128 x 224):

* ``full``: real frames from the store's ``rgb_full`` (DAVIS 480 x 854); the
  probabilities are upsampled bilinearly to 480 x 854 inside refine_sequence (the
  stage's path);
* ``work``: the store's ``rgb`` frames at 128 x 224 with the probabilities as they are.

Reports wall and CPU seconds per frame (whole refine_sequence, and the CRF alone) and
writes ``bench/out/crf.json``. The box is shared: the load average is recorded too.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipeline.core.store import open_artifact
from pipeline.crf import (
    CRFConfig,
    dense_crf,
    label_probabilities,
    refine_sequence,
    upsample_probs,
)

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "out", "crf.json")


def smooth_probs(rng: np.random.Generator, T: int, K: int, h: int, w: int) -> np.ndarray:
    small = rng.random((T, K, 8, 14)).astype(np.float32)
    return np.stack([[cv2.resize(s, (w, h), interpolation=cv2.INTER_CUBIC) for s in fr]
                     for fr in small]).clip(0, 1).astype(np.float16)


def time_case(frames, probs, cfg: CRFConfig) -> dict:
    T, H, W = frames.shape[:3]
    list(refine_sequence(frames[:1], probs[:1], cfg, progress=False))  # warm-up
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in refine_sequence(frames, probs, cfg, progress=False):
        pass
    wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    # CRF alone (inputs prepared beforehand)
    prepared = [(np.asarray(frames[t]), label_probabilities(upsample_probs(probs[t], (H, W))))
                for t in range(T)]
    w1 = time.perf_counter()
    for img, lp in prepared:
        dense_crf(img, lp, cfg)
    crf_only = time.perf_counter() - w1
    return {"frames": T, "size": [H, W], "K": int(probs.shape[1]), "probs_size": list(probs.shape[2:]),
            "s_per_frame": wall / T, "cpu_s_per_frame": cpu / T, "crf_only_s_per_frame": crf_only / T}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="data/davis2016/frames/bear.zarr")
    ap.add_argument("--frames", type=int, default=4, help="frames timed at the full resolution")
    ap.add_argument("--small-frames", type=int, default=20, help="frames timed at 128 x 224")
    ap.add_argument("--K", type=int, default=3)
    args = ap.parse_args()

    art = open_artifact(args.store, stage="frames")
    rng = np.random.default_rng(0)
    cfg = CRFConfig()
    load0 = os.getloadavg()
    full = np.asarray(art["rgb_full"][:args.frames])
    work = np.asarray(art["rgb"][:args.small_frames])
    results = {
        "config": cfg.to_dict(), "store": args.store, "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "loadavg_before": load0,
        "full": time_case(full, smooth_probs(rng, len(full), args.K, 128, 224), cfg),
        "work": time_case(work, smooth_probs(rng, len(work), args.K, 128, 224), cfg),
    }
    results["loadavg_after"] = os.getloadavg()
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(results, f, indent=2)
    for case in ("full", "work"):
        r = results[case]
        print(f"{case}: {r['size'][0]}x{r['size'][1]} K={r['K']}: {r['s_per_frame']:.3f} s/frame "
              f"(cpu {r['cpu_s_per_frame']:.3f}, CRF alone {r['crf_only_s_per_frame']:.3f}) over {r['frames']} frames")
    print(f"load average {load0[0]:.2f} -> {results['loadavg_after'][0]:.2f}; wrote {OUT}")


if __name__ == "__main__":
    main()
