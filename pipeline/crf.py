"""Dense CRF post-processing of per-object mask probabilities (stage ``crf``).

The refinement line of work applies a fully connected CRF (Krähenbühl &
Koltun 2011, through ``pydensecrf``) to the final masks at the output (GT)
resolution, with the same setting throughout (docs: method-notes, "CRF"):

* unary ``-log(p)`` of the per-pixel class probabilities (background plus K
  object slots), clipped at :attr:`CRFConfig.prob_floor` before the log;
* a Gaussian (smoothness) kernel, ``sxy = 1``, Potts compatibility 3;
* a bilateral (appearance) kernel, ``sxy = 67``, ``srgb = 3``, compatibility 4;
* 10 mean-field iterations.

Class probabilities from object probabilities (:func:`label_probabilities`)
---------------------------------------------------------------------------
The models give one probability ``p_k`` per object slot ``k`` (sigmoid
outputs, not a softmax over slots). Class 0 is background, class ``k + 1`` is
slot ``k``. With ``background="max"`` (default) the background score is
``1 - max_k p_k`` and the K + 1 scores are then divided by their sum.

This reproduces the pipeline's label rule (``k + 1`` where ``p_k`` is the
largest and ``> 0.5``, else 0; ``modal_labels``) exactly under argmax:

* before normalisation, ``bg = 1 - m`` with ``m = max_k p_k``; ``bg > m`` iff
  ``m < 0.5`` and ``bg < m`` iff ``m > 0.5``; at ``m == 0.5`` the two tie and
  ``argmax`` returns the first index, i.e. background, as the rule's strict
  ``> 0.5`` does. In floating point ``1 - m`` is exact for ``m >= 0.5``
  (Sterbenz) and ``> 0.5`` for ``m < 0.5``, so the comparison is exact too.
  Among objects the argmax is the argmax of ``p`` (first index on ties, like
  ``torch.max``/``np.argmax`` in the rule).
* normalising divides every class by the same positive sum (it is
  ``>= 1 - m + m = 1``), which keeps the order of the classes, hence the
  argmax. The one exception is rounding: two scores a few ulps apart can
  become equal after the division (then the lower index wins); this cannot
  happen for scores that differ by more than float32 resolution.

``background="product"`` uses ``prod_k (1 - p_k)`` (no slot covers the pixel,
slots taken as independent). It is a softer background that does *not*
follow the label rule exactly (e.g. two slots at 0.45 give an object label);
provided for experiments only.

Colour order
------------
pydensecrf's bilateral kernel uses the image exactly as given (three 8-bit
channels, Euclidean distance scaled by ``srgb``); it has no notion of RGB or
BGR. The distances are the same under a channel permutation, so the order does
not change the result as long as it is consistent; the pipeline passes the
frames store's ``rgb_full`` (RGB) as is. The array must be C-contiguous uint8
``[H, W, 3]`` (:func:`dense_crf` makes it so).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

__all__ = [
    "BACKGROUND_MODES",
    "CRFConfig",
    "ModalFromAmodal",
    "dense_crf",
    "label_probabilities",
    "refine_sequence",
    "upsample_probs",
]

BACKGROUND_MODES = ("max", "product")


def _densecrf():
    """The ``pydensecrf.densecrf`` module, or a clear ImportError."""
    try:
        import pydensecrf.densecrf as dcrf  # type: ignore
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the CRF stage needs pydensecrf (Krähenbühl's dense CRF bindings), which is not "
            "installed: run `pip install pydensecrf2` (it builds from source, a few minutes; "
            f"needs a C++ compiler) [{e}]") from e
    return dcrf


@dataclass(frozen=True)
class CRFConfig:
    """Dense CRF setting (defaults: the one used across this research line).

    gaussian_sxy: spatial std (pixels) of the Gaussian smoothness kernel.
    gaussian_compat: Potts weight of the Gaussian kernel (0 disables it).
    bilateral_sxy: spatial std (pixels) of the bilateral appearance kernel.
    bilateral_srgb: colour std (8-bit intensity units) of the bilateral kernel.
    bilateral_compat: Potts weight of the bilateral kernel (0 disables it).
    iterations: mean-field iterations.
    prob_floor: probabilities are clipped to ``[prob_floor, 1]`` before ``-log``
        (bounds the unary at ``-log(prob_floor)``, 11.5 for 1e-5).
    background: how the background class probability is built from the
        object probabilities: ``max`` (``1 - max_k p_k``; argmax = the
        pipeline's label rule) or ``product`` (``prod_k (1 - p_k)``).
    """

    gaussian_sxy: float = 1.0
    gaussian_compat: float = 3.0
    bilateral_sxy: float = 67.0
    bilateral_srgb: float = 3.0
    bilateral_compat: float = 4.0
    iterations: int = 10
    prob_floor: float = 1e-5
    background: str = "max"
    max_side: int | None = None
    """Longest image side (pixels) the CRF runs at; ``None`` = the output resolution (paper).
    A smaller value is much faster (cost ~ pixels): the frame and probabilities are resized to
    it, the spatial stds are scaled by the same factor (the Gaussian one kept >= 1 px), and the labels
    are resized back (nearest)."""

    def __post_init__(self) -> None:
        def number(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
                raise ValueError(f"crf.{name} must be a number, got {v!r}")  # noqa: TRY004
            v = float(v)
            if not math.isfinite(v):
                raise ValueError(f"crf.{name} must be finite, got {v!r}")
            return v

        for name in ("gaussian_sxy", "bilateral_sxy", "bilateral_srgb"):
            v = number(name)
            if v <= 0:
                raise ValueError(f"crf.{name} must be > 0, got {v!r}")
            object.__setattr__(self, name, v)
        for name in ("gaussian_compat", "bilateral_compat"):
            v = number(name)
            if v < 0:
                raise ValueError(f"crf.{name} must be >= 0 (0 disables the kernel), got {v!r}")
            object.__setattr__(self, name, v)
        it = self.iterations
        if isinstance(it, bool) or not isinstance(it, (int, np.integer, float)) or \
                (isinstance(it, float) and not it.is_integer()):
            raise ValueError(f"crf.iterations must be an integer, got {it!r}")
        if int(it) < 1:
            raise ValueError(f"crf.iterations must be >= 1, got {it!r}")
        object.__setattr__(self, "iterations", int(it))
        v = number("prob_floor")
        if not 0 < v < 0.5:
            raise ValueError(f"crf.prob_floor must be in (0, 0.5), got {v!r}")
        object.__setattr__(self, "prob_floor", v)
        if self.background not in BACKGROUND_MODES:
            raise ValueError(f"crf.background must be one of {BACKGROUND_MODES}, got {self.background!r}")
        ms = self.max_side
        if ms is not None:
            if isinstance(ms, bool) or not isinstance(ms, (int, np.integer)) or int(ms) < 16:
                raise ValueError(f"crf.max_side must be null or an integer >= 16, got {ms!r}")
            object.__setattr__(self, "max_side", int(ms))

    def scaled(self, factor: float) -> "CRFConfig":
        """The same setting for an image resized by ``factor``: the spatial stds multiplied by it,
        the Gaussian one kept at >= 1 px (a sub-pixel std barely smooths, and makes the
        permutohedral lattice of pydensecrf ~7x slower: 2.2 s vs 0.3 s per 240x427 frame)."""
        return dataclasses.replace(self, gaussian_sxy=max(1.0, self.gaussian_sxy * factor),
                                   bilateral_sxy=self.bilateral_sxy * factor)

    @classmethod
    def from_params(cls, params: Mapping[str, Any] | None) -> CRFConfig:
        """From a params section (``None`` / ``{}`` = defaults); unknown keys are a ValueError."""
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(params) - known)
        if unknown:
            raise ValueError(f"crf: unknown key(s) {unknown} (known: {sorted(known)})")
        return cls(**params)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------
# class probabilities
# ----------------------------------------------------------------------------------------
def label_probabilities(obj_probs: np.ndarray, background: str = "max") -> np.ndarray:
    """Class probabilities ``[K+1, h, w]`` float32 from object probabilities ``[K, h, w]``.

    Class 0 = background (``1 - max_k p_k`` for ``background="max"``,
    ``prod_k (1 - p_k)`` for ``"product"``), class ``k + 1`` = slot ``k``; the
    result sums to 1 over classes. Inputs are clipped to ``[0, 1]``. With
    ``"max"``, ``argmax`` over classes equals the label rule (see the module
    docstring for why, and for the one rounding caveat).
    """
    p = np.asarray(obj_probs, dtype=np.float32)
    if p.ndim != 3:
        raise ValueError(f"object probabilities must be [K, h, w], got shape {p.shape}")
    if not np.isfinite(p).all():
        raise ValueError("object probabilities contain NaN or inf")
    p = np.clip(p, 0.0, 1.0)
    out = np.empty((p.shape[0] + 1,) + p.shape[1:], np.float32)
    if p.shape[0] == 0:
        out[0] = 1.0
        return out
    if background == "max":
        out[0] = 1.0 - p.max(axis=0)
    elif background == "product":
        out[0] = np.prod(1.0 - p, axis=0)
    else:
        raise ValueError(f"background must be one of {BACKGROUND_MODES}, got {background!r}")
    out[1:] = p
    total = out.sum(axis=0)
    # "max": total >= 1. "product": total is 0 only where no class has mass, impossible since
    # p_k = 0 for all k gives bg = 1; keep a guard anyway.
    out /= np.maximum(total, np.float32(1e-12))
    return out


def upsample_probs(probs: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[K, h, w]`` probabilities to ``size`` = (H, W), float32
    (pixel-centre aligned, as ``cv2.resize`` / ``align_corners=False``)."""
    import cv2

    p = np.asarray(probs, dtype=np.float32)
    K, h, w = p.shape
    H, W = int(size[0]), int(size[1])
    if (h, w) == (H, W):
        return np.ascontiguousarray(p)
    out = np.empty((K, H, W), np.float32)
    # slot by slot: cv2 drops a singleton channel axis and wants [h, w, C] layout otherwise
    for k in range(K):
        out[k] = cv2.resize(p[k], (W, H), interpolation=cv2.INTER_LINEAR)
    return out


# ----------------------------------------------------------------------------------------
# CRF
# ----------------------------------------------------------------------------------------
def dense_crf(image: np.ndarray, probs: np.ndarray, cfg: CRFConfig | None = None, *,
              return_probs: bool = False):
    """Dense CRF labels of one image.

    Args:
        image: ``uint8 [H, W, 3]`` (RGB in the pipeline; any consistent order works).
        probs: ``float [C, H, W]`` class probabilities summing to 1 over ``C``
            (e.g. from :func:`label_probabilities`).
        cfg: the setting (default :class:`CRFConfig()`).
        return_probs: also return the refined marginals ``float32 [C, H, W]``.

    Returns:
        ``labels uint8 [H, W]`` (argmax of the refined marginals), or
        ``(labels, refined)`` with ``return_probs``.
    """
    cfg = cfg or CRFConfig()
    dcrf = _densecrf()
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"image must be uint8 [H, W, 3], got {img.dtype} {img.shape}")
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim != 3 or p.shape[1:] != img.shape[:2]:
        raise ValueError(f"probs must be [C, H, W] with (H, W) = {img.shape[:2]}, got {p.shape}")
    C, H, W = p.shape
    if C < 1 or C > 255:
        raise ValueError(f"number of classes must be in [1, 255] for uint8 labels, got {C}")
    # pydensecrf takes a writable C-contiguous buffer (it does not write to it); zarr reads,
    # memory maps and broadcast views can be read-only, so copy those
    img = np.ascontiguousarray(img)
    if not img.flags.writeable:
        img = img.copy()
    unary = -np.log(np.clip(p, cfg.prob_floor, 1.0)).reshape(C, H * W)
    unary = np.ascontiguousarray(unary, dtype=np.float32)
    crf = dcrf.DenseCRF2D(W, H, C)
    crf.setUnaryEnergy(unary)
    if cfg.gaussian_compat > 0:
        crf.addPairwiseGaussian(sxy=cfg.gaussian_sxy, compat=cfg.gaussian_compat)
    if cfg.bilateral_compat > 0:
        crf.addPairwiseBilateral(sxy=cfg.bilateral_sxy, srgb=cfg.bilateral_srgb, rgbim=img,
                                 compat=cfg.bilateral_compat)
    q = np.asarray(crf.inference(cfg.iterations), dtype=np.float32).reshape(C, H, W)
    labels = q.argmax(axis=0).astype(np.uint8)
    return (labels, q) if return_probs else labels


