"""Cross-source agreement: a label-free score of a segmentation from the other mask stages' opinions.

The pipeline makes several segmentations of every frame that fail in different ways (the flow
proposals, the corrector, MAMP propagation, IMAS, the flow baseline). Where they all draw the same
objects the answer is probably right; where they disagree, at least some of them are wrong. Per
frame, a mask's agreement with another is the mean IoU of their objects matched one to one
(Hungarian matching on IoU; an object without a partner counts 0, so the sum is divided by the
larger object count); two empty frames agree fully (1), an empty and a non-empty one not at all (0).
Label 255 (void) is not an object.
A frame's score is the mean agreement with each of the other sources.

No labels are read. On the synthetic validation split it ranks videos by their J better than the
motion-semantic alignment does (:mod:`pipeline.quality.alignment`; docs/results.md, session 11).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

__all__ = ["label_agreement", "frame_agreement"]

VOID = 255


def label_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Matched-object IoU of two label maps ``[H, W]`` (0 = background, 255 = void; ids need not
    correspond)."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"label maps of shapes {a.shape} and {b.shape}")
    a, b = np.where(a == VOID, 0, a), np.where(b == VOID, 0, b)
    ka, kb = int(a.max(initial=0)) + 1, int(b.max(initial=0)) + 1
    joint = np.bincount(a.ravel().astype(np.int64) * kb + b.ravel(), minlength=ka * kb).reshape(ka, kb)
    inter = joint[1:, 1:].astype(np.float64)
    area_a, area_b = joint[1:].sum(1), joint[:, 1:].sum(0)
    ia, ib = np.flatnonzero(area_a), np.flatnonzero(area_b)      # objects present in the frame
    if len(ia) == 0 and len(ib) == 0:
        return 1.0
    if len(ia) == 0 or len(ib) == 0:
        return 0.0
    inter = inter[np.ix_(ia, ib)]
    iou = inter / (area_a[ia][:, None] + area_b[ib][None, :] - inter)
    r, c = linear_sum_assignment(-iou)
    return float(iou[r, c].sum() / max(len(ia), len(ib)))


def frame_agreement(labels: np.ndarray, others: Sequence[np.ndarray]) -> float:
    """Mean :func:`label_agreement` of one frame's labels with each other source's labels of that frame."""
    if not others:
        raise ValueError("agreement needs at least one other source")
    return float(np.mean([label_agreement(labels, o) for o in others]))
