"""Stage adapt_oclr: OCLR adapted to the dataset's own flow with refined masks as pseudo-labels (no
labels read; :mod:`pipeline.oclr.adapt`).

Reads every sequence's ``flow`` and the ``labels`` of ``adapt_oclr.pseudo_labels`` (a mask stage), and
the dataset's OCLR (``proposals.checkpoint``). Writes ``data/<ds>/adapt_oclr/`` (``last.pt``, the
adapted checkpoint ``oclr_adapted.pt``) and ``results/<ds>/adapt_oclr/`` (``train_curve.csv``: DVC
plot; ``metrics.json``: DVC metrics). A second round (``dataset.reuse``) makes proposals with it.
"""

from __future__ import annotations

import shutil

from pipeline.core.stage import Ctx, Stage
from pipeline.oclr.adapt import OCLR_KEYS, adapt_oclr
from pipeline.stages.sequences import dataset_sequences

OUT = "adapt_oclr"


def _whole(ctx: Ctx) -> str:
    ap = ctx.section("adapt_oclr")
    src = str(ap["pseudo_labels"])
    out, logs = ctx.data / OUT, ctx.results(OUT)
    if out.exists() and not ap["resume"]:
        shutil.rmtree(out)          # start from the dataset's OCLR again
    seqs = dataset_sequences(ctx)
    m = adapt_oclr(ctx.section("oclr"), ap, str(ctx.path(ctx.params["proposals"]["checkpoint"])),
                   [ctx.store("flow", q) for q in seqs], [ctx.store(src, q) for q in seqs], out, logs,
                   name=f"{ctx.dataset}: flow + {src} labels")
    e = m["export"]
    return (f"adapt_oclr: {ctx.dataset}: {m['iterations']} iterations ({m['stopped_by']}) on {len(seqs)} sequences "
            f"with {src} pseudo-labels, loss {m['loss']:.4f}, {m['wall_time_s']:.0f} s -> {e['path']} "
            f"({e['bytes'] / 1e6:.1f} MB)")


STAGE = Stage(OUT, params=tuple(f"oclr.{k}" for k in OCLR_KEYS) + ("proposals.checkpoint", "adapt_oclr"),
              inputs=("flow", "{adapt_oclr.pseudo_labels}"), files=("proposals.checkpoint",), whole=_whole, out=OUT,
              dvc={"outs": [{"results/{dataset}/adapt_oclr": {"cache": False, "persist": True}}],
                   "top_metrics": [{"results/{dataset}/adapt_oclr/metrics.json": None}],
                   "top_plots": [{"results/{dataset}/adapt_oclr/train_curve.csv": {"x": "iteration", "y": "loss"}}]})
