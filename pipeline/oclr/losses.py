"""Training losses of OCLR (Xie et al. 2022, sect. 2.3) and Hungarian matching.

All functions work on any device and compute in float32 (safe inside
``torch.autocast``).  Conventions:

* Predictions: ``amodal_logits [B, T, K, H, W]``, ``modal_probs [B, T, K, H, W]``,
  ``order_logits [B, K]`` with higher = nearer the front (see
  :mod:`pipeline.oclr.model`).
* Ground truth per clip: ``amodal`` / ``modal`` ``[T, O, H, W]`` (bool or
  float), ``order [O]`` depth ranks with 0 = front-most (as produced by
  :func:`pipeline.synth.render_video`), ``O <= K``.  A batch is given either as
  tensors with a leading batch dimension (optionally padded, with
  ``num_objects`` saying how many objects are real) or as lists of per-clip
  tensors (different ``O`` per clip).

Loss (per clip, then averaged over the batch)::

    total = w_amodal * BCE(amodal)  +  w_boundary * boundary-BCE(amodal)
          + w_modal * BCE(modal)    +  w_order * order

* Queries are matched to GT objects per clip by the Hungarian algorithm on the
  frame-mean BCE between the amodal logits and the GT amodal masks; queries
  left unmatched are supervised toward empty masks (amodal and modal).
* ``BCE(amodal)``: mean over T, K, H, W (paper eq. 3 averages the per-frame
  pixel means over K*T).
* ``boundary-BCE``: per (frame, layer), BCE restricted to the band of pixels
  within +-``boundary_width`` px (Chebyshev) of the GT amodal edge, divided
  by the band area; averaged over K*T (layers / frames with an empty band add 0).
* ``BCE(modal)``: mean BCE of the composed modal probabilities against the GT
  modal masks.
* ``order``: for every pair of matched GT objects (a in front of b), the logistic
  ranking loss ``-log sigmoid((s_a - s_b) / tau)`` on the order scores of their
  queries (paper eq. 4, with our sign convention), averaged over the pairs.  By
  default (``order_pairs="overlap"``) only pairs whose GT amodal masks overlap in
  at least one pixel of one frame count: the order of non-interacting layers is
  undefined and, as the paper says, should not be penalised; ``"all"`` uses every
  pair.  A clip without a counted pair contributes 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

__all__ = ["DEFAULT_LOSS_WEIGHTS", "hungarian_match", "match_batch", "boundary_band", "boundary_bce",
           "order_loss", "oclr_loss", "bce_probs", "merge_loss_weights"]

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"amodal": 1.0, "boundary": 0.2, "modal": 0.1, "order": 0.05}
"""Paper / method-notes weights: amodal BCE, boundary BCE, modal BCE, order ranking."""

_EPS = 1e-6


# --------------------------------------------------------------------------- matching
@torch.no_grad()
def match_cost(pred_logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Cost matrix ``[K, O]``: mean BCE over frames and pixels of query k against object o.

    ``pred_logits [T, K, H, W]``, ``gt [T, O, H, W]``.  Uses
    ``BCE(x, y) = softplus(x) - x * y`` so no ``[K, O, T, H, W]`` tensor is built."""
    x = pred_logits.float()
    y = gt.to(device=x.device, dtype=torch.float32)
    n = x.shape[0] * x.shape[-2] * x.shape[-1]
    sp = F.softplus(x).sum(dim=(0, 2, 3))                           # [K]
    xy = torch.einsum("tkhw,tohw->ko", x, y)                        # [K, O]
    return (sp[:, None] - xy) / n


