"""IMAS training on one dataset's own unlabeled videos (no mask is ever read).

Data (:class:`FrameBank`): every sequence's ``frames`` (``rgb`` at the working size), ``features``
(``tokens``, the frozen backbone) and ``flow`` (forward / backward, downsampled to the 1/4 grid by
area and rescaled to grid pixels). Iteration ``i`` draws ``batch_size`` frame pairs ``(a, a + gap)``
uniformly over all frames (``numpy.random.default_rng([seed, i])``), each mirrored with probability
1/2 (``flip``). Both frames of a pair are segmented; the loss is symmetric (paper appendix): frame
``a`` reconstructs its forward flow with the residual head fed ``(a, b)``, frame ``b`` its backward
flow with ``(b, a)``.

Stage 1 (Sec. 3.2): flow reconstruction, L1 (eq. 6), ``iterations`` iterations or
``time_budget_s``, whichever comes first. Then, without labels:

* **object channel** (Sec. 3.4): every frame's argmax masks per channel are scored by
  motion-semantic alignment (:mod:`pipeline.quality.alignment`, the ``quality`` knobs) on the frozen
  tokens; the channel with the highest mean is the object. The stage-1 model is exported with it
  (``stage1.pt``).
* **refined masks** (Sec. 3.3), once: the object channel's soft mask of every frame, dense CRF at
  the working size (the ``crf`` knobs, spatial stds scaled from the original to the working
  resolution), intersected with its semantic response (``semantic_constraint``; skipped where the
  response spans more than ``max_width`` / ``max_height`` of the frame, as in the paper),
  downsampled to the grid.

Stage 2: ``loss_weights.motion`` x flow loss + ``loss_weights.appearance`` x BCE of the object
channel against the refined masks, ``refine_iterations`` iterations at ``refine_lr``.

Resumable from ``last.pt`` (same config up to :data:`RESUME_FREE_KEYS`) during stage 1 and stage 2. The
finished stage 1 is kept (``stage1_last.pt``): a change of :data:`STAGE2_KEYS` only (stage 2, the CRF or
alignment knobs), a kill before the first stage-2 checkpoint, or a deleted ``last.pt`` redo stage 2 from it,
so ``dvc exp run -S imas.semantic_constraint=true`` costs minutes, not a retraining. ``iterations`` and
``time_budget_s`` act only while stage 1 is unfinished;
``train_curve.csv`` (one curve over both stages: ``stage`` column) and ``metrics.json``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline import __version__
from pipeline.core.checkpoint import atomic_torch_save, load_train_checkpoint, write_export
from pipeline.core.device import autocast, restored_torch_settings, rng_state
from pipeline.core.store import ArtifactError, open_artifact, write_json_atomic
from pipeline.crf import CRFConfig, dense_crf, label_probabilities
from pipeline.imas.infer import channel_masks, object_probability, upsample
from pipeline.imas.losses import FLOW_LOSSES, appearance_loss, flow_loss, flow_scale
from pipeline.imas.model import EXPORT_FORMAT, ImasConfig, ImasNet, rgb_input
from pipeline.oclr.losses import merge_loss_weights
from pipeline.quality.alignment import AlignmentConfig, alignment, semantic_response
from pipeline.train.scaffold import (CsvLog, TrainLoop, check_keys, config_diff, refuse_resume, restore_training,
                                     start_run)

__all__ = ["CONFIG_KEYS", "FrameBank", "normalize_config", "train_imas", "export_imas", "save_train_checkpoint",
           "choose_object_channel", "refined_masks", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "motionseg-imas-train/1"

#: every key of the ``imas`` params section the trainer reads (documented there); no defaults in code
CONFIG_KEYS: tuple[str, ...] = (
    "channels", "hidden", "stem", "flow_hidden", "residual_bound", "flow_floor", "flow_loss", "iterations", "refine_iterations",
    "batch_size", "lr", "refine_lr", "weight_decay", "warmup_iters", "grad_clip", "loss_weights",
    "semantic_constraint", "flip", "time_budget_s", "ckpt_every", "log_every", "seed", "device", "amp",
    "deterministic", "threads",
)
RESUME_FREE_KEYS = frozenset({"iterations", "time_budget_s", "ckpt_every", "log_every", "device", "threads"})
#: keys that change only what follows stage 1: a finished stage 1 is kept (``stage1_last.pt``) and stage 2 redone
STAGE2_KEYS = frozenset({"refine_iterations", "refine_lr", "loss_weights", "semantic_constraint", "crf", "align"})
LOSS_WEIGHTS = {"motion": 1.0, "appearance": 1.0}
TRAIN_CURVE_COLUMNS = ["iteration", "stage", "loss", "motion", "appearance", "lr", "grad_norm", "seconds"]


def normalize_config(cfg: Mapping[str, Any] | None) -> dict:
    out = check_keys(cfg, CONFIG_KEYS, "imas")
    out["loss_weights"] = merge_loss_weights(LOSS_WEIGHTS, out["loss_weights"])
    for k in ("channels", "hidden", "stem", "flow_hidden", "iterations", "refine_iterations", "batch_size",
              "warmup_iters", "ckpt_every", "log_every", "seed"):
        out[k] = int(out[k])
    if out["channels"] < 2:
        raise ValueError(f"imas.channels must be >= 2 (one object channel and background), got {out['channels']}")
    for k in ("batch_size", "ckpt_every", "log_every", "hidden", "stem", "flow_hidden"):
        if out[k] < 1:
            raise ValueError(f"imas.{k} must be >= 1, got {out[k]}")
    for k in ("lr", "refine_lr", "weight_decay", "residual_bound", "flow_floor"):
        out[k] = float(out[k])
    if out["flow_floor"] <= 0:
        raise ValueError(f"imas.flow_floor must be > 0 (the flow unit of a still pair), got {out['flow_floor']}")
    if out["flow_loss"] not in FLOW_LOSSES:
        raise ValueError(f"imas.flow_loss must be one of {FLOW_LOSSES}, got {out['flow_loss']!r}")
    if out["residual_bound"] < 0:
        raise ValueError(f"imas.residual_bound must be >= 0 (0 = no residual pathway), got {out['residual_bound']}")
    return out


def grid_size(H: int, W: int) -> tuple[int, int]:
    """The prediction grid of a ``H x W`` input (two stride-2 convs with padding 1)."""
    return (H + 3) // 4, (W + 3) // 4


# --------------------------------------------------------------------------- data
class FrameBank:
    """The training frames of a dataset, in memory (see the module docstring): :meth:`load` reads a
    dataset's stores."""

    def __init__(self, names: list[str], rgb: list[np.ndarray], tokens: list[np.ndarray], flow: list[np.ndarray],
                 gaps: list[int], orig_w: list[int], backbone: str):
        """Per sequence: ``rgb uint8 [T, H, W, 3]``, ``tokens [T, C, h, w]``, flow ``[T, 4, H, W]`` at the
        working size (forward u, v, backward u, v), the frame gap, the original width."""
        if not names:
            raise ArtifactError("no sequence long enough to train IMAS on")
        self.names, self.rgb, self.gaps, self.orig_w, self.backbone = list(names), list(rgb), list(gaps), \
            list(orig_w), backbone or ""
        self.size = tuple(self.rgb[0].shape[1:3])
        self.grid = grid_size(*self.size)
        H, W = self.size
        h4, w4 = self.grid
        self.tokens = [np.asarray(t, np.float16) for t in tokens]
        self.flow = []
        for f in flow:
            g = F.interpolate(torch.from_numpy(np.asarray(f, np.float32)), size=(h4, w4), mode="area").numpy()
            g[:, 0::2] *= w4 / W
            g[:, 1::2] *= h4 / H
            self.flow.append(g)
        self.token_dim = int(self.tokens[0].shape[1])
        # pair starts (sequence, a) with a + gap inside the sequence
        self.pairs = np.array([(i, a) for i, r in enumerate(self.rgb) for a in range(len(r) - self.gaps[i])])

    @classmethod
    def load(cls, data_dir: str | os.PathLike, sequences: Sequence[str], flow_dir: str = "flow") -> "FrameBank":
        """Every sequence's ``frames``, ``features`` and flow stores under ``data_dir`` (the flow from the
        folder ``flow_dir``: ``flow``, or ``imas_flow``, a second flow store for IMAS)."""
        data_dir = Path(data_dir)
        kw: dict[str, list] = {"names": [], "rgb": [], "tokens": [], "flow": [], "gaps": [], "orig_w": []}
        backbones = set()
        for s in sequences:
            fr = open_artifact(data_dir / "frames" / f"{s}.zarr", stage="frames")
            ft = open_artifact(data_dir / "features" / f"{s}.zarr", stage="features")
            fl = open_artifact(data_dir / flow_dir / f"{s}.zarr", stage="flow")
            rgb = fr.require("rgb", dtype="uint8", dims=("frame", "y", "x", "channel"))[...]
            tok = ft.require("tokens", ndim=4)[...].astype(np.float16)
            flow = fl.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"))[...]
            T, H, W, _ = rgb.shape
            if kw["rgb"] and (H, W) != kw["rgb"][0].shape[1:3]:
                raise ArtifactError(f"{fr.path}: working size {H}x{W}, but {kw['names'][0]!r} has "
                                    f"{kw['rgb'][0].shape[1]}x{kw['rgb'][0].shape[2]} (rerun the frames stage)")
            if flow.shape[2:] != (H, W):
                raise ArtifactError(f"{fl.path}: flow at {flow.shape[2]}x{flow.shape[3]}, frames at {H}x{W} "
                                    "(rerun the flow stage)")
            if tok.shape[0] != T or flow.shape[0] != T:
                raise ArtifactError(f"{data_dir}: sequence {s!r} has {T} frames but {tok.shape[0]} token maps and "
                                    f"{flow.shape[0]} flow fields (rerun the features / flow stages)")
            gap = int(fl.attrs.get("gap", 1))
            if T <= gap:
                continue
            for k, v in (("names", s), ("rgb", rgb), ("tokens", tok), ("flow", flow), ("gaps", gap),
                         ("orig_w", int((fr.attrs.get("original_size") or [H, W])[1]))):
                kw[k].append(v)
            backbones.add((ft.attrs.get("backbone") or {}).get("name"))
        if len(backbones) > 1:
            raise ArtifactError(f"{data_dir}/features: stores of different backbones {sorted(map(str, backbones))}")
        if not kw["names"]:
            raise ArtifactError(f"{data_dir}: no sequence long enough to train IMAS on")
        return cls(**kw, backbone=backbones.pop() or "")

    def __len__(self) -> int:
        return sum(len(r) for r in self.rgb)

    def batch(self, it: int, B: int, seed: int, flip: bool, targets: list[np.ndarray] | None = None) -> dict:
        """Iteration ``it``'s batch: ``rgb [2B, H, W, 3]`` (the B first frames a, then their partners b),
        ``tokens [2B, C, h, w]``, ``flow [2B, 2, h4, w4]`` (forward for a, backward for b), and with
        ``targets`` (per-sequence refined masks ``[T, h4, w4]``) ``target [2B, h4, w4]``."""
        rng = np.random.default_rng([seed, it])
        pick = self.pairs[rng.integers(0, len(self.pairs), size=B)]
        mirror = rng.random(B) < 0.5 if flip else np.zeros(B, bool)
        rgb, tok, flo, tgt = [], [], [], []
        for part in (0, 1):
            for (i, a), m in zip(pick, mirror):
                t = a + self.gaps[i] * part
                r, k = self.rgb[i][t], self.tokens[i][t]
                f = self.flow[i][t, 2 * part:2 * part + 2]
                y = targets[i][t] if targets is not None else None
                if m:
                    r, k, f = r[:, ::-1], k[..., ::-1], f[..., ::-1] * np.array([-1, 1], np.float32)[:, None, None]
                    y = y[:, ::-1] if y is not None else None
                rgb.append(r)
                tok.append(k)
                flo.append(f)
                tgt.append(y)
        out = {"rgb": torch.from_numpy(np.ascontiguousarray(np.stack(rgb))),
               "tokens": torch.from_numpy(np.ascontiguousarray(np.stack(tok))),
               "flow": torch.from_numpy(np.ascontiguousarray(np.stack(flo)))}
        if targets is not None:
            out["target"] = torch.from_numpy(np.ascontiguousarray(np.stack(tgt)).astype(np.float32))
        return out


