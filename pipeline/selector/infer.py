"""Selector inference for whole videos: error maps and exemplar scores, chunked and streaming.

The selector (:mod:`pipeline.selector.model`) sees one object over at most
``max_frames`` (100) frames. A video of ``T`` frames is cut into
``n = ceil(T / chunk)`` consecutive, non-overlapping chunks of balanced length
(:func:`chunk_spans`: boundaries ``round(i T / n)``, so every chunk has
``floor(T/n)`` or ``ceil(T/n)`` frames, every frame is predicted exactly once
and no chunk is left with a handful of frames and no temporal context; e.g.
130 frames with ``chunk=100`` -> 65 + 65). Every chunk uses temporal
embeddings ``0 .. L-1``.

Per chunk, every object slot ``k < K`` is run separately (input mask =
``labels == k + 1``). Outputs per frame: ``error`` ``[K, 3, H, W]`` float16
softmax probabilities (FP, FN, correct) and ``score`` ``[K]`` float32, the
relative error area :func:`pipeline.exemplars.scoring.relative_error_area` computed on
the float16 probabilities that are stored (so it can be recomputed from the
store exactly), ``+inf`` where the proposal has fewer than ``min_area`` pixels.

``skip_empty``: a slot whose proposal is empty in every frame of a chunk is not
run; its error map there is stored as "correct" everywhere (channel 2 = 1) and
its score is ``+inf`` -- the score any run would give it (area 0 < min_area),
so exemplars and everything downstream are unchanged; only the (unused) error
maps of non-existent proposals are not predicted. The run info lists the
skipped (chunk, slot) pairs.

Memory: one chunk of inputs (RGB, labels, tokens of at most ``chunk`` frames),
the model's activations for one object (the CNN runs ``frame_batch`` frames at
a time, the attention ``attn_block`` query frames at a time) and the chunk's
outputs ``[L, K, 3, H, W]`` float16, written into the store before the next
chunk is read. Nothing grows with ``T``.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from pipeline.core.device import autocast, model_device
from pipeline.core.store import ArtifactError
from pipeline.exemplars.scoring import CORRECT, relative_error_area
from pipeline.core.arrays import normalize_rgb

__all__ = ["CLASSES", "ChunkPrediction", "chunk_spans", "object_logits", "iter_error_maps", "predict_error_maps",
           "check_backbone", "write_selector"]

CLASSES = ["false_positive", "false_negative", "correct"]


class ChunkPrediction(NamedTuple):
    start: int
    end: int
    error: np.ndarray    # [L, K, 3, H, W] float16 softmax probabilities
    score: np.ndarray    # [L, K] float32 relative error area (+inf: proposal < min_area)


def chunk_spans(T: int, chunk: int) -> list[tuple[int, int]]:
    """``ceil(T / chunk)`` consecutive non-overlapping ``(start, end)`` spans of balanced
    length covering ``range(T)`` (boundaries ``round(i * T / n)``)."""
    T, chunk = int(T), int(chunk)
    if T < 1:
        raise ValueError(f"a video needs at least one frame, got T={T}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    n = math.ceil(T / chunk)
    bounds = [int(round(i * T / n)) for i in range(n + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(n)]


@torch.no_grad()
def object_logits(model: torch.nn.Module, rgb: Any, mask: Any, tokens: Any, device: Any = None, amp: bool = True,
                  frame_batch: int = 16, attn_block: int = 10, flip_tta: bool = False) -> torch.Tensor:
    """Error-map logits ``[L, 3, H, W]`` (float32, CPU) of ONE object over one chunk.

    ``rgb [L, 3, H, W]`` normalised float, ``mask [L, H, W]`` (0/1 or bool), ``tokens
    [L, C, h, w]``; numpy or torch. The model must already be on ``device`` (default: where
    its parameters are) and in eval mode. ``flip_tta``: also run the horizontally mirrored
    input and return the log of the mean of both softmax maps (mirrored back): twice the
    cost, a less noisy error map.
    """
    dev = model_device(model, device)
    x = torch.as_tensor(np.asarray(rgb, np.float32) if not torch.is_tensor(rgb) else rgb).float().to(dev)
    m = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).float().to(dev)
    tok = torch.as_tensor(np.asarray(tokens) if not torch.is_tensor(tokens) else tokens).float().to(dev)
    prev = getattr(model, "attn_block_frames", 0)
    model.attn_block_frames = int(attn_block)
    try:
        with autocast(dev, amp):
            out = model(x[None], m[None, :, None], tok[None], frame_batch=frame_batch)[0].float()
            if flip_tta:
                mirrored = model(x[None].flip(-1), m[None, :, None].flip(-1), tok[None].flip(-1),
                                 frame_batch=frame_batch)[0].float().flip(-1)
                out = torch.log((torch.softmax(out, 1) + torch.softmax(mirrored, 1)) / 2)
    finally:
        model.attn_block_frames = prev
    return out.cpu()


def iter_error_maps(model: torch.nn.Module, rgb_reader: Any, labels_reader: Any, tokens_reader: Any, K: int,
                    chunk: int = 100, device: Any = None, min_area: int = 20, amp: bool = True,
                    skip_empty: bool = True, frame_batch: int = 16, attn_block: int = 10,
                    info: dict | None = None, soft: bool = False, flip_tta: bool = False) -> Iterator[ChunkPrediction]:
    """Yield a :class:`ChunkPrediction` per chunk of the video, in order.

    Readers are array-likes sliced along frames (``reader[a:b]``; e.g.
    :class:`pipeline.core.store.FrameReader`): ``rgb_reader [T, H, W, 3]`` uint8,
    ``labels_reader [T, H, W]`` uint8 (0 background, ``k + 1`` = slot ``k``),
    ``tokens_reader [T, C, h, w]``. ``chunk`` is capped at the model's ``max_frames``.
    ``info`` (a dict) receives ``spans``, ``chunk`` and ``skipped`` ``[[start, k], ...]``.
    ``soft``: score with the expected error area (see :func:`pipeline.exemplars.scoring.relative_error_area`).
    ``flip_tta``: average with the mirrored input (:func:`object_logits`).
    """
    T = len(rgb_reader)
    if len(labels_reader) != T or len(tokens_reader) != T:
        raise ValueError(f"selector: rgb has {T} frames, labels {len(labels_reader)}, tokens {len(tokens_reader)}")
    cfg = getattr(model, "cfg", None)
    chunk = min(int(chunk), int(getattr(cfg, "max_frames", chunk)))
    spans = chunk_spans(T, chunk)
    dev = model_device(model, device)
    was = model.training
    model.eval()
    skipped: list[list[int]] = []
    if info is not None:
        info.update({"spans": [list(s) for s in spans], "chunk": chunk, "skipped": skipped})
    try:
        for a, b in spans:
            rgb = normalize_rgb(np.asarray(rgb_reader[a:b]))                      # [L, 3, H, W]
            labels = np.asarray(labels_reader[a:b])
            tokens = np.asarray(tokens_reader[a:b], np.float32)
            L, _, H, W = rgb.shape
            if labels.shape != (L, H, W):
                raise ValueError(f"selector: labels {labels.shape[1:]} and rgb {(H, W)} differ in size")
            error = np.zeros((L, K, 3, H, W), np.float16)
            masks = labels[:, None] == np.arange(1, K + 1, dtype=labels.dtype)[None, :, None, None]   # [L, K, H, W]
            for k in range(K):
                if skip_empty and not masks[:, k].any():
                    error[:, k, CORRECT] = 1.0
                    skipped.append([a, k])
                    continue
                logits = object_logits(model, rgb, masks[:, k], tokens, dev, amp, frame_batch, attn_block, flip_tta)
                error[:, k] = torch.softmax(logits, dim=1).numpy().astype(np.float16)
            score = relative_error_area(error, masks, min_area=max(1, int(min_area)), soft=soft).astype(np.float32)
            yield ChunkPrediction(a, b, error, score)
    finally:
        model.train(was)


def predict_error_maps(model: torch.nn.Module, rgb_reader: Any, labels_reader: Any, tokens_reader: Any, K: int,
                       chunk: int = 100, device: Any = None, **kw) -> dict:
    """:func:`iter_error_maps` gathered into arrays (small videos, tests): ``error``
    ``[T, K, 3, H, W]`` float16, ``score`` ``[T, K]`` float32, ``spans``, ``info``."""
    info: dict = {}
    parts = list(iter_error_maps(model, rgb_reader, labels_reader, tokens_reader, K, chunk, device, info=info, **kw))
    return {"error": np.concatenate([p.error for p in parts]), "score": np.concatenate([p.score for p in parts]),
            "spans": [(p.start, p.end) for p in parts], "info": info}


def _backbone_id(b: Any) -> tuple[str | None, str | None]:
    if isinstance(b, dict):
        return b.get("name"), b.get("weights_sha256")
    return (str(b) if b is not None else None), None


def check_backbone(model_config: dict, tokens_shape: tuple, backbone_attr: Any, where: str, ckpt: str) -> None:
    """Refuse a features store whose tokens do not fit the checkpoint (token_dim, backbone
    name, backbone weights sha256 where both are recorded) with an
    :class:`pipeline.core.store.ArtifactError` (one line from a stage) saying what to do."""
    C = int(tokens_shape[1])
    want_c = int(model_config.get("token_dim"))
    want_name, want_sha = model_config.get("backbone"), model_config.get("backbone_sha256")
    name, sha = _backbone_id(backbone_attr)
    fix = (f"recompute the features with the backbone the selector was trained on ({want_name}) or train "
           f"the selector on features of {name} (dvc repro training/dvc.yaml:train_selector) and publish it")
    if C != want_c:
        raise ArtifactError(f"{where}: tokens have C={C} ({name}) but {ckpt} expects token_dim={want_c} "
                            f"({want_name}); {fix}")
    if want_name and name and want_name != name:
        raise ArtifactError(f"{where}: features come from backbone {name!r} but {ckpt} was trained on "
                            f"{want_name!r}; {fix}")
    if want_sha and sha and want_sha != sha:
        raise ArtifactError(f"{where}: backbone {name} weights sha256 {sha[:12]} differ from the {want_sha[:12]} "
                            f"the selector {ckpt} was trained with; {fix}")


def write_selector(frames_store: Any, proposals_store: Any, features_store: Any, out: Any,
                   model: torch.nn.Module, info: dict, sp: dict | None = None, device: Any = None,
                   sequence: str | None = None) -> dict:
    """Selector store ``out`` (``error`` [T,K,3,H,W] f16, ``score`` [T,K] f32) of one sequence.

    ``model``/``info``: from :func:`pipeline.selector.train.load_selector`. ``sp``:
    the ``selector`` params (``chunk``, ``min_area``, ``checkpoint``, ``device``), recorded
    as provenance. Writes chunk by chunk. Returns the run info.
    """
    from pathlib import Path

    from pipeline.core.store import ArtifactWriter, FrameReader, open_artifact

    sp = dict(sp or {})
    frames = open_artifact(frames_store, stage="frames")
    props = open_artifact(proposals_store, stage="proposals")
    feats = open_artifact(features_store, stage="features")
    rgb = frames.require("rgb", dtype="uint8", ndim=4)
    labels = props.require("labels", dtype="uint8", ndim=3)
    tokens = feats.require("tokens", ndim=4)
    T, H, W, _ = rgb.shape
    if labels.shape != (T, H, W):
        raise ValueError(f"{props.path}: labels {labels.shape} do not match the frames' rgb {rgb.shape[:3]}")
    if tokens.shape[0] != T:
        raise ValueError(f"{feats.path}: {tokens.shape[0]} token frames, the sequence has {T}")
    ckpt_path = str(sp.get("checkpoint") or info.get("path"))
    check_backbone(info["model_config"], tokens.shape, feats.attrs.get("backbone"), str(feats.path), ckpt_path)
    K = int(props.attrs.get("num_objects") or 3)
    chunk, min_area = int(sp.get("chunk", 100)), int(sp.get("min_area", 20))
    score_mode = str(sp.get("score", "argmax"))
    if score_mode not in ("argmax", "soft"):
        raise ValueError(f"selector.score must be argmax or soft, got {score_mode!r}")
    tta = str(sp.get("tta") or "none")
    if tta not in ("none", "flip"):
        raise ValueError(f"selector.tta must be none or flip, got {tta!r}")
    dev = model_device(model, device)
    ckpt = {"path": ckpt_path, "sha256": info["file_sha256"]}
    run: dict = {}
    with ArtifactWriter(out, stage="selector", params={"selector": sp},
                        inputs={"frames": frames.path, "proposals": props.path, "features": feats.path,
                                "checkpoint": ckpt}) as wr:
        err = wr.create("error", (T, K, 3, H, W), "float16", ("frame", "object", "class", "y", "x"),
                        attrs={"meaning": "selector softmax probabilities per pixel of object slot k's "
                                          "proposal: class 0 false positive, 1 false negative, 2 correct",
                               "classes": CLASSES})
        score = wr.create("score", (T, K), "float32", ("frame", "object"),
                          attrs={"meaning": "relative error area (FP + FN pixels: "
                                            + ("argmax of error" if score_mode == "argmax" else
                                               "expected, sum of p_FP + p_FN")
                                            + ") / (proposal area + 1); lower is better; +inf where the proposal "
                                            f"has fewer than min_area={min_area} pixels", "score": score_mode})
        for cp in iter_error_maps(model, FrameReader(rgb), FrameReader(labels), FrameReader(tokens), K,
                                  chunk=chunk, device=dev, min_area=min_area, amp=bool(sp.get("amp", True)),
                                  skip_empty=bool(sp.get("skip_empty", True)), info=run,
                                  soft=score_mode == "soft", flip_tta=tta == "flip"):
            err[cp.start:cp.end] = cp.error
            score[cp.start:cp.end] = cp.score
        wr.attrs.update({
            "sequence": sequence or frames.attrs.get("sequence") or Path(str(out)).stem, "num_objects": K,
            "classes": CLASSES, "min_area": min_area, "score": score_mode, "tta": tta, "chunk": run["chunk"],
            "spans": run["spans"],
            "skipped_empty": run["skipped"],
            "checkpoint": {**ckpt, "weights_sha256": info["weights_sha256"], "encoding": info["encoding"],
                           "train": info.get("train", {}), "summary": info.get("summary", {})},
            "model_config": info["model_config"], "device": str(dev),
            "frame_names": frames.attrs.get("frame_names")})
    return {"T": T, "K": K, **run}