def hungarian_match(pred_logits: torch.Tensor, gt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Match the K predicted layers of one clip to its O GT objects (O <= K).

    Args:
        pred_logits: amodal logits ``[T, K, H, W]``.
        gt: GT amodal masks ``[T, O, H, W]``.

    Returns:
        ``(pred_idx, gt_idx)``: int64 tensors of length O (on ``pred_logits``'
        device), sorted by ``gt_idx``; query ``pred_idx[i]`` is matched to GT
        object ``gt_idx[i]``.  Queries not in ``pred_idx`` are unmatched.
    """
    if pred_logits.dim() != 4 or gt.dim() != 4 or pred_logits.shape[0] != gt.shape[0] \
            or pred_logits.shape[-2:] != gt.shape[-2:]:
        raise ValueError(f"expected pred [T, K, H, W] and gt [T, O, H, W], got {tuple(pred_logits.shape)} "
                         f"and {tuple(gt.shape)}")
    K, O = pred_logits.shape[1], gt.shape[1]
    if O > K:
        raise ValueError(f"{O} GT objects but only {K} queries")
    dev = pred_logits.device
    if O == 0:
        e = torch.zeros(0, dtype=torch.long, device=dev)
        return e, e.clone()
    cost = match_cost(pred_logits, gt).cpu().numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(cost)
    o = np.argsort(cols)
    return (torch.as_tensor(rows[o], dtype=torch.long, device=dev),
            torch.as_tensor(cols[o], dtype=torch.long, device=dev))


# --------------------------------------------------------------------------- boundary
def boundary_band(gt_mask: torch.Tensor, width: int = 3) -> torch.Tensor:
    """Band of pixels within +-``width`` px of the edge of a binary mask.

    A pixel is in the band iff its ``(2*width+1)`` square neighbourhood
    (Chebyshev distance <= ``width``) contains both a mask and a non-mask pixel,
    i.e. ``band = dilate(mask) & ~erode(mask)`` with a square structuring element
    (max-pooling, so it runs on any device).  The band is ``width`` px wide on
    each side of the edge (2*width in all).  Outside the image counts as
    neither: the image border itself is not an edge.

    Args:
        gt_mask: ``[..., H, W]`` bool or {0, 1} float.
    Returns:
        bool tensor of the same shape.
    """
    if width < 1:
        return torch.zeros(gt_mask.shape, dtype=torch.bool, device=gt_mask.device)
    shape = gt_mask.shape
    m = gt_mask.reshape(-1, 1, *shape[-2:]).float()
    k = 2 * width + 1
    dil = F.max_pool2d(m, k, stride=1, padding=width)            # max_pool pads with -inf
    ero = -F.max_pool2d(-m, k, stride=1, padding=width)
    return ((dil > 0.5) & (ero < 0.5)).reshape(shape)


def boundary_bce(logits: torch.Tensor, gt: torch.Tensor, band: torch.Tensor) -> torch.Tensor:
    """BCE restricted to ``band``, normalised by the band area, per mask.

    All inputs ``[..., H, W]``; returns ``[...]`` (0 where the band is empty)."""
    x = logits.float()
    y = gt.to(device=x.device, dtype=torch.float32)
    b = band.to(device=x.device, dtype=torch.float32)
    bce = F.binary_cross_entropy_with_logits(x, y, reduction="none")
    return (bce * b).sum(dim=(-2, -1)) / b.sum(dim=(-2, -1)).clamp_min(1.0)


def bce_probs(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Element-wise BCE of probabilities (float32, clamped; usable under autocast)."""
    p = p.float()
    y = y.to(device=p.device, dtype=torch.float32)
    return -(y * torch.log(p.clamp_min(_EPS)) + (1.0 - y) * torch.log((1.0 - p).clamp_min(_EPS)))


# --------------------------------------------------------------------------- order
def order_loss(scores: torch.Tensor, pred_idx: torch.Tensor, gt_idx: torch.Tensor, gt_order: torch.Tensor,
               gt_amodal: torch.Tensor | None = None, pairs: str = "overlap", tau: float = 1.0) -> torch.Tensor:
    """Pairwise logistic depth-order loss of one clip.

    Args:
        scores: ``[K]`` order logits (higher = nearer the front).
        pred_idx, gt_idx: a matching from :func:`hungarian_match`.
        gt_order: ``[O]`` GT depth ranks, 0 = front-most.
        gt_amodal: ``[T, O, H, W]``, needed for ``pairs="overlap"``.
        pairs: ``"overlap"`` (pairs whose amodal masks intersect somewhere) or ``"all"``.
        tau: temperature.
    Returns:
        scalar: mean of ``softplus(-(s_front - s_back) / tau)`` over counted pairs, 0 if none.
    """
    if pairs not in ("overlap", "all"):
        raise ValueError(f"pairs must be 'overlap' or 'all', got {pairs!r}")
    s = scores.float()
    n = len(gt_idx)
    if n < 2:
        return s.sum() * 0.0
    dev = s.device
    rank = gt_order.to(dev)[gt_idx]                                  # [n]
    front = rank[:, None] < rank[None, :]                            # front[a, b]: a in front of b
    if pairs == "overlap":
        if gt_amodal is None:
            raise ValueError("pairs='overlap' needs gt_amodal")
        g = gt_amodal.to(dev)[:, gt_idx].float()                     # [T, n, H, W]
        inter = torch.einsum("tahw,tbhw->ab", g, g)
        front = front & (inter > 0)
    if not bool(front.any()):
        return s.sum() * 0.0
    ps = s[pred_idx]
    diff = (ps[:, None] - ps[None, :]) / tau                          # s_a - s_b
    return F.softplus(-diff)[front].mean()


# --------------------------------------------------------------------------- total
def _split(x, B: int, num_objects) -> list[torch.Tensor]:
    items = list(x) if isinstance(x, (list, tuple)) else [x[b] for b in range(x.shape[0])]
    if len(items) != B:
        raise ValueError(f"ground truth for {len(items)} clips, predictions for {B}")
    if num_objects is not None:
        items = [it[..., :int(n)] if it.dim() == 1 else it[:, :int(n)] for it, n in zip(items, num_objects)]
    return [torch.as_tensor(it) for it in items]


def match_batch(amodal_logits: torch.Tensor, gt_amodal, num_objects=None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`hungarian_match` for every clip of a batch (``amodal_logits [B, T, K, H, W]``)."""
    gts = _split(gt_amodal, amodal_logits.shape[0], num_objects)
    return [hungarian_match(amodal_logits[b].detach(), g) for b, g in enumerate(gts)]


def _targets(gt: torch.Tensor, pred_idx: torch.Tensor, gt_idx: torch.Tensor, K: int, like: torch.Tensor):
    """Per-query targets ``[T, K, H, W]``: matched queries get their GT object, others zeros."""
    T, _, H, W = gt.shape
    tgt = torch.zeros((T, K, H, W), dtype=torch.float32, device=like.device)
    if len(gt_idx):
        tgt[:, pred_idx] = gt.to(like.device)[:, gt_idx].float()
    return tgt


def merge_loss_weights(defaults: Mapping[str, float], weights: Mapping[str, float] | None) -> dict[str, float]:
    """``defaults`` updated with ``weights`` (floats); an unknown key is a KeyError."""
    w = dict(defaults)
    if weights:
        unknown = set(weights) - set(w)
        if unknown:
            raise KeyError(f"unknown loss weights {sorted(unknown)}; known: {sorted(w)}")
        w.update({k: float(v) for k, v in weights.items()})
    return w


def oclr_loss(outputs: Mapping[str, torch.Tensor], gt_amodal, gt_modal, gt_order,
              weights: Mapping[str, float] | None = None, *, num_objects: Sequence[int] | None = None,
              boundary_width: int = 3, order_pairs: str = "overlap", order_tau: float = 1.0,
              matches: list | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The OCLR training loss (see the module docstring).

    Args:
        outputs: the model's dict (``amodal_logits``, ``order_logits`` and
            optionally ``modal_probs``; missing modal probabilities are composed here
            with the hard composition).
        gt_amodal, gt_modal: ``[B, T, O, H, W]`` tensors or lists of ``[T, O_b, H, W]``.
        gt_order: ``[B, O]`` tensor or list of ``[O_b]`` ranks (0 = front-most).
        weights: any of ``amodal``, ``boundary``, ``modal``, ``order`` (defaults:
            :data:`DEFAULT_LOSS_WEIGHTS`); unknown keys raise ``KeyError``.
        num_objects: real object count per clip when the GT tensors are padded.
        boundary_width: half width of the boundary band in px.
        order_pairs, order_tau: see :func:`order_loss`.
        matches: precomputed ``[(pred_idx, gt_idx), ...]`` (else computed here).

    Returns:
        ``(total, parts)`` where ``parts`` holds detached scalars ``amodal``,
        ``boundary``, ``modal``, ``order`` (unweighted, batch means) and ``total``.
    """
    w = merge_loss_weights(DEFAULT_LOSS_WEIGHTS, weights)

    logits = outputs["amodal_logits"]
    scores = outputs["order_logits"]
    if logits.dim() != 5:
        raise ValueError(f"amodal_logits must be [B, T, K, H, W], got {tuple(logits.shape)}")
    B, T, K, H, W = logits.shape
    modal = outputs.get("modal_probs")
    if modal is None:
        from pipeline.oclr.model import compose_modal
        modal = compose_modal(torch.sigmoid(logits.float()), scores.float()[:, None, :])

    ga = _split(gt_amodal, B, num_objects)
    gm = _split(gt_modal, B, num_objects)
    go = _split(gt_order, B, num_objects)
    if matches is None:
        matches = [hungarian_match(logits[b].detach(), ga[b]) for b in range(B)]

    terms = {k: [] for k in ("amodal", "boundary", "modal", "order")}
    for b in range(B):
        pi, gi = matches[b]
        x = logits[b].float()
        ta = _targets(ga[b], pi, gi, K, x)
        tm = _targets(gm[b], pi, gi, K, x)
        terms["amodal"].append(F.binary_cross_entropy_with_logits(x, ta))
        band = boundary_band(ta, boundary_width)
        terms["boundary"].append(boundary_bce(x, ta, band).mean())
        terms["modal"].append(bce_probs(modal[b], tm).mean())
        terms["order"].append(order_loss(scores[b], pi, gi, go[b], ga[b] if order_pairs == "overlap" else None,
                                         pairs=order_pairs, tau=order_tau))
    parts = {k: torch.stack(v).mean() for k, v in terms.items()}
    total = sum(w[k] * parts[k] for k in parts)
    out = {k: v.detach() for k, v in parts.items()}
    out["total"] = total.detach()
    return total, out
