"""Which form of motion-semantic alignment follows J over videos? A probe of the semantic response's
rule (a fixed cosine threshold, as the paper and ``quality`` today, or the nearest of the mask's and
the background's mean tokens) and of the paper's size rule (a response wider than ``max_width`` or
taller than ``max_height`` of the frame scores 0: ``paper`` always, ``none`` never, ``beyond`` only when
the mask itself stays within that limit in the same direction, so a large object's own mask is not
zeroed). Frames whose masks hold no object score 0, as in the quality report. Per variant and method: Spearman over sequences between a
sequence's mean alignment and its J. The synthetic validation split chooses; DAVIS is reported.

    python bench/alignment_variants.py synthval_st --methods crf fuse imas --out results/synthval_st/alignment_variants.json
    python bench/alignment_variants.py davis2016_st --methods foreground crf fuse imas \
        --out results/davis2016_st/alignment_variants.json

Needs the dataset's ``features`` and mask stores and its ``metrics`` results (per_sequence.csv).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality_vs_j import per_sequence_j, rho  # noqa: E402
from pipeline.core.stage import load_dataset_params  # noqa: E402
from pipeline.core.store import open_artifact  # noqa: E402
from pipeline.quality.alignment import _extent, _unit  # noqa: E402  (the quality stage's own helpers)

THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
RULES = ("paper", "none", "beyond")
#: every variant's name: response rule / size rule
VARIANTS = tuple(f"{r}/{rule}" for r in (*(f"thr{th}" for th in THRESHOLDS), "proto") for rule in RULES)


class _Resized:
    """The frames ``index`` of ``frames``, sliced like an array (``[a:b]``) and resized to ``size`` (H, W)
    one batch at a time (None: as stored)."""

    def __init__(self, frames, size, index: list[int]):
        self.frames, self.size, self.index = frames, size, index
        self.shape = (len(index), *(size or frames.shape[1:3]), 3)

    def __getitem__(self, sl):
        x = np.stack([np.asarray(self.frames[i]) for i in self.index[sl]])
        if not self.size:
            return x
        return np.stack([cv2.resize(f, (self.size[1], self.size[0]), interpolation=cv2.INTER_AREA) for f in x])


def object_scores(t: np.ndarray, m: np.ndarray, max_w: float, max_h: float) -> dict[str, float]:
    """Every variant's alignment of one mask ``m`` [H, W] on unit tokens ``t`` [C, h, w]."""
    H, W = m.shape
    _, h, w = t.shape
    grid = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    if grid.sum() <= 1e-6:
        return {}
    q = (t * grid[None]).sum(axis=(1, 2))
    q /= max(float(np.linalg.norm(q)), 1e-6)
    cos = np.einsum("chw,c->hw", t, q)
    responses = {f"thr{th}": cos >= th for th in THRESHOLDS}
    bg = 1.0 - grid
    if bg.sum() > 1e-6:
        b = (t * bg[None]).sum(axis=(1, 2))
        b /= max(float(np.linalg.norm(b)), 1e-6)
        responses["proto"] = cos > np.einsum("chw,c->hw", t, b)
    else:
        responses["proto"] = np.ones((h, w), bool)
    mw, mh = _extent(m.any(axis=0)), _extent(m.any(axis=1))
    out = {}
    for name, r in responses.items():
        resp = cv2.resize(r.astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
        union = np.logical_or(resp, m).sum()
        iou = float(np.logical_and(resp, m).sum() / union) if union else 0.0
        rw, rh = _extent(resp.any(axis=0)), _extent(resp.any(axis=1))
        too_big = rw > max_w or rh > max_h
        beyond = (rw > max_w and mw <= max_w) or (rh > max_h and mh <= max_h)
        out[f"{name}/paper"] = 0.0 if too_big else iou
        out[f"{name}/none"] = iou
        out[f"{name}/beyond"] = 0.0 if beyond else iou
    return out


def sequence_scores(tokens, labels, max_w: float, max_h: float, frames: list[int]) -> dict[str, float]:
    """Mean over ``frames`` (indices into ``labels``; ``tokens`` holds those frames in that order) of
    each frame's mean over its objects, per variant; a frame without objects scores 0."""
    if len(tokens) != len(frames):
        raise ValueError(f"{len(tokens)} token frames for {len(frames)} mask frames")
    per_frame: dict[str, list[float]] = {k: [] for k in VARIANTS}
    for j, i in enumerate(frames):
        lab = np.asarray(labels[i])
        tok = _unit(tokens[j])
        ids = [int(v) for v in np.unique(lab) if v not in (0, 255)]
        objs = [o for o in (object_scores(tok, lab == k, max_w, max_h) for k in ids) if o]
        for k in VARIANTS:
            per_frame[k].append(float(np.mean([o[k] for o in objs])) if objs else 0.0)
    return {k: float(np.mean(v)) for k, v in per_frame.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("--methods", nargs="+", required=True)
    ap.add_argument("--stride", type=int, default=1, help="score every Nth frame")
    ap.add_argument("--backbone", default=None,
                    help="tokens from this backbone computed on the frames' rgb (default: the features store)")
    ap.add_argument("--weights", default=None, help="the backbone's weights file (e.g. checkpoints/mamp.pt)")
    ap.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                    help="tokens computed on the frames resized to H x W (rgb_full when it is larger than rgb)")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    bb = None
    if a.size and not a.backbone:
        a.backbone = load_dataset_params(a.dataset, ROOT)["features"]["backbone"]
    if a.backbone:
        from pipeline.features import build_backbone, extract_features

        bb = build_backbone(a.backbone, a.weights, allow_download=False)
    q = load_dataset_params(a.dataset, ROOT)["quality"]
    data = ROOT / "data" / a.dataset
    J = {m: per_sequence_j(a.dataset, m) for m in a.methods}
    seqs = sorted(set.intersection(*(set(v) for v in J.values())))
    scores = {m: {} for m in a.methods}
    for s in seqs:
        fr = open_artifact(data / "frames" / f"{s}.zarr")
        frames = list(range(0, fr["rgb"].shape[0], a.stride))
        if bb is None:
            store = open_artifact(data / "features" / f"{s}.zarr")["tokens"]
            if store.shape[0] != fr["rgb"].shape[0]:
                raise ValueError(f"{s}: {store.shape[0]} feature frames, {fr['rgb'].shape[0]} frames")
            tokens = [store[i] for i in frames]
        else:
            big = a.size and "rgb_full" in fr and fr["rgb_full"].shape[1] > fr["rgb"].shape[1]
            rgb = _Resized(fr["rgb_full"] if big else fr["rgb"], a.size, frames)
            tokens = np.concatenate([tok for _, tok in extract_features(bb, rgb, progress=False)])
        for m in a.methods:
            scores[m][s] = sequence_scores(tokens, open_artifact(data / m / f"{s}.zarr")["labels"],
                                           float(q["max_width"]), float(q["max_height"]), frames)
        print(s, {m: round(scores[m][s].get("thr0.7/paper", 0.0), 3) for m in a.methods}, flush=True)
    table = {}
    for v in VARIANTS:
        row = {m: rho([scores[m][s][v] for s in seqs], [J[m][s] for s in seqs]) for m in a.methods}
        defined = [x for x in row.values() if x is not None]
        row["mean"] = round(float(np.mean(defined)), 3) if defined else None
        table[v] = row
        print(v, json.dumps(row), flush=True)
    report = {"dataset": a.dataset, "methods": a.methods, "backbone": a.backbone or "features store",
              "size": a.size, "sequences": len(seqs), "stride": a.stride,
              "quality": {k: q[k] for k in ("threshold", "dilation", "max_width", "max_height")},
              "spearman_videos": table,
              "per_sequence": {m: {s: {"J": round(J[m][s], 4), **{k: round(x, 4) for k, x in d.items()}}
                                   for s, d in scores[m].items()} for m in a.methods}}
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
