"""IMAS losses: flow reconstruction (stage 1, eq. 6) and appearance supervision (stage 2, eq. 7-12)."""

from __future__ import annotations

import torch

__all__ = ["FLOW_LOSSES", "flow_scale", "flow_loss", "appearance_loss"]


def flow_scale(flow: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-sample flow unit ``[B]``: the mean flow magnitude of ``flow [B, 2, h, w]``, at least ``floor``."""
    return flow.norm(dim=1).mean(dim=(1, 2)).clamp_min(floor)


FLOW_LOSSES = ("l1", "l2")


def flow_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean distance of predicted and target flow ``[B, 2, h, w]`` per pixel and component: ``l1``
    (eq. 6) or ``l2`` (squared)."""
    d = pred - target
    if kind == "l1":
        return d.abs().mean()
    if kind == "l2":
        return d.square().mean()
    raise ValueError(f"imas.flow_loss must be one of {FLOW_LOSSES}, got {kind!r}")


def appearance_loss(obj_prob: torch.Tensor, target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Binary cross-entropy of the object channel's soft mask ``[B, h, w]`` against the refined
    (CRF, optionally semantically constrained) mask ``[B, h, w]`` in [0, 1] (eq. 7 / 12)."""
    p = obj_prob.clamp(eps, 1 - eps)
    return -(target * p.log() + (1 - target) * (1 - p).log()).mean()