def forward_losses(model: ImasNet, batch: Mapping[str, torch.Tensor], dev: torch.device, cfg: Mapping[str, Any],
                   object_channel: int | None = None) -> tuple[torch.Tensor, dict]:
    """The loss of a batch (:meth:`FrameBank.batch`): stage 1 without ``object_channel``, stage 2 with it."""
    rgb, tokens, flow = batch["rgb"].to(dev), batch["tokens"].to(dev), batch["flow"].to(dev)
    B = rgb.shape[0] // 2
    with autocast(dev, cfg["amp"]):
        feat = model.features(rgb_input(rgb), tokens)
        masks = model.segment(feat).float()
        res = model.residual(feat, torch.cat([feat[B:], feat[:B]])).float() if cfg["residual_bound"] > 0 else None
    scale = flow_scale(flow[:B], cfg["flow_floor"]).repeat(2)
    flow_n = flow / scale[:, None, None, None]
    motion = flow_loss(model.reconstruct(masks, flow_n, res), flow_n, cfg["flow_loss"])
    parts = {"motion": motion.detach()}
    if object_channel is None:
        return motion, {**parts, "total": motion.detach()}
    app = appearance_loss(masks[:, object_channel], batch["target"].to(dev))
    w = cfg["loss_weights"]
    total = w["motion"] * motion + w["appearance"] * app
    return total, {**parts, "appearance": app.detach(), "total": total.detach()}


