"""Training of the mask corrector on the synthetic splits, and its small inference checkpoint.

Data (:class:`CorrectorClipDataset`)
------------------------------------
A split folder read through :class:`pipeline.synth.refine_data.RefineVideo`
(``render/``, ``proposals/``, ``features/``). Sample ``i`` (drawn with
``numpy.random.default_rng([seed, i])``, so batches do not depend on the number
of loader workers and a resumed run sees exactly the samples of the
uninterrupted one):

* a video, and a window of ``window`` (T = 7) consecutive **target frames**;
* per proposal slot ``k``, ``t`` (10) **exemplar frames** from the whole video by
  the *oracle* ranking: the per-frame IoU of the slot's proposal
  (``labels == k + 1``) with the GT modal mask of the slot's matched GT object
  (:func:`pipeline.exemplars.scoring.frame_ious`), ranked best first with
  :func:`pipeline.exemplars.scoring.rank_exemplars` on ``-IoU``; frames where the
  proposal is empty are never exemplars. Exemplars may include target frames:
  the model never lets a query attend to exemplar tokens of its own frame.
* exemplar weight (``exemplar_weight``): ``"iou"`` (default) = that IoU,
  floored at :data:`IOU_WEIGHT_FLOOR` so that a slot with exemplars always has a
  non-zero total weight (as at inference, where every finite selector score
  gives a positive weight); ``"one"`` = 1 for every exemplar. At inference the
  weight is ``1 / (1 + score)`` of the selector's relative error area, which
  equals the IoU when the proposal has no false positives (see
  :mod:`pipeline.corrector.infer`), so the two are on the same scale.
* targets: the GT modal mask of each slot's matched GT object (Hungarian over the
  whole video, :func:`pipeline.synth.refine_data.match_slots`); an unmatched slot
  has an empty target.

Loss (:func:`corrector_loss`)
-----------------------------
``total = w_mask * BCE + w_boundary * boundary-BCE + w_recon * MSE + w_alpha * alpha-BCE``:

* ``mask``: BCE of the K mask logits against the slot targets, mean over T, K, H, W
  (paper eq. 6);
* ``boundary``: BCE restricted to the band of +-``boundary_width`` px around the GT
  edges, per mask normalised by the band area, mean over T*K
  (:func:`pipeline.oclr.losses.boundary_band` / ``boundary_bce``);
* ``recon``: MSE between ``recon`` and the target tokens **standardised per token**
  (zero mean, unit variance over the C channels, i.e. layer norm without affine):
  the backbone's raw scale is arbitrary (MobileNetV2 activations, DINO), the
  standardised target makes the term O(1) for any backbone (paper eq. 7, first term);
* ``alpha``: BCE of the alpha mask of object query k (softmax over all K + K_bg
  queries) against the slot's GT mask area-pooled to token resolution (fraction of
  the token cell covered); background queries are not supervised individually
  and share the rest (paper eq. 7, second term).

Training (:func:`train_corrector`)
----------------------------------
Adam, linear warm-up then step decay (:func:`pipeline.train.scaffold.lr_factor`),
gradient clipping, bf16 autocast on CUDA and fp32 on CPU, seeded. Writes
``last.pt`` into ``out_dir`` (every ``ckpt_every`` iterations, when
``time_budget_s`` is spent, and at the end) and ``train_curve.csv``,
``val_curve.csv``, ``metrics.json`` into ``log_dir``. Resuming has the OCLR
semantics: with ``resume=True`` a run continues from ``last.pt`` if the saved
config equals the current one up to :data:`RESUME_FREE_KEYS`, else
:class:`~pipeline.train.scaffold.ResumeError`; curve rows past the checkpoint are dropped.

Validation: ``val_clips`` fixed windows of the validation split (window ``j``
from video ``j mod n``, start drawn from ``val_seed``). For each slot matched to
a GT object, J = mean over the window's frames of the IoU (both empty = 1) of
(a) the proposal and (b) the corrected mask (the label map of
:func:`pipeline.corrector.infer.label_map`, slots without exemplars falling back to their
proposal exactly as at inference), averaged over all matched slots:
``val_J_proposals``, ``val_J_corrected``, ``val_J_gain`` = (b) - (a).

Inference checkpoint (:func:`export_checkpoint`, :func:`load_corrector`)
-----------------------------------------------------------------------
``torch.save`` dict (loadable with ``weights_only=True``), format
:data:`EXPORT_FORMAT`: ``model_config`` (a :class:`CorrectorConfig` dict, with
``token_dim`` and ``backbone``), ``train`` (window, t, exemplar_weight, ...),
``summary``, fp16 weights (int8 + per-channel scale for the large matrices when
the fp16 file would exceed ``max_mb``: the paper preset, 15.8M parameters) and
their sha256.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline import __version__
from pipeline.core.checkpoint import (
    atomic_torch_save,
    load_train_checkpoint,
    write_export,
)
from pipeline.core.config import project_path
from pipeline.core.device import restored_torch_settings, rng_state
from pipeline.core.store import ArtifactError, write_json_atomic
from pipeline.corrector.batch import collate_windows, forward_batch
from pipeline.corrector.model import (
    EXPORT_FORMAT,
    Corrector,
    CorrectorConfig,
    backbone_name,
    backbone_sha256,
    exemplar_inputs,
    pool_masks,
)
from pipeline.exemplars.scoring import frame_ious, rank_exemplars
from pipeline.oclr.losses import (
    bce_probs,
    boundary_band,
    boundary_bce,
    merge_loss_weights,
)
from pipeline.core.arrays import proposal_masks
from pipeline.synth.refine_data import (
    RefineVideo,
    list_refine_videos,
    slot_targets,
)
from pipeline.train.scaffold import (
    CsvLog,
    RangeSampler,
    TrainLoop,
    check_keys,
    config_diff,
    lr_factor,
    one_thread_worker,
    read_csv,
    refuse_resume,
    restore_training,
    start_run,
)

CHECKPOINT_FORMAT = "motionseg-corrector-train/1"
IOU_WEIGHT_FLOOR = 0.05
"""Smallest exemplar weight with ``exemplar_weight: iou`` (an exemplar whose proposal misses its
GT object entirely still counts a little, as every finite selector score does at inference)."""

DEFAULT_LOSS_WEIGHTS: dict[str, float] = {"mask": 1.0, "boundary": 0.2, "recon": 0.1, "alpha": 0.5}
"""mask BCE, boundary BCE (paper / OCLR weight), feature reconstruction MSE, alpha BCE (the paper
gives no values for the last two)."""

#: every key of the ``train_corrector`` params section (documented there); no defaults in code
CONFIG_KEYS: tuple[str, ...] = (
    "preset", "model", "train_split", "val_split", "window", "t", "exemplar_weight", "batch_size", "lr",
    "weight_decay", "warmup_iters", "decay_every", "decay_factor", "grad_clip", "iterations", "time_budget_s",
    "ckpt_every", "val_every", "val_clips", "val_seed", "log_every", "loss_weights", "boundary_width", "seed",
    "device", "amp", "deterministic", "num_workers", "threads",
)

RESUME_FREE_KEYS = frozenset({"iterations", "time_budget_s", "ckpt_every", "val_every", "log_every", "device",
                              "num_workers", "threads", "val_clips", "resume", "export", "export_max_mb"})
"""Config keys that may change between a run and its resumption."""

_PASSTHROUGH = frozenset({"resume", "export", "export_max_mb"})

TRAIN_CURVE_COLUMNS = ["iteration", "loss", "mask", "boundary", "recon", "alpha", "lr", "grad_norm", "seconds"]
VAL_CURVE_COLUMNS = ["iteration", "val_J_proposals", "val_J_corrected", "val_J_gain", "val_loss", "seconds"]


# --------------------------------------------------------------------------- config
def normalize_train_config(cfg: Mapping[str, Any] | None) -> dict:
    """``cfg`` (exactly :data:`CONFIG_KEYS`, see :func:`check_keys`), checked and typed."""
    out = check_keys(cfg, CONFIG_KEYS, "train_corrector", _PASSTHROUGH)
    lw = dict(DEFAULT_LOSS_WEIGHTS)
    bad = set(out["loss_weights"] or {}) - set(lw)
    if bad:
        raise KeyError(f"corrector training config: unknown loss weight(s) {sorted(bad)}; known: {sorted(lw)}")
    lw.update({k: float(v) for k, v in (out["loss_weights"] or {}).items()})
    out["loss_weights"] = lw
    out["model"] = dict(out["model"] or {})
    if out["preset"] not in ("cpu", "paper"):
        raise ValueError(f"corrector training config: preset must be 'cpu' or 'paper', got {out['preset']!r}")
    if out["exemplar_weight"] not in ("iou", "one"):
        raise ValueError(f"corrector training config: exemplar_weight must be 'iou' or 'one', "
                         f"got {out['exemplar_weight']!r}")
    for k in ("window", "t", "batch_size", "iterations", "ckpt_every", "val_every", "log_every"):
        out[k] = int(out[k])
        if out[k] < (0 if k == "iterations" else 1):
            raise ValueError(f"corrector training config: {k} must be positive, got {out[k]}")
    for k in ("lr", "weight_decay", "decay_factor"):
        out[k] = float(out[k])
    for k in ("warmup_iters", "decay_every", "val_clips", "seed", "val_seed", "boundary_width"):
        out[k] = int(out[k])
    return out


def model_config_from(cfg: Mapping[str, Any], token_dim: int | None = None, backbone: str | None = None,
                      token_hw: tuple[int, int] | None = None) -> CorrectorConfig:
    """The :class:`CorrectorConfig` of a (normalized) training config: preset + ``model`` overrides,
    with ``token_dim`` / ``backbone`` / ``token_hw`` taken from the training data."""
    overrides = dict(cfg.get("model") or {})
    known = set(CorrectorConfig().to_dict())
    bad = set(overrides) - known
    if bad:
        raise KeyError(f"corrector model overrides: unknown CorrectorConfig key(s) {sorted(bad)}")
    if "token_hw" in overrides:
        overrides["token_hw"] = tuple(overrides["token_hw"])
    if token_dim is not None:
        if "token_dim" in overrides and int(overrides["token_dim"]) != int(token_dim):
            raise ValueError(f"corrector model override token_dim={overrides['token_dim']} but the features "
                             f"have {token_dim} channels")
        overrides["token_dim"] = int(token_dim)
    if backbone is not None:
        overrides.setdefault("backbone", backbone)
    if token_hw is not None:
        overrides.setdefault("token_hw", tuple(int(v) for v in token_hw))
    base = CorrectorConfig.paper if cfg.get("preset", "cpu") == "paper" else CorrectorConfig.cpu
    mc = base(**overrides).validate()
    if int(cfg.get("window", 7)) > mc.max_frames:
        raise ValueError(f"window {cfg.get('window')} exceeds the model's max_frames {mc.max_frames}")
    return mc


def oracle_exemplars(labels: np.ndarray, targets: np.ndarray, t: int, weighting: str = "iou"
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Oracle exemplars of every slot of a video.

    ``labels [T, H, W]`` proposal label map, ``targets [T, K, H, W]`` bool GT mask of each slot.
    Returns ``frames [K, t]`` int32 (best first, ``-1`` padding), ``weights [K, t]`` float32
    (0 for padding) and ``ious [T, K]``. Frames with an empty proposal are never exemplars.
    """
    lab = np.asarray(labels)
    tg = np.asarray(targets, bool)
    T, K = tg.shape[:2]
    ious = np.zeros((T, K))
    nonempty = np.zeros((T, K), bool)
    for k in range(K):
        m = lab == k + 1
        ious[:, k] = frame_ious(m, tg[:, k])
        nonempty[:, k] = m.reshape(T, -1).any(1)
    frames, _, _ = rank_exemplars(np.where(nonempty, -ious, np.inf), t)
    weights = np.zeros(frames.shape, np.float32)
    for k in range(K):
        ok = frames[k] >= 0
        w = np.maximum(ious[frames[k][ok], k], IOU_WEIGHT_FLOOR) if weighting == "iou" else np.ones(ok.sum())
        weights[k, ok] = w
    return frames, weights, ious


