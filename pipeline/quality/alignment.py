"""Motion-semantic alignment (IMAS, Sec. 3.4): a label-free score of a segmentation.

A good mask covers a whole object: the object's appearance features, pooled under the mask, then
match the mask's pixels and few others. A mask that holds only part of an object, or background too,
gives a semantic response that disagrees with it. Per frame and object:

1. ``q``: the frame's feature tokens averaged under the mask (area-weighted on the token grid);
2. the semantic response: the token cells whose cosine similarity to ``q`` is at least ``threshold``
   (each cell covers its block of the mask's pixels), dilated by ``dilation`` token cells (the
   features are coarse at object boundaries);
3. a response wider than ``max_width`` or taller than ``max_height`` (fractions of the frame) matched
   the background: the score is 0 (the paper's 80% / 90% rule);
4. the score: IoU of the response and the mask. An empty mask scores 0 (it found nothing).

Model-agnostic: any mask stage's ``labels`` and any features store (the backbone is named in the
report). No labels are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import cv2
import numpy as np

__all__ = ["AlignmentConfig", "semantic_response", "alignment", "frame_alignments"]


@dataclass(frozen=True)
class AlignmentConfig:
    """The knobs of the score (params.yaml ``quality`` documents each)."""

    threshold: float          # cosine similarity a location needs to join the semantic response
    dilation: float           # token cells the response is dilated by (pixels = dilation x H / h)
    max_width: float = 0.8    # a response wider than this fraction of the frame scores 0
    max_height: float = 0.9   # ... or taller than this fraction

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "AlignmentConfig":
        return cls(threshold=float(p["threshold"]), dilation=float(p["dilation"]), max_width=float(p["max_width"]),
                   max_height=float(p["max_height"]))


def _unit(tokens: np.ndarray) -> np.ndarray:
    t = np.asarray(tokens, np.float32)
    return t / np.maximum(np.linalg.norm(t, axis=0, keepdims=True), 1e-6)


def semantic_response(tokens: np.ndarray, mask: np.ndarray, cfg: AlignmentConfig) -> np.ndarray | None:
    """Boolean ``[H, W]`` semantic response of ``mask`` (``[H, W]`` bool) in ``tokens`` (``[C, h, w]``),
    or None when the mask is empty."""
    m = np.asarray(mask, bool)
    H, W = m.shape
    C, h, w = tokens.shape
    grid = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    if grid.sum() <= 1e-6:
        return None
    t = _unit(tokens)
    q = (t * grid[None]).sum(axis=(1, 2))
    q /= max(float(np.linalg.norm(q)), 1e-6)
    cos = np.einsum("chw,c->hw", t, q)
    resp = cv2.resize((cos >= cfg.threshold).astype(np.uint8), (W, H), interpolation=cv2.INTER_NEAREST).astype(bool)
    px = int(round(cfg.dilation * H / h))
    if px > 0 and resp.any():
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * px + 1, 2 * px + 1))
        resp = cv2.dilate(resp.astype(np.uint8), k).astype(bool)
    return resp


def _extent(a: np.ndarray) -> float:
    idx = np.flatnonzero(a)
    return 0.0 if idx.size == 0 else (idx[-1] - idx[0] + 1) / a.size


def alignment(tokens: np.ndarray, mask: np.ndarray, cfg: AlignmentConfig) -> float:
    """The motion-semantic alignment of one object's ``mask`` (see the module docstring)."""
    resp = semantic_response(tokens, mask, cfg)
    if resp is None:
        return 0.0
    if _extent(resp.any(axis=0)) > cfg.max_width or _extent(resp.any(axis=1)) > cfg.max_height:
        return 0.0
    m = np.asarray(mask, bool)
    union = np.logical_or(resp, m).sum()
    return float(np.logical_and(resp, m).sum() / union) if union else 0.0


def frame_alignments(tokens: np.ndarray, labels: np.ndarray, cfg: AlignmentConfig) -> dict[int, float]:
    """Alignment of every object label present in ``labels`` (``[H, W]``; 0 = background, 255 = void)."""
    lab = np.asarray(labels)
    ids = [int(v) for v in np.unique(lab) if v not in (0, 255)]
    return {k: alignment(tokens, lab == k, cfg) for k in ids}
