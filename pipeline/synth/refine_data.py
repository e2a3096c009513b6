"""Training inputs of the selector and the corrector: synthetic videos with their OCLR proposals
and backbone features.

A split folder ``data/synth/<split>/`` holds, per video ``<name>.zarr``:
``render/`` (RGB, modal GT masks), ``proposals/`` (stage ``synth_proposals``:
OCLR ``labels`` [T, h, w]) and ``features/`` (stage ``synth_features``:
``tokens`` [T, C, h', w'] float16). :class:`RefineVideo` reads any subset of
frames of one video; :func:`match_slots` ties each proposal slot to the GT
object it stands for (Hungarian on the mean IoU over the whole video, so the
assignment is the same for every clip of the video).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.core.arrays import normalize_rgb, proposal_masks
from pipeline.core.store import open_artifact
from pipeline.synth.dataset import list_split

__all__ = ["match_slots",
           "slot_targets", "RefineVideo", "list_refine_videos"]

def match_slots(labels: np.ndarray, gt_modal: np.ndarray, K: int) -> np.ndarray:
    """``slot_to_gt [K]`` int: the GT object index each proposal slot is matched to, ``-1`` for
    slots left over (Hungarian on the mean over frames of the IoU; empty vs empty = 1)."""
    from pipeline.exemplars.scoring import match_objects

    out = np.full(K, -1, np.int64)
    for o, k, _ in match_objects(labels, gt_modal, K):
        out[k] = o
    return out


def slot_targets(gt_modal: np.ndarray, slot_to_gt: np.ndarray) -> np.ndarray:
    """GT modal mask of each slot ``[T, K, H, W]`` bool (empty for unmatched slots)."""
    g = np.asarray(gt_modal, bool)
    T, _, H, W = g.shape
    out = np.zeros((T, len(slot_to_gt), H, W), bool)
    for k, o in enumerate(slot_to_gt):
        if o >= 0:
            out[:, k] = g[:, o]
    return out


class RefineVideo:
    """One synthetic video with its proposals and features (lazily opened, frames on demand)."""

    def __init__(self, split_dir: str | os.PathLike, name: str, K: int | None = None):
        self.split_dir, self.name = Path(split_dir), name
        self.render = open_artifact(self.split_dir / "render" / name)
        self.proposals = open_artifact(self.split_dir / "proposals" / name, stage="proposals")
        self.features = open_artifact(self.split_dir / "features" / name, stage="features")
        self._rgb = self.render.require("rgb", dtype="uint8", ndim=4)
        self._modal = self.render.require("modal", ndim=4)
        self._labels = self.proposals.require("labels", dtype="uint8", ndim=3)
        self._tokens = self.features.require("tokens", ndim=4)
        T = self._rgb.shape[0]
        for what, arr in (("proposals", self._labels), ("features", self._tokens)):
            if arr.shape[0] != T:
                raise ValueError(f"{self.split_dir}/{what}/{name}: {arr.shape[0]} frames, render has {T}")
        self.T = T
        self.K = int(K or self.proposals.attrs.get("num_objects") or 3)
        self._slot_to_gt: np.ndarray | None = None

    @property
    def token_dim(self) -> int:
        return int(self._tokens.shape[1])

    @property
    def slot_to_gt(self) -> np.ndarray:
        if self._slot_to_gt is None:
            self._slot_to_gt = match_slots(np.asarray(self._labels[...]), np.asarray(self._modal[...]), self.K)
        return self._slot_to_gt

    def read(self, frames: Sequence[int] | None = None) -> dict:
        """``rgb`` [n,3,H,W] f32 (normalised), ``masks`` [n,K,H,W] f32 proposal masks,
        ``targets`` [n,K,H,W] bool GT modal mask of each slot, ``tokens`` [n,C,h,w] f32,
        ``frames`` [n] int."""
        idx = np.arange(self.T) if frames is None else np.asarray(frames, np.int64)

        contiguous = len(idx) > 0 and np.all(np.diff(idx) == 1)

        def take(a):
            if contiguous:                      # one slice read (much faster than frame by frame)
                return np.asarray(a[int(idx[0]):int(idx[-1]) + 1])
            return np.stack([np.asarray(a[int(t)]) for t in idx])

        labels = take(self._labels)
        return {"rgb": normalize_rgb(take(self._rgb)), "masks": proposal_masks(labels, self.K),
                "targets": slot_targets(take(self._modal), self.slot_to_gt),
                "tokens": take(self._tokens).astype(np.float32), "frames": idx}


def list_refine_videos(split_dir: str | os.PathLike) -> list[str]:
    """Names of the videos of a split that have render, proposals and features stores."""
    split_dir = Path(split_dir)
    names = []
    for store in list_split(split_dir / "render"):
        if (split_dir / "proposals" / store.name).exists() and (split_dir / "features" / store.name).exists():
            names.append(store.name)
    return names
