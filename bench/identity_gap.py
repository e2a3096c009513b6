"""How much of a mask stage's J is lost to object identity: J under the metrics stage's rule (one
prediction per ground-truth object for the whole video) against J when every frame may match its
objects afresh (Hungarian matching per frame, so identity switches and an object split between two
slots over time cost nothing). A large gap means the slots follow the wrong object over time; no gap
with a low J means the masks themselves are wrong. Reads the stores, writes nothing but ``--out``.
Multi-object protocol; 255 is void.

    python bench/identity_gap.py demo proposals corrector adapted crf --out results/demo/identity_gap.json
    python bench/identity_gap.py synthval proposals corrector adapted crf --out results/synthval/identity_gap.json
    python bench/identity_gap.py demo proposals adapted --trace demo-02   # + per-frame IoU of each (slot, object)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence, pair_iou, resize_labels  # noqa: E402


def sequence_gap(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> tuple[list[float], list[float]]:
    """(J per object under the metrics stage's matching, J per object with per-frame matching); ``pred`` at the
    ground truth's size, void already background."""
    res = evaluate_sequence(pred, gt, gt_valid=valid, protocol="multi")
    video = [float(o.stats["J_mean"]) for o in res.objects]
    n_gt = len(video)
    n_pred = max(int(pred.max(initial=0)), n_gt)
    per_frame = np.zeros(n_gt)
    frames = [t for t in range(len(gt)) if valid[t]]
    for t in frames:
        iou = pair_iou(pred[t], gt[t], n_gt, n_pred)
        r, c = linear_sum_assignment(-iou)
        per_frame[r] += iou[r, c]
    return video, list(per_frame / max(len(frames), 1))


def print_trace(method: str, seq: str, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, n_gt: int) -> None:
    """One line per frame: for each predicted slot, its IoU with each ground-truth object ('-' = empty slot)."""
    n_pred = int(pred.max(initial=0))
    print(f"{method} {seq}: slot k: IoU with objects 1..{n_gt}")
    for t in range(len(gt)):
        if not valid[t]:
            continue
        iou = pair_iou(pred[t], gt[t], n_gt, n_pred)
        cells = [f"slot {k + 1}: " + ("-" if not (pred[t] == k + 1).any() else "/".join(f"{x:.2f}" for x in iou[:, k]))
                 for k in range(n_pred)]
        print(f"  {t:3d}  " + "   ".join(cells))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("methods", nargs="+", help="mask stages with `labels`")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--trace", help="a sequence whose per-frame IoU of every (slot, object) pair is printed")
    a = ap.parse_args()
    data = ROOT / "data" / a.dataset
    out = {"dataset": a.dataset, "methods": {}}
    for m in a.methods:
        rows, vids, frames = {}, [], []
        for store in sorted((data / m).glob("*.zarr")):
            seq = store.name[:-5]
            fr = open_artifact(data / "frames" / store.name, stage="frames")
            gt = np.asarray(fr["gt"][...])
            gt = np.where(gt == 255, 0, gt)                      # void counts as background, as in the metrics
            valid = np.asarray(fr["gt_valid"][...]) if "gt_valid" in fr else np.ones(len(gt), bool)
            pred = np.stack([resize_labels(p, gt.shape[1:])
                             for p in np.asarray(open_artifact(store, stage=m)["labels"][...])])
            v, f = sequence_gap(pred, gt, valid)
            if seq == a.trace:
                print_trace(m, seq, pred, gt, valid, len(v))
            rows[seq] = {"J_video_matching": [round(x, 4) for x in v], "J_frame_matching": [round(x, 4) for x in f]}
            vids += v
            frames += f
        out["methods"][m] = {"J_video_matching": round(float(np.mean(vids)), 4),
                             "J_frame_matching": round(float(np.mean(frames)), 4), "objects": len(vids),
                             "sequences": rows}
        print(f"{m}: J {np.mean(vids):.4f} (one match per video) vs {np.mean(frames):.4f} (per frame), "
              f"{len(vids)} objects")
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
