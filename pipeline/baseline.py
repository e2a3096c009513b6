"""Training-free motion segmentation from optical flow alone.

The baseline explains the flow field of every frame by one dominant parametric
motion (the camera / background), marks the pixels whose flow disagrees with it
as moving, and turns those into at most ``K`` object layers whose indices are
kept stable over time by a small tracker.

Per frame ``t`` the input is a float32 array ``[4, H, W]`` holding
``[u_fwd, v_fwd, u_bwd, v_bwd]``: the forward flow ``t -> t+1`` and the
backward flow ``t -> t-1`` in pixels of the working resolution.  The output is
a ``uint8`` label map ``[H, W]`` with 0 = background and ``1..K`` = objects.

Algorithm (all steps deterministic for a given seed):

1. For each flow direction, sample points ``p`` and their matches
   ``p + flow(p)`` and fit a homography (or affine map) with a weighted RANSAC.
   Hypotheses are scored by the summed weight of their inliers; points near the
   image border weigh more (the background usually touches the border, which
   helps when an object covers more than half of the frame) and points that
   belonged to an object in the previous frame weigh less.  The winner is
   refined by weighted least squares on its inliers.
2. The residual ``|flow(p) - (model(p) - p)|`` of every pixel is computed for
   each direction and divided by that direction's threshold
   ``max(abs_thresh, rel_thresh * robust_scale, mag_rel * background_speed)``
   (robust scale: weighted median of the sampled residuals; background speed:
   median magnitude of the model flow, since flow errors grow with motion).
   The two normalised maps are combined (mean by default) into a score map in
   which 1 is the decision level.  The score map is smoothed in time by an
   exponential moving average whose previous state is warped into the current
   frame with the backward flow.
3. Hysteresis thresholding (seeds above ``hyst_high``, growth above
   ``hyst_low``), then every region is trimmed to the pixels scoring at least
   ``peak_frac`` of its robust peak (flow is smooth across motion boundaries,
   so the residual bleeds outside the object), morphological opening /
   closing, hole filling, connected components with nearby components merged,
   tiny components dropped.
4. Tracking: each object index owns a memory mask that is warped along the
   flow every frame.  A component holding most of the memory of two or more
   recent objects (they touch or cross) is first split between them, each
   pixel going to the nearest memory (``split_merged``).  Components are
   matched to memories by Hungarian
   assignment on IoU (falling back to centroid proximity for objects that
   jumped or reappeared); unmatched components that mostly lie inside a
   matched memory are absorbed into it; the remaining ones take free indices
   (largest first).  An object that is no longer detected is still reported
   at its warped memory for ``hold_frames`` frames and its index is released
   after ``max_age`` frames.

Memory use is constant in the video length: only the previous smoothed score
map and the ``K`` memory masks are kept.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, List, Optional, Tuple

import cv2
import numpy as np
from scipy import ndimage
from scipy.optimize import linear_sum_assignment

__all__ = [
    "BaselineConfig",
    "MotionBaseline",
    "motion_segment",
    "residual_motion",
    "fit_background_motion",
]


@dataclass
class BaselineConfig:
    """Parameters of :class:`MotionBaseline` (defaults tuned on DAVIS-2016 train
    with DIS flow at 128x224)."""

    #: Maximum number of object layers K; labels are 0 (background) and 1..K.
    num_objects: int = 3

    # --- background motion fit -------------------------------------------
    #: Parametric background model: ``'homography'`` (8 dof) or ``'affine'`` (6 dof).
    model: str = "homography"
    #: Number of pixels sampled (without replacement) per direction for the fit.
    num_points: int = 1024
    #: Number of RANSAC hypotheses (minimal samples) per direction.
    ransac_iters: int = 256
    #: RANSAC inlier threshold on the end-point error, in pixels.
    ransac_thresh: float = 0.5
    #: Weighted least-squares refinement rounds on the inliers of the best hypothesis.
    refine_iters: int = 2
    #: Width of the border band (fraction of min(H, W)) whose points get ``border_weight``.
    border_frac: float = 0.15
    #: RANSAC scoring weight of points in the border band (interior points weigh 1).
    border_weight: float = 4.0
    #: Down-weighting of points covered by last frame's objects: weight *= 1 - prev_fg_weight * memory.
    prev_fg_weight: float = 0.5

    # --- residual -> foreground ------------------------------------------
    #: How forward and backward residuals are combined: ``'mean'``, ``'min'``, ``'max'`` or ``'geo'``.
    combine: str = "mean"
    #: Absolute floor of the foreground threshold on the residual, in pixels.
    abs_thresh: float = 0.1
    #: Foreground threshold as a multiple of the robust residual scale.
    rel_thresh: float = 2.0
    #: Foreground threshold as a fraction of the median background (model) flow magnitude;
    #: flow errors grow with the motion, so fast camera motion needs a larger margin.
    mag_rel: float = 0.2
    #: Quantile of the (RANSAC-weighted) sampled residuals used as the robust noise scale.
    scale_quantile: float = 0.5
    #: Hysteresis growth level (in units of the threshold): regions extend down to this score.
    hyst_low: float = 1.0
    #: Hysteresis seed level (in units of the threshold); regions must reach it somewhere.
    hyst_high: float = 1.5
    #: Per-region refinement: a region keeps only pixels scoring above ``peak_frac`` times its
    #: ``peak_quantile`` score (flow is smooth across motion boundaries, so the residual bleeds
    #: outside the object; the half-maximum level approximates the true boundary). 0 disables.
    peak_frac: float = 0.5
    #: Quantile of a region's scores that defines its peak (robust maximum).
    peak_quantile: float = 0.9
    #: Temporal EMA weight of the (flow-warped) previous score map; 0 disables smoothing.
    ema: float = 0.3

    # --- mask clean-up ---------------------------------------------------
    #: Diameter in pixels of the elliptic kernel for opening and closing (<=1 disables).
    morph_kernel: int = 5
    #: Fill holes inside each foreground region.
    fill_holes: bool = True
    #: Components closer than this many pixels are merged into one object.
    merge_radius: int = 4
    #: Components smaller than this fraction of the image are dropped.
    min_area_frac: float = 0.003
    #: A frame whose foreground covers more than this fraction is treated as a failed fit (emptied).
    max_fg_frac: float = 0.9

    # --- identity tracking -----------------------------------------------
    #: Minimum soft IoU between a component and an object memory to continue the track.
    track_iou_thresh: float = 0.1
    #: A leftover component with at least this fraction inside a matched memory is merged into it.
    absorb_frac: float = 0.5
    #: Update rate of an object's memory mask with its current mask (1 = replace).
    memory_rate: float = 1.0
    #: Frames an unseen object keeps its index (and memory) before the index is freed.
    max_age: int = 15
    #: An object that stops being detected (e.g. it stopped moving) keeps being reported at its
    #: flow-warped last mask for this many frames (0 disables).
    hold_frames: int = 5
    #: Re-identification radius (fraction of the image diagonal): a component that overlaps no
    #: memory may continue the track whose last centroid is this close (0 disables).
    reid_dist: float = 0.15
    #: Objects that touch or cross become one component; when at least two recent tracks (seen
    #: within ``hold_frames``) each have at least this fraction of their (flow-warped) memory inside
    #: one component, the component is split between them (each pixel to the nearest memory), so
    #: both keep their identity through the crossing. 0 disables (one object takes the whole blob).
    split_merged: float = 0.5


# ---------------------------------------------------------------------------
# background motion fit
# ---------------------------------------------------------------------------


def _apply(Hm: np.ndarray, x: np.ndarray, y: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Apply 3x3 matrices ``Hm`` [..., 3, 3] to points (x, y) broadcasting over the last axis."""
    a = Hm[..., 0, 0, None] * x + Hm[..., 0, 1, None] * y + Hm[..., 0, 2, None]
    b = Hm[..., 1, 0, None] * x + Hm[..., 1, 1, None] * y + Hm[..., 1, 2, None]
    c = Hm[..., 2, 0, None] * x + Hm[..., 2, 1, None] * y + Hm[..., 2, 2, None]
    c = np.where(np.abs(c) < 1e-8, 1e-8, c)
    return a / c, b / c


