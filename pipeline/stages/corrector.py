"""Stages corrector and adapted: appearance-based correction of each sequence's proposal masks.

Reads ``frames`` (``rgb``), ``proposals`` (``labels``), ``features`` (``tokens``, attrs ``backbone``),
``exemplars`` (``frames``, ``scores``) and a corrector checkpoint; writes ``probs`` [T,K,H,W] f16 and
``labels`` [T,H,W] u8 (:mod:`pipeline.corrector.infer`). ``corrector`` runs the synthetically trained
checkpoint (``corrector.checkpoint``); ``adapted`` the one adapted to this dataset by
``adapt_corrector`` (``data/<ds>/adapt/corrector_adapted.pt``; stage module
:mod:`pipeline.stages.adapted`). ``corrector.t`` belongs to the exemplars stage.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.corrector.infer import write_corrected
from pipeline.corrector.model import load_corrector
from pipeline.core.stage import Ctx, Stage

KEYS = ("checkpoint", "window", "threshold", "device")
ADAPTED = "data/{dataset}/adapt/corrector_adapted.pt"


def _setup(ctx: Ctx, adapted: bool = False):
    cp = {k: v for k, v in ctx.section("corrector").items() if k in KEYS}
    if adapted:
        cp["checkpoint"] = ADAPTED.format(dataset=ctx.dataset)
    dev = resolve_device(cp["device"])
    model, info = load_corrector(ctx.path(cp["checkpoint"]), dev)
    return model, info, cp, dev, "adapted" if adapted else "corrector"


def _run(state, ctx: Ctx, seq: str, out: Path, model=None, cp: dict | None = None, note: str = "") -> str:
    """One sequence; ``model``/``cp`` replace the state's (the ``adapted`` stage's per-sequence copy)."""
    m, info, cp0, dev, stage = state
    model, cp = model or m, cp or cp0
    run = write_corrected(ctx.store("frames", seq), ctx.store("proposals", seq), ctx.store("features", seq),
                          ctx.store("exemplars", seq), out, model, info, cp, device=dev, sequence=seq, stage=stage)
    fb = f", proposals kept for objects {run['fallback']} (no exemplars)" if run.get("fallback") else ""
    return (f"{stage}: {seq} ({run['T']} frames, {len(run.get('windows') or [])} windows of "
            f"{run['window']}{fb}{note}) -> {out}")


INPUTS = ("frames", "proposals", "features", "exemplars")
STAGE = Stage("corrector", params=tuple(f"corrector.{k}" for k in KEYS), inputs=INPUTS,
              files=("corrector.checkpoint",), setup=_setup, run=_run, gpu=True)