# --------------------------------------------------------------------------- label-free steps
def all_masks(model: ImasNet, bank: FrameBank, dev: torch.device, amp: bool, batch: int = 32) -> list[np.ndarray]:
    """Per sequence, the soft masks ``float16 [T, K, h4, w4]`` of every frame."""
    model.eval()
    out = []
    for rgb, tok in zip(bank.rgb, bank.tokens):
        out.append(np.concatenate([channel_masks(model, rgb[s:s + batch], tok[s:s + batch], dev, amp)
                                   for s in range(0, len(rgb), batch)]).astype(np.float16))
    model.train()
    return out


def choose_object_channel(masks: list[np.ndarray], bank: FrameBank, align: AlignmentConfig) -> tuple[int, list[float]]:
    """The object channel (Sec. 3.4): the channel whose argmax masks have the highest mean
    motion-semantic alignment over every frame of the dataset. Returns ``(channel, per-channel means)``."""
    H, W = bank.size
    K = masks[0].shape[1]
    sums, n = np.zeros(K), 0
    for m, tok in zip(masks, bank.tokens):
        lab = upsample(m.astype(np.float32), (H, W)).argmax(axis=1)
        for t in range(len(lab)):
            for k in range(K):
                sums[k] += alignment(tok[t].astype(np.float32), lab[t] == k, align)
            n += 1
    means = (sums / max(n, 1)).tolist()
    return int(np.argmax(means)), [round(v, 6) for v in means]


