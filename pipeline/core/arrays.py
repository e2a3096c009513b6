"""Array conventions shared by models, stages and training: ImageNet normalisation of RGB, slot
masks from label maps, and optical flow resizing and warping (numpy / OpenCV, no model code)."""

from __future__ import annotations

import cv2
import numpy as np

#: ImageNet statistics every RGB backbone input is normalised with
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN = np.array(IMAGENET_MEAN, np.float32)
_STD = np.array(IMAGENET_STD, np.float32)


def normalize_rgb(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[..., H, W, 3]`` RGB -> float32 ``[..., 3, H, W]``: /255, ImageNet mean/std."""
    x = (np.asarray(rgb, np.float32) / 255.0 - _MEAN) / _STD
    return np.moveaxis(x, -1, -3).copy()


def proposal_masks(labels: np.ndarray, K: int) -> np.ndarray:
    """Modal proposal masks ``[..., K, H, W]`` float32 (0/1) from a label map (``k + 1`` = slot ``k``)."""
    lab = np.asarray(labels)
    return (lab[..., None, :, :] == np.arange(1, K + 1).reshape(K, 1, 1)).astype(np.float32)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinearly resize flow ``[2, H, W]`` or ``[N, 2, H, W]`` to ``size`` = (h, w),
    scaling u by ``w / W`` and v by ``h / H``."""
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim not in (3, 4) or flow.shape[-3] != 2:
        raise ValueError(f"flow must be [2,H,W] or [N,2,H,W], got {flow.shape}")
    h, w = int(size[0]), int(size[1])
    H, W = flow.shape[-2:]
    if (H, W) == (h, w):
        return flow.copy()
    single = flow.ndim == 3
    f = flow[None] if single else flow
    out = np.empty((f.shape[0], 2, h, w), np.float32)
    for i in range(f.shape[0]):
        r = cv2.resize(np.ascontiguousarray(f[i].transpose(1, 2, 0)), (w, h),
                       interpolation=cv2.INTER_LINEAR)
        out[i, 0] = r[..., 0] * (w / W)
        out[i, 1] = r[..., 1] * (h / H)
    return out[0] if single else out


def warp(img: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_CONSTANT) -> np.ndarray:
    """Backward warp: ``out[y, x] = img[y + v, x + u]`` (bilinear, cv2.remap).

    With ``img`` = image 2 and ``flow`` = flow 1 -> 2 ([2, H, W]) this
    reconstructs image 1.
    """
    flow = np.asarray(flow, dtype=np.float32)
    if flow.ndim != 3 or flow.shape[0] != 2:
        raise ValueError(f"flow must be [2,H,W], got {flow.shape}")
    H, W = flow.shape[1:]
    ys, xs = np.mgrid[0:H, 0:W].astype(np.float32)
    return cv2.remap(img, xs + flow[0], ys + flow[1], cv2.INTER_LINEAR, borderMode=border)
