"""Probe a third label-free quality score, *motion fit*, against J: how much of a frame's optical flow the
masks explain beyond one global motion. Per frame, an affine flow model (6 parameters) is fitted by least
squares to every segment of the label map (background included) and once to the whole frame; the score
is ``1 - E_segments / E_global`` with E the mean end-point residual. A mask that covers the moving object
exactly explains the most; one that spills into the background, or misses part of the object, leaves
flow of two motions in one segment. IMAS's stage 1 trains on the same principle (flow reconstruction from
segments); here it scores any mask stage, without labels.

    python bench/motion_fit_probe.py synthval --out results/synthval/motion_fit_vs_J.json

Reports, per method of the dataset's ``quality.methods``: Spearman over videos between a video's mean
score and its J (the metrics stage's per-sequence J), beside the same for alignment and agreement
(quality stage), and the ranking of the methods by mean score against their ranking by J.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402

MIN_MOTION = 1e-3   # frames whose global residual is below this (no motion to explain) are skipped


def motion_fit(flow: np.ndarray, labels: np.ndarray) -> float:
    """``1 - E_seg / E_global`` for one frame: ``flow`` ``[2, h, w]``, ``labels`` ``[h, w]`` at the same size."""
    h, w = labels.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    X = np.stack([np.ones(h * w), xx.ravel() / w, yy.ravel() / h], 1)
    F = flow.reshape(2, -1).T.astype(np.float64)

    def resid(idx):
        beta, *_ = np.linalg.lstsq(X[idx], F[idx], rcond=None)
        return np.linalg.norm(F[idx] - X[idx] @ beta, axis=1).sum()

    e0 = resid(np.arange(h * w)) / (h * w)
    if e0 < MIN_MOTION:
        return float("nan")
    lab = labels.ravel()
    es = sum(resid(np.flatnonzero(lab == v)) for v in np.unique(lab) if (lab == v).sum() >= 3) / (h * w)
    return float(1.0 - es / e0)


def per_sequence_csv(path: Path, col: str) -> dict[str, float]:
    with open(path) as f:
        return {r["sequence"]: float(r[col]) for r in csv.DictReader(f)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+", default=None, help="default: quality.methods of the dataset")
    ap.add_argument("--stride", type=int, default=1, help="score every n-th frame")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data, res = ROOT / "data" / a.dataset, ROOT / "results" / a.dataset
    methods = a.methods or list(p["quality"]["methods"])
    seqs = sorted(q.name[:-5] for q in (data / "flow").glob("*.zarr"))
    t0 = time.time()
    scores: dict[str, dict[str, float]] = {m: {} for m in methods}
    for seq in seqs:
        flow = open_artifact(data / "flow" / f"{seq}.zarr", stage="flow")["flow"]
        h, w = flow.shape[2:]
        for m in methods:
            labs = open_artifact(data / m / f"{seq}.zarr", stage=m)["labels"]
            vals = []
            for t in range(0, labs.shape[0] - 1, a.stride):
                lab = cv2.resize(np.asarray(labs[t]), (w, h), interpolation=cv2.INTER_NEAREST)
                vals.append(motion_fit(np.asarray(flow[t, :2]), lab))
            scores[m][seq] = float(np.nanmean(vals)) if np.isfinite(vals).any() else 0.0
        print(seq, {m: round(scores[m][seq], 3) for m in methods}, flush=True)
    out = {"dataset": a.dataset, "score": "motion fit (affine per segment, end-point residual)", "flow": "flow stage",
           "videos": len(seqs), "stride": a.stride, "wall_s": round(time.time() - t0, 1), "methods": {}}
    means = {}
    for m in methods:
        J = per_sequence_csv(res / "metrics" / m / "per_sequence.csv", "J_mean")
        q = res / "quality" / m / "per_sequence.csv"
        row = {"J": round(float(np.mean([J[s] for s in seqs])), 4),
               "motion_fit": round(float(np.mean([scores[m][s] for s in seqs])), 4),
               "spearman_videos_motion_fit": round(float(spearmanr([scores[m][s] for s in seqs],
                                                                   [J[s] for s in seqs])[0]), 3)}
        if q.exists():
            for col in ("alignment", "agreement"):
                try:
                    v = per_sequence_csv(q, col)
                except KeyError:
                    continue
                row[col] = round(float(np.mean([v[s] for s in seqs])), 4)
                row[f"spearman_videos_{col}"] = round(float(spearmanr([v[s] for s in seqs], [J[s] for s in seqs])[0]), 3)
        out["methods"][m] = row
        means[m] = row
    ms = list(means)
    for col in ("motion_fit", "alignment", "agreement"):
        if all(col in means[m] for m in ms):
            out[f"spearman_methods_{col}"] = round(float(spearmanr([means[m][col] for m in ms],
                                                                    [means[m]["J"] for m in ms])[0]), 3)
    for m, r in means.items():
        print(f"{m:16s} " + "  ".join(f"{k} {v}" for k, v in r.items()))
    print({k: v for k, v in out.items() if k.startswith("spearman_methods")})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
