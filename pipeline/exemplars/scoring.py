"""Mask selection: error-map targets, exemplar scores and ranking, selection AP.

Conventions (``docs/refinement-design.md``):

* error-map classes, channel order: 0 = false positive (``mask & ~gt``),
  1 = false negative (``~mask & gt``), 2 = correct (true positive or true
  negative);
* exemplar score of a (frame, object) = relative error area
  ``(FP + FN pixels) / (proposal area + 1)`` (lower is better, appearance
  refinement paper, appendix "Exemplar Mask Selection"); a proposal smaller
  than ``min_area`` pixels scores ``+inf`` and is never an exemplar;
* selection AP (appearance refinement paper, Table 3): per object, frames
  ranked by the IoU of the proposal with the ground truth; the ``n`` best and
  the ``n`` worst form the set (``n`` = 10), and the average precision of a
  confidence ranking at retrieving the ``n`` best is reported. AP is the
  step-wise area under precision/recall with tied confidences taken as one
  threshold (the usual ``average_precision_score`` definition), so a constant
  confidence scores exactly the positive rate (0.5).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["FP", "FN", "CORRECT", "error_targets", "error_onehot", "relative_error_area", "rank_exemplars",
           "frame_ious", "average_precision", "selection_set", "selection_ap", "temporal_consistency",
           "random_ap", "best_slot", "match_objects"]

FP, FN, CORRECT = 0, 1, 2


def error_targets(mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Class map (uint8, same shape): 0 FP, 1 FN, 2 correct, from boolean masks."""
    m, g = np.asarray(mask, bool), np.asarray(gt, bool)
    if m.shape != g.shape:
        raise ValueError(f"mask {m.shape} and gt {g.shape} differ in shape")
    out = np.full(m.shape, CORRECT, np.uint8)
    out[m & ~g] = FP
    out[~m & g] = FN
    return out


