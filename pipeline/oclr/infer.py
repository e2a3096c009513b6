"""OCLR proposals for a whole video: windowed, streaming, identity-consistent.

OCLR sees a clip of at most its training length (its time embeddings beyond
that are untrained), so a video of ``T`` frames is cut into windows of
``window`` frames overlapping by ``overlap`` frames (:func:`window_spans`):
starts ``0, s, 2s, ...`` with stride ``s = window - overlap`` and a last
window aligned to the end of the video (its overlap with the previous one may
then be longer). A video with ``T <= window`` is one window of ``T`` frames.

Identities: the K layers of a window are matched to the K global object slots
(the layers of the previous window, already in slot order) by the Hungarian
algorithm on the soft IoU of the amodal probabilities over the overlapping
frames, ``sum min(p, q) / sum max(p, q)``. The first window's layer ``k`` is
slot ``k``. In the overlap the two windows' (slot-ordered) probabilities and
order scores are blended with a linear ramp: on the ``i``-th of ``n``
overlapping frames the new window has weight ``(i + 1) / (n + 1)``.

Outputs per frame (:class:`FramePrediction`): ``amodal`` ``[K, H, W]`` float16
probabilities, ``labels`` ``[H, W]`` uint8 (0 background, ``k + 1`` where slot
``k``'s blended modal probability is the largest and > 0.5) and ``order``
``[K]`` float32 (the window's depth scores, higher = nearer the front, blended
in overlaps). The model runs at ``infer_size`` (flow resized bilinearly with u,
v rescaled) and its probabilities are resized back to the flow's size.

Memory: each window reads exactly its own frames from the flow reader (a slice
of at most ``window`` frames); predictions are held for the current window plus
the previous window's still-pending overlap frames, so memory does not grow
with ``T``. Frames are yielded in order as soon as no later window touches them.
"""

from __future__ import annotations

from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from pipeline.core.device import model_device
from pipeline.oclr.model import compose_modal, modal_labels

__all__ = ["FramePrediction", "window_spans", "soft_iou_matrix", "match_layers", "predict_sequence",
           "predict_arrays", "write_proposals"]


class FramePrediction(NamedTuple):
    t: int
    amodal: np.ndarray   # [K, H, W] float16 probabilities, slot order
    labels: np.ndarray   # [H, W] uint8, 0 = background, k + 1 = slot k
    order: np.ndarray    # [K] float32 depth scores (higher = nearer the front)


def window_spans(T: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(T)``: full windows of ``window`` frames with
    stride ``window - overlap``, the last one aligned to the end; one window if ``T <= window``."""
    T, window, overlap = int(T), int(window), int(overlap)
    if T < 1:
        raise ValueError(f"a video needs at least one frame, got T={T}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if T <= window:
        return [(0, T)]
    if not 1 <= overlap < window:
        raise ValueError(f"overlap must be in [1, window) to carry identities across windows, "
                         f"got overlap={overlap}, window={window}")
    starts = list(range(0, T - window, window - overlap)) + [T - window]
    return [(s, s + window) for s in starts]


def soft_iou_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[K, K']`` soft IoU ``sum min / sum max`` of probability maps ``a [n, K, H, W]`` and
    ``b [n, K', H, W]`` over frames and pixels (0 where both are empty)."""
    a, b = a.float().transpose(0, 1).flatten(1), b.float().transpose(0, 1).flatten(1)   # [K, N]
    inter = torch.minimum(a[:, None, :], b[None, :, :]).sum(-1)
    union = torch.maximum(a[:, None, :], b[None, :, :]).sum(-1)
    return torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter))


