"""Exemplar scoring: does combining the selector with temporal consistency and MAMP agreement beat each alone?

The paper's Table-3 protocol (:mod:`pipeline.exemplars.evaluate`: per ground-truth object its proposal slot, the
``n`` best and ``n`` worst frames by IoU, the AP of retrieving the best) for five label-free confidences of a
slot's proposal mask in a frame, and their combinations:

* ``selector``: minus the selector's relative error area (the ``selector`` store's ``score``);
* ``temporal``: temporal consistency (mean IoU with the neighbouring frames' masks of the slot);
* ``propagation``: IoU of the proposal with MAMP's propagation of the slot (the ``propagate`` store's labels);
* ``motion_baseline``: IoU of the proposal with the motion baseline's track paired with the slot for the video
  (:func:`pipeline.exemplars.agreement.track_agreement`, the cue of ``exemplars.agree_with``);
* ``a+b``: the mean of the named confidences' within-video ranks among the frames with a finite selector score
  (:func:`pipeline.reselect.combined_confidence`, the rule of the ``reselect`` stage), so no scale dominates.

Beside each AP: the mean ground-truth IoU of the ``corrector.t`` frames each confidence ranks first (among the
frames the selector may pick), i.e. of the exemplars it would choose.

Labels only score (choosing data: the synthetic validation split; DAVIS reports).

    python bench/exemplar_score_combination.py synthval --out results/synthval/exemplar_score_combination.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.draw import resize_labels  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact, write_json_atomic  # noqa: E402
from pipeline.exemplars.agreement import track_agreement  # noqa: E402
from pipeline.exemplars.evaluate import gt_objects  # noqa: E402
from pipeline.exemplars.scoring import best_slot, frame_ious, match_objects, selection_ap, temporal_consistency  # noqa: E402
from pipeline.reselect import combined_confidence  # noqa: E402

CUES = ("selector", "temporal", "propagation", "motion_baseline")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--n", type=int, default=None, help="best/worst frames per object (default selection_eval.n)")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    n = a.n or int(p["selection_eval"]["n"])
    protocol = p["dataset"].get("protocol", "multi")
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    variants = [c for r in (1, 2, 3, 4) for c in itertools.combinations(CUES, r)]
    aps: dict[str, list[float]] = {"+".join(v): [] for v in variants}
    tops: dict[str, list[float]] = {"+".join(v): [] for v in variants}   # mean IoU of the t top frames (exemplars)
    t_ex = int(p["corrector"]["t"])
    t0 = time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        valid = np.asarray(fr["gt_valid"][...], bool)
        labels_all = np.asarray(open_artifact(data / "proposals" / f"{seq}.zarr", stage="proposals")["labels"][...])
        labels = labels_all[valid]
        score = np.asarray(open_artifact(data / "selector" / f"{seq}.zarr", stage="selector")["score"][...],
                           np.float64)[valid]
        prop = np.asarray(open_artifact(data / "propagate" / f"{seq}.zarr", stage="propagate")["labels"][...])[valid]
        prop = np.stack([resize_labels(x, labels.shape[1:]) for x in prop])      # MAMP may run at another size
        gt, _ = gt_objects(np.asarray(fr["gt"][...])[valid], labels.shape[1:], protocol)
        K = score.shape[1]
        base = open_artifact(data / "motion_baseline" / f"{seq}.zarr", stage="motion_baseline")["labels"]
        motion = track_agreement(labels_all, base, K)[0][valid]     # slots paired with tracks over the whole video
        matches = ([(0, *best_slot(labels, gt[:, 0], range(K)))] if protocol in ("single", "merged")
                   else match_objects(labels, gt, K))
        for _, k, iou in matches:
            m = labels == k + 1
            cue = {"selector": -score[:, k], "temporal": temporal_consistency(m),
                   "propagation": frame_ious(m, prop == k + 1), "motion_baseline": motion[:, k]}
            others = {c: x[:, None] for c, x in cue.items() if c != "selector"}
            for v in variants:
                conf = cue[v[0]] if len(v) == 1 else combined_confidence(score[:, k:k + 1], others, v)[:, 0]
                r = selection_ap(iou, conf, n)
                if r is not None:
                    aps["+".join(v)].append(r)
                    usable = np.flatnonzero(np.isfinite(score[:, k]))         # the frames the selector may pick
                    order = usable[np.argsort(-np.asarray(conf, np.float64)[usable], kind="stable")]
                    tops["+".join(v)].append(float(iou[order[:t_ex]].mean()) if len(order) else float("nan"))
        print(f"{seq}: " + ", ".join(f"{k} {np.mean(v):.3f}" for k, v in aps.items() if v),
              f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "protocol": protocol, "n": n, "sequences": len(seqs),
           "objects": len(aps["selector"]), "AP": {k: round(float(np.mean(v)), 4) for k, v in aps.items()},
           "t": t_ex, "iou_top_t": {k: round(float(np.nanmean(v)), 4) for k, v in tops.items()}}
    for k, v in out["AP"].items():
        print(f"{k:32s} AP {v:.4f}  mean IoU of the top {t_ex} frames {out['iou_top_t'][k]:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
