"""Probe: the foreground stage's choice made before the CRF instead of after it.

Per video, the slots the ``foreground`` stage keeps (its store's ``kept``) are merged in the CRF's input (the
``crf.input`` store's probabilities: the maximum over the kept slots, one object), and the dataset's CRF refines
that single object. Scored like the stage's output (J, J&F with the dataset's protocol) beside the label-free
agreement with the stores of ``quality.agree_with`` (what the tuner would read). Labels only score.

    python bench/foreground_before_crf.py davis2016_st --out results/davis2016_st/foreground_before_crf.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.draw import resize_labels  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import FrameReader, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.quality.agreement import frame_agreement  # noqa: E402
from fusion_variants import score, store_finder  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    store, dirs = store_finder(a.dataset, p)
    ev = p["eval"]
    protocol = p["dataset"].get("protocol", "multi")
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    src = str(p["crf"]["input"])
    seqs = sorted(q.name[:-5] for q in (dirs[-1] / "frames").glob("*.zarr"))
    res: dict[str, list] = {"after": [], "before": []}
    agree: dict[str, list] = {"after": [], "before": []}
    t0 = time.time()
    for seq in seqs:
        fr = store("frames", seq)
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        fg = store("foreground", seq)
        kept = [int(k) - 1 for k in fg.attrs["kept"]]
        probs = np.asarray(store(src, seq)["probs"][...], np.float32)
        merged = probs[:, kept].max(axis=1, keepdims=True) if kept else np.zeros_like(probs[:, :1])
        before = np.stack([x for _, x in refine_sequence(FrameReader(fr["rgb_full"]), merged, crf_cfg,
                                                         progress=False)])
        after = np.asarray(fg["labels"][...])
        others = [np.asarray(store(n, seq)["labels"][...]) for n in p["quality"]["agree_with"]]
        kw = dict(protocol=protocol, match_on=ev["match_on"], resize=ev["resize"], bound_th=ev["bound_th"],
                  sequence=seq)
        for name, lab in (("after", after), ("before", before)):
            res[name].append(evaluate_sequence(lab, gt, valid, **kw))
            agree[name].append(float(np.mean([frame_agreement(lab[t], [resize_labels(o[t], lab.shape[1:])
                                                                        for o in others]) for t in range(len(lab))])))
        print(f"{seq}: after {res['after'][-1].stats()['J_mean']:.3f} before {res['before'][-1].stats()['J_mean']:.3f}"
              f" ({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "crf_input": src, "sequences": seqs, "wall_s": round(time.time() - t0, 1),
           "variants": {k: {**score(res[k], seqs), "agreement": round(float(np.mean(agree[k])), 4)} for k in res}}
    for k, v in out["variants"].items():
        print(f"{k:8s} J {v['J']:.4f}  J&F {v['JF']:.4f}  agreement {v['agreement']:.4f}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
