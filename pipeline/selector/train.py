"""Training of the mask selector on the synthetic splits, and its small inference checkpoint.

Data
----
A split ``data/synth/<split>/`` with ``render/``, ``proposals/`` (OCLR proposals of
the published checkpoint, stage ``synth_proposals``) and ``features/`` (stage
``synth_features``), read through :class:`pipeline.synth.refine_data.RefineVideo`.
A sample (:class:`SelectorClipDataset`) is (video, proposal slot ``k``, clip of
``clip_len`` consecutive frames): input = RGB, the slot's proposal mask
(``labels == k + 1``) and the backbone tokens; target =
:func:`pipeline.exemplars.scoring.error_onehot` of that mask against the GT modal mask of
the GT object the slot is matched to (Hungarian over the whole video,
:func:`pipeline.synth.refine_data.match_slots`; an unmatched slot has an empty GT,
so every mask pixel is a false positive). Only slots whose proposal is
non-empty in at least one frame of the clip are drawn (all-empty slots are
never an exemplar and are skipped at inference too). Sample ``i`` depends only on
``(seed, i)`` (video, start, slot, flip, time offset), so a resumed run sees
exactly the clips the uninterrupted run would have seen.

Augmentation: random horizontal flip (RGB, mask, target and the token grid),
and (``time_shift``) a random temporal-embedding offset in
``[0, max_frames - clip_len]`` so that all ``max_frames`` (100) temporal
embeddings are trained although clips are short (inference uses offsets
``0 .. L-1`` on chunks of up to 100 frames). ``corrupt_p`` > 0 (not in the paper):
each frame's input proposal is corrupted with that probability
(:func:`corrupt_masks`: shift, dilate, erode, swap with another frame's, spurious
box, cut) and the target recomputed, so that the selector sees more
frame-specific failures than OCLR makes on its own training videos.

Loss (:func:`pipeline.selector.model.selector_loss`): the paper's eq. 4,
binary cross-entropy of each channel's softmax probability against the one-hot
error map, mean over pixels, channels and frames. ``pos_weight`` > 1 up-weights
the (rare) positive pixels of the FP and FN channels; the default 1 is the
paper's unweighted loss. ``rank_weight`` > 0 (not in the paper) adds
:func:`training_rank_loss`, a pairwise logistic loss that orders the frames of a
clip by the differentiable exemplar score the way their true IoU orders them.

Warm start (``init``, :func:`init_from_checkpoint`): a new run may start from the
weights of an exported or training selector checkpoint; a narrower mask stem
(smaller ``mask_context``) is widened with zero weights. Its path and sha256 are
recorded in ``last.pt``, ``metrics.json`` and the export.

Training (:func:`train_selector`): Adam, linear warm-up then step decay
(:func:`pipeline.train.scaffold.lr_factor`), gradient clipping, bf16 autocast on
CUDA (fp32 on CPU), seeded and deterministic. Writes into ``out_dir`` (and
``log_dir``)::

    last.pt          model, optimiser, scheduler, iteration, RNG states, config
    train_curve.csv  iteration, loss, lr, grad_norm, seconds (means over log_every iterations)
    val_curve.csv    iteration, val_loss, val_AP_selector, val_AP_selector_soft, val_AP_temporal, val_AP_random,
                     val_objects, seconds
    metrics.json     final numbers

Resumption, checkpoint cadence and the wall-clock budget follow
:mod:`pipeline.oclr.train` exactly: ``resume=True`` continues from
``last.pt`` when the saved config equals the current one up to
:data:`RESUME_FREE_KEYS`, else :class:`ResumeError`; curve rows past the
checkpoint are dropped.

Validation (:func:`validate_selector`): the first ``val_videos`` videos of the
validation split, whole videos (in chunks of ``max_frames``), no augmentation.
``val_loss``: the loss over every non-empty slot. Selection AP (Table 3 of the
paper): per GT object matched to a slot, frames ranked by the IoU of the slot's
proposal with the object's GT mask, the ``val_n`` best and worst form the set,
AP of retrieving the best with confidence ``-score`` (relative error area of the
predicted error map, ``+inf`` under ``val_min_area`` pixels,
:func:`pipeline.exemplars.scoring.selection_ap`), against the temporal-consistency
baseline (:func:`pipeline.exemplars.scoring.temporal_consistency`) and a random ranking
(:func:`pipeline.exemplars.scoring.random_ap`, 1000 draws, seed 0); means over objects.

Inference checkpoint (:func:`export_checkpoint`, :func:`load_selector`): a
``torch.save`` dict (``weights_only`` loadable), format ``motionseg-selector/1``:
model config (with ``token_dim``, ``backbone`` and ``backbone_sha256`` of the
training features), training config and summary, fp16 weights (int8 for large
tensors only if the file would exceed ``max_mb``) and their sha256.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pipeline import __version__
from pipeline.core.checkpoint import (
    atomic_torch_save,
    decode_state,
    load_train_checkpoint,
    write_export,
)
from pipeline.core.config import project_path
from pipeline.core.device import (
    autocast,
    resolve_device,
    restored_torch_settings,
    rng_state,
)
from pipeline.core.store import (
    ArtifactError,
    open_artifact,
    sha256_file,
    write_json_atomic,
)
from pipeline.exemplars.scoring import (
    error_onehot,
    frame_ious,
    random_ap,
    relative_error_area,
    selection_ap,
    temporal_consistency,
)
from pipeline.selector.model import (
    EXPORT_FORMAT,
    Selector,
    SelectorConfig,
    frame_log_scores,
    rank_loss,
    selector_loss,
)
from pipeline.synth.refine_data import RefineVideo, list_refine_videos
from pipeline.train.scaffold import (
    CsvLog,
    TrainLoop,
    check_keys,
    config_diff,
    lr_factor,
    read_csv,
    refuse_resume,
    restore_training,
    start_run,
)
from pipeline.train.scaffold import ResumeError  # noqa: F401  (the trainers' one resume error)

CHECKPOINT_FORMAT = "motionseg-selector-train/1"

#: every key of the ``train_selector`` params section (documented there); no defaults in code
CONFIG_KEYS: tuple[str, ...] = (
    "preset", "model", "init", "train_split", "val_split", "clip_len", "batch_size", "lr", "weight_decay",
    "warmup_iters", "decay_every", "decay_factor", "grad_clip", "iterations", "time_budget_s", "ckpt_every",
    "val_every", "val_videos", "val_n", "val_min_area", "log_every", "pos_weight", "rank_weight",
    "rank_margin", "corrupt_p", "flip", "time_shift", "seed", "device", "amp", "deterministic", "threads",
)

RESUME_FREE_KEYS = frozenset({"init", "iterations", "time_budget_s", "ckpt_every", "val_every", "log_every", "device",
                              "threads", "val_videos", "resume", "export", "export_max_mb"})
"""Config keys that may change between a run and its resumption."""

ADDED_KEYS = {"init": None, "rank_weight": 0.0, "rank_margin": 0.05, "corrupt_p": 0.0}
"""Config keys newer than the first checkpoints, with the values those checkpoints were trained with (a
checkpoint without them resumes as if it had these)."""

_PASSTHROUGH = frozenset({"resume", "export", "export_max_mb"})

TRAIN_CURVE_COLUMNS = ["iteration", "loss", "bce", "rank", "lr", "grad_norm", "seconds"]
VAL_CURVE_COLUMNS = ["iteration", "val_loss", "val_AP_selector", "val_AP_selector_soft", "val_AP_temporal",
                     "val_AP_random", "val_objects", "seconds"]


# --------------------------------------------------------------------------- config
def normalize_train_config(cfg: Mapping[str, Any] | None) -> dict:
    """``cfg`` (exactly :data:`CONFIG_KEYS`, see :func:`check_keys`), checked and typed."""
    out = check_keys(cfg, CONFIG_KEYS, "train_selector", _PASSTHROUGH)
    out["model"] = dict(out["model"] or {})
    if out["preset"] not in ("cpu", "paper"):
        raise ValueError(f"train_selector config: preset must be 'cpu' or 'paper', got {out['preset']!r}")
    for k in ("clip_len", "batch_size", "iterations", "ckpt_every", "val_every", "log_every", "val_n"):
        out[k] = int(out[k])
        if out[k] < (0 if k == "iterations" else 1):
            raise ValueError(f"train_selector config: {k} must be positive, got {out[k]}")
    for k in ("lr", "weight_decay", "decay_factor", "pos_weight", "rank_weight", "rank_margin", "corrupt_p"):
        out[k] = float(out[k])
    if not 0.0 <= out["corrupt_p"] <= 1.0:
        raise ValueError(f"train_selector config: corrupt_p must be in [0, 1], got {out['corrupt_p']}")
    if out["pos_weight"] <= 0:
        raise ValueError(f"train_selector config: pos_weight must be > 0, got {out['pos_weight']}")
    out["warmup_iters"], out["decay_every"] = int(out["warmup_iters"]), int(out["decay_every"])
    out["seed"], out["val_min_area"] = int(out["seed"]), int(out["val_min_area"])
    out["val_videos"] = None if out["val_videos"] is None else int(out["val_videos"])
    out["init"] = None if out["init"] in (None, "") else str(out["init"])
    return out


def init_from_checkpoint(model: Selector, path: str | os.PathLike) -> dict:
    """Warm start: copy the weights of the selector checkpoint ``path`` (exported, or a
    training ``last.pt``) into ``model``. Every tensor must have the same shape, except the
    mask stem's first convolution when ``model`` takes more mask channels
    (:attr:`SelectorConfig.mask_context`): the old input channels are copied and the new
    ones set to zero, so the warm-started model computes exactly what the checkpoint did
    until training moves those weights. Returns ``{"path", "sha256", "format", "expanded"}``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: train_selector.init checkpoint not found (set train_selector.init: null "
                                f"to train from random weights)")
    doc = torch.load(path, map_location="cpu", weights_only=True)
    fmt = doc.get("format") if isinstance(doc, dict) else None
    if fmt == EXPORT_FORMAT:
        state = decode_state(doc["state"])
    elif fmt == CHECKPOINT_FORMAT:
        state = doc["model"]
    else:
        raise ValueError(f"{path}: not a selector checkpoint (format {fmt!r}; expected {EXPORT_FORMAT!r} or "
                         f"{CHECKPOINT_FORMAT!r})")
    own = model.state_dict()
    if set(state) != set(own):
        missing, unexpected = sorted(set(own) - set(state))[:5], sorted(set(state) - set(own))[:5]
        raise ValueError(f"{path}: its tensors do not match this selector's (missing {missing}"
                         f", unexpected {unexpected}); preset or model overrides differ")
    expanded = []
    for k, v in state.items():
        v = v.float()
        if v.shape == own[k].shape:
            own[k] = v
        elif (k == "mask_stem.0.weight" and v.dim() == 4 and v.shape[0] == own[k].shape[0]
              and v.shape[1] < own[k].shape[1] and v.shape[2:] == own[k].shape[2:]):
            w = torch.zeros_like(own[k])
            w[:, :v.shape[1]] = v
            own[k] = w
            expanded.append(k)
        else:
            raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, this selector's is "
                             f"{tuple(own[k].shape)}; preset or model overrides differ")
    model.load_state_dict(own)
    return {"path": str(path), "sha256": sha256_file(path), "format": fmt, "expanded": expanded}


