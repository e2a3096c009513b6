"""Video object segmentation metrics following the DAVIS evaluation protocol.

Region similarity ``J`` (intersection over union) and boundary accuracy ``F``
(F-measure of boundary precision / recall with a distance tolerance) are
computed per frame, summarised per object by mean / recall / decay, and
aggregated per sequence and per dataset. The numbers reproduce the algorithm of
the official DAVIS-2017 evaluator (``davis2017-evaluation``):

* ``J`` of a frame where prediction and ground truth are both empty is 1.
* Boundaries are the one-pixel maps obtained by comparing every pixel with its
  east, south and south-east neighbours (the last row only looks east, the last
  column only looks south, the bottom-right pixel is never a boundary).
* The tolerance is ``ceil(bound_th * sqrt(H**2 + W**2))`` pixels (``bound_th``
  is taken as pixels directly when it is >= 1); boundaries are dilated with a
  disk of that radius and precision / recall count the boundary pixels of one
  mask that fall inside the dilated boundary of the other.
* Statistics per object over the evaluated frames: mean, recall (fraction of
  frames with a value > 0.5) and decay (mean of the first minus the mean of the
  last of four overlapping temporal bins).
* Unsupervised multi-object protocol: all (GT object, predicted object) pairs
  are scored by the mean over frames of ``(J + F) / 2`` (or of ``J``), missing
  predictions are padded with empty masks, and a Hungarian assignment picks the
  prediction of every GT object.

Three protocols are offered (``protocol=``):

``'multi'``   DAVIS-2017 unsupervised: GT labels ``1..N`` are objects, predicted
              labels ``1..K`` are proposals, Hungarian matching.
``'single'``  DAVIS-2016: GT foreground (label > 0) is the only object and the
              predicted layer that matches it best (same rule) is evaluated.
``'merged'``  SegTrackv2 / FBMS style: union of all predicted labels against the
              union of all GT labels.

Conventions of the result rows: ``pred_id`` is the predicted label matched to
a GT object, ``-1`` (:data:`EMPTY_PRED_ID`) when the GT object was matched to
an empty padding prediction, and ``0`` (:data:`MERGED_PRED_ID`) for the merged
protocol. Every number in a row is a plain Python ``float`` / ``int``.

Two deliberate, documented differences from the official script, neither of
which changes the numbers on DAVIS: the number of GT objects is the largest
label over all evaluated frames (the script reads it from the first frame
only), and the decay bins use ordinary integers (the script stores the bin
edges as ``uint8``, which wraps around for sequences longer than 256 frames).
Per-object rows are ordered by GT object id.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "PROTOCOLS",
    "MATCH_ON",
    "RESIZE_MODES",
    "DEFAULT_BOUND_TH",
    "EMPTY_PRED_ID",
    "MERGED_PRED_ID",
    "OBJECT_COLUMNS",
    "SEQUENCE_COLUMNS",
    "STAT_KEYS",
    "iou",
    "boundary_map",
    "disk",
    "bound_pixels",
    "f_measure",
    "db_statistics",
    "resize_labels",
    "ObjectResult",
    "SequenceResult",
    "evaluate_sequence",
    "evaluate_folders",
    "list_sequences",
    "read_label_png",
    "object_rows",
    "sequence_rows",
    "summarize",
    "summarize_rows",
    "summary_dict",
    "write_object_csv",
    "write_sequence_csv",
    "write_json",
]

PROTOCOLS = ("multi", "single", "merged")
MATCH_ON = ("jf", "j", "f")
RESIZE_MODES = ("nearest", "bilinear", None)
DEFAULT_BOUND_TH = 0.008
EMPTY_PRED_ID = -1
MERGED_PRED_ID = 0

STAT_KEYS = (
    "J_mean",
    "J_recall",
    "J_decay",
    "F_mean",
    "F_recall",
    "F_decay",
    "JF_mean",
)
OBJECT_COLUMNS = ("sequence", "gt_id", "pred_id", "n_frames_evaluated") + STAT_KEYS
SEQUENCE_COLUMNS = ("sequence", "n_objects", "n_frames_evaluated") + STAT_KEYS

_NAN = float("nan")


# ---------------------------------------------------------------------------
# Per-frame measures
# ---------------------------------------------------------------------------


def _as_bool(a: Any) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype != bool:
        arr = arr != 0
    return arr


def _mask_pair(pred: Any, gt: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Both masks as bool arrays of the same [H, W] or [T, H, W] shape (else ValueError)."""
    p = _as_bool(pred)
    g = _as_bool(gt)
    if p.shape != g.shape:
        raise ValueError(f"{what}: prediction shape {p.shape} != ground-truth shape {g.shape}")
    if p.ndim not in (2, 3):
        raise ValueError(f"{what}: expected [H, W] or [T, H, W] masks, got {p.ndim} dimensions")
    return p, g


