"""Stage quality: the label-free quality report of every mask stage of ``quality.methods``.

Per (method, sequence): ``data/<ds>/quality/<method>/<seq>.json``: every frame's motion-semantic
alignment (:mod:`pipeline.quality.alignment`, on the ``features`` stage's tokens) and its agreement with
the other mask stages of ``quality.agree_with`` (:mod:`pipeline.quality.agreement`); no labels read.
Per method: ``results/<ds>/quality/<method>/``: ``summary.json``, ``per_sequence.csv``,
``per_frame.csv`` (frames whose ``quality.flag_on`` score is below ``quality.flag_below`` are flagged:
do not trust them) and ``per_sequence.png``. Params: the ``quality`` section.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.stage import Ctx, Stage
from pipeline.core.store import open_artifact, write_json_atomic
from pipeline.quality.alignment import AlignmentConfig
from pipeline.quality.report import score_sequence, write_report

KEYS = ("quality.threshold", "quality.dilation", "quality.max_width", "quality.max_height", "quality.agree_with",
        "quality.flag_on", "quality.flag_below")


def others(ctx: Ctx) -> list[str]:
    """The mask stages a method is compared with: ``quality.agree_with`` without the method itself."""
    return [str(s) for s in ctx.section("quality")["agree_with"] or [] if str(s) != ctx.variant]


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    method = ctx.variant
    cfg = AlignmentConfig.from_params(ctx.section("quality"))
    feats = open_artifact(ctx.store("features", seq), stage="features")
    masks = open_artifact(ctx.store(method, seq), stage=method)
    labels = masks.require("labels", dtype="uint8", ndim=3)
    names = open_artifact(ctx.store("frames", seq), stage="frames").attrs["frame_names"]
    srcs = {s: open_artifact(ctx.store(s, seq), stage=s).require("labels", dtype="uint8", ndim=3) for s in others(ctx)}
    s = score_sequence(feats.require("tokens", ndim=4), labels, cfg, names, others=srcs)
    write_json_atomic(out, {"method": method, "sequence": seq, "backbone": feats.attrs["backbone"]["name"], **s})
    agree = f", agreement {s['agreement']:.3f}" if srcs else ""
    return f"quality {method}/{seq}: alignment {s['alignment']:.3f}{agree} over {len(names)} frames"


def _finalize(ctx: Ctx, seqs: list[str]) -> str:
    method, q = ctx.variant, ctx.section("quality")
    folder = ctx.data / "quality" / method
    docs = {s: json.loads((folder / f"{s}.json").read_text()) for s in seqs}
    bb = next(iter(docs.values()))["backbone"] if docs else None
    info = {"backbone": bb, "self_supervised_backbone": bb == "mamp",
            "scores": {"alignment": "motion-semantic alignment (IMAS Sec. 3.4): IoU of the mask and its semantic "
                                    "response",
                       "agreement": f"mean matched-object IoU with {', '.join(others(ctx)) or 'no other source'}"},
            "params": {k.split(".")[1]: q[k.split(".")[1]] for k in KEYS}}
    summary = write_report(ctx.results("quality", method), method, ctx.dataset, docs, float(q["flag_below"]), info,
                           flag_on=str(q["flag_on"]))
    scores = ", ".join(f"{k[:-5]} {v:.3f}" for k, v in summary.items() if k.endswith("_mean"))
    return (f"quality {method} on {ctx.dataset}: {scores}, {summary['flagged_frames']} of {summary['frames']} frames "
            f"flagged -> {ctx.results('quality', method)}")


@dataclass(frozen=True)
class _QualityStage(Stage):
    """Its inputs include a params list (``quality.agree_with``, less the scored method), which
    :meth:`Stage.input_dirs` does not expand (DVC deps and the graph expand it with
    :func:`pipeline.stages.registry.named_inputs`)."""

    def input_dirs(self, ctx: Ctx) -> list[str]:
        return ["frames", "features", str(ctx.variant), *others(ctx)]


STAGE = _QualityStage("quality", params=KEYS, inputs=("frames", "features", "{variant}", "{quality.agree_with}"),
                      run=_run, finalize=_finalize, out="quality/{variant}", suffix=".json", foreach=False,
                      variants="quality.methods",
                      dvc={"outs": [{"results/{dataset}/quality": {"cache": False, "persist": True}}],  # one folder
                           "top_metrics": [{"results/{dataset}/quality/{variant}/summary.json": None}]})