def model_config_from(cfg: Mapping[str, Any], token_dim: int | None = None,
                      backbone: Mapping | None = None) -> SelectorConfig:
    """The :class:`SelectorConfig` of a (normalized) training config: preset + ``model``
    overrides, with ``token_dim``/``backbone`` taken from the training features."""
    overrides = dict(cfg.get("model") or {})
    known = set(SelectorConfig().to_dict())
    bad = set(overrides) - known
    if bad:
        raise KeyError(f"selector model overrides: unknown SelectorConfig key(s) {sorted(bad)}")
    for k in ("widths", "bottleneck_hw"):
        if k in overrides:
            overrides[k] = tuple(overrides[k])
    if token_dim is not None:
        if "token_dim" in overrides and int(overrides["token_dim"]) != int(token_dim):
            raise ValueError(f"selector model override token_dim={overrides['token_dim']} but the training "
                             f"features have C={token_dim}")
        overrides["token_dim"] = int(token_dim)
    if backbone is not None:
        overrides["backbone"] = backbone.get("name")
        overrides["backbone_sha256"] = backbone.get("weights_sha256")
    base = SelectorConfig.paper if cfg.get("preset", "cpu") == "paper" else SelectorConfig.cpu
    return base(**overrides).validate()


def split_backbone(split_dir: str | os.PathLike, names: Sequence[str] | None = None) -> dict:
    """``{"name", "weights_sha256", "token_dim", "grid"}`` of a split's features stores;
    every store must agree (``ValueError`` naming the first that does not)."""
    split_dir = Path(split_dir)
    names = list(names) if names is not None else list_refine_videos(split_dir)
    if not names:
        raise ArtifactError(f"{split_dir}: no video with render, proposals and features stores (run "
                            f"synth, synth_flow, synth_proposals and synth_features for this split)")
    ref = None
    for n in names:
        art = open_artifact(split_dir / "features" / n, stage="features")
        b = art.attrs.get("backbone") or {}
        b = b if isinstance(b, dict) else {"name": str(b)}
        tok = art.require("tokens", ndim=4)
        cur = {"name": b.get("name"), "weights_sha256": b.get("weights_sha256"), "token_dim": int(tok.shape[1]),
               "grid": [int(tok.shape[2]), int(tok.shape[3])]}
        if ref is None:
            ref = cur
        elif (cur["name"], cur["weights_sha256"], cur["token_dim"]) != (ref["name"], ref["weights_sha256"],
                                                                       ref["token_dim"]):
            raise ValueError(f"{art.path}: backbone {cur} differs from {ref} of {split_dir / 'features' / names[0]}"
                             f" (recompute the split's features with one backbone)")
    return ref


