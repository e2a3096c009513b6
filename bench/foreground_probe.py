"""Score the foreground stage's rule (pipeline/foreground.py) for several ``foreground.min_cover`` values.

For every video of a dataset: the stores of ``--input`` (multi-object masks, default ``crf``) and
``--reference`` (figure-ground masks, default ``imas``), read from the dataset's folder or, for a second
round, the folder of the dataset it reuses. Variants, each scored with one object per video against the
union of the ground-truth objects (the ``merged`` protocol, which equals the single-object protocol when a
video has one object): every slot merged (``all``), and the union of the slots the reference covers at least
``c`` of, for each ``--covers`` value. With ``--protocol`` another protocol scores the input as it is too
(``single``: the best-matching slot, the evaluator's DAVIS-2016 rule). Labels score only. The synthetic split
cannot choose ``min_cover`` (its ground truth is every object, and every slot is one): the label-free tuner
does (docs/results.md, session 25).

    python bench/foreground_probe.py synthval --covers 0.3 0.5 0.7 --out results/synthval/foreground_probe.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, write_json_atomic  # noqa: E402
from pipeline.foreground import ForegroundConfig, foreground_sequence, kept_slots, slot_cover  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from fusion_variants import score, store_finder  # noqa: E402  (bench/, the script's folder)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--input", default="crf")
    ap.add_argument("--reference", default="imas")
    ap.add_argument("--covers", nargs="+", type=float, default=[0.3, 0.5, 0.7])
    ap.add_argument("--protocol", default=None, help="also score the input as it is with this protocol")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    store, dirs = store_finder(a.dataset, p)

    ev = p["eval"]
    seqs = sorted(q.name[:-5] for q in (dirs[-1] / "frames").glob("*.zarr"))
    names = ["all"] + [f"cover>={c:g}" for c in a.covers] + ([f"as is ({a.protocol})"] if a.protocol else [])
    res: dict[str, list] = {n: [] for n in names}
    kept: dict[str, dict] = {n: {} for n in names}
    t0 = time.time()
    for seq in seqs:
        fr = store("frames", seq)
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        lab = FrameReader(store(a.input, seq).require("labels", dtype="uint8", ndim=3))
        ref = FrameReader(store(a.reference, seq).require("labels", dtype="uint8", ndim=3))
        cover = slot_cover(lab, ref)
        kw = dict(match_on=ev["match_on"], resize=ev["resize"], bound_th=ev["bound_th"], sequence=seq)
        for n in names:
            if n.startswith("as is"):
                pred = np.asarray(lab[:])
                res[n].append(evaluate_sequence(pred, gt, valid, protocol=a.protocol, **kw))
                continue
            keep = sorted(cover) if n == "all" else kept_slots(cover, ForegroundConfig(float(n.split(">=")[1])))
            pred = np.stack([x for _, x in foreground_sequence(lab, keep)])
            res[n].append(evaluate_sequence(pred, gt, valid, protocol="merged", **kw))
            kept[n][seq] = keep
        print(f"{seq}: " + ", ".join(f"{n} {res[n][-1].stats()['J_mean']:.3f}" for n in names),
              {k: round(c, 2) for k, (_, c) in cover.items()}, f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "input": a.input, "reference": a.reference, "protocol": "merged",
           "sequences": seqs, "wall_s": round(time.time() - t0, 1), "variants": {}}
    for n in names:
        out["variants"][n] = {**score(res[n], seqs), "kept": kept[n]}
        print(f"{n:24s} J {out['variants'][n]['J']:.4f}  J&F {out['variants'][n]['JF']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
