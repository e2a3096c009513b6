"""sRGB <-> CIE Lab (D65), in torch, differentiable and batched.

MAMP's reconstruction target is the Lab colour of the query frame, and its
"floor" backbone is raw Lab pixels. Conventions: RGB in [0, 1] (sRGB gamma),
``[..., 3, H, W]`` channel-first; Lab with L in [0, 100] and a, b in about
[-110, 110] (the usual CIE units). The white point is D65 (X 0.95047,
Y 1.0, Z 1.08883), the sRGB matrix is IEC 61966-2-1's.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["rgb_to_lab", "lab_to_rgb", "lab_normalize", "LAB_SCALE", "LAB_SHIFT"]

_RGB2XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                         [0.212671, 0.715160, 0.072169],
                         [0.019334, 0.119193, 0.950227]], dtype=torch.float64)
_WHITE = torch.tensor([0.950456, 1.0, 1.088754], dtype=torch.float64)
_EPS = (6.0 / 29.0) ** 3
_KAPPA = (29.0 / 6.0) ** 2 / 3.0

#: ``lab_normalize`` maps Lab to about [-1, 1]: (Lab - SHIFT) / SCALE per channel
LAB_SHIFT = (50.0, 0.0, 0.0)
LAB_SCALE = (50.0, 110.0, 110.0)


def _mix(m: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``m @ x`` over the channel axis (-3) of ``x [..., 3, H, W]``."""
    return torch.einsum("ij,...jhw->...ihw", m.to(x.dtype).to(x.device), x)


def rgb_to_lab(rgb: torch.Tensor | np.ndarray) -> torch.Tensor:
    """sRGB in [0, 1] ``[..., 3, H, W]`` (or uint8 ``[H, W, 3]`` numpy, converted) -> Lab."""
    if isinstance(rgb, np.ndarray):
        if rgb.dtype == np.uint8 and rgb.shape[-1] == 3:
            rgb = torch.from_numpy(np.moveaxis(rgb, -1, -3).astype(np.float32) / 255.0)
        else:
            rgb = torch.from_numpy(np.asarray(rgb, dtype=np.float32))
    x = rgb.float().clamp(0.0, 1.0)
    lin = torch.where(x > 0.04045, ((x + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _mix(_RGB2XYZ, lin) / _WHITE.to(x.device, x.dtype).view(3, 1, 1)
    f = torch.where(xyz > _EPS, xyz.clamp_min(_EPS).pow(1.0 / 3.0), xyz * _KAPPA + 4.0 / 29.0)
    fx, fy, fz = f.unbind(-3)
    L = 116.0 * fy - 16.0
    a = 500.0 * (fx - fy)
    b = 200.0 * (fy - fz)
    return torch.stack([L, a, b], dim=-3)


def lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    """Lab ``[..., 3, H, W]`` -> sRGB in [0, 1] (clipped to the gamut)."""
    L, a, b = lab.float().unbind(-3)
    fy = (L + 16.0) / 116.0
    fx = fy + a / 500.0
    fz = fy - b / 200.0
    f = torch.stack([fx, fy, fz], dim=-3)
    xyz = torch.where(f > 6.0 / 29.0, f ** 3, (f - 4.0 / 29.0) / _KAPPA)
    xyz = xyz * _WHITE.to(lab.device, torch.float32).view(3, 1, 1)
    lin = _mix(torch.linalg.inv(_RGB2XYZ), xyz).clamp(0.0, 1.0)
    return torch.where(lin > 0.0031308, 1.055 * lin.clamp_min(1e-12) ** (1.0 / 2.4) - 0.055,
                       lin * 12.92).clamp(0.0, 1.0)


def lab_normalize(lab: torch.Tensor) -> torch.Tensor:
    """Lab -> about [-1, 1] per channel (the encoder's input scaling)."""
    shift = torch.tensor(LAB_SHIFT, device=lab.device, dtype=lab.dtype).view(3, 1, 1)
    scale = torch.tensor(LAB_SCALE, device=lab.device, dtype=lab.dtype).view(3, 1, 1)
    return (lab - shift) / scale
