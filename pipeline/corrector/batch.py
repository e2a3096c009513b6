"""Batches of corrector windows, shared by training (:mod:`pipeline.corrector.train`) and the adaptation
to real video (:mod:`pipeline.corrector.adapt`): collation with padded exemplar axes, and the model run
on a collated batch. A module of its own so that the adaptation does not import the synthetic-data
training code."""

from __future__ import annotations

from typing import Any, Mapping

import torch

from pipeline.core.device import autocast

__all__ = ["collate_windows", "MODEL_INPUTS", "forward_batch"]


def collate_windows(items: list[dict]) -> dict:
    """Stack samples; exemplar axes padded to the largest E (``ex_frame = -1``, zero weight)."""
    E = max(int(it["ex_frame"].shape[0]) for it in items)
    out: dict[str, Any] = {}
    for key in ("rgb", "masks", "targets", "tokens", "tgt_frame"):
        out[key] = torch.stack([it[key] for it in items])

    def pad(x, fill):
        n = E - x.shape[0]
        return x if n == 0 else torch.cat([x, torch.full((n, *x.shape[1:]), fill, dtype=x.dtype)])

    out["ex_tokens"] = torch.stack([pad(it["ex_tokens"], 0.0) for it in items])
    out["ex_masks"] = torch.stack([pad(it["ex_masks"], 0.0) for it in items])
    out["ex_weight"] = torch.stack([pad(it["ex_weight"], 0.0) for it in items])
    out["ex_frame"] = torch.stack([pad(it["ex_frame"], -1) for it in items])
    for key in ("video", "start", "slot_to_gt"):
        out[key] = [it[key] for it in items]
    return out


MODEL_INPUTS = ("rgb", "masks", "tokens", "ex_tokens", "ex_masks", "ex_weight", "ex_frame", "tgt_frame")


def forward_batch(model: torch.nn.Module, batch: Mapping, dev: torch.device, amp: bool) -> dict:
    """The corrector on a collated batch (:data:`MODEL_INPUTS` moved to ``dev``), autocast when ``amp``."""
    args = [batch[k].to(dev, non_blocking=True) for k in MODEL_INPUTS]
    with autocast(dev, amp):
        return model(*args)