def refined_masks(masks: list[np.ndarray], channel: int, bank: FrameBank, crf: CRFConfig, align: AlignmentConfig,
                  semantic: bool) -> tuple[list[np.ndarray], dict]:
    """Per sequence, the stage-2 targets ``float16 [T, h4, w4]`` (see the module docstring), and a
    summary (mean area before / after, how often the semantic constraint applied)."""
    H, W = bank.size
    h4, w4 = bank.grid
    out, area_in, area_out, constrained, n = [], 0.0, 0.0, 0, 0
    for i, m in enumerate(masks):
        cfg = crf.scaled(W / bank.orig_w[i])
        p = object_probability(upsample(m.astype(np.float32), (H, W)), channel)
        seq = np.zeros((len(p), h4, w4), np.float16)
        for t in range(len(p)):
            ref = dense_crf(bank.rgb[i][t], label_probabilities(p[t][None]), cfg) == 1
            area_in += float((p[t] > 0.5).mean())
            if semantic and ref.any():
                tok = bank.tokens[i][t].astype(np.float32)
                resp = semantic_response(tok, ref, align)
                if resp is not None and alignment(tok, ref, align) > 0:     # 0: the response spans the frame
                    ref &= resp
                    constrained += 1
            area_out += float(ref.mean())
            n += 1
            seq[t] = F.interpolate(torch.from_numpy(ref[None, None].astype(np.float32)), size=(h4, w4),
                                   mode="area")[0, 0].numpy()
        out.append(seq)
    return out, {"frames": n, "mean_area_stage1": round(area_in / max(n, 1), 5),
                 "mean_area_refined": round(area_out / max(n, 1), 5), "semantic_constraint_frames": constrained}


