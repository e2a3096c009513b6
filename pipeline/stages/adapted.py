"""Stage adapted: the corrector adapted to the dataset by ``adapt_corrector``
(``data/<ds>/adapt/corrector_adapted.pt``) on each sequence, as the ``corrector`` stage does; with
``adapt.per_sequence`` > 0 a copy of it is first adapted further to the sequence on its own
(test-time adaptation, the paper's about 200 iterations; :func:`pipeline.corrector.adapt.adapt_to_sequence`).
A module apart from :mod:`pipeline.stages.corrector` so that the synthetic corrector's stage does not
depend on the adaptation code."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.stage import Ctx, Stage
from pipeline.corrector.adapt import adapt_to_sequence, tta_config
from pipeline.stages.corrector import ADAPTED, INPUTS, _run, _setup

#: the adapt keys the per-sequence test-time adaptation reads (adapt.per_sequence > 0)
TTA_KEYS = ("per_sequence", "pseudo_labels", "batch_size", "lr", "warmup_iters", "grad_clip", "loss_weights",
            "zero_proposals", "seed", "amp")


def _run_adapted(state, ctx: Ctx, seq: str, out: Path) -> str:
    n = int(ctx.params["adapt"]["per_sequence"])
    if n <= 0:
        return _run(state, ctx, seq, out)
    model, _, cp, dev, _ = state
    cfg = tta_config(ctx.section("adapt"), ADAPTED.format(dataset=ctx.dataset), cp["window"])
    tuned, rec = adapt_to_sequence(model, ctx.data, seq, cfg, n, dev)
    return _run(state, ctx, seq, out, tuned, {**cp, "per_sequence": n},
                f", adapted to the sequence: {rec['iterations']} iterations in {rec['seconds']:.0f} s")


STAGE = Stage("adapted", params=("corrector.window", "corrector.threshold", "corrector.device")
              + tuple(f"adapt.{k}" for k in TTA_KEYS),
              inputs=INPUTS + ("{adapt.pseudo_labels}",), files=(ADAPTED,),
              setup=lambda ctx: _setup(ctx, True), run=_run_adapted, gpu=True)
