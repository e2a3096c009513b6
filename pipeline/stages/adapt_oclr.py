"""Stage adapt_oclr: OCLR adapted to the videos' own flow with refined masks as pseudo-labels (no labels
read; :mod:`pipeline.oclr.adapt`), the first step of a second round.

A stage of the second-round dataset (``dataset.reuse: <source>``), so that the first round's pipeline
and lock carry nothing of it. Reads every sequence's ``flow`` (the source's, reused) and the ``labels``
of ``adapt_oclr.pseudo_labels``, a mask stage of the source (``../<source>/crf``: the folder is
``data/<ds>/`` joined with it), and the OCLR to adapt, ``adapt_oclr.checkpoint`` (the one that made the
source's proposals). Writes ``data/<ds>/adapt_oclr/`` (``last.pt``, the adapted checkpoint
``oclr_adapted.pt``, which the dataset's ``proposals.checkpoint`` names) and
``results/<ds>/adapt_oclr/`` (``train_curve.csv``: DVC plot; ``metrics.json``: DVC metrics).
"""

from __future__ import annotations

import shutil

from pipeline.core.stage import Ctx, Stage, dataset_sequences, get_key, load_dataset_params
from pipeline.oclr.adapt import OCLR_KEYS, adapt_oclr
from pipeline.stages.registry import check_round_entry

OUT = "adapt_oclr"


def _check_source(ctx: Ctx, ap: dict) -> None:
    """A second round's first stage (:func:`~pipeline.stages.registry.check_round_entry`), whose OCLR is the
    one that made the source's proposals."""
    check_round_entry(ctx.params, ctx.dataset)
    src = ctx.params["dataset"]["reuse"]
    made = get_key(load_dataset_params(str(src), ctx.root), "proposals.checkpoint")
    if str(made) != str(ap["checkpoint"]):
        raise ValueError(f"dataset {ctx.dataset!r}: adapt_oclr.checkpoint is {ap['checkpoint']!r}, but {src!r} "
                         f"(dataset.reuse) made its proposals with {made!r}: set adapt_oclr.checkpoint: {made}")


def _whole(ctx: Ctx) -> str:
    ap = ctx.section("adapt_oclr")
    src = str(ap["pseudo_labels"])
    _check_source(ctx, ap)
    out, logs = ctx.data / OUT, ctx.results(OUT)
    if out.exists() and not ap["resume"]:
        shutil.rmtree(out)          # start from the source's OCLR again
    seqs = dataset_sequences(ctx)
    m = adapt_oclr(ctx.section("oclr"), ap, str(ctx.path(ap["checkpoint"])),
                   [ctx.store("flow", q) for q in seqs], [ctx.store(src, q) for q in seqs], out, logs,
                   name=f"{ctx.dataset}: flow + {src} labels")
    e = m["export"]
    return (f"adapt_oclr: {ctx.dataset}: {m['iterations']} iterations ({m['stopped_by']}) on {len(seqs)} sequences "
            f"with {src} pseudo-labels, loss {m['loss']:.4f}, {m['wall_time_s']:.0f} s -> {e['path']} "
            f"({e['bytes'] / 1e6:.1f} MB)")


STAGE = Stage(OUT, params=tuple(f"oclr.{k}" for k in OCLR_KEYS) + ("adapt_oclr",),
              inputs=("flow", "{adapt_oclr.pseudo_labels}"), files=("adapt_oclr.checkpoint",), whole=_whole, out=OUT,
              dvc={"outs": [{"results/{dataset}/adapt_oclr": {"cache": False, "persist": True}}],
                   "top_metrics": [{"results/{dataset}/adapt_oclr/metrics.json": None}],
                   "top_plots": [{"results/{dataset}/adapt_oclr/train_curve.csv": {"x": "iteration", "y": "loss"}}]})
