"""The two mask stages built on motion-aware propagation, one sequence at a time.

* :func:`write_propagate_gt` (stage ``propagate_gt``): semi-supervised VOS, the first frame's
  ground-truth objects propagated through the video (how the field judges video features).
* :func:`write_propagate` (stage ``propagate``): unsupervised refinement, each proposal slot's
  exemplar frames (the selector's choice, ``exemplars`` store) with that slot's masks in a mask store
  of the same slots (``propagate.references``: the proposals, the corrector's or the adapted
  corrector's masks) as the long-term references, propagated forward and backward through the whole
  video and averaged; a slot without exemplars keeps its mask of that store.

Both read the ``frames`` store (``rgb_full``, else ``rgb``; resized to ``mamp.height``) and the
``flow`` store (adjacent flows, resized to the propagation size and chained for near
references; DIS between the frames for far ones, ``mamp.far_flow``), and write a mask store
like the corrector's: ``probs`` ``float16 [T, K, H, W]`` and ``labels`` ``uint8 [T, H, W]``
at the propagation size, which ``evaluate``, ``crf`` (``crf.input``) and ``export`` accept.
Attributes name the backbone and whether it is self-supervised.
"""

from __future__ import annotations

from collections import OrderedDict

import os
from pathlib import Path
from typing import Any, Mapping

import cv2
import numpy as np
import torch

from pipeline.core.device import resolve_device
from pipeline.mamp.propagate import (
    FeatureCache,
    FeatureFn,
    FlowProvider,
    PropagationConfig,
    make_feature_fn,
    one_hot,
    propagate_sequence,
    propagate_sequence_tracks,
)

__all__ = ["PARAM_KEYS", "build", "write_propagate_gt", "write_propagate", "dis_estimator"]

#: every key of the ``mamp`` params section (unknown or missing keys are errors)
PARAM_KEYS = ("backbone", "checkpoint", "height", "radius", "topk", "temperature", "long_term", "short_term",
              "given_refs", "registration", "align", "max_chain", "far_flow", "threshold", "device", "amp")


def check_params(p: Mapping[str, Any]) -> dict:
    unknown = sorted(set(p) - set(PARAM_KEYS))
    missing = [k for k in PARAM_KEYS if k not in p]
    if unknown or missing:
        raise KeyError(f"params.yaml mamp: unknown keys {unknown}, missing keys {missing}")
    return dict(p)


def build(p: Mapping[str, Any], root: Path | None = None, build_backbone: Any = None
          ) -> tuple[FeatureFn, PropagationConfig, torch.device]:
    """Backbone, propagation config and device from the ``mamp`` params section. ``build_backbone``
    (:func:`pipeline.features.build_backbone`) is needed for the :mod:`pipeline.features` backbones."""
    p = check_params(p)
    dev = resolve_device(p["device"])
    name = str(p["backbone"])
    temps = p["temperature"]
    if name not in temps:
        raise KeyError(f"params.yaml mamp.temperature has no entry for backbone {name!r}")
    ckpt = p["checkpoint"]
    if ckpt and root is not None and not Path(ckpt).is_absolute():
        ckpt = str(root / ckpt)
    feats = make_feature_fn(name, dev, checkpoint=ckpt, amp=bool(p["amp"]), build_backbone=build_backbone)
    cfg = PropagationConfig.from_params({**p, "similarity": feats.similarity}, float(temps[name]))
    return feats, cfg, dev


