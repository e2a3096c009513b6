"""A second, training-free opinion on each exemplar candidate: agreement with the motion baseline's tracks.

The selector judges a proposal from appearance. Where two objects look like each other or like the
background, it can score a mask that holds both of them about as well as a clean one, and a slot whose
exemplars mix two objects teaches the corrector, its adaptation and the propagation to merge them. The
training-free motion baseline (:mod:`pipeline.baseline`) finds objects another way: residual motion,
connected components and a tracker that keeps their identities. Where a slot's proposal and the track
that slot follows agree, both methods saw the same object.

For one video, :func:`track_agreement` pairs every proposal slot with one track of the other store, once
for the whole video: the one-to-one assignment (Hungarian) maximising the per-frame IoU summed over the
frames. The cue of slot ``k`` in frame ``t`` is then the IoU of the slot's proposal with its track there
(0 where the slot has no track). The exemplars stage ranks each slot's frames within the video by this cue
and by the selector's score and averages the ranks (:func:`pipeline.reselect.combined_confidence`, the
rule of the second round's ``reselect``).

Memory is flat in the video length: masks are read a frame at a time; only per-frame IoUs
``[T, K, J]`` are kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.core.draw import resize_labels

__all__ = ["AGREE_WITH", "check_agree_with", "joint_histogram", "track_agreement", "track_labels"]

#: stages before the exemplars whose ``labels`` are objects with identities of their own (label j + 1 = track j)
AGREE_WITH = ("motion_baseline",)


def check_agree_with(value: Any) -> tuple[str, ...]:
    """``exemplars.agree_with`` as a tuple of :data:`AGREE_WITH` stages, none twice (``ValueError`` naming the
    key otherwise). An empty list is the paper's choice: the selector's score alone."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise ValueError(f"exemplars.agree_with: {value!r} must be a list ([] or [{', '.join(AGREE_WITH)}])")
    bad = [v for v in value if v not in AGREE_WITH]
    if bad:
        raise ValueError(f"exemplars.agree_with: {bad[0]!r} is not one of {', '.join(AGREE_WITH)}")
    if len(set(value)) != len(value):
        raise ValueError(f"exemplars.agree_with: {list(value)} names a stage twice")
    return tuple(str(v) for v in value)


def joint_histogram(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> np.ndarray:
    """``[na, nb]`` pixel counts of each (label of ``a``, label of ``b``) pair of two label maps of one shape, labels
    below ``na`` and ``nb``: row 0 / column 0 are the background, column sums the areas of ``b``'s labels."""
    return np.bincount(np.asarray(a, np.int64).ravel() * nb + np.asarray(b, np.int64).ravel(),
                       minlength=na * nb).reshape(na, nb)


def _pair_ious(slots: np.ndarray, tracks: np.ndarray, K: int, J: int) -> np.ndarray:
    """``[K, J]`` IoU of slot label ``k + 1`` with track label ``j + 1`` in one frame (0 where both are empty;
    labels above ``K`` count as background), from one joint histogram of the two label maps."""
    if not (K and J):
        return np.zeros((K, J))
    hist = joint_histogram(np.where(slots <= K, slots, 0), tracks, K + 1, J + 1)
    inter = hist[1:, 1:].astype(np.float64)
    union = hist[1:].sum(1)[:, None] + hist[:, 1:].sum(0)[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1), 0.0)


def track_agreement(labels: Any, tracks: Any, K: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cue [T, K], track [K])``: ``labels`` ``[T, H, W]`` (slot k = label k + 1) against ``tracks``
    ``[T, h, w]`` (track j = label j + 1; any size, resized by nearest neighbour), both read a frame at a time.
    ``track[k]`` is the track paired with slot ``k`` for the whole video, or -1 (more slots than tracks, or
    no overlap at all); ``cue[t, k]`` the IoU of the two in frame ``t`` (0 without a track, and 0 where both
    are empty: such frames never become exemplars, the selector scores an empty proposal +inf)."""
    T = labels.shape[0]
    if tracks.shape[0] != T:
        raise ValueError(f"{tracks.shape[0]} frames of tracks, {T} of proposals")
    per_frame: list[np.ndarray] = []
    J = 0
    for t in range(T):
        lab = np.asarray(labels[t])
        trk = resize_labels(np.asarray(tracks[t]), lab.shape).astype(np.int64)
        J = max(J, int(trk.max(initial=0)))
        per_frame.append(_pair_ious(lab, trk, K, int(trk.max(initial=0))))
    ious = np.zeros((T, K, J))
    for t, m in enumerate(per_frame):
        ious[t, :, :m.shape[1]] = m
    match = np.full(K, -1, np.int64)
    if K and J:
        total = ious.sum(axis=0)
        for k, j in zip(*linear_sum_assignment(-total)):
            if total[k, j] > 0:
                match[k] = j
    cue = np.zeros((T, K))
    for k in range(K):
        if match[k] >= 0:
            cue[:, k] = ious[:, k, match[k]]
    return cue, match


def track_labels(match: np.ndarray) -> list[int]:
    """:func:`track_agreement`'s pairing as the tracks' labels per slot (track j = label j + 1; 0 = none), the
    form the stores record."""
    return [int(j) + 1 if j >= 0 else 0 for j in match]
