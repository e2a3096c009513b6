"""Stage motion_baseline: the training-free flow-clustering baseline of each sequence."""

from __future__ import annotations

from pathlib import Path

from pipeline.baseline import BaselineConfig, MotionBaseline
from pipeline.core.store import ArtifactWriter, open_artifact
from pipeline.core.stage import Ctx, Stage


def _run(_, ctx: Ctx, seq: str, out: Path) -> str:
    bp = ctx.section("motion_baseline")
    cfg = BaselineConfig(**bp)
    flow_art = open_artifact(ctx.store("flow", seq), stage="flow")
    flow = flow_art.require("flow", dtype="float32", dims=("frame", "channel", "y", "x"))
    T, _, h, w = flow.shape
    model = MotionBaseline(cfg)
    with ArtifactWriter(out, stage="motion_baseline", params={"motion_baseline": bp},
                        inputs={"flow": flow_art.path}) as wr:
        labels = wr.create("labels", (T, h, w), "uint8", ("frame", "y", "x"),
                           attrs={"meaning": "0 = background, 1..K = object index, consistent over the sequence"})
        for t in range(T):
            labels[t] = model.step(flow[t])
        wr.attrs.update({"sequence": seq, "num_objects": cfg.num_objects,
                         "frame_names": flow_art.attrs.get("frame_names")})
    return f"motion_baseline: {seq} -> {out}"


STAGE = Stage("motion_baseline", params=("motion_baseline",), inputs=("flow",), run=_run)
