"""The training-free motion baseline over a grid of one of its keys, scored on a dataset's flow stores
(its own protocol and params; nothing is written but ``--out``).

    python bench/baseline_sweep.py synthval split_merged 0 0.2 0.3 0.4 0.5 0.6 0.7 \\
        --out results/synthval/split_merged.json
    python bench/baseline_sweep.py davis2016 split_merged 0 0.5 --out results/davis2016/split_merged.json

Each value is a YAML scalar for ``motion_baseline.<key>``; J (J&F) is the metrics stage's, per object
and overall, so the row of the current value equals the committed motion_baseline metrics when the flow
stores are the committed ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.baseline import BaselineConfig, motion_segment  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence, resize_labels  # noqa: E402
from pipeline.metrics.results import summarize  # noqa: E402


def score(data: Path, cfg: BaselineConfig, protocol: str) -> dict:
    per, results = {}, []
    for store in sorted((data / "flow").glob("*.zarr")):
        flow = open_artifact(store, stage="flow")["flow"]
        fr = open_artifact(data / "frames" / store.name, stage="frames")
        gt = np.asarray(fr["gt"][...])
        valid = np.asarray(fr["gt_valid"][...]) if "gt_valid" in fr else np.ones(len(gt), bool)
        labels = np.stack([resize_labels(lab, gt.shape[1:])
                           for lab in motion_segment((np.asarray(flow[t]) for t in range(flow.shape[0])), cfg)])
        res = evaluate_sequence(labels, gt, gt_valid=valid, protocol=protocol)
        per[store.name[:-5]] = [round(float(o.stats["J_mean"]), 4) for o in res.objects]
        results.append(res)
    summary = summarize(results)  # the metrics stage's summary
    return {"J": round(summary["J_mean"], 4), "JF": round(summary["JF_mean"], 4), "objects": summary["n_objects"],
            "per_object_J": per}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("key", help="a key of params.yaml's motion_baseline section")
    ap.add_argument("values", nargs="+", help="YAML scalars")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    params = load_dataset_params(a.dataset)
    base = dict(params["motion_baseline"])
    if a.key not in base:
        sys.exit(f"error: motion_baseline has no key {a.key!r} (params.yaml)")
    protocol = params["dataset"].get("protocol", "multi")
    data = ROOT / "data" / a.dataset
    if not any((data / "flow").glob("*.zarr")):
        sys.exit(f"error: {data / 'flow'} has no flow stores (run the dataset's flow stage first)")
    rows = []
    for v in a.values:
        cfg = BaselineConfig(**{**base, a.key: yaml.safe_load(v)})
        t0 = time.perf_counter()
        row = {"value": yaml.safe_load(v), "current": yaml.safe_load(v) == base[a.key], **score(data, cfg, protocol),
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(f"{a.dataset} motion_baseline.{a.key}={v}: J {row['J']:.4f} J&F {row['JF']:.4f} ({row['objects']} "
              f"objects, {row['seconds']} s)", flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "key": f"motion_baseline.{a.key}",
           "flow": {k: params["flow"][k] for k in ("method", "infer_size", "dis_finest_scale")}, "rows": rows}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
