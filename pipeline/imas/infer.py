"""IMAS inference: the object channel's soft mask of every frame, and the ``imas`` mask stage's store.

The store (``data/<ds>/imas/<seq>.zarr``) holds ``probs`` [T, 1, H, W] float16 and ``labels`` [T, H, W]
uint8, so that evaluation, CRF (``crf.input: imas``), quality and export accept it like any other mask
stage. ``probs`` is the object channel against its strongest rival, ``p_o / (p_o + max_{k != o} p_k)``
(:func:`object_probability`, from the soft masks bilinearly upsampled from the 1/4 grid): above 0.5
exactly where the object channel wins the argmax over the K channels (the paper's rule), which is
``labels`` -- so the CRF and the evaluation start from the same masks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.device import autocast
from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.imas.model import ImasNet, rgb_input

__all__ = ["channel_masks", "object_masks", "object_probability", "upsample", "write_imas"]


@torch.no_grad()
def channel_masks(model: ImasNet, rgb: np.ndarray, tokens: np.ndarray, dev: torch.device,
                  amp: bool = False) -> np.ndarray:
    """Soft masks ``float32 [B, K, h4, w4]`` of frames ``rgb uint8 [B, H, W, 3]`` with their feature
    tokens ``[B, C, h, w]``."""
    r = torch.from_numpy(np.ascontiguousarray(rgb)).to(dev)
    t = torch.from_numpy(np.asarray(tokens, np.float32)).to(dev)
    with autocast(dev, amp):
        m = model.segment(model.features(rgb_input(r), t))
    return m.float().cpu().numpy()


def object_probability(masks: np.ndarray, channel: int) -> np.ndarray:
    """``[B, h, w]`` from soft masks ``[B, K, h, w]``: ``p_o / (p_o + max_{k != o} p_k)`` (see the module
    docstring); > 0.5 where channel ``o`` wins the argmax."""
    m = np.asarray(masks, np.float32)
    po = m[:, channel]
    rival = np.delete(m, channel, axis=1).max(axis=1)
    return po / np.maximum(po + rival, 1e-12)


def upsample(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``[B, K, h, w]`` to ``size`` (align_corners False)."""
    x = F.interpolate(torch.from_numpy(masks), size=tuple(size), mode="bilinear", align_corners=False)
    return x.numpy()


def object_masks(model: ImasNet, channel: int, rgb: Any, tokens: Any, dev: torch.device, *, batch: int,
                 amp: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, probs [b, H, W])`` for consecutive batches of a sequence's frames ``rgb [T, H, W, 3]``
    (arrays or Zarr arrays) with their ``tokens``: :func:`object_probability` of ``channel`` at the frames'
    size. ``probs > 0.5`` is the object mask."""
    T, H, W = rgb.shape[:3]
    for s in range(0, T, batch):
        e = min(T, s + batch)
        yield s, object_probability(upsample(channel_masks(model, rgb[s:e], tokens[s:e], dev, amp), (H, W)), channel)


def write_imas(frames_path: Path, features_path: Path, out: Path, model: ImasNet, info: Mapping[str, Any],
               dev: torch.device, *, batch: int, amp: bool, sequence: str) -> dict:
    """Run the model over one sequence and write its mask store (see the module docstring)."""
    frames = open_artifact(frames_path, stage="frames")
    feats = open_artifact(features_path, stage="features")
    rgb = frames.require("rgb", dtype="uint8", dims=("frame", "y", "x", "channel"))
    tokens = feats.require("tokens", ndim=4)
    T, H, W, _ = rgb.shape
    if tokens.shape[0] != T:
        raise ArtifactError(f"{feats.path}: {tokens.shape[0]} frames of tokens, but the frames store has {T}")
    bb = (feats.attrs.get("backbone") or {}).get("name")
    if info["backbone"] and bb != info["backbone"]:
        raise ArtifactError(f"{feats.path}: backbone {bb!r}, but {info['path']} was trained on "
                            f"{info['backbone']!r} tokens (retrain with the train_imas stage)")
    o = int(info["object_channel"])
    with ArtifactWriter(out, stage="imas", params={"imas": {"batch": batch, "amp": amp}},
                        inputs={"frames": frames.path, "features": feats.path}) as wr:
        probs = wr.create("probs", (T, 1, H, W), "float16", ("frame", "object", "y", "x"),
                          attrs={"meaning": "object channel vs its strongest rival: p_o / (p_o + max_k!=o p_k), "
                                            "at the working size (> 0.5 = the object channel wins the argmax)"})
        labels = wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "1 = probs > 0.5 (the object channel wins the argmax), 0 = not"})
        for s, p in object_masks(model, o, rgb, tokens, dev, batch=batch, amp=amp):
            for i in range(len(p)):
                probs[s + i, 0] = p[i].astype(np.float16)
                labels[s + i] = (p[i] > 0.5).astype(np.uint8)
        wr.attrs.update({"sequence": sequence, "num_objects": 1, "object_channel": o,
                         "channels": int(model.cfg.channels), "backbone": (feats.attrs.get("backbone") or {}),
                         "checkpoint": {k: info[k] for k in ("path", "weights_sha256", "file_sha256", "train")},
                         "device": str(dev), "frame_names": frames.attrs.get("frame_names")})
    return {"T": T, "object_channel": o}
