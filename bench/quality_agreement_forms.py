"""Which form of cross-source agreement suits single-object data? Three forms of a frame's agreement with
the other mask sources, against the true per-frame J:

- ``objects``: the quality stage's score (matched-object IoU, :func:`pipeline.quality.agreement.label_agreement`);
- ``foreground``: IoU of the two masks' foregrounds (all objects merged);
- ``best_pair``: IoU of the best-overlapping pair of objects (one object of each mask).

True J per frame: on a single-object dataset (DAVIS) the evaluator's per-frame J from the ``eval`` stores; on
a multi-object one (the synthetic split) the single-object rule is simulated: the ground truth's foreground
against the mask's one object that matches it best over the video. Prints, per method, Spearman over videos
and over frames, and the F1 of "agreement below a threshold" at finding the frames of J < 0.5.

    python bench/quality_agreement_forms.py davis2016 --methods crf fuse
    python bench/quality_agreement_forms.py synthval --methods crf fuse --out results/synthval/agreement_forms.json

Every mask is read at the working size (128 x 224, nearest). Sources: the dataset's ``quality.agree_with``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.quality.agreement import VOID, label_agreement  # noqa: E402
from quality_scores_vs_j import frame_j  # noqa: E402  (bench/, the script's folder)

FORMS = ("objects", "foreground", "best_pair")
SIZE = (224, 128)                       # cv2 (w, h)


def _rs(a) -> np.ndarray:
    return cv2.resize(np.asarray(a), SIZE, interpolation=cv2.INTER_NEAREST)


def _iou(x: np.ndarray, y: np.ndarray) -> float:
    u = (x | y).sum()
    return 1.0 if u == 0 else float((x & y).sum() / u)


def _fg(a: np.ndarray) -> np.ndarray:
    return (a > 0) & (a != VOID)


def best_pair(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.where(a == VOID, 0, a), np.where(b == VOID, 0, b)
    ia, ib = np.setdiff1d(np.unique(a), [0]), np.setdiff1d(np.unique(b), [0])
    if len(ia) == 0 or len(ib) == 0:
        return 1.0 if len(ia) == len(ib) else 0.0
    return max(_iou(a == i, b == j) for i in ia for j in ib)


def agreements(a: np.ndarray, others: list[np.ndarray]) -> list[float]:
    return [float(np.mean([label_agreement(a, o) for o in others])),
            float(np.mean([_iou(_fg(a), _fg(o)) for o in others])),
            float(np.mean([best_pair(a, o) for o in others]))]


def rows_of(dataset: str, method: str, sources: list[str], seqs: list[str], single: bool) -> list[tuple]:
    data = ROOT / "data" / dataset
    rows = []
    for s in seqs:
        lab = open_artifact(data / method / f"{s}.zarr", stage=method)["labels"]
        oth = [open_artifact(data / o / f"{s}.zarr", stage=o)["labels"] for o in sources]
        fr = open_artifact(data / "frames" / f"{s}.zarr", stage="frames")
        names = list(fr.attrs["frame_names"])
        if single:
            fj = frame_j(dataset, method, s)
            for t in range(lab.shape[0]):
                if names[t] in fj:
                    rows.append((s, fj[names[t]], *agreements(_rs(lab[t]), [_rs(o[t]) for o in oth])))
            continue
        gt, valid = fr["gt"], np.asarray(fr["gt_valid"][...])
        per = []
        for t in range(lab.shape[0]):
            if valid[t]:
                a, g = _rs(lab[t]), _fg(_rs(gt[t]))
                per.append(({int(k): _iou(a == k, g) for k in np.unique(a) if k not in (0, VOID)},
                            agreements(a, [_rs(o[t]) for o in oth])))
        ks = sorted({k for p, _ in per for k in p})
        kbest = max(ks, key=lambda k: np.mean([p.get(k, 0.0) for p, _ in per])) if ks else 1
        rows += [(s, p.get(kbest, 0.0), *ag) for p, ag in per]
    return rows


def summarize(rows: list[tuple], bad: float, thresholds: list[float]) -> dict:
    r = np.array([x[1:] for x in rows], float)
    by_video: dict[str, list] = {}
    for x, v in zip(rows, r):
        by_video.setdefault(x[0], []).append(v)
    V = np.array([np.mean(v, 0) for v in by_video.values()])
    out = {"frames": len(rows), "videos": len(V)}
    for i, form in enumerate(FORMS, start=1):
        f1 = {}
        for th in thresholds:
            flag, isbad = r[:, i] < th, r[:, 0] < bad
            p = (flag & isbad).sum() / max(1, flag.sum())
            q = (flag & isbad).sum() / max(1, isbad.sum())
            f1[str(th)] = round(float(2 * p * q / max(1e-9, p + q)), 3)
        out[form] = {"spearman_videos": round(float(spearmanr(V[:, i], V[:, 0]).statistic), 3),
                     "spearman_frames": round(float(spearmanr(r[:, i], r[:, 0]).statistic), 3),
                     "mean": round(float(r[:, i].mean()), 3), "flag_F1": f1}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+", default=["crf"])
    ap.add_argument("--bad", type=float, default=0.5, help="a frame is bad when its J is below this")
    ap.add_argument("--thresholds", nargs="+", type=float, default=[0.3, 0.4, 0.5, 0.6, 0.7])
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    single = p["dataset"].get("protocol") == "single"
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    report = {"dataset": a.dataset, "true_J": "evaluator (single object)" if single else
              "simulated single-object rule: GT foreground vs the best-matching object of the video",
              "bad_frame": f"J < {a.bad}", "methods": {}}
    for m in a.methods:
        srcs = [str(s) for s in p["quality"]["agree_with"] if str(s) != m]
        report["methods"][m] = summarize(rows_of(a.dataset, m, srcs, seqs, single), a.bad, a.thresholds)
        print(m, json.dumps(report["methods"][m]), flush=True)
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