class CorrectorClipDataset(Dataset):
    """Training / validation samples of the corrector from a split folder (see the module docstring).

    ``ds[i]`` returns float32 tensors ``rgb [T, 3, H, W]``, ``masks [T, K, H, W]``,
    ``targets [T, K, H, W]`` (0/1), ``tokens [T, C, h, w]``, ``ex_tokens [E, C, h, w]``,
    ``ex_masks [E, K, h, w]`` (exemplar proposal masks area-pooled to token resolution, zero
    where e is not an exemplar of k), ``ex_weight [E, K]``, int64 ``ex_frame [E]``,
    ``tgt_frame [T]``, plus ``video``, ``start``, ``slot_to_gt``. Any ``i >= 0`` is valid.
    """

    def __init__(self, split_dir: str | os.PathLike, window: int = 7, t: int = 10, seed: int = 0,
                 video_order: str = "random", exemplar_weight: str = "iou", K: int | None = None):
        if video_order not in ("random", "cycle"):
            raise ValueError(f"video_order must be 'random' or 'cycle', got {video_order!r}")
        self.split_dir = Path(split_dir)
        self.names = list_refine_videos(self.split_dir)
        if not self.names:
            raise ArtifactError(f"{self.split_dir}: no video has render, proposals and features stores "
                                f"(run synth, synth_proposals and synth_features for this split)")
        self.window, self.t, self.seed = int(window), int(t), int(seed)
        self.video_order, self.exemplar_weight, self.K = video_order, exemplar_weight, K
        self._videos: dict[int, RefineVideo] = {}
        self._oracle: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.names)

    def __getstate__(self):  # do not pickle open stores into loader workers
        d = dict(self.__dict__)
        d["_videos"], d["_oracle"] = {}, {}
        return d

    def video(self, v: int) -> RefineVideo:
        if v not in self._videos:
            self._videos[v] = RefineVideo(self.split_dir, self.names[v], self.K)
        return self._videos[v]

    @property
    def token_info(self) -> tuple[int, tuple[int, int], str | None, str | None]:
        """``(C, (h, w), backbone name, backbone weights sha256)`` of the first video's features."""
        vid = self.video(0)
        shape = vid.features["tokens"].shape
        bb = vid.features.attrs.get("backbone")
        return int(shape[1]), (int(shape[2]), int(shape[3])), backbone_name(bb), backbone_sha256(bb)

    def oracle(self, v: int) -> tuple[np.ndarray, np.ndarray]:
        if v not in self._oracle:
            vid = self.video(v)
            labels = np.asarray(vid.proposals["labels"][...])
            targets = slot_targets(np.asarray(vid.render["modal"][...]), vid.slot_to_gt)
            frames, weights, _ = oracle_exemplars(labels, targets, self.t, self.exemplar_weight)
            self._oracle[v] = (frames, weights)
        return self._oracle[v]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        n = len(self.names)
        v = i % n if self.video_order == "cycle" else int(rng.integers(n))
        vid = self.video(v)
        L = self.window
        if vid.T < L:
            raise ArtifactError(f"{self.split_dir}/render/{self.names[v]}: {vid.T} frames, fewer than the "
                                f"window of {L}")
        s = int(rng.integers(vid.T - L + 1))
        frames, weights = self.oracle(v)
        ex_frame, ex_weight, member = exemplar_inputs(frames, weights)
        tgt = vid.read(np.arange(s, s + L))
        h, w = tgt["tokens"].shape[-2:]
        if len(ex_frame):
            # one slice read per array over the exemplars' frame span (per-frame reads of up to
            # K * t frames cost several times more), then the exemplar frames picked from it
            lo, hi = int(ex_frame.min()), int(ex_frame.max()) + 1
            ex_tokens = np.asarray(vid.features["tokens"][lo:hi])[ex_frame - lo].astype(np.float32)
            ex_masks = proposal_masks(np.asarray(vid.proposals["labels"][lo:hi])[ex_frame - lo], vid.K)
            exm = pool_masks(torch.from_numpy(ex_masks), (h, w)).numpy() * member[:, :, None, None]
        else:
            ex_tokens = np.zeros((0, *tgt["tokens"].shape[1:]), np.float32)
            exm = np.zeros((0, vid.K, h, w), np.float32)
        return {"rgb": torch.from_numpy(tgt["rgb"]), "masks": torch.from_numpy(tgt["masks"]),
                "targets": torch.from_numpy(tgt["targets"].astype(np.float32)),
                "tokens": torch.from_numpy(tgt["tokens"]), "ex_tokens": torch.from_numpy(ex_tokens),
                "ex_masks": torch.from_numpy(exm.astype(np.float32)), "ex_weight": torch.from_numpy(ex_weight),
                "ex_frame": torch.from_numpy(ex_frame), "tgt_frame": torch.arange(s, s + L, dtype=torch.int64),
                "video": self.names[v], "start": s, "slot_to_gt": vid.slot_to_gt.copy()}


