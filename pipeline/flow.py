"""Optical flow: RAFT (torchvision model, original princeton-vl checkpoints),
OpenCV DIS and Farneback, behind one estimator interface, plus streaming
per-sequence flow at the working resolution.

Conventions (see ``shared/reference/method-notes.md``):

* images are ``uint8[N, H, W, 3]`` RGB; flow is ``float32[N, 2, H, W]`` with
  channel 0 = u (x, pixels) and channel 1 = v (y, pixels), from image 1 to
  image 2, so ``img1[y, x]`` corresponds to ``img2[y + v, x + u]``;
* per-frame sequence flow is ``float32[4, h, w]`` =
  ``[u_fwd, v_fwd, u_bwd, v_bwd]`` with forward = t -> t+gap and
  backward = t -> t-gap; at the sequence ends the missing direction is the
  negated opposite one;
* flow is resized bilinearly with u scaled by ``w_new / w_old`` and v by
  ``h_new / h_old`` (no magnitude normalisation).

Weights: RAFT checkpoints are looked up (explicit path, local cache, then
download sources) by :func:`resolve_raft_weights`; nothing ever falls back to
random weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from pipeline.core.arrays import resize_flow, warp  # noqa: F401 - part of this module's API
from pipeline.core.store import sha256_file
from pipeline.weights.raft import (
    RAFT_MODELS,
    RAFT_SHA256,
    fetch_raft_weights,
    resolve_raft_weights,
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------
# Checkpoints and where they come from
# --------------------------------------------------------------------------

FLOW_METHODS = ("raft_large", "raft_small", "dis", "farneback")


# --------------------------------------------------------------------------
# Checkpoint name mapping: princeton-vl RAFT -> torchvision RAFT
# --------------------------------------------------------------------------

#: tensors of the original large model that torchvision has no slot for: the
#: context encoder's first residual block of layer2 / layer3 registers its
#: BatchNorm both as ``norm3`` and as ``downsample.1`` (the same tensors,
#: shared storage); torchvision only keeps ``downsample.1``.
RAFT_DROPPED_KEYS: dict[str, tuple[str, ...]] = {
    "raft_large": tuple(
        f"cnet.layer{l}.0.norm3.{s}" for l in (2, 3)
        for s in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
    "raft_small": (),
}

# (pattern on the key without "module.", replacement); first match wins
_ENCODER_RULES = [
    (r"^(fnet|cnet)\.conv1\.", r"\1.convnormrelu.0."),
    (r"^(fnet|cnet)\.norm1\.", r"\1.convnormrelu.1."),
    (r"^(fnet|cnet)\.conv2\.", r"\1.conv."),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.conv(\d)\.", r"\1.\2.convnormrelu\3.0."),
    (r"^(fnet|cnet)\.(layer\d\.\d)\.downsample\.", r"\1.\2.downsample."),
]
_UPDATE_RULES = [
    (r"^update_block\.encoder\.convc(\d)\.", r"update_block.motion_encoder.convcorr\1.0."),
    (r"^update_block\.encoder\.convf(\d)\.", r"update_block.motion_encoder.convflow\1.0."),
    (r"^update_block\.encoder\.conv\.", r"update_block.motion_encoder.conv.0."),
    (r"^update_block\.gru\.conv([zrq])([12])\.", r"update_block.recurrent_block.convgru\2.conv\1."),
    (r"^update_block\.gru\.conv([zrq])\.", r"update_block.recurrent_block.convgru1.conv\1."),
    (r"^update_block\.flow_head\.", r"update_block.flow_head."),
    (r"^update_block\.mask\.0\.", r"mask_predictor.convrelu.0."),
    (r"^update_block\.mask\.2\.", r"mask_predictor.conv."),
]


def _norm_rule(model: str):
    # large: ResidualBlock norm1/norm2 follow conv1/conv2; small: BottleneckBlock
    # norm1..norm3 follow conv1..conv3 (its norm4 is downsample.1, as above).
    last = 2 if model == "raft_large" else 3
    return (rf"^(fnet|cnet)\.(layer\d\.\d)\.norm([1-{last}])\.", r"\1.\2.convnormrelu\3.1.")


def _unwrap(sd: Any) -> dict:
    if isinstance(sd, dict):
        for k in ("state_dict", "model", "model_state_dict"):
            if k in sd and isinstance(sd[k], dict) and not hasattr(sd[k], "shape"):
                return sd[k]
    return sd


def _is_torchvision_format(keys) -> bool:
    return any(k.split("module.", 1)[-1].startswith(("feature_encoder.", "context_encoder."))
               for k in keys)


def map_raft_state_dict(sd: dict, model: str) -> dict:
    """Rename an original princeton-vl RAFT state dict to torchvision's names.

    Accepts keys with or without the ``module.`` prefix; a state dict already
    in torchvision's layout is returned with only the prefix stripped. Drops
    exactly :data:`RAFT_DROPPED_KEYS`; any other key without a rule raises.
    """
    if model not in RAFT_MODELS:
        raise ValueError(f"unknown RAFT model {model!r}; expected one of {RAFT_MODELS}")
    sd = _unwrap(sd)
    stripped = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in sd.items()}
    if _is_torchvision_format(stripped):
        return dict(stripped)
    drop = set(RAFT_DROPPED_KEYS[model])
    rules = [(re.compile(p), r) for p, r in _ENCODER_RULES + [_norm_rule(model)] + _UPDATE_RULES]
    out: dict = {}
    unknown = []
    for k, v in stripped.items():
        if k in drop:
            continue
        for pat, rep in rules:
            if pat.search(k):
                nk = pat.sub(rep, k, count=1)
                break
        else:
            unknown.append(k)
            continue
        nk = nk.replace("fnet.", "feature_encoder.", 1) if nk.startswith("fnet.") else nk
        nk = nk.replace("cnet.", "context_encoder.", 1) if nk.startswith("cnet.") else nk
        if nk in out:
            raise ValueError(f"RAFT key mapping collision: {k} -> {nk}")
        out[nk] = v
    if unknown:
        raise ValueError(f"RAFT checkpoint for {model} has keys with no mapping: "
                         f"{unknown[:8]}{' ...' if len(unknown) > 8 else ''}")
    return out


def _torchvision_raft(model: str):
    from torchvision.models.optical_flow import raft_large, raft_small
    return (raft_large if model == "raft_large" else raft_small)(weights=None, progress=False)


def load_raft(model: str, weights_path: str | os.PathLike, device: Any = "cpu"):
    """torchvision RAFT (``raft_large`` / ``raft_small``) with the checkpoint
    at ``weights_path`` (original or torchvision format), strict loading, eval mode."""
    import torch

    if model not in RAFT_MODELS:
        raise ValueError(f"unknown RAFT model {model!r}; expected one of {RAFT_MODELS}")
    sd = torch.load(Path(weights_path), map_location="cpu", weights_only=True)
    mapped = map_raft_state_dict(sd, model)
    net = _torchvision_raft(model)
    try:
        net.load_state_dict(mapped, strict=True)
    except RuntimeError as e:
        raise RuntimeError(f"{weights_path}: not a {model} checkpoint ({e})") from e
    return net.eval().to(device)


# --------------------------------------------------------------------------
# Helpers: padding, resizing, warping
# --------------------------------------------------------------------------

def pad_to_multiple(x, multiple: int = 8, min_size: int = 0):
    """Replicate-pad a tensor ``[N, C, H, W]`` so H and W are multiples of
    ``multiple`` and at least ``min_size`` (split evenly, the odd pixel at the
    end). Returns ``(padded, (top, bottom, left, right))``."""
    import torch.nn.functional as F

    h, w = x.shape[-2:]
    th = max(h + (-h) % multiple, min_size + (-min_size) % multiple)
    tw = max(w + (-w) % multiple, min_size + (-min_size) % multiple)
    ph, pw = th - h, tw - w
    pads = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    if ph == 0 and pw == 0:
        return x, pads
    return F.pad(x, (pads[2], pads[3], pads[0], pads[1]), mode="replicate"), pads


def unpad(x, pads):
    """Remove the padding added by :func:`pad_to_multiple` (last two axes)."""
    top, bottom, left, right = pads
    h, w = x.shape[-2:]
    return x[..., top:h - bottom, left:w - right]


def _resize_images(imgs: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    if size is None or tuple(imgs.shape[1:3]) == tuple(size):
        return imgs
    h, w = int(size[0]), int(size[1])
    interp = cv2.INTER_AREA if (h < imgs.shape[1] and w < imgs.shape[2]) else cv2.INTER_LINEAR
    return np.stack([cv2.resize(im, (w, h), interpolation=interp) for im in imgs])


def _check_pair(img1, img2) -> tuple[np.ndarray, np.ndarray, bool]:
    a, b = np.asarray(img1), np.asarray(img2)
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[-1] != 3 or a.shape != b.shape:
        raise ValueError(f"expected two uint8[N,H,W,3] arrays of the same shape, "
                         f"got {np.asarray(img1).shape} and {np.asarray(img2).shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {a.dtype} and {b.dtype}")
    return a, b, single


def _versions() -> dict:
    import torch
    import torchvision
    return {"torch": torch.__version__, "torchvision": torchvision.__version__,
            "opencv": cv2.__version__, "numpy": np.__version__}


# --------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------

class FlowEstimator:
    """``estimator(img1, img2) -> float32[N, 2, H, W]`` for ``uint8[N, H, W, 3]``
    RGB inputs (a single ``[H, W, 3]`` pair gives ``[2, H, W]``)."""

    method: str = "base"

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        a, b, single = _check_pair(img1, img2)
        out = self._compute(a, b)
        return out[0] if single else out

    def _compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def describe(self) -> dict:
        return {"method": self.method, **_versions()}


class RaftEstimator(FlowEstimator):
    """torchvision RAFT; pads to a multiple of 8 (replicate) and crops the flow back.

    torchvision's correlation pyramid needs inputs of at least 128 px per
    side, so smaller images are replicate-padded up to 128 (and cropped back).
    """

    MIN_SIZE = 128

    def __init__(self, net, model: str, iters: int = 20, device: Any = "cpu",
                 checkpoint: str | os.PathLike | None = None, amp: str | None = None):
        import torch

        if amp not in (None, "bf16", "fp16"):
            raise ValueError(f"amp must be None, 'bf16' or 'fp16', got {amp!r}")
        self.method = model
        self.model = model
        self.net = net
        self.iters = int(iters)
        self.device = torch.device(device)
        self.amp = amp if self.device.type == "cuda" else None
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_sha256 = sha256_file(self.checkpoint) if self.checkpoint else None

    def _compute(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch

        def prep(x):
            t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
            return t.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # [-1, 1]

        with torch.inference_mode():
            t1, pads = pad_to_multiple(prep(a), 8, self.MIN_SIZE)
            t2, _ = pad_to_multiple(prep(b), 8, self.MIN_SIZE)
            if self.amp is not None:
                dt = torch.bfloat16 if self.amp == "bf16" else torch.float16
                with torch.autocast("cuda", dtype=dt):
                    flows = self.net(t1, t2, num_flow_updates=self.iters)
            else:
                flows = self.net(t1, t2, num_flow_updates=self.iters)
            flow = unpad(flows[-1].float(), pads)
        return np.ascontiguousarray(flow.cpu().numpy(), dtype=np.float32)

    def describe(self) -> dict:
        name = self.checkpoint.name if self.checkpoint else None
        return {
            "method": self.method, "model": f"torchvision.models.optical_flow.{self.model}",
            "checkpoint": str(self.checkpoint) if self.checkpoint else None,
            "checkpoint_sha256": self.checkpoint_sha256,
            "checkpoint_verified": bool(name and RAFT_SHA256.get(name) == self.checkpoint_sha256),
            "iterations": self.iters, "device": str(self.device), "amp": self.amp,
            "input": "RGB scaled to [-1, 1]; replicate-padded to a multiple of 8, padding removed",
            **_versions(),
        }


class DisEstimator(FlowEstimator):
    """OpenCV DIS optical flow on grayscale images.

    ``finest_scale``: the finest pyramid level DIS computes (0 = the input
    resolution, 1 = half of it, ...); None keeps the preset's (medium: 1, the
    flow computed at half resolution and upsampled).
    """

    method = "dis"
    PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
               "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}

    def __init__(self, preset: str = "medium", finest_scale: int | None = None):
        if preset not in self.PRESETS:
            raise ValueError(f"DIS preset must be one of {list(self.PRESETS)}, got {preset!r}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(self.PRESETS[preset])
        if finest_scale is not None:
            if isinstance(finest_scale, bool) or not isinstance(finest_scale, int) or not 0 <= finest_scale <= 4:
                raise ValueError(f"params flow.dis_finest_scale: expected null or an integer 0..4, "
                                 f"got {finest_scale!r}")
            self._dis.setFinestScale(finest_scale)
        self.finest_scale = int(self._dis.getFinestScale())

    def _compute(self, a, b):
        out = np.empty((a.shape[0], 2) + a.shape[1:3], np.float32)
        for i in range(a.shape[0]):
            g1 = cv2.cvtColor(a[i], cv2.COLOR_RGB2GRAY)
            g2 = cv2.cvtColor(b[i], cv2.COLOR_RGB2GRAY)
            out[i] = self._dis.calc(g1, g2, None).transpose(2, 0, 1)
        return out

    def describe(self):
        return {"method": self.method, "model": "cv2.DISOpticalFlow", "preset": self.preset,
                "finest_scale": self.finest_scale, "input": "grayscale", **_versions()}


class FarnebackEstimator(FlowEstimator):
    """cv2.calcOpticalFlowFarneback on grayscale images. ``levels=None`` picks
    the pyramid depth so the coarsest level is at least 16 px. The defaults
    (box window 21, poly_n 5, sigma 1.2, 3 iterations) gave the lowest EPE of
    a few settings tried on DAVIS frames with a known homography."""

    method = "farneback"

    def __init__(self, pyr_scale: float = 0.5, levels: int | None = None, winsize: int = 21,
                 iterations: int = 3, poly_n: int = 5, poly_sigma: float = 1.2,
                 gaussian: bool = False):
        self.params = {"pyr_scale": pyr_scale, "levels": levels, "winsize": winsize,
                       "iterations": iterations, "poly_n": poly_n, "poly_sigma": poly_sigma,
                       "gaussian": gaussian}

    def _levels(self, h, w):
        if self.params["levels"] is not None:
            return int(self.params["levels"])
        s, n = min(h, w), 1
        while n < 6 and s * self.params["pyr_scale"] >= 16:
            s *= self.params["pyr_scale"]
            n += 1
        return n

    def _compute(self, a, b):
        p = self.params
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if p["gaussian"] else 0
        levels = self._levels(*a.shape[1:3])
        out = np.empty((a.shape[0], 2) + a.shape[1:3], np.float32)
        for i in range(a.shape[0]):
            g1 = cv2.cvtColor(a[i], cv2.COLOR_RGB2GRAY)
            g2 = cv2.cvtColor(b[i], cv2.COLOR_RGB2GRAY)
            f = cv2.calcOpticalFlowFarneback(g1, g2, None, p["pyr_scale"], levels, p["winsize"],
                                             p["iterations"], p["poly_n"], p["poly_sigma"], flags)
            out[i] = f.transpose(2, 0, 1)
        return out

    def describe(self):
        return {"method": self.method, "model": "cv2.calcOpticalFlowFarneback",
                "params": dict(self.params), "input": "grayscale", **_versions()}


def _pick_device(device: Any):
    import torch
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def build_flow_estimator(method: str, weights: str | os.PathLike | None = None, iters: int = 20,
                         device: Any = "auto", allow_download: bool = True,
                         cache_dir: str | os.PathLike | None = None, amp: str | None = None,
                         dis_preset: str = "medium", dis_finest_scale: int | None = None) -> FlowEstimator:
    """Estimator for ``method`` in :data:`FLOW_METHODS`.

    RAFT: ``weights`` = checkpoint path or name (see :func:`resolve_raft_weights`),
    ``iters`` refinement iterations, ``device`` 'auto' = CUDA when present,
    ``amp`` None / 'bf16' / 'fp16' (GPU only). DIS: ``dis_preset``, ``dis_finest_scale``
    (None = the preset's finest pyramid level).
    """
    if method in RAFT_MODELS:
        path = resolve_raft_weights(method, weights, cache_dir, allow_download=allow_download)
        dev = _pick_device(device)
        net = load_raft(method, path, dev)
        return RaftEstimator(net, method, iters=iters, device=dev, checkpoint=path, amp=amp)
    if method == "dis":
        return DisEstimator(dis_preset, dis_finest_scale)
    if method == "farneback":
        return FarnebackEstimator()
    close = [m for m in FLOW_METHODS if m == str(method).lower().replace("-", "_")]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"params flow.method: unknown flow method {method!r}{hint}; expected one of "
                     f"{' | '.join(FLOW_METHODS)}")


def estimator_from_params(fp: Mapping[str, Any]) -> FlowEstimator:
    """The estimator a flow params section describes (params.yaml's ``flow``, ``synth.flow``,
    ``oclr_flow.flow``): ``method``, ``weights`` or ``checkpoint``, and where present ``iters``,
    ``device``, ``dis_finest_scale`` (absent: :func:`build_flow_estimator`'s defaults). The one
    translation of such a section, so that a key read by one flow stage is read by all."""
    kw = {k: fp[k] for k in ("device", "dis_finest_scale") if k in fp}
    if "iters" in fp:
        kw["iters"] = int(fp["iters"])
    return build_flow_estimator(fp["method"], weights=fp.get("weights") or fp.get("checkpoint"), **kw)


# --------------------------------------------------------------------------
# Streaming sequence flow
# --------------------------------------------------------------------------

def sequence_flow(estimator, frames, gap: int = 1, infer_size: tuple[int, int] | None = None,
                  work_size: tuple[int, int] | None = (128, 224), batch_size: int = 4,
                  progress: bool = True) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(t, float32[4, h, w])`` = ``[u_fwd, v_fwd, u_bwd, v_bwd]`` per frame.

    ``frames``: anything with ``len()`` and ``frames[a:b] -> uint8[n, H, W, 3]``
    (numpy or zarr array, original resolution). Forward = t -> t+gap, backward
    = t -> t-gap (its own estimator call on (t, t-gap)); where t+gap is past
    the end forward = -backward, where t-gap < 0 backward = -forward. (If
    ``gap + 1 <= len < 2 * gap``, middle frames with neither neighbour use
    the last and first frames as forward / backward partners, with a warning.)
    ``infer_size`` (H, W) resizes frames before inference (None = as stored);
    flow is then resized to ``work_size`` (None = keep) with u/v rescaled.
    Frames are read once each, in windows of ``batch_size``; at most
    ``batch_size + 2 * gap`` frames are held, so memory does not grow with
    the video length. Estimator calls have at most ``batch_size`` pairs.
    """
    from tqdm.auto import tqdm

    T = len(frames)
    gap, batch_size = int(gap), int(batch_size)
    if gap < 1:
        raise ValueError(f"gap must be >= 1, got {gap}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if T < gap + 1:
        raise ValueError(f"video of length {T} is too short for frame gap {gap} "
                         f"(needs at least {gap + 1} frames)")

    def fwd_of(t: int) -> int | None:
        if t + gap < T:
            return t + gap
        return T - 1 if t - gap < 0 else None  # neither neighbour: the last frame

    def bwd_of(t: int) -> int | None:
        if t - gap >= 0:
            return t - gap
        return 0 if t + gap >= T else None  # neither neighbour: the first frame

    short = [t for t in range(T) if t + gap >= T and t - gap < 0]
    if short:
        log.warning("video of %d frames is shorter than 2 x gap %d: frames %d-%d have neither "
                    "t+gap nor t-gap; using t -> %d and t -> 0 for them", T, gap, short[0],
                    short[-1], T - 1)

    buf: dict[int, np.ndarray] = {}  # frame index -> uint8[h, w, 3] at inference size
    loaded = 0  # frames [0, loaded) have been read

    def load_until(stop: int):
        nonlocal loaded
        while loaded < stop:
            b = min(stop, loaded + batch_size)
            chunk = np.asarray(frames[loaded:b])
            if chunk.ndim != 4 or chunk.shape[0] != b - loaded or chunk.shape[-1] != 3:
                raise ValueError(f"frames[{loaded}:{b}] has shape {chunk.shape}, "
                                 f"expected ({b - loaded}, H, W, 3)")
            if chunk.dtype != np.uint8:
                raise ValueError(f"frames must be uint8, got {chunk.dtype}")
            chunk = _resize_images(chunk, infer_size)
            for i in range(chunk.shape[0]):
                buf[loaded + i] = chunk[i]
            loaded = b

    def run(src: list[int], dst: list[int]) -> np.ndarray | None:
        if not src:
            return None
        f = estimator(np.stack([buf[i] for i in src]), np.stack([buf[i] for i in dst]))
        f = np.asarray(f, dtype=np.float32)
        if work_size is not None:
            f = resize_flow(f, work_size)
        return f

    bar = tqdm(total=T, unit="frame", desc=f"flow (gap {gap})", disable=not progress)
    try:
        for s in range(0, T, batch_size):
            e = min(T, s + batch_size)
            load_until(min(T, e + gap))
            for k in [k for k in buf if k < s - gap]:
                del buf[k]
            fwd_t = [t for t in range(s, e) if fwd_of(t) is not None]
            bwd_t = [t for t in range(s, e) if bwd_of(t) is not None]
            fwd = run(fwd_t, [fwd_of(t) for t in fwd_t])
            bwd = run(bwd_t, [bwd_of(t) for t in bwd_t])
            for t in range(s, e):
                f = fwd[fwd_t.index(t)] if t in fwd_t else None
                b = bwd[bwd_t.index(t)] if t in bwd_t else None
                if f is None:
                    f = -b
                if b is None:
                    b = -f
                yield t, np.ascontiguousarray(np.concatenate([f, b], 0), dtype=np.float32)
                bar.update(1)
    finally:
        bar.close()


# --------------------------------------------------------------------------
# Key-layout dump (how pipeline/data/raft_keys.json was made)
# --------------------------------------------------------------------------

def checkpoint_key_layout(path: str | os.PathLike) -> dict:
    """``{"source", "sha256", "keys": [[name, shape, dtype], ...]}`` of a checkpoint."""
    import torch
    sd = torch.load(Path(path), map_location="cpu", weights_only=True)
    return {"source": Path(path).name, "sha256": sha256_file(path),
            "keys": [[k, list(v.shape), str(v.dtype).replace("torch.", "")]
                     for k, v in _unwrap(sd).items()]}


def _dump_layout_json(doc: dict) -> str:
    # one checkpoint key per line: small and diff-friendly
    lines = ["{", f' "description": {json.dumps(doc["description"])},']
    models = [k for k in doc if k != "description"]
    for i, m in enumerate(models):
        d = doc[m]
        lines += [f' "{m}": {{', f'  "source": {json.dumps(d["source"])},',
                  f'  "sha256": {json.dumps(d["sha256"])},', '  "keys": [']
        lines += [f"   {json.dumps(k)}" + ("," if j < len(d["keys"]) - 1 else "")
                  for j, k in enumerate(d["keys"])]
        lines += ["  ]", " }" + ("," if i < len(models) - 1 else "")]
    return "\n".join(lines + ["}"]) + "\n"


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="python -m pipeline.flow")
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fetch", help="pre-fetch raft-sintel.pth and raft-small.pth")
    f.add_argument("--cache-dir", default=None)
    d = sub.add_parser("dump-keys", help="write the original checkpoints' key layout as JSON")
    d.add_argument("--large", required=True, help="raft-sintel.pth (or raft-things.pth)")
    d.add_argument("--small", required=True, help="raft-small.pth")
    d.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "fetch":
        for n, p in fetch_raft_weights(a.cache_dir).items():
            print(f"{n}: {p} sha256 {sha256_file(p)}")
    else:
        doc = {"description": "Key names, shapes and dtypes of the original princeton-vl RAFT "
                              "checkpoints (raft-sintel/things/kitti share the large layout), "
                              "written by `python -m pipeline.flow dump-keys`.",
               "raft_large": checkpoint_key_layout(a.large),
               "raft_small": checkpoint_key_layout(a.small)}
        Path(a.out).write_text(_dump_layout_json(doc))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
