"""Stage adapted: the corrector adapted to the dataset by ``adapt_corrector``
(``data/<ds>/adapt/corrector_adapted.pt``) on each sequence, as the ``corrector`` stage does; with
``adapt.per_sequence`` > 0 a copy of it is first adapted further to the sequence on its own
(test-time adaptation, the paper's about 200 iterations; :func:`pipeline.corrector.adapt.adapt_to_sequence`).
A module apart from :mod:`pipeline.stages.corrector` so that the synthetic corrector's stage does not
depend on the adaptation code (and this one not on that stage)."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.device import resolve_device
from pipeline.core.stage import Ctx, Stage
from pipeline.corrector.adapt import adapt_to_sequence, tta_config
from pipeline.corrector.infer import STAGE_INPUTS, correct_stores
from pipeline.corrector.model import load_corrector

ADAPTED = "data/{dataset}/adapt/corrector_adapted.pt"
KEYS = ("window", "threshold", "device")
#: the adapt keys the per-sequence test-time adaptation reads (adapt.per_sequence > 0)
TTA_KEYS = ("per_sequence", "pseudo_labels", "batch_size", "lr", "warmup_iters", "grad_clip", "loss_weights",
            "zero_proposals", "seed", "amp")


def _setup(ctx: Ctx):
    cp = {"checkpoint": ADAPTED.format(dataset=ctx.dataset),
          **{k: v for k, v in ctx.section("corrector").items() if k in KEYS}}
    dev = resolve_device(cp["device"])
    model, info = load_corrector(ctx.path(cp["checkpoint"]), dev)
    return model, info, cp, dev


def _run(state, ctx: Ctx, seq: str, out: Path) -> str:
    model, info, cp, dev = state
    n = int(ctx.params["adapt"]["per_sequence"])
    if n <= 0:
        return correct_stores(ctx.data, seq, out, model, info, cp, dev, stage="adapted")
    cfg = tta_config(ctx.section("adapt"), cp["checkpoint"], cp["window"])
    tuned, rec = adapt_to_sequence(model, ctx.data, seq, cfg, n, dev)
    return correct_stores(ctx.data, seq, out, tuned, info, {**cp, "per_sequence": n}, dev, stage="adapted",
                          note=f", adapted to the sequence: {rec['iterations']} iterations in {rec['seconds']:.0f} s")


STAGE = Stage("adapted", params=tuple(f"corrector.{k}" for k in KEYS) + tuple(f"adapt.{k}" for k in TTA_KEYS),
              inputs=STAGE_INPUTS + ("{adapt.pseudo_labels}",), files=(ADAPTED,), setup=_setup, run=_run, gpu=True)
