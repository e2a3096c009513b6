"""Stage adapt_corrector: self-supervised adaptation of the corrector to the dataset (no labels read).

Reads every sequence's ``frames``, ``features``, ``proposals``, ``exemplars`` and the pseudo-labels
(``adapt.pseudo_labels``, a mask stage), and the synthetically trained corrector
(``corrector.checkpoint``). Writes ``data/<ds>/adapt/`` (``last.pt``, the adapted checkpoint
``corrector_adapted.pt``, ``export.json``) and ``results/<ds>/adapt/`` (``train_curve.csv``: DVC
plot; ``metrics.json``: DVC metrics). The ``adapted`` stage runs the adapted corrector.
"""

from __future__ import annotations

import shutil

from pipeline.core.store import write_json_atomic
from pipeline.corrector.adapt import adapt_corrector, export_adapted
from pipeline.core.stage import Ctx, Stage, dataset_sequences


def _whole(ctx: Ctx) -> str:
    ap = ctx.section("adapt")
    cp = ctx.section("corrector")
    cfg = {**ap, "checkpoint": cp["checkpoint"], "window": cp["window"]}
    out, logs = ctx.data / "adapt", ctx.results("adapt")
    if out.exists() and not ap["resume"]:
        shutil.rmtree(out)          # start from the synthetic model
    m = adapt_corrector(cfg, ctx.data, dataset_sequences(ctx), out, logs)
    info = export_adapted(out / "last.pt", out / "corrector_adapted.pt", ap["export_max_mb"])
    write_json_atomic(out / "export.json", info)
    before, after = m["pseudo_label_J_before"], m["pseudo_label_J_after"]
    check = f", pseudo-label J {before:.3f} -> {after:.3f}" if before is not None and after is not None else ""
    return (f"adapt_corrector: {ctx.dataset}: {m['iterations']} iterations ({m['stopped_by']}) on "
            f"{m['exemplar_pairs']} exemplar (frame, object) pairs of {m['sequences']} sequences{check}, "
            f"{m['wall_time_s']:.0f} s -> {out / 'corrector_adapted.pt'}")


STAGE = Stage("adapt_corrector", params=("corrector.checkpoint", "corrector.window", "adapt"),
              inputs=("frames", "features", "proposals", "exemplars", "{adapt.pseudo_labels}"),
              files=("corrector.checkpoint",), whole=_whole, out="adapt",
              # persist: DVC deletes other outputs before it runs a stage, which would defeat the runner's
              # "up to date" check (it needs them) and rerun the whole adaptation
              dvc={"outs": [{"results/{dataset}/adapt": {"cache": False, "persist": True}}],
                   "top_metrics": [{"results/{dataset}/adapt/metrics.json": None}],
                   "top_plots": [{"results/{dataset}/adapt/train_curve.csv": {"x": "iteration", "y": "loss"}}]})
