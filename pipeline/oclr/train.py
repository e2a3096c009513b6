"""Training of OCLR on the synthetic splits, and its small inference checkpoint.

Data
----
A synthetic split is ``<split>/render/<video>.zarr`` (stage ``synth``: ``amodal``,
``modal`` [T, O, H, W] bool, ``order`` [O] ranks 0 = front-most, ``gt_flow``
[T, 4, H, W]) plus ``<split>/flow/<video>.zarr`` (stage ``synth_flow``: ``flow``
[T, 4, H, W], the estimated -- RAFT by default -- flow of the rendered RGB).
:class:`SynthClipDataset` draws clips of ``clip_len`` consecutive frames from
them, reading only those frames. Sample ``i`` depends only on ``(seed, i)``, so
batches are the same whatever the number of loader workers and a resumed run
sees exactly the clips the uninterrupted run would have seen.

Training (:func:`train_oclr`)
-----------------------------
Adam, linear warm-up to ``lr`` over ``warmup_iters`` then multiplied by
``decay_factor`` every ``decay_every`` iterations (counted from 0), gradient
clipping, :func:`pipeline.models.oclr_loss` (Hungarian matching, amodal BCE,
boundary BCE, modal BCE, depth-order loss), bf16 autocast on CUDA and fp32 on
CPU. Writes into ``out_dir`` (and ``log_dir``, default ``out_dir``)::

    last.pt          model, optimiser, scheduler, iteration, RNG states, config
    train_curve.csv  iteration, loss, amodal, boundary, modal, order, lr, grad_norm, seconds
                     (one row per ``log_every`` iterations: means over them)
    val_curve.csv    iteration, val_J_modal, val_J_amodal, val_loss, seconds
    metrics.json     final numbers, iterations, wall time, device, parameter count

``last.pt`` is saved every ``ckpt_every`` iterations, when ``time_budget_s`` is
spent (the run stops cleanly; ``metrics.json`` says ``stopped_by:
time_budget``) and at the end. With ``resume=True`` a run continues from
``last.pt`` if the saved training config equals the current one up to
:data:`RESUME_FREE_KEYS` (the length of the run, budget, logging and device
may change); otherwise a :class:`ResumeError` says which keys differ. Curve rows
past the checkpoint's iteration (written after the last save) are dropped.

Validation: ``val_clips`` fixed clips of the validation split (clip ``j`` from
video ``j mod n``, start drawn from the seed; no flip). J = per-object mean over
frames of the IoU (a frame where prediction and GT are both empty counts 1),
predicted layers matched to GT objects by the Hungarian algorithm on J,
averaged over all objects; amodal masks = ``sigmoid(logits) > 0.5``, modal
masks = the label map of :func:`modal_labels` (the masks the proposals stage
writes).

Inference checkpoint (:func:`export_checkpoint`, :func:`load_oclr`)
--------------------------------------------------------------------
A ``torch.save`` dict (loadable with ``weights_only=True``): the model config,
the training config and summary, the weights in fp16 and their sha256. When
the fp16 file would exceed ``max_mb`` (25 MB: the paper preset has 20.7M
parameters = 41 MB in fp16) the large weight tensors are stored as int8 with
one fp16 scale per output channel (symmetric, per-channel; about 21 MB for the
paper preset); ``encoding`` records which. :func:`load_oclr` rebuilds an fp32
model.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch.utils.data import DataLoader, Dataset

from pipeline import __version__
from pipeline.core.checkpoint import (
    atomic_torch_save,
    load_train_checkpoint,
    write_export,
)
from pipeline.core.config import project_path
from pipeline.core.device import autocast, restored_torch_settings, rng_state
from pipeline.core.store import ArtifactError, open_artifact, sha256_file, write_json_atomic
from pipeline.oclr.losses import DEFAULT_LOSS_WEIGHTS, oclr_loss
from pipeline.oclr.model import EXPORT_FORMAT, OCLR, OCLRConfig, load_oclr, modal_labels
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
from pipeline.train.scaffold import ResumeError  # noqa: F401  (the trainers' one resume error)

CHECKPOINT_FORMAT = "motionseg-oclr-train/1"

#: every key of the ``oclr`` params section (documented there); no defaults in code
CONFIG_KEYS: tuple[str, ...] = (
    "preset", "model", "init", "train_split", "val_split", "flow_source", "clip_len", "size", "flip", "batch_size",
    "lr", "weight_decay", "warmup_iters", "decay_every", "decay_factor", "grad_clip", "iterations",
    "time_budget_s", "ckpt_every", "val_every", "val_clips", "val_seed", "log_every", "loss_weights",
    "boundary_width", "order_pairs", "seed", "device", "amp", "deterministic", "num_workers", "threads",
)

RESUME_FREE_KEYS = frozenset({"iterations", "time_budget_s", "ckpt_every", "val_every", "log_every", "device",
                              "num_workers", "threads", "val_clips", "resume", "export", "export_max_mb"})
"""Config keys that may change between a run and its resumption."""

# keys the stage may pass through; not used for training
_PASSTHROUGH = frozenset({"resume", "export", "export_max_mb"})

TRAIN_CURVE_COLUMNS = ["iteration", "loss", "amodal", "boundary", "modal", "order", "lr", "grad_norm", "seconds"]
VAL_CURVE_COLUMNS = ["iteration", "val_J_modal", "val_J_amodal", "val_loss", "seconds"]


# --------------------------------------------------------------------------- config
def normalize_train_config(cfg: Mapping[str, Any] | None) -> dict:
    """``cfg`` (exactly :data:`CONFIG_KEYS`, see :func:`check_keys`), checked and typed."""
    out = check_keys(cfg, CONFIG_KEYS, "oclr", _PASSTHROUGH)
    lw = dict(DEFAULT_LOSS_WEIGHTS)
    bad = set(out["loss_weights"] or {}) - set(lw)
    if bad:
        raise KeyError(f"oclr training config: unknown loss weight(s) {sorted(bad)}; known: {sorted(lw)}")
    lw.update({k: float(v) for k, v in (out["loss_weights"] or {}).items()})
    out["loss_weights"] = lw
    out["model"] = dict(out["model"] or {})
    out["init"] = None if out["init"] in (None, "") else str(out["init"])
    if out["size"] is not None:
        out["size"] = [int(s) for s in out["size"]]
        if len(out["size"]) != 2 or min(out["size"]) < 16 or any(s % 16 for s in out["size"]):
            raise ValueError(f"oclr training config: size must be [H, W], multiples of 16, got {out['size']}")
    if out["preset"] not in ("cpu", "paper"):
        raise ValueError(f"oclr training config: preset must be 'cpu' or 'paper', got {out['preset']!r}")
    if out["flow_source"] not in ("raft", "gt"):
        raise ValueError(f"oclr training config: flow_source must be 'raft' or 'gt', got {out['flow_source']!r}")
    for k in ("clip_len", "batch_size", "iterations", "ckpt_every", "val_every", "log_every"):
        out[k] = int(out[k])
        if out[k] < (0 if k == "iterations" else 1):
            raise ValueError(f"oclr training config: {k} must be positive, got {out[k]}")
    for k in ("lr", "weight_decay", "decay_factor"):
        out[k] = float(out[k])
    out["warmup_iters"], out["decay_every"] = int(out["warmup_iters"]), int(out["decay_every"])
    out["val_clips"], out["seed"], out["val_seed"] = int(out["val_clips"]), int(out["seed"]), int(out["val_seed"])
    return out


def model_config_from(cfg: Mapping[str, Any]) -> OCLRConfig:
    """The :class:`OCLRConfig` of a (normalized) training config: preset + ``model`` overrides."""
    overrides = dict(cfg.get("model") or {})
    if "bottleneck_hw" in overrides:
        overrides["bottleneck_hw"] = tuple(overrides["bottleneck_hw"])
    known = set(OCLRConfig().to_dict())
    bad = set(overrides) - known
    if bad:
        raise KeyError(f"oclr model overrides: unknown OCLRConfig key(s) {sorted(bad)}")
    preset = cfg.get("preset", "cpu")
    base = OCLRConfig.paper if preset == "paper" else OCLRConfig.cpu
    return base(**overrides).validate()


# --------------------------------------------------------------------------- data
def _resize_clip(flow: torch.Tensor, masks: list[torch.Tensor], size: tuple[int, int]):
    """Resize ``flow [T, 4, H, W]`` (u, v rescaled) and bool masks ``[T, O, H, W]`` to ``size``."""
    H, W = flow.shape[-2:]
    h, w = size
    if (h, w) == (H, W):
        return flow, masks
    aa = h < H or w < W
    flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False, antialias=aa)
    flow[:, 0::2] *= w / W
    flow[:, 1::2] *= h / H
    out = []
    for m in masks:
        T, O = m.shape[:2]
        if O == 0:
            out.append(torch.zeros((T, 0, h, w), dtype=torch.bool))
            continue
        r = F.interpolate(m.reshape(T * O, 1, H, W).float(), size=(h, w), mode="bilinear", align_corners=False,
                          antialias=aa)
        out.append((r >= 0.5).reshape(T, O, h, w))
    return flow, out


class SynthClipDataset(Dataset):
    """Clips of ``clip_len`` consecutive frames from a synthetic split.

    Args:
        render_dir: ``<split>/render`` (stores of stage ``synth`` + ``index.json``).
        flow_dir: ``<split>/flow`` (stores of stage ``flow``); default the sibling
            ``flow`` folder of ``render_dir``; only read when ``flow_source="raft"``.
        clip_len: frames per clip; every video must have at least that many.
        size: ``(H, W)`` to resize to (multiples of 16; u, v rescaled); ``None`` = as stored.
        flow_source: ``"raft"``: the flow stores (estimated flow of the rendered RGB,
            the paper's choice); ``"gt"``: the exact ``gt_flow`` of the render stores.
        seed: sample ``i`` is drawn with ``numpy.random.default_rng([seed, i])``.
        flip: random horizontal flip with probability 0.5 (u negated).
        video_order: ``"random"`` (video drawn per sample) or ``"cycle"`` (sample ``i``
            from video ``i mod n``; fixed validation clips).

    ``ds[i]`` returns a dict: ``flow`` float32 ``[L, 4, H, W]``, ``amodal`` / ``modal``
    bool ``[L, O, H, W]``, ``order`` int64 ``[O]`` (0 = front-most), ``video``,
    ``start``, ``flipped``. Any ``i >= 0`` is valid (``len`` = number of videos,
    one notional clip each). Stores are opened lazily (metadata only) per process.
    """

    def __init__(self, render_dir: str | os.PathLike, flow_dir: str | os.PathLike | None = None, clip_len: int = 8,
                 size: Sequence[int] | None = None, flow_source: str = "raft", seed: int = 0, flip: bool = True,
                 video_order: str = "random"):
        from pipeline.synth.dataset import list_split

        self.render_dir = Path(render_dir)
        self.flow_dir = Path(flow_dir) if flow_dir is not None else self.render_dir.parent / "flow"
        if flow_source not in ("raft", "gt"):
            raise ValueError(f"flow_source must be 'raft' or 'gt', got {flow_source!r}")
        if video_order not in ("random", "cycle"):
            raise ValueError(f"video_order must be 'random' or 'cycle', got {video_order!r}")
        self.clip_len, self.flow_source, self.seed = int(clip_len), flow_source, int(seed)
        self.flip, self.video_order = bool(flip), video_order
        self.size = tuple(int(s) for s in size) if size is not None else None
        if self.size is not None and (len(self.size) != 2 or any(s % 16 or s < 16 for s in self.size)):
            raise ValueError(f"size must be (H, W) with multiples of 16, got {size}")
        self.stores = list_split(self.render_dir)
        if not self.stores:
            raise ArtifactError(f"{self.render_dir}: the split has no videos")
        self.names = [p.name for p in self.stores]
        idx = json.loads((self.render_dir / "index.json").read_text())
        nf = idx.get("num_frames")
        if nf is not None and int(nf) < self.clip_len:
            raise ValueError(f"{self.render_dir}: videos have {nf} frames, fewer than clip_len={self.clip_len}")
        if flow_source == "raft":
            missing = [n for n in self.names if not (self.flow_dir / n).exists()]
            if missing:
                raise ArtifactError(f"{self.flow_dir}: no flow store for {len(missing)} of {len(self.names)} videos "
                                    f"(e.g. {missing[0]}); run the synth_flow stage "
                                    f"(`dvc repro synth_flow@{self.render_dir.parent.name}`) or use flow_source: gt")
        self._open: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.stores)

    def _arrays(self, v: int):
        if v not in self._open:
            r = open_artifact(self.stores[v], stage="synth")
            f = open_artifact(self.flow_dir / self.names[v], stage="flow")["flow"] if self.flow_source == "raft" \
                else r["gt_flow"]
            self._open[v] = (r["amodal"], r["modal"], r["order"], f)
        return self._open[v]

    def __getstate__(self):  # do not pickle open zarr handles into loader workers
        d = dict(self.__dict__)
        d["_open"] = {}
        return d

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        n = len(self.stores)
        v = i % n if self.video_order == "cycle" else int(rng.integers(n))
        amodal_a, modal_a, order_a, flow_a = self._arrays(v)
        T = flow_a.shape[0]
        L = self.clip_len
        if T < L or amodal_a.shape[0] != T:
            raise ArtifactError(f"{self.stores[v]}: {T} flow frames / {amodal_a.shape[0]} mask frames, "
                                f"need at least clip_len={L}")
        s = int(rng.integers(T - L + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        flow = torch.from_numpy(np.ascontiguousarray(flow_a[s:s + L], dtype=np.float32))
        amodal = torch.from_numpy(np.asarray(amodal_a[s:s + L], dtype=bool))
        modal = torch.from_numpy(np.asarray(modal_a[s:s + L], dtype=bool))
        order = torch.from_numpy(np.asarray(order_a[...], dtype=np.int64))
        return finish_clip(flow, amodal, modal, order, self.size, flipped, self.names[v], s)


def finish_clip(flow: torch.Tensor, amodal: torch.Tensor, modal: torch.Tensor, order: torch.Tensor,
                size: Sequence[int] | None, flipped: bool, video: str, start: int) -> dict:
    """A training clip's dict (see :class:`SynthClipDataset`): resized to ``size`` (None: as it is) and
    mirrored when ``flipped`` (u negated)."""
    if size is not None:
        flow, (amodal, modal) = _resize_clip(flow, [amodal, modal], size)
    if flipped:
        flow = torch.flip(flow, dims=[-1])
        flow[:, 0::2] *= -1.0
        amodal, modal = torch.flip(amodal, dims=[-1]), torch.flip(modal, dims=[-1])
    return {"flow": flow.contiguous(), "amodal": amodal.contiguous(), "modal": modal.contiguous(),
            "order": order, "video": video, "start": start, "flipped": flipped}


def collate_clips(items: list[dict]) -> dict:
    """Batch of clips: ``flow`` stacked ``[B, L, 4, H, W]``, GT as per-clip lists (O varies)."""
    return {"flow": torch.stack([it["flow"] for it in items]),
            "amodal": [it["amodal"] for it in items], "modal": [it["modal"] for it in items],
            "order": [it["order"] for it in items], "video": [it["video"] for it in items],
            "start": [it["start"] for it in items]}


def _j_matrix(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """``J[k, o]`` = mean over frames of IoU(pred[:, k], gt[:, o]) (empty vs empty = 1)."""
    p, g = pred.float().flatten(2), gt.float().flatten(2)                 # [T, K, N], [T, O, N]
    inter = torch.einsum("tkn,ton->tko", p, g)
    union = p.sum(-1)[:, :, None] + g.sum(-1)[:, None, :] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1.0), torch.ones_like(inter))
    return iou.mean(0).cpu().numpy()


def matched_j(pred: torch.Tensor, gt: torch.Tensor) -> np.ndarray:
    """Per GT object J after Hungarian matching of the K predicted masks (``pred [T, K, H, W]``
    bool) to the O GT masks (``gt [T, O, H, W]``); unmatched objects score 0."""
    O = gt.shape[1]
    if O == 0:
        return np.zeros(0)
    J = _j_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-J)
    out = np.zeros(O)
    out[cols] = J[rows, cols]
    return out


@torch.no_grad()
def validate(model: torch.nn.Module, dataset: Dataset, n_clips: int, device: torch.device | str = "cpu",
             batch_size: int = 2, amp: bool = True, loss_kwargs: Mapping | None = None,
             threshold: float = 0.5) -> dict:
    """Mean matched J (modal, amodal) over all objects of clips ``0..n_clips-1`` of ``dataset``,
    and the mean loss. ``threshold``: the probability a pixel needs to join a mask (modal label
    map of :func:`modal_labels` and amodal masks alike; the training curves use 0.5). The
    model is put in eval mode and restored afterwards."""
    dev = torch.device(device)
    was = model.training
    model.eval()
    jm, ja, losses = [], [], []
    try:
        for b0 in range(0, n_clips, batch_size):
            batch = collate_clips([dataset[i] for i in range(b0, min(n_clips, b0 + batch_size))])
            with autocast(dev, amp):
                out = model(batch["flow"].to(dev))
            loss, _ = oclr_loss(out, batch["amodal"], batch["modal"], batch["order"], **dict(loss_kwargs or {}))
            losses.append(float(loss) * len(batch["amodal"]))
            amodal_pred = torch.sigmoid(out["amodal_logits"].float()) > threshold
            lab = modal_labels(out["modal_probs"], threshold)
            K = amodal_pred.shape[2]
            modal_pred = lab[:, :, None] == torch.arange(1, K + 1, device=lab.device)[None, None, :, None, None]
            for b in range(amodal_pred.shape[0]):
                ja.extend(matched_j(amodal_pred[b], batch["amodal"][b].to(dev)))
                jm.extend(matched_j(modal_pred[b], batch["modal"][b].to(dev)))
    finally:
        model.train(was)
    n = max(1, n_clips)
    return {"val_J_modal": float(np.mean(jm)) if jm else float("nan"),
            "val_J_amodal": float(np.mean(ja)) if ja else float("nan"),
            "val_loss": float(sum(losses) / n), "val_objects": len(ja), "val_clips": n_clips}


# --------------------------------------------------------------------------- training
def train_oclr(cfg: Mapping[str, Any], out_dir: str | os.PathLike, resume: bool = True,
               progress: bool = True, log_dir: str | os.PathLike | None = None,
               train_ds: Dataset | None = None) -> dict:
    """Train OCLR as configured by ``cfg`` (every key of :data:`CONFIG_KEYS`, documented in params.yaml) into ``out_dir``.

    ``last.pt`` goes to ``out_dir``; ``train_curve.csv``, ``val_curve.csv`` and
    ``metrics.json`` to ``log_dir`` (default ``out_dir``; the stage puts them in
    ``results/oclr`` because DVC outputs may not overlap). Returns the dict written to
    ``metrics.json``. Relative data paths are taken from the project root
    (:func:`pipeline.core.config.project_root`). ``train_ds``: clips to train on instead of
    ``cfg["train_split"]``'s (a dataset returning :class:`SynthClipDataset`'s dicts, e.g. the
    pseudo-labelled clips of :mod:`pipeline.oclr.adapt`); ``train_split`` then only names them.
    """
    with restored_torch_settings():  # threads, determinism: as they were afterwards
        return _train_oclr(cfg, out_dir, resume, progress, log_dir, train_ds)


def _train_oclr(cfg: Mapping[str, Any], out_dir, resume: bool, progress: bool, log_dir, train_ds) -> dict:
    t_start = time.monotonic()
    export = cfg.get("export")
    cfg = normalize_train_config(cfg)
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    ckpt_path = out_dir / "last.pt"
    mcfg = model_config_from(cfg)
    if cfg["clip_len"] > mcfg.max_frames:
        raise ValueError(f"clip_len {cfg['clip_len']} exceeds the model's max_frames {mcfg.max_frames}")

    # data
    if train_ds is None:
        train_split = project_path(cfg["train_split"])
        train_ds = SynthClipDataset(train_split / "render", train_split / "flow", cfg["clip_len"], cfg["size"],
                                    cfg["flow_source"], seed=cfg["seed"], flip=cfg["flip"])
    val_ds = None
    if cfg["val_split"] and cfg["val_clips"] > 0:
        val_split = project_path(cfg["val_split"])
        val_ds = SynthClipDataset(val_split / "render", val_split / "flow", cfg["clip_len"], cfg["size"],
                                  cfg["flow_source"], seed=cfg["val_seed"], flip=False, video_order="cycle")

    # model, optimiser, schedule
    model = OCLR(mcfg).to(dev)
    init = None
    if cfg["init"] and export and project_path(cfg["init"]) == project_path(export):
        raise ValueError(f"oclr.init {cfg['init']} is this run's own export (DVC removes it before the run): "
                         "point it at a copy")
    if cfg["init"] and not (resume and ckpt_path.exists()):   # fine-tuning from an exported checkpoint
        init_model, info = load_oclr(project_path(cfg["init"]))
        if info["model_config"] != mcfg.to_dict():
            raise ValueError(f"oclr.init {cfg['init']}: its model config differs from this run's "
                             f"(preset {cfg['preset']!r}, model {cfg['model']})")
        model.load_state_dict(init_model.state_dict())
        init = {"path": cfg["init"], "file_sha256": info["file_sha256"]}
    n_params = model.param_count()
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda it: lr_factor(it, cfg["warmup_iters"], cfg["decay_every"], cfg["decay_factor"]))
    start, prev_seconds, last_val, resumed = 0, 0.0, None, False
    if resume and ckpt_path.exists():
        ck = load_train_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "an OCLR")
        diff = config_diff({"init": None, **ck["config"]}, cfg, RESUME_FREE_KEYS)   # runs from before `init`
        refuse_resume(ckpt_path, diff, f"Delete {out_dir}, set oclr.resume: false, or restore those values "
                                       f"(only {sorted(RESUME_FREE_KEYS - _PASSTHROUGH)} may change).")
        init = ck.get("init")
        if init and cfg["init"] and project_path(cfg["init"]).exists() and \
                sha256_file(project_path(cfg["init"])) != init["file_sha256"]:
            raise ResumeError(f"{ckpt_path}: cannot resume, it was fine-tuned from another {cfg['init']} (sha256 "
                              f"{init['file_sha256'][:12]}...). Delete {out_dir} to start over from the new file.")
        start, prev_seconds, last_val = restore_training(ck, model, opt, sched)
        resumed = True
    keep = start if resumed else None
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, keep)
    vlog = CsvLog(log_dir / "val_curve.csv", VAL_CURVE_COLUMNS, keep)

    loss_kw = {"weights": cfg["loss_weights"], "boundary_width": int(cfg["boundary_width"]),
               "order_pairs": cfg["order_pairs"]}
    total_iters, B = cfg["iterations"], cfg["batch_size"]
    loader = DataLoader(train_ds, batch_size=B, sampler=RangeSampler(start * B, max(start, total_iters) * B),
                        collate_fn=collate_clips, num_workers=int(cfg["num_workers"]),
                        pin_memory=dev.type == "cuda", worker_init_fn=one_thread_worker,
                        generator=torch.Generator().manual_seed(cfg["seed"]),
                        persistent_workers=False, prefetch_factor=4 if int(cfg["num_workers"]) > 0 else None)
    budget = cfg["time_budget_s"]
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "OCLR", tlog, cfg["log_every"], total_iters, start,
                     prev_seconds, budget, progress, "train oclr")
    seconds = loop.seconds

    def save(it: int) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                            "scheduler": sched.state_dict(), "iteration": it, "rng": rng_state(),
                            "config": cfg, "model_config": mcfg.to_dict(), "train_seconds": seconds(),
                            "last_val": last_val, "param_count": n_params, "device": str(dev), "init": init,
                            "package_version": __version__}, ckpt_path)

    def run_val(it: int) -> dict:
        r = validate(model, val_ds, cfg["val_clips"], dev, batch_size=B, amp=cfg["amp"], loss_kwargs=loss_kw)
        r["iteration"] = it
        vlog.write({**r, "seconds": seconds()})
        return r

    stopped_by = "iterations"
    model.train()
    try:
        if loop.it < total_iters:
            for batch in loader:
                flow = batch["flow"].to(dev, non_blocking=True)
                with autocast(dev, cfg["amp"]):
                    out = model(flow)
                loss, parts = oclr_loss(out, batch["amodal"], batch["modal"], batch["order"], **loss_kw)
                loop.step(loss, parts)
                it = loop.it
                if val_ds is not None and it % cfg["val_every"] == 0:
                    last_val = run_val(it)
                over = loop.over_budget()
                if it % cfg["ckpt_every"] == 0 and it < total_iters and not over:
                    save(it)
                if over and it < total_iters:
                    stopped_by = "time_budget"
                    break
        loop.flush()  # a partial logging window
        it = loop.it
        if val_ds is not None and (last_val is None or int(last_val["iteration"]) != it):
            last_val = run_val(it)
        save(it)  # the final model, with its validation numbers and training time
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
    metrics = {
        "iterations": it, "iterations_target": total_iters, "completed": it >= total_iters,
        "stopped_by": stopped_by if it < total_iters else "iterations", "time_budget_s": budget,
        "resumed_from": start if resumed else None, "iterations_this_run": ran,
        "wall_time_s": round(wall, 3), "train_time_s": round(seconds(), 3),
        "iters_per_s": round(ran / max(loop.run_seconds(), 1e-9), 4) if ran else None,
        "device": str(dev) if dev.type == "cpu" else f"{dev} ({torch.cuda.get_device_name(dev)})",
        "amp": "bf16" if (cfg["amp"] and dev.type == "cuda") else "fp32",
        "param_count": n_params, "preset": cfg["preset"], "seed": cfg["seed"], "skipped_steps": loop.guard.skipped,
        "clip_len": cfg["clip_len"], "size": cfg["size"], "batch_size": B, "flow_source": cfg["flow_source"],
        "init": init,
        "loss": last_row.get("loss"), "loss_amodal": last_row.get("amodal"), "loss_boundary": last_row.get("boundary"),
        "loss_modal": last_row.get("modal"), "loss_order": last_row.get("order"),
        "val_J_modal": last_val["val_J_modal"] if last_val else None,
        "val_J_amodal": last_val["val_J_amodal"] if last_val else None,
        "val_loss": last_val["val_loss"] if last_val else None,
        "val_iteration": last_val["iteration"] if last_val else None,
        "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json_atomic(log_dir / "metrics.json", metrics)
    return metrics


# --------------------------------------------------------------------------- export / load
def export_checkpoint(last_pt: str | os.PathLike, path: str | os.PathLike, fp16: bool = True,
                      max_mb: float | None = 25.0) -> dict:
    """Write the small inference checkpoint of a training checkpoint.

    ``fp16=True``: weights in float16, or, if that file would exceed ``max_mb``
    megabytes (1e6 bytes), the large weight matrices (>= 4096 elements) in int8
    with a per-output-channel scale and the rest in float16. ``fp16=False``:
    float32 (no size limit). Returns the checkpoint's summary dict (encoding,
    size, sha256 of the weights and of the file).
    """
    last_pt, path = Path(last_pt), Path(path)
    if not last_pt.exists():
        raise FileNotFoundError(f"{last_pt}: no OCLR training checkpoint to export (run `dvc repro train_oclr`)")
    ck = load_train_checkpoint(last_pt, CHECKPOINT_FORMAT, "an OCLR")
    cfg = ck["config"]
    lv = ck.get("last_val") or {}
    summary = {"iterations": int(ck["iteration"]), "iterations_target": cfg.get("iterations"),
               "train_seconds": float(ck["train_seconds"]), "param_count": int(ck["param_count"]),
               "trained_on": ck.get("device"), "val_J_modal": lv.get("val_J_modal"),
               "val_J_amodal": lv.get("val_J_amodal"), "val_iteration": lv.get("iteration"),
               "source_checkpoint": str(last_pt)}
    train = {k: cfg.get(k) for k in ("preset", "clip_len", "size", "flow_source", "batch_size", "lr", "seed",
                                     "train_split", "val_split", "loss_weights")}
    if ck.get("init"):
        train["init"] = ck["init"]                 # fine-tuned from (path, file sha256)
    doc = write_export(EXPORT_FORMAT, ck["model"], {"model_config": ck["model_config"], "train": train,
                       "summary": summary}, path, fp16=fp16, max_mb=max_mb, what="OCLR")

    return {"path": str(path), "encoding": doc["encoding"], "bytes": path.stat().st_size,
            "weights_sha256": doc["weights_sha256"], "file_sha256": sha256_file(path), **summary}