def refine_sequence(frames_full: Any, probs: Any, cfg: CRFConfig | None = None, *,
                    progress: bool = True, desc: str = "crf") -> Iterator[tuple[int, np.ndarray]]:
    """CRF labels of a whole sequence, one frame at a time.

    Args:
        frames_full: ``[T, H, W, 3]`` uint8 array-like (e.g. the frames store's
            ``rgb_full`` zarr array), indexed ``frames_full[t]``.
        probs: ``[T, K, h, w]`` object probabilities (e.g. corrector ``probs``
            float16 at the working resolution), indexed ``probs[t]``.
        cfg: the CRF setting.
        progress: show a tqdm bar.

    Yields:
        ``(t, labels uint8 [H, W])`` in frame order: object probabilities
        upsampled bilinearly to (H, W), turned into class probabilities
        (:func:`label_probabilities` with ``cfg.background``), then
        :func:`dense_crf`. Only one frame of each input is read at a time, so
        memory does not grow with T.
    """
    from tqdm.auto import tqdm

    cfg = cfg or CRFConfig()
    _densecrf()  # fail before reading anything when the dependency is missing
    fshape, pshape = tuple(frames_full.shape), tuple(probs.shape)
    if len(fshape) != 4 or fshape[3] != 3:
        raise ValueError(f"frames must be [T, H, W, 3], got shape {fshape}")
    if len(pshape) != 4:
        raise ValueError(f"probabilities must be [T, K, h, w], got shape {pshape}")
    if fshape[0] != pshape[0]:
        raise ValueError(f"frames have {fshape[0]} frames but probabilities have {pshape[0]}")
    T, H, W = fshape[:3]
    f = 1.0 if cfg.max_side is None else min(1.0, cfg.max_side / max(H, W))
    h2, w2 = max(1, round(H * f)), max(1, round(W * f))
    run_cfg = cfg.scaled(f) if f < 1.0 else cfg
    for t in tqdm(range(T), total=T, unit="frame", desc=desc, disable=not progress):
        image = np.asarray(frames_full[t])
        if f < 1.0:
            image = cv2.resize(image, (w2, h2), interpolation=cv2.INTER_AREA)
        p = upsample_probs(np.asarray(probs[t]), (h2, w2))
        lab = dense_crf(image, label_probabilities(p, cfg.background), run_cfg)
        if f < 1.0:
            lab = cv2.resize(lab, (W, H), interpolation=cv2.INTER_NEAREST)
        yield t, lab


