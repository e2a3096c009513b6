"""Stage quality: the label-free quality report of every mask stage of ``quality.methods``.

Per (method, sequence): ``data/<ds>/quality/<method>/<seq>.json`` (every frame's motion-semantic
alignment, :mod:`pipeline.quality.alignment`, on the ``features`` stage's tokens; no labels read). Per
method: ``results/<ds>/quality/<method>/``: ``summary.json``, ``per_sequence.csv``, ``per_frame.csv``
(frames below ``quality.flag_below`` flagged: do not trust them) and ``per_sequence.png``. Params: the
``quality`` section.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.core.stage import Ctx, Stage
from pipeline.core.store import open_artifact, write_json_atomic
from pipeline.quality.alignment import AlignmentConfig
from pipeline.quality.report import score_sequence, write_report

KEYS = ("quality.threshold", "quality.dilation", "quality.max_width", "quality.max_height", "quality.flag_below")


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    method = ctx.variant
    cfg = AlignmentConfig.from_params(ctx.section("quality"))
    feats = open_artifact(ctx.store("features", seq), stage="features")
    masks = open_artifact(ctx.store(method, seq), stage=method)
    labels = masks.require("labels", dtype="uint8", ndim=3)
    names = open_artifact(ctx.store("frames", seq), stage="frames").attrs["frame_names"]
    s = score_sequence(feats.require("tokens", ndim=4), labels, cfg, names)
    write_json_atomic(out, {"method": method, "sequence": seq, "backbone": feats.attrs["backbone"]["name"], **s})
    return f"quality {method}/{seq}: alignment {s['alignment']:.3f} over {len(names)} frames"


def _finalize(ctx: Ctx, seqs: list[str]) -> str:
    method, q = ctx.variant, ctx.section("quality")
    folder = ctx.data / "quality" / method
    docs = {s: json.loads((folder / f"{s}.json").read_text()) for s in seqs}
    bb = next(iter(docs.values()))["backbone"] if docs else None
    info = {"backbone": bb, "self_supervised_backbone": bb == "mamp",
            "score": "motion-semantic alignment (IMAS Sec. 3.4): IoU of the mask and its semantic response",
            "params": {k.split(".")[1]: q[k.split(".")[1]] for k in KEYS}}
    summary = write_report(ctx.results("quality", method), method, ctx.dataset, docs, float(q["flag_below"]), info)
    return (f"quality {method} on {ctx.dataset}: alignment {summary['alignment_mean']:.3f}, "
            f"{summary['flagged_frames']} of {summary['frames']} frames flagged -> {ctx.results('quality', method)}")


STAGE = Stage("quality", params=KEYS, inputs=("frames", "features", "{variant}"), run=_run, finalize=_finalize,
              out="quality/{variant}", suffix=".json", foreach=False, variants="quality.methods",
              dvc={"outs": [{"results/{dataset}/quality": {"cache": False, "persist": True}}],  # one folder
                   "top_metrics": [{"results/{dataset}/quality/{variant}/summary.json": None}]})