# --------------------------------------------------------------------------- training
def _poly(total: int, warmup: int):
    def f(it: int) -> float:
        w = min(1.0, (it + 1) / warmup) if warmup > 0 else 1.0
        return w * max(0.05, (1.0 - it / max(total, 1)) ** 0.9)
    return f


def _stage1_short(state: Mapping[str, Any], made_with: Mapping[str, Any], cfg: Mapping[str, Any]) -> bool:
    """Stage 1 of a saved state stopped on its time budget before ``iterations``, and ``cfg`` would train it
    further (no budget, or a larger one): the state is not the stage 1 that ``cfg`` asks for."""
    if state.get("stopped_by") != "time_budget" or int(state.get("stage1_iterations") or 0) >= int(cfg["iterations"]):
        return False
    old, new = made_with.get("time_budget_s"), cfg["time_budget_s"]
    return new is None or old is not None and float(new) > float(old)


def _stage1_snapshot(path: Path, full: Mapping[str, Any], names: list[str]) -> dict | None:
    """The finished stage 1 (``stage1_last.pt``) when it was trained with the same stage-1 config and
    sequences (and did not stop short of what ``full`` asks for), else None."""
    if not path.exists():
        return None
    s1 = load_train_checkpoint(path, CHECKPOINT_FORMAT, "an IMAS stage-1")
    same = not config_diff(s1["config"], full, RESUME_FREE_KEYS | STAGE2_KEYS) and s1["sequences"] == names
    return s1 if same and not _stage1_short(s1["state"], s1["config"], full) else None


def train_imas(cfg: Mapping[str, Any], crf: CRFConfig, align: AlignmentConfig, bank: FrameBank,
               out_dir: str | os.PathLike, log_dir: str | os.PathLike | None = None, progress: bool = True) -> dict:
    """Train IMAS on ``bank`` (both stages); ``last.pt``, ``stage1.pt`` and ``imas.pt`` go to ``out_dir``,
    ``train_curve.csv`` / ``metrics.json`` to ``log_dir``. Returns the metrics."""
    with restored_torch_settings():
        return _train(normalize_config(cfg), crf, align, bank, out_dir, log_dir, progress)