def iou(pred: Any, gt: Any) -> float | np.ndarray:
    """Jaccard index of binary masks ``[H, W]`` (scalar) or ``[T, H, W]`` (per frame).

    A frame whose prediction and ground truth are both empty scores 1.
    """
    p, g = _mask_pair(pred, gt, "iou")
    inter = np.count_nonzero(p & g, axis=(-2, -1))
    union = np.count_nonzero(p | g, axis=(-2, -1))
    j = np.where(union > 0, inter / np.maximum(union, 1), 1.0).astype(np.float64)
    return float(j) if p.ndim == 2 else j


def boundary_map(mask: Any) -> np.ndarray:
    """One-pixel boundary map of a binary mask, as used by the DAVIS F measure.

    A pixel is on the boundary when it differs from its east, south or
    south-east neighbour (neighbours outside the image count as background).
    The last row only compares with the east neighbour, the last column only
    with the south neighbour, and the bottom-right pixel is never a boundary.
    The map therefore sits half a pixel towards the origin from the true edge:
    a ``h x w`` rectangle away from the image border has ``2 * (h + w)``
    boundary pixels.
    """
    m = _as_bool(mask)
    if m.ndim != 2:
        raise ValueError(f"boundary_map: expected a 2-D mask, got shape {m.shape}")
    h, w = m.shape
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    padded = np.zeros((h + 1, w + 1), dtype=bool)
    padded[:h, :w] = m
    east = padded[:h, 1:]
    south = padded[1:, :w]
    south_east = padded[1:, 1:]
    out = (m ^ east) | (m ^ south) | (m ^ south_east)
    out[h - 1, :] = m[h - 1, :] ^ east[h - 1, :]
    out[:, w - 1] = m[:, w - 1] ^ south[:, w - 1]
    out[h - 1, w - 1] = False
    return out


@lru_cache(maxsize=32)
def _disk_cached(radius: float) -> np.ndarray:
    offsets = np.arange(-radius, radius + 1)
    dy, dx = np.meshgrid(offsets, offsets, indexing="ij")
    kernel = (dy * dy + dx * dx <= radius * radius).astype(np.uint8)
    kernel.setflags(write=False)
    return kernel


def disk(radius: float) -> np.ndarray:
    """Disk structuring element (uint8): offsets ``(dy, dx)`` taken from
    ``arange(-radius, radius + 1)`` with ``dy**2 + dx**2 <= radius**2``
    (the same set as ``skimage.morphology.disk``)."""
    r = float(radius)
    if not r >= 0:
        raise ValueError(f"disk: radius must be >= 0, got {radius!r}")
    return _disk_cached(r).copy()


def bound_pixels(shape: Sequence[int], bound_th: float = DEFAULT_BOUND_TH) -> float:
    """Boundary tolerance in pixels for a frame of ``shape = (H, W)``.

    ``bound_th`` itself when it is >= 1, otherwise ``ceil(bound_th * diag)``
    with ``diag = sqrt(H**2 + W**2)`` (8 px for 480x854 frames).
    """
    if bound_th >= 1:
        return float(bound_th)
    h, w = int(shape[0]), int(shape[1])
    return float(math.ceil(bound_th * math.sqrt(h * h + w * w)))


class _Boundary:
    """Boundary pixels of one mask plus its dilated boundary, stored on a crop.

    ``ys, xs`` are image coordinates of the boundary pixels; ``dil`` is the
    dilated boundary on a canvas whose top-left pixel is image pixel
    ``(oy, ox)`` (the canvas may extend beyond the image, which is harmless).
    """

    __slots__ = ("n", "ys", "xs", "dil", "oy", "ox", "box")

    def __init__(self, ys=None, xs=None, dil=None, oy=0, ox=0):
        self.ys = ys
        self.xs = xs
        self.n = 0 if ys is None else int(ys.size)
        self.dil = dil
        self.oy = oy
        self.ox = ox
        if self.n:
            self.box = (int(ys.min()), int(ys.max()), int(xs.min()), int(xs.max()))
        else:
            self.box = None

    def count_inside(self, other: "_Boundary") -> int:
        """Number of this mask's boundary pixels within ``other``'s dilated boundary."""
        if self.n == 0 or other.n == 0:
            return 0
        h, w = other.dil.shape
        y0, y1, x0, x1 = self.box
        if y1 < other.oy or y0 >= other.oy + h or x1 < other.ox or x0 >= other.ox + w:
            return 0
        yy = self.ys - other.oy
        xx = self.xs - other.ox
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        return int(np.count_nonzero(other.dil[yy[ok], xx[ok]]))


_EMPTY_BOUNDARY = _Boundary()


