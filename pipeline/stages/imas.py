"""Stage imas: the dataset's IMAS model (``train_imas``) segments every frame.

Reads ``frames`` (``rgb``), ``features`` (``tokens``), ``motion_baseline`` (``labels``, with
``imas.channel_choice: video``: which channel is the object in each video) and
``data/<ds>/imas_train/imas.pt``; writes
``probs`` [T,1,H,W] and ``labels`` [T,H,W] (:mod:`pipeline.imas.infer`), a mask stage that
``eval.methods``, ``crf.input``, ``quality.methods`` and ``export.methods`` accept. Params:
``imas.batch``, ``imas.device``, ``imas.amp``, ``imas.channel_choice``.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.core.stage import Ctx, Stage
from pipeline.imas.infer import check_channel_choice, write_imas
from pipeline.imas.model import load_imas

CHECKPOINT = "data/{dataset}/imas_train/imas.pt"   # written by the train_imas stage


def _setup(ctx: Ctx):
    check_channel_choice(ctx.section("imas")["channel_choice"])      # before any video runs
    dev = resolve_device(ctx.params["imas"]["device"])
    model, info = load_imas(ctx.path(CHECKPOINT.format(dataset=ctx.dataset)), dev)
    return model, info, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    model, info, dev = state
    ip = ctx.section("imas")
    run = write_imas(ctx.store("frames", seq), ctx.store("features", seq), out, model, info, dev,
                     batch=int(ip["batch"]), amp=bool(ip["amp"]), sequence=seq,
                     channel_choice=str(ip["channel_choice"]), reference_path=ctx.store("motion_baseline", seq))
    return f"imas: {seq} ({run['T']} frames, object channel {run['object_channel']}) -> {out}"


STAGE = Stage("imas", params=("imas.batch", "imas.device", "imas.amp", "imas.channel_choice"),
              inputs=("frames", "features", "motion_baseline"),
              files=(CHECKPOINT,), setup=_setup, run=_run, gpu=True)
