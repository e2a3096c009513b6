"""Per-frame weightings of the fusion beyond ``fuse.weighting``, scored against the ground truth (the
synthetic validation split chooses):

* ``alignment``: the stage's own weighting (the source's motion-semantic alignment + ``fuse.weight_floor``);
* ``alignment^g``: the alignment raised to a power g before the floor is added (sharper: a badly aligned
  source counts even less);
* ``agreement^g``: the mean IoU of a source's slot mask with the other sources' masks of the same slot
  (the score that follows J best in the quality report), to the power g, + the floor;
* ``equal``: every matched source weight 1.

The dataset's ``fuse.sources``, matching (``fuse.min_iou``) and label rule; with ``--crf`` also after the
dataset's CRF. Labels are read for scoring only.

    python bench/fusion_weightings.py synthval --agree-powers 1 2 --align-powers 2 4 \\
        --out results/synthval/fusion_weightings.json
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
from pipeline.core.store import FrameReader, open_artifact, write_json_atomic  # noqa: E402
from pipeline.crf import CRFConfig, refine_sequence  # noqa: E402
from pipeline.fusion import (FusionConfig, _alignments, _resized, fuse_frame, fuse_sequence,  # noqa: E402
                             label_map, match_channels)
from pipeline.metrics.evaluation import evaluate_sequence  # noqa: E402
from pipeline.quality.alignment import AlignmentConfig  # noqa: E402
from pipeline.stages.fuse import source_reader  # noqa: E402
from fusion_variants import score  # noqa: E402  (bench/, the script's folder)


def agreement_weights(ref: np.ndarray, sources: list[np.ndarray], matches: list[np.ndarray], power: float,
                      floor: float) -> list[np.ndarray]:
    """Weights in :func:`pipeline.fusion.fuse_frame`'s layout (``[K]`` for the reference, ``[C_s]`` per
    source): each (source, channel) joined to slot k gets the mean IoU of its mask (> 0.5) with the other
    masks joined to k, to ``power``, + ``floor``; a slot only the reference covers gets weight 1."""
    K = ref.shape[0]
    arrays = [ref] + list(sources)
    cover: dict[int, list[tuple[int, int]]] = {k: [(0, k)] for k in range(K)}
    for i, m in enumerate(matches):
        for c, k in enumerate(m):
            if k >= 0:
                cover[int(k)].append((i + 1, c))
    w = [np.zeros(K, np.float32)] + [np.zeros(len(m), np.float32) for m in matches]
    for members in cover.values():
        masks = [arrays[i][c] > 0.5 for i, c in members]
        for j, (i, c) in enumerate(members):
            others = [m for o, m in enumerate(masks) if o != j]
            if not others:
                w[i][c] = 1.0
                continue
            ious = [(np.logical_and(masks[j], o).sum() + 1e-6) / (np.logical_or(masks[j], o).sum() + 1e-6)
                    for o in others]
            w[i][c] = float(np.mean(ious)) ** power + floor
    return w


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--agree-powers", type=float, nargs="*", default=[1.0])
    ap.add_argument("--align-powers", type=float, nargs="*", default=[])
    ap.add_argument("--crf", action="store_true", help="also score each variant after the dataset's CRF")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    p = load_dataset_params(a.dataset, ROOT)
    data = ROOT / "data" / a.dataset
    ev = p["eval"]
    kw = dict(protocol=p["dataset"].get("protocol", "multi"), match_on=ev["match_on"], resize=ev["resize"],
              bound_th=ev["bound_th"])
    names = [str(n) for n in p["fuse"]["sources"]]
    cfg = FusionConfig.from_params(p["fuse"])
    align = AlignmentConfig.from_params(p["quality"])
    crf_cfg = CRFConfig.from_params({k: v for k, v in p["crf"].items() if k != "input"})
    seqs = sorted(q.name[:-5] for q in (data / "frames").glob("*.zarr"))
    variants = (["alignment"] + [f"alignment^{g:g}" for g in a.align_powers]
                + [f"agreement^{g:g}" for g in a.agree_powers] + ["equal"])
    res: dict[str, dict[str, list]] = {v: {"fuse": [], "crf": []} for v in variants}
    t0 = time.time()
    for seq in seqs:
        fr = open_artifact(data / "frames" / f"{seq}.zarr", stage="frames")
        gt, valid = fr["gt"][...], fr["gt_valid"][...]
        tokens = FrameReader(open_artifact(data / "features" / f"{seq}.zarr", stage="features")["tokens"])
        readers = [source_reader(open_artifact(data / n / f"{seq}.zarr", stage=n), n) for n in names]
        matches = [match_channels(readers[0], r, cfg.min_iou) for r in readers[1:]]
        T, size = readers[0].shape[0], tuple(readers[0].shape[2:])
        fused: dict[str, list[np.ndarray]] = {v: [] for v in variants}
        for _, pr, _, _ in fuse_sequence(readers[0], readers[1:], cfg, tokens, align, matches):
            fused["alignment"].append(pr)
        for t in range(T):
            r = np.asarray(readers[0][t], np.float32)
            ss = [_resized(s[t], size) for s in readers[1:]]
            fused["equal"].append(fuse_frame(r, ss, matches, None))
            for g in a.agree_powers:
                fused[f"agreement^{g:g}"].append(fuse_frame(r, ss, matches,
                                                            agreement_weights(r, ss, matches, g, cfg.weight_floor)))
            if a.align_powers:
                tok = np.asarray(tokens[t], np.float32)
                al = [_alignments(tok, r, align, 0.0)] + [_alignments(tok, s, align, 0.0) for s in ss]
                for g in a.align_powers:
                    fused[f"alignment^{g:g}"].append(fuse_frame(r, ss, matches, [x ** g + cfg.weight_floor for x in al]))
        line = [seq]
        for v in variants:
            probs = np.stack(fused[v]).astype(np.float32)
            labels = np.stack([label_map(x, cfg.threshold) for x in probs])
            res[v]["fuse"].append(evaluate_sequence(labels, gt, valid, sequence=seq, **kw))
            msg = f"{v} {res[v]['fuse'][-1].stats()['J_mean']:.3f}"
            if a.crf:
                refined = np.stack([x for _, x in refine_sequence(FrameReader(fr["rgb_full"]), probs, crf_cfg)])
                res[v]["crf"].append(evaluate_sequence(refined, gt, valid, sequence=seq, **kw))
                msg += f" / crf {res[v]['crf'][-1].stats()['J_mean']:.3f}"
            line.append(msg)
        print(" | ".join(line), f"({time.time() - t0:.0f} s)", flush=True)
    out = {"dataset": a.dataset, "sources": names, "weight_floor": cfg.weight_floor, "sequences": seqs,
           "wall_s": round(time.time() - t0, 1), "variants": {}}
    for v in variants:
        row = {kind: score(res[v][kind], seqs) for kind in ("fuse", "crf") if res[v][kind]}
        out["variants"][v] = row
        print(f"{v:16s}", {k: (x["J"], x["JF"]) for k, x in row.items()})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(a.out, out)


if __name__ == "__main__":
    main()
