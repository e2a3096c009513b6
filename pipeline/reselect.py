"""Exemplars chosen again with more than the selector's score (stage ``reselect``, a second round).

The first round picks each object slot's exemplar frames by the selector's relative error area alone. Other
label-free cues tell a good proposal frame from a bad one too: *temporal consistency* (its IoU with the
neighbouring frames' masks of the slot) and *propagation agreement*, the IoU of the proposal with the first
round's MAMP propagation of the slot (each slot's exemplars carried through the video by appearance). A second
round, once the first round's propagation exists, ranks every frame of a slot by each named cue within the
video among the frames the selector allows (a finite selector score: proposals below ``selector.min_area`` never
become exemplars, and do not shift the others' ranks; ties share the mean rank), averages the ranks, and takes the
``t`` best frames. Rank averaging puts cues of different scales on one footing.

On the synthetic validation split (``bench/exemplar_score_combination.py``, the paper's Table-3 selection AP) the
rank mean of the selector and propagation agreement retrieves good frames best (AP 0.815; the selector alone 0.780,
propagation alone 0.800, temporal consistency 0.723): the default cues.

The store written is the exemplars stage's (``frames``, ``scores``, ``ranking``), so every stage that reads
exemplars reads it unchanged; ``scores`` stay the selector's scores of the chosen frames (the corrector weighs
exemplars by them). No label is read. Memory is flat in the video length: masks are read a frame at a time;
only per-frame scalars ``[T, K]`` are kept.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy.stats import rankdata

from pipeline.core.draw import resize_labels
from pipeline.exemplars.scoring import frame_ious, rank_exemplars

__all__ = ["CUES", "AGREEMENT", "check_cues", "within_video_ranks", "slot_cues", "combined_confidence",
           "rank_by_confidence"]

#: the label-free confidences of a slot's proposal in a frame that can be combined
CUES = ("selector", "temporal", "propagation")
#: the first round's mask stages with the proposals' slots (label k + 1 = slot k) that the propagation cue reads
AGREEMENT = ("propagate", "corrector", "adapted")


def check_cues(cues: Sequence[str]) -> tuple[str, ...]:
    """``cues`` as a tuple, each one of :data:`CUES`, at least one, none twice; else ``ValueError``."""
    if isinstance(cues, str) or not isinstance(cues, (list, tuple)) or not cues:
        raise ValueError(f"reselect.cues: {cues!r} must be a non-empty list of {', '.join(CUES)}")
    bad = [c for c in cues if c not in CUES]
    if bad:
        raise ValueError(f"reselect.cues: {bad[0]!r} is not one of {', '.join(CUES)}")
    if len(set(cues)) != len(cues):
        raise ValueError(f"reselect.cues: {list(cues)} names a cue twice")
    return tuple(str(c) for c in cues)


def within_video_ranks(x: np.ndarray, eligible: np.ndarray | None = None) -> np.ndarray:
    """Ranks ``1 .. n`` of ``x`` ``[T, K]`` down each column (slot) among its ``eligible`` frames (default all;
    ``n`` of them), lowest first; ties share the mean rank (a whole or half number, so sums of ranks are exact);
    nan and -inf lowest, +inf highest. NaN where a frame is not eligible."""
    a = np.asarray(x, np.float64)
    if a.ndim != 2:
        raise ValueError(f"cue values must be [T, K], got shape {a.shape}")
    ok = np.ones(a.shape, bool) if eligible is None else np.asarray(eligible, bool)
    if ok.shape != a.shape:
        raise ValueError(f"eligible {ok.shape} and cue values {a.shape} differ in shape")
    a = np.where(np.isnan(a), -np.inf, a)
    out = np.full(a.shape, np.nan)
    for k in range(a.shape[1]):
        if ok[:, k].any():
            out[ok[:, k], k] = rankdata(a[ok[:, k], k])
    return out


def slot_cues(labels: Any, agreement: Any | None, K: int) -> dict[str, np.ndarray]:
    """Per frame and slot ``[T, K]``: ``temporal`` consistency (mean IoU of the slot's mask with the previous
    and next frame's; one neighbour at the ends; 0 where either mask is empty, and for a one-frame video) and,
    given ``agreement`` labels ``[T, h, w]`` (any size: resized by nearest neighbour), ``propagation`` (IoU of
    the slot's mask with the slot's label ``k + 1`` there; both empty = 1). ``labels`` ``[T, H, W]``: slot
    ``k`` is label ``k + 1``. Both are read a frame at a time."""
    T = labels.shape[0]
    if agreement is not None and agreement.shape[0] != T:
        raise ValueError(f"{agreement.shape[0]} agreement frames, {T} proposal frames")
    ks = np.arange(1, K + 1)[:, None, None]
    pair = np.zeros((max(T - 1, 0), K))
    empty = np.zeros((T, K), bool)
    prop = np.zeros((T, K))
    prev = None
    for t in range(T):
        cur = np.asarray(labels[t])[None] == ks                          # [K, H, W]
        empty[t] = ~cur.any(axis=(1, 2))
        if prev is not None:
            pair[t - 1] = frame_ious(prev, cur)
        if agreement is not None:
            a = resize_labels(np.asarray(agreement[t]), cur.shape[1:])
            prop[t] = frame_ious(cur, a[None] == ks)
        prev = cur
    temporal = np.zeros((T, K))
    if T >= 2:
        pair = np.where(empty[:-1] | empty[1:], 0.0, pair)
        temporal[:-1] += pair
        temporal[1:] += pair
        temporal[1:-1] /= 2
    out = {"temporal": temporal}
    if agreement is not None:
        out["propagation"] = prop
    return out


def combined_confidence(score: np.ndarray, cues: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    """``[T, K]`` confidence (higher = better exemplar) of the frames that may be exemplars (a finite selector
    ``score``): the mean of their ranks by the named cues among those frames, scaled to [0, 1]; ``selector`` is
    minus the selector's ``score`` (lower error = better), the others come from ``cues`` (:func:`slot_cues`). NaN
    where the score is not finite (never an exemplar; such frames do not shift the others' ranks). Equal rank sums
    give equal confidences (ties then go by frame index in :func:`rank_by_confidence`); a single cue keeps its
    order."""
    s = np.asarray(score, np.float64)
    if s.ndim != 2:
        raise ValueError(f"selector scores must be [T, K], got shape {s.shape}")
    values = {"selector": -s, **cues}
    missing = [n for n in names if n not in values]
    if missing:
        raise ValueError(f"cue {missing[0]!r} not computed (propagation needs the agreement store)")
    if not names:
        raise ValueError("no cue named")
    for n in names:
        if np.shape(values[n]) != s.shape:
            raise ValueError(f"cue {n!r} has shape {np.shape(values[n])}, the selector's scores {s.shape}")
    eligible = np.isfinite(s)
    total = np.sum([within_video_ranks(values[n], eligible) for n in names], axis=0)   # exact: half-integers
    n = eligible.sum(axis=0, keepdims=True)
    return (total / len(names) - 1) / np.maximum(n - 1, 1)


def rank_by_confidence(score: np.ndarray, confidence: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray,
                                                                                     np.ndarray]:
    """As :func:`pipeline.exemplars.scoring.rank_exemplars`, ordered by ``confidence`` ``[T, K]`` (higher first;
    ties by frame index) instead of the selector's ``score``: ``frames [K, t]`` int32 (-1 where fewer than ``t``
    frames have a finite score and a confidence; only those may be exemplars), ``top [K, t]`` float32 (their
    selector scores, inf for padding), ``ranking [K, T]`` int32 (all frames, best first; those that may not be
    exemplars last, by frame index), so ``frames`` is the start of ``ranking``."""
    s = np.asarray(score, np.float64)
    c = np.asarray(confidence, np.float64)
    if s.ndim != 2 or c.shape != s.shape:
        raise ValueError(f"score {s.shape} and confidence {c.shape} must be the same [T, K]")
    ok = np.isfinite(s) & ~np.isnan(c)
    big = np.finfo(np.float64).max                    # rank_exemplars keeps finite keys only: +-inf confidences too
    key = np.where(ok, np.nan_to_num(-c, posinf=big, neginf=-big), np.inf)   # lower first; the others last
    frames, _, ranking = rank_exemplars(key, t)
    picked = np.maximum(frames, 0)
    top = np.where(frames >= 0, s.T[np.arange(s.shape[1])[:, None], picked], np.inf).astype(np.float32)
    return frames, top, ranking
