"""The MAMP encoder: a modified ResNet-18 that keeps 1/4 of the input resolution.

Paper Table 5 (appendix A), random initialisation:

=========  ==========  =============================================
layer      output      configuration
=========  ==========  =============================================
conv1      H/2 x W/2   7x7, 64, stride 2 (+ BN, ReLU; no max-pool)
conv2      H/2 x W/2   2 basic blocks, 64
conv3      H/4 x W/4   2 basic blocks, 128 (first one stride 2)
conv4      H/4 x W/4   2 basic blocks, 256
conv5      H/4 x W/4   2 basic blocks, 256
=========  ==========  =============================================

The blocks are torchvision's ``BasicBlock``. Input: Lab normalised to about
[-1, 1] (:func:`pipeline.mamp.lab.lab_normalize`), with one of the ab channels
zeroed during training (the information bottleneck); output ``[B, 256, h, w]``
with ``h = ceil(H / 4)``. Feature ``(i, j)`` is centred on input pixel
``(4 i, 4 j)`` (every strided layer pads by half its kernel), which is what
the size-aware alignment (:mod:`pipeline.mamp.align`) relies on.

Inference checkpoints (``format`` :data:`EXPORT_FORMAT`) are written by
:func:`pipeline.mamp.train.export_checkpoint` and read by :func:`load_mamp`,
which refuses a missing or foreign file with a one-line error: there are never
random weights at inference.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

from pipeline.core.checkpoint import decode_state, read_export
from pipeline.core.device import resolve_device
from pipeline.mamp.lab import lab_normalize, rgb_to_lab

__all__ = ["MampEncoder", "EXPORT_FORMAT", "STRIDE", "load_mamp", "MampCheckpointError", "encode_frames"]

EXPORT_FORMAT = "motionseg-mamp-v1"
STRIDE = 4


class MampCheckpointError(FileNotFoundError):
    """A MAMP checkpoint is missing or is not a MAMP inference checkpoint."""


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or cin != cout:
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Sequential(BasicBlock(cin, cout, stride=stride, downsample=down), BasicBlock(cout, cout))


class MampEncoder(nn.Module):
    """Modified ResNet-18, stride 4, ``dim`` = 256 output channels (Table 5)."""

    def __init__(self, widths: tuple[int, int, int, int] = (64, 128, 256, 256)):
        super().__init__()
        w1, w2, w3, w4 = (int(w) for w in widths)
        self.widths = (w1, w2, w3, w4)
        self.conv1 = nn.Sequential(nn.Conv2d(3, w1, 7, stride=2, padding=3, bias=False),
                                   nn.BatchNorm2d(w1), nn.ReLU(inplace=True))
        self.conv2 = _stage(w1, w1, 1)
        self.conv3 = _stage(w1, w2, 2)
        self.conv4 = _stage(w2, w3, 1)
        self.conv5 = _stage(w3, w4, 1)
        self.dim = w4
        self.stride = STRIDE
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: normalised Lab ``[B, 3, H, W]`` -> features ``[B, dim, ceil(H/4), ceil(W/4)]``."""
        return self.conv5(self.conv4(self.conv3(self.conv2(self.conv1(x)))))


def encode_frames(encoder: MampEncoder, rgb_uint8: torch.Tensor) -> torch.Tensor:
    """Features of frames ``uint8 [B, H, W, 3]`` (RGB, on the encoder's device), no channel
    dropped (inference). ``H`` and ``W`` should be multiples of 4 (see ``align.pad_to``)."""
    x = rgb_uint8.permute(0, 3, 1, 2).float() / 255.0
    return encoder(lab_normalize(rgb_to_lab(x)))


def load_mamp(path: str | os.PathLike, device: Any = "cpu") -> tuple[MampEncoder, dict]:
    """The encoder of an exported MAMP checkpoint (eval mode) and the checkpoint's header.

    Raises :class:`MampCheckpointError` (one line, naming the file) when the file is missing
    or is not a MAMP checkpoint; a truncated or corrupted file is reported the same way."""
    doc = read_export(path, EXPORT_FORMAT, "MAMP", "train one with `dvc repro training/dvc.yaml:train_mamp`, "
                      "or set mamp.checkpoint", error=MampCheckpointError, missing=MampCheckpointError)
    enc = MampEncoder(tuple(doc["model_config"]["widths"]))
    enc.load_state_dict(decode_state(doc["state"]), strict=True)
    header = {k: v for k, v in doc.items() if k != "state"}
    return enc.to(resolve_device(device)).eval(), header

