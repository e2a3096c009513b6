"""J and J&F of mask stages of one or more datasets, side by side, without running the metrics stage: for
the stages a second round reruns but does not evaluate (its ``eval.methods`` leaves them out), e.g. the
exemplar round's corrector, adapted and propagate against the first round's.

    python bench/round_methods.py synthval synthval_st --methods corrector adapted propagate fuse crf \\
        --out results/synthval_st/round_methods.json

The project's evaluator with the dataset's protocol and ``eval`` keys (as the metrics stage); labels only score.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline.metrics.evaluation as M  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.metrics.results import summarize  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("datasets", nargs="+")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    out: dict[str, dict] = {}
    for ds in a.datasets:
        p = load_dataset_params(ds, ROOT)
        ev, protocol, data = p["eval"], p["dataset"]["protocol"], ROOT / "data" / ds
        for m in a.methods:
            res = []
            for f in sorted((data / "frames").glob("*.zarr")):
                fr = open_artifact(f, stage="frames")
                lab = open_artifact(data / m / f.name, stage=m).require("labels", dtype="uint8", ndim=3)
                res.append(M.evaluate_sequence(lab, fr["gt"], gt_valid=np.asarray(fr["gt_valid"][...]),
                                               protocol=protocol, match_on=ev["match_on"], resize=ev["resize"],
                                               bound_th=float(ev["bound_th"]), sequence=f.name[:-5]))
            s = summarize(res)
            out.setdefault(ds, {})[m] = {"J": round(float(s["J_mean"]), 4), "JF": round(float(s["JF_mean"]), 4)}
            print(f"{ds:14s} {m:12s} J {s['J_mean']:.4f}  J&F {s['JF_mean']:.4f}", flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
