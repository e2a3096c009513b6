"""Stage imas_self_train: the first round's IMAS trained further on the first round's final masks (no label
read; :mod:`pipeline.imas.self_train`), the first step of an IMAS self-training round.

A stage of a second-round dataset (``dataset.reuse: <source>``) in place of ``train_imas``: it writes the
round's ``data/<ds>/imas_train/`` (``imas.pt``, which the round's ``imas`` stage reads as in a first round;
``last.pt``: resumable), and ``results/<ds>/imas_self_train/`` (``train_curve.csv``: DVC plot;
``metrics.json``: DVC metrics). Reads every sequence's ``frames``, ``features`` and flow (``imas.flow``; the
source's, reused), the ``labels`` of ``imas_self_train.targets``, a mask stage of the source
(``../<source>/crf``), and the source's trained IMAS, ``imas_self_train.init``
(``data/<source>/imas_train/last.pt``). Params: the ``imas`` training keys (the source's: checked) and the
``imas_self_train`` section.
"""

from __future__ import annotations

import shutil

from pipeline.core.stage import Ctx, Stage, dataset_sequences
from pipeline.imas.self_train import SELF_TRAIN_KEYS, mask_targets, self_train_imas
from pipeline.imas.train import CONFIG_KEYS, FrameBank
from pipeline.stages.registry import check_round_entry
from pipeline.stages.train_imas import FLOWS, OUT

NAME = "imas_self_train"
CHOICES = {"imas.flow": FLOWS}


def _whole(ctx: Ctx) -> str:
    check_round_entry(ctx.params, ctx.dataset, NAME)
    st, cfg = ctx.section(NAME), ctx.section("imas")
    src = str(st["targets"])
    out, logs = ctx.data / OUT, ctx.results(NAME)
    if out.exists() and not st["resume"]:
        shutil.rmtree(out)
    seqs = dataset_sequences(ctx)
    bank = FrameBank.load(ctx.data, seqs, flow_dir=str(cfg["flow"]))
    targets = mask_targets([ctx.store(src, q) for q in bank.names], src.rsplit("/", 1)[-1], bank.grid)
    m = self_train_imas({k: cfg[k] for k in CONFIG_KEYS}, {k: st[k] for k in SELF_TRAIN_KEYS}, bank,
                        ctx.path(st["init"]), targets, out, logs, targets_name=src)
    return (f"imas_self_train: {ctx.dataset}: {m['iterations']} iterations on {m['frames']} frames of "
            f"{m['sequences']} sequences with {src} targets, appearance loss {m['first'] and m['first']['appearance']}"
            f" -> {m['last'].get('appearance')}, {m['wall_time_s']:.0f} s -> {out / 'imas.pt'}")


STAGE = Stage(NAME, params=tuple(f"imas.{k}" for k in CONFIG_KEYS + ("flow",)) + (NAME,),
              inputs=("frames", "{imas.flow}", "features", "{imas_self_train.targets}"),
              files=("imas_self_train.init",), whole=_whole, out=OUT,
              dvc={"outs": [{"results/{dataset}/" + NAME: {"cache": False, "persist": True}}],   # see adapt_corrector
                   "top_metrics": [{"results/{dataset}/" + NAME + "/metrics.json": None}],
                   "top_plots": [{"results/{dataset}/" + NAME + "/train_curve.csv": {"x": "iteration", "y": "loss"}}]})