def _design(x, y, xd, yd, model: str):
    """Linear system rows for the model in normalised coordinates.

    Returns (A, b) with shapes [..., 2n, p] and [..., 2n] where p = 8 (homography,
    h33 = 1) or 6 (affine)."""
    one = np.ones_like(x)
    zero = np.zeros_like(x)
    if model == "homography":
        r1 = np.stack([x, y, one, zero, zero, zero, -x * xd, -y * xd], -1)
        r2 = np.stack([zero, zero, zero, x, y, one, -x * yd, -y * yd], -1)
    else:
        r1 = np.stack([x, y, one, zero, zero, zero], -1)
        r2 = np.stack([zero, zero, zero, x, y, one], -1)
    A = np.concatenate([r1, r2], -2)
    b = np.concatenate([xd, yd], -1)
    return A, b


def _to_matrix(h: np.ndarray, model: str) -> np.ndarray:
    """Parameter vectors [..., p] -> 3x3 matrices [..., 3, 3]."""
    shp = h.shape[:-1]
    M = np.zeros(shp + (3, 3), dtype=np.float64)
    M[..., 0, :] = h[..., 0:3]
    M[..., 1, :] = h[..., 3:6]
    if model == "homography":
        M[..., 2, 0:2] = h[..., 6:8]
    M[..., 2, 2] = 1.0
    return M