class ModalFromAmodal:
    """Per-frame modal probabilities ``[K, h, w]`` from a proposals-style store's ``amodal``
    ``[T, K, h, w]`` and ``order`` ``[T, K]`` (depth score, higher = nearer the front), by
    front-to-back composition (OCLR eq. 2, :func:`pipeline.oclr.model.compose_modal`).

    ``view[t]`` reads and composes frame ``t`` only. Without ``order`` the amodal
    probabilities are returned as they are. The proposals stage blends modal masks of
    overlapping windows, so recomposing from the stored (blended) amodal/order matches its
    ``labels`` exactly outside window overlaps and closely inside them.
    """

    def __init__(self, amodal: Any, order: Any | None = None):
        self.amodal, self.order = amodal, order
        self.shape = tuple(amodal.shape)
        self.dtype = np.dtype(np.float32)
        if order is not None and tuple(order.shape) != self.shape[:2]:
            raise ValueError(f"order has shape {tuple(order.shape)}, expected {self.shape[:2]}")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, t: int) -> np.ndarray:
        if not isinstance(t, (int, np.integer)):
            raise TypeError("ModalFromAmodal is read one frame at a time: view[t]")
        a = np.asarray(self.amodal[t], dtype=np.float32)
        if self.order is None:
            return a
        import torch

        from pipeline.oclr.model import compose_modal

        o = np.asarray(self.order[t], dtype=np.float32)
        return compose_modal(torch.from_numpy(a), torch.from_numpy(o), kind="score").numpy()
