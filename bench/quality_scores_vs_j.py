"""Which label-free score should a user read? The quality stage's two scores (motion-semantic alignment
and cross-source agreement) against the true J, from the stage's own tables:

- per method, Spearman over videos between a video's mean score and its J (is the ranking of videos
  worth reading?);
- per method and pooled, Spearman over frames between a frame's score and its J (the mean over the
  ground-truth objects of the frame's J);
- for flag thresholds, how well "score below the threshold" finds the bad frames (J < --bad):
  precision, recall and F1, pooled over the methods.

    python bench/quality_scores_vs_j.py synthval --out results/synthval/quality_scores_vs_J.json

Needs the dataset's ``quality`` results (results/<ds>/quality/<method>/per_*.csv), its ``metrics``
(per_sequence.csv) and its ``eval`` stores (per-frame J, data/<ds>/eval/<method>/<seq>.json). The
choice of ``quality.flag_on`` / ``flag_below`` is made on the synthetic validation split this way;
DAVIS is only reported.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
SCORES = ("alignment", "agreement")


def rho(a, b) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return round(float(spearmanr(a, b).statistic), 3)


def frame_j(dataset: str, method: str, seq: str) -> dict[str, float]:
    """Frame name -> mean J over the ground-truth objects evaluated on that frame."""
    doc = json.loads((ROOT / "data" / dataset / "eval" / method / f"{seq}.json").read_text())
    per: dict[str, list[float]] = {}
    for obj in doc["objects"]:
        for f, j in zip(obj["frames"], obj["J"]):
            if j is not None and not (isinstance(j, float) and np.isnan(j)):
                per.setdefault(str(f), []).append(float(j))
    return {f: float(np.mean(v)) for f, v in per.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+", help="default: every method with a quality report and metrics")
    ap.add_argument("--bad", type=float, default=0.5, help="a frame is bad when its J is below this")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    qdir, mdir = ROOT / "results" / a.dataset / "quality", ROOT / "results" / a.dataset / "metrics"
    methods = a.methods or sorted(p.name for p in qdir.iterdir() if (mdir / p.name / "per_sequence.csv").exists())
    rows, frames = {}, []
    for m in methods:
        seqs = list(csv.DictReader(open(qdir / m / "per_sequence.csv")))
        J = {r["sequence"]: float(r["J_mean"]) for r in csv.DictReader(open(mdir / m / "per_sequence.csv"))}
        seqs = [r for r in seqs if r["sequence"] in J]
        row = {f"spearman_videos_{k}": rho([float(r[k]) for r in seqs], [J[r["sequence"]] for r in seqs])
               for k in SCORES if seqs and k in seqs[0]}
        fj = {s: frame_j(a.dataset, m, s) for s in J}
        fr = [r | {"method": m, "J": fj[r["sequence"]][r["frame"]]} for r in csv.DictReader(open(qdir / m / "per_frame.csv"))
              if r["sequence"] in fj and r["frame"] in fj[r["sequence"]]]
        row |= {f"spearman_frames_{k}": rho([float(r[k]) for r in fr], [r["J"] for r in fr])
                for k in SCORES if fr and k in fr[0]}
        row |= {"videos": len(seqs), "frames": len(fr), "J": round(float(np.mean(list(J.values()))), 4)}
        rows[m] = row
        frames += fr
        print(m, json.dumps(row), flush=True)
    pooled = {f"spearman_frames_{k}": rho([float(r[k]) for r in frames], [r["J"] for r in frames])
              for k in SCORES if frames and k in frames[0]}
    bad = np.array([r["J"] < a.bad for r in frames])
    flags = []
    for k in SCORES:
        if not frames or k not in frames[0]:
            continue
        v = np.array([float(r[k]) for r in frames])
        for th in a.thresholds:
            f = v < th
            p = float((f & bad).sum() / max(1, f.sum()))
            r = float((f & bad).sum() / max(1, bad.sum()))
            flags.append({"score": k, "flag_below": th, "flagged": int(f.sum()), "precision": round(p, 3),
                          "recall": round(r, 3), "F1": round(2 * p * r / max(1e-9, p + r), 3)})
    best = {k: max((f for f in flags if f["score"] == k), key=lambda f: f["F1"], default=None) for k in SCORES}
    report = {"dataset": a.dataset, "methods": rows, "pooled": pooled, "bad_frame": f"J < {a.bad}",
              "bad_frames": int(bad.sum()), "frames": len(frames), "flags": flags, "best_flag": best}
    print(json.dumps({"pooled": pooled, "best_flag": best}, indent=1))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
