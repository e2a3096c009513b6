"""Is motion-semantic alignment worth reading? Spearman correlation between each sequence's alignment
(no labels) and its J (labels), per method and pooled over methods, for a grid of the score's knobs.
The knobs' defaults (params.yaml ``quality``) are chosen on the synthetic validation split this way;
DAVIS is only reported.

    python bench/quality_vs_j.py synthval --methods motion_baseline proposals corrector \
        --thresholds 0.5 0.6 0.7 0.8 --dilations 0 1 2 --out results/synthval/alignment_vs_J.json

Needs the dataset's ``features`` and mask stores and its ``metrics`` results (per_sequence.csv).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402


def per_sequence_j(dataset: str, method: str) -> dict[str, float]:
    path = ROOT / "results" / dataset / "metrics" / method / "per_sequence.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path}: run the metrics stage of {dataset} first")
    return {r["sequence"]: float(r["J_mean"]) for r in csv.DictReader(open(path))}


def rho(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return None
    return round(float(spearmanr(a, b).statistic), 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+")
    ap.add_argument("--thresholds", nargs="+", type=float)
    ap.add_argument("--dilations", nargs="+", type=float)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    q = load_dataset_params(a.dataset, ROOT)["quality"]
    methods = a.methods or list(q["methods"])
    ths, dils = a.thresholds or [q["threshold"]], a.dilations or [q["dilation"]]
    data = ROOT / "data" / a.dataset
    J = {m: per_sequence_j(a.dataset, m) for m in methods}
    seqs = sorted(set.intersection(*(set(v) for v in J.values())))
    feats = {s: open_artifact(data / "features" / f"{s}.zarr") for s in seqs}
    names = {s: open_artifact(data / "frames" / f"{s}.zarr").attrs["frame_names"] for s in seqs}
    rows = []
    for th in ths:
        for dil in dils:
            cfg = AlignmentConfig(threshold=th, dilation=dil, max_width=float(q["max_width"]),
                                  max_height=float(q["max_height"]))
            al = {m: {s: score_sequence(feats[s]["tokens"], open_artifact(data / m / f"{s}.zarr")["labels"], cfg,
                                        names[s])["alignment"] for s in seqs} for m in methods}
            row = {"threshold": th, "dilation": dil,
                   "spearman_pooled": rho([al[m][s] for m in methods for s in seqs],
                                          [J[m][s] for m in methods for s in seqs])}
            for m in methods:
                row[f"spearman_{m}"] = rho([al[m][s] for s in seqs], [J[m][s] for s in seqs])
                row[f"alignment_{m}"] = round(float(np.mean(list(al[m].values()))), 4)
                row[f"J_{m}"] = round(float(np.mean([J[m][s] for s in seqs])), 4)
            row["method_rank_agrees"] = (sorted(methods, key=lambda m: row[f"alignment_{m}"]) ==
                                         sorted(methods, key=lambda m: row[f"J_{m}"]))
            rows.append(row)
            print(json.dumps(row), flush=True)
    best = max(rows, key=lambda r: -1 if r["spearman_pooled"] is None else r["spearman_pooled"])
    report = {"dataset": a.dataset, "methods": methods, "sequences": len(seqs),
              "backbone": feats[seqs[0]].attrs["backbone"]["name"], "rows": rows,
              "best": {"threshold": best["threshold"], "dilation": best["dilation"],
                       "spearman_pooled": best["spearman_pooled"]}}
    print(json.dumps(report["best"]))
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