def match_layers(prev: torch.Tensor, cur: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``perm`` with ``perm[k]`` = the layer of ``cur`` that continues slot ``k`` of ``prev``
    (Hungarian on :func:`soft_iou_matrix`), and the matched soft IoUs."""
    iou = soft_iou_matrix(prev, cur).cpu().numpy().astype(np.float64)
    rows, cols = linear_sum_assignment(-iou)
    perm = np.empty(iou.shape[0], dtype=np.int64)
    perm[rows] = cols
    return perm, iou[rows, cols][np.argsort(rows)]


def _round_size(h: int, w: int, div: int) -> tuple[int, int]:
    return max(div, int(round(h / div)) * div), max(div, int(round(w / div)) * div)


def _resize_flow(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x [n, 4, H, W]`` to ``size`` (bilinear; u scaled by w/W, v by h/H)."""
    H, W = x.shape[-2:]
    h, w = size
    if (h, w) == (H, W):
        return x
    y = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=h < H or w < W)
    y[:, 0::2] *= w / W
    y[:, 1::2] *= h / H
    return y


@torch.no_grad()
def predict_sequence(model: torch.nn.Module, flow_reader: Any, window: int = 30, overlap: int = 10,
                     device: Any = None, batch: int = 1, infer_size: Sequence[int] | None = None,
                     amp: bool = True, info: dict | None = None,
                     threshold: float = 0.5) -> Iterator[FramePrediction]:
    """Yield a :class:`FramePrediction` for every frame ``t = 0..T-1`` of a video, in order.

    Args:
        model: called as ``model(flow [B, L, 4, h, w])`` -> dict with ``amodal_logits``
            ``[B, L, K, h, w]``, ``order_logits`` ``[B, K]`` and optionally
            ``modal_probs`` (else composed from the two).
        flow_reader: ``len()`` = T and ``flow_reader[a:b]`` -> ``[b-a, 4, H, W]`` float
            (``u_fwd, v_fwd, u_bwd, v_bwd``), e.g. a :class:`pipeline.core.store.FrameReader`.
        window, overlap: see :func:`window_spans`.
        device: where the inputs go (``None``: the model's device; ``"auto"``: CUDA when
            present); the model must already be there. ``amp``: bf16 autocast on CUDA.
        batch: windows per forward pass.
        infer_size: ``(h, w)`` the model runs at; ``None`` = the flow size rounded to a
            multiple of ``2**model.cfg.num_pools`` (as is for models without ``cfg``).
        threshold: modal probability a pixel needs to get a slot's label in ``labels``
            (:func:`pipeline.oclr.train.modal_labels`); amodal probabilities are
            returned as they are.
        info: if a dict, filled with ``windows`` (per window: ``start``, ``end``, ``perm``
            = layer of the window continuing each slot, ``match_iou``, ``order``),
            ``num_objects`` and ``infer_size``.
    """
    T = len(flow_reader)
    spans = window_spans(T, window, overlap)
    dev = model_device(model, device)
    model.eval()
    H, W = (int(s) for s in flow_reader.shape[-2:]) if hasattr(flow_reader, "shape") else (None, None)
    cfg = getattr(model, "cfg", None)
    div = 2 ** int(getattr(cfg, "num_pools", 0))

    if info is not None:
        info["windows"] = []
    pending: dict | None = None        # slot-ordered predictions of frames [p0, prev_end) at inference size
    emitted = 0
    isize = None

    def emit(upto: int, buf: dict) -> Iterator[FramePrediction]:
        nonlocal emitted
        for t in range(emitted, upto):
            i = t - buf["start"]
            am, mo = buf["amodal"][i], buf["modal"][i]
            if (am.shape[-2], am.shape[-1]) != (H, W):
                both = F.interpolate(torch.stack([am, mo]), size=(H, W), mode="bilinear", align_corners=False)
                am, mo = both[0].clamp(0, 1), both[1].clamp(0, 1)
            yield FramePrediction(t, am.cpu().numpy().astype(np.float16), modal_labels(mo, threshold).cpu().numpy(),
                                  buf["order"][i].float().cpu().numpy().astype(np.float32))
        emitted = upto

    for b0 in range(0, len(spans), max(1, int(batch))):
        group = spans[b0:b0 + max(1, int(batch))]
        xs = []
        for s, e in group:
            x = torch.as_tensor(np.asarray(flow_reader[s:e]), dtype=torch.float32)
            if x.dim() != 4 or x.shape[1] != 4:
                raise ValueError(f"flow frames must be [n, 4, H, W], got {tuple(x.shape)}")
            if H is None:
                H, W = int(x.shape[-2]), int(x.shape[-1])
            if isize is None:
                isize = tuple(int(v) for v in infer_size) if infer_size else \
                    (_round_size(H, W, div) if div > 1 else (H, W))
            xs.append(_resize_flow(x, isize))
        xb = torch.stack(xs).to(dev)
        with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(amp and dev.type == "cuda")):
            out = model(xb)
        probs = torch.sigmoid(out["amodal_logits"].float())               # [B, L, K, h, w]
        scores = out["order_logits"].float()                               # [B, K]
        modal = out.get("modal_probs")
        modal = compose_modal(probs, scores[:, None, :]) if modal is None else modal.float()

        for j, (s, e) in enumerate(group):
            am, mo, sc = probs[j], modal[j], scores[j]
            L, K = am.shape[:2]
            order = sc[None, :].expand(L, K)
            if pending is None:
                perm, miou = np.arange(K), np.ones(K)
            else:
                n = pending["end"] - s                                     # overlapping frames
                prev_am = pending["amodal"][s - pending["start"]:]
                perm, miou = match_layers(prev_am, am[:n])
                p = torch.as_tensor(perm, device=am.device)
                am, mo, order = am[:, p], mo[:, p], order[:, p]
                wgt = (torch.arange(1, n + 1, device=am.device, dtype=am.dtype) / (n + 1))[:, None, None, None]
                am = torch.cat([(1 - wgt) * prev_am + wgt * am[:n], am[n:]])
                mo = torch.cat([(1 - wgt) * pending["modal"][s - pending["start"]:] + wgt * mo[:n], mo[n:]])
                wo = wgt[:, :, 0, 0]
                order = torch.cat([(1 - wo) * pending["order"][s - pending["start"]:] + wo * order[:n], order[n:]])
            if info is not None:
                info["windows"].append({"start": s, "end": e, "perm": [int(v) for v in perm],
                                        "match_iou": [round(float(v), 4) for v in miou],
                                        "order": [round(float(v), 4) for v in order[-1].tolist()]})
            buf = {"start": s, "end": e, "amodal": am, "modal": mo, "order": order}
            k = b0 + j
            nxt = spans[k + 1][0] if k + 1 < len(spans) else e
            yield from emit(nxt, buf)
            # keep only the frames the next window overlaps
            pending = {"start": nxt, "end": e, "amodal": am[nxt - s:].clone(), "modal": mo[nxt - s:].clone(),
                       "order": order[nxt - s:].clone()}
            del buf, am, mo, order
        del xb, out, probs, modal, scores
    if info is not None:
        info["num_objects"] = int(pending["amodal"].shape[1]) if pending is not None else None
        info["infer_size"] = list(isize) if isize else None
    assert emitted == T


