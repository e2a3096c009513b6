"""Score fusion settings on a dataset with labels (the synthetic validation split chooses the defaults):
for every set of sources and every weighting, the fused masks of every video (:mod:`pipeline.fusion`,
computed in memory from the sources' stores) against the ground truth, with the dataset's protocol,
beside the mean label-free alignment of the fused masks. Each source alone is a variant too.

    python bench/fusion_variants.py synthval --sources adapted adapted,propagate adapted,propagate,imas \
        --weightings equal alignment --out results/synthval/fusion_variants.json

``--min-ious 0 0.1 0.2`` adds one variant per ``fuse.min_iou`` value (the dataset's value when not given).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, open_artifact, write_json_atomic  # noqa: E402
from pipeline.fusion import FusionConfig, fuse_sequence  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.metrics.results import summarize  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.quality.report import score_sequence  # noqa: E402
from pipeline.stages.fuse import source_reader  # noqa: E402


def score(results: list, seqs: list[str]) -> dict:
    """J, J&F (object-level means, as the metrics stage reports) and per-sequence J of one variant."""
    summ = summarize(results)
    return {"J": round(float(summ["J_mean"]), 4), "JF": round(float(summ["JF_mean"]), 4),
            "per_sequence_J": {q: round(r.stats()["J_mean"], 4) for q, r in zip(seqs, results)}}


def store_finder(dataset: str, params: dict):
    """``(open(stage, seq) -> artifact, folders)``: a dataset's store of a stage, read from its own folder or, for a
    second round (``dataset.reuse``), from the reused dataset's (the last folder holds every video's frames)."""
    dirs = [ROOT / "data" / dataset]
    if params["dataset"].get("reuse"):
        dirs.append(ROOT / "data" / params["dataset"]["reuse"])

    def store(name: str, seq: str):
        for d in dirs:
            if (d / name / f"{seq}.zarr").exists():
                return open_artifact(d / name / f"{seq}.zarr", stage=name)
        raise FileNotFoundError(f"{name}/{seq}.zarr in none of {[str(d) for d in dirs]}")

    return store, dirs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--sources", nargs="+", required=True, help="comma-separated mask stages, first = reference")
    ap.add_argument("--weightings", nargs="+", default=["equal", "alignment"])
    ap.add_argument("--min-ious", nargs="+", type=float, default=None, help="fuse.min_iou values (default: params)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    align = AlignmentConfig.from_params(p["quality"])
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    variants = []
    for s in a.sources:
        names = s.split(",")
        for w in (a.weightings if len(names) > 1 else ["equal"]):
            for m in (sorted(set(a.min_ious or [p["fuse"]["min_iou"]])) if len(names) > 1 else [0.0]):
                variants.append((names, w, float(m)))

    def key(names, w, m):
        return f"{'+'.join(names)}/{w}" + (f"/min_iou={m:g}" if a.min_ious else "")

    rows = {key(*v): {"sources": v[0], "weighting": v[1], "min_iou": v[2], "results": [], "alignment": []}
            for v in variants}
    t0 = time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        tokens = FrameReader(open_artifact(data / "features" / f"{seq}.zarr", stage="features")["tokens"])
        for names, w, m in variants:
            readers = [source_reader(open_artifact(data / n / f"{seq}.zarr", stage=n), n) for n in names]
            cfg = FusionConfig.from_params({**p["fuse"], "weighting": w, "min_iou": m})
            labels = np.stack([lab for _, _, lab, _ in fuse_sequence(readers[0], readers[1:], cfg, tokens, align)])
            r = evaluate_sequence(labels, gt, valid, protocol=protocol, match_on=ev["match_on"],
                                  resize=ev["resize"], bound_th=ev["bound_th"], sequence=seq)
            row = rows[key(names, w, m)]
            row["results"].append(r)
            row["alignment"].append(score_sequence(tokens, labels, align, [""] * len(labels))["alignment"])
        print(f"{seq}: " + ", ".join(f"{k} {v['results'][-1].stats()['J_mean']:.3f}" for k, v in rows.items()),
              flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "sequences": len(seqs), "wall_s": round(time.time() - t0, 1),
           "backbone": "features stage tokens (alignment)", "variants": {}}
    for k, v in rows.items():
        out["variants"][k] = {"sources": v["sources"], "weighting": v["weighting"], "min_iou": v["min_iou"],
                              **score(v["results"], seqs), "alignment": round(float(np.mean(v["alignment"])), 4)}
        print(f"{k:40s} J {out['variants'][k]['J']:.4f}  J&F {out['variants'][k]['JF']:.4f}  "
              f"alignment {out['variants'][k]['alignment']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)
    print(json.dumps({k: v["J"] for k, v in out["variants"].items()}))


if __name__ == "__main__":
    main()
