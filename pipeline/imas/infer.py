"""IMAS inference: the object channel's soft mask of every frame, and the ``imas`` mask stage's store.

The store (``data/<ds>/imas/<seq>.zarr``) holds ``probs`` [T, 1, H, W] float16 and ``labels`` [T, H, W]
uint8, so that evaluation, CRF (``crf.input: imas``), quality and export accept it like any other mask
stage. ``probs`` is the object channel against its strongest rival, ``p_o / (p_o + max_{k != o} p_k)``
(:func:`object_probability`, from the soft masks bilinearly upsampled from the 1/4 grid): above 0.5
exactly where the object channel wins the argmax over the K channels (the paper's rule), which is
``labels`` -- so the CRF and the evaluation start from the same masks.

Which channel is the object (``imas.channel_choice``): ``dataset``, the one ``train_imas`` chose by
motion-semantic alignment over the whole dataset (paper Sec. 3.4), for every video; or ``video``, per video
the channel whose argmax masks overlap the foreground of the training-free motion baseline most (IoU of
the masks pooled over the video's frames, :func:`video_channel`), the dataset's channel when none
overlaps it. Stage 1 learns segments from motion alone, so the channel an object lands in can differ from
video to video (on the synthetic validation split the dataset's channel is the object's in 9 of its 16
videos); the motion baseline tells, without labels, which channel moves apart from the background.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.device import autocast
from pipeline.core.draw import resize_labels
from pipeline.core.store import ArtifactError, ArtifactWriter, open_artifact
from pipeline.imas.model import ImasNet, rgb_input

__all__ = ["CHANNEL_CHOICES", "channel_masks", "channel_overlap", "check_channel_choice", "object_masks",
           "object_probability", "pick_channel", "upsample", "upsampled_masks", "video_channel", "write_imas"]

CHANNEL_CHOICES = ("dataset", "video")   # imas.channel_choice (see the module docstring)


def check_channel_choice(value: str) -> str:
    """``value`` if it is one of :data:`CHANNEL_CHOICES`, else a one-line error naming the key."""
    if value not in CHANNEL_CHOICES:
        raise ValueError(f"imas.channel_choice: {value!r} is not one of {', '.join(CHANNEL_CHOICES)}")
    return value


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


def upsampled_masks(model: ImasNet, rgb: Any, tokens: Any, dev: torch.device, *, batch: int,
                    amp: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, masks [b, K, H, W])`` for consecutive batches of a sequence's frames ``rgb [T, H, W, 3]``
    (arrays or Zarr arrays) with their ``tokens``: the soft channel masks bilinearly upsampled to the frames'
    size."""
    T, H, W = rgb.shape[:3]
    for s in range(0, T, batch):
        e = min(T, s + batch)
        yield s, upsample(channel_masks(model, rgb[s:e], tokens[s:e], dev, amp), (H, W))