def _train(cfg, crf, align, bank, out_dir, log_dir, progress) -> dict:
    t_start = time.monotonic()
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    mcfg = ImasConfig(channels=cfg["channels"], token_dim=bank.token_dim, hidden=cfg["hidden"], stem=cfg["stem"],
                      flow_hidden=cfg["flow_hidden"], residual_bound=cfg["residual_bound"], backbone=bank.backbone)
    model = ImasNet(mcfg).to(dev)
    n1, n2, B = cfg["iterations"], cfg["refine_iterations"], cfg["batch_size"]
    ckpt, snap = out_dir / "last.pt", out_dir / "stage1_last.pt"
    full = {**cfg, "crf": crf.to_dict(), "align": asdict(align)}        # everything the result depends on
    state: dict[str, Any] = {"stage": 1, "object_channel": None, "channel_alignment": None, "targets": None,
                             "refine_summary": None, "stage1_iterations": None, "stopped_by": "iterations"}
    ck, restart2 = None, False
    s1 = _stage1_snapshot(snap, full, bank.names)
    if ckpt.exists():
        ck = load_train_checkpoint(ckpt, CHECKPOINT_FORMAT, "an IMAS")
        diff = config_diff(ck["config"], full, RESUME_FREE_KEYS)
        if ck.get("sequences") != bank.names:
            diff.append("sequences")
        if diff and s1 is None and {d.split(":")[0] for d in diff} <= STAGE2_KEYS and ck["state"]["stage"] == 1:
            diff = []                                   # stage 1 does not read them: it just continues
        if s1 is None:
            refuse_resume(ckpt, diff, f"Delete {out_dir} to start over.")
        if ck["state"]["stage"] == 2 and _stage1_short(ck["state"], ck["config"], full):
            print(f"{ckpt}: stage 1 stopped on its time budget after {ck['state']['stage1_iterations']} of "
                  f"{n1} iterations and this config trains it to the end: starting over", flush=True)
            ck = s1 = None                              # stage 1 cannot be continued once stage 2 began
        elif diff or ck["state"]["stage"] == 1 and s1 is not None:
            ck = None                                   # stage 2 is redone from the finished stage 1 below
        else:
            state.update(ck["state"])
            s1 = None
    if s1 is not None:                                  # stage 1 finished: (re)do stage 2 from it
        model.load_state_dict(s1["model"])
        state.update(s1["state"])
        restart2 = True
    keep = state["stage1_iterations"] if restart2 else int(ck["iteration"]) if ck else None
    tlog = CsvLog(log_dir / "train_curve.csv", TRAIN_CURVE_COLUMNS, keep)
    first = {}

    def run_stage(stage: int, total: int, lr: float) -> None:
        nonlocal ck
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
        offset = 0 if stage == 1 else state["stage1_iterations"]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _poly(total, cfg["warmup_iters"] if stage == 1 else 0))
        start, prev = 0, 0.0
        if ck is not None and ck["state"]["stage"] == stage:
            start, prev, _ = restore_training(ck, model, opt, sched)
            start -= offset
        ck = None
        budget = cfg["time_budget_s"] if stage == 1 else None
        loop = TrainLoop(model, opt, sched, cfg["grad_clip"], f"IMAS stage {stage}", tlog, cfg["log_every"],
                         offset + total, offset + start, prev, budget, progress, f"imas stage {stage}")

        def save() -> None:
            save_train_checkpoint(ckpt, model, opt, sched, loop, full, mcfg, bank, state)

        model.train()
        try:
            while loop.it < offset + total:
                batch = bank.batch(loop.it, B, cfg["seed"], cfg["flip"], state["targets"] if stage == 2 else None)
                loss, parts = forward_losses(model, batch, dev, cfg, state["object_channel"] if stage == 2 else None)
                vals = loop.step(loss, {**parts, "stage": stage})
                first.setdefault(stage, vals["total"])
                if loop.it % cfg["ckpt_every"] == 0:
                    save()
                if loop.over_budget() and loop.it < offset + total:
                    state["stopped_by"] = "time_budget"
                    break
            loop.flush()
            save()
        finally:
            loop.close()
        state.setdefault("seconds", {})[stage] = loop.seconds()
        if stage == 1:
            state["stage1_iterations"] = loop.it

    if state["stage"] == 1 or restart2:
        if not restart2:
            run_stage(1, n1, cfg["lr"])
            atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "config": full,
                               "sequences": bank.names, "state": {k: state[k] for k in
                                                                  ("stage1_iterations", "stopped_by", "seconds")}},
                              snap)
        masks = all_masks(model, bank, dev, cfg["amp"])
        state["object_channel"], state["channel_alignment"] = choose_object_channel(masks, bank, align)
        export_imas(model, mcfg, state, cfg, bank, out_dir / "stage1.pt", stage=1)
        targets, summary = refined_masks(masks, state["object_channel"], bank, crf, align, cfg["semantic_constraint"])
        state.update({"stage": 2, "targets": targets, "refine_summary": summary})
    run_stage(2, n2, cfg["refine_lr"])
    tlog.close()
    export_imas(model, mcfg, state, cfg, bank, out_dir / "imas.pt", stage=2)
    final = state["stage1_iterations"] + n2
    metrics = {"iterations": final, "stage1_iterations": state["stage1_iterations"], "stage1_target": n1,
               "stage2_iterations": n2, "stopped_by": state["stopped_by"], "first_loss": first,
               "object_channel": state["object_channel"], "channel_alignment": state["channel_alignment"],
               "refined_masks": state["refine_summary"], "train_seconds": state.get("seconds"),
               "wall_time_s": round(time.monotonic() - t_start, 3), "device": str(dev), "sequences": len(bank.names),
               "frames": len(bank), "backbone": bank.backbone, "labels_used": "none (flow, RGB and frozen tokens)",
               "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    prev_path = Path(log_dir) / "metrics.json"
    if not first and prev_path.exists():       # resumed at its end, nothing trained: keep the record of the run
        prev = json.loads(prev_path.read_text())          # that trained (its first losses, time and finish)
        if prev.get("iterations") == metrics["iterations"]:
            metrics.update({k: prev[k] for k in ("first_loss", "train_seconds", "wall_time_s", "finished_utc")
                            if k in prev})
    write_json_atomic(prev_path, metrics)
    return metrics


def save_train_checkpoint(path: Path, model: ImasNet, opt: torch.optim.Optimizer, sched: Any, loop: TrainLoop,
                          config: Mapping[str, Any], mcfg: ImasConfig, bank: FrameBank, state: Mapping[str, Any]) -> None:
    """``last.pt``: everything a resumed run needs (model, optimiser, schedule, RNG, iteration, config, state)."""
    atomic_torch_save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "optimizer": opt.state_dict(),
                       "scheduler": sched.state_dict(), "iteration": loop.it, "rng": rng_state(), "config": config,
                       "model_config": mcfg.to_dict(), "train_seconds": loop.seconds(), "last_val": None,
                       "sequences": bank.names, "state": dict(state), "package_version": __version__}, path)


def export_imas(model: ImasNet, mcfg: ImasConfig, state: Mapping[str, Any], cfg: Mapping[str, Any], bank: FrameBank,
                path: str | os.PathLike, stage: int, max_mb: float = 25.0, extra: Mapping[str, Any] | None = None) -> dict:
    """The inference checkpoint (fp16) of ``model`` with its object channel and training record (``extra``: more of
    it, e.g. the self-training's)."""
    train = {k: cfg[k] for k in ("channels", "residual_bound", "flow_loss", "iterations", "refine_iterations", "batch_size", "lr",
                                 "refine_lr", "loss_weights", "semantic_constraint", "seed")}
    train.update({"stage": stage, "stage1_iterations": state["stage1_iterations"], "sequences": bank.names,
                  "frames": len(bank), "backbone": bank.backbone, **(extra or {})})
    return write_export(EXPORT_FORMAT, model.state_dict(), {
        "model_config": mcfg.to_dict(), "object_channel": int(state["object_channel"]),
        "channel_alignment": state["channel_alignment"], "train": train,
        "summary": {"self_supervised": True, "labels_used": "none"}}, path, fp16=True, max_mb=max_mb, what="IMAS")
