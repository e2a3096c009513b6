"""MAMP's semi-supervised propagation (stage ``propagate_gt``: the first frame's ground truth carried
through the video) under variants of the ``mamp`` params, on every video of a dataset, without
touching its stores. Prints J per variant (mean over objects and over sequences, with frame 0, the given
one, left out, so a little below the metrics stage's figure, which scores it too) under the dataset's
protocol, and the seconds of propagation (model loading and evaluation apart). The synthetic
validation split chooses; the demo and DAVIS report.

    python bench/propagate_gt_variants.py synthval \
        '{"reg": {"height": 240, "radius": 8}, "noreg": {"height": 240, "radius": 8, "registration": false}}' \
        --out results/synthval/propagate_gt_variants.json

VARIANTS: a JSON object, name -> overrides of the dataset's ``mamp`` section.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.features import build_backbone  # noqa: E402
from pipeline.mamp.infer import build, write_propagate_gt  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("variants", type=json.loads)
    ap.add_argument("--project", type=Path, default=ROOT, help="project holding data/<dataset> (e.g. a kept demo)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    params = load_dataset_params(a.dataset, a.project)
    base, protocol = dict(params["mamp"]), str(params["dataset"]["protocol"])
    data = a.project / "data" / a.dataset
    seqs = sorted(p.name[:-5] for p in (data / "frames").glob("*.zarr"))
    rows = {}
    with tempfile.TemporaryDirectory(prefix="propagate_gt-") as tmp:
        for name, over in a.variants.items():
            p = {**base, **over}
            built = build(p, a.project, build_backbone=build_backbone)
            objects, per_seq, seconds = [], {}, 0.0
            for s in seqs:
                out = Path(tmp) / f"{s}.zarr"
                t0 = time.time()
                write_propagate_gt(data / "frames" / f"{s}.zarr", data / "flow" / f"{s}.zarr", out, p,
                                   root=a.project, sequence=s, built=built)
                seconds += time.time() - t0
                fr = open_artifact(data / "frames" / f"{s}.zarr")
                valid = np.asarray(fr["gt_valid"][:], bool).copy()
                valid[0] = False   # the given frame
                r = evaluate_sequence(open_artifact(out)["labels"][:], fr["gt"][:], valid, protocol=protocol,
                                      sequence=s)
                js = [float(np.mean(o.J)) for o in r.objects]
                objects += js
                per_seq[s] = round(float(np.mean(js)), 4)
                shutil.rmtree(out)
            rows[name] = {"overrides": over, "J_objects": round(float(np.mean(objects)), 4),
                          "J_sequences": round(float(np.mean(list(per_seq.values()))), 4),
                          "seconds": round(seconds, 1), "per_sequence": per_seq}
            print(name, json.dumps({k: v for k, v in rows[name].items() if k != "per_sequence"}), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"dataset": a.dataset, "protocol": protocol, "mamp": base, "sequences": len(seqs),
                                     "variants": rows}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main()