def error_onehot(mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """One-hot error map ``[..., 3, H, W]`` float32 (channel order FP, FN, correct)."""
    cls = error_targets(mask, gt)
    return np.stack([(cls == c) for c in (FP, FN, CORRECT)], axis=-3).astype(np.float32)


def relative_error_area(error: np.ndarray, mask: np.ndarray, min_area: int = 1, soft: bool = False) -> np.ndarray:
    """Exemplar score ``(FP + FN) / (area + 1)`` per leading index.

    ``error``: class map ``[..., H, W]`` (integer) or class probabilities
    ``[..., 3, H, W]`` (float; a pixel is an error where FP or FN has the
    largest probability — the paper's count). With ``soft=True`` (probabilities
    only) the error area is the expected one, ``sum(p_FP + p_FN)``: no ties
    between frames whose argmax maps are equally clean. ``mask``: the proposal
    ``[..., H, W]``. Scores of proposals with fewer than ``min_area`` pixels are
    ``+inf``.
    """
    error, m = np.asarray(error), np.asarray(mask, bool)
    probs = np.issubdtype(error.dtype, np.floating) and error.ndim == m.ndim + 1
    if probs and error.shape[-3] != 3:
        raise ValueError(f"error probabilities need 3 channels at axis -3, got {error.shape}")
    if soft and not probs:
        raise ValueError("soft=True needs error probabilities [..., 3, H, W]")
    shape = error.shape[:-3] + error.shape[-2:] if probs else error.shape
    if shape != m.shape:
        raise ValueError(f"error map {shape} and mask {m.shape} differ in shape")
    if soft:      # expected error pixels
        err = (np.take(error, FP, axis=-3).astype(np.float64)
               + np.take(error, FN, axis=-3).astype(np.float64)).sum(axis=(-2, -1))
    else:         # counted error pixels (argmax class)
        cls = np.argmax(error, axis=-3) if probs else error
        err = (cls != CORRECT).sum(axis=(-2, -1)).astype(np.float64)
    area = m.sum(axis=(-2, -1)).astype(np.float64)
    score = err / (area + 1.0)
    return np.where(area < min_area, np.inf, score)


def rank_exemplars(scores: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``t`` exemplar frames per object from ``scores [T, K]`` (lower is better).

    Returns ``frames [K, t]`` int32 (best first; ``-1`` where fewer than ``t``
    frames have a finite score), ``top [K, t]`` float32 (their scores, ``inf``
    for padding) and ``ranking [K, T]`` int32 (all frames, best first; ties by
    frame index).
    """
    s = np.asarray(scores, np.float64)
    if s.ndim != 2:
        raise ValueError(f"scores must be [T, K], got shape {s.shape}")
    if t < 1:
        raise ValueError(f"t (exemplars per object) must be >= 1, got {t}")
    T, K = s.shape
    ranking = np.argsort(s.T, axis=1, kind="stable").astype(np.int32)          # [K, T]
    frames = np.full((K, t), -1, np.int32)
    top = np.full((K, t), np.inf, np.float32)
    for k in range(K):
        ok = [f for f in ranking[k] if np.isfinite(s[f, k])][:t]
        frames[k, :len(ok)] = ok
        top[k, :len(ok)] = s[ok, k]
    return frames, top, ranking


def frame_ious(mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Per-frame IoU ``[T]`` of boolean ``[T, H, W]`` masks (both empty = 1)."""
    m, g = np.asarray(mask, bool), np.asarray(gt, bool)
    inter = (m & g).sum(axis=(-2, -1)).astype(np.float64)
    union = (m | g).sum(axis=(-2, -1)).astype(np.float64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def average_precision(labels: np.ndarray, confidence: np.ndarray) -> float:
    """AP of ``confidence`` (higher = more likely positive) at retrieving ``labels == 1``;
    tied confidences form one threshold. NaN if there is no positive."""
    y = np.asarray(labels, bool)
    c = np.asarray(confidence, np.float64)
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-c, kind="stable")
    y, c = y[order], c[order]
    last = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]       # last index of each tie group
    tp = np.cumsum(y)[last].astype(np.float64)
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def selection_set(ious: np.ndarray, n: int = 10) -> tuple[np.ndarray, np.ndarray] | None:
    """``(frames, labels)``: the ``n`` best and ``n`` worst frames by IoU (ties by frame index),
    labels 1 for the best. ``None`` if the video has fewer than ``2 n`` frames."""
    iou = np.asarray(ious, np.float64)
    if len(iou) < 2 * n:
        return None
    order = np.argsort(-iou, kind="stable")
    frames = np.r_[order[:n], order[-n:]]
    return frames, np.r_[np.ones(n, bool), np.zeros(n, bool)]


def selection_ap(ious: np.ndarray, confidence: np.ndarray, n: int = 10) -> float | None:
    """Table-3 selection AP of ``confidence [T]`` given the proposal's per-frame ``ious [T]``;
    ``None`` when the video is shorter than ``2 n`` frames."""
    sel = selection_set(ious, n)
    if sel is None:
        return None
    frames, labels = sel
    c = np.nan_to_num(np.asarray(confidence, np.float64), nan=-1e30, posinf=1e30, neginf=-1e30)
    return average_precision(labels, c[frames])


def temporal_consistency(masks: np.ndarray) -> np.ndarray:
    """Baseline confidence ``[T]``: mean IoU of the proposal with the previous and next frame's
    (one neighbour at the ends; 0 for a one-frame video). Empty masks score 0."""
    m = np.asarray(masks, bool)
    T = len(m)
    if T < 2:
        return np.zeros(T)
    pair = frame_ious(m[:-1], m[1:])                                  # IoU(t, t+1)
    empty = m.reshape(T, -1).sum(1) == 0
    pair = np.where(empty[:-1] | empty[1:], 0.0, pair)
    conf = np.zeros(T)
    conf[:-1] += pair
    conf[1:] += pair
    conf[1:-1] /= 2
    return conf


def random_ap(ious: np.ndarray, n: int = 10, trials: int = 1000, seed: int = 0) -> float | None:
    """Expected selection AP of a random ranking (mean over ``trials`` seeded draws)."""
    sel = selection_set(ious, n)
    if sel is None:
        return None
    rng = np.random.default_rng(seed)
    labels = sel[1]
    return float(np.mean([average_precision(labels, rng.random(len(labels))) for _ in range(trials)]))


def best_slot(labels: np.ndarray, gt: np.ndarray, slots: Sequence[int]) -> tuple[int, np.ndarray]:
    """The proposal slot (label value ``k + 1``, ``k`` in ``slots``) with the highest mean IoU
    over frames against ``gt [T, H, W]`` bool; returns ``(k, per-frame ious)``."""
    best, best_iou = None, None
    for k in slots:
        iou = frame_ious(np.asarray(labels) == k + 1, gt)
        if best is None or iou.mean() > best_iou.mean():
            best, best_iou = k, iou
    return int(best), best_iou


def match_objects(labels: np.ndarray, gt_objects: np.ndarray, K: int) -> list[tuple[int, int, np.ndarray]]:
    """Hungarian matching of proposal slots (``labels == k + 1``, ``k < K``) to GT objects
    ``gt_objects [T, O, H, W]`` bool on the mean over frames of the IoU. Returns
    ``[(o, k, per-frame ious of slot k vs object o), ...]`` for every matched GT object
    (objects left without a slot when ``O > K`` are omitted)."""
    from scipy.optimize import linear_sum_assignment

    lab, g = np.asarray(labels), np.asarray(gt_objects, bool)
    O = g.shape[1]
    ious = np.zeros((K, O, len(lab)))
    for k in range(K):
        m = lab == k + 1
        for o in range(O):
            ious[k, o] = frame_ious(m, g[:, o])
    rows, cols = linear_sum_assignment(-ious.mean(-1))
    return sorted(((int(o), int(k), ious[k, o]) for k, o in zip(rows, cols)), key=lambda r: r[0])


def write_exemplars(selector_store: Any, out: Any, t: int = 10, params: dict | None = None,
                    sequence: str | None = None, ranked: tuple | None = None, inputs: dict | None = None,
                    attrs: dict | None = None) -> dict:
    """Exemplars store ``out`` of one sequence from its selector store's ``score`` [T, K]:
    ``frames`` [K, t] int32 (best first, -1 = fewer than t frames with a finite score),
    ``scores`` [K, t] float32 (+inf for padding), ``ranking`` [K, T] int32 (all frames,
    best first, ties by frame index); :func:`pipeline.exemplars.scoring.rank_exemplars`.
    ``ranked``: ``(frames, scores, ranking)`` ordered otherwise (the rank mean of the selector and other
    label-free cues, :func:`pipeline.reselect.rank_by_confidence`), written instead; ``inputs`` and ``attrs``:
    the other stores it read and what to record beside (provenance, store attributes)."""
    from pathlib import Path

    from pipeline.core.store import ArtifactWriter, open_artifact
    from pipeline.exemplars.scoring import rank_exemplars

    sel = open_artifact(selector_store, stage="selector")
    score = np.asarray(sel.require("score", dtype="float32", ndim=2)[...])
    T, K = score.shape
    frames, top, ranking = rank_exemplars(score, int(t)) if ranked is None else ranked
    how = "lowest relative error area" if ranked is None else "highest mean rank of the selector and the other cues"
    with ArtifactWriter(out, stage="exemplars", params={"corrector": {"t": int(t)}, **dict(params or {})},
                        inputs={"selector": sel.path, **dict(inputs or {})}) as wr:
        wr.write("frames", frames, ("object", "rank"),
                 attrs={"meaning": f"exemplar frames of object slot k, best ({how}) first; "
                                   "-1 = no further frame with a finite score"})
        wr.write("scores", top, ("object", "rank"), attrs={"meaning": "selector score of each exemplar frame"})
        wr.write("ranking", ranking, ("object", "rank"), attrs={"meaning": "all frames of slot k, best first"})
        wr.attrs.update({"sequence": sequence or sel.attrs.get("sequence") or Path(str(out)).stem, "t": int(t),
                         "num_objects": K, "num_frames": T,
                         "exemplars_found": [int((frames[k] >= 0).sum()) for k in range(K)], **dict(attrs or {})})
    return {"T": T, "K": K, "t": int(t), "found": [int((frames[k] >= 0).sum()) for k in range(K)]}


def exemplar_weights(frames: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """``[K, t]`` float32 weights ``1 / (1 + score)``; 0 where ``frames < 0`` or the score is not finite."""
    f = np.asarray(frames)
    s = np.asarray(scores, np.float64)
    if f.shape != s.shape:
        raise ValueError(f"exemplar frames {f.shape} and scores {s.shape} differ in shape")
    ok = (f >= 0) & np.isfinite(s)
    return np.where(ok, 1.0 / (1.0 + np.clip(np.where(ok, s, 0.0), 0.0, None)), 0.0).astype(np.float32)