def fit_background_motion(
    src: np.ndarray,
    dst: np.ndarray,
    weights: np.ndarray,
    cfg: BaselineConfig,
    rng: np.random.Generator,
) -> Tuple[np.ndarray, np.ndarray]:
    """Weighted RANSAC fit of the dominant motion ``src -> dst``.

    Args:
        src, dst: [N, 2] pixel coordinates.
        weights: [N] non-negative scoring weights.
    Returns:
        (M, inliers): 3x3 matrix mapping src to dst in pixel coordinates and the
        boolean inlier mask of the final model.
    """
    model = cfg.model
    if model not in ("homography", "affine"):
        raise ValueError(f"unknown model {model!r}")
    n = src.shape[0]
    k = 4 if model == "homography" else 3
    # normalise coordinates for conditioning
    c = src.mean(0)
    s = 1.0 / max(float(np.abs(src - c).max()), 1e-6)
    T = np.array([[s, 0, -s * c[0]], [0, s, -s * c[1]], [0, 0, 1.0]])
    Ti = np.linalg.inv(T)
    xs, ys = (src[:, 0] - c[0]) * s, (src[:, 1] - c[1]) * s
    xd, yd = (dst[:, 0] - c[0]) * s, (dst[:, 1] - c[1]) * s
    thr2 = (cfg.ransac_thresh * s) ** 2

    def denorm(Mn):
        return Ti @ Mn @ T

    if n < k:
        return np.eye(3), np.zeros(n, bool)

    # minimal samples: k distinct points per hypothesis
    nh = max(1, int(cfg.ransac_iters))
    idx = rng.integers(0, n, (nh, k))
    for _ in range(8):  # redraw the (rare) samples with a repeated point
        srt = np.sort(idx, axis=1)
        bad = (srt[:, 1:] == srt[:, :-1]).any(1)
        if not bad.any():
            break
        idx[bad] = rng.integers(0, n, (int(bad.sum()), k))
    A, b = _design(xs[idx], ys[idx], xd[idx], yd[idx], model)  # [nh, 2k, p]
    det = np.linalg.det(A)
    ok = np.abs(det) > 1e-10
    best_M = np.eye(3)
    best_in = np.zeros(n, bool)
    if ok.any():
        A = A[ok]
        b = b[ok]
        h = np.linalg.solve(A, b[..., None])[..., 0]
        Ms = _to_matrix(h, model)  # normalised coordinates
        px, py = _apply(Ms.astype(np.float32), xs[None].astype(np.float32), ys[None].astype(np.float32))
        err = (px - xd[None].astype(np.float32)) ** 2 + (py - yd[None].astype(np.float32)) ** 2
        inl = err < thr2
        score = (inl * weights[None]).sum(1)
        j = int(np.argmax(score))
        best_in = inl[j]
        Mn = Ms[j]
        # weighted least-squares refinement on the inliers
        for _ in range(max(0, int(cfg.refine_iters))):
            if best_in.sum() < 2 * k:
                break
            sel = best_in
            A1, b1 = _design(xs[sel], ys[sel], xd[sel], yd[sel], model)
            w = np.sqrt(np.concatenate([weights[sel], weights[sel]]))[:, None]
            h1, *_ = np.linalg.lstsq(A1 * w, b1 * w[:, 0], rcond=None)
            Mr = _to_matrix(h1, model)
            px, py = _apply(Mr, xs, ys)
            e1 = (px - xd) ** 2 + (py - yd) ** 2
            new_in = e1 < thr2
            if (new_in * weights).sum() < (best_in * weights).sum() * 0.9:
                break
            Mn, best_in = Mr, new_in
        best_M = denorm(Mn)
        best_M = best_M / best_M[2, 2] if abs(best_M[2, 2]) > 1e-12 else best_M
    return best_M, best_in