# --------------------------------------------------------------------------- loss
def corrector_loss(out: Mapping[str, torch.Tensor], targets: torch.Tensor, tokens: torch.Tensor,
                   weights: Mapping[str, float] | None = None, boundary_width: int = 3
                   ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The corrector training loss (module docstring). ``targets [B, T, K, H, W]`` (0/1),
    ``tokens [B, T, C, h, w]``. Returns ``(total, parts)``, parts detached (``mask``,
    ``boundary``, ``recon``, ``alpha``, ``total``)."""
    w = merge_loss_weights(DEFAULT_LOSS_WEIGHTS, weights)
    x = out["mask_logits"].float()
    y = targets.to(device=x.device, dtype=torch.float32)
    K = x.shape[2]
    parts = {"mask": F.binary_cross_entropy_with_logits(x, y),
             "boundary": boundary_bce(x, y, boundary_band(y, boundary_width)).mean()}
    tok = tokens.to(device=x.device, dtype=torch.float32)
    tgt_feat = F.layer_norm(tok.movedim(2, -1), (tok.shape[2],)).movedim(-1, 2)
    parts["recon"] = F.mse_loss(out["recon"].float(), tgt_feat)
    alpha = out["alpha"][:, :, :K].float()
    parts["alpha"] = bce_probs(alpha, pool_masks(y, tuple(alpha.shape[-2:]))).mean()
    total = sum(w[k] * parts[k] for k in parts)
    det = {k: v.detach() for k, v in parts.items()}
    det["total"] = total.detach()
    return total, det


# --------------------------------------------------------------------------- validation
def _slot_j(pred: np.ndarray, targets: np.ndarray, slot_to_gt: np.ndarray) -> list[float]:
    """Per matched slot: mean over frames of IoU(pred[:, k], targets[:, k]) (``[T, K, H, W]`` bool)."""
    return [float(frame_ious(pred[:, k], targets[:, k]).mean()) for k in range(pred.shape[1]) if slot_to_gt[k] >= 0]


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: Dataset, n_clips: int, device: torch.device | str = "cpu",
             batch_size: int = 1, amp: bool = True, loss_kwargs: Mapping | None = None,
             threshold: float = 0.5) -> dict:
    """J of the proposals and of the corrected masks over windows ``0..n_clips-1`` of ``dataset``
    (module docstring) and the mean loss. The model is put in eval mode and restored afterwards."""
    from pipeline.corrector.infer import label_map, with_fallback

    dev = torch.device(device)
    was = model.training
    model.eval()
    jp, jc, losses = [], [], []
    try:
        for b0 in range(0, n_clips, batch_size):
            batch = collate_windows([dataset[i] for i in range(b0, min(n_clips, b0 + batch_size))])
            out = forward_batch(model, batch, dev, amp)
            loss, _ = corrector_loss(out, batch["targets"], batch["tokens"], **dict(loss_kwargs or {}))
            nb = batch["rgb"].shape[0]
            losses.append(float(loss) * nb)
            probs = torch.sigmoid(out["mask_logits"].float())
            K = probs.shape[2]
            for b in range(nb):
                has = (batch["ex_weight"][b] > 0).any(0).to(dev)                       # [K]
                p = with_fallback(probs[b], batch["masks"][b].to(dev), has)
                lab = label_map(p, threshold)                                           # [T, H, W]
                pred = (lab[:, None] == torch.arange(1, K + 1, device=dev)[None, :, None, None]).cpu().numpy()
                tg = batch["targets"][b].numpy() > 0.5
                s2g = batch["slot_to_gt"][b]
                jc.extend(_slot_j(pred, tg, s2g))
                jp.extend(_slot_j(batch["masks"][b].numpy() > 0.5, tg, s2g))
    finally:
        model.train(was)
    n = max(1, n_clips)
    jpm = float(np.mean(jp)) if jp else float("nan")
    jcm = float(np.mean(jc)) if jc else float("nan")
    return {"val_J_proposals": jpm, "val_J_corrected": jcm, "val_J_gain": jcm - jpm,
            "val_loss": float(sum(losses) / n), "val_objects": len(jc), "val_clips": n_clips}


def validation_windows(split_dir: str | os.PathLike, cfg: Mapping[str, Any]) -> "CorrectorClipDataset":
    """The fixed validation windows of ``split_dir`` that :func:`validate` scores (normalised ``cfg``)."""
    return CorrectorClipDataset(split_dir, cfg["window"], cfg["t"], seed=cfg["val_seed"], video_order="cycle",
                                exemplar_weight=cfg["exemplar_weight"])


def loss_kwargs(cfg: Mapping[str, Any]) -> dict:
    """:func:`corrector_loss` keywords of a normalised training config."""
    return {"weights": cfg["loss_weights"], "boundary_width": cfg["boundary_width"]}


# --------------------------------------------------------------------------- training
def train_corrector(cfg: Mapping[str, Any], out_dir: str | os.PathLike, resume: bool = True,
                    progress: bool = True, log_dir: str | os.PathLike | None = None) -> dict:
    """Train the corrector as configured by ``cfg`` (every key of :data:`CONFIG_KEYS`, documented in params.yaml) into ``out_dir``.

    ``last.pt`` goes to ``out_dir``; ``train_curve.csv``, ``val_curve.csv`` and ``metrics.json``
    to ``log_dir`` (default ``out_dir``). Returns the dict written to ``metrics.json``. Relative
    split paths are taken from the project root.
    """
    with restored_torch_settings():  # threads, determinism: as they were afterwards
        return _train(cfg, out_dir, resume, progress, log_dir)


def _train(cfg: Mapping[str, Any], out_dir, resume: bool, progress: bool, log_dir) -> dict:
    t_start = time.monotonic()
    cfg = normalize_train_config(cfg)
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    ckpt_path = out_dir / "last.pt"

    # data
    train_ds = CorrectorClipDataset(project_path(cfg["train_split"]), cfg["window"], cfg["t"], seed=cfg["seed"],
                                    exemplar_weight=cfg["exemplar_weight"])
    C, hw, backbone, backbone_sha = train_ds.token_info
    val_ds = None
    if cfg["val_split"] and cfg["val_clips"] > 0:
        val_ds = validation_windows(project_path(cfg["val_split"]), cfg)
        vC, _, vb, _ = val_ds.token_info
        if vC != C or (vb and backbone and vb != backbone):
            raise ArtifactError(f"{val_ds.split_dir}: features ({vb}, {vC} channels) differ from the training "
                                f"split's ({backbone}, {C} channels); rebuild them with the same backbone")
    mcfg = model_config_from(cfg, token_dim=C, backbone=backbone, token_hw=hw)

    model = Corrector(mcfg).to(dev)
    n_params = model.param_count()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, cfg["warmup_iters"], cfg["decay_every"], cfg["decay_factor"]))
    start, prev_seconds, last_val, resumed = 0, 0.0, None, False
    if resume and ckpt_path.exists():
        ck = load_train_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "a corrector")
        diff = config_diff(ck["config"], cfg, RESUME_FREE_KEYS)
        if ck.get("model_config") != mcfg.to_dict():
            diff.append("model_config (features: token_dim / backbone / grid)")
        refuse_resume(ckpt_path, diff, f"Delete {out_dir}, set train_corrector.resume: false, or restore those "
                                       f"values (only {sorted(RESUME_FREE_KEYS - _PASSTHROUGH)} may change).")
        start, prev_seconds, last_val = restore_training(ck, model, opt, sched)
        resumed = True
    keep = start if resumed else None
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, keep)
    vlog = CsvLog(log_dir / "val_curve.csv", VAL_CURVE_COLUMNS, keep)

    loss_kw = loss_kwargs(cfg)
    total_iters, B = cfg["iterations"], cfg["batch_size"]
    nw = int(cfg["num_workers"])
    loader = DataLoader(train_ds, batch_size=B, sampler=RangeSampler(start * B, max(start, total_iters) * B),
                        collate_fn=collate_windows, num_workers=nw, pin_memory=dev.type == "cuda",
                        worker_init_fn=one_thread_worker, generator=torch.Generator().manual_seed(cfg["seed"]),
                        persistent_workers=False, prefetch_factor=4 if nw > 0 else None)
    budget = cfg["time_budget_s"]
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "corrector", tlog, cfg["log_every"], total_iters, start,
                     prev_seconds, budget, progress, "train corrector")
    seconds = loop.seconds

    def save(it: int) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "scheduler": sched.state_dict(), "iteration": it, "rng": rng_state(), "config": cfg,
                           "model_config": mcfg.to_dict(), "train_seconds": seconds(), "last_val": last_val,
                           "param_count": n_params, "device": str(dev), "backbone": backbone,
                           "backbone_sha256": backbone_sha, "package_version": __version__}, ckpt_path)

    def run_val(it: int) -> dict:
        r = validate(model, val_ds, cfg["val_clips"], dev, batch_size=B, amp=cfg["amp"], loss_kwargs=loss_kw)
        r["iteration"] = it
        vlog.write({**r, "seconds": seconds()})
        return r

    stopped_by, first_loss = "iterations", None
    model.train()
    try:
        if loop.it < total_iters:
            for batch in loader:
                out = forward_batch(model, batch, dev, cfg["amp"])
                loss, parts = corrector_loss(out, batch["targets"], batch["tokens"], **loss_kw)
                vals = loop.step(loss, parts)
                it = loop.it
                if first_loss is None:
                    first_loss = vals["total"]
                if val_ds is not None and it % cfg["val_every"] == 0:
                    last_val = run_val(it)
                over = loop.over_budget()
                if it % cfg["ckpt_every"] == 0 and it < total_iters and not over:
                    save(it)
                if over and it < total_iters:
                    stopped_by = "time_budget"
                    break
        loop.flush()
        it = loop.it
        if val_ds is not None and (last_val is None or int(last_val["iteration"]) != it):
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
    wall = time.monotonic() - t_start
    ran = it - start
    lv = last_val or {}
    metrics = {
        "iterations": it, "iterations_target": total_iters, "completed": it >= total_iters,
        "stopped_by": stopped_by if it < total_iters else "iterations", "time_budget_s": budget,
        "resumed_from": start if resumed else None, "iterations_this_run": ran,
        "wall_time_s": round(wall, 3), "train_time_s": round(seconds(), 3),
        "iters_per_s": round(ran / max(loop.run_seconds(), 1e-9), 4) if ran else None,
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "amp": "bf16" if (cfg["amp"] and dev.type == "cuda") else "fp32",
        "param_count": n_params, "preset": cfg["preset"], "seed": cfg["seed"], "skipped_steps": loop.guard.skipped,
        "window": cfg["window"], "t": cfg["t"], "batch_size": B, "exemplar_weight": cfg["exemplar_weight"],
        "token_dim": C, "backbone": backbone,
        "first_loss": first_loss, "loss": last_row.get("loss"),
        **{f"loss_{k}": last_row.get(k) for k in ("mask", "boundary", "recon", "alpha")},
        "val_J_proposals": lv.get("val_J_proposals"), "val_J_corrected": lv.get("val_J_corrected"),
        "val_J_gain": lv.get("val_J_gain"), "val_loss": lv.get("val_loss"), "val_iteration": lv.get("iteration"),
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(log_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- export / load
def export_checkpoint(last_pt: str | os.PathLike, path: str | os.PathLike, fp16: bool = True,
                      max_mb: float | None = 25.0) -> dict:
    """Write the small inference checkpoint (format :data:`EXPORT_FORMAT`) of a training checkpoint:
    fp16 weights, or int8 + per-channel scale for the large matrices when the fp16 file would
    exceed ``max_mb`` (1e6 bytes); ``fp16=False``: float32. Returns a summary dict."""
    last_pt, path = Path(last_pt), Path(path)
    if not last_pt.exists():
        raise FileNotFoundError(f"{last_pt}: no corrector training checkpoint to export "
                                f"(run `dvc repro training/dvc.yaml:train_corrector`)")
    ck = load_train_checkpoint(last_pt, CHECKPOINT_FORMAT, "a corrector")
    cfg = ck["config"]
    lv = ck.get("last_val") or {}
    summary = {"iterations": int(ck["iteration"]), "iterations_target": cfg.get("iterations"),
               "train_seconds": float(ck["train_seconds"]), "param_count": int(ck["param_count"]),
               "trained_on": ck.get("device"), "val_J_proposals": lv.get("val_J_proposals"),
               "val_J_corrected": lv.get("val_J_corrected"), "val_iteration": lv.get("iteration"),
               "source_checkpoint": str(last_pt)}
    train = {k: cfg.get(k) for k in ("preset", "window", "t", "exemplar_weight", "batch_size", "lr", "seed",
                                     "train_split", "val_split", "loss_weights")}
    train["backbone_sha256"] = ck.get("backbone_sha256")
    doc = write_export(EXPORT_FORMAT, ck["model"], {"model_config": ck["model_config"], "train": train,
                       "summary": summary}, path, fp16=fp16, max_mb=max_mb, what="corrector")
    from pipeline.core.store import sha256_file

    return {"path": str(path), "encoding": doc["encoding"], "bytes": path.stat().st_size,
            "weights_sha256": doc["weights_sha256"], "file_sha256": sha256_file(path), **summary}


