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

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from pipeline.metrics.measures import (
    DEFAULT_BOUND_TH,
    _disk_cached,
    _f_from_boundaries,
    _label_boundaries,
    bound_pixels,
)
from pipeline.metrics.results import ObjectResult, SequenceResult

PROTOCOLS = ("multi", "single", "merged")
MATCH_ON = ("jf", "j", "f")
RESIZE_MODES = ("nearest", "bilinear", None)
EMPTY_PRED_ID = -1
MERGED_PRED_ID = 0


# ---------------------------------------------------------------------------
# Per-frame measures
# ---------------------------------------------------------------------------


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


def pair_iou(pred: np.ndarray, gt: np.ndarray, n_gt: int, n_cand: int) -> np.ndarray:
    """J ``[n_gt, n_cand]`` of every (GT label 1..n_gt, predicted label 1..n_cand) pair of one frame (label maps of
    one shape, void already background; a pair empty in both is 1, as DAVIS scores it)."""
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
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def _pair_scores(
    pred: np.ndarray, gt: np.ndarray, n_gt: int, n_cand: int, kernel: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of every (GT label 1..n_gt, predicted label 1..n_cand) pair of one frame."""
    j = pair_iou(pred, gt, n_gt, n_cand)
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
    """A mask image as ``uint8 [H, W]`` labels: the reader of ingestion (:func:`pipeline.core.io.read_mask`),
    so ``motionseg evaluate`` and the frames stage read every format the same way."""
    from pipeline.core.io import read_mask

    return read_mask(path)


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


