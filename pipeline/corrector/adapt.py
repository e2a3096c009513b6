"""Self-supervised adaptation of the mask corrector to a real dataset (paper sect. 3.4.2, app. A.3).

No labels: the synthetically trained corrector's own refined masks are the
pseudo-labels, and only at the frames where the selector found the proposal
good (the exemplar frames of each object).

Data (:class:`AdaptWindowDataset`)
----------------------------------
One dataset's stores, per sequence: ``frames`` (``rgb`` at the working size),
``features`` (``tokens``), ``proposals`` (``labels``), ``exemplars`` (``frames``
[K, t], ``scores``) and the pseudo-label stage (``corrector`` by default:
``labels``). Sample ``i`` (``numpy.random.default_rng([seed, i])``):

* an (object k, exemplar frame f) pair drawn uniformly among all exemplar frames
  with a positive weight of all sequences, and a window of ``window`` target frames
  containing f (uniform start; the whole video when it is shorter);
* the model inputs exactly as at inference (:func:`pipeline.corrector.infer.gather_exemplars`:
  every object's exemplars, weights ``1 / (1 + score)``);
* ``targets [T, K, H, W]``: the pseudo-label masks of the window;
  ``weight [T, K]``: 1 where frame t is an exemplar of object k, else 0. Only
  those (frame, object) pairs carry the mask and alpha losses (the paper applies
  pseudo-labels at exemplar frames only). The model never lets a query attend to
  exemplar tokens of its own frame, so a target frame's mask has to be inferred
  from the other exemplars and the frame's appearance.

Loss (:func:`adapt_loss`): as in synthetic training (eq. 8) with the mask BCE and
the alpha BCE restricted to the weighted (frame, object) pairs, the feature
reconstruction on every frame, and **no boundary term** (pseudo-label edges are
unreliable). The proposal-mask inputs of the upsampler are zeroed
(``model.proposal_inputs = False``), so the adapted model segments from
appearance; the exported checkpoint records this and
:func:`pipeline.corrector.train.load_corrector` restores it.

Training (:func:`adapt_corrector`): starts from an exported corrector, Adam with a
small lr (paper 2e-5, i.e. 0.4x its synthetic lr), linear warm-up, gradient
clipping, seeded; resumable ``last.pt`` (same config), ``train_curve.csv`` and
``metrics.json`` (pseudo-label J of the adapted model on a fixed set of held-in
windows, a label-free sanity check), export with :func:`export_adapted`. With ``adapt.ema`` a moving average of
the weights is kept (:func:`weight_average`); the export and the final pseudo-label J use it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import Dataset

from pipeline import __version__
from pipeline.core.checkpoint import (
    atomic_torch_save,
    load_train_checkpoint,
    write_export,
)
from pipeline.core.device import restored_torch_settings, rng_state
from pipeline.core.store import (
    ArtifactError,
    FrameReader,
    open_artifact,
    write_json_atomic,
)
from pipeline.corrector.model import pool_masks
from pipeline.corrector.batch import collate_windows, forward_batch
from pipeline.oclr.losses import bce_probs, merge_loss_weights
from pipeline.train.scaffold import (
    CsvLog,
    TrainLoop,
    check_keys,
    config_diff,
    lr_factor,
    refuse_resume,
    restore_training,
    start_run,
)

__all__ = ["CONFIG_KEYS", "ADAPT_LOSS_WEIGHTS", "AdaptWindowDataset", "adapt_loss", "adapt_corrector",
           "adapt_to_sequence", "tta_config", "export_adapted", "normalize_adapt_config", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "motionseg-corrector-adapt/1"

ADAPT_LOSS_WEIGHTS: dict[str, float] = {"mask": 1.0, "recon": 0.1, "alpha": 0.5}
"""Synthetic-training weights without the boundary term."""

#: every key of the ``adapt`` params section (documented there); no defaults in code
CONFIG_KEYS: tuple[str, ...] = (
    "checkpoint", "pseudo_labels", "window", "batch_size", "lr", "warmup_iters", "grad_clip", "iterations",
    "time_budget_s", "ckpt_every", "log_every", "check_windows", "loss_weights", "zero_proposals", "seed",
    "device", "amp", "deterministic", "threads", "ema",
)

RESUME_FREE_KEYS = frozenset({"iterations", "time_budget_s", "ckpt_every", "log_every", "device", "threads",
                              "check_windows"})
TRAIN_CURVE_COLUMNS = ["iteration", "loss", "mask", "recon", "alpha", "lr", "grad_norm", "seconds"]


def normalize_adapt_config(cfg: Mapping[str, Any] | None) -> dict:
    """``cfg`` (exactly :data:`CONFIG_KEYS`: the ``adapt`` section plus ``checkpoint`` and ``window``
    from ``corrector``, see :func:`check_keys`), checked and typed."""
    out = check_keys(cfg, CONFIG_KEYS, "adapt", frozenset({"resume", "export", "export_max_mb", "per_sequence"}))
    out["loss_weights"] = merge_loss_weights(ADAPT_LOSS_WEIGHTS, out["loss_weights"])
    for k in ("window", "batch_size", "iterations", "warmup_iters", "ckpt_every", "log_every", "check_windows",
              "seed"):
        out[k] = int(out[k])
    for k in ("window", "batch_size", "ckpt_every", "log_every"):
        if out[k] < 1:
            raise ValueError(f"corrector adaptation config: {k} must be >= 1, got {out[k]}")
    out["lr"] = float(out["lr"])
    out["ema"] = float(out["ema"])
    if not 0.0 <= out["ema"] < 1.0:
        raise ValueError(f"corrector adaptation config: ema must be in [0, 1), got {out['ema']}")
    return out


# --------------------------------------------------------------------------- data
class _Sequence:
    def __init__(self, data_dir: Path, name: str, pseudo: str, K: int):
        from pipeline.exemplars.scoring import exemplar_weights

        self.name = name

        def art(stage: str):
            return open_artifact(data_dir / stage / f"{name}.zarr", stage=stage)

        frames, feats, props, exm, pl = (art("frames"), art("features"), art("proposals"), art("exemplars"),
                                         art(pseudo))
        self.rgb = FrameReader(frames.require("rgb", dtype="uint8", ndim=4))
        self.tokens = FrameReader(feats.require("tokens", ndim=4))
        self.labels = FrameReader(props.require("labels", dtype="uint8", ndim=3))
        self.pseudo = FrameReader(pl.require("labels", dtype="uint8", ndim=3))
        self.ex_frames = np.asarray(exm.require("frames", ndim=2)[...]).astype(np.int64)
        self.ex_scores = np.asarray(exm.require("scores", ndim=2)[...])
        self.backbone = feats.attrs.get("backbone")
        self.T = len(self.rgb)
        for what, r in (("features", self.tokens), ("proposals", self.labels), (pseudo, self.pseudo)):
            if len(r) != self.T:
                raise ArtifactError(f"{data_dir / what / name}.zarr: {len(r)} frames, the frames store has {self.T}")
        if self.ex_frames.shape[0] != K:
            raise ArtifactError(f"{data_dir / 'exemplars' / name}.zarr: exemplars for {self.ex_frames.shape[0]} "
                                f"objects, the corrector has K={K}")
        w = exemplar_weights(self.ex_frames, self.ex_scores)
        self.pairs = [(k, int(f)) for k in range(K) for f, wk in zip(self.ex_frames[k], w[k]) if f >= 0 and wk > 0]
        self.is_ex = np.zeros((self.T, K), bool)
        for k, f in self.pairs:
            self.is_ex[f, k] = True
        self._ex = None

    def exemplars(self) -> dict:
        from pipeline.corrector.infer import gather_exemplars

        if self._ex is None:
            self._ex = gather_exemplars(self.tokens, self.labels, self.ex_frames, self.ex_scores)
        return self._ex


class AdaptWindowDataset(Dataset):
    """Adaptation samples of one dataset (module docstring). ``ds[i]`` for any ``i >= 0``:
    float32 ``rgb [T, 3, H, W]``, ``masks``/``targets [T, K, H, W]``, ``weight [T, K]``,
    ``tokens [T, C, h, w]``, ``ex_tokens [E, C, h, w]``, ``ex_masks [E, K, h, w]``,
    ``ex_weight [E, K]``, int64 ``ex_frame [E]``, ``tgt_frame [T]``, plus ``sequence``, ``start``."""

    def __init__(self, data_dir: str | os.PathLike, sequences: Sequence[str], window: int = 7, seed: int = 0,
                 pseudo_labels: str = "corrector", K: int = 3):
        self.data_dir, self.window, self.seed, self.K = Path(data_dir), int(window), int(seed), int(K)
        self.seqs = [_Sequence(self.data_dir, s, pseudo_labels, self.K) for s in sequences]
        self.short = [s.name for s in self.seqs if s.T < self.window]   # their windows are the whole video
        self.index = [(i, k, f) for i, s in enumerate(self.seqs) for k, f in s.pairs]
        if not self.index:
            raise ArtifactError(f"{self.data_dir}: no exemplar frame with a finite selector score in any sequence "
                                f"(nothing to adapt on)")

    def __len__(self) -> int:
        return len(self.index)

    def with_seed(self, seed: int) -> "AdaptWindowDataset":
        """The same sequences (open stores, exemplar cache) sampled with another seed."""
        other = copy.copy(self)
        other.seed = int(seed)
        return other

    @property
    def backbone(self) -> Any:
        return self.seqs[0].backbone

    def __getitem__(self, i: int) -> dict:
        from pipeline.core.arrays import normalize_rgb, proposal_masks

        i = int(i)
        if i < 0:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        si, k, f = self.index[int(rng.integers(len(self.index)))]
        seq = self.seqs[si]
        L = min(self.window, seq.T)
        s = int(rng.integers(max(0, f - L + 1), min(f, seq.T - L) + 1))
        ex = seq.exemplars()
        return {"rgb": torch.from_numpy(normalize_rgb(seq.rgb[s:s + L])),
                "masks": torch.from_numpy(proposal_masks(seq.labels[s:s + L], self.K)),
                "targets": torch.from_numpy(proposal_masks(seq.pseudo[s:s + L], self.K)),
                "weight": torch.from_numpy(seq.is_ex[s:s + L].astype(np.float32)),
                "tokens": torch.from_numpy(np.asarray(seq.tokens[s:s + L], np.float32)),
                "ex_tokens": ex["ex_tokens"], "ex_masks": ex["ex_masks"], "ex_weight": ex["ex_weight"],
                "ex_frame": ex["ex_frame"], "tgt_frame": torch.arange(s, s + L, dtype=torch.int64),
                "sequence": seq.name, "start": s}


def _collate(items: list[dict]) -> dict:
    out = collate_windows([{**it, "video": it["sequence"], "slot_to_gt": None} for it in items])
    out["weight"] = torch.stack([it["weight"] for it in items])
    return out


# --------------------------------------------------------------------------- loss
def _masked_mean(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean of ``x [B, T, K]`` weighted by ``w [B, T, K]`` (0 when the weights sum to 0)."""
    return (x * w).sum() / w.sum().clamp_min(1e-6)