def dis_estimator(frames_at: Any) -> Any:
    """``estimate(a, b) -> float32 [2, H, W]``: DIS (medium) flow a -> b of ``frames_at(t)`` (RGB)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    def estimate(a: int, b: int) -> np.ndarray:
        ga = cv2.cvtColor(frames_at(a), cv2.COLOR_RGB2GRAY)
        gb = cv2.cvtColor(frames_at(b), cv2.COLOR_RGB2GRAY)
        return dis.calc(ga, gb, None).transpose(2, 0, 1).astype(np.float32)

    return estimate


class _Video:
    """Frames of a frames store at the propagation size, and the flow store's flows resized to it."""

    def __init__(self, frames_art, flow_art, height: int):
        self.src = frames_art["rgb_full"] if "rgb_full" in frames_art else frames_art.require("rgb", ndim=4)
        self.T, H0, W0 = (int(v) for v in self.src.shape[:3])
        self.H = min(int(height), H0)
        self.W = max(1, round(W0 * self.H / H0))
        self.flow = flow_art.require("flow", ndim=4) if flow_art is not None else None
        if self.flow is not None and self.flow.shape[0] != self.T:
            from pipeline.core.store import ArtifactError

            raise ArtifactError(f"{flow_art.path}: {self.flow.shape[0]} frames, the frames store has {self.T}")
        self._frames: OrderedDict = OrderedDict()   # the last few frames read (far flow alternates pairs)

    def frame(self, t: int) -> np.ndarray:
        if t not in self._frames:
            img = np.asarray(self.src[t])
            if img.shape[:2] != (self.H, self.W):
                img = cv2.resize(img, (self.W, self.H), interpolation=cv2.INTER_AREA)
            self._frames[t] = img
            while len(self._frames) > 16:
                self._frames.popitem(last=False)
        self._frames.move_to_end(t)
        return self._frames[t]

    def adjacent(self, t: int) -> np.ndarray:
        from pipeline.core.arrays import resize_flow

        f = np.asarray(self.flow[t], dtype=np.float32)
        return resize_flow(f.reshape(2, 2, *f.shape[-2:]), (self.H, self.W)).reshape(4, self.H, self.W)

    def flows(self, feats: FeatureFn, p: Mapping[str, Any], dev) -> FlowProvider:
        est = dis_estimator(self.frame) if p["far_flow"] == "direct" else None
        return FlowProvider(feats.stride, adjacent=self.adjacent if self.flow is not None else None,
                            estimate=est, max_chain=int(p["max_chain"]), device=dev, far=str(p["far_flow"]))

    def mask(self, m: np.ndarray) -> np.ndarray:
        return cv2.resize(np.asarray(m, np.uint8), (self.W, self.H), interpolation=cv2.INTER_NEAREST)


def _writer(out, stage: str, p: Mapping, feats: FeatureFn, inputs: dict):
    from pipeline.core.store import ArtifactWriter

    return ArtifactWriter(out, stage=stage, params={"mamp": dict(p)}, inputs=inputs)


def _arrays(wr, p: Mapping, feats: FeatureFn, T: int, K: int, H: int, W: int, frames, attrs: dict):
    probs = wr.create("probs", (T, K, H, W), "float16", ("frame", "object", "y", "x"),
                      attrs={"meaning": "propagated probability of object slot k"})
    labels = wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                       attrs={"meaning": f"0 = background, k+1 = object slot k where its probability is the "
                                         f"largest and > {p['threshold']}"})
    wr.attrs.update({"backbone": feats.describe, "self_supervised": bool(feats.describe.get("self_supervised")),
                     "propagation_size": [H, W], "num_objects": K, "frame_names": frames.attrs.get("frame_names"),
                     **attrs})
    return probs, labels


def _labels(obj: np.ndarray, threshold: float) -> np.ndarray:
    """``obj [K, H, W]`` -> uint8 labels (k + 1 where slot k is the largest and > threshold)."""
    if obj.shape[0] == 0:
        return np.zeros(obj.shape[1:], np.uint8)
    best = obj.argmax(0)
    return np.where(obj.max(0) > threshold, best + 1, 0).astype(np.uint8)


def write_propagate_gt(frames_store: str | os.PathLike, flow_store: str | os.PathLike | None,
                       out: str | os.PathLike, params: Mapping[str, Any], root: Path | None = None,
                       sequence: str = "", built: tuple | None = None) -> dict:
    """Stage ``propagate_gt`` for one sequence (see the module docstring)."""
    from pipeline.core.store import ArtifactError, open_artifact

    frames = open_artifact(frames_store, stage="frames")
    if not frames.attrs.get("has_gt") or "gt" not in frames:
        raise ArtifactError(f"{frames.path}: no ground truth: propagate_gt needs the first frame's masks")
    flow = open_artifact(flow_store, stage="flow") if flow_store is not None else None
    p = check_params(params)
    feats, cfg, dev = built or build(p, root)
    v = _Video(frames, flow, int(p["height"]))
    gt0 = np.asarray(frames["gt"][0])
    gt0 = np.where(gt0 == 255, 0, gt0)
    K = int(gt0.max())
    if K < 1:
        raise ArtifactError(f"{frames.path}: the first frame's ground truth has no object to propagate")
    given = {0: one_hot(v.mask(gt0), K + 1)}
    inputs = {"frames": frames.path, **({"flow": flow.path} if flow is not None else {}),
              "weights": {"path": feats.describe.get("weights_path"), "sha256": feats.describe.get("weights_sha256")}}
    with _writer(out, "propagate_gt", p, feats, inputs) as wr:
        probs_w, labels_w = _arrays(wr, p, feats, v.T, K, v.H, v.W, frames,
                                    {"sequence": sequence, "references": "frame 0 ground truth"})
        for t, pr in propagate_sequence(v.T, v.frame, given, feats, v.flows(feats, p, dev), cfg, dev,
                                        both_ways=False):
            pr = pr.float().cpu().numpy()
            probs_w[t] = pr[1:].astype(np.float16)
            labels_w[t] = pr.argmax(0).astype(np.uint8)
    return {"T": v.T, "K": K, "size": [v.H, v.W]}


