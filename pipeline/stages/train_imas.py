"""Stage train_imas: IMAS trained on the dataset's own unlabeled videos (no labels read).

Reads every sequence's ``frames``, ``features`` and flow (the store ``imas.flow`` names: ``flow``, or the
optional ``imas_flow`` stage's). Writes ``data/<ds>/imas_train/``
(``last.pt``: resumable; ``stage1.pt``: the model after motion-supervised discovery; ``imas.pt``: after
the appearance refinement, which the ``imas`` stage runs) and ``results/<ds>/imas_train/``
(``train_curve.csv``: DVC plot; ``metrics.json``: DVC metrics, with the object channel found by
motion-semantic alignment). Params: ``imas`` (training keys), the ``crf`` knobs (stage 2's refined
masks) and the ``quality`` knobs (alignment: object channel and semantic constraint).
"""

from __future__ import annotations

import shutil

from pipeline.core.io import InputError
from pipeline.core.stage import Ctx, Stage, dataset_sequences
from pipeline.crf import CRFConfig
from pipeline.imas.train import CONFIG_KEYS, FrameBank, train_imas
from pipeline.quality.alignment import AlignmentConfig

#: the CRF knobs stage 2's refined masks use (``background`` is moot with one object)
CRF_KEYS = ("gaussian_sxy", "gaussian_compat", "bilateral_sxy", "bilateral_srgb", "bilateral_compat", "iterations",
            "prob_floor")
ALIGN_KEYS = ("threshold", "dilation", "max_width", "max_height")
OUT = "imas_train"   # the imas stage reads OUT/imas.pt
FLOWS = ("flow", "imas_flow")   # the flow stores imas.flow may name
CHOICES = {"imas.flow": FLOWS}   # checked when the graph is built (registry.check_named_inputs)


def _whole(ctx: Ctx) -> str:
    cfg = ctx.section("imas")
    crf = CRFConfig.from_params({k: ctx.params["crf"][k] for k in CRF_KEYS})
    align = AlignmentConfig.from_params(ctx.section("quality"))
    out, logs = ctx.data / OUT, ctx.results(OUT)
    if cfg["flow"] not in FLOWS:
        raise InputError(f"imas.flow: {cfg['flow']!r} is not one of {', '.join(FLOWS)} (a flow store)")
    if out.exists() and not cfg["resume"]:
        shutil.rmtree(out)
    bank = FrameBank.load(ctx.data, dataset_sequences(ctx), flow_dir=str(cfg["flow"]))
    m = train_imas({k: cfg[k] for k in CONFIG_KEYS}, crf, align, bank, out, logs)
    ref = m["refined_masks"] or {}
    return (f"train_imas: {ctx.dataset}: {m['stage1_iterations']} + {m['stage2_iterations']} iterations "
            f"({m['stopped_by']}) on {m['frames']} frames of {m['sequences']} sequences, object channel "
            f"{m['object_channel']} (alignment {m['channel_alignment']}), refined-mask area "
            f"{ref.get('mean_area_stage1')} -> {ref.get('mean_area_refined')}, {m['wall_time_s']:.0f} s "
            f"-> {out / 'imas.pt'}")


STAGE = Stage("train_imas", params=tuple(f"imas.{k}" for k in CONFIG_KEYS + ("resume", "flow"))
              + tuple(f"crf.{k}" for k in CRF_KEYS) + tuple(f"quality.{k}" for k in ALIGN_KEYS),
              inputs=("frames", "{imas.flow}", "features"), whole=_whole, out=OUT,
              dvc={"outs": [{"results/{dataset}/" + OUT: {"cache": False, "persist": True}}],   # see adapt_corrector
                   "top_metrics": [{"results/{dataset}/" + OUT + "/metrics.json": None}],
                   "top_plots": [{"results/{dataset}/" + OUT + "/train_curve.csv": {"x": "iteration", "y": "loss"}}]})
