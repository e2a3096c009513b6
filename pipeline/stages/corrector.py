"""Stage corrector: appearance-based correction of each sequence's proposal masks.

Reads ``frames`` (``rgb``), ``proposals`` (``labels``), ``features`` (``tokens``, attrs ``backbone``),
``exemplars`` (``frames``, ``scores``) and a corrector checkpoint; writes ``probs`` [T,K,H,W] f16 and
``labels`` [T,H,W] u8 (:mod:`pipeline.corrector.infer`). ``corrector`` runs the synthetically trained
checkpoint (``corrector.checkpoint``); stage ``adapted`` (:mod:`pipeline.stages.adapted`) the one
adapted to the dataset. ``corrector.t`` belongs to the exemplars stage.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.core.stage import Ctx, Stage
from pipeline.corrector.infer import STAGE_INPUTS, correct_stores
from pipeline.corrector.model import load_corrector

KEYS = ("checkpoint", "window", "threshold", "device")


def _setup(ctx: Ctx):
    cp = {k: v for k, v in ctx.section("corrector").items() if k in KEYS}
    dev = resolve_device(cp["device"])
    model, info = load_corrector(ctx.path(cp["checkpoint"]), dev)
    return model, info, cp, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    return correct_stores(ctx.data, seq, out, *state, stage="corrector")


STAGE = Stage("corrector", params=tuple(f"corrector.{k}" for k in KEYS), inputs=STAGE_INPUTS,
              files=("corrector.checkpoint",), setup=_setup, run=_run, gpu=True)