def predict_arrays(model: torch.nn.Module, flow: Any, **kw) -> dict:
    """:func:`predict_sequence` gathered into arrays (small videos / tests): ``amodal``
    ``[T, K, H, W]`` float16, ``labels`` ``[T, H, W]`` uint8, ``order`` ``[T, K]`` float32, ``info``."""
    info: dict = {}
    frames = list(predict_sequence(model, flow, info=info, **kw))
    return {"amodal": np.stack([f.amodal for f in frames]), "labels": np.stack([f.labels for f in frames]),
            "order": np.stack([f.order for f in frames]), "t": [f.t for f in frames], "info": info}


# --------------------------------------------------------------------------- stores
def write_proposals(flow_store: Any, out: Any, model: torch.nn.Module, info: dict, pp: dict | None = None,
                    device: Any = None, sequence: str | None = None, quiet: bool = False,
                    tracks: tuple[str, Any] | None = None) -> dict:
    """Proposals store ``out`` (arrays ``amodal``, ``labels``, ``order``) of one flow store.

    ``model``/``info``: from :func:`pipeline.oclr.train.load_oclr`. ``pp``: the
    ``proposals`` params (``window``, ``overlap``, ``infer_size``, ``batch``, ``threshold``,
    ``checkpoint``, ``split_with``), recorded as provenance. ``tracks``: ``(name, store)`` of the stage
    whose tracks split slots holding two objects (``proposals.split_with``, :mod:`pipeline.oclr.split`;
    recorded in the attribute ``split``), or None for OCLR's labels as they are. Returns the run info
    (windows, infer size, and ``split`` when there were tracks).
    """
    import sys
    from pathlib import Path

    from pipeline.core.store import ArtifactError, ArtifactWriter, FrameReader, open_artifact

    pp = dict(pp or {})
    flow_art = open_artifact(flow_store, stage=None)
    flow = flow_art.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"))
    T, _, h, w = flow.shape
    trained = info.get("train", {})
    window = int(pp.get("window") or trained.get("clip_len") or 30)
    overlap = pp.get("overlap")
    overlap = int(overlap) if overlap is not None else max(1, window // 3)
    infer = pp.get("infer_size") or trained.get("size")
    threshold = float(pp.get("threshold", 0.5))
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"proposals.threshold must be in [0, 1), got {threshold}")
    if trained.get("clip_len") and window > int(trained["clip_len"]) and not quiet:
        print(f"proposals: warning: window {window} is longer than the {trained['clip_len']} frames the "
              f"checkpoint was trained on (untrained time embeddings)", file=sys.stderr)
    dev = model_device(model, device)
    K = model.cfg.num_queries
    ckpt = {"path": str(pp.get("checkpoint") or info.get("path")), "sha256": info["file_sha256"]}
    run: dict = {}
    inputs: dict = {"flow": flow_art.path, "checkpoint": ckpt}
    if tracks is not None:
        name, store = tracks
        trk_art = open_artifact(store, stage=name)
        trk = trk_art.require("labels", dtype="uint8", ndim=3)
        if trk.shape[0] != T:
            raise ArtifactError(f"{trk_art.path}: {trk.shape[0]} frames, {flow_art.path} {T}")
        inputs[name] = trk_art.path
    with ArtifactWriter(out, stage="proposals", params={"proposals": pp}, inputs=inputs) as wr:
        amodal = wr.create("amodal", (T, K, h, w), "float16", ("frame", "object", "y", "x"),
                           attrs={"meaning": "amodal probability of object slot k (identities kept over "
                                             "the sequence)"})
        labels = wr.create("labels", (T, h, w), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, k+1 = object slot k where its modal "
                                             f"probability is the largest and > {threshold:g}",
                                  "threshold": threshold})
        order = wr.create("order", (T, K), "float32", ("frame", "object"),
                          attrs={"meaning": "depth score of slot k (higher = nearer the front), per window, "
                                            "blended in overlaps"})
        for fp in predict_sequence(model, FrameReader(flow), window=window, overlap=overlap, device=dev,
                                   batch=int(pp.get("batch", 1)), infer_size=infer, info=run,
                                   threshold=threshold):
            amodal[fp.t] = fp.amodal
            labels[fp.t] = fp.labels
            order[fp.t] = fp.order
        if tracks is not None:
            from pipeline.oclr.split import split_slots

            run["split"] = {"with": tracks[0], **split_slots(labels, FrameReader(trk), K)}
            wr.attrs["split"] = run["split"]
            labels.spec.attrs["meaning"] += (f"; in the frames of the store's attribute 'split', pixels of a "
                                             f"{tracks[0]} track moved to the slot paired with it")
        wr.attrs.update({
            "sequence": sequence or flow_art.attrs.get("sequence") or Path(str(out)).stem, "num_objects": K,
            "window": window, "overlap": overlap, "infer_size": run.get("infer_size"), "threshold": threshold,
            "windows": run.get("windows"),
            "checkpoint": {**ckpt, "weights_sha256": info["weights_sha256"], "encoding": info["encoding"],
                           "train": trained, "summary": info["summary"]},
            "model_config": info["model_config"], "device": str(dev),
            "frame_names": flow_art.attrs.get("frame_names")})
    return {"T": T, "window": window, **run}
