"""Mask correction of a whole sequence with the trained corrector (stage ``corrector``).

Windows (:func:`window_starts`)
-------------------------------
The sequence is cut into non-overlapping windows of ``window`` target frames
(paper: T = 7) starting at ``0, window, 2 window, ...``; the last window is
aligned to the end of the sequence (start ``T - window``), so it overlaps the
previous one when ``window`` does not divide ``T``. A sequence shorter than the
window is one window of ``T`` frames. **Every frame is written exactly once**:
frames of the last window that the previous window already produced are
skipped (the previous window's prediction stands; the last window still sees
them as context), so frames are yielded in order as soon as their window is done.

Exemplars
---------
Per object ``k`` the exemplars stage gives ``frames [K, t]`` (best first, ``-1``
padding) and ``scores [K, t]`` (the selector's relative error area, lower is
better). The corrector uses all of them. Weight of an exemplar:
``1 / (1 + score)`` (0 for padding or a non-finite score): for a proposal
without false positives, ``score = FN / (area + 1) ~ FN / TP`` and
``1 / (1 + score)`` is its IoU, which is the weight the corrector was trained with
(oracle IoU, :mod:`pipeline.corrector.train`). The tokens and proposal
masks of the distinct exemplar frames (at most ``K * t``, whatever the length
of the sequence) are read **once** per sequence, the masks area-pooled to token
resolution right away, so memory is bounded by ``K * t`` token frames plus one
window.

Fallback: an object with no exemplar at all (its proposal was empty, or never
trusted, everywhere) keeps its **proposal mask** as its probability map (0/1);
the corrector's output for it is not used.

Label map (:func:`label_map`): ``k + 1`` where object ``k`` has the largest
probability and it exceeds ``threshold`` (0.5), else 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, NamedTuple

import numpy as np
import torch

from pipeline.core.device import autocast, model_device
from pipeline.corrector.model import pool_masks
from pipeline.exemplars.scoring import exemplar_weights
from pipeline.core.arrays import normalize_rgb, proposal_masks

__all__ = ["CorrectedFrame", "window_starts", "exemplar_weights", "gather_exemplars", "with_fallback", "label_map",
           "correct_sequence", "write_corrected", "STAGE_INPUTS", "correct_stores"]


class CorrectedFrame(NamedTuple):
    t: int
    probs: np.ndarray    # [K, H, W] float16
    labels: np.ndarray   # [H, W] uint8, 0 = background, k + 1 = object k


def window_starts(T: int, window: int) -> list[int]:
    """Starts of the windows of ``window`` frames covering ``range(T)`` (module docstring):
    ``0, window, 2 window, ...`` and a last window starting at ``T - window``; ``[0]`` if
    ``T <= window`` (then the one window has ``T`` frames)."""
    T, window = int(T), int(window)
    if T < 1:
        raise ValueError(f"a sequence needs at least one frame, got T={T}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if T <= window:
        return [0]
    starts = list(range(0, T - window + 1, window))
    if starts[-1] + window < T:
        starts.append(T - window)
    return starts


def gather_exemplars(tokens_reader: Any, labels_reader: Any, frames: np.ndarray, scores: np.ndarray
                     ) -> dict[str, torch.Tensor]:
    """Read the exemplar frames of all objects once: ``ex_frame [E]`` int64 (distinct, sorted),
    ``ex_tokens [E, C, h, w]`` f32, ``ex_masks [E, K, h, w]`` (object k's proposal at frame e,
    area-pooled to token resolution, 0 if e is not one of k's exemplars), ``ex_weight [E, K]``,
    ``has [K]`` bool (object has at least one exemplar with a positive weight)."""
    from pipeline.corrector.model import exemplar_inputs

    frames = np.asarray(frames, np.int64)
    K = frames.shape[0]
    T = len(tokens_reader)
    if frames.size and frames.max() >= T:
        raise ValueError(f"exemplar frame {int(frames.max())} is out of range for a sequence of {T} frames")
    w = exemplar_weights(frames, scores)
    frames = np.where(w > 0, frames, -1)
    ex_frame, ex_weight, member = exemplar_inputs(frames, w)
    C, h, wd = (int(v) for v in tokens_reader.shape[1:])
    E = len(ex_frame)
    tok = torch.zeros((E, C, h, wd), dtype=torch.float32)
    masks = torch.zeros((E, K, h, wd), dtype=torch.float32)
    for i, f in enumerate(ex_frame):
        tok[i] = torch.as_tensor(np.asarray(tokens_reader[int(f)], np.float32))
        m = torch.from_numpy(proposal_masks(np.asarray(labels_reader[int(f)]), K))
        masks[i] = pool_masks(m, (h, wd)) * torch.from_numpy(member[i]).float()[:, None, None]
    return {"ex_frame": torch.from_numpy(ex_frame), "ex_tokens": tok, "ex_masks": masks,
            "ex_weight": torch.from_numpy(ex_weight), "has": torch.from_numpy(ex_weight.max(0) > 0 if E else
                                                                              np.zeros(K, bool))}


def with_fallback(probs: torch.Tensor, proposal: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """``probs [..., K, H, W]`` with the objects where ``has [K]`` is False replaced by their
    proposal masks ``proposal [..., K, H, W]`` (0/1)."""
    keep = has.to(device=probs.device, dtype=torch.bool)[:, None, None]
    return torch.where(keep, probs, proposal.to(device=probs.device, dtype=probs.dtype))


def label_map(probs: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Label map ``[..., H, W]`` uint8: ``k + 1`` where object k has the largest probability
    (``probs [..., K, H, W]``) and it exceeds ``threshold``, else 0 (the proposals' rule,
    :func:`pipeline.oclr.train.modal_labels`)."""
    from pipeline.oclr.model import modal_labels

    return modal_labels(probs, threshold)


@torch.no_grad()
def correct_sequence(model: torch.nn.Module, rgb_reader: Any, labels_reader: Any, tokens_reader: Any,
                     exemplar_frames: np.ndarray, exemplar_scores: np.ndarray, window: int = 7,
                     K: int | None = None, device: Any = None, threshold: float = 0.5, amp: bool = True,
                     info: dict | None = None) -> Iterator[CorrectedFrame]:
    """Yield a :class:`CorrectedFrame` for every frame ``t = 0..T-1`` of a sequence, in order.

    Args:
        model: a :class:`pipeline.corrector.model.Corrector` (already on its device).
        rgb_reader: ``len()`` = T, ``[a:b]`` -> ``[n, H, W, 3]`` uint8 (e.g. a FrameReader).
        labels_reader: proposal label maps ``[T, H, W]`` uint8 (``k + 1`` = slot k), frame-indexable.
        tokens_reader: backbone tokens ``[T, C, h, w]``, frame-indexable, with ``.shape``.
        exemplar_frames, exemplar_scores: ``[K, t]`` (module docstring).
        window: target frames per forward pass (paper 7).
        K: objects (default: the model's); must match the exemplar arrays.
        device: where the inputs go (``None``: the model's device; ``"auto"``: CUDA if present).
        threshold: of the label map. amp: bf16 autocast on CUDA.
        info: if a dict, filled with ``windows`` (``[start, end]`` pairs), ``fallback`` (objects
            without exemplars), ``exemplar_frames`` (E) and ``exemplars_per_object``.
    """
    T = len(rgb_reader)
    if len(labels_reader) != T or len(tokens_reader) != T:
        raise ValueError(f"rgb ({T}), proposals ({len(labels_reader)}) and tokens ({len(tokens_reader)}) "
                         f"have different frame counts")
    cfg = getattr(model, "cfg", None)
    K = int(K or (cfg.num_objects if cfg is not None else np.asarray(exemplar_frames).shape[0]))
    ef = np.asarray(exemplar_frames)
    if ef.ndim != 2 or ef.shape[0] != K:
        raise ValueError(f"exemplar frames must be [K={K}, t], got shape {ef.shape}")
    dev = model_device(model, device)
    model.eval()
    ex = gather_exemplars(tokens_reader, labels_reader, ef, exemplar_scores)
    has = ex["has"].to(dev)
    exb = {k: ex[k][None].to(dev) for k in ("ex_tokens", "ex_masks", "ex_weight", "ex_frame")}
    if info is not None:
        info.update({"windows": [], "fallback": [int(k) for k in np.nonzero(~ex["has"].numpy())[0]],
                     "exemplar_frames": int(len(ex["ex_frame"])),
                     "exemplars_per_object": [int(v) for v in (ex["ex_weight"] > 0).sum(0).tolist()]})
    emitted = 0
    for s in window_starts(T, window):
        e = min(T, s + window)
        rgb = torch.from_numpy(normalize_rgb(np.asarray(rgb_reader[s:e])))[None].to(dev)
        masks = torch.from_numpy(proposal_masks(np.asarray(labels_reader[s:e]), K))[None].to(dev)
        tok = torch.from_numpy(np.asarray(tokens_reader[s:e], np.float32))[None]
        tgt_frame = torch.arange(s, e, dtype=torch.int64, device=dev)[None]
        with autocast(dev, amp):
            out = model(rgb, masks, tok.to(dev), exb["ex_tokens"], exb["ex_masks"], exb["ex_weight"],
                        exb["ex_frame"], tgt_frame)
        probs = with_fallback(torch.sigmoid(out["mask_logits"][0].float()), masks[0], has)   # [L, K, H, W]
        labels = label_map(probs, threshold)
        if info is not None:
            info["windows"].append([s, e])
        for t in range(max(s, emitted), e):
            i = t - s
            yield CorrectedFrame(t, probs[i].cpu().numpy().astype(np.float16), labels[i].cpu().numpy())
        emitted = e
        del out, probs, labels, rgb, masks, tok
    assert emitted == T


# --------------------------------------------------------------------------- store
def write_corrected(frames_store: Any, proposals_store: Any, features_store: Any, exemplars_store: Any, out: Any,
                    model: torch.nn.Module, info: dict, cp: dict | None = None, device: Any = None,
                    sequence: str | None = None, stage: str = "corrector") -> dict:
    """Corrector store ``out`` (``probs`` [T, K, H, W] f16, ``labels`` [T, H, W] u8) of one sequence.

    ``model``/``info``: from :func:`pipeline.corrector.train.load_corrector`; ``cp``: the
    ``corrector`` params (``checkpoint``, ``window``, ``threshold``, ...), recorded as provenance.
    Checks that the features store was made by the backbone the checkpoint was trained on.
    ``stage``: the stage name recorded in the store (``adapted`` for the adapted corrector).
    """
    from pipeline.core.store import (
        ArtifactError,
        ArtifactWriter,
        FrameReader,
        open_artifact,
    )
    from pipeline.corrector.model import backbone_name, backbone_sha256

    cp = dict(cp or {})
    frames_art = open_artifact(frames_store, stage="frames")
    prop_art = open_artifact(proposals_store, stage="proposals")
    feat_art = open_artifact(features_store, stage="features")
    exm_art = open_artifact(exemplars_store, stage="exemplars")
    rgb = frames_art.require("rgb", dtype="uint8", ndim=4)
    labels = prop_art.require("labels", dtype="uint8", ndim=3)
    tokens = feat_art.require("tokens", ndim=4)
    ex_frames = np.asarray(exm_art.require("frames", ndim=2)[...])
    ex_scores = np.asarray(exm_art.require("scores", ndim=2)[...])
    T, H, W, _ = rgb.shape
    for art, arr in ((prop_art, labels), (feat_art, tokens)):
        if arr.shape[0] != T:
            raise ArtifactError(f"{art.path}: {arr.shape[0]} frames, the frames store has {T}")
    if tuple(labels.shape[1:]) != (H, W):
        raise ArtifactError(f"{prop_art.path}: labels are {tuple(labels.shape[1:])}, frames are {(H, W)}")
    C = int(tokens.shape[1])
    store_bb = backbone_name(feat_art.attrs.get("backbone"))
    store_sha = backbone_sha256(feat_art.attrs.get("backbone"))
    ck_C, ck_bb, ck_sha = int(info["token_dim"]), info.get("backbone"), info.get("backbone_sha256")
    ckpt_name = str(cp.get("checkpoint") or info.get("path"))
    if C != ck_C or (store_bb and ck_bb and store_bb != ck_bb):
        raise ArtifactError(f"{feat_art.path}: tokens from backbone {store_bb!r} with {C} channels, but the "
                            f"corrector checkpoint {ckpt_name} was trained on {ck_bb!r} tokens with {ck_C} "
                            f"channels; rerun the features stage with that backbone (features.backbone) or "
                            f"train the corrector on these features")
    if store_sha and ck_sha and store_sha != ck_sha:
        raise ArtifactError(f"{feat_art.path}: backbone {store_bb!r} weights sha256 {store_sha[:12]}..., but the "
                            f"corrector checkpoint {ckpt_name} was trained on features from weights "
                            f"{ck_sha[:12]}...; use the same backbone weights")
    K = model.cfg.num_objects
    if ex_frames.shape[0] != K:
        raise ArtifactError(f"{exm_art.path}: exemplars for {ex_frames.shape[0]} objects, the corrector has K={K}")
    window = int(cp.get("window") or info.get("train", {}).get("window") or 7)
    threshold = float(cp.get("threshold", 0.5))
    dev = device if device is not None else next(model.parameters()).device
    ckpt = {"path": ckpt_name, "sha256": info["file_sha256"]}
    run: dict = {}
    with ArtifactWriter(out, stage=stage, params={"corrector": cp},
                        inputs={"frames": frames_art.path, "proposals": prop_art.path, "features": feat_art.path,
                                "exemplars": exm_art.path, "checkpoint": ckpt}) as wr:
        probs_w = wr.create("probs", (T, K, H, W), "float16", ("frame", "object", "y", "x"),
                            attrs={"meaning": "corrected mask probability of object slot k (slots as in the "
                                              "proposals; proposal mask where the object has no exemplar)"})
        labels_w = wr.create("labels", (T, H, W), "uint8", ("frame", "y", "x"),
                             attrs={"meaning": f"0 = background, k+1 = object slot k where its probability is "
                                               f"the largest and > {threshold}"})
        for fr in correct_sequence(model, FrameReader(rgb), FrameReader(labels), FrameReader(tokens), ex_frames,
                                   ex_scores, window=window, K=K, device=dev, threshold=threshold, info=run):
            probs_w[fr.t] = fr.probs
            labels_w[fr.t] = fr.labels
        wr.attrs.update({
            "sequence": sequence or frames_art.attrs.get("sequence") or Path(str(out)).stem, "num_objects": K,
            "window": window, "threshold": threshold, "token_dim": C,
            "proposal_inputs": bool(getattr(model, "proposal_inputs", True)),
            "backbone": feat_art.attrs.get("backbone"),   # as the features store records it (lineage)
            "windows": run.get("windows"), "fallback_objects": run.get("fallback"),
            "exemplar_frames": run.get("exemplar_frames"), "exemplars_per_object": run.get("exemplars_per_object"),
            "checkpoint": {**ckpt, "weights_sha256": info["weights_sha256"], "encoding": info["encoding"],
                           "train": info.get("train"), "summary": info.get("summary")},
            "model_config": info["model_config"], "device": str(dev),
            "frame_names": frames_art.attrs.get("frame_names")})
    return {"T": T, "window": window, **run}


#: the stores the ``corrector`` and ``adapted`` stages read per sequence, in :func:`write_corrected`'s order
STAGE_INPUTS = ("frames", "proposals", "features", "exemplars")


def correct_stores(data: Path, seq: str, out: Path, model: torch.nn.Module, info: dict, cp: dict, device: Any,
                   stage: str, note: str = "") -> str:
    """One sequence of stage ``corrector`` or ``adapted``: :func:`write_corrected` on the stores
    ``data/<input>/<seq>.zarr`` of :data:`STAGE_INPUTS`; returns the stage's log line."""
    run = write_corrected(*(Path(data) / i / f"{seq}.zarr" for i in STAGE_INPUTS), out, model, info, cp,
                          device=device, sequence=seq, stage=stage)
    fb = f", proposals kept for objects {run['fallback']} (no exemplars)" if run.get("fallback") else ""
    return (f"{stage}: {seq} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
            f"{run['window']}{fb}{note}) -> {out}")
