"""Timing of pipeline.metrics on real DAVIS 480p sequences.

Usage:
    python bench/bench_metrics.py [--root DAVIS_ROOT] [--seq bear ...] [--repeat 3]

For each sequence the GT masks are read from ``Annotations/480p/<seq>`` and a
synthetic 3-layer prediction is built from them (layer 1: GT shifted by
(6, 14) px, layer 2: GT eroded by a 9x9 box, overriding layer 1, layer 3: a
spurious box), plus a half-resolution copy of it to time the resize path.
Prints, per sequence and protocol, the best-of-``repeat`` wall time of
``evaluate_sequence`` and the J / F means (a sanity check: the eroded layer
should win the single-object match).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from pipeline import metrics as M  # noqa: E402

DEFAULT_ROOT = "/work/shared/datasets/davis2016-train"


def make_prediction(gt: np.ndarray) -> np.ndarray:
    pred = np.zeros_like(gt)
    box = np.ones((9, 9), np.uint8)
    for t in range(len(gt)):
        m = gt[t] > 0
        pred[t][np.roll(m, (6, 14), axis=(0, 1))] = 1
        pred[t][cv2.erode(m.astype(np.uint8), box).astype(bool)] = 2
        pred[t, 20:120, 30:200] = 3
    return pred


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=DEFAULT_ROOT)
    ap.add_argument("--seq", nargs="*", default=["bear", "bmx-bumps", "dance-jump"])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    for seq in args.seq:
        files = sorted(glob.glob(os.path.join(args.root, "Annotations", "480p", seq, "*.png")))
        if not files:
            print(f"{seq}: no annotations under {args.root}")
            continue
        t0 = time.perf_counter()
        gt = np.stack([M.read_label_png(f) for f in files])
        t_read = time.perf_counter() - t0
        pred = make_prediction(gt)
        half = np.stack([cv2.resize(p, (p.shape[1] // 2, p.shape[0] // 2), interpolation=cv2.INTER_NEAREST) for p in pred])
        n = len(gt)
        print(f"{seq}: {n} frames {gt.shape[1]}x{gt.shape[2]}, read GT PNGs {t_read:.2f}s")
        cases = [
            ("single", pred, "nearest"),
            ("multi", pred, "nearest"),
            ("merged", pred, "nearest"),
            ("single", half, "nearest"),
            ("single", half, "bilinear"),
        ]
        for protocol, p, resize in cases:
            dt, res = best_time(
                lambda: M.evaluate_sequence(p, gt, protocol=protocol, resize=resize, sequence=seq), args.repeat
            )
            row = res.row()
            size = "full" if p.shape == gt.shape else f"half/{resize}"
            print(
                f"  {protocol:6s} {size:13s} {dt:6.2f}s ({1e3 * dt / n:5.1f} ms/frame)  "
                f"match={res.matches}  J={row['J_mean']:.4f} F={row['F_mean']:.4f}"
            )


if __name__ == "__main__":
    main()