def _boundary_from_crop(crop: np.ndarray, y0: int, x0: int, kernel: np.ndarray) -> _Boundary:
    """Boundary of a mask given as a crop at image offset ``(y0, x0)``.

    The crop must contain the mask's bounding box grown by one pixel on every
    side (clipped to the image); its last row / column is then either the
    image's last row / column or background, so the edge rules of
    :func:`boundary_map` give the same pixels as on the full frame.
    """
    b = boundary_map(crop)
    ys, xs = np.nonzero(b)
    if ys.size == 0:
        return _EMPTY_BOUNDARY
    # Only the part of the crop that holds boundary pixels needs dilating.
    by0, by1, bx0, bx1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    pad = max(kernel.shape) // 2 + 1
    canvas = np.zeros((by1 - by0 + 2 * pad, bx1 - bx0 + 2 * pad), dtype=np.uint8)
    canvas[pad : pad + by1 - by0, pad : pad + bx1 - bx0] = b[by0:by1, bx0:bx1]
    dil = cv2.dilate(canvas, kernel)
    return _Boundary(
        ys + y0,
        xs + x0,
        dil,
        int(y0 + by0 - pad),
        int(x0 + bx0 - pad),
    )


def _grow_box(y0: int, y1: int, x0: int, x1: int, h: int, w: int) -> tuple[int, int, int, int]:
    return max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)


