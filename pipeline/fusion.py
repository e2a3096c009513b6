"""Fusion of mask sources: one set of object probabilities from several mask stages (stage ``fuse``).

The pipeline has several answers to "where is object k in frame t": the adapted corrector's masks,
MAMP's propagation of the exemplars, IMAS's appearance segmentation, the flow proposals. Each is wrong
in different places, so their average is often better than the best of them (on the DAVIS
development set the adapted masks score J 0.563, IMAS 0.569, and their mean with the propagated masks
0.62; docs/results.md).

Sources are stores holding ``probs`` ``[T, C_s, h_s, w_s]``, or only ``labels`` (the training-free
motion baseline: read through :class:`OneHot` as probabilities of 0 and 1). The first source is the
*reference*: it fixes the objects (its ``K`` slots) and the output size. Every other source's channels
are matched to the reference slots once per video, without labels: the soft IoU of each (channel,
slot) pair summed over all frames, then a one-to-one assignment maximising the total (Hungarian); a
channel whose assigned soft IoU is 0 or below ``min_iou`` is left out (a source that segments
something else in this video). A source with one channel (IMAS's object mask) so joins the slot it
overlaps most; a source with the same slots as the reference (propagation of the reference's
exemplars) joins slot to slot.

Per frame and slot, the fused probability is the weighted mean of the reference slot and the
channels matched to it (resized bilinearly to the reference size):

* ``weighting: equal``: every source that covers the slot has weight 1;
* ``weighting: alignment``: the weight of a source is its mask's motion-semantic alignment in that
  frame (:mod:`pipeline.quality.alignment`, the label-free score of the quality report) plus
  ``weight_floor``, so a source whose mask disagrees with the frame's appearance counts less.

Labels follow the pipeline's rule: ``k + 1`` where slot k has the largest fused probability and it
exceeds ``threshold``, else 0. Memory is flat in the video length: one pass accumulates the matching
sums a frame at a time, a second fuses a frame at a time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.quality.alignment import AlignmentConfig, alignment

__all__ = ["FusionConfig", "WEIGHTINGS", "OneHot", "match_iou", "match_channels", "fuse_frame", "fuse_sequence", "label_map"]

WEIGHTINGS = ("equal", "alignment")


@dataclass(frozen=True)
class FusionConfig:
    """The knobs of the fusion (params.yaml ``fuse`` documents each)."""

    weighting: str = "equal"
    weight_floor: float = 0.05
    threshold: float = 0.5
    min_iou: float = 0.0

    def __post_init__(self) -> None:
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"fuse.weighting: {self.weighting!r} is not one of {', '.join(WEIGHTINGS)}")
        if not self.weight_floor > 0:
            raise ValueError(f"fuse.weight_floor: {self.weight_floor} must be > 0 (a source may align 0 everywhere)")
        if not 0 < self.threshold < 1:
            raise ValueError(f"fuse.threshold: {self.threshold} must be in (0, 1)")
        if not 0 <= self.min_iou < 1:
            raise ValueError(f"fuse.min_iou: {self.min_iou} must be in [0, 1)")

    @classmethod
    def from_params(cls, p: Mapping[str, Any]) -> "FusionConfig":
        return cls(weighting=str(p["weighting"]), weight_floor=float(p["weight_floor"]),
                   threshold=float(p["threshold"]), min_iou=float(p["min_iou"]))


class OneHot:
    """A label store ``[T, h, w]`` (0 = background, k + 1 = object k) read as probabilities
    ``[T, K, h, w]`` of 0 and 1, a frame at a time: how a mask stage without ``probs`` (the training-free
    motion baseline) joins a fusion."""

    def __init__(self, labels: Any, num_objects: int, name: str = "labels"):
        self.labels, self.K, self.name = labels, int(num_objects), name
        self.shape = (labels.shape[0], self.K, *labels.shape[1:])

    def __getitem__(self, t: int) -> np.ndarray:
        lab = np.asarray(self.labels[t])
        if lab.size and int(lab.max()) > self.K:
            raise ValueError(f"{self.name}: frame {t} has label {int(lab.max())}, but {self.K} objects")
        return (lab[None] == np.arange(1, self.K + 1)[:, None, None]).astype(np.float32)


def _resized(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``[C, h, w]`` float32 bilinearly resized to ``size`` (H, W)."""
    p = np.asarray(probs, np.float32)
    if p.shape[0] == 0:
        return np.zeros((0, *size), np.float32)
    if p.shape[1:] == tuple(size):
        return p
    return np.stack([cv2.resize(c, (size[1], size[0]), interpolation=cv2.INTER_LINEAR) for c in p])


