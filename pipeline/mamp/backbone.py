"""``features.backbone: mamp``: the MAMP encoder behind the :class:`pipeline.features.Backbone` contract."""

from __future__ import annotations

import os

import torch

from ..features import Backbone
from .lab import lab_normalize, rgb_to_lab
from .model import STRIDE, MampEncoder, load_mamp

__all__ = ["MampBackbone"]


class MampBackbone(Backbone):
    """The MAMP encoder as a :class:`pipeline.features.Backbone` (``features.backbone: mamp``):
    takes ImageNet-normalised RGB like every backbone there, returns ``[B, 256, ceil(H/4), ceil(W/4)]``
    tokens (frozen, eval mode)."""

    def __init__(self, encoder: MampEncoder, info: dict, header: dict):
        super().__init__("mamp", encoder.dim, STRIDE, info)
        self.encoder = encoder
        self.header = header
        self._freeze()

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, info: dict) -> "MampBackbone":
        enc, header = load_mamp(path, "cpu")
        return cls(enc, {**info, "weights_verified": True}, header)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..features import IMAGENET_MEAN, IMAGENET_STD

        mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
        rgb = (x.float() * std + mean).clamp(0, 1)
        ph, pw = (-x.shape[-2]) % STRIDE, (-x.shape[-1]) % STRIDE
        if ph or pw:
            rgb = torch.nn.functional.pad(rgb, (0, pw, 0, ph), mode="replicate")
        return self.encoder(lab_normalize(rgb_to_lab(rgb)))

    def _describe_extra(self) -> dict:
        s = self.header.get("summary") or {}
        return {"tokens": "conv5 features of the MAMP encoder (stride 4), input Lab, no channel dropped",
                "training": {k: s.get(k) for k in ("iterations", "train_hours", "machine", "data")}}