def _bbox(mask_u8: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(y0, y1, x0, x1)`` of the nonzero pixels of a uint8 image, None if empty."""
    x, y, w, h = cv2.boundingRect(mask_u8)
    if w == 0 or h == 0:
        return None
    return y, y + h, x, x + w


def _mask_boundary(mask: np.ndarray, kernel: np.ndarray) -> _Boundary:
    m = np.ascontiguousarray(mask, dtype=bool).view(np.uint8)
    box = _bbox(m)
    if box is None:
        return _EMPTY_BOUNDARY
    ya, yb, xa, xb = _grow_box(*box, *m.shape)
    return _boundary_from_crop(m[ya:yb, xa:xb], ya, xa, kernel)


# With few labels one cv2.compare + boundingRect per label beats a full
# ndimage.find_objects pass; with many labels find_objects wins.
_FEW_LABELS = 10


def _label_boundaries(labels: np.ndarray, n_labels: int, kernel: np.ndarray) -> list[_Boundary]:
    """Boundaries of the masks ``labels == k`` for ``k = 1..n_labels``."""
    out = [_EMPTY_BOUNDARY] * n_labels
    if n_labels == 0:
        return out
    h, w = labels.shape
    if n_labels <= _FEW_LABELS:
        for k in range(1, n_labels + 1):
            m = cv2.compare(labels, k, cv2.CMP_EQ)
            box = _bbox(m)
            if box is None:
                continue
            ya, yb, xa, xb = _grow_box(*box, h, w)
            out[k - 1] = _boundary_from_crop(m[ya:yb, xa:xb], ya, xa, kernel)
        return out
    for k, sl in enumerate(ndimage.find_objects(labels, max_label=n_labels), start=1):
        if sl is None:
            continue
        ya, yb, xa, xb = _grow_box(sl[0].start, sl[0].stop, sl[1].start, sl[1].stop, h, w)
        out[k - 1] = _boundary_from_crop(labels[ya:yb, xa:xb] == k, ya, xa, kernel)
    return out


def _f_from_boundaries(pred_b: _Boundary, gt_b: _Boundary) -> float:
    n_p, n_g = pred_b.n, gt_b.n
    if n_p == 0 and n_g == 0:
        precision, recall = 1.0, 1.0
    elif n_p == 0:
        precision, recall = 1.0, 0.0
    elif n_g == 0:
        precision, recall = 0.0, 1.0
    else:
        precision = pred_b.count_inside(gt_b) / n_p
        recall = gt_b.count_inside(pred_b) / n_g
    if precision + recall == 0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def f_measure(pred: Any, gt: Any, bound_th: float = DEFAULT_BOUND_TH) -> float | np.ndarray:
    """Boundary F-measure of binary masks ``[H, W]`` (scalar) or ``[T, H, W]`` (per frame)."""
    p, g = _mask_pair(pred, gt, "f_measure")
    kernel = _disk_cached(bound_pixels(p.shape[-2:], bound_th))
    if p.ndim == 2:
        return _f_from_boundaries(_mask_boundary(p, kernel), _mask_boundary(g, kernel))
    return np.array(
        [_f_from_boundaries(_mask_boundary(a, kernel), _mask_boundary(b, kernel)) for a, b in zip(p, g)],
        dtype=np.float64,
    )


def db_statistics(per_frame: Any) -> tuple[float, float, float]:
    """``(mean, recall, decay)`` of per-frame values, as the DAVIS evaluator.

    recall = fraction of frames with value > 0.5; decay = mean of the first
    minus mean of the last of four overlapping temporal bins whose edges are
    ``round(linspace(1, T, 5) + 1e-10) - 1`` (bin ``i`` spans
    ``edges[i] .. edges[i + 1]`` inclusive). NaN values are ignored; an empty
    input gives NaNs.
    """
    v = np.asarray(per_frame, dtype=np.float64).reshape(-1)
    n = v.size
    if n == 0 or np.all(np.isnan(v)):
        return _NAN, _NAN, _NAN
    valid = ~np.isnan(v)
    mean = float(np.mean(v[valid]))
    # nanmean(v > 0.5) in the reference counts NaN frames as "not > 0.5"
    recall = float(np.mean(v > 0.5))
    edges = (np.round(np.linspace(1, n, 5) + 1e-10) - 1).astype(np.int64)
    first = v[edges[0] : edges[1] + 1]
    last = v[edges[3] : edges[4] + 1]
    with np.errstate(all="ignore"):
        f_mean = np.nan if np.all(np.isnan(first)) else np.nanmean(first)
        l_mean = np.nan if np.all(np.isnan(last)) else np.nanmean(last)
    return mean, recall, float(f_mean - l_mean)


# ---------------------------------------------------------------------------
# Label maps
# ---------------------------------------------------------------------------


def _label_frame(frame: Any, what: str, sequence: str, t: int) -> np.ndarray:
    a = np.asarray(frame)
    if a.ndim != 2:
        raise ValueError(f"sequence {sequence!r}: {what} frame {t} must be a 2-D label map, got shape {a.shape}")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if a.dtype.kind not in "iu":
        raise ValueError(f"sequence {sequence!r}: {what} frame {t} must hold integer labels, got dtype {a.dtype}")
    if a.dtype in (np.uint8, np.uint16):
        return a
    if a.size == 0:
        return a.astype(np.uint8)
    lo, hi = int(a.min()), int(a.max())
    if lo < 0:
        raise ValueError(f"sequence {sequence!r}: {what} frame {t} has negative labels ({lo})")
    if hi > 65535:
        raise ValueError(f"sequence {sequence!r}: {what} frame {t} has label {hi} > 65535")
    return a.astype(np.uint8 if hi <= 255 else np.uint16)


def resize_labels(labels: Any, shape: Sequence[int], mode: str | None = "nearest") -> np.ndarray:
    """Resize a label map to ``shape = (H, W)``.

    ``'nearest'``: OpenCV ``INTER_NEAREST`` on the label map. ``'bilinear'``:
    every label's binary mask is resized as float with ``INTER_LINEAR`` and a
    pixel takes the label with the highest value when that value is > 0.5
    (background otherwise). ``None`` only accepts maps already at ``shape``.
    """
    lab = _label_frame(labels, "label", "", 0)
    h, w = int(shape[0]), int(shape[1])
    if lab.shape == (h, w):
        return lab
    if mode is None:
        raise ValueError(f"resize_labels: label map of shape {lab.shape} differs from {(h, w)} and resize is None")
    if mode == "nearest":
        return cv2.resize(lab, (w, h), interpolation=cv2.INTER_NEAREST)
    if mode == "bilinear":
        out = np.zeros((h, w), dtype=lab.dtype)
        best = np.zeros((h, w), dtype=np.float32)
        for k in np.unique(lab):
            if k == 0:
                continue
            val = cv2.resize((lab == k).astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
            take = (val > 0.5) & (val > best)
            best[take] = val[take]
            out[take] = k
        return out
    raise ValueError(f"resize_labels: unknown mode {mode!r}; expected one of {RESIZE_MODES}")


def _max_label(a: np.ndarray, void_label: int | None) -> int:
    if a.size == 0:
        return 0
    hi = int(a.max())
    if void_label is not None and hi == void_label:
        rest = a[a != void_label]
        hi = int(rest.max()) if rest.size else 0
    return hi


# ---------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------


@dataclass
class ObjectResult:
    """Per-frame J / F of one GT object and the prediction it was matched to."""

    sequence: str
    gt_id: int
    pred_id: int
    J: np.ndarray
    F: np.ndarray
    frame_indices: np.ndarray
    stats: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        jm, jr, jd = db_statistics(self.J)
        fm, fr, fd = db_statistics(self.F)
        self.stats = {
            "J_mean": jm,
            "J_recall": jr,
            "J_decay": jd,
            "F_mean": fm,
            "F_recall": fr,
            "F_decay": fd,
            "JF_mean": (jm + fm) / 2.0,
        }

    @property
    def n_frames(self) -> int:
        return int(self.J.size)

    def row(self) -> dict:
        out: dict[str, Any] = {
            "sequence": str(self.sequence),
            "gt_id": int(self.gt_id),
            "pred_id": int(self.pred_id),
            "n_frames_evaluated": self.n_frames,
        }
        out.update({k: float(v) for k, v in self.stats.items()})
        return out


@dataclass
class SequenceResult:
    """Evaluation of one sequence.

    ``objects`` holds one :class:`ObjectResult` per GT object (ordered by GT
    id). ``pair_J`` / ``pair_F`` are ``[n_gt, n_candidates, n_eval_frames]``
    per-frame scores of every (GT object, candidate prediction) pair, where
    candidate ``c`` is predicted label ``candidate_ids[c]`` (``-1`` = empty
    padding); ``scores`` is the matrix the assignment maximised.
    """

    sequence: str
    protocol: str
    match_on: str
    objects: list[ObjectResult]
    frame_indices: np.ndarray
    n_frames: int
    n_pred_objects: int
    candidate_ids: list[int]
    pair_J: np.ndarray
    pair_F: np.ndarray
    scores: np.ndarray
    bound_th: float = DEFAULT_BOUND_TH
    frame_names: list[str] | None = None

    @property
    def n_objects(self) -> int:
        return len(self.objects)

    @property
    def n_frames_evaluated(self) -> int:
        return int(len(self.frame_indices))

    @property
    def matches(self) -> dict[int, int]:
        """GT object id -> matched predicted label."""
        return {o.gt_id: o.pred_id for o in self.objects}

    def stats(self) -> dict[str, float]:
        """Means over this sequence's objects (NaN when it has none)."""
        out = {}
        for k in STAT_KEYS:
            vals = np.array([o.stats[k] for o in self.objects], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            out[k] = float(vals.mean()) if vals.size else _NAN
        return out

    def row(self) -> dict:
        out: dict[str, Any] = {
            "sequence": str(self.sequence),
            "n_objects": self.n_objects,
            "n_frames_evaluated": self.n_frames_evaluated,
        }
        out.update(self.stats())
        return out

    def object_rows(self) -> list[dict]:
        return [o.row() for o in self.objects]


# ---------------------------------------------------------------------------
# Sequence evaluation
# ---------------------------------------------------------------------------


class _LazyFrames:
    """``len()`` and ``[t]`` over a frame-major array-like, reading one frame per access."""

    def __init__(self, arr: Any):
        self.arr = arr

    def __len__(self) -> int:
        return int(self.arr.shape[0])

    def __getitem__(self, t: int) -> np.ndarray:
        return np.asarray(self.arr[int(t)])


def _frames(x: Any, what: str, sequence: str) -> Sequence:
    if not isinstance(x, (np.ndarray, list, tuple)) and hasattr(x, "shape") and hasattr(x, "__getitem__"):
        # array-likes such as zarr / h5py arrays: a lazy per-frame view, so only one
        # frame is in memory at a time (memory does not grow with the video length)
        if len(x.shape) != 3:
            raise ValueError(f"sequence {sequence!r}: {what} labels must be [T, H, W], got shape {tuple(x.shape)}")
        return _LazyFrames(x)
    if isinstance(x, np.ndarray):
        if x.ndim != 3:
            raise ValueError(f"sequence {sequence!r}: {what} labels must be [T, H, W], got shape {x.shape}")
        return x
    try:
        return list(x)
    except TypeError:
        raise ValueError(f"sequence {sequence!r}: {what} labels must be a [T, H, W] array or a list of 2-D frames") from None


def _pair_scores(
    pred: np.ndarray, gt: np.ndarray, n_gt: int, n_cand: int, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (GT label 1..n_gt, predicted label 1..n_cand) pair of one frame."""
    k1 = n_cand + 1
    n_bins = (n_gt + 1) * k1
    if n_bins <= 256 and gt.size < (1 << 24):
        # joint label g * k1 + p fits in uint8; calcHist counts are exact below 2**24
        joint = gt.astype(np.uint8, copy=False) * np.uint8(k1)
        joint += pred.astype(np.uint8, copy=False)
        hist = cv2.calcHist([joint], [0], None, [n_bins], [0, n_bins]).astype(np.int64)
    else:
        joint = gt.astype(np.int64) * k1 + pred
        hist = np.bincount(joint.ravel(), minlength=n_bins)
    hist = hist.reshape(n_gt + 1, k1)
    inter = hist[1:, 1:].astype(np.float64)
    area_g = hist[1:, :].sum(axis=1)
    area_p = hist[:, 1:].sum(axis=0)
    union = area_g[:, None] + area_p[None, :] - inter
    j = np.where(union > 0, inter / np.maximum(union, 1), 1.0)

    gb = _label_boundaries(gt, n_gt, kernel)
    pb = _label_boundaries(pred, n_cand, kernel)
    f = np.empty((n_gt, n_cand), dtype=np.float64)
    for a in range(n_gt):
        for c in range(n_cand):
            f[a, c] = _f_from_boundaries(pb[c], gb[a])
    return j, f


def evaluate_sequence(
    pred_labels: Any,
    gt_labels: Any,
    gt_valid: Any = None,
    protocol: str = "multi",
    match_on: str = "jf",
    resize: str | None = "nearest",
    bound_th: float = DEFAULT_BOUND_TH,
    sequence: str = "",
    void_label: int | None = 255,
) -> SequenceResult:
    """Evaluate one sequence of predicted label maps against GT label maps.

    pred_labels: ``[T, h, w]`` integer array or list of 2-D label maps
        (0 = background, 1..K = predicted objects); frames whose size differs
        from the GT frame are resized with ``resize``.
    gt_labels: ``[T, H, W]`` integer array or list of 2-D label maps
        (0 = background, 1..N = objects with N the largest label over the
        evaluated frames, so an unused label in between is an always-empty
        object, as in the DAVIS script; ``void_label`` pixels count as
        background, as in the DAVIS loader).
    gt_valid: optional ``[T]`` booleans; frames marked False (no annotation)
        are skipped entirely.
    protocol: ``'multi'``, ``'single'`` or ``'merged'`` (see module docstring).
    match_on: assignment score, mean over frames of ``(J + F) / 2`` (``'jf'``),
        of ``J`` (``'j'``) or of ``F`` (``'f'``).
    """
    name = str(sequence)
    if protocol not in PROTOCOLS:
        raise ValueError(f"sequence {name!r}: unknown protocol {protocol!r}; expected one of {PROTOCOLS}")
    if match_on not in MATCH_ON:
        raise ValueError(f"sequence {name!r}: unknown match_on {match_on!r}; expected one of {MATCH_ON}")
    if resize not in RESIZE_MODES:
        raise ValueError(f"sequence {name!r}: unknown resize {resize!r}; expected one of {RESIZE_MODES}")
    gt_frames = _frames(gt_labels, "ground-truth", name)
    pred_frames = _frames(pred_labels, "predicted", name)
    n_frames = len(gt_frames)
    if len(pred_frames) != n_frames:
        raise ValueError(
            f"sequence {name!r}: {len(pred_frames)} predicted frames but {n_frames} ground-truth frames"
        )
    if gt_valid is None:
        valid = np.ones(n_frames, dtype=bool)
    else:
        valid = np.asarray(gt_valid, dtype=bool).reshape(-1)
        if valid.size != n_frames:
            raise ValueError(f"sequence {name!r}: gt_valid has {valid.size} entries for {n_frames} frames")
    frame_idx = np.flatnonzero(valid)

    # Pass 1: validate the evaluated frames and count labels.
    gts: list[np.ndarray] = []
    preds: list[np.ndarray] = []
    n_gt_labels = 0
    n_pred = 0
    for t in frame_idx:
        g = _label_frame(gt_frames[t], "ground-truth", name, int(t))
        p = _label_frame(pred_frames[t], "predicted", name, int(t))
        if p.shape != g.shape and resize is None:
            raise ValueError(
                f"sequence {name!r}: frame {int(t)} prediction shape {p.shape} != ground-truth shape {g.shape} "
                "(pass resize='nearest' or 'bilinear' to resize predictions)"
            )
        if p.size == 0 or g.size == 0:
            raise ValueError(f"sequence {name!r}: frame {int(t)} is empty (shape {g.shape} / {p.shape})")
        n_gt_labels = max(n_gt_labels, _max_label(g, void_label))
        n_pred = max(n_pred, int(p.max()))
        gts.append(g)
        preds.append(p)

    if protocol == "multi":
        n_gt = n_gt_labels
    else:
        n_gt = 1
    if protocol == "merged":
        n_pred_eff = 1 if n_pred > 0 else 0
        n_cand = 1
    else:
        n_pred_eff = n_pred
        n_cand = max(n_pred, n_gt)  # missing predictions are padded with empty masks

    n_eval = len(frame_idx)
    pair_j = np.zeros((n_gt, n_cand, n_eval), dtype=np.float64)
    pair_f = np.zeros((n_gt, n_cand, n_eval), dtype=np.float64)
    for i, (g, p) in enumerate(zip(gts, preds)):
        if void_label is not None:
            void = g == void_label
            if void.any():
                g = np.where(void, 0, g).astype(g.dtype)
        if p.shape != g.shape:
            p = resize_labels(p, g.shape, resize)
        if protocol != "multi":
            g = (g > 0).astype(np.uint8)
        if protocol == "merged":
            p = (p > 0).astype(np.uint8)
        kernel = _disk_cached(bound_pixels(g.shape, bound_th))
        pair_j[:, :, i], pair_f[:, :, i] = _pair_scores(p, g, n_gt, n_cand, kernel)
        gts[i] = preds[i] = None  # free memory as we go

    if n_eval:
        mean_j = pair_j.mean(axis=2)
        mean_f = pair_f.mean(axis=2)
    else:
        mean_j = np.zeros((n_gt, n_cand))
        mean_f = np.zeros((n_gt, n_cand))
    if match_on == "jf":
        scores = (mean_j + mean_f) / 2.0
    elif match_on == "j":
        scores = mean_j
    else:
        scores = mean_f

    if protocol == "merged":
        candidate_ids = [MERGED_PRED_ID]
        assignment = np.zeros(n_gt, dtype=np.int64)
    else:
        candidate_ids = [c + 1 if c < n_pred else EMPTY_PRED_ID for c in range(n_cand)]
        assignment = np.zeros(n_gt, dtype=np.int64)
        if n_gt:
            # Same orientation as the reference (predictions are rows), so ties
            # are broken the same way.
            cand_idx, gt_idx = linear_sum_assignment(-scores.T)
            assignment[gt_idx] = cand_idx

    objects = [
        ObjectResult(
            sequence=name,
            gt_id=a + 1,
            pred_id=int(candidate_ids[assignment[a]]),
            J=pair_j[a, assignment[a]].copy(),
            F=pair_f[a, assignment[a]].copy(),
            frame_indices=frame_idx,
        )
        for a in range(n_gt)
    ]
    return SequenceResult(
        sequence=name,
        protocol=protocol,
        match_on=match_on,
        objects=objects,
        frame_indices=frame_idx,
        n_frames=n_frames,
        n_pred_objects=n_pred_eff,
        candidate_ids=candidate_ids,
        pair_J=pair_j,
        pair_F=pair_f,
        scores=scores,
        bound_th=float(bound_th),
    )


# ---------------------------------------------------------------------------
# Folders of PNGs
# ---------------------------------------------------------------------------


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """Read a PNG mask / label map as ``uint8 [H, W]`` labels.

    * palette (``'P'``) images: the palette index is the label (DAVIS style;
      255 is left as is, the evaluator treats it as void);
    * single-channel images: values > 127 (binary 0/255 masks) become label 1;
      maps whose values are all <= 127 are taken as labels directly (0/1 masks,
      small label maps written as grayscale); 16-bit images whose values exceed
      255 are thresholded at 32767;
    * RGB(A) images: label 1 where any colour channel is > 127.
    """
    with Image.open(path) as im:
        mode = im.mode
        if mode == "P":
            return np.array(im, dtype=np.uint8)
        if mode == "PA":
            return np.array(im.getchannel(0), dtype=np.uint8)
        if mode == "1":
            return np.array(im, dtype=np.uint8)
        if mode in ("RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "LAB", "HSV"):
            rgb = np.asarray(im.convert("RGB"))
            return (rgb > 127).any(axis=-1).astype(np.uint8)
        if mode in ("LA", "La"):
            a = np.asarray(im.getchannel(0))
        else:
            a = np.asarray(im)
    if a.ndim == 3:  # any other multi-channel layout: first channel
        a = a[..., 0]
    if a.dtype.kind == "f":
        a = np.rint(a)
    hi = int(a.max()) if a.size else 0
    if hi <= 127:
        return a.astype(np.uint8)
    if hi <= 255:
        return (a > 127).astype(np.uint8)
    return (a > 32767).astype(np.uint8)


def list_sequences(root: str | os.PathLike) -> list[str]:
    """Sorted names of the sub-folders of ``root`` that contain PNG files."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a directory: {root}")
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*.png")))


def evaluate_folders(
    pred_root: str | os.PathLike,
    gt_root: str | os.PathLike,
    sequences: Iterable[str] | None = None,
    protocol: str = "multi",
    match_on: str = "jf",
    resize: str | None = "nearest",
    bound_th: float = DEFAULT_BOUND_TH,
    missing: str = "error",
    void_label: int | None = 255,
) -> list[SequenceResult]:
    """Evaluate ``<pred_root>/<seq>/<frame>.png`` against ``<gt_root>/<seq>/<frame>.png``.

    The frames evaluated are the GT PNGs of each sequence; the prediction of a
    frame is the PNG with the same file name. ``sequences=None`` takes every
    GT sequence folder. A missing prediction (folder or frame) raises
    ``ValueError`` unless ``missing='empty'``, which scores it as an empty mask.
    """
    if missing not in ("error", "empty"):
        raise ValueError(f"missing must be 'error' or 'empty', got {missing!r}")
    pred_root = Path(pred_root)
    gt_root = Path(gt_root)
    seqs = list_sequences(gt_root) if sequences is None else [str(s) for s in sequences]
    results = []
    for seq in seqs:
        gt_dir = gt_root / seq
        pred_dir = pred_root / seq
        gt_files = sorted(gt_dir.glob("*.png")) if gt_dir.is_dir() else []
        if not gt_files:
            raise ValueError(f"sequence {seq!r}: no ground-truth PNGs in {gt_dir}")
        if not pred_dir.is_dir() and missing == "error":
            raise ValueError(f"sequence {seq!r}: prediction folder {pred_dir} does not exist")
        gts = [read_label_png(f) for f in gt_files]
        preds = []
        for f, g in zip(gt_files, gts):
            q = pred_dir / f.name
            if q.is_file():
                preds.append(read_label_png(q))
            elif missing == "empty":
                preds.append(np.zeros_like(g))
            else:
                raise ValueError(f"sequence {seq!r}: no prediction {q} for ground-truth frame {f.name}")
        res = evaluate_sequence(
            preds,
            gts,
            protocol=protocol,
            match_on=match_on,
            resize=resize,
            bound_th=bound_th,
            sequence=seq,
            void_label=void_label,
        )
        res.frame_names = [f.stem for f in gt_files]
        results.append(res)
    return results


# ---------------------------------------------------------------------------
# Summaries and writers
# ---------------------------------------------------------------------------


def object_rows(results: Iterable[SequenceResult]) -> list[dict]:
    """One row per GT object of every sequence (see :data:`OBJECT_COLUMNS`)."""
    return [o.row() for r in results for o in r.objects]


def sequence_rows(results: Iterable[SequenceResult]) -> list[dict]:
    """One row per sequence (see :data:`SEQUENCE_COLUMNS`)."""
    return [r.row() for r in results]


def _nanmean(values: Iterable[float]) -> float:
    v = np.asarray(list(values), dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else _NAN


def summarize_rows(seq_rows: Iterable[Mapping], obj_rows: Iterable[Mapping]) -> dict:
    """Dataset-level summary from already computed rows (e.g. read back from
    JSON, where NaN may have become ``None``).

    ``object_level``: every statistic averaged over all object rows -- what the
    DAVIS evaluator reports (its ``J&F-Mean`` is ``object_level['JF_mean']``,
    also given as top-level ``JF_mean``; likewise ``J_mean`` / ``F_mean``).
    ``sequence_level``: averaged over sequence rows (each the mean of its
    objects); sequences without objects are left out.
    """
    seq_rows = list(seq_rows)
    obj_rows = list(obj_rows)

    def col(rows, k):
        return [_NAN if r.get(k) is None else r[k] for r in rows]

    obj_level = {k: _nanmean(col(obj_rows, k)) for k in STAT_KEYS}
    seq_with_objects = [r for r in seq_rows if int(r.get("n_objects") or 0) > 0]
    seq_level = {k: _nanmean(col(seq_with_objects, k)) for k in STAT_KEYS}
    return {
        "n_sequences": len(seq_rows),
        "n_objects": len(obj_rows),
        "n_frames_evaluated": int(sum(int(r.get("n_frames_evaluated") or 0) for r in seq_rows)),
        "JF_mean": obj_level["JF_mean"],
        "J_mean": obj_level["J_mean"],
        "F_mean": obj_level["F_mean"],
        "JF_mean_sequence_level": seq_level["JF_mean"],
        "object_level": obj_level,
        "sequence_level": seq_level,
    }


def summarize(results: Iterable[SequenceResult]) -> dict:
    """Dataset-level summary of :class:`SequenceResult` s; see :func:`summarize_rows`
    (adds ``protocols``, the protocols the results were computed with)."""
    results = list(results)
    out = summarize_rows(sequence_rows(results), object_rows(results))
    out["protocols"] = sorted({r.protocol for r in results})
    return out


def summary_dict(
    results: Iterable[SequenceResult], include_rows: bool = True, **meta: Any
) -> dict:
    """JSON-ready dict: :func:`summarize` plus (optionally) the sequence and
    object rows and any extra ``meta`` keyword values under ``'meta'``."""
    results = list(results)
    out = summarize(results)
    if include_rows:
        out["sequences"] = sequence_rows(results)
        out["objects"] = object_rows(results)
    if meta:
        out["meta"] = dict(meta)
    return out


def _rows_of(rows: Iterable[Any], kind: str) -> list[dict]:
    out = []
    for r in rows:
        if isinstance(r, SequenceResult):
            out.extend(r.object_rows() if kind == "object" else [r.row()])
        elif isinstance(r, ObjectResult):
            out.append(r.row())
        elif isinstance(r, Mapping):
            out.append(dict(r))
        else:
            raise TypeError(f"cannot write {type(r).__name__} as a {kind} row")
    return out


def _write_csv(rows: list[dict], columns: Sequence[str], path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(columns)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


def write_object_csv(rows: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write per-object rows (dicts, ObjectResults or SequenceResults) to CSV."""
    return _write_csv(_rows_of(rows, "object"), OBJECT_COLUMNS, path)


def write_sequence_csv(rows: Iterable[Any], path: str | os.PathLike) -> Path:
    """Write per-sequence rows (dicts or SequenceResults) to CSV."""
    return _write_csv(_rows_of(rows, "sequence"), SEQUENCE_COLUMNS, path)


def _jsonable(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return None if math.isnan(x) or math.isinf(x) else x
    return x


def write_json(data: Any, path: str | os.PathLike) -> Path:
    """Write ``data`` as strict JSON (NaN -> null, numpy scalars -> Python)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        json.dump(_jsonable(data), fh, indent=2, allow_nan=False)
        fh.write("\n")
    return path