def match_iou(ref: Any, src: Any, min_iou: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """``(assignment [C], soft IoU [C, K])``: for every channel of ``src`` ``[T, C, h', w']`` the reference
    slot of ``ref`` ``[T, K, h, w]`` it is assigned to, or -1 (arrays or Zarr arrays, read a frame at a
    time), by the one-to-one assignment maximising the soft IoU summed over the video (see the module
    docstring); an assignment whose IoU is 0 or below ``min_iou`` is dropped (-1). The IoU matrix tells
    how sure each assignment is."""
    T, K = ref.shape[:2]
    if src.shape[0] != T:
        raise ValueError(f"{src.shape[0]} frames in a source, {T} in the reference")
    C = src.shape[1]
    inter = np.zeros((C, K))
    union = np.zeros((C, K))
    if C and K:
        size = tuple(ref.shape[2:])
        for t in range(T):
            r = np.asarray(ref[t], np.float32).reshape(K, -1)
            s = _resized(src[t], size).reshape(C, -1)
            for c in range(C):
                inter[c] += np.minimum(s[c][None], r).sum(axis=1)
                union[c] += np.maximum(s[c][None], r).sum(axis=1)
    iou = inter / np.maximum(union, 1e-9)
    out = np.full(C, -1, dtype=np.int64)
    if C and K:
        for c, k in zip(*linear_sum_assignment(-iou)):
            if iou[c, k] > 0 and iou[c, k] >= min_iou:
                out[c] = k
    return out, iou


def match_channels(ref: Any, src: Any, min_iou: float = 0.0) -> np.ndarray:
    """The assignment of :func:`match_iou`."""
    return match_iou(ref, src, min_iou)[0]


def fuse_frame(ref: np.ndarray, sources: Sequence[np.ndarray], matches: Sequence[np.ndarray],
               weights: Sequence[np.ndarray] | None = None) -> np.ndarray:
    """Fused ``[K, h, w]`` of one frame: ``ref`` ``[K, h, w]``, other ``sources`` ``[C_s, h, w]`` (already at
    the reference size) with their ``matches`` (:func:`match_channels`); ``weights`` (one ``[K]`` array for
    the reference, then one ``[C_s]`` per source) default to 1."""
    ref = np.asarray(ref, np.float32)
    K = ref.shape[0]
    w_ref = np.ones(K, np.float32) if weights is None else np.asarray(weights[0], np.float32)
    num = ref * w_ref[:, None, None]
    den = w_ref.astype(np.float64).copy()
    for i, (s, m) in enumerate(zip(sources, matches)):
        w = np.ones(len(m), np.float32) if weights is None else np.asarray(weights[i + 1], np.float32)
        for c, k in enumerate(m):
            if k >= 0:
                num[k] += w[c] * np.asarray(s[c], np.float32)
                den[k] += w[c]
    return num / den[:, None, None].astype(np.float32)


def label_map(probs: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``uint8 [h, w]``: ``k + 1`` where slot k of ``probs`` ``[K, h, w]`` is largest and above ``threshold``."""
    p = np.asarray(probs, np.float32)
    if p.shape[0] == 0:
        return np.zeros(p.shape[1:], np.uint8)
    k = p.argmax(axis=0)
    return np.where(p.max(axis=0) > threshold, k + 1, 0).astype(np.uint8)


def _alignments(tokens: np.ndarray, probs: np.ndarray, acfg: AlignmentConfig, floor: float) -> np.ndarray:
    return np.array([alignment(tokens, p > 0.5, acfg) for p in probs], np.float32) + floor


def fuse_sequence(ref: Any, sources: Sequence[Any], cfg: FusionConfig, tokens: Any = None,
                  align_cfg: AlignmentConfig | None = None, matches: Sequence[np.ndarray] | None = None,
                  ) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """``(t, probs [K, h, w], labels [h, w], weights [1 + len(sources), K])`` for every frame: the fusion of
    ``ref`` ``[T, K, h, w]`` and ``sources`` (see the module docstring). ``weights`` row 0 is the
    reference's weight per slot, row i the summed weight source i gives each slot (0: not matched).
    ``tokens`` ``[T, C, h'', w'']`` and ``align_cfg`` are needed for ``weighting: alignment``; ``matches``
    (one :func:`match_channels` result per source) are computed with ``cfg.min_iou`` when not given."""
    if cfg.weighting == "alignment" and (tokens is None or align_cfg is None):
        raise ValueError("fuse.weighting: alignment needs the features stage's tokens")
    T, K = ref.shape[:2]
    size = tuple(ref.shape[2:])
    if tokens is not None and tokens.shape[0] != T:
        raise ValueError(f"{tokens.shape[0]} frames of feature tokens, {T} in the reference")
    matches = [match_channels(ref, s, cfg.min_iou) for s in sources] if matches is None else list(matches)
    for t in range(T):
        r = np.asarray(ref[t], np.float32)
        ss = [_resized(s[t], size) for s in sources]
        if cfg.weighting == "alignment":
            tok = np.asarray(tokens[t], np.float32)
            w = [_alignments(tok, r, align_cfg, cfg.weight_floor)]
            w += [_alignments(tok, s, align_cfg, cfg.weight_floor) for s in ss]
        else:
            w = [np.ones(K, np.float32)] + [np.ones(len(m), np.float32) for m in matches]
        p = fuse_frame(r, ss, matches, w)
        used = np.zeros((1 + len(sources), K), np.float32)
        used[0] = w[0]
        for i, m in enumerate(matches):
            for c, k in enumerate(m):
                if k >= 0:
                    used[i + 1, k] += w[i + 1][c]
        yield t, p, label_map(p, cfg.threshold), used
