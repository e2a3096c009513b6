"""Size-aware alignment of masks with strided features (MAMP, "size-aware image feature alignment").

A stride-``s`` feature ``(i, j)`` of the encoders used here is centred on
input pixel ``(s i, s j)``. Naive bilinear down-sampling of a mask to the
feature grid (``F.interpolate(..., size=(h, w))``) takes the value around
pixel ``(s i + (s - 1) / 2, ...)`` instead, and naive bilinear up-sampling
makes the same half-stride error again on the way back, so propagated masks
drift by about ``s - 1`` pixels. Here instead:

* :func:`pad_to` pads the input (bottom / right, edge values) so both sides
  are multiples of ``s``;
* :func:`down` samples masks exactly at the kernel centres ``(s i, s j)``;
* :func:`up` interpolates grid values back with the grid points placed on
  those same pixels (bilinear, ``align_corners=True`` over ``(h - 1) s + 1``
  pixels, the last ``s - 1`` rows / columns repeated), then crops the padding.

``naive_down`` / ``naive_up`` are the bilinear versions, kept for the ablation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["pad_amount", "pad_to", "down", "up", "naive_down", "naive_up", "grid_size"]


def grid_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """Feature grid of an input of ``height x width`` after padding to multiples of ``stride``."""
    return -(-int(height) // stride), -(-int(width) // stride)


def pad_amount(height: int, width: int, stride: int) -> tuple[int, int]:
    """Rows and columns to add (bottom, right) so both sides are multiples of ``stride``."""
    return (-int(height)) % stride, (-int(width)) % stride


def pad_to(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Pad ``[..., H, W]`` at the bottom / right with edge values to multiples of ``stride``."""
    ph, pw = pad_amount(x.shape[-2], x.shape[-1], stride)
    if ph == 0 and pw == 0:
        return x
    shape = x.shape
    y = x.reshape(-1, 1, *shape[-2:]).float()
    y = F.pad(y, (0, pw, 0, ph), mode="replicate")
    return y.reshape(*shape[:-2], *y.shape[-2:]).to(x.dtype)


def down(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Values of ``[..., H, W]`` at the kernel centres ``(s i, s j)`` -> ``[..., ceil(H/s), ceil(W/s)]``."""
    return pad_to(x, stride)[..., ::stride, ::stride]


def up(x: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Grid values ``[B, C, h, w]`` (centred on pixels ``(s i, s j)``) -> ``[B, C, H, W]``."""
    h, w = x.shape[-2:]
    y = F.interpolate(x.float(), size=((h - 1) * stride + 1, (w - 1) * stride + 1), mode="bilinear",
                      align_corners=True) if (h > 1 and w > 1) else \
        F.interpolate(x.float(), scale_factor=stride, mode="nearest")[..., :(h - 1) * stride + 1,
                                                                         :(w - 1) * stride + 1]
    y = F.pad(y, (0, stride - 1, 0, stride - 1), mode="replicate")
    return y[..., :size[0], :size[1]]


def naive_down(x: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear down-sampling to ``ceil(H/s) x ceil(W/s)`` (the misaligned baseline)."""
    h, w = grid_size(x.shape[-2], x.shape[-1], stride)
    return F.interpolate(x.float(), size=(h, w), mode="bilinear", align_corners=False)


def naive_up(x: torch.Tensor, stride: int, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling to ``size`` (the misaligned baseline)."""
    return F.interpolate(x.float(), size=tuple(size), mode="bilinear", align_corners=False)