# --------------------------------------------------------------------------- data
CORRUPTIONS = ("shift", "dilate", "erode", "swap", "blob", "cut")


def corrupt_masks(mask: np.ndarray, rng: np.random.Generator, p: float) -> tuple[np.ndarray, list[str | None]]:
    """Augmentation: each frame of ``mask [L, H, W]`` (0/1) is, with probability ``p``, replaced
    by a corrupted version of itself -- the frame-specific failures the selector must spot:
    ``shift`` (moved 4-16 px), ``dilate`` / ``erode`` (by 2-4 px), ``swap`` (the proposal of
    another frame of the clip, at least 3 frames away), ``blob`` (a spurious box added
    elsewhere), ``cut`` (the part beyond a random line through the mask's centre removed).
    Empty frames are left alone. Returns the new masks (float32) and the corruption per frame
    (None = untouched). The error-map target is recomputed from the corrupted mask."""
    from scipy import ndimage

    m = np.asarray(mask) > 0.5
    L, H, W = m.shape
    out = m.copy()
    kinds: list[str | None] = [None] * L
    for t in range(L):
        if p <= 0 or rng.random() >= p or not m[t].any():
            continue
        kind = CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
        if kind == "swap" and L < 4:
            kind = "shift"
        if kind == "shift":
            d = rng.integers(4, 17, 2) * rng.choice([-1, 1], 2)
            f = np.zeros_like(m[t])
            ys, xs = np.nonzero(m[t])
            ys, xs = ys + d[0], xs + d[1]
            ok = (ys >= 0) & (ys < H) & (xs >= 0) & (xs < W)
            f[ys[ok], xs[ok]] = True
        elif kind in ("dilate", "erode"):
            r = int(rng.integers(2, 5))
            st = np.ones((2 * r + 1, 2 * r + 1), bool)
            f = (ndimage.binary_dilation if kind == "dilate" else ndimage.binary_erosion)(m[t], st)
        elif kind == "swap":
            far = [u for u in range(L) if abs(u - t) >= 3]
            f = m[int(rng.choice(far))].copy()
        elif kind == "blob":
            bh = int(rng.integers(max(3, H // 16), max(4, H // 4)))
            bw = int(rng.integers(max(3, W // 16), max(4, W // 4)))
            for _ in range(10):                             # a box that adds pixels (not inside the mask)
                f = m[t].copy()
                y, x = int(rng.integers(0, H - bh + 1)), int(rng.integers(0, W - bw + 1))
                f[y:y + bh, x:x + bw] = True
                if f.sum() > m[t].sum():
                    break
        else:  # cut
            ys, xs = np.nonzero(m[t])
            a = rng.uniform(0, 2 * np.pi)
            yy, xx = np.mgrid[:H, :W]
            f = m[t] & ((yy - ys.mean()) * np.sin(a) + (xx - xs.mean()) * np.cos(a) < 0)
        out[t], kinds[t] = f, kind
    return out.astype(np.float32), kinds


class SelectorClipDataset:
    """Samples ``(video, slot, clip)`` of a split; see the module docstring.

    ``ds[i]`` (any ``i >= 0``) returns ``rgb`` ``[L, 3, H, W]`` float32 (normalised),
    ``mask`` ``[L, 1, H, W]`` float32, ``target`` ``[L, 3, H, W]`` float32 one-hot,
    ``tokens`` ``[L, C, h, w]`` float32, ``time_offset`` int, ``video``, ``slot``,
    ``start``, ``flipped``.
    """

    def __init__(self, split_dir: str | os.PathLike, clip_len: int = 30, seed: int = 0, flip: bool = True,
                 time_shift: bool = True, max_frames: int = 100, names: Sequence[str] | None = None,
                 corrupt_p: float = 0.0):
        self.split_dir = Path(split_dir)
        self.corrupt_p = float(corrupt_p)
        self.names = list(names) if names is not None else list_refine_videos(self.split_dir)
        if not self.names:
            raise ArtifactError(f"{self.split_dir}: no video with render, proposals and features stores")
        self.clip_len, self.seed, self.flip = int(clip_len), int(seed), bool(flip)
        self.time_shift, self.max_frames = bool(time_shift), int(max_frames)
        if self.clip_len > self.max_frames:
            raise ValueError(f"clip_len {self.clip_len} exceeds the selector's max_frames {self.max_frames}")
        self._videos: dict[int, RefineVideo] = {}
        self._areas: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.names)

    def video(self, v: int) -> RefineVideo:
        if v not in self._videos:
            rv = RefineVideo(self.split_dir, self.names[v])
            if rv.T < self.clip_len:
                raise ArtifactError(f"{self.split_dir}/render/{self.names[v]}: {rv.T} frames, fewer than "
                                    f"clip_len={self.clip_len}")
            self._videos[v] = rv
        return self._videos[v]

    def areas(self, v: int) -> np.ndarray:
        """Proposal pixel count per frame and slot ``[T, K]``."""
        if v not in self._areas:
            rv = self.video(v)
            lab = np.asarray(rv.proposals["labels"][...])
            self._areas[v] = np.stack([(lab == k + 1).sum(axis=(1, 2)) for k in range(rv.K)], axis=1)
        return self._areas[v]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        L = self.clip_len
        for _ in range(100):
            v = int(rng.integers(len(self.names)))
            rv = self.video(v)
            s = int(rng.integers(rv.T - L + 1))
            slots = np.flatnonzero(self.areas(v)[s:s + L].sum(0) > 0)
            if len(slots):
                break
        else:
            raise ArtifactError(f"{self.split_dir}: 100 draws found no clip with a non-empty proposal "
                                f"(are the proposals stores empty?)")
        k = int(rng.choice(slots))
        flipped = bool(self.flip and rng.random() < 0.5)
        off = int(rng.integers(self.max_frames - L + 1)) if self.time_shift else 0
        d = rv.read(range(s, s + L))
        mask = d["masks"][:, k]                                             # [L, H, W] 0/1
        if self.corrupt_p > 0:                                              # drawn last: p = 0 keeps old samples
            mask, _ = corrupt_masks(mask, rng, self.corrupt_p)
        target = error_onehot(mask > 0.5, d["targets"][:, k])               # [L, 3, H, W]
        rgb, tokens = d["rgb"], d["tokens"]
        if flipped:
            rgb, mask, target, tokens = (a[..., ::-1] for a in (rgb, mask, target, tokens))
        return {"rgb": torch.from_numpy(np.ascontiguousarray(rgb)),
                "mask": torch.from_numpy(np.ascontiguousarray(mask[:, None], dtype=np.float32)),
                "target": torch.from_numpy(np.ascontiguousarray(target)),
                "tokens": torch.from_numpy(np.ascontiguousarray(tokens, dtype=np.float32)),
                "time_offset": off, "video": self.names[v], "slot": k, "start": s, "flipped": flipped}


def collate(items: list[dict]) -> dict:
    out = {k: torch.stack([it[k] for it in items]) for k in ("rgb", "mask", "target", "tokens")}
    out["time_offset"] = torch.tensor([it["time_offset"] for it in items], dtype=torch.long)
    for k in ("video", "slot", "start", "flipped"):
        out[k] = [it[k] for it in items]
    return out


# --------------------------------------------------------------------------- validation
def _nanmean(xs: list) -> float:
    xs = [x for x in xs if x is not None and np.isfinite(x)]
    return float(np.mean(xs)) if xs else float("nan")


@torch.no_grad()
def validate_selector(model: Selector, videos: Sequence[RefineVideo], device: Any = "cpu", amp: bool = True,
                      n: int = 10, min_area: int = 20, pos_weight: float = 1.0, baselines: dict | None = None,
                      random_trials: int = 1000) -> dict:
    """Validation loss and Table-3 selection AP (see the module docstring).

    ``baselines``: an optional cache dict (video name -> per-object temporal/random AP),
    filled on first use; those numbers do not depend on the model.
    """
    from pipeline.selector.infer import chunk_spans, object_logits

    dev = resolve_device(device)
    was = model.training
    model.eval()
    losses, ap_sel, ap_soft, ap_tc, ap_rnd = [], [], [], [], []
    try:
        for rv in videos:
            d = rv.read()
            masks, targets = d["masks"] > 0.5, d["targets"]                 # [T, K, H, W]
            T, K = masks.shape[:2]
            score = np.full((T, K), np.inf)
            score_soft = np.full((T, K), np.inf)
            for k in range(K):
                if not masks[:, k].any():
                    continue
                probs = []
                for a, b in chunk_spans(T, model.cfg.max_frames):
                    logits = object_logits(model, d["rgb"][a:b], masks[a:b, k], d["tokens"][a:b], dev, amp)
                    tgt = torch.from_numpy(error_onehot(masks[a:b, k], targets[a:b, k]))
                    losses.append((float(selector_loss(logits, tgt, pos_weight)), b - a))
                    probs.append(torch.softmax(logits, dim=1).numpy())
                probs = np.concatenate(probs)
                score[:, k] = relative_error_area(probs, masks[:, k], min_area=max(1, min_area))
                score_soft[:, k] = relative_error_area(probs, masks[:, k], min_area=max(1, min_area), soft=True)
            base = None if baselines is None else baselines.get(rv.name)
            fresh = []
            for k, o in enumerate(rv.slot_to_gt):
                if o < 0:
                    continue
                ious = frame_ious(masks[:, k], targets[:, k])
                a = selection_ap(ious, -score[:, k], n)
                if a is None:
                    continue
                ap_sel.append(a)
                ap_soft.append(selection_ap(ious, -score_soft[:, k], n))
                if base is None:
                    fresh.append((selection_ap(ious, temporal_consistency(masks[:, k]), n),
                                  random_ap(ious, n, random_trials, 0)))
            if base is None:
                base = fresh
                if baselines is not None:
                    baselines[rv.name] = base
            ap_tc.extend(b[0] for b in base)
            ap_rnd.extend(b[1] for b in base)
    finally:
        model.train(was)
    tot = sum(w for _, w in losses)
    return {"val_loss": float(sum(l * w for l, w in losses) / tot) if tot else float("nan"),
            "val_AP_selector": _nanmean(ap_sel), "val_AP_selector_soft": _nanmean(ap_soft),
            "val_AP_temporal": _nanmean(ap_tc),
            "val_AP_random": _nanmean(ap_rnd), "val_objects": len(ap_sel), "val_videos": len(videos)}


# --------------------------------------------------------------------------- training
def training_rank_loss(logits: torch.Tensor, mask: torch.Tensor, target: torch.Tensor, cfg: Mapping) -> torch.Tensor:
    """:func:`pipeline.selector.model.rank_loss` of a training batch: scores
    :func:`~pipeline.selector.model.frame_log_scores` of ``logits [B, L, 3, H, W]``, true IoU
    from the one-hot ``target`` (``(A - FP) / (A + FN)``), frames with a proposal of at
    least ``val_min_area`` pixels (smaller ones are never exemplars)."""
    area = mask.float().sum(dim=(-3, -2, -1))                               # [B, L]
    fp, fn = target[:, :, 0].sum(dim=(-2, -1)), target[:, :, 1].sum(dim=(-2, -1))
    iou = (area - fp) / (area + fn).clamp_min(1.0)
    valid = area >= max(1, int(cfg.get("val_min_area", 20)))
    return rank_loss(frame_log_scores(logits, mask), iou, valid, float(cfg.get("rank_margin", 0.05)))


def train_selector(cfg: Mapping[str, Any], out_dir: str | os.PathLike, resume: bool = True,
                   progress: bool = True, log_dir: str | os.PathLike | None = None) -> dict:
    """Train the selector as configured by ``cfg`` (every key of :data:`CONFIG_KEYS`, documented in params.yaml) into ``out_dir``.

    ``last.pt`` goes to ``out_dir``; curves and ``metrics.json`` to ``log_dir`` (default
    ``out_dir``). Returns the dict written to ``metrics.json``. Relative split paths are
    taken from the project root. The process's torch settings (threads, determinism)
    are restored afterwards.
    """
    with restored_torch_settings():  # threads, determinism: as they were afterwards
        return _train(cfg, out_dir, resume, progress, log_dir)


def _train(cfg: Mapping[str, Any], out_dir, resume: bool, progress: bool, log_dir) -> dict:
    t_start = time.monotonic()
    cfg = normalize_train_config(cfg)
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    ckpt_path = out_dir / "last.pt"

    # data and the backbone it was computed with
    train_split = project_path(cfg["train_split"])
    train_names = list_refine_videos(train_split)
    bb = split_backbone(train_split, train_names)
    val_videos: list[RefineVideo] = []
    if cfg["val_split"]:
        val_split = project_path(cfg["val_split"])
        vnames = list_refine_videos(val_split)
        if cfg["val_videos"] is not None:
            vnames = vnames[:cfg["val_videos"]]
        if vnames:
            vb = split_backbone(val_split, vnames)
            if (vb["name"], vb["weights_sha256"], vb["token_dim"]) != (bb["name"], bb["weights_sha256"],
                                                                       bb["token_dim"]):
                raise ValueError(f"{val_split}: validation features ({vb}) differ from the training ones ({bb})")
            val_videos = [RefineVideo(val_split, nm) for nm in vnames]
    mcfg = model_config_from(cfg, bb["token_dim"], bb)
    ds = SelectorClipDataset(train_split, cfg["clip_len"], cfg["seed"], cfg["flip"], cfg["time_shift"],
                             mcfg.max_frames, names=train_names, corrupt_p=cfg["corrupt_p"])

    model = Selector(mcfg).to(dev)
    n_params = model.param_count()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, cfg["warmup_iters"], cfg["decay_every"], cfg["decay_factor"]))
    start, prev_seconds, last_val, resumed = 0, 0.0, None, False
    init = None
    if resume and ckpt_path.exists():
        ck = load_train_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "a selector")
        saved = {**ADDED_KEYS, **ck["config"]}
        diff = config_diff(saved, cfg, RESUME_FREE_KEYS)
        if ck.get("model_config") != mcfg.to_dict():
            diff.append(f"model_config: {ck.get('model_config')} -> {mcfg.to_dict()} (features backbone changed?)")
        refuse_resume(ckpt_path, diff, f"Delete {out_dir}, set train_selector.resume: false, or restore those "
                                       f"values (only {sorted(RESUME_FREE_KEYS - _PASSTHROUGH)} may change).")
        start, prev_seconds, last_val = restore_training(ck, model, opt, sched)
        resumed = True
        init = ck.get("init")
    elif cfg["init"]:
        init = {**init_from_checkpoint(model, project_path(cfg["init"])), "path": cfg["init"]}
    keep = start if resumed else None
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, keep)
    vlog = CsvLog(log_dir / "val_curve.csv", VAL_CURVE_COLUMNS, keep)

    total_iters, B = cfg["iterations"], cfg["batch_size"]
    budget = cfg["time_budget_s"]
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "selector", tlog, cfg["log_every"], total_iters, start,
                     prev_seconds, budget, progress, "train selector")
    seconds = loop.seconds
    baselines: dict = {}

    def save(it: int) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "iteration": it, "rng": rng_state(), "config": cfg,
                           "model_config": mcfg.to_dict(), "train_seconds": seconds(), "last_val": last_val,
                           "param_count": n_params, "device": str(dev), "backbone": bb, "init": init,
                           "package_version": __version__}, ckpt_path)

    def run_val(it: int) -> dict:
        r = validate_selector(model, val_videos, dev, cfg["amp"], cfg["val_n"], cfg["val_min_area"],
                              cfg["pos_weight"], baselines)
        r["iteration"] = it
        vlog.write({**r, "seconds": seconds()})
        return r

    stopped_by = "iterations"
    model.train()
    try:
        while loop.it < total_iters:
            batch = collate([ds[loop.it * B + b] for b in range(B)])
            with autocast(dev, cfg["amp"]):
                logits = model(batch["rgb"].to(dev), batch["mask"].to(dev), batch["tokens"].to(dev),
                               time_offset=batch["time_offset"].to(dev))
            target = batch["target"].to(dev)
            bce = selector_loss(logits, target, cfg["pos_weight"])
            rank = training_rank_loss(logits, batch["mask"].to(dev), target, cfg) if cfg["rank_weight"] else None
            loss = bce if rank is None else bce + cfg["rank_weight"] * rank
            loop.step(loss, {"loss": loss.detach(), "bce": bce.detach(),
                             "rank": 0.0 if rank is None else rank.detach()})
            it = loop.it
            if val_videos and it % cfg["val_every"] == 0:
                last_val = run_val(it)
            over = loop.over_budget()
            if it % cfg["ckpt_every"] == 0 and it < total_iters and not over:
                save(it)
            if over and it < total_iters:
                stopped_by = "time_budget"
                break
        loop.flush()
        it = loop.it
        if val_videos and (last_val is None or int(last_val["iteration"]) != it):
            last_val = run_val(it)
        save(it)
    finally:
        tlog.close()
        vlog.close()
        loop.close()

    last_row = loop.last_row
    if not last_row:
        prev = read_csv(log_dir / "train_curve.csv")
        last_row = {k: float(v) for k, v in prev[-1].items()} if prev else {}
    ran = it - start
    lv = last_val or {}
    metrics = {
        "iterations": it, "iterations_target": total_iters, "completed": it >= total_iters,
        "stopped_by": stopped_by if it < total_iters else "iterations", "time_budget_s": budget,
        "resumed_from": start if resumed else None, "iterations_this_run": ran,
        "wall_time_s": round(time.monotonic() - t_start, 3), "train_time_s": round(seconds(), 3),
        "iters_per_s": round(ran / max(loop.run_seconds(), 1e-9), 4) if ran else None,
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "threads": torch.get_num_threads(), "amp": "bf16" if (cfg["amp"] and dev.type == "cuda") else "fp32",
        "param_count": n_params, "preset": cfg["preset"], "seed": cfg["seed"], "skipped_steps": loop.guard.skipped,
        "clip_len": cfg["clip_len"], "batch_size": B, "pos_weight": cfg["pos_weight"], "init": init,
        "rank_weight": cfg["rank_weight"], "rank_margin": cfg["rank_margin"], "corrupt_p": cfg["corrupt_p"],
        "mask_context": mcfg.mask_context, "token_dim": mcfg.token_dim, "backbone": bb["name"],
        "backbone_sha256": bb["weights_sha256"],
        "train_videos": len(train_names), "loss": last_row.get("loss"),
        "val_loss": lv.get("val_loss"), "val_AP_selector": lv.get("val_AP_selector"),
        "val_AP_selector_soft": lv.get("val_AP_selector_soft"),
        "val_AP_temporal_consistency": lv.get("val_AP_temporal"), "val_AP_random": lv.get("val_AP_random"),
        "val_objects": lv.get("val_objects"), "val_videos": lv.get("val_videos"), "val_iteration": lv.get("iteration"),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(log_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- export / load
def export_checkpoint(last_pt: str | os.PathLike, path: str | os.PathLike, fp16: bool = True,
                      max_mb: float | None = 25.0) -> dict:
    """Write the small inference checkpoint of a training checkpoint (fp16 weights; int8
    for the large tensors only if the fp16 file would exceed ``max_mb``; ``fp16=False``:
    float32). Returns its summary (encoding, size, sha256 of the weights and of the file)."""
    last_pt, path = Path(last_pt), Path(path)
    if not last_pt.exists():
        raise FileNotFoundError(f"{last_pt}: no selector training checkpoint to export "
                                f"(run `dvc repro training/dvc.yaml:train_selector`)")
    ck = load_train_checkpoint(last_pt, CHECKPOINT_FORMAT, "a selector")
    cfg = ck["config"]
    lv = ck.get("last_val") or {}
    summary = {"iterations": int(ck["iteration"]), "iterations_target": cfg.get("iterations"),
               "train_seconds": float(ck["train_seconds"]), "param_count": int(ck["param_count"]),
               "trained_on": ck.get("device"), "val_loss": lv.get("val_loss"),
               "val_AP_selector": lv.get("val_AP_selector"), "val_AP_temporal": lv.get("val_AP_temporal"),
               "val_AP_random": lv.get("val_AP_random"), "val_iteration": lv.get("iteration"),
               "source_checkpoint": str(last_pt)}
    train = {k: cfg.get(k) for k in ("preset", "clip_len", "batch_size", "lr", "pos_weight", "rank_weight",
                                     "rank_margin", "corrupt_p", "flip", "time_shift", "seed", "train_split",
                                     "val_split")}
    train["backbone"] = ck.get("backbone")
    train["init"] = ck.get("init")
    doc = write_export(EXPORT_FORMAT, ck["model"], {"model_config": ck["model_config"], "train": train,
                       "summary": summary}, path, fp16=fp16, max_mb=max_mb, what="selector")
    return {"path": str(path), "encoding": doc["encoding"], "bytes": path.stat().st_size,
            "weights_sha256": doc["weights_sha256"], "file_sha256": sha256_file(path), **summary}