def object_masks(model: ImasNet, channel: int, rgb: Any, tokens: Any, dev: torch.device, *, batch: int,
                 amp: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, probs [b, H, W])`` per batch of :func:`upsampled_masks`: :func:`object_probability` of
    ``channel``. ``probs > 0.5`` is the object mask."""
    for s, m in upsampled_masks(model, rgb, tokens, dev, batch=batch, amp=amp):
        yield s, object_probability(m, channel)


def channel_overlap(labels: np.ndarray, foreground: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray]:
    """``(intersection [K], union [K])`` in pixels of each channel's mask (``labels == k``, ``int [B, H, W]``)
    with ``foreground`` (bool, same shape)."""
    fg = np.asarray(foreground, bool)
    inter = np.array([np.count_nonzero((labels == k) & fg) for k in range(K)], np.float64)
    union = np.array([np.count_nonzero((labels == k) | fg) for k in range(K)], np.float64)
    return inter, union


def video_channel(model: ImasNet, rgb: Any, tokens: Any, reference: Any, dev: torch.device, *, batch: int,
                  default: int, amp: bool = False) -> tuple[int, list[float]]:
    """``(channel, IoU per channel)``: the channel whose argmax masks over the frames ``rgb [T, H, W, 3]``
    overlap the foreground of ``reference`` (labels ``[T, h, w]``, > 0 = foreground; nearest-resized to
    ``H x W`` when smaller or larger) most, the IoU pooled over every frame; ``default`` when no channel
    overlaps it (an empty reference) or on a tie with it. One pass over the video, a batch at a time."""
    T, H, W = rgb.shape[:3]
    if reference.shape[0] != T:
        raise ValueError(f"{reference.shape[0]} frames of reference labels, {T} frames")
    K = int(model.cfg.channels)
    inter, union = np.zeros(K), np.zeros(K)
    for s, m in upsampled_masks(model, rgb, tokens, dev, batch=batch, amp=amp):
        ref = np.stack([resize_labels(np.asarray(r, np.uint8), (H, W)) for r in reference[s:s + len(m)]])
        i, u = channel_overlap(m.argmax(axis=1), ref > 0, K)
        inter += i
        union += u
    iou = inter / np.maximum(union, 1.0)
    return pick_channel(iou, default), [round(float(v), 6) for v in iou]


def pick_channel(iou: np.ndarray, default: int) -> int:
    """The channel of the largest ``iou``; ``default`` when it ties with the default's or is 0."""
    iou = np.asarray(iou, np.float64)
    best = int(np.argmax(iou))
    return int(default) if iou[best] <= 0 or iou[best] == iou[default] else best


def write_imas(frames_path: Path, features_path: Path, out: Path, model: ImasNet, info: Mapping[str, Any],
               dev: torch.device, *, batch: int, amp: bool, sequence: str, channel_choice: str = "dataset",
               reference_path: Path | None = None) -> dict:
    """Run the model over one sequence and write its mask store (see the module docstring):
    ``channel_choice`` ``dataset`` or ``video`` (then ``reference_path`` is the motion baseline's store)."""
    check_channel_choice(channel_choice)
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
    inputs = {"frames": frames.path, "features": feats.path}
    chosen: dict[str, Any] = {"by": "dataset", "dataset_channel": o}
    if channel_choice == "video":
        if reference_path is None:
            raise ValueError("imas.channel_choice: video needs the motion baseline's store")
        ref = open_artifact(reference_path, stage="motion_baseline")
        labels_ref = ref.require("labels", dtype="uint8", ndim=3)
        if labels_ref.shape[0] != T:
            raise ArtifactError(f"{ref.path}: {labels_ref.shape[0]} frames, but the frames store has {T}")
        o, ious = video_channel(model, rgb, tokens, labels_ref, dev, batch=batch, default=o, amp=amp)
        chosen.update({"by": "video: IoU with the motion baseline's foreground", "iou": ious})
        inputs["motion_baseline"] = ref.path
    with ArtifactWriter(out, stage="imas", params={"imas": {"batch": batch, "amp": amp,
                                                           "channel_choice": channel_choice}},
                        inputs=inputs) as wr:
        probs = wr.create("probs", (T, 1, H, W), "float16", ("frame", "object", "y", "x"),
                          attrs={"meaning": "object channel vs its strongest rival: p_o / (p_o + max_k!=o p_k), "
                                            "at the working size (> 0.5 = the object channel wins the argmax)"})
        labels = wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "1 = probs > 0.5 (the object channel wins the argmax), 0 = not"})
        for s, p in object_masks(model, o, rgb, tokens, dev, batch=batch, amp=amp):
            for i in range(len(p)):
                probs[s + i, 0] = p[i].astype(np.float16)
                labels[s + i] = (p[i] > 0.5).astype(np.uint8)
        wr.attrs.update({"sequence": sequence, "num_objects": 1, "object_channel": o, "channel_choice": chosen,
                         "channels": int(model.cfg.channels), "backbone": (feats.attrs.get("backbone") or {}),
                         "checkpoint": {k: info[k] for k in ("path", "weights_sha256", "file_sha256", "train")},
                         "device": str(dev), "frame_names": frames.attrs.get("frame_names")})
    return {"T": T, "object_channel": o}
