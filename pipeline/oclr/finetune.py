"""OCLR continued on another optical flow.

OCLR learns what flow looks like: a checkpoint trained on one estimator's flow (the synthetic splits'
DIS at OpenCV's preset scale) sees another estimator's flow (RAFT), or DIS at another scale (full
resolution, the demo's), as out of distribution. :func:`finetune_on_flow` renders the first
``videos`` videos of the synthetic training split again (same seed, sources and config, so the same
videos), estimates their flow with the given estimator and fine-tunes an exported OCLR checkpoint on
them. Every step is skipped when its output exists, and the training resumes from ``last.pt``, so an
interrupted run continues where it stopped.

Layout of ``work``: ``settings.json`` (the videos and flow the folder was made with; another setting is
an error, never a silent mix), ``split/render``, ``split/flow`` (a training split as
:class:`pipeline.oclr.train.SynthClipDataset` reads it) and ``state/last.pt``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from pipeline.core.config import project_path, project_root
from pipeline.oclr.train import train_oclr
from pipeline.synth.dataset import (
    build_split,
    build_split_flow,
    make_source_bank,
    synth_config,
)
from pipeline.train.scaffold import check_keys

#: keys of the ``oclr_flow`` params section (documented there)
FINETUNE_KEYS = ("init", "videos", "flow", "iterations", "lr", "warmup_iters", "decay_every", "time_budget_s",
                 "threads")


def finetune_config(oclr: Mapping[str, Any], finetune: Mapping[str, Any], work: str | os.PathLike) -> dict:
    """The :func:`train_oclr` config: ``oclr``'s training settings with ``finetune``'s run (init,
    iterations, schedule, budget, threads) on ``work``'s split, without validation."""
    finetune = check_keys(finetune, FINETUNE_KEYS, "oclr_flow")
    if not finetune["init"]:
        raise ValueError("oclr_flow.init: a fine-tuning run needs an exported OCLR checkpoint to start from")
    if int(finetune["videos"]) < 1:
        raise ValueError(f"oclr_flow.videos: {finetune['videos']!r} (at least 1 video)")
    cfg = {k: v for k, v in oclr.items() if k not in ("resume", "export", "export_max_mb")}
    cfg.update(train_split=(Path(work) / "split").as_posix(), val_split=None, init=finetune["init"],
               iterations=int(finetune["iterations"]), lr=float(finetune["lr"]),
               warmup_iters=int(finetune["warmup_iters"]), decay_every=int(finetune["decay_every"]),
               time_budget_s=finetune["time_budget_s"])
    if finetune["threads"] is not None:
        cfg["threads"] = int(finetune["threads"])
    return cfg


def finetune_on_flow(work: str | os.PathLike, oclr: Mapping[str, Any], finetune: Mapping[str, Any],
                     synth: Mapping[str, Any], log_dir: str | os.PathLike | None = None,
                     resume: bool = True, progress: bool = True) -> dict:
    """Render, estimate flow and fine-tune into ``work`` (see the module docstring); returns the
    training metrics of :func:`train_oclr`. ``oclr``: the ``oclr`` params section (model and
    training settings), ``finetune``: the ``oclr_flow`` section, ``synth``: the ``synth`` section
    (``train`` seed, ``sources``, ``config``)."""
    cfg = finetune_config(oclr, finetune, work)   # the split path as given (relative: portable state)
    work = project_path(work)
    videos, fp = int(finetune["videos"]), dict(finetune["flow"])
    settings = json.loads(json.dumps({"videos": videos, "flow": fp}))
    made = work / "settings.json"
    if made.exists() and json.loads(made.read_text()) != settings:
        raise ValueError(f"{work} was made with {made.read_text().strip()}, not {json.dumps(settings)}: "
                         "remove the folder (or choose another) to fine-tune on other videos or flow")
    work.mkdir(parents=True, exist_ok=True)
    made.write_text(json.dumps(settings))
    split = work / "split"
    if not (split / "render").is_dir():
        bank, sources = make_source_bank(synth["sources"], base=project_root())
        build_split("train", videos, int(synth["train"]["seed"]), synth_config(synth.get("config") or {}), bank,
                    split / "render", progress=progress, sources=sources,
                    params={"synth": {"train": {**synth["train"], "count": videos}}})
    if not (split / "flow").is_dir():
        build_split_flow(split / "render", split / "flow", fp, progress=progress)
    m = train_oclr(cfg, work / "state", resume=resume, progress=progress, log_dir=log_dir)
    m["flow"] = fp
    return m