def write_propagate(frames_store: str | os.PathLike, flow_store: str | os.PathLike | None,
                    masks_store: str | os.PathLike, exemplars_store: str | os.PathLike,
                    out: str | os.PathLike, params: Mapping[str, Any], root: Path | None = None,
                    sequence: str = "", built: tuple | None = None, masks_stage: str = "proposals") -> dict:
    """Stage ``propagate`` for one sequence (see the module docstring); ``masks_store`` holds the
    reference masks (``labels``, slot k = label k + 1, the slots of the proposals), made by stage
    ``masks_stage``."""
    from pipeline.core.store import ArtifactError, open_artifact

    frames = open_artifact(frames_store, stage="frames")
    flow = open_artifact(flow_store, stage="flow") if flow_store is not None else None
    props = open_artifact(masks_store, stage=masks_stage)
    exm = open_artifact(exemplars_store, stage="exemplars")
    labels_p = props.require("labels", dtype="uint8", ndim=3)
    ex_frames = np.asarray(exm.require("frames", ndim=2)[...])
    p = check_params(params)
    feats, cfg, dev = built or build(p, root)
    v = _Video(frames, flow, int(p["height"]))
    if labels_p.shape[0] != v.T:
        raise ArtifactError(f"{props.path}: {labels_p.shape[0]} frames, the frames store has {v.T}")
    K = int(ex_frames.shape[0])
    inputs = {"frames": frames.path, masks_stage: props.path, "exemplars": exm.path,
              **({"flow": flow.path} if flow is not None else {}),
              "weights": {"path": feats.describe.get("weights_path"), "sha256": feats.describe.get("weights_sha256")}}
    refs = {k: sorted(int(f) for f in ex_frames[k] if f >= 0) for k in range(K)}
    fallback = [k for k in range(K) if not refs[k]]
    with _writer(out, "propagate", p, feats, inputs) as wr:
        probs_w, labels_w = _arrays(wr, p, feats, v.T, K, v.H, v.W, frames,
                                    {"sequence": sequence, "exemplar_frames": refs, "fallback_objects": fallback,
                                     "references": f"each slot's exemplar frames with its {masks_stage} masks"})
        cache = FeatureCache(feats, v.frame, v.T, dev)
        try:
            _propagate_slots(v, K, refs, labels_p, probs_w, feats, cfg, p, dev, cache)
        finally:
            cache.close()
        thr = float(p["threshold"])
        for t in range(v.T):
            labels_w[t] = _labels(np.asarray(probs_w[t], dtype=np.float32), thr)
    return {"T": v.T, "K": K, "size": [v.H, v.W], "fallback": fallback}


def _propagate_slots(v: _Video, K: int, refs: dict, labels_p, probs_w, feats: FeatureFn, cfg: PropagationConfig,
                     p: Mapping, dev, cache: FeatureCache) -> None:
    """Each slot a separate binary propagation (forward + backward), run in lockstep so that the slots
    share each query frame's features, flows and window scores; the probabilities go straight to the
    store. Slots without exemplars keep their masks of the reference store."""
    flows = v.flows(feats, p, dev)
    live = [k for k in range(K) if refs[k]]
    for k in range(K):
        if not refs[k]:
            for t in range(v.T):
                probs_w[t, k] = v.mask(np.asarray(labels_p[t]) == k + 1).astype(np.float16)
    if not live:
        return
    givens = []
    for k in live:
        givens.append({f: one_hot(v.mask(np.asarray(labels_p[f]) == k + 1), 2) for f in refs[k]})
    for t, prs in propagate_sequence_tracks(v.T, v.frame, givens, feats, flows, cfg, dev, feature_of=cache):
        for k, pr in zip(live, prs):
            probs_w[t, k] = pr[1].float().cpu().numpy().astype(np.float16)
