"""The IMAS network (Sec. 3.2): segmentation head, learnable residual-flow pathway, piecewise-constant
flow reconstruction.

CPU-sized adaptation of the paper's ResNet-50 (see docs/imas.md): the backbone is the **frozen**
feature backbone of the dataset's ``features`` stage (its tokens ``[C, h, w]`` are read from the
store, so the backbone is named in every artifact), plus a small trainable RGB stem at 1/4 of the
working resolution: the paper's *feature merging* (high-level features fused with an early block
for detail). Shapes for a working size ``H x W`` (grid ``h4 = H/4``, ``w4 = W/4``)::

    rgb [B, 3, H, W] --stem (2 x conv3x3 stride 2, BN, ReLU)--> [B, stem, h4, w4]
    tokens [B, C, h, w] --1x1 conv, BN, ReLU--> [B, hidden, h, w] --bilinear--> [B, hidden, h4, w4]
    f = concat                                                         [B, stem + hidden, h4, w4]
    segmentation head: 3 x (conv3x3, BN, ReLU), 1x1 conv -> K logits, softmax over K -> masks m
    residual head (f_t, f_t'): 3 x (conv3x3, BN, ReLU), 1x1 conv -> 2K, tanh x bound -> r [B, K, 2, h4, w4]

Flow reconstruction (eq. 1-5): ``g`` and ``hmlp`` are two-layer MLPs applied to every flow vector,
``v_k = hmlp( sum_x m_k(x) g(F(x)) / sum_x m_k(x) )`` the segment's flow, and the prediction
``F_hat(x) = sum_k m_k(x) (v_k + r_k(x))``. Flow is in grid pixels, divided by the sample's mean flow
magnitude (floored) so that slow and fast videos weigh alike; the residual bound is in those units.

Inference checkpoints (format :data:`EXPORT_FORMAT`) carry the config, the object channel chosen
without labels, and the training record; :func:`load_imas` refuses a missing or foreign file.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.core.arrays import IMAGENET_MEAN, IMAGENET_STD
from pipeline.core.checkpoint import decode_state, export_info, read_export
from pipeline.core.device import resolve_device

__all__ = ["ImasConfig", "ImasNet", "EXPORT_FORMAT", "STRIDE", "load_imas", "ImasCheckpointError", "rgb_input"]

EXPORT_FORMAT = "motionseg-imas-v1"
STRIDE = 4


class ImasCheckpointError(FileNotFoundError):
    """An IMAS checkpoint is missing or is not an IMAS inference checkpoint."""


@dataclass(frozen=True)
class ImasConfig:
    channels: int          # K segmentation channels (one is the object, the rest background patches)
    token_dim: int         # C of the features store's tokens
    hidden: int            # width of the heads (paper 256)
    stem: int              # channels of the trainable RGB stem (feature merging)
    flow_hidden: int       # width of the flow MLPs g and h (paper: lightweight two-layer MLPs)
    residual_bound: float  # lambda: per-pixel bound of the residual flow (flow units, see the module docstring)
    backbone: str = ""     # name of the features backbone the model was trained on

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ImasConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self) -> dict:
        return asdict(self)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


def _head(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Three Conv-BN-ReLU layers and a 1x1 output conv (the paper's heads)."""
    return nn.Sequential(_cbr(cin, hidden), _cbr(hidden, hidden), _cbr(hidden, hidden), nn.Conv2d(hidden, cout, 1))


def _mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    """Two-layer MLP applied at every pixel (1x1 convs)."""
    return nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, cout, 1))


def rgb_input(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> float ``[B, 3, H, W]`` normalised with the ImageNet statistics."""
    x = rgb_uint8.permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std


class ImasNet(nn.Module):
    def __init__(self, cfg: ImasConfig):
        super().__init__()
        self.cfg = cfg
        self.stem = nn.Sequential(_cbr(3, cfg.stem // 2, stride=2), _cbr(cfg.stem // 2, cfg.stem, stride=2))
        self.proj = _cbr(cfg.token_dim, cfg.hidden, k=1)
        feat = cfg.stem + cfg.hidden
        self.seg_head = _head(feat, cfg.hidden, cfg.channels)
        self.res_head = _head(2 * feat, cfg.hidden, 2 * cfg.channels)
        self.g = _mlp(2, cfg.flow_hidden, cfg.flow_hidden)
        self.h = _mlp(cfg.flow_hidden, cfg.flow_hidden, 2)

    def features(self, rgb: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``rgb`` normalised ``[B, 3, H, W]`` (:func:`rgb_input`), ``tokens [B, C, h, w]`` ->
        ``[B, stem + hidden, H/4, W/4]``."""
        s = self.stem(rgb)
        t = F.interpolate(self.proj(tokens.float()), size=s.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([s, t], dim=1)

    def segment(self, feat: torch.Tensor) -> torch.Tensor:
        """Soft masks ``[B, K, h4, w4]`` (softmax over the K channels)."""
        return self.seg_head(feat).softmax(dim=1)

    def residual(self, feat: torch.Tensor, feat_other: torch.Tensor) -> torch.Tensor:
        """Per-channel residual flows ``[B, K, 2, h4, w4]``, each component in ``[-bound, bound]``."""
        r = torch.tanh(self.res_head(torch.cat([feat, feat_other], dim=1))) * self.cfg.residual_bound
        B, _, h, w = r.shape
        return r.view(B, self.cfg.channels, 2, h, w)

    def reconstruct(self, masks: torch.Tensor, flow: torch.Tensor, residual: torch.Tensor | None) -> torch.Tensor:
        """The predicted flow ``[B, 2, h4, w4]`` from soft ``masks [B, K, h4, w4]``, the target flow
        ``[B, 2, h4, w4]`` (pooled per segment, eq. 1-2) and the residual flows (eq. 3-5; None = the
        piecewise-constant pathway alone)."""
        g = self.g(flow)                                                       # [B, D, h, w]
        area = masks.sum(dim=(2, 3)).clamp_min(1e-6)                           # [B, K]
        pooled = torch.einsum("bkhw,bdhw->bkd", masks, g) / area[..., None]    # [B, K, D]
        B, K, D = pooled.shape
        v = self.h(pooled.reshape(B * K, D, 1, 1)).view(B, K, 2, 1, 1)         # segment flows
        per = v if residual is None else v + residual                          # [B, K, 2, h, w]
        return (masks[:, :, None] * per).sum(dim=1)


def load_imas(path: str | os.PathLike, device: Any = "cpu") -> tuple[ImasNet, dict]:
    """``(model in eval mode on device, info)``; ``info`` has ``object_channel``, ``model_config``,
    ``train``, checksums. One-line :class:`ImasCheckpointError` for a missing or foreign file."""
    doc = read_export(path, EXPORT_FORMAT, "IMAS", "train one with the dataset's train_imas stage "
                      "(`dvc repro datasets/<ds>/dvc.yaml:train_imas`)", error=ImasCheckpointError,
                      missing=ImasCheckpointError)
    cfg = ImasConfig.from_dict(doc["model_config"])
    model = ImasNet(cfg)
    model.load_state_dict(decode_state(doc["state"]), strict=True)
    dev = resolve_device(device)
    model = model.to(dev).float().eval()
    info = {**export_info(path, doc, dev), "object_channel": int(doc["object_channel"]),
            "channel_alignment": doc.get("channel_alignment"), "backbone": cfg.backbone}
    return model, info
