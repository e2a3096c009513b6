"""IMAS self-training: a trained IMAS (``train_imas``'s ``last.pt``) trained further with a first round's
final masks as its appearance target (no label is read).

IMAS's stage 2 learns appearance from its own CRF-refined stage-1 masks. Here the finished model continues
with the same two losses (flow reconstruction, and BCE of its object channel), the target now being the
foreground (any object) of a mask stage of the pipeline, area-downsampled to the prediction grid
(:func:`mask_targets`): masks that fused proposals, corrector, propagation and IMAS itself, so the model
learns the pipeline's consensus. ``iterations`` iterations at ``lr`` (polynomial decay, no warm-up); batches
continue the source run's sample sequence (iteration ``i`` draws :meth:`FrameBank.batch` ``base + i``, where
``base`` is the source's iteration count). The object channel is the source's.

Resumable from ``last.pt`` in ``out_dir`` when it was made from the same source model, targets and config
(else it starts over from the source); ``imas.pt`` (fp16, the ``imas`` stage reads it), ``train_curve.csv``
and ``metrics.json`` (in ``log_dir``).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.checkpoint import load_train_checkpoint, weights_sha256
from pipeline.core.device import restored_torch_settings
from pipeline.core.store import ArtifactError, open_artifact, write_json_atomic
from pipeline.imas.model import ImasConfig, ImasNet
from pipeline.imas.train import (CHECKPOINT_FORMAT, RESUME_FREE_KEYS, FrameBank, _poly, export_imas, forward_losses,
                                 normalize_config, save_train_checkpoint)
from pipeline.train.scaffold import CsvLog, TrainLoop, config_diff, restore_training, start_run

__all__ = ["SELF_TRAIN_KEYS", "mask_targets", "self_train_imas"]

#: the keys of the ``imas_self_train`` params section the trainer reads (documented there)
SELF_TRAIN_KEYS = ("iterations", "lr")
#: config keys a resume may differ in (and the source's config from the round's): train_imas's, bar the iterations
RESUME_FREE = RESUME_FREE_KEYS - {"iterations"}
CURVE_COLUMNS = ["iteration", "loss", "motion", "appearance", "lr", "grad_norm", "seconds"]


def mask_targets(stores: Sequence[str | os.PathLike], stage: str, grid: tuple[int, int]) -> list[np.ndarray]:
    """Per store (a mask stage's ``labels [T, H, W]``), the foreground of any object as ``float16 [T, h4, w4]``:
    the fraction of each grid cell's pixels that are foreground (area downsampling)."""
    out = []
    for p in stores:
        lab = open_artifact(p, stage=stage).require("labels", ndim=3)[...]
        fg = torch.from_numpy((lab > 0).astype(np.float32))[:, None]
        out.append(F.interpolate(fg, size=grid, mode="area")[:, 0].numpy().astype(np.float16))
    return out


def _digest(arrays: Sequence[np.ndarray]) -> str:
    """A short checksum of the targets (a changed mask stage restarts the run)."""
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def self_train_imas(cfg: Mapping[str, Any], st: Mapping[str, Any], bank: FrameBank, init: str | os.PathLike,
                    targets: list[np.ndarray], out_dir: str | os.PathLike, log_dir: str | os.PathLike | None = None,
                    progress: bool = True, targets_name: str = "masks") -> dict:
    """Continue the IMAS in ``init`` (a ``train_imas`` ``last.pt`` trained with ``cfg``, the ``imas`` section, on
    ``bank``'s sequences) for ``st["iterations"]`` iterations at ``st["lr"]`` with ``targets`` (per sequence,
    :func:`mask_targets`) as the appearance target; returns the metrics."""
    with restored_torch_settings():
        return _self_train(normalize_config(cfg), st, bank, Path(init), targets, out_dir, log_dir, progress,
                           targets_name)


def _self_train(cfg, st, bank, init, targets, out_dir, log_dir, progress, targets_name) -> dict:
    t0 = time.monotonic()
    n, lr = int(st["iterations"]), float(st["lr"])
    if n < 1 or lr <= 0:
        raise ValueError(f"imas_self_train: iterations must be >= 1 and lr > 0, got {n} and {lr}")
    if len(targets) != len(bank.names):
        raise ArtifactError(f"imas_self_train: {len(targets)} sequences of {targets_name} targets for "
                            f"{len(bank.names)} training sequences")
    for name, t, r in zip(bank.names, targets, bank.rgb):
        if t.shape != (len(r), *bank.grid):
            raise ArtifactError(f"imas_self_train: the {targets_name} targets of {name!r} are {list(t.shape)}, the "
                                f"training frames need {[len(r), *bank.grid]}")
    src = load_train_checkpoint(init, CHECKPOINT_FORMAT, "an IMAS")
    if src["sequences"] != bank.names:
        odd = next((f"{a!r} vs {b!r}" for a, b in zip(src["sequences"], bank.names) if a != b),
                   f"{len(src['sequences'])} vs {len(bank.names)} sequences")
        raise ArtifactError(f"{init}: trained on other sequences than this dataset's ({odd}): self-training "
                            "continues the model of the same videos")
    stage = int(src["state"].get("stage", 0))
    if stage == 3:
        raise ArtifactError(f"{init}: a self-trained IMAS; init is the source's train_imas last.pt")
    if stage != 2:
        raise ArtifactError(f"{init}: IMAS training did not finish (stage {stage}): run train_imas to the end first")
    made = {k: v for k, v in src["config"].items() if k in cfg}
    diff = config_diff(made, cfg, RESUME_FREE)
    if diff:
        raise ValueError(f"{init}: trained with other imas settings ({'; '.join(diff)}): the self-training round "
                         "must set them as its source does")
    out_dir, log_dir, dev = start_run(cfg, out_dir, log_dir)
    mcfg = ImasConfig.from_dict(src["model_config"])
    model = ImasNet(mcfg).to(dev)
    model.load_state_dict(src["model"])
    state = {k: src["state"][k] for k in ("object_channel", "channel_alignment", "stage1_iterations")}
    base = int(src["iteration"])
    full = {**cfg, "self_train": {"iterations": n, "lr": lr},
            "source": {"iteration": base, "weights": weights_sha256(src["model"])},
            "targets": {"name": targets_name, "digest": _digest(targets)}}
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg["weight_decay"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _poly(n, 0))
    ckpt, start, prev = out_dir / "last.pt", 0, 0.0
    if ckpt.exists():
        ck = load_train_checkpoint(ckpt, CHECKPOINT_FORMAT, "an IMAS self-training")
        if not config_diff(ck["config"], full, RESUME_FREE) and ck["sequences"] == bank.names:
            start, prev, _ = restore_training(ck, model, opt, sched)
        else:
            print(f"{ckpt}: made from another source model, targets or config: starting over from {init}", flush=True)
    del src
    tlog = CsvLog(Path(log_dir) / "train_curve.csv", CURVE_COLUMNS, start)
    loop = TrainLoop(model, opt, sched, cfg["grad_clip"], "IMAS self-training", tlog, cfg["log_every"], n, start, prev,
                     None, progress, "imas self-training")
    oc, first = int(state["object_channel"]), None

    def save() -> None:
        save_train_checkpoint(ckpt, model, opt, sched, loop, full, mcfg, bank, {**state, "stage": 3})

    model.train()
    try:
        while loop.it < n:
            batch = bank.batch(base + loop.it, cfg["batch_size"], cfg["seed"], cfg["flip"], targets)
            loss, parts = forward_losses(model, batch, dev, cfg, oc)
            vals = loop.step(loss, parts)
            first = first or vals
            if loop.it % cfg["ckpt_every"] == 0:
                save()
        loop.flush()
        save()
    finally:
        loop.close()
    tlog.close()
    record = {"self_train": {"iterations": n, "lr": lr, "targets": targets_name, "source_iterations": base,
                             "source_weights_sha256": full["source"]["weights"]}}
    export_imas(model, mcfg, state, cfg, bank, out_dir / "imas.pt", stage=3, extra=record)
    last = loop.last_row
    metrics = {"iterations": n, "resumed_at": start, "source_iterations": base, "lr": lr, "targets": targets_name,
               "object_channel": oc, "first": None if first is None else
               {k: round(first[k], 6) for k in ("motion", "appearance", "total")},
               "last": {k: round(float(last[k]), 6) for k in ("motion", "appearance", "loss") if k in last},
               "train_seconds": round(loop.seconds(), 3), "wall_time_s": round(time.monotonic() - t0, 3),
               "device": str(dev), "sequences": len(bank.names), "frames": len(bank), "backbone": bank.backbone,
               "labels_used": f"none (flow, RGB, frozen tokens and the pipeline's own {targets_name} masks)",
               "finished_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
    path = Path(log_dir) / "metrics.json"
    if first is None and path.exists():         # resumed at its end, nothing trained: keep the record of the run
        prev = json.loads(path.read_text())     # that trained (its losses, time and finish)
        if prev.get("iterations") == n:
            metrics.update({k: prev[k] for k in ("first", "last", "train_seconds", "wall_time_s", "finished_utc")
                            if k in prev})
    write_json_atomic(path, metrics)
    return metrics
