"""OCLR adapted to a dataset's own flow, with refined masks as pseudo-labels (no labels read).

The appearance-refinement paper (sect. 3.4.2, Table 14) fine-tunes the synthetically trained OCLR on
the target videos: its input is the videos' own flow, its targets the masks the refinement produced
(the pipeline's final masks). The adapted OCLR then makes new proposals, which go through selection,
correction and the CRF again (a second round: a dataset with ``dataset.reuse``, see
``docs/pipeline.md``). As the paper, the boundary loss is off (pseudo-label boundaries are the least
trustworthy part).

:class:`PseudoClipDataset` draws clips from a dataset's ``flow`` stores and one mask stage's ``labels``
(resized to the flow's size, nearest): each object id present in the clip is one target object, its
modal mask also its amodal one (pseudo-labels have no occlusion), depth order by id.
:func:`adapt_oclr` trains with :func:`pipeline.oclr.train.train_oclr` (resumable from ``last.pt``)
and :func:`pipeline.oclr.train.export_checkpoint` makes the small checkpoint the proposals stage loads.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from pipeline.core.store import ArtifactError, open_artifact
from pipeline.oclr.train import export_checkpoint, finish_clip, model_config_from, train_oclr
from pipeline.train.scaffold import check_keys

#: keys of the ``adapt_oclr`` params section (documented there)
ADAPT_KEYS = ("pseudo_labels", "checkpoint", "iterations", "lr", "warmup_iters", "batch_size", "loss_weights", "seed",
              "time_budget_s", "threads", "resume", "export_max_mb")


class PseudoClipDataset(Dataset):
    """Clips of ``clip_len`` frames: ``flow`` from ``flow_stores``, targets from the ``labels`` of
    ``label_stores`` (same sequences, same frame count), at most ``max_objects`` objects per clip
    (the largest). Sample ``i`` depends only on ``(seed, i)``; items are :class:`SynthClipDataset`'s
    dicts (``flow [L, 4, H, W]``, ``amodal`` = ``modal`` ``[L, O, H, W]`` bool, ``order [O]``)."""

    def __init__(self, flow_stores: Sequence[str | os.PathLike], label_stores: Sequence[str | os.PathLike],
                 clip_len: int, size: Sequence[int] | None, max_objects: int, seed: int = 0, flip: bool = True):
        if len(flow_stores) != len(label_stores) or not flow_stores:
            raise ValueError(f"pseudo-labelled clips need one label store per flow store "
                             f"({len(flow_stores)} flow, {len(label_stores)} label stores)")
        self.flow_stores, self.label_stores = [Path(p) for p in flow_stores], [Path(p) for p in label_stores]
        self.names = [p.name.removesuffix(".zarr") for p in self.flow_stores]
        self.clip_len, self.max_objects, self.seed, self.flip = int(clip_len), int(max_objects), int(seed), bool(flip)
        self.size = tuple(int(s) for s in size) if size is not None else None
        self._open: dict[int, tuple] = {}

    def __len__(self) -> int:
        return len(self.flow_stores)

    def __getstate__(self):  # no open zarr handles into loader workers
        return {**self.__dict__, "_open": {}}

    def _arrays(self, v: int):
        if v not in self._open:
            flow = open_artifact(self.flow_stores[v], stage="flow")["flow"]
            labels = open_artifact(self.label_stores[v])["labels"]
            if labels.shape[0] != flow.shape[0] or flow.shape[0] < self.clip_len:
                raise ArtifactError(f"{self.label_stores[v]}: {labels.shape[0]} label frames for {flow.shape[0]} "
                                    f"flow frames ({self.flow_stores[v]}); need the same, at least "
                                    f"clip_len={self.clip_len}")
            self._open[v] = (flow, labels)
        return self._open[v]

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        if i < 0:
            raise IndexError(i)
        rng = np.random.default_rng([self.seed, i])
        v = int(rng.integers(len(self.flow_stores)))
        flow_a, lab_a = self._arrays(v)
        L = self.clip_len
        s = int(rng.integers(flow_a.shape[0] - L + 1))
        flipped = bool(self.flip and rng.random() < 0.5)
        flow = torch.from_numpy(np.ascontiguousarray(flow_a[s:s + L], dtype=np.float32))
        lab = torch.from_numpy(np.asarray(lab_a[s:s + L], dtype=np.uint8))
        if lab.shape[-2:] != flow.shape[-2:]:                       # e.g. the CRF's masks: original size
            lab = F.interpolate(lab[:, None].float(), size=tuple(flow.shape[-2:]), mode="nearest")[:, 0].to(torch.uint8)
        ids, area = torch.unique(lab[lab > 0], return_counts=True)
        keep = ids[torch.argsort(-area, stable=True)][:self.max_objects].sort().values
        modal = lab[:, None] == keep[None, :, None, None]            # [L, O, H, W]
        order = torch.arange(len(keep), dtype=torch.int64)
        return finish_clip(flow, modal.clone(), modal, order, self.size, flipped, self.names[v], s)


#: the ``oclr`` keys the adaptation reads (model, clips, loss and run settings); the rest of its config is
#: fixed here or comes from ``adapt_oclr``
OCLR_KEYS = ("preset", "model", "clip_len", "size", "flip", "weight_decay", "grad_clip", "ckpt_every", "log_every",
             "loss_weights", "boundary_width", "order_pairs", "device", "amp", "deterministic")


def adapt_config(oclr: Mapping[str, Any], adapt: Mapping[str, Any], init: str, name: str) -> dict:
    """The :func:`train_oclr` config: ``oclr``'s :data:`OCLR_KEYS`, ``adapt``'s run (the ``adapt_oclr``
    section: constant lr after warm-up, its loss weights over ``oclr``'s), starting from ``init`` (the
    OCLR that made the source dataset's proposals), no validation. ``name`` describes the clips in the checkpoint."""
    adapt = check_keys(adapt, ADAPT_KEYS, "adapt_oclr")
    if not init:
        raise ValueError("adapt_oclr: adapt_oclr.checkpoint names no OCLR checkpoint to adapt")
    cfg = {k: oclr[k] for k in OCLR_KEYS}
    cfg["loss_weights"] = {**dict(oclr["loss_weights"]), **dict(adapt["loss_weights"] or {})}
    cfg.update(train_split=name, val_split=None, flow_source="raft", val_every=10 ** 9, val_clips=0, val_seed=0,
               init=str(init), iterations=int(adapt["iterations"]), lr=float(adapt["lr"]),
               warmup_iters=int(adapt["warmup_iters"]), decay_every=10 ** 9, decay_factor=1.0,
               batch_size=int(adapt["batch_size"]), seed=int(adapt["seed"]), time_budget_s=adapt["time_budget_s"],
               threads=adapt["threads"], num_workers=0)
    return cfg


def adapt_oclr(oclr: Mapping[str, Any], adapt: Mapping[str, Any], init: str, flow_stores: Sequence[Path],
               label_stores: Sequence[Path], work: str | os.PathLike, log_dir: str | os.PathLike,
               name: str = "pseudo-labels", progress: bool = True) -> dict:
    """Fine-tune ``init`` on the pseudo-labelled clips into ``work`` (``last.pt``, resumed when
    ``adapt.resume`` and the config is the same) and export ``work/oclr_adapted.pt``; returns the
    training metrics plus ``export`` (the export's summary)."""
    cfg = adapt_config(oclr, adapt, init, name)
    slots = model_config_from(cfg).num_queries          # train_oclr checks that init has this config
    ds = PseudoClipDataset(flow_stores, label_stores, int(cfg["clip_len"]), cfg["size"], slots, seed=cfg["seed"],
                           flip=bool(cfg["flip"]))
    work = Path(work)
    m = train_oclr(cfg, work, resume=bool(adapt["resume"]), progress=progress, log_dir=log_dir, train_ds=ds)
    m["export"] = export_checkpoint(work / "last.pt", work / "oclr_adapted.pt", fp16=True,
                                    max_mb=float(adapt["export_max_mb"]))
    return m
