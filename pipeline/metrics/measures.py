"""Per-frame measures of the DAVIS protocol: region similarity J (IoU), boundary F-measure with the official tolerance, and the per-object statistics (mean, recall, decay)."""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import cv2
import numpy as np
from scipy import ndimage

DEFAULT_BOUND_TH = 0.008


_NAN = float("nan")


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