def adapt_loss(out: Mapping[str, torch.Tensor], targets: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor,
               weights: Mapping[str, float] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Adaptation loss (module docstring): ``targets [B, T, K, H, W]`` pseudo-label masks,
    ``weight [B, T, K]`` (1 = supervise object k at frame t), ``tokens [B, T, C, h, w]``.
    Returns ``(total, parts)`` with ``mask``, ``recon``, ``alpha``, ``total`` (detached)."""
    w = merge_loss_weights(ADAPT_LOSS_WEIGHTS, weights)
    x = out["mask_logits"].float()
    y = targets.to(device=x.device, dtype=torch.float32)
    wt = weight.to(device=x.device, dtype=torch.float32)
    K = x.shape[2]
    parts = {"mask": _masked_mean(F.binary_cross_entropy_with_logits(x, y, reduction="none").mean((-2, -1)), wt)}
    tok = tokens.to(device=x.device, dtype=torch.float32)
    tgt_feat = F.layer_norm(tok.movedim(2, -1), (tok.shape[2],)).movedim(-1, 2)
    parts["recon"] = F.mse_loss(out["recon"].float(), tgt_feat)
    alpha = out["alpha"][:, :, :K].float()
    parts["alpha"] = _masked_mean(bce_probs(alpha, pool_masks(y, tuple(alpha.shape[-2:]))).mean((-2, -1)), wt)
    total = sum(w[k] * parts[k] for k in parts)
    det = {k: v.detach() for k, v in parts.items()}
    det["total"] = total.detach()
    return total, det


@torch.no_grad()
def pseudo_label_j(model: torch.nn.Module, dataset: AdaptWindowDataset, n: int, dev: torch.device,
                   amp: bool = True) -> float | None:
    """Mean IoU of the model's masks (> 0.5) with the pseudo-labels over the supervised (frame, object)
    pairs of windows ``0..n-1``: a label-free check that adaptation fits its targets."""
    from pipeline.exemplars.scoring import frame_ious

    was = model.training
    model.eval()
    js = []
    try:
        for i in range(n):
            b = _collate([dataset[i]])
            p = torch.sigmoid(forward_batch(model, b, dev, amp)["mask_logits"].float())[0].cpu().numpy() > 0.5
            y, w = b["targets"][0].numpy() > 0.5, b["weight"][0].numpy() > 0
            for k in range(p.shape[1]):
                if w[:, k].any():
                    js.extend(frame_ious(p[w[:, k], k], y[w[:, k], k]).tolist())
    finally:
        model.train(was)
    return float(np.mean(js)) if js else None


# --------------------------------------------------------------------------- training
def weight_average(model: torch.nn.Module, decay: float) -> AveragedModel | None:
    """An exponential moving average of ``model``'s weights (``adapt.ema``; ``None`` when ``decay`` is 0): after
    each step ``avg = decay * avg + (1 - decay) * weights``, starting from the first step's weights. The
    adaptation exports the average instead of the last step's weights."""
    if decay <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def averaged_weights(state: Mapping[str, Any]) -> dict:
    """The model's own ``state_dict`` inside a saved :func:`weight_average` state (``module.`` keys)."""
    return {k[len("module."):]: v for k, v in state.items() if k.startswith("module.")}


def adapt_corrector(cfg: Mapping[str, Any], data_dir: str | os.PathLike, sequences: Sequence[str],
                    out_dir: str | os.PathLike, log_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> dict:
    """Adapt the corrector ``cfg["checkpoint"]`` to the sequences of ``data_dir`` (``data/<dataset>``).

    ``last.pt`` (resumable with the same config up to :data:`RESUME_FREE_KEYS`) goes to ``out_dir``,
    ``train_curve.csv`` and ``metrics.json`` to ``log_dir``. Returns the metrics dict."""
    with restored_torch_settings():
        return _adapt(cfg, data_dir, sequences, out_dir, log_dir, progress)


def _adapt(cfg, data_dir, sequences, out_dir, log_dir, progress) -> dict:
    from pipeline.core.config import project_path
    from pipeline.corrector.model import backbone_name, load_corrector

    t_start = time.monotonic()
    cfg = normalize_adapt_config(cfg)
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    ckpt_path = out_dir / "last.pt"
    model, info = load_corrector(project_path(cfg["checkpoint"]), dev)
    model.float()
    ds = AdaptWindowDataset(data_dir, list(sequences), cfg["window"], cfg["seed"], cfg["pseudo_labels"],
                            model.cfg.num_objects)
    if ds.short and cfg["batch_size"] > 1:
        raise ArtifactError(f"{data_dir}: sequence(s) {ds.short} have fewer frames than the window of "
                            f"{cfg['window']}; batch_size > 1 needs full windows (use batch_size 1)")
    bb = backbone_name(ds.backbone)
    if bb and info.get("backbone") and bb != info["backbone"]:
        raise ArtifactError(f"{data_dir}/features: backbone {bb!r}, but {cfg['checkpoint']} was trained on "
                            f"{info['backbone']!r} tokens")
    model.proposal_inputs = not cfg["zero_proposals"]
    ema = weight_average(model, cfg["ema"])
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, cfg["warmup_iters"], 10 ** 9, 1.0))
    start, prev_seconds, resumed = 0, 0.0, False
    if ckpt_path.exists():
        ck = load_train_checkpoint(ckpt_path, CHECKPOINT_FORMAT, "a corrector adaptation")
        diff = config_diff({"ema": 0.0, **ck["config"]}, cfg, RESUME_FREE_KEYS)     # state from before adapt.ema
        if ck.get("source_sha256") != info["file_sha256"]:
            diff.append("checkpoint (file changed)")
        refuse_resume(ckpt_path, diff, f"Delete {out_dir} to start over.", made="adapted")
        start, prev_seconds, _ = restore_training(ck, model, opt, sched)
        if ema is not None:
            ema.load_state_dict(ck["ema"])
        resumed = True
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, start if resumed else None)
    n_check = cfg["check_windows"]
    check_ds = ds.with_seed(cfg["seed"] + 10 ** 6)                     # fixed windows, apart from training's
    j_before = pseudo_label_j(model, check_ds, n_check, dev, cfg["amp"]) if n_check and not resumed else None

    total, B, budget = cfg["iterations"], cfg["batch_size"], cfg["time_budget_s"]
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "corrector adaptation", tlog, cfg["log_every"], total,
                     start, prev_seconds, budget, progress, "adapt corrector")
    seconds = loop.seconds

    def save(it: int) -> None:
        atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                           "ema": None if ema is None else ema.state_dict(),
                           "scheduler": sched.state_dict(), "iteration": it, "rng": rng_state(), "config": cfg,
                           "model_config": info["model_config"], "train_seconds": seconds(), "last_val": None,
                           "source_sha256": info["file_sha256"], "source": info, "proposal_inputs":
                           model.proposal_inputs, "package_version": __version__}, ckpt_path)

    stopped_by, first_loss = "iterations", None
    model.train()
    try:
        while loop.it < total:
            batch = _collate([ds[loop.it * B + j] for j in range(B)])
            out = forward_batch(model, batch, dev, cfg["amp"])
            loss, parts = adapt_loss(out, batch["targets"], batch["weight"], batch["tokens"], cfg["loss_weights"])
            vals = loop.step(loss, parts)
            if ema is not None:
                ema.update_parameters(model)
            it = loop.it
            first_loss = vals["total"] if first_loss is None else first_loss
            over = loop.over_budget()
            if it % cfg["ckpt_every"] == 0 and not over:
                save(it)
            if over and it < total:
                stopped_by = "time_budget"
                break
        it = loop.it
        save(it)
    finally:
        tlog.close()
        loop.close()
    final = model if ema is None else ema.module                        # the weights export_adapted writes
    j_after = pseudo_label_j(final, check_ds, n_check, dev, cfg["amp"]) if n_check else None
    ran = it - start
    metrics = {"iterations": it, "iterations_target": total, "stopped_by": stopped_by, "resumed_from":
               start if resumed else None, "iterations_this_run": ran, "train_time_s": round(seconds(), 3),
               "wall_time_s": round(time.monotonic() - t_start, 3),
               "iters_per_s": round(ran / max(loop.run_seconds(), 1e-9), 4) if ran else None,
               "device": str(dev), "sequences": len(ds.seqs), "exemplar_pairs": len(ds), "first_loss": first_loss,
               "pseudo_label_J_before": j_before, "pseudo_label_J_after": j_after,
               "check_windows": n_check, "source_checkpoint": {"path": str(cfg["checkpoint"]),
                                                              "sha256": info["file_sha256"]},
               "skipped_steps": loop.guard.skipped, "zero_proposals": cfg["zero_proposals"], "lr": cfg["lr"],
               "pseudo_labels": cfg["pseudo_labels"], **({"ema": cfg["ema"]} if cfg["ema"] else {}),
               "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(Path(log_dir) / "metrics.json", metrics)
    return metrics


def tta_config(adapt: Mapping[str, Any], checkpoint: str, window: int) -> dict:
    """The :func:`adapt_to_sequence` config of the ``adapt`` params section: its :data:`CONFIG_KEYS`, with the
    dataset-adapted ``checkpoint`` and the corrector's ``window``."""
    return {**{k: adapt[k] for k in CONFIG_KEYS if k in adapt}, "checkpoint": checkpoint, "window": window}


def adapt_to_sequence(model: torch.nn.Module, data_dir: str | os.PathLike, sequence: str, cfg: Mapping[str, Any],
                      iterations: int, dev: torch.device) -> tuple[torch.nn.Module, dict]:
    """Per-sequence test-time adaptation (paper app. A.3, about 200 iterations): a copy of ``model`` (the
    dataset-adapted corrector) trained ``iterations`` more iterations on ``sequence``'s own exemplar windows,
    as :func:`adapt_corrector` does on the dataset (same loss, lr, warm-up, clipping; ``cfg``: the
    :data:`CONFIG_KEYS`). Returns the copy in eval mode and a record (iterations, seconds, first and last
    loss); ``model`` itself is untouched. A sequence with no exemplar frame gets ``model`` back."""
    t0 = time.monotonic()
    cfg = normalize_adapt_config(cfg)
    try:
        ds = AdaptWindowDataset(data_dir, [sequence], cfg["window"], cfg["seed"], cfg["pseudo_labels"],
                                model.cfg.num_objects)
    except ArtifactError:                                  # nothing to adapt on
        return model, {"iterations": 0, "seconds": 0.0, "first_loss": None, "last_loss": None}
    with restored_torch_settings():
        torch.manual_seed(cfg["seed"])
        m = copy.deepcopy(model).float().to(dev)
        m.train()
        opt = torch.optim.Adam(m.parameters(), lr=cfg["lr"])
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda it: lr_factor(it, cfg["warmup_iters"], 10 ** 9, 1.0))
        losses = []
        with torch.enable_grad():
            for it in range(int(iterations)):
                batch = _collate([ds[it * cfg["batch_size"] + j] for j in range(cfg["batch_size"])])
                loss, _ = adapt_loss(forward_batch(m, batch, dev, cfg["amp"]), batch["targets"], batch["weight"],
                                     batch["tokens"], cfg["loss_weights"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(m.parameters(), cfg["grad_clip"])
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
        m.eval()
    return m, {"iterations": int(iterations), "seconds": round(time.monotonic() - t0, 3),
               "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}


def export_adapted(last_pt: str | os.PathLike, path: str | os.PathLike, max_mb: float | None = 25.0) -> dict:
    """The adapted corrector as an exported corrector checkpoint (loadable by
    :func:`pipeline.corrector.train.load_corrector`, which restores ``proposal_inputs``): the moving average of
    the weights when the run kept one (``adapt.ema``), else the last iteration's."""
    from pipeline.core.store import sha256_file
    from pipeline.corrector.model import EXPORT_FORMAT

    last_pt, path = Path(last_pt), Path(path)
    if not last_pt.exists():
        raise FileNotFoundError(f"{last_pt}: no adaptation checkpoint to export (run the adapt_corrector stage)")
    ck = load_train_checkpoint(last_pt, CHECKPOINT_FORMAT, "a corrector adaptation")
    src = ck["source"]
    cfg = ck["config"]
    train = {**(src.get("train") or {}), "adapted": {k: cfg[k] for k in ("pseudo_labels", "lr", "window",
                                                                        "zero_proposals", "loss_weights")}}
    if cfg.get("ema"):                                   # recorded only when on: an export without it is unchanged
        train["adapted"]["ema"] = cfg["ema"]
    train["adapted"].update({"iterations": int(ck["iteration"]), "source_sha256": ck["source_sha256"]})
    summary = {**(src.get("summary") or {}), "adapt_iterations": int(ck["iteration"]),
               "adapt_seconds": float(ck["train_seconds"])}
    weights = ck["model"] if not ck.get("ema") else averaged_weights(ck["ema"])
    doc = write_export(EXPORT_FORMAT, weights, {"model_config": ck["model_config"], "train": train,
                       "summary": summary, "proposal_inputs": bool(ck["proposal_inputs"])}, path,
                       fp16=True, max_mb=max_mb, what="adapted corrector")
    return {"path": str(path), "encoding": doc["encoding"], "bytes": path.stat().st_size,
            "weights_sha256": doc["weights_sha256"], "file_sha256": sha256_file(path), **summary}