def _border_weights(H: int, W: int, cfg: BaselineConfig) -> np.ndarray:
    band = max(1.0, cfg.border_frac * min(H, W))
    yy = np.arange(H, dtype=np.float32)[:, None]
    xx = np.arange(W, dtype=np.float32)[None, :]
    d = np.minimum(np.minimum(yy, H - 1 - yy), np.minimum(xx, W - 1 - xx))
    return np.where(d < band, cfg.border_weight, 1.0).astype(np.float32)


def residual_motion(
    flow2: np.ndarray,
    cfg: BaselineConfig,
    rng: np.random.Generator,
    weights: Optional[np.ndarray] = None,
) -> Tuple[np.ndarray, dict]:
    """Residual of a flow field w.r.t. its dominant parametric motion.

    Args:
        flow2: [2, H, W] flow (u, v) in pixels.
        cfg: configuration (model, sampling and RANSAC parameters).
        rng: numpy Generator used for point sampling and RANSAC.
        weights: optional [H, W] RANSAC scoring weights (default: border prior).
    Returns:
        (residual, params): residual [H, W] float32 end-point distance between
        the flow and the fitted model's flow; params is a dict with ``'matrix'``
        (3x3, pixel coordinates, maps p to p + flow(p)), ``'scale'`` (robust
        residual scale: weighted quantile over the sampled points, px),
        ``'bg_mag'`` (median magnitude of the model flow, px) and
        ``'inlier_frac'`` (fraction of sampled points that are RANSAC inliers).
    """
    flow2 = np.nan_to_num(np.asarray(flow2, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    _, H, W = flow2.shape
    if weights is None:
        weights = _border_weights(H, W, cfg)
    npx = H * W
    m = min(int(cfg.num_points), npx)
    sel = np.sort(rng.choice(npx, m, replace=False))
    sy, sx = np.divmod(sel, W)
    u = flow2[0].reshape(-1)[sel]
    v = flow2[1].reshape(-1)[sel]
    src = np.stack([sx, sy], 1).astype(np.float64)
    dst = src + np.stack([u, v], 1)
    w = weights.reshape(-1)[sel].astype(np.float64)
    M, inl = fit_background_motion(src, dst, w, cfg, rng)
    gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
    px, py = _apply(M.astype(np.float32), gx, gy)
    ru = flow2[0] - (px - gx)
    rv = flow2[1] - (py - gy)
    res = np.sqrt(ru * ru + rv * rv).astype(np.float32)
    rs = res.reshape(-1)[sel]
    # robust noise scale: weighted quantile of the residuals of all sampled points,
    # with the RANSAC weights (so the background dominates, as in the fit)
    order = np.argsort(rs, kind="stable")
    cw = np.cumsum(w[order])
    if m and cw[-1] > 0:
        pos = int(np.searchsorted(cw, cfg.scale_quantile * cw[-1]))
        scale = float(rs[order[min(pos, m - 1)]])
    else:
        scale = 0.0
    bg_mag = float(np.median(np.hypot(px - gx, py - gy)))
    return res, {"matrix": M, "scale": scale, "bg_mag": bg_mag,
                 "inlier_frac": float(inl.mean()) if m else 0.0}


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def _warp_back(img: np.ndarray, bwd: np.ndarray, gx: np.ndarray, gy: np.ndarray) -> np.ndarray:
    """Bring a map from frame t-1 into frame t: out(p) = img(p + bwd(p))."""
    mx = (gx + bwd[0]).astype(np.float32)
    my = (gy + bwd[1]).astype(np.float32)
    return cv2.remap(img.astype(np.float32), mx, my, interpolation=cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _combine(a: np.ndarray, b: np.ndarray, how: str) -> np.ndarray:
    if how == "mean":
        return 0.5 * (a + b)
    if how == "min":
        return np.minimum(a, b)
    if how == "max":
        return np.maximum(a, b)
    if how == "geo":
        return np.sqrt(a * b)
    raise ValueError(f"unknown combine {how!r}")


def _centroid(m: np.ndarray) -> np.ndarray:
    """(x, y) centroid of a (soft) mask; image centre for an empty mask."""
    H, W = m.shape
    tot = float(m.sum())
    if tot <= 1e-6:
        return np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    ys = m.sum(1) @ np.arange(H) / tot
    xs = m.sum(0) @ np.arange(W) / tot
    return np.array([xs, ys])


class _Track:
    """State of one object index: soft memory mask (in the current frame's
    coordinates), last centroid and number of frames since it was last seen."""

    __slots__ = ("memory", "age", "centroid")

    def __init__(self, memory: np.ndarray):
        self.memory = memory
        self.age = 0
        self.centroid = _centroid(memory)


# ---------------------------------------------------------------------------
# streaming segmenter
# ---------------------------------------------------------------------------


class MotionBaseline:
    """Streaming flow-only motion segmenter; call :meth:`step` once per frame."""

    def __init__(self, cfg: Optional[BaselineConfig] = None, seed: int = 0):
        self.cfg = cfg if cfg is not None else BaselineConfig()
        if self.cfg.num_objects < 1 or self.cfg.num_objects > 255:
            raise ValueError("num_objects must be in 1..255")
        if self.cfg.model not in ("homography", "affine"):
            raise ValueError(f"unknown model {self.cfg.model!r}")
        if self.cfg.combine not in ("mean", "min", "max", "geo"):
            raise ValueError(f"unknown combine {self.cfg.combine!r}")
        if not 0.0 <= self.cfg.split_merged <= 1.0:
            raise ValueError(f"split_merged must be in [0, 1] (0 = off), got {self.cfg.split_merged!r}")
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Forget all temporal state (start of a new video)."""
        self.rng = np.random.default_rng(self.seed)
        self._shape: Optional[Tuple[int, int]] = None
        self._prev_score: Optional[np.ndarray] = None
        self._tracks: dict = {}  # index (1..K) -> _Track
        self._kernel = None

    # -- per-frame pieces ---------------------------------------------------
    def _setup(self, H: int, W: int) -> None:
        self._shape = (H, W)
        gx, gy = np.meshgrid(np.arange(W, dtype=np.float32), np.arange(H, dtype=np.float32))
        self._gx, self._gy = gx, gy
        self._bw = _border_weights(H, W, self.cfg)
        k = int(self.cfg.morph_kernel)
        self._kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)) if k > 1 else None
        r = int(self.cfg.merge_radius)
        self._merge_kernel = (cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
                              if r > 0 else None)

    def _score(self, flow4: np.ndarray, prev_mem: Optional[np.ndarray]) -> np.ndarray:
        cfg = self.cfg
        w = self._bw
        if prev_mem is not None and cfg.prev_fg_weight > 0:
            w = w * (1.0 - cfg.prev_fg_weight * np.clip(prev_mem, 0.0, 1.0))
        rf, pf = residual_motion(flow4[0:2], cfg, self.rng, w)
        rb, pb = residual_motion(flow4[2:4], cfg, self.rng, w)
        tf = max(cfg.abs_thresh, cfg.rel_thresh * pf["scale"], cfg.mag_rel * pf["bg_mag"])
        tb = max(cfg.abs_thresh, cfg.rel_thresh * pb["scale"], cfg.mag_rel * pb["bg_mag"])
        return _combine(rf / tf, rb / tb, cfg.combine)

    def _mask(self, score: np.ndarray) -> np.ndarray:
        cfg = self.cfg
        low = score > cfg.hyst_low
        if cfg.hyst_high > 1.0:
            lab, n = ndimage.label(low)
            if n:
                keep = np.zeros(n + 1, bool)
                keep[np.unique(lab[score > cfg.hyst_high])] = True
                keep[0] = False
                low = keep[lab]
        if cfg.peak_frac > 0 and low.any():
            lab, n = ndimage.label(low)
            idx = lab.ravel()
            sv = score.ravel()
            order = np.lexsort((sv, idx))  # sorted by label, then score
            counts = np.bincount(idx, minlength=n + 1)
            starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
            thr = np.full(n + 1, np.inf, np.float32)
            for i in range(1, n + 1):
                c = counts[i]
                q = sv[order[starts[i] + min(c - 1, int(cfg.peak_quantile * (c - 1)))]]
                thr[i] = max(cfg.hyst_low, cfg.peak_frac * q)
            low = score >= thr[lab]
        m = low.astype(np.uint8)
        if self._kernel is not None:
            m = cv2.morphologyEx(m, cv2.MORPH_OPEN, self._kernel)
            m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, self._kernel)
        mask = m.astype(bool)
        if cfg.fill_holes:
            mask = ndimage.binary_fill_holes(mask)
        if mask.mean() > cfg.max_fg_frac:
            mask[:] = False
        return mask

    def _components(self, mask: np.ndarray) -> List[np.ndarray]:
        cfg = self.cfg
        H, W = mask.shape
        if not mask.any():
            return []
        if self._merge_kernel is not None:
            grown = cv2.dilate(mask.astype(np.uint8), self._merge_kernel)
            lab, n = ndimage.label(grown)
            lab = lab * mask
        else:
            lab, n = ndimage.label(mask)
        if n == 0:
            return []
        areas = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        min_area = cfg.min_area_frac * H * W
        order = [i for i in np.argsort(-areas, kind="stable") if areas[i] >= max(min_area, 1)]
        return [lab == (i + 1) for i in order]

    def _split_merged(self, comps: List[np.ndarray]) -> List[np.ndarray]:
        """Split each component that holds most of the memory of two or more recent tracks
        between them: a pixel goes to the track whose memory is nearest (inside several: the
        largest memory value)."""
        cfg = self.cfg
        recent = [t for t in self._tracks.values() if t.age <= cfg.hold_frames]
        if len(recent) < 2 or not comps:
            return comps
        mems = [(t.memory >= 0.5) for t in recent]
        areas = [int(m.sum()) for m in mems]
        out: List[np.ndarray] = []
        for c in comps:
            inside = [k for k, m in enumerate(mems)
                      if areas[k] > 0 and (m & c).sum() >= cfg.split_merged * areas[k]]
            if len(inside) < 2:
                out.append(c)
                continue
            cost = np.stack([cv2.distanceTransform((~mems[k]).astype(np.uint8), cv2.DIST_L2, 3)
                             - recent[k].memory for k in inside])
            owner = np.argmin(cost, 0)
            parts = [c & (owner == i) for i in range(len(inside))]
            out.extend(p for p in parts if p.any())
        return out

    def _track(self, comps: List[np.ndarray]) -> np.ndarray:
        cfg = self.cfg
        H, W = self._shape
        K = cfg.num_objects
        out = np.zeros((H, W), np.uint8)
        if cfg.split_merged > 0:
            comps = self._split_merged(comps)
        ids = sorted(self._tracks)
        assigned = {}  # comp index -> track id
        if comps and ids:
            cm = np.stack([c.reshape(-1) for c in comps]).astype(np.float32)  # [C, P]
            mm = np.stack([self._tracks[i].memory.reshape(-1) for i in ids])  # [T, P]
            inter = cm @ mm.T
            carea = cm.sum(1)
            union = carea[:, None] + mm.sum(1)[None, :] - inter
            iou = inter / np.maximum(union, 1e-6)
            aff = np.where(iou >= cfg.track_iou_thresh, iou, 0.0)
            if cfg.reid_dist > 0:
                # fallback for lost / jumping objects: centroid proximity, always
                # ranked below any IoU match
                diag = float(np.hypot(H, W))
                cc = np.stack([_centroid(c) for c in comps])
                tc = np.stack([self._tracks[i].centroid for i in ids])
                d = np.linalg.norm(cc[:, None] - tc[None], axis=-1) / diag
                near = cfg.track_iou_thresh * 0.5 * np.clip(1.0 - d / cfg.reid_dist, 0.0, None)
                aff = np.where(aff > 0, aff, near)
            r, c = linear_sum_assignment(-aff)
            for i, j in zip(r, c):
                if aff[i, j] > 0:
                    assigned[i] = ids[j]
            # absorb leftover fragments lying mostly inside a matched memory
            frac = inter / np.maximum(carea[:, None], 1e-6)
            cols = sorted({ids.index(t) for t in assigned.values()})
            if cols:
                for i in range(len(comps)):
                    if i in assigned:
                        continue
                    j = cols[int(np.argmax(frac[i, cols]))]
                    if frac[i, j] >= cfg.absorb_frac:
                        assigned[i] = ids[j]
        # new objects take free indices, largest component first
        free = [i for i in range(1, K + 1) if i not in self._tracks]
        for i in range(len(comps)):
            if i in assigned or not free:
                continue
            assigned[i] = free.pop(0)
        # paint & update memories
        seen = {}
        for i, tid in assigned.items():
            seen.setdefault(tid, np.zeros((H, W), bool))
            seen[tid] |= comps[i]
        for tid, m in seen.items():
            out[m & (out == 0)] = tid
            mf = m.astype(np.float32)
            if tid in self._tracks:
                tr = self._tracks[tid]
                tr.memory = (1 - cfg.memory_rate) * tr.memory + cfg.memory_rate * mf
                tr.age = 0
            else:
                tr = self._tracks[tid] = _Track(mf)
            tr.centroid = _centroid(m)
        for tid in list(self._tracks):
            if tid in seen:
                continue
            tr = self._tracks[tid]
            tr.age += 1
            if tr.age <= cfg.hold_frames:
                out[(tr.memory >= 0.5) & (out == 0)] = tid
            if tr.age > cfg.max_age:
                del self._tracks[tid]
        return out

    def step(self, flow4: np.ndarray) -> np.ndarray:
        """Segment the next frame.

        Args:
            flow4: [4, H, W] float array ``[u_fwd, v_fwd, u_bwd, v_bwd]``.
        Returns:
            uint8 [H, W] label map (0 background, 1..K objects).
        """
        flow4 = np.asarray(flow4, dtype=np.float32)
        if flow4.ndim != 3 or flow4.shape[0] != 4:
            raise ValueError(f"expected flow of shape [4,H,W], got {flow4.shape}")
        flow4 = np.nan_to_num(flow4, nan=0.0, posinf=0.0, neginf=0.0)
        H, W = flow4.shape[1:]
        if self._shape != (H, W):
            if self._shape is not None:
                self._prev_score = None
                self._tracks = {}
            self._setup(H, W)
        bwd = flow4[2:4]
        # carry temporal state into the current frame
        for tr in self._tracks.values():
            tr.memory = _warp_back(tr.memory, bwd, self._gx, self._gy)
        prev_mem = None
        if self._tracks:
            prev_mem = np.max(np.stack([t.memory for t in self._tracks.values()]), 0)
        score = self._score(flow4, prev_mem)
        if self.cfg.ema > 0 and self._prev_score is not None:
            score = (1 - self.cfg.ema) * score + self.cfg.ema * _warp_back(
                self._prev_score, bwd, self._gx, self._gy)
        self._prev_score = score
        mask = self._mask(score)
        return self._track(self._components(mask))


def motion_segment(
    flows: Iterable[np.ndarray], cfg: Optional[BaselineConfig] = None, seed: int = 0
) -> Iterator[np.ndarray]:
    """Lazily segment a stream of [4, H, W] flows; yields one uint8 label map per frame."""
    seg = MotionBaseline(cfg if cfg is not None else BaselineConfig(), seed=seed)
    for f in flows:
        yield seg.step(f)
